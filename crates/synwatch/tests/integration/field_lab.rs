//! The field lab (a simulated Internet behind the veth, answered by the lab's responder from a
//! seeded model): exactness in the `lan` profile, and in `internet` and `hostile` the recall,
//! false opens and duration of today's engine recorded against the model's ground truth, with
//! the responder's own counters showing what was probed (nothing outside the targets, retries
//! only where nothing answered).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use synwatch_lab::field::{SimulatorOptions, Transport, TrueState, profile};
use synwatch_lab::{Expected, Lab, LabConfig};

use crate::helpers::{assert_success, net, parse_jsonl, scan_in_lab};

/// A field lab whose gateway the scanner knows from the start: an unknown one makes the engine
/// send its first IPv4 probe once more through the kernel (the warm-up, see
/// `synwatch_io::paths`), which would be a second SYN in the per-port counts.
pub fn field_lab(test: &str, profile_name: &str, seed: u64) -> Option<Lab> {
    let config = LabConfig {
        field: Some(profile(profile_name, seed).expect("a profile")),
        field_options: SimulatorOptions::default(),
        static_neighbour: true,
        ..LabConfig::default()
    };
    synwatch_lab::lab_or_skip(test, config)
}

/// The model's truth for `targets` × `ports`.
fn truth(lab: &Lab, targets: &[IpNetwork], ports: &[u16]) -> BTreeMap<(IpAddr, u16), TrueState> {
    let model = lab.field_model().expect("a field lab");
    let now = lab.field().expect("a responder").elapsed();
    let mut truth = BTreeMap::new();
    for target in targets {
        for address in target.iter() {
            for &port in ports {
                truth.insert((address, port), model.truth(address, port, now));
            }
        }
    }
    truth
}

/// What a scan found, scored against the truth.
#[derive(Debug)]
struct Score {
    probes: usize,
    real_open: usize,
    found_open: usize,
    false_open_suspect: usize,
    wrong_closed: usize,
    wall: Duration,
}

fn score(
    truth: &BTreeMap<(IpAddr, u16), TrueState>,
    found: &BTreeSet<(IpAddr, u16, Expected)>,
    wall: Duration,
) -> Score {
    let mut score =
        Score { probes: truth.len(), real_open: 0, found_open: 0, false_open_suspect: 0, wrong_closed: 0, wall };
    score.real_open = truth.values().filter(|state| **state == TrueState::Open).count();
    for &(address, port, state) in found {
        let true_state =
            truth.get(&(address, port)).copied().unwrap_or_else(|| panic!("{address}:{port} was not scanned"));
        match (state, true_state) {
            (Expected::Open, TrueState::Open) => score.found_open += 1,
            (Expected::Open, TrueState::Suspect) => score.false_open_suspect += 1,
            (Expected::Open, other) => panic!("{address}:{port} reported open but is {other:?}"),
            (Expected::Closed, TrueState::Closed) => {}
            (Expected::Closed, _) => score.wrong_closed += 1,
            (Expected::Filtered, _) => {}
            (Expected::OpenFiltered, _) => panic!("{address}:{port}: a TCP scan reported open|filtered"),
        }
    }
    score
}

/// The most SYNs one (host, port) gets from a scan with the default retries: the first, two
/// retries, and two host-up retries when its host answered on another port.
const MOST_SENDS: u32 = 1 + 2 + 2;

