//! End-to-end scans in the namespace lab, checked against the lab's ground truth.

use std::collections::BTreeSet;
use std::sync::Arc;

use synwatch_engine::targets::parse_target;
use synwatch_engine::{ExclusionPolicy, HostSet, JobSettings, PortSet, PortState, Protocol, Shard, TargetSpace};
use synwatch_io::{Engine, EngineConfig, JobRequest};
use synwatch_lab::Expected;

use crate::helpers::{assert_success, lab_with, net, parse_jsonl, scan_in_lab};

const PORTS: [u16; 3] = [22, 80, 443];

#[test]
fn ipv4_slash_20_matches_ground_truth_exactly() {
    let Some(lab) = lab_with(
        "ipv4_slash_20_matches_ground_truth_exactly",
        "198.18.0.0/20",
        &PORTS,
        150,
        &["198.18.14.0/24"],
        &["198.18.15.0/24"],
        0,
    ) else {
        return;
    };
    let output = scan_in_lab(
        &lab,
        &["198.18.0.0/20", "-p", "22,80,443", "--rate", "50000", "--retry-gap", "500ms", "--wait", "1s"],
    );
    assert_success(&output);
    let found = parse_jsonl(&output);
    let truth = lab.ground_truth(&[net("198.18.0.0/20")], &PORTS);
    assert_eq!(found.len(), 4096 * 3);
    let wrong: Vec<_> = found.symmetric_difference(&truth).take(10).collect();
    assert!(wrong.is_empty(), "differences from the ground truth (first 10): {wrong:?}");
    assert_eq!(truth.iter().filter(|(_, _, state)| *state == Expected::Open).count(), 150);
}

/// Issue 2: a job split over two sender threads (two lanes, each with its own TX ring) must
/// still report every probe exactly once and equal the ground truth.
#[test]
fn issue_2_two_sender_threads_match_ground_truth_exactly() {
    let Some(lab) = lab_with(
        "issue_2_two_sender_threads_match_ground_truth_exactly",
        "198.18.16.0/21",
        &PORTS,
        100,
        &["198.18.22.0/24"],
        &["198.18.23.0/24"],
        0,
    ) else {
        return;
    };
    let output = scan_in_lab(
        &lab,
        &[
            "198.18.16.0/21",
            "-p",
            "22,80,443",
            "--rate",
            "50000",
            "--sender-threads",
            "2",
            "--retry-gap",
            "500ms",
            "--wait",
            "1s",
            "-v",
        ],
    );
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("split over 2 sender thread(s)"), "the job was not split:\n{stderr}");
    // Each thread sets its ring up on a packet socket opened before the privilege drop.
    assert!(!stderr.contains("cannot open a TX ring"), "{stderr}");
    assert!(stderr.contains("via tx-ring"), "{stderr}");
    let found = parse_jsonl(&output);
    let truth = lab.ground_truth(&[net("198.18.16.0/21")], &PORTS);
    assert_eq!(found.len(), 2048 * 3);
    let wrong: Vec<_> = found.symmetric_difference(&truth).take(10).collect();
    assert!(wrong.is_empty(), "differences from the ground truth (first 10): {wrong:?}");
}

#[test]
fn ipv6_range_matches_ground_truth_exactly() {
    let Some(lab) = lab_with(
        "ipv6_range_matches_ground_truth_exactly",
        "2001:2::/116",
        &PORTS,
        150,
        &["2001:2::e00/120"],
        &["2001:2::f00/120"],
        0,
    ) else {
        return;
    };
    let output = scan_in_lab(
        &lab,
        &["2001:2::/116", "-p", "22,80,443", "--rate", "50000", "--retry-gap", "500ms", "--wait", "1s"],
    );
    assert_success(&output);
    let found = parse_jsonl(&output);
    let truth = lab.ground_truth(&[net("2001:2::/116")], &PORTS);
    let wrong: Vec<_> = found.symmetric_difference(&truth).take(10).collect();
    assert!(wrong.is_empty(), "differences from the ground truth (first 10): {wrong:?}");
}

#[test]
fn five_percent_loss_with_two_retries_still_finds_every_open_port() {
    let Some(lab) = lab_with(
        "five_percent_loss_with_two_retries_still_finds_every_open_port",
        "198.18.0.0/22",
        &PORTS,
        30,
        &[],
        &[],
        5,
    ) else {
        return;
    };
    let output = scan_in_lab(
        &lab,
        &[
            "198.18.0.0/22",
            "-p",
            "22,80,443",
            "--rate",
            "20000",
            "--retries",
            "2",
            "--retry-gap",
            "300ms",
            "--wait",
            "500ms",
        ],
    );
    assert_success(&output);
    let found = parse_jsonl(&output);
    let truth = lab.ground_truth(&[net("198.18.0.0/22")], &PORTS);
    let open = |set: &BTreeSet<_>| -> BTreeSet<_> {
        set.iter().filter(|(_, _, state)| *state == Expected::Open).copied().collect()
    };
    assert_eq!(open(&found), open(&truth));
    // Closed ports may turn filtered only if all three probes were lost; never anything else.
    for (address, port, state) in &found {
        let expected = lab.expected(*address, *port);
        assert!(
            *state == expected || (*state == Expected::Filtered && expected == Expected::Closed),
            "{address}:{port} {state:?}"
        );
    }
}

