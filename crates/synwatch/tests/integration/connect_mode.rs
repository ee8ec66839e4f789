//! Issue 3 in the lab: the connect() fallback against the same ground truth as the SYN scan,
//! the privilege drop as seen in /proc, and a low descriptor limit.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use synwatch_lab::{Expected, Lab};

use crate::helpers::{assert_success, lab_with, net, parse_jsonl, scan_in_lab, synwatch};

const PORTS: [u16; 3] = [22, 80, 443];
const RANGE: &str = "198.18.32.0/22";
const BLACKHOLED: &str = "198.18.35.0/25";
const PROHIBITED: &str = "198.18.35.128/26";

fn connect_lab(test: &str) -> Option<Lab> {
    lab_with(test, RANGE, &PORTS, 80, &[BLACKHOLED], &[PROHIBITED], 0)
}

/// `synwatch <arguments>` in the scanner namespace as nobody, with no capabilities at all, and
/// optionally a hard descriptor limit.
fn unprivileged_in_lab(lab: &Lab, nofile: Option<u32>, arguments: &[&str]) -> Command {
    let mut command = lab.scanner_command("setpriv");
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--"]);
    if let Some(limit) = nofile {
        command.args(["prlimit", &format!("--nofile={limit}:{limit}"), "--"]);
    }
    command.arg(synwatch()).args(arguments);
    command
}

/// `scan RANGE` with the options every test here shares, then `extra`.
fn scan_arguments<'a>(range: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut arguments = vec![
        "scan",
        range,
        "-p",
        "22,80,443",
        "--rate",
        "20000",
        "--retry-gap",
        "500ms",
        "--wait",
        "500ms",
        "--states",
        "all",
        "--format",
        "jsonl",
        "--no-progress",
    ];
    arguments.extend_from_slice(extra);
    arguments
}

fn assert_equals_ground_truth(lab: &Lab, output: &Output) {
    assert_success(output);
    let found = parse_jsonl(output);
    let truth = lab.ground_truth(&[net(RANGE)], &PORTS);
    assert_eq!(found.len(), 1024 * 3);
    let wrong: Vec<_> = found.symmetric_difference(&truth).take(10).collect();
    assert!(wrong.is_empty(), "differences from the ground truth (first 10): {wrong:?}");
}

#[test]
fn issue_3_without_cap_net_raw_the_connect_scan_equals_the_syn_scan() {
    let Some(lab) = connect_lab("issue_3_without_cap_net_raw_the_connect_scan_equals_the_syn_scan") else {
        return;
    };
    let syn = scan_in_lab(&lab, &[RANGE, "-p", "22,80,443", "--rate", "20000", "--wait", "500ms", "--mode", "syn"]);
    assert_success(&syn);
    let connect = unprivileged_in_lab(&lab, None, &scan_arguments(RANGE, &[])).output().expect("running synwatch");
    let stderr = String::from_utf8_lossy(&connect.stderr);
    assert!(stderr.contains("using connect() scans"), "{stderr}");
    assert!(stderr.contains("(connect mode)"), "{stderr}");
    assert_equals_ground_truth(&lab, &connect);
    // Open and closed sets equal the SYN scan's; the blackholed and prohibited ranges are filtered.
    assert_eq!(parse_jsonl(&syn), parse_jsonl(&connect));
    let filtered = parse_jsonl(&connect).into_iter().filter(|(_, _, state)| *state == Expected::Filtered).count();
    assert_eq!(filtered, (128 + 64) * 3);
}

#[test]
fn issue_3_a_low_descriptor_limit_still_gives_exact_results() {
    let Some(lab) = connect_lab("issue_3_a_low_descriptor_limit_still_gives_exact_results") else {
        return;
    };
    // The default in-flight limit derived from 256 descriptors.
    let output =
        unprivileged_in_lab(&lab, Some(256), &scan_arguments(RANGE, &["-v"])).output().expect("running synwatch");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_inflight=144"), "the limit is not derived from RLIMIT_NOFILE: {stderr}");
    assert_equals_ground_truth(&lab, &output);
    // An in-flight limit far above the descriptor limit: EMFILE must slow the scan, not lose probes.
    let output = unprivileged_in_lab(&lab, Some(256), &scan_arguments(RANGE, &["--max-inflight", "5000"]))
        .output()
        .expect("running synwatch");
    assert_equals_ground_truth(&lab, &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let pauses: u64 = stderr
        .split(" backpressure pauses")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no backpressure count in {stderr}"));
    assert!(pauses > 0, "running out of descriptors was never hit: {stderr}");
}

/// Waits until the child has started its engine threads (named `synwatch-*`), then returns the
/// (thread name, CapEff, CapPrm) of every thread.
fn capabilities_once_started(child: &Child) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = format!("/proc/{}/task", child.id());
        let mut threads = Vec::new();
        for entry in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let field = |name: &str| {
                status.lines().find_map(|line| line.strip_prefix(name)).map(str::trim).unwrap_or("").to_string()
            };
            threads.push((field("Name:"), field("CapEff:"), field("CapPrm:")));
        }
        if threads.iter().any(|(name, _, _)| name.starts_with("synwatch-")) {
            return threads;
        }
        assert!(Instant::now() < deadline, "synwatch did not start its threads: {threads:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn issue_3_a_running_scan_holds_no_capabilities_in_either_mode() {
    let Some(lab) = connect_lab("issue_3_a_running_scan_holds_no_capabilities_in_either_mode") else {
        return;
    };
    for mode in ["syn", "connect"] {
        // Started as root; a slow scan of the blackholed range keeps it running while we look.
        let mut child = lab
            .scanner_command(synwatch())
            .args(["scan", BLACKHOLED, "-p", "1-100", "--rate", "500", "--mode", mode, "--no-progress"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running synwatch");
        let threads = capabilities_once_started(&child);
        let _ = child.kill();
        let _ = child.wait();
        assert!(threads.len() >= 2, "{mode}: {threads:?}");
        for (name, effective, permitted) in &threads {
            assert_eq!(effective, "0000000000000000", "{mode}: thread {name} keeps effective capabilities");
            assert_eq!(permitted, "0000000000000000", "{mode}: thread {name} keeps permitted capabilities");
        }
    }
}

#[test]
fn issue_3_two_connect_threads_match_ground_truth_exactly() {
    let Some(lab) =
        lab_with("issue_3_two_connect_threads_match_ground_truth_exactly", "198.18.40.0/21", &PORTS, 100, &[], &[], 0)
    else {
        return;
    };
    let output = unprivileged_in_lab(&lab, None, &scan_arguments("198.18.40.0/21", &["--sender-threads", "2", "-v"]))
        .output()
        .expect("running synwatch");
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("split over 2 sender thread(s)"), "{stderr}");
    let found = parse_jsonl(&output);
    let truth = lab.ground_truth(&[net("198.18.40.0/21")], &PORTS);
    assert_eq!(found.len(), 2048 * 3, "{stderr}");
    let wrong: Vec<_> = found.symmetric_difference(&truth).take(10).collect();
    assert!(wrong.is_empty(), "differences from the ground truth (first 10): {wrong:?}\n{stderr}");
}