/// Every (host, port) got between one and `most` SYNs, and no SYN went anywhere else but to
/// the job's canaries: at most three ports outside the scanned ones, the same for every host,
/// sent only to hosts that answered SYN-ACK on a scanned port, at most three times each (the
/// first try and two retries). Returns the targets' counts.
fn assert_probed_only(
    lab: &Lab,
    truth: &BTreeMap<(IpAddr, u16), TrueState>,
    most: u32,
) -> BTreeMap<(IpAddr, u16), u32> {
    let responder = lab.field().expect("a responder");
    let simulator = responder.simulator();
    let all: BTreeMap<(IpAddr, u16), u32> =
        simulator.syns_per_port().iter().map(|(key, count)| (*key, *count)).collect();
    let answered_syn_ack: BTreeSet<IpAddr> = truth
        .iter()
        .filter(|(_, state)| matches!(state, TrueState::Open | TrueState::Suspect))
        .map(|((address, _), _)| *address)
        .collect();
    let mut counts = BTreeMap::new();
    let mut canary_ports = BTreeSet::new();
    for (&(address, port), &count) in &all {
        if truth.contains_key(&(address, port)) {
            assert!((1..=most).contains(&count), "{address}:{port} got {count} SYNs");
            counts.insert((address, port), count);
            continue;
        }
        assert!(truth.keys().any(|(target, _)| *target == address), "{address}:{port} was probed but is not a target");
        assert!(port >= 40_000, "{address}:{port} is not a canary port");
        assert!(answered_syn_ack.contains(&address), "canary {address}:{port} to a host with no SYN-ACK");
        assert!((1..=3).contains(&count), "canary {address}:{port} got {count} SYNs");
        canary_ports.insert(port);
    }
    assert!(canary_ports.len() <= 3, "canary ports {canary_ports:?}");
    assert_eq!(counts.len(), truth.len(), "every target was probed");
    assert_eq!(simulator.counters().outside, 0);
    counts
}

#[test]
fn field_lab_lan_profile_scans_are_exact_in_both_families_and_answered_probes_are_never_retried() {
    let Some(lab) = field_lab("field_lab_lan_profile_scans_are_exact", "lan", 21) else { return };
    let targets = [net("198.18.4.0/22"), net("2001:2::4:0/118")];
    let ports = [22u16, 80, 443];
    let truth = truth(&lab, &targets, &ports);
    let expected: BTreeSet<(IpAddr, u16, Expected)> = truth
        .iter()
        .map(|(&(address, port), state)| {
            let state = match state {
                TrueState::Open => Expected::Open,
                TrueState::Closed => Expected::Closed,
                other => panic!("lan has no {other:?}"),
            };
            (address, port, state)
        })
        .collect();
    let output = scan_in_lab(
        &lab,
        &["198.18.4.0/22,2001:2::4:0/118", "-p", "22,80,443", "--rate", "50000", "--retries", "2", "--wait", "500ms"],
    );
    assert_success(&output);
    assert_eq!(parse_jsonl(&output), expected, "the lan profile is exact");
    let counts = assert_probed_only(&lab, &truth, MOST_SENDS);
    let retried: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(retried.is_empty(), "every probe was answered, so none was retried: {retried:?}");
    let open = expected.iter().filter(|entry| entry.2 == Expected::Open).count();
    assert!(open > 100, "5 % of 6,144 probes open: {open}");
}

#[test]
fn field_lab_connect_mode_completes_handshakes_with_the_responder() {
    let Some(lab) = field_lab("field_lab_connect_mode_completes_handshakes", "lan", 22) else { return };
    let targets = [net("198.18.9.0/26"), net("2001:2::9:0/122")];
    let ports = [80u16, 443, 8080, 9100];
    let truth = truth(&lab, &targets, &ports);
    let output = scan_in_lab(
        &lab,
        &[
            "198.18.9.0/26,2001:2::9:0/122",
            "-p",
            "80,443,8080,9100",
            "--mode",
            "connect",
            "--rate",
            "5000",
            "--wait",
            "500ms",
        ],
    );
    assert_success(&output);
    let found = parse_jsonl(&output);
    let score = score(&truth, &found, Duration::ZERO);
    let missing: Vec<_> = truth
        .iter()
        .filter(|(key, state)| **state == TrueState::Open && !found.contains(&(key.0, key.1, Expected::Open)))
        .map(|(key, _)| (*key, found.iter().find(|entry| (entry.0, entry.1) == *key).map(|entry| entry.2)))
        .collect();
    let counters = lab.field().unwrap().simulator().counters();
    assert_eq!(score.found_open, score.real_open, "{score:?}, missing {missing:?}, responder {counters:?}");
    let closed = found.iter().filter(|entry| entry.2 == Expected::Closed).count();
    assert_eq!(closed, truth.values().filter(|state| **state == TrueState::Closed).count());
    // The kernel's handshake ACKs and the closing RSTs came back to the responder, unanswered.
    let counters = lab.field().unwrap().simulator().counters();
    assert!(counters.taken_quietly >= score.real_open as u64, "{counters:?}");
}

