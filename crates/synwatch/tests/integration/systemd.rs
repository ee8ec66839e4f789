//! Issue 17, part 2: the real package under a real systemd as PID 1.
//!
//! A Debian bookworm root file system (debootstrap, minbase plus systemd, dbus and procps;
//! cached under `target/tmp/nspawn/` so that later runs reuse it) is booted with
//! `systemd-nspawn -b` as an ephemeral snapshot in a private network namespace of its own (only
//! its loopback exists in it, so every probe stays on the container's loopback). Inside it the
//! `.deb` that `cargo deb -p synwatch` built is installed with apt, and the service is driven the
//! way an operator drives it: `systemctl`, `journalctl`, `systemd-analyze security`, a broken
//! reload, `kill -9`, a connect-mode restart, stop and purge. The unit's `SystemCallFilter=`
//! and sandbox lines are therefore exercised for real on every change.
//!
//! The package comes from `SYNWATCH_DEB` (set by `.ci/run`, which builds it before the tests)
//! or else the newest `target/debian/synwatch_*.deb`. Without root, systemd-nspawn, debootstrap
//! or a package the test skips and says why; with `SYNWATCH_REQUIRE_LAB=1` that is a failure.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{http, sample, wait_until};

const TEST: &str = "issue_17_the_deb_runs_under_systemd_as_pid_1";

fn required() -> bool {
    std::env::var("SYNWATCH_REQUIRE_LAB").is_ok_and(|value| value == "1")
}

/// Skips with the reason, or fails with it under `SYNWATCH_REQUIRE_LAB=1`.
fn skip(reason: &str) {
    if required() {
        panic!("{TEST}: SYNWATCH_REQUIRE_LAB=1 but {reason}");
    }
    eprintln!("skipping {TEST}: {reason}");
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The package to install: `SYNWATCH_DEB`, else the newest `target/debian/synwatch_*.deb`.
fn package() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("SYNWATCH_DEB") {
        // Tests run in their crate's directory; a relative path is meant from the workspace.
        let absolute = workspace().join(&path);
        return Some(absolute.canonicalize().unwrap_or_else(|error| panic!("SYNWATCH_DEB={path}: {error}")));
    }
    let directory = workspace().join("target/debian");
    std::fs::read_dir(directory)
        .ok()?
        .flatten()
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            name.starts_with("synwatch_") && name.ends_with(".deb")
        })
        .max_by_key(|entry| entry.metadata().and_then(|metadata| metadata.modified()).ok())
        .map(|entry| entry.path())
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|error| panic!("{command:?}: {error}"))
}

