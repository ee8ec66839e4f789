//! What the lab's benchmark runners (`synwatch bench --lab`, `lab_bench`) need around the
//! programs they measure: whether a program is installed, its CPU time and peak memory from
//! `wait4`, and the scanner link's transmit rate while it runs.

use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Lab;

/// Whether `program` is on the PATH.
pub fn program_installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null")])
        .status()
        .is_ok_and(|status| status.success())
}

/// How a child process ended, from `wait4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildUsage {
    /// Exit status, or 128 + the signal that ended it.
    pub status: i32,
    /// User plus system CPU time (its waited-for children included).
    pub cpu: Duration,
    /// Peak resident set size in KiB.
    pub max_rss_kib: u64,
}

/// `wait4` on our child `pid`: blocks when `block`, else returns `None` while it runs.
pub fn wait_child(pid: i32, block: bool) -> io::Result<Option<ChildUsage>> {
    let mut raw_status = 0i32;
    // SAFETY: rusage is plain old data; all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let options = if block { 0 } else { libc::WNOHANG };
    // SAFETY: wait4 writes the status and the resource usage of our own child.
    let waited = unsafe { libc::wait4(pid, &mut raw_status, options, &mut usage) };
    if waited < 0 {
        return Err(io::Error::last_os_error());
    }
    if waited != pid {
        return Ok(None);
    }
    let micros = |time: libc::timeval| time.tv_sec as u64 * 1_000_000 + time.tv_usec as u64;
    let status =
        if libc::WIFEXITED(raw_status) { libc::WEXITSTATUS(raw_status) } else { 128 + libc::WTERMSIG(raw_status) };
    Ok(Some(ChildUsage {
        status,
        cpu: Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime)),
        max_rss_kib: usage.ru_maxrss as u64,
    }))
}

/// CPU time of this process's threads named `name` (procfs: /proc/self/task/*/stat).
pub fn thread_cpu(name: &str) -> Duration {
    let Ok(tasks) = procfs::process::Process::myself().and_then(|process| process.tasks()) else {
        return Duration::ZERO;
    };
    let ticks: u64 = tasks
        .flatten()
        .filter_map(|task| task.stat().ok())
        .filter(|stat| stat.comm == name)
        .map(|stat| stat.utime + stat.stime)
        .sum();
    Duration::from_millis(ticks * 1000 / procfs::ticks_per_second().max(1))
}

/// How a measured program's run ended ([`wait_child_until`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildEnd {
    /// Exit status, or 128 + the signal that ended it.
    pub status: i32,
    /// Its CPU time.
    pub cpu: Duration,
    /// It was sent SIGINT: past its deadline, or `give_up` said so.
    pub stopped: bool,
}

/// Waits for our child `pid` (`wait4`, for its CPU time). Once `deadline` passes (or
/// `give_up` returns true) it calls `nudge` every 200 ms (masscan's capture thread sleeps until
/// a packet arrives, so a packet to the scanner lets it exit by itself), sends SIGINT 5 s later,
/// and SIGKILL 10 s after that.
pub fn wait_child_until(
    pid: libc::pid_t,
    deadline: Instant,
    nudge: &dyn Fn(),
    give_up: &dyn Fn() -> bool,
) -> io::Result<ChildEnd> {
    use nix::sys::signal::{Signal, kill};
    let (mut overdue, mut signalled, mut nudged): (Option<Instant>, Option<Instant>, Option<Instant>) =
        (None, None, None);
    loop {
        if let Some(usage) = wait_child(pid, false)? {
            return Ok(ChildEnd { status: usage.status, cpu: usage.cpu, stopped: signalled.is_some() });
        }
        let now = Instant::now();
        let child = nix::unistd::Pid::from_raw(pid);
        if overdue.is_none() && (now >= deadline || give_up()) {
            overdue = Some(now);
        }
        if let Some(since) = overdue {
            if nudged.is_none_or(|at| now.duration_since(at) >= Duration::from_millis(200)) {
                nudge();
                nudged = Some(Instant::now());
            }
            match signalled {
                None if now.duration_since(since) >= Duration::from_secs(5) => {
                    let _ = kill(child, Signal::SIGINT);
                    signalled = Some(now);
                }
                Some(at) if now.duration_since(at) >= Duration::from_secs(10) => {
                    let _ = kill(child, Signal::SIGKILL);
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The scanner link's transmit counter sampled while some work ran.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSample {
    /// Packets sent (and transmit-dropped) over the whole work.
    pub packets: u64,
    /// Packets between the 10 % and 90 % marks of `packets`, and the time between the marks:
    /// the rate without start-up and tear-down. `None` when the samples are too few.
    pub middle: Option<(u64, Duration)>,
}

impl LinkSample {
    /// Packets per second between the 10 % and 90 % marks.
    pub fn rate(&self) -> Option<f64> {
        self.middle.map(|(packets, time)| packets as f64 / time.as_secs_f64())
    }
}

impl Lab {
    /// Runs `work` while a thread samples the scanner link's transmit counter every 2 ms.
    pub fn sample_link<R>(&self, work: impl FnOnce() -> R) -> (R, LinkSample) {
        let running = AtomicBool::new(true);
        let (samples, result) = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| {
                let mut samples = Vec::new();
                while running.load(Ordering::Acquire) {
                    if let Ok(count) = self.scanner_link_transmitted() {
                        samples.push((Instant::now(), count));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                if let Ok(count) = self.scanner_link_transmitted() {
                    samples.push((Instant::now(), count));
                }
                samples
            });
            let result = work();
            running.store(false, Ordering::Release);
            (sampler.join().expect("the link sampler panicked"), result)
        });
        let first = samples.first().map_or(0, |sample| sample.1);
        let packets = samples.last().map_or(0, |sample| sample.1) - first;
        let at =
            |share: f64| samples.iter().find(|(_, count)| (count - first) as f64 >= share * packets as f64).copied();
        let middle = match (at(0.1), at(0.9)) {
            (Some(low), Some(high)) if high.0 > low.0 => Some((high.1 - low.1, high.0 - low.0)),
            _ => None,
        };
        (result, LinkSample { packets, middle })
    }
}