#[test]
fn field_lab_internet_and_hostile_profiles_record_recall_false_opens_and_duration() {
    for (name, seed) in [("internet", 31u64), ("hostile", 32)] {
        let Some(lab) = field_lab("field_lab_internet_and_hostile_profiles", name, seed) else { return };
        let targets = [net("198.18.32.0/22")];
        let ports = [22u16, 80, 443, 3306, 5432, 6379, 8080, 9100];
        let truth = truth(&lab, &targets, &ports);
        let started = Instant::now();
        let output =
            scan_in_lab(&lab, &["198.18.32.0/22", "-p", "22,80,443,3306,5432,6379,8080,9100", "--rate", "20000"]);
        let wall = started.elapsed();
        assert_success(&output);
        let score = score(&truth, &parse_jsonl(&output), wall);
        let counts = assert_probed_only(&lab, &truth, MOST_SENDS);
        let counters = lab.field().unwrap().simulator().counters();
        let recall = score.found_open as f64 / score.real_open as f64;
        let suspect = truth.values().filter(|state| **state == TrueState::Suspect).count();
        eprintln!(
            "field lab {name}: {} probes, {} SYNs sent, recall {:.2} % ({} of {} open), {} false opens from SYN proxies and tarpits ({} such pairs), {} wrongly closed, {:.2} s; responder {counters:?}",
            score.probes,
            counts.values().map(|count| u64::from(*count)).sum::<u64>(),
            recall * 100.0,
            score.found_open,
            score.real_open,
            score.false_open_suspect,
            suspect,
            score.wrong_closed,
            score.wall.as_secs_f64()
        );
        // Three tries against 1 % loss each way lose about one open port in 100,000. In hostile,
        // 20,000/s from one source is four times what its firewall lets through, and today's
        // engine does not slow down (it found about 64 %): the floor only catches a regression;
        // the RTT-adaptive timing issue sets the target.
        let floor = if name == "internet" { 0.99 } else { 0.50 };
        assert!(recall >= floor, "{name}: recall {recall}");
        assert!(score.real_open > 50 && suspect > 0, "the profile has open ports and middleboxes");
        // Silent (host, port)s were sent every try.
        let silent_tries: Vec<u32> = truth
            .iter()
            .filter(|(key, state)| {
                **state == TrueState::Filtered
                    && lab.field_model().unwrap().host_kind(key.0) == Some(synwatch_lab::field::HostKind::Silent)
            })
            .map(|(key, _)| counts[key])
            .collect();
        assert!(!silent_tries.is_empty() && silent_tries.iter().all(|tries| *tries == 3));
        if name == "hostile" {
            assert!(
                counters.dropped_by_firewall > 0,
                "20,000/s from one source trips the 5,000/s firewall: {counters:?}"
            );
        }
    }
}