/// The cached root file system, built on first use. A half-built one (no marker) is rebuilt.
fn root_file_system() -> Result<PathBuf, String> {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nspawn");
    let root = base.join("bookworm");
    let marker = base.join("bookworm.complete");
    if marker.exists() {
        return Ok(root);
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&base).map_err(|error| format!("{}: {error}", base.display()))?;
    let started = Instant::now();
    let output = run(Command::new("debootstrap").args([
        "--variant=minbase",
        "--include=systemd,systemd-sysv,dbus,procps",
        "bookworm",
        root.to_str().unwrap(),
        "http://deb.debian.org/debian",
    ]));
    if !output.status.success() {
        return Err(format!(
            "debootstrap failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("")
        ));
    }
    // A root without a machine id boots as a "first boot" every time (each boot is a fresh
    // snapshot), which runs systemd-firstboot and the first-boot presets and, seen on a fresh
    // CI machine, left `systemctl` without an answer. One id, set once, makes every boot alike.
    let output = run(Command::new("chroot").arg(&root).arg("systemd-machine-id-setup"));
    if !output.status.success() {
        return Err(format!(
            "systemd-machine-id-setup in the root failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    File::create(&marker).map_err(|error| error.to_string())?;
    eprintln!("{TEST}: built the root file system in {:.0} s", started.elapsed().as_secs_f64());
    Ok(root)
}

/// A booted container; powered off (and its snapshot removed by systemd-nspawn) on drop.
struct Container {
    nspawn: Child,
    leader: u32,
    console: PathBuf,
}

impl Container {
    fn boot(root: &Path, package_directory: &Path, console: PathBuf) -> Result<Container, String> {
        let nspawn = Command::new("systemd-nspawn")
            .args(["--register=no", "--keep-unit", "--ephemeral", "--private-network", "--quiet"])
            .arg(format!("--bind-ro={}:/mnt/package", package_directory.display()))
            .arg("-D")
            .arg(root)
            .arg("-b")
            .stdin(Stdio::null())
            .stdout(File::create(&console).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| format!("systemd-nspawn: {error}"))?;
        let mut container = Container { nspawn, leader: 0, console };
        let deadline = Instant::now() + Duration::from_secs(60);
        // The leader is systemd-nspawn's child once it runs systemd.
        while container.leader == 0 {
            if let Ok(Some(status)) = container.nspawn.try_wait() {
                return Err(format!("systemd-nspawn exited with {status}: {}", container.console_text()));
            }
            if Instant::now() > deadline {
                return Err(format!("the container did not start within 60 s: {}", container.console_text()));
            }
            let children =
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children", pid = container.nspawn.id()))
                    .unwrap_or_default();
            for child in children.split_whitespace().filter_map(|pid| pid.parse::<u32>().ok()) {
                if std::fs::read_to_string(format!("/proc/{child}/comm")).is_ok_and(|name| name.trim() == "systemd") {
                    container.leader = child;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // `--wait` blocks until boot is finished; `degraded` would name a failed unit. Right
        // after the leader appears, its D-Bus may not answer yet: ask again until the deadline.
        let mut last = String::new();
        while Instant::now() < deadline {
            let state = container.sh("systemctl is-system-running --wait");
            let answer = String::from_utf8_lossy(&state.stdout).trim().to_string();
            match answer.as_str() {
                "running" => return Ok(container),
                "degraded" => {
                    let failed = container.sh("systemctl --failed --no-pager");
                    return Err(format!(
                        "the container's systemd is degraded: {}",
                        String::from_utf8_lossy(&failed.stdout)
                    ));
                }
                _ => last = format!("{answer:?} ({})", String::from_utf8_lossy(&state.stderr).trim()),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(format!(
            "the container's systemd did not reach `running` within 60 s (last answer {last}); console:\n{}",
            container.console_text()
        ))
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Runs a shell script inside the container (all its namespaces) and returns its output.
    fn sh(&self, script: &str) -> Output {
        run(Command::new("nsenter").args(["-t", &self.leader.to_string(), "-a", "/bin/sh", "-c", script]))
    }

    /// [`Container::sh`] that must succeed; its standard output, trimmed.
    fn ok(&self, script: &str) -> String {
        let output = self.sh(script);
        assert!(
            output.status.success(),
            "`{script}` failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn property(&self, name: &str) -> String {
        self.ok(&format!("systemctl show -p {name} --value synwatch"))
    }

    fn journal(&self) -> String {
        self.ok("journalctl -u synwatch --no-pager -o cat")
    }

    /// A GET to the service inside the container's network namespace: status and body.
    fn get(&self, path: &str) -> io::Result<(u16, String)> {
        let namespace = File::open(format!("/proc/{}/ns/net", self.leader))?;
        let path = path.to_string();
        std::thread::spawn(move || {
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            http("GET", "127.0.0.1:10045".parse().unwrap(), &path)
        })
        .join()
        .map_err(|_| io::Error::other("the request thread panicked"))?
    }

    fn metrics(&self) -> String {
        match self.get("/metrics") {
            Ok((200, body)) => body,
            other => String::from(match other {
                Ok(_) => "not 200",
                Err(_) => "no answer",
            }),
        }
    }

    /// Waits for a /metrics sample to have `value`; returns the whole scrape.
    fn wait_for_sample(&self, series: &str, value: f64, seconds: u64) -> String {
        wait_until(&format!("{series} = {value} in the container"), seconds, || {
            let metrics = self.metrics();
            (sample(&metrics, series) == Some(value)).then_some(metrics)
        })
    }

    fn main_pid(&self) -> u32 {
        self.property("MainPID").parse().unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM makes systemd-nspawn power the container off; then the snapshot is removed.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.nspawn.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// A status line of `/proc/PID/status` in the container (e.g. `Uid`, `CapEff`).
fn status_field(container: &Container, path: &str, field: &str) -> String {
    let status = container.ok(&format!("cat {path}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{path} has no {field}: {status}"))
        .trim()
        .to_string()
}

/// Every thread of the main process runs as `synwatch` holding no effective or permitted
/// capability.
fn assert_unprivileged_threads(container: &Container) -> usize {
    let pid = container.main_pid();
    let uid = container.ok("id -u synwatch");
    let tasks = container.ok(&format!("ls /proc/{pid}/task"));
    let mut threads = 0;
    for task in tasks.split_whitespace() {
        let path = format!("/proc/{pid}/task/{task}/status");
        let uids = status_field(container, &path, "Uid");
        assert!(uids.split_whitespace().all(|id| id == uid), "thread {task} runs as {uids}, not synwatch ({uid})");
        for field in ["CapEff", "CapPrm"] {
            let value = status_field(container, &path, field);
            assert_eq!(u64::from_str_radix(&value, 16).unwrap(), 0, "thread {task} {field} {value}");
        }
        threads += 1;
    }
    threads
}

const FIXED_CONFIG: &str = "listen: 127.0.0.1:10045\nengine: {mode: auto, max_rate: 10000}\n\
defaults: {interval: 1h, timeout: 30s, retries: 1, wait: 500ms}\n\
targets:\n  - name: reloaded\n    addresses: [127.0.0.1, \"::1\"]\n    ports: \"22,80,10045\"\n    details: true\n";

#[test]
fn issue_17_the_deb_runs_under_systemd_as_pid_1() {
    if !nix::unistd::Uid::effective().is_root() {
        return skip("it needs root (systemd-nspawn boots a container)");
    }
    for (program, package) in [("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap")] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|out| !out.status.success())
        {
            return skip(&format!("{program} is not installed (apt-get install {package})"));
        }
    }
    let Some(deb) = package() else {
        return skip("no package: build one with `cargo deb -p synwatch` or set SYNWATCH_DEB");
    };
    let root = match root_file_system() {
        Ok(root) => root,
        Err(reason) => return skip(&format!("no root file system: {reason}")),
    };
    let scratch = crate::helpers::Scratch::new("issue-17-systemd");
    let booted = Instant::now();
    let container = match Container::boot(&root, deb.parent().unwrap(), scratch.join("console.log")) {
        Ok(container) => container,
        Err(reason) => return skip(&format!("the container cannot boot here: {reason}")),
    };
    eprintln!("{TEST}: container booted in {:.1} s", booted.elapsed().as_secs_f64());
    let started = Instant::now();
    let file = deb.file_name().unwrap().to_string_lossy().to_string();

    // The real package, its dependencies from apt, starts the service.
    container.ok(&format!("cd /mnt/package && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./{file}"));
    container.ok("systemctl is-active synwatch");
    assert_eq!(container.property("User"), "synwatch");
    let metrics = container.wait_for_sample("synwatch_target_last_scan_success{target=\"loopback\"}", 1.0, 90);
    assert_eq!(sample(&metrics, "synwatch_scan_mode{mode=\"syn\"}"), Some(1.0), "not in SYN mode:\n{metrics}");
    let threads = assert_unprivileged_threads(&container);
    assert!(threads > 1, "serve runs several threads");
    let journal = container.journal();
    assert!(journal.contains("synwatch"), "nothing of synwatch in the journal: {journal}");

    // The loaded unit's exposure, as systemd itself scores it.
    let security = container.ok("systemd-analyze security --no-pager synwatch.service");
    let exposure: f64 = security
        .lines()
        .find_map(|line| line.split("Overall exposure level for synwatch.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{security}");

    // A broken reload keeps the old config running and names file:line:column in the journal.
    container.ok("cp /etc/synwatch/synwatch.yaml /root/shipped.yaml");
    container.ok("printf 'listen: 127.0.0.1:10045\\ntargets:\\n  - name: broken\\n    colour: blue\\n' > /etc/synwatch/synwatch.yaml");
    container.ok("systemctl reload synwatch");
    let metrics = container.wait_for_sample("synwatch_config_last_reload_successful", 0.0, 30);
    container.ok("systemctl is-active synwatch");
    assert_eq!(sample(&metrics, "synwatch_target_last_scan_success{target=\"loopback\"}"), Some(1.0), "{metrics}");
    let journal = wait_until("the rejected reload in the journal", 30, || {
        let journal = container.journal();
        journal.contains("/etc/synwatch/synwatch.yaml:4:5").then_some(journal)
    });
    assert!(journal.contains("colour"), "{journal}");
    // A fixed config then applies.
    container.ok(&format!("printf '{}' > /etc/synwatch/synwatch.yaml", FIXED_CONFIG.replace('\n', "\\n")));
    container.ok("systemctl reload synwatch");
    container.wait_for_sample("synwatch_config_last_reload_successful", 1.0, 30);
    let metrics = container.wait_for_sample("synwatch_target_last_scan_success{target=\"reloaded\"}", 1.0, 60);
    assert!(!metrics.contains("target=\"loopback\""), "the old target is gone after the reload");
    let scanned_at = sample(&metrics, "synwatch_target_last_scan_timestamp_seconds{target=\"reloaded\"}").unwrap();

    // kill -9: systemd restarts it (Restart=on-failure), and the saved state is served again.
    let before = container.main_pid();
    container.ok(&format!("kill -9 {before}"));
    wait_until("the restart after kill -9", 30, || {
        (container.property("NRestarts") == "1" && container.property("ActiveState") == "active").then_some(())
    });
    assert_ne!(container.main_pid(), before);
    let metrics = wait_until("the restarted service to answer", 30, || {
        let metrics = container.metrics();
        sample(&metrics, "synwatch_target_last_scan_timestamp_seconds{target=\"reloaded\"}").map(|_| metrics)
    });
    let restored = sample(&metrics, "synwatch_target_last_scan_timestamp_seconds{target=\"reloaded\"}").unwrap();
    // The target was scanned moments ago and its interval is an hour: a restored state serves
    // that very scan (a lost one would show no series, or a newer scan).
    assert_eq!(restored, scanned_at, "the state was not kept across kill -9");
    assert_eq!(sample(&metrics, "synwatch_target_last_scan_success{target=\"reloaded\"}"), Some(1.0), "{metrics}");
    assert_unprivileged_threads(&container);

    // connect() mode under the same filter: a scan succeeds with the capability unused.
    container.ok(&format!(
        "printf '{}' > /etc/synwatch/synwatch.yaml",
        FIXED_CONFIG
            .replace("mode: auto", "mode: connect")
            .replace("name: reloaded", "name: connect")
            .replace('\n', "\\n")
    ));
    container.ok("systemctl restart synwatch");
    let metrics = wait_until("a connect-mode scan", 60, || {
        let metrics = container.metrics();
        (sample(&metrics, "synwatch_scan_mode{mode=\"connect\"}") == Some(1.0)
            && sample(&metrics, "synwatch_scans_total{result=\"success\",target=\"connect\"}")
                .is_some_and(|n| n >= 1.0))
        .then_some(metrics)
    });
    assert_eq!(sample(&metrics, "synwatch_scans_total{result=\"failure\",target=\"connect\"}").unwrap_or(0.0), 0.0);
    container.ok("systemctl is-active synwatch");

    // Stop ends it within TimeoutStopSec, by itself (no SIGKILL: the result is success).
    let timeout = container.property("TimeoutStopUSec");
    let stopping = Instant::now();
    container.ok("systemctl stop synwatch");
    let stop_took = stopping.elapsed();
    assert!(stop_took < Duration::from_secs(10), "stop took {stop_took:?} (TimeoutStopSec {timeout})");
    assert_eq!(container.property("Result"), "success", "stopped by a timeout or a signal");
    assert_eq!(container.property("ActiveState"), "inactive");

    // Purge removes the files and the state; the system user stays (Debian's convention: a
    // package does not remove the system user it created, since files it owns may remain).
    container.ok("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q synwatch");
    for path in ["/etc/synwatch", "/var/lib/synwatch", "/usr/bin/synwatch", "/usr/lib/systemd/system/synwatch.service"]
    {
        assert!(!container.sh(&format!("test -e {path}")).status.success(), "{path} is left after purge");
    }
    container.ok("getent passwd synwatch");
    eprintln!(
        "{TEST}: install, checks, reloads, restarts, stop and purge took {:.1} s (stop {:.2} s, exposure {exposure})",
        started.elapsed().as_secs_f64(),
        stop_took.as_secs_f64()
    );
}
