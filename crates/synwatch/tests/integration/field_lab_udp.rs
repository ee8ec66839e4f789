//! The field lab over UDP (issue 22): the model's UDP services (the lab's scripted ones,
//! answered by the simulator), closed ports behind each host's Linux-like per-peer ICMP limit
//! (a burst of 6, then one a second), filtered and silent ports, loss. In `lan` a mixed TCP and
//! UDP scan is exact in raw and in connect mode although the limit hides most port unreachables
//! of the first round; in `internet` and `hostile` the UDP recall under loss is recorded against
//! the model's ground truth.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use ipnetwork::IpNetwork;
use synwatch_lab::field::TrueState;
use synwatch_lab::{Expected, Lab};

use crate::field_lab::field_lab;
use crate::helpers::{assert_success, net, parse_jsonl_with_proto, scan_in_lab};

/// The model's truth for `targets` × TCP `tcp` and UDP `udp` ports, keyed by (address, proto,
/// port).
fn truth(
    lab: &Lab,
    targets: &[IpNetwork],
    tcp: &[u16],
    udp: &[u16],
) -> BTreeMap<(IpAddr, &'static str, u16), TrueState> {
    let model = lab.field_model().expect("a field lab");
    let now = lab.field().expect("a responder").elapsed();
    let mut truth = BTreeMap::new();
    for target in targets {
        for address in target.iter() {
            for &port in tcp {
                truth.insert((address, "tcp", port), model.truth(address, port, now));
            }
            for &port in udp {
                truth.insert((address, "udp", port), model.udp_truth(address, port, now));
            }
        }
    }
    truth
}

fn expected_of(state: TrueState) -> Expected {
    match state {
        TrueState::Open => Expected::Open,
        TrueState::Closed => Expected::Closed,
        TrueState::Filtered => Expected::Filtered,
        TrueState::OpenFiltered => Expected::OpenFiltered,
        TrueState::Suspect => panic!("no middlebox in this test"),
    }
}

#[test]
fn field_lab_lan_mixed_tcp_and_udp_scans_are_exact_in_raw_and_connect_mode_behind_linux_icmp_limits() {
    let Some(lab) = field_lab("field_lab_lan_mixed_tcp_and_udp_scans_are_exact", "lan", 23) else { return };
    let targets = [net("198.18.12.0/27"), net("2001:2::12:0/123")];
    // Twelve UDP ports a host: the first round draws six port unreachables from each, the
    // rest only when retried one a second.
    let udp = [53u16, 69, 111, 123, 137, 161, 389, 443, 500, 1900, 5353, 11211];
    let truth = truth(&lab, &targets, &[22, 80], &udp);
    let expected: BTreeSet<_> =
        truth.iter().map(|(&(address, proto, port), &state)| (address, proto, port, expected_of(state))).collect();
    let open_udp = truth.iter().filter(|(key, state)| key.1 == "udp" && **state == TrueState::Open).count();
    assert!(open_udp > 0, "lan has open UDP ports");
    let ports = "tcp/22,80,udp/53,69,111,123,137,161,389,443,500,1900,5353,11211";
    for mode in ["syn", "connect"] {
        let before: BTreeMap<(IpAddr, u16), u32> =
            lab.field().unwrap().simulator().datagrams_per_port().iter().map(|(key, count)| (*key, *count)).collect();
        let started = Instant::now();
        let output = scan_in_lab(
            &lab,
            &["198.18.12.0/27,2001:2::12:0/123", "-p", ports, "--mode", mode, "--rate", "20000", "--wait", "500ms"],
        );
        let wall = started.elapsed();
        assert_success(&output);
        let found = parse_jsonl_with_proto(&output);
        let counters = lab.field().unwrap().simulator().counters();
        let wrong: Vec<_> = expected.symmetric_difference(&found).take(10).collect();
        assert!(wrong.is_empty(), "{mode}: differs from the truth at {wrong:?}; responder {counters:?}");
        assert!(counters.icmp_peer_rate_limited > 0, "the per-peer limit held answers back: {counters:?}");
        // Each (host, UDP port) got one to three datagrams, and an answered one only one.
        let simulator = lab.field().unwrap().simulator();
        for (&(address, proto, port), &state) in &truth {
            if proto != "udp" {
                continue;
            }
            let sent = simulator.datagrams_to(address, port) - before.get(&(address, port)).copied().unwrap_or(0);
            assert!((1..=3).contains(&sent), "{mode}: {address}:udp/{port} got {sent} datagrams");
            if state == TrueState::Open {
                assert_eq!(sent, 1, "{mode}: {address}:udp/{port} answered and was retried");
            }
        }
        eprintln!(
            "field lab lan UDP {mode}: {} probes exact in {:.2} s; responder {counters:?}",
            truth.len(),
            wall.as_secs_f64()
        );
    }
}