#[test]
fn field_lab_a_scheduled_change_in_the_model_is_seen_by_the_exporter_as_one_opened_and_one_closed() {
    use synwatch_lab::field::PortBehaviour;
    use synwatch_lab::field::model::ScheduledChange;

    use crate::helpers::{Scratch, Serve, sample, wait_until};
    let test = "field_lab_a_scheduled_change_in_the_model_is_seen_by_the_exporter";
    let mut model = profile("lan", 41).expect("a profile");
    let hosts: Vec<IpAddr> = net("198.18.50.0/26").iter().collect();
    let open =
        *hosts.iter().find(|host| model.truth(**host, 80, Duration::ZERO) == TrueState::Open).expect("an open port");
    let closed = *hosts.iter().find(|host| model.truth(**host, 443, Duration::ZERO) == TrueState::Closed).unwrap();
    // Long enough for `serve` to start and finish its first scans before the network changes.
    let at_ms = 10_000;
    model.changes.push(ScheduledChange {
        at_ms,
        address: open,
        port: 80,
        transport: Transport::Tcp,
        state: PortBehaviour::Closed,
    });
    model.changes.push(ScheduledChange {
        at_ms,
        address: closed,
        port: 443,
        transport: Transport::Tcp,
        state: PortBehaviour::Open,
    });
    let config = LabConfig { field: Some(model), static_neighbour: true, ..LabConfig::default() };
    let Some(lab) = synwatch_lab::lab_or_skip(test, config) else { return };
    let scratch = Scratch::new("field-change");
    let config = scratch.join("synwatch.yaml");
    std::fs::write(
        &config,
        "targets:\n  - name: field\n    addresses: [198.18.50.0/26]\n    ports: \"80,443\"\n    details: true\n    interval: 1s\n    retries: 0\n    wait: 300ms\n",
    )
    .unwrap();
    let serve = Serve::start_in_lab(&lab, &scratch, &["--config", config.to_str().unwrap()]);
    let opened = "synwatch_port_state_changes_total{change=\"opened\",target=\"field\"}";
    let closed_changes = "synwatch_port_state_changes_total{change=\"closed\",target=\"field\"}";
    let series = |address: IpAddr, port: u16| {
        format!("synwatch_port_open{{target=\"field\",ip=\"{address}\",port=\"{port}\",proto=\"tcp\"}}")
    };
    serve.wait_for_scans("field", 2.0);
    assert!(
        lab.field().unwrap().elapsed() < Duration::from_millis(at_ms),
        "the first scans took too long to test the change"
    );
    let metrics = serve.metrics();
    assert_eq!((sample(&metrics, opened), sample(&metrics, closed_changes)), (Some(0.0), Some(0.0)), "{metrics}");
    assert_eq!((sample(&metrics, &series(open, 80)), sample(&metrics, &series(closed, 443))), (Some(1.0), Some(0.0)));
    wait_until("the scheduled change to be seen", 60, || {
        let metrics = serve.metrics();
        (sample(&metrics, &series(closed, 443)) == Some(1.0) && sample(&metrics, &series(open, 80)) == Some(0.0))
            .then_some(())
    });
    serve.wait_for_scans("field", 2.0);
    let metrics = serve.metrics();
    assert_eq!((sample(&metrics, opened), sample(&metrics, closed_changes)), (Some(1.0), Some(1.0)), "{metrics}");
}

