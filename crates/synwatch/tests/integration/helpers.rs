//! Helpers shared by the integration tests: running the binary, parsing its JSON lines, and
//! building lab fixtures with known ground truth.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::Output;

use ipnetwork::IpNetwork;
use synwatch_lab::{Expected, Lab, LabConfig};

/// Path of the synwatch binary built for these tests.
pub fn synwatch() -> &'static str {
    env!("CARGO_BIN_EXE_synwatch")
}

/// Parses a network.
pub fn net(text: &str) -> IpNetwork {
    text.parse().unwrap()
}

/// Parses `--format jsonl` output into (ip, port, state), asserting that no (ip, port) appears
/// twice.
pub fn parse_jsonl(output: &Output) -> BTreeSet<(IpAddr, u16, Expected)> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut seen = BTreeSet::new();
    let mut results = BTreeSet::new();
    for line in stdout.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("bad JSON line {line:?}: {error}"));
        let ip: IpAddr = value["ip"].as_str().unwrap().parse().unwrap();
        let port = value["port"].as_u64().unwrap() as u16;
        assert_eq!(value["proto"], "tcp");
        let state = match value["state"].as_str().unwrap() {
            "open" => Expected::Open,
            "closed" => Expected::Closed,
            "filtered" => Expected::Filtered,
            other => panic!("unknown state {other}"),
        };
        assert!(seen.insert((ip, port)), "{ip}:{port} reported twice");
        results.insert((ip, port, state));
    }
    results
}

/// Asserts that a command succeeded, showing its stderr otherwise.
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Deterministic pseudo-random listeners: `count` distinct (address, port) pairs inside
/// `range` on `ports`, avoiding `avoid`.
pub fn scattered_listeners(
    range: IpNetwork,
    ports: &[u16],
    count: usize,
    avoid: &[IpNetwork],
    seed: u64,
) -> Vec<SocketAddr> {
    let size = match range {
        IpNetwork::V4(v4) => u64::from(v4.size()),
        IpNetwork::V6(v6) => v6.size().min(u128::from(u64::MAX)) as u64,
    };
    let mut state = seed | 1;
    let mut chosen = BTreeSet::new();
    while chosen.len() < count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = state % size;
        let port = ports[(state >> 40) as usize % ports.len()];
        let address = match range {
            IpNetwork::V4(v4) => IpAddr::V4((u32::from(v4.network()) + offset as u32).into()),
            IpNetwork::V6(v6) => IpAddr::V6((u128::from(v6.network()) + u128::from(offset)).into()),
        };
        if avoid.iter().any(|network| network.contains(address)) {
            continue;
        }
        chosen.insert(SocketAddr::new(address, port));
    }
    chosen.into_iter().collect()
}

/// A lab answering for `range`, with `listeners` scattered listeners on `ports`, and the given
/// blackholed and prohibited sub-ranges.
pub fn lab_with(
    test: &str,
    range: &str,
    ports: &[u16],
    listeners: usize,
    blackholed: &[&str],
    prohibited: &[&str],
    loss_percent: u8,
) -> Option<Lab> {
    let range = net(range);
    let blackholed: Vec<IpNetwork> = blackholed.iter().map(|text| net(text)).collect();
    let prohibited: Vec<IpNetwork> = prohibited.iter().map(|text| net(text)).collect();
    let avoid: Vec<IpNetwork> = blackholed.iter().chain(&prohibited).copied().collect();
    let config = LabConfig {
        target_ranges: vec![range],
        listeners: scattered_listeners(range, ports, listeners, &avoid, 0x5eed ^ listeners as u64),
        blackholed,
        prohibited,
        loss_percent,
        ..LabConfig::default()
    };
    synwatch_lab::lab_or_skip(test, config)
}

/// Runs `synwatch scan` in the lab's scanner namespace with `arguments` plus JSON-lines output
/// of every state.
pub fn scan_in_lab(lab: &Lab, arguments: &[&str]) -> Output {
    lab.scanner_command(synwatch())
        .arg("scan")
        .args(arguments)
        .args(["--states", "all", "--format", "jsonl", "--no-progress"])
        .output()
        .expect("running synwatch")
}
