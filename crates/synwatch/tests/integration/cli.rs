//! Command-line behaviour: usage errors exit 2 with a reason, missing privileges exit 1 and name
//! the ways out. Only loopback and the documentation ranges appear as targets here, and the
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

#[test]
fn target_files_report_the_bad_line() {
    let path = std::env::temp_dir().join(format!("synwatch-targets-{}.txt", std::process::id()));
    std::fs::write(&path, "# loopback only\n127.0.0.1\n127.0.0.2/31\nnot-an-address\n").unwrap();
    let argument = format!("@{}", path.display());
    assert_usage_error(&[&argument, "-p", "22"], &format!("{}:4", path.display()));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn without_cap_net_raw_scan_exits_1_and_names_the_ways_out() {
    let output = if nix_is_root() {
        // Drop to nobody with no capabilities at all.
        let Ok(output) = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--"])
            .arg(synwatch())
            .args(["scan", "127.0.0.1", "-p", "9"])
            .output()
        else {
            panic!("setpriv (util-linux) is needed to run this test as root");
        };
        output
    } else {
        scan(&["127.0.0.1", "-p", "9"])
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("CAP_NET_RAW"), "{stderr}");
    assert!(stderr.contains("setcap cap_net_raw+ep"), "{stderr}");
    assert!(stderr.contains("--mode connect"), "{stderr}");
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find(|line| line.starts_with("Uid:")).map(|line| line.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