/// Issue 21: a /16 of the `internet` profile with its SYN proxies and tarpits. `scan` flags every
/// such host (the proxies by their fingerprint, the tarpits by their canaries) and loses no
/// real open; `serve` then counts none of their SYN-ACKs open nor as an opened change.
#[test]
fn field_lab_issue_21_every_syn_proxy_and_tarpit_of_a_16_is_flagged_and_no_real_open_is_lost() {
    use synwatch_lab::field::HostKind;

    use crate::helpers::{Scratch, Serve, sample};
    let Some(lab) = field_lab("field_lab_issue_21_every_syn_proxy_and_tarpit", "internet", 33) else { return };
    let targets = [net("198.18.0.0/16")];
    let ports = [22u16, 80, 443];
    let truth = truth(&lab, &targets, &ports);
    let model = lab.field_model().unwrap();
    let output = scan_in_lab(&lab, &["198.18.0.0/16", "-p", "22,80,443", "--rate", "100000", "--seed", "21"]);
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The opens as reported, with their suspect reason.
    let mut reported: BTreeMap<(IpAddr, u16), Option<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        if value["state"] == "open" {
            let key = (value["ip"].as_str().unwrap().parse().unwrap(), value["port"].as_u64().unwrap() as u16);
            reported.insert(key, value.get("suspect").and_then(|reason| reason.as_str()).map(str::to_string));
        }
    }
    let (mut real, mut lost, mut suspect_pairs, mut unflagged) = (0, Vec::new(), 0, Vec::new());
    for (&key, state) in &truth {
        match state {
            TrueState::Open => {
                real += 1;
                if reported.get(&key) != Some(&None) {
                    lost.push((key, reported.get(&key).cloned()));
                }
            }
            TrueState::Suspect => {
                suspect_pairs += 1;
                let expected = match model.host_kind(key.0) {
                    Some(HostKind::Synproxy) => "synproxy",
                    Some(HostKind::Tarpit) => "all_open",
                    other => panic!("{key:?} is suspect in a {other:?} host"),
                };
                if reported.get(&key) != Some(&Some(expected.to_string())) {
                    unflagged.push((key, reported.get(&key).cloned()));
                }
            }
            _ => assert!(!reported.contains_key(&key), "{key:?} reported open but is {state:?}"),
        }
    }
    eprintln!("field lab issue 21: {real} real opens, {suspect_pairs} SYN-ACKs of proxies and tarpits; {stderr}");
    assert!(real > 1000 && suspect_pairs > 500, "the profile has opens and middleboxes");
    assert!(lost.is_empty(), "real opens lost or wrongly suspect: {lost:?}");
    assert!(unflagged.is_empty(), "middlebox SYN-ACKs not flagged: {unflagged:?}");
    assert_probed_only(&lab, &truth, MOST_SENDS);

    // The exporter over the same /16: two completed scans, then the counts.
    let scratch = Scratch::new("issue21-field");
    let config = scratch.join("synwatch.yaml");
    std::fs::write(
        &config,
        "engine: {max_rate: 100000}\ntargets:\n  - name: internet\n    addresses: [198.18.0.0/16]\n    ports: \"22,80,443\"\n    interval: 1s\n    timeout: 60s\n",
    )
    .unwrap();
    let serve = Serve::start_in_lab(&lab, &scratch, &["--config", config.to_str().unwrap()]);
    serve.wait_for_scans("internet", 2.0);
    let metrics = serve.metrics();
    let value = |series: &str| sample(&metrics, series).unwrap_or_else(|| panic!("no {series}:\n{metrics}"));
    let hosts_of = |kind: HostKind| {
        truth
            .iter()
            .filter(|(_, state)| **state == TrueState::Suspect)
            .filter(|((address, _), _)| model.host_kind(*address) == Some(kind))
            .map(|((address, _), _)| *address)
            .collect::<BTreeSet<_>>()
            .len() as f64
    };
    assert_eq!(
        value("synwatch_target_ports{target=\"internet\",proto=\"tcp\",state=\"open\"}"),
        real as f64,
        "{metrics}"
    );
    assert_eq!(
        value("synwatch_target_ports{target=\"internet\",proto=\"tcp\",state=\"suspect\"}"),
        suspect_pairs as f64
    );
    assert_eq!(
        value("synwatch_target_hosts_suspect{target=\"internet\",reason=\"synproxy\"}"),
        hosts_of(HostKind::Synproxy)
    );
    assert_eq!(
        value("synwatch_target_hosts_suspect{target=\"internet\",reason=\"all_open\"}"),
        hosts_of(HostKind::Tarpit)
    );
    assert_eq!(value("synwatch_port_state_changes_total{change=\"opened\",target=\"internet\"}"), 0.0);
    assert_eq!(value("synwatch_target_hosts_turned_suspect_total{target=\"internet\"}"), 0.0);
}