#[test]
fn shards_split_the_scan_without_overlap() {
    let Some(lab) = lab_with("shards_split_the_scan_without_overlap", "198.18.4.0/24", &PORTS, 20, &[], &[], 0) else {
        return;
    };
    let mut union = BTreeSet::new();
    let mut total = 0;
    for shard in ["1/3", "2/3", "3/3"] {
        let output = scan_in_lab(
            &lab,
            &[
                "198.18.4.0/24",
                "-p",
                "22,80,443",
                "--seed",
                "42",
                "--shard",
                shard,
                "--rate",
                "20000",
                "--wait",
                "300ms",
            ],
        );
        assert_success(&output);
        let found = parse_jsonl(&output);
        total += found.len();
        union.extend(found);
    }
    assert_eq!(total, 256 * 3, "shards overlap or miss probes");
    assert_eq!(union, lab.ground_truth(&[net("198.18.4.0/24")], &PORTS));
}

fn space(targets: &[&str], ports: &str) -> Arc<TargetSpace> {
    let hosts =
        HostSet::build(targets.iter().map(|t| parse_target(t).unwrap()).collect(), vec![], ExclusionPolicy::Default)
            .unwrap();
    Arc::new(TargetSpace::new(hosts, PortSet::parse(ports).unwrap()).unwrap())
}

#[test]
fn several_jobs_at_once_each_get_exactly_their_own_results() {
    let Some(lab) = lab_with(
        "several_jobs_at_once_each_get_exactly_their_own_results",
        "198.18.0.0/22",
        &PORTS,
        60,
        &["198.18.3.0/26"],
        &["198.18.3.64/26"],
        0,
    ) else {
        return;
    };
    // The IPv6 side of this lab answers nothing (no AnyIP route), so a third job scanning it
    // must see only filtered: replies to the IPv4 jobs must never leak into it.
    let spaces = [
        space(&["198.18.0.0/23"], "22,80"),
        space(&["198.18.1.0/24", "198.18.2.0/23"], "80,443"),
        space(&["2001:2::/120"], "22"),
    ];
    // The learned timing (the default): the lab answers in microseconds, so rounds are the
    // minimum timeout apart.
    let settings = JobSettings { retries: 1, seed: 7, shard: Shard::WHOLE, ..JobSettings::default() };
    let tables: Vec<Vec<PortState>> = lab.in_scanner(|| {
        let engine = Engine::start(EngineConfig { rate: 30_000, ..EngineConfig::default() }).expect("engine starts");
        let jobs: Vec<_> = spaces
            .iter()
            .map(|space| engine.submit(JobRequest::new(Arc::clone(space), settings, None)).expect("submit"))
            .collect();
        assert_eq!(
            jobs[0].paths()[0].1,
            "tx-ring",
            "routed IPv4 in the lab uses the TX ring after resolving the gateway"
        );
        jobs.iter()
            .map(|job| {
                let summary = job.wait();
                // The first round sends every probe once; the retry round only the unanswered.
                assert_eq!(summary.first_round.probes, job.space().len(), "first-round probes");
                assert!(summary.probes_sent >= summary.first_round.probes);
                assert!(summary.first_round.rate().is_some(), "a first round of many batches has a span");
                (0..job.space().len()).map(|index| job.table().get(index).finalized(Protocol::Tcp)).collect()
            })
            .collect()
    });
    for (space, table) in spaces.iter().zip(&tables) {
        for index in 0..space.len() {
            let (address, port) = space.probe_at(index).unwrap();
            let expected = match lab.expected(address, port.number) {
                Expected::Open => PortState::Open,
                Expected::Closed => PortState::Closed,
                Expected::Filtered => PortState::Filtered,
                Expected::OpenFiltered => PortState::OpenFiltered,
            };
            assert_eq!(table[index as usize], expected, "{address}:{port}");
        }
    }
}

/// The gateway's hardware address unknown when each scan starts (the scanner's neighbour table
/// flushed): the job's own first probe goes through the kernel, the engine waits for the
/// kernel's neighbour notification (rtnetlink), then sends through the TX ring; the results are
/// exact, and each shard reports only its own probes.
#[test]
fn issue_18_an_unresolved_gateway_is_resolved_by_the_jobs_own_first_probe() {
    let Some(lab) = lab_with("issue_18_an_unresolved_gateway_is_resolved", "198.18.24.0/24", &PORTS, 20, &[], &[], 0)
    else {
        return;
    };
    let mut found = BTreeSet::new();
    for shard in ["1/2", "2/2"] {
        let flushed = lab.scanner_command("ip").args(["neigh", "flush", "dev", lab.scanner_link()]).status().unwrap();
        assert!(flushed.success());
        let table = lab.scanner_command("cat").arg("/proc/net/arp").output().unwrap();
        let table = String::from_utf8_lossy(&table.stdout).to_string();
        assert!(
            table.lines().skip(1).all(|line| line.split_whitespace().nth(2) == Some("0x0")),
            "the gateway is still resolved: {table}"
        );
        let output = scan_in_lab(
            &lab,
            &["198.18.24.0/24", "-p", "22,80,443", "--seed", "7", "--shard", shard, "--wait", "300ms", "-v"],
        );
        assert_success(&output);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("via tx-ring"), "the TX ring after the gateway was resolved: {stderr}");
        let this_shard = parse_jsonl(&output);
        assert_eq!(this_shard.len(), 256 * 3 / 2, "shard {shard} reports its own probes only");
        found.extend(this_shard);
    }
    assert_eq!(found, lab.ground_truth(&[net("198.18.24.0/24")], &PORTS));
}
