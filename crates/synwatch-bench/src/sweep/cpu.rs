//! CPU accounting of a sweep (procfs and `getrusage`), and the descriptor limit the lab's
//! listeners need.

use std::time::Duration;

use super::error::{Context, SweepError, usage};

/// Raises the soft descriptor limit to the hard one and checks that `needed` fit.
pub(crate) fn ensure_descriptors(needed: u64) -> Result<(), SweepError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    }
    if needed > hard {
        return Err(usage(format!(
            "the lab needs {needed} descriptors for its listeners but the limit is {hard}: lower --lab-open or --lab-hosts, or raise the limit (ulimit -Hn)"
        )));
    }
    Ok(())
}

/// The process's CPU time (user + system).
fn process_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |usage| {
        let time = |value: nix::sys::time::TimeVal| {
            Duration::from_secs(value.tv_sec() as u64) + Duration::from_micros(value.tv_usec() as u64)
        };
        time(usage.user_time()) + time(usage.system_time())
    })
}

/// CPU time of this process's threads named `name` (procfs: /proc/self/task/*/stat).
fn thread_cpu(name: &str) -> Duration {
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

/// The CPU time that belongs to the scanner: everything but the lab's accept thread, which
/// plays the targets' side.
pub(crate) fn scanner_cpu() -> Duration {
    process_cpu().saturating_sub(thread_cpu("lab-accept"))
}
