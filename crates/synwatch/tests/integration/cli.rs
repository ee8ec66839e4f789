//! Command-line behaviour: usage errors exit 2 with a reason, missing privileges exit 1 and name
//! the ways out (or, in auto mode, fall back to connect()), `doctor` says what to change. Only loopback and the documentation ranges appear as targets here, and the
//! usage errors are caught before any socket is opened.

use std::process::{Command, Output};

use crate::helpers::synwatch;

fn scan(arguments: &[&str]) -> Output {
    Command::new(synwatch()).arg("scan").args(arguments).output().expect("running synwatch")
}

fn assert_usage_error(arguments: &[&str], needle: &str) {
    let output = scan(arguments);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{arguments:?}: {stderr}");
    assert!(stderr.contains(needle), "{arguments:?}: {stderr:?} does not mention {needle:?}");
    assert!(output.stdout.is_empty());
}

#[test]
fn bad_usage_exits_2_and_says_what_is_wrong() {
    assert_usage_error(&["127.0.0.1", "-p", "70000"], "70000");
    assert_usage_error(&["127.0.0.1", "-p", "22,,80"], "empty item");
    assert_usage_error(&["127.0.0.300", "-p", "22"], "127.0.0.300");
    assert_usage_error(&["127.0.0.1", "-p", "22", "--shard", "1/2"], "--seed");
    assert_usage_error(&["127.0.0.1", "-p", "22", "--seed", "1", "--shard", "3/2"], "shard");
    // The built-in exclusions are tested in the engine's unit tests without any socket; here
    // the same error path is reached with loopback only.
    assert_usage_error(&["127.0.0.1", "-p", "22", "--exclude", "127.0.0.0/8"], "no target addresses left");
    assert_usage_error(&["127.0.0.1", "-p", "22", "--states", "opened"], "opened");
    assert_usage_error(&["127.0.0.1", "-p", "22", "--retry-gap", "soon"], "soon");
    assert_usage_error(&["@/nonexistent/targets.txt", "-p", "22"], "/nonexistent/targets.txt");
    assert_usage_error(&["127.0.0.1"], "--ports");
}

/// `--wait 2`, as masscan and zmap users write it: a bare number is seconds on the command
/// line (the parser's unit tests check the values); a negative one is refused with the reason.
#[test]
fn issue_17_cli_durations_take_bare_seconds() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port().to_string();
    let output =
        scan(&["127.0.0.1", "-p", &open, "--wait", "0.2", "--retry-gap", "1", "--timeout", "30", "--format", "jsonl"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let found = crate::helpers::parse_jsonl(&output);
    let address: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    assert!(found.contains(&(address, open.parse().unwrap(), synwatch_lab::Expected::Open)), "{found:?}");
    assert_usage_error(&["127.0.0.1", "-p", "22", "--wait=-1"], "expected seconds");
    assert_usage_error(&["127.0.0.1", "-p", "22", "--timeout", "2 fortnights"], "give seconds (2, 0.5) or units");
}

#[test]
fn target_files_report_the_bad_line() {
    let path = std::env::temp_dir().join(format!("synwatch-targets-{}.txt", std::process::id()));
    // The bad entry is neither an address nor a host name: a word that is a valid name would
    // be looked up with the system's resolver, and tests send nothing beyond the lab.
    std::fs::write(&path, "# loopback only\n127.0.0.1\n127.0.0.2/31\nnot..an.address\n").unwrap();
    let argument = format!("@{}", path.display());
    assert_usage_error(&[&argument, "-p", "22"], &format!("{}:4", path.display()));
    let _ = std::fs::remove_file(&path);
}

/// Runs synwatch without CAP_NET_RAW: as nobody with no capabilities when we are root, as
/// ourselves otherwise.
fn unprivileged(arguments: &[&str]) -> Output {
    if nix_is_root() {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--"])
            .arg(synwatch())
            .args(arguments)
            .output()
            .expect("setpriv (util-linux) is needed to run this test as root")
    } else {
        Command::new(synwatch()).args(arguments).output().expect("running synwatch")
    }
}

#[test]
fn issue_3_mode_syn_without_cap_net_raw_exits_1_and_names_the_ways_out() {
    let output = unprivileged(&["scan", "127.0.0.1", "-p", "9", "--mode", "syn"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for needle in ["CAP_NET_RAW", "setcap cap_net_raw+ep", "AmbientCapabilities=CAP_NET_RAW", "--mode connect"] {
        assert!(stderr.contains(needle), "{stderr:?} does not mention {needle:?}");
    }
}

#[test]
fn issue_3_auto_mode_without_cap_net_raw_falls_back_to_connect_on_loopback() {
    let listener_v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listener_v6 = std::net::TcpListener::bind("[::1]:0").unwrap();
    let open_v4 = listener_v4.local_addr().unwrap().port();
    let open_v6 = listener_v6.local_addr().unwrap().port();
    // A port that was free a moment ago: closed unless something grabs it meanwhile.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ports = format!("{open_v4},{open_v6},{closed}");
    let output = unprivileged(&["scan", "127.0.0.1", "::1", "-p", &ports, "--states", "all", "--format", "jsonl"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no CAP_NET_RAW"), "the fallback is not announced: {stderr}");
    assert!(stderr.contains("using connect() scans"), "{stderr}");
    assert!(stderr.contains("(connect mode)"), "{stderr}");
    let found = crate::helpers::parse_jsonl(&output);
    let v4: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let v6: std::net::IpAddr = "::1".parse().unwrap();
    assert_eq!(found.len(), 6, "{found:?}");
    assert!(found.contains(&(v4, open_v4, synwatch_lab::Expected::Open)), "{found:?}");
    assert!(found.contains(&(v6, open_v6, synwatch_lab::Expected::Open)), "{found:?}");
    assert!(found.contains(&(v4, closed, synwatch_lab::Expected::Closed)), "{found:?}");
    drop((listener_v4, listener_v6));
}

#[test]
fn issue_3_doctor_reports_the_mode_and_what_to_change() {
    let output = unprivileged(&["doctor"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    for needle in ["raw IP socket:   no", "mode (auto):     connect", "setcap cap_net_raw+ep", "RLIMIT_NOFILE:", "lo"] {
        assert!(stdout.contains(needle), "{stdout:?} does not mention {needle:?}");
    }
    if nix_is_root() {
        let output = Command::new(synwatch()).arg("doctor").output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("mode (auto):     syn"), "{stdout}");
        assert!(stdout.contains("nothing to change") || !stdout.contains("setcap"), "{stdout}");
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find(|line| line.starts_with("Uid:")).map(|line| line.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn issue_4_check_config_prints_the_effective_config_or_the_error_location() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/synwatch.yaml");
    let output = Command::new(synwatch()).args(["check-config", shipped]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("name: loopback") && stdout.contains("127.0.0.1"), "{stdout}");
    let path = std::env::temp_dir().join(format!("synwatch-bad-config-{}.yaml", std::process::id()));
    std::fs::write(&path, "targets:\n  - name: a\n    addresses: [127.0.0.1]\n    ports: [22, 70000]\n").unwrap();
    let output = Command::new(synwatch()).arg("check-config").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let _ = std::fs::remove_file(&path);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{}:4:17: ", path.display())), "{stderr}");
    assert!(stderr.contains("port 70000"), "{stderr}");
}