#[test]
fn field_lab_internet_and_hostile_record_udp_recall_under_loss() {
    for (name, seed) in [("internet", 34u64), ("hostile", 35)] {
        let Some(lab) = field_lab("field_lab_internet_and_hostile_record_udp_recall", name, seed) else { return };
        let targets = [net("198.18.40.0/22")];
        let udp = [53u16, 123, 161, 1900, 5353];
        let truth = truth(&lab, &targets, &[], &udp);
        let started = Instant::now();
        let output = scan_in_lab(&lab, &["198.18.40.0/22", "-p", "udp/53,123,161,1900,5353", "--rate", "20000"]);
        let wall = started.elapsed();
        assert_success(&output);
        let found: BTreeMap<(IpAddr, u16), Expected> = parse_jsonl_with_proto(&output)
            .into_iter()
            .map(|(address, proto, port, state)| {
                assert_eq!(proto, "udp");
                ((address, port), state)
            })
            .collect();
        let mut tally: BTreeMap<(TrueState, Expected), usize> = BTreeMap::new();
        for (&(address, _, port), &state) in &truth {
            let reported = found.get(&(address, port)).copied().unwrap_or_else(|| panic!("{address}:{port} missing"));
            // A UDP answer can only come from a service, and a port unreachable only from a
            // closed port: never a false open nor a false closed, whatever the loss.
            match reported {
                Expected::Open => assert_eq!(state, TrueState::Open, "{address}:udp/{port} reported open"),
                Expected::Closed => assert_eq!(state, TrueState::Closed, "{address}:udp/{port} reported closed"),
                _ => {}
            }
            *tally.entry((state, reported)).or_insert(0) += 1;
        }
        let of = |state: TrueState| truth.values().filter(|truth| **truth == state).count();
        let hit = |state: TrueState, reported: Expected| tally.get(&(state, reported)).copied().unwrap_or(0);
        let open_recall = hit(TrueState::Open, Expected::Open) as f64 / of(TrueState::Open) as f64;
        let closed_recall = hit(TrueState::Closed, Expected::Closed) as f64 / of(TrueState::Closed) as f64;
        let filtered_recall = hit(TrueState::Filtered, Expected::Filtered) as f64 / of(TrueState::Filtered) as f64;
        let counters = lab.field().unwrap().simulator().counters();
        eprintln!(
            "field lab {name} UDP: {} probes in {:.2} s, open recall {:.2} % ({} of {}), closed {:.2} % of {}, filtered (ICMP) {:.2} % of {}, open|filtered {}; responder {counters:?}",
            truth.len(),
            wall.as_secs_f64(),
            open_recall * 100.0,
            hit(TrueState::Open, Expected::Open),
            of(TrueState::Open),
            closed_recall * 100.0,
            of(TrueState::Closed),
            filtered_recall * 100.0,
            of(TrueState::Filtered),
            of(TrueState::OpenFiltered),
        );
        assert!(of(TrueState::Open) > 10 && of(TrueState::Closed) > 100, "the profile has UDP services");
        // internet: three tries against 1 % loss each way. hostile: bursty loss and a firewall
        // dropping probes beyond 5,000/s from one source; the floors catch regressions.
        let (open_floor, closed_floor) = if name == "internet" { (0.99, 0.98) } else { (0.80, 0.80) };
        assert!(open_recall >= open_floor, "{name}: open recall {open_recall}");
        assert!(closed_recall >= closed_floor, "{name}: closed recall {closed_recall}");
    }
}
