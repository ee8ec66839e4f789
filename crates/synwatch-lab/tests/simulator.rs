//! The field lab's simulator driven without I/O: SYN frames written with synwatch's own probe
//! templates go in at chosen times, and the replies that come out are parsed with synwatch's
//! own reply parser, so what the responder answers is checked against the model's ground truth
//! exactly as a scanner would read it. UDP probes are written with synwatch's UDP template and
//! built-in payloads, and must draw the answers of the lab's scripted services.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use synwatch_lab::field::model::{HostMix, Loss, PortMix, RateLimit, ScheduledChange, UdpPortMix};

use synwatch_lab::field::{
    FieldModel, MAX_REPLY_LEN, PortBehaviour, Simulator, SimulatorOptions, Transport, TrueState, ground_truth_json,
    parse_segment, profile, write_reply,
};
use synwatch_wire::{LinkLayer, PayloadTable, ReplyRepr, SynFields, SynTemplate, UdpFields, UdpTemplate, parse_reply};

const SCANNER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const TARGET_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn scanner_for(address: IpAddr) -> IpAddr {
    if address.is_ipv6() { "2001:2:0:ffff::1".parse().unwrap() } else { "198.19.255.1".parse().unwrap() }
}

fn syn_frame(address: IpAddr, port: u16, sequence: u32) -> Vec<u8> {
    let link = LinkLayer::Ethernet { source_mac: SCANNER_MAC, destination_mac: TARGET_MAC };
    let template = SynTemplate::for_address(address, link);
    let mut frame = vec![0u8; template.frame_len()];
    let fields = SynFields {
        source: scanner_for(address),
        destination: address,
        source_port: 40_000,
        destination_port: port,
        sequence,
        timestamp_value: 7,
    };
    template.write(&mut frame, &fields).unwrap();
    frame
}

/// A UDP probe as synwatch sends it: the built-in payload for `port`, `cookie` in its slot.
fn udp_frame(address: IpAddr, port: u16, cookie: u32) -> Vec<u8> {
    let link = LinkLayer::Ethernet { source_mac: SCANNER_MAC, destination_mac: TARGET_MAC };
    let template = UdpTemplate::for_address(address, link);
    let table = PayloadTable::built_in();
    let payload = table.for_port(port);
    let mut frame = vec![0u8; template.frame_len(payload)];
    let fields = UdpFields {
        source: scanner_for(address),
        destination: address,
        source_port: 40_001,
        destination_port: port,
        cookie,
    };
    let length = template.write(&mut frame, &fields, payload).unwrap();
    frame.truncate(length);
    frame
}

/// Every reply out of the simulator up to `until`, parsed, with when it came out.
fn drain(simulator: &mut Simulator, from: Duration, until: Duration, step: Duration) -> Vec<(Duration, Vec<u8>)> {
    let mut out = Vec::new();
    let mut now = from;
    while now <= until {
        simulator.poll_transmit(now, |reply, answer| {
            let mut buffer = [0u8; MAX_REPLY_LEN];
            let length = write_reply(reply, answer, &mut buffer).expect("every reply can be written");
            out.push((now, buffer[..length].to_vec()));
        });
        now += step;
    }
    out
}

fn parsed(frame: &[u8]) -> ReplyRepr {
    assert_eq!(&frame[..6], &SCANNER_MAC, "replies go back to the scanner");
    parse_reply(&frame[14..]).expect("synwatch parses every reply")
}

fn lossless(mut model: FieldModel) -> FieldModel {
    model.forward_loss = Loss::None;
    model.reverse_loss = Loss::None;
    model
}

#[test]
fn the_lan_profile_answers_every_probe_as_its_ground_truth_says_after_its_round_trip() {
    let model = profile("lan", 11).unwrap();
    let mut simulator = Simulator::new(model.clone(), SimulatorOptions::default()).unwrap();
    let mut expected = BTreeMap::new();
    for host in 0..64u32 {
        for (family, base) in [(4, "198.18.3.0"), (6, "2001:2::300")] {
            let address: IpAddr = match family {
                4 => std::net::Ipv4Addr::from(u32::from(base.parse::<std::net::Ipv4Addr>().unwrap()) + host).into(),
                _ => {
                    std::net::Ipv6Addr::from(u128::from(base.parse::<std::net::Ipv6Addr>().unwrap()) + u128::from(host))
                        .into()
                }
            };
            for port in [22u16, 80, 443, 8080] {
                let sequence = host * 1000 + u32::from(port);
                simulator.handle_frame(Duration::from_millis(1), &syn_frame(address, port, sequence));
                expected.insert((address, port), (model.truth(address, port, Duration::ZERO), sequence));
            }
        }
    }
    // 0.2 ms round trip: nothing at once, everything within a millisecond.
    assert!(
        drain(&mut simulator, Duration::from_millis(1), Duration::from_millis(1), Duration::from_millis(1)).is_empty()
    );
    let replies =
        drain(&mut simulator, Duration::from_micros(1100), Duration::from_millis(3), Duration::from_micros(100));
    assert_eq!(replies.len(), expected.len());
    assert!(replies.iter().all(|(at, _)| *at >= Duration::from_micros(1200) && *at <= Duration::from_micros(1400)));
    let mut open = 0;
    for (_, frame) in &replies {
        let ReplyRepr::Tcp(reply) = parsed(frame) else { panic!("lan answers TCP only") };
        let (truth, sequence) = expected[&(reply.source, reply.source_port)];
        assert_eq!(reply.acknowledgement, sequence.wrapping_add(1));
        match truth {
            TrueState::Open => {
                assert!(reply.is_syn_ack());
                // The SYN offered a timestamp: a real stack echoes it.
                assert_eq!(reply.timestamp_echo, Some(7));
                open += 1;
            }
            TrueState::Closed => assert!(reply.is_rst()),
            other => panic!("lan has no {other:?}"),
        }
    }
    assert!(open > 0 && open < expected.len() / 4, "5 % open: {open} of {}", expected.len());
    let counters = simulator.counters();
    assert_eq!((counters.syns, counters.replies, counters.outside), (512, 512, 0));
    assert_eq!(simulator.syns_to("198.18.3.5".parse().unwrap(), 80), 1);
}

#[test]
fn the_model_is_deterministic_and_its_ground_truth_file_lists_what_it_answers() {
    let first = profile("internet", 5).unwrap();
    let again = profile("internet", 5).unwrap();
    let other = profile("internet", 6).unwrap();
    let hosts: Vec<IpAddr> = "198.18.7.0/24".parse::<ipnetwork::IpNetwork>().unwrap().iter().collect();
    let states = |model: &FieldModel| -> Vec<PortBehaviour> {
        hosts
            .iter()
            .flat_map(|&host| [22, 80].map(|port| model.behaviour(host, port, Duration::ZERO).unwrap()))
            .collect()
    };
    assert_eq!(states(&first), states(&again));
    assert_ne!(states(&first), states(&other));
    assert_eq!(first.host_rtt(hosts[9]), again.host_rtt(hosts[9]));
    // Round trips: log-normal around 80 ms, capped at 300 ms.
    let mut rtts: Vec<f64> = "198.18.0.0/20"
        .parse::<ipnetwork::IpNetwork>()
        .unwrap()
        .iter()
        .map(|host| first.host_rtt(host).unwrap().as_secs_f64() * 1000.0)
        .collect();
    rtts.sort_by(f64::total_cmp);
    let median = rtts[rtts.len() / 2];
    assert!((75.0..85.0).contains(&median), "median {median}");
    assert!(rtts.last().copied().unwrap() <= 300.0 && rtts[rtts.len() * 99 / 100] > 200.0);
    // About 70 % of hosts silent.
    let silent =
        hosts.iter().filter(|host| first.host_kind(**host) == Some(synwatch_lab::field::HostKind::Silent)).count();
    assert!((150..210).contains(&silent), "{silent} of 256 silent");

    let mut text = Vec::new();
    let written = ground_truth_json(
        &first,
        &["198.18.7.0/24".parse().unwrap()],
        &[(Transport::Tcp, 22), (Transport::Tcp, 80)],
        Duration::ZERO,
        &mut text,
    )
    .unwrap();
    let text = String::from_utf8(text).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let model: FieldModel = serde_json::from_value(header["model"].clone()).unwrap();
    assert_eq!(model, first, "the model round-trips through its JSON");
    let listed: BTreeMap<(IpAddr, u16), TrueState> = lines
        .map(|line| {
            let entry: synwatch_lab::field::model::TruthEntry = serde_json::from_str(line).unwrap();
            ((entry.ip, entry.port), entry.state)
        })
        .collect();
    assert_eq!(listed.len() as u64, written);

    // What the simulator answers, without loss and with ICMP unlimited, is the file's truth.
    let mut model = lossless(first.clone());
    model.icmp_limit = RateLimit { per_second: 1e9, burst: 1e9 };
    let mut simulator = Simulator::new(model, SimulatorOptions::default()).unwrap();
    for (index, &host) in hosts.iter().enumerate() {
        for port in [22, 80] {
            simulator.handle_frame(Duration::ZERO, &syn_frame(host, port, index as u32));
        }
    }
    let mut answered = BTreeMap::new();
    for (_, frame) in drain(&mut simulator, Duration::ZERO, Duration::from_millis(400), Duration::from_millis(1)) {
        let (key, state) = match parsed(&frame) {
            ReplyRepr::Tcp(reply) if reply.is_syn_ack() => ((reply.source, reply.source_port), "syn-ack"),
            ReplyRepr::Tcp(reply) => ((reply.source, reply.source_port), "rst"),
            ReplyRepr::Unreachable(icmp) => ((icmp.probe.destination, icmp.probe.destination_port), "icmp"),
            ReplyRepr::Udp(udp) => panic!("the field lab answers SYNs with TCP or ICMP, not {udp:?}"),
        };
        assert!(answered.insert(key, state).is_none(), "one reply per probe without duplicates");
    }
    for (key, truth) in &listed {
        let answer = answered.get(key).copied();
        let behaviour = first.behaviour(key.0, key.1, Duration::ZERO).unwrap();
        let expected = match behaviour {
            PortBehaviour::Open | PortBehaviour::SynproxySynAck | PortBehaviour::TarpitSynAck => "syn-ack",
            PortBehaviour::Closed => "rst",
            _ => "icmp",
        };
        assert_eq!(answer, Some(expected), "{key:?} is {truth:?} ({behaviour:?})");
    }
    assert_eq!(answered.len(), listed.len(), "nothing answers that the file does not list");
}

fn single_range(ports: PortMix, hosts: HostMix) -> FieldModel {
    let mut model = lossless(profile("internet", 3).unwrap());
    model.ranges.retain(|range| range.range.is_ipv4());
    model.ranges[0].hosts = hosts;
    model.ranges[0].ports = ports;
    model.ranges[0].jitter_ms = 0.0;
    model
}

#[test]
fn icmp_errors_are_rate_limited_per_source_like_linux() {
    let model = single_range(PortMix { prohibited_by_router: 100.0, ..PortMix::default() }, HostMix::default());
    let mut simulator = Simulator::new(model, SimulatorOptions::default()).unwrap();
    // 2,000 probes at once to different hosts: the router's burst of 50 answers.
    for index in 0..2000u32 {
        let host = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + index);
        simulator.handle_frame(Duration::ZERO, &syn_frame(host.into(), 80, index));
    }
    assert_eq!(simulator.counters().icmp_rate_limited, 1950);
    // Then 1,000/s: 10,000 probes over one second get about 1,000 answers.
    for index in 0..10_000u32 {
        let host = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 100, 0)) + index % 5000);
        simulator.handle_frame(Duration::from_micros(100 * u64::from(index + 1)), &syn_frame(host.into(), 80, index));
    }
    let replies = drain(&mut simulator, Duration::ZERO, Duration::from_secs(2), Duration::from_millis(1));
    assert!((1045..=1055).contains(&replies.len()), "{} ICMP errors", replies.len());
    for (_, frame) in &replies {
        let ReplyRepr::Unreachable(icmp) = parsed(frame) else { panic!("only ICMP") };
        assert_eq!(icmp.reporter, "198.19.254.1".parse::<IpAddr>().unwrap(), "from the router");
        assert_eq!(icmp.code, 13);
    }
}

#[test]
fn a_firewall_drops_syns_beyond_its_rate_from_one_source() {
    let mut model = single_range(PortMix::default(), HostMix::default());
    model.ranges[0].firewall = Some(RateLimit { per_second: 5000.0, burst: 500.0 });
    let mut simulator = Simulator::new(model, SimulatorOptions::default()).unwrap();
    // 20,000 SYNs/s for one second: the burst plus 5,000 pass.
    for index in 0..20_000u32 {
        let host = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + index);
        simulator.handle_frame(Duration::from_micros(50 * u64::from(index)), &syn_frame(host.into(), 80, index));
    }
    let counters = simulator.counters();
    assert!((5490..=5510).contains(&(20_000 - counters.dropped_by_firewall)), "{counters:?}");
    assert_eq!(simulator.held() as u64, 20_000 - counters.dropped_by_firewall);
}

#[test]
fn syn_proxies_and_tarpits_answer_every_port_with_their_fingerprints() {
    let proxies = single_range(PortMix::default(), HostMix { synproxy: 100.0, ..HostMix::default() });
    let tarpits = single_range(PortMix::default(), HostMix { tarpit: 100.0, ..HostMix::default() });
    for (model, window) in [(proxies, 0u16), (tarpits, 5)] {
        let host: IpAddr = "198.18.9.9".parse().unwrap();
        let rtt = model.host_rtt(host).unwrap();
        let mut simulator = Simulator::new(model, SimulatorOptions::default()).unwrap();
        for port in 1..=100u16 {
            simulator.handle_frame(Duration::ZERO, &syn_frame(host, port, u32::from(port)));
        }
        let replies = drain(&mut simulator, Duration::ZERO, Duration::from_millis(400), Duration::from_micros(100));
        assert_eq!(replies.len(), 100, "every port answers SYN-ACK");
        for (at, frame) in &replies {
            let tcp = &frame[14 + 20..];
            assert_eq!(u16::from_be_bytes([tcp[14], tcp[15]]), window);
            let ReplyRepr::Tcp(reply) = parsed(frame) else { panic!("TCP") };
            assert!(reply.is_syn_ack());
            assert_eq!(reply.timestamp_echo, None, "no timestamps");
            if window == 0 {
                // A SYN proxy: no options at all, and it answers before the host could.
                assert_eq!(tcp[12] >> 4, 5);
                assert!(*at < rtt);
            } else {
                assert!(*at >= rtt);
            }
        }
        let parsed_probe = parse_segment(&syn_frame(host, 80, 1)).unwrap();
        assert!(parsed_probe.is_syn() && parsed_probe.offered.sack_permitted && parsed_probe.offered.window_scale);
    }
}

#[test]
fn late_replies_duplicates_scheduled_changes_and_outside_addresses() {
    let mut model = single_range(PortMix { open: 100.0, ..PortMix::default() }, HostMix::default());
    model.late.percent = 10.0;
    model.late.delay_ms = 5000.0;
    model.duplicate_percent = 10.0;
    let changed: IpAddr = "198.18.1.1".parse().unwrap();
    model.changes.push(ScheduledChange {
        at_ms: 2000,
        address: changed,
        port: 80,
        transport: Transport::Tcp,
        state: PortBehaviour::Closed,
    });
    assert_eq!(model.truth(changed, 80, Duration::from_millis(1999)), TrueState::Open);
    assert_eq!(model.truth(changed, 80, Duration::from_millis(2000)), TrueState::Closed);
    let mut simulator = Simulator::new(model, SimulatorOptions::default()).unwrap();
    for index in 0..1000u32 {
        let host = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 2, 0)) + index);
        simulator.handle_frame(Duration::ZERO, &syn_frame(host.into(), 443, index));
    }
    let counters = simulator.counters();
    assert!((60..140).contains(&counters.late) && (60..140).contains(&counters.duplicated), "{counters:?}");
    let early = drain(&mut simulator, Duration::ZERO, Duration::from_millis(4999), Duration::from_millis(1));
    let late =
        drain(&mut simulator, Duration::from_millis(5000), Duration::from_millis(5100), Duration::from_millis(1));
    // A late reply can also be duplicated: its copy is late too.
    assert!(late.len() as u64 >= counters.late && late.len() as u64 <= 2 * counters.late, "{}", late.len());
    assert_eq!((early.len() + late.len()) as u64, 1000 + counters.duplicated);
    assert!(late.iter().all(|(at, _)| *at >= Duration::from_secs(5)));

    simulator.handle_frame(Duration::from_millis(2500), &syn_frame(changed, 80, 1));
    let after =
        drain(&mut simulator, Duration::from_millis(5101), Duration::from_millis(5600), Duration::from_millis(1));
    let ReplyRepr::Tcp(reply) = parsed(&after.last().unwrap().1) else { panic!("TCP") };
    assert!(reply.is_rst(), "closed after its scheduled change");

    simulator.handle_frame(Duration::from_secs(6), &syn_frame("198.19.7.7".parse().unwrap(), 80, 1));
    simulator.handle_frame(Duration::from_secs(6), &syn_frame("2001:2:0:ffff::9".parse().unwrap(), 80, 1));
    assert_eq!(simulator.counters().outside, 2, "outside the model: counted, never answered");
}

#[test]
fn malformed_frames_never_panic_and_are_not_answered() {
    let model = profile("lan", 1).unwrap();
    let mut simulator = Simulator::new(model, SimulatorOptions::default()).unwrap();
    let frame = syn_frame("198.18.0.1".parse().unwrap(), 80, 1);
    for length in 0..frame.len() {
        simulator.handle_frame(Duration::ZERO, &frame[..length]);
    }
    let mut state = 0x1234_5678u64;
    for _ in 0..20_000 {
        let mut bytes = frame.clone();
        for _ in 0..4 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let index = (state >> 33) as usize % bytes.len();
            bytes[index] = (state >> 20) as u8;
        }
        simulator.handle_frame(Duration::ZERO, &bytes);
    }
    // Every reply written from whatever was accepted is still a frame synwatch parses.
    for (_, frame) in drain(&mut simulator, Duration::ZERO, Duration::from_millis(5), Duration::from_millis(1)) {
        assert!(parse_reply(&frame[14..]).is_ok(), "a reply synwatch cannot parse: {frame:?}");
    }
    assert!(simulator.counters().not_tcp_or_udp > 0);
}

#[test]
fn models_outside_the_lab_ranges_or_with_bad_shares_are_refused() {
    let mut model = profile("lan", 1).unwrap();
    model.ranges[0].range = "10.0.0.0/8".parse().unwrap();
    assert!(Simulator::new(model, SimulatorOptions::default()).is_err());
    let mut model = profile("lan", 1).unwrap();
    model.ranges[0].range = "198.18.0.0/15".parse().unwrap();
    assert!(Simulator::new(model, SimulatorOptions::default()).is_err(), "the /15 holds the lab link");
    let mut model = profile("lan", 1).unwrap();
    model.ranges[0].ports.open = 101.0;
    assert!(model.validate().is_err());
    for name in ["lan", "internet", "hostile"] {
        profile(name, 1).unwrap().validate().unwrap();
    }
    assert!(profile("moon", 1).is_none());
}

#[test]
fn a_reply_written_into_a_used_buffer_carries_none_of_its_bytes() {
    let model = lossless(profile("lan", 2).unwrap());
    let mut simulator = Simulator::new(model.clone(), SimulatorOptions::default()).unwrap();
    let host: IpAddr = "198.18.0.9".parse().unwrap();
    simulator.handle_frame(Duration::ZERO, &syn_frame(host, 80, 5));
    let mut clean = [0u8; MAX_REPLY_LEN];
    let mut dirty = [0xffu8; MAX_REPLY_LEN];
    let mut lengths = Vec::new();
    simulator.poll_transmit(Duration::from_millis(5), |reply, answer| {
        lengths.push(write_reply(reply, answer, &mut clean).unwrap());
        assert_eq!(write_reply(reply, answer, &mut dirty), lengths.last().copied());
    });
    assert_eq!(lengths.len(), 1);
    assert_eq!(&clean[..lengths[0]], &dirty[..lengths[0]], "the reply is the same whatever the buffer held");
    // IPv4: no fragment offset, so the scanner's kernel does not try to reassemble it.
    assert_eq!(u16::from_be_bytes([clean[14 + 6], clean[14 + 7]]) & 0x3fff, 0);
}

/// One IPv4 and one IPv6 range of `lan` with `udp` as their UDP mix, and no per-peer ICMP limit
/// unless `peer_limit`.
fn udp_lan(udp: UdpPortMix, peer_limit: bool) -> FieldModel {
    let mut model = profile("lan", 5).unwrap();
    for range in &mut model.ranges {
        range.udp = udp;
    }
    if !peer_limit {
        model.host_icmp_peer_limit = None;
    }
    model
}

/// A UDP reply frame's payload (the frame is IPv4 or IPv6 without options).
fn udp_payload(frame: &[u8]) -> &[u8] {
    let ip_len = if frame[14] >> 4 == 6 { 40 } else { 20 };
    &frame[14 + ip_len + 8..]
}

#[test]
fn every_built_in_udp_probe_draws_its_scripted_service_s_answer_carrying_its_cookie() {
    let model = udp_lan(UdpPortMix { open: 100.0, ..UdpPortMix::default() }, false);
    let mut simulator = Simulator::new(model, SimulatorOptions::default()).unwrap();
    let table = PayloadTable::built_in();
    let mut sent = BTreeMap::new();
    for (index, service) in synwatch_lab::UdpService::PROTOCOLS.into_iter().enumerate() {
        let port = service.default_port();
        for address in [format!("198.18.9.{}", index + 1), format!("2001:2::9:{}", index + 1)] {
            let address: IpAddr = address.parse().unwrap();
            let cookie = 0x1357_0000 + index as u32 * 7919;
            let frame = udp_frame(address, port, cookie);
            if frame.len() > 400 {
                // As the receive ring hands it over: cut short, with its length on the wire.
                simulator.handle_captured_frame(Duration::ZERO, &frame[..400], frame.len());
            } else {
                simulator.handle_frame(Duration::ZERO, &frame);
            }
            sent.insert((address, port), (service, cookie));
        }
    }
    let replies = drain(&mut simulator, Duration::ZERO, Duration::from_millis(2), Duration::from_micros(100));
    assert_eq!(replies.len(), sent.len(), "every service answered: {:?}", simulator.counters());
    let mut answered = std::collections::BTreeSet::new();
    for (_, frame) in &replies {
        let ReplyRepr::Udp(reply) = parsed(frame) else { panic!("a UDP answer") };
        assert_eq!(reply.destination_port, 40_001, "to the probe's source port");
        assert_eq!(reply.destination, scanner_for(reply.source));
        let port = sent
            .keys()
            .find(|(address, port)| *address == reply.source && (*port == reply.source_port || *port == 69))
            .map(|key| key.1)
            .expect("from a probed address");
        let (service, cookie) = sent[&(reply.source, port)];
        if service.answers_from_new_port() {
            assert_ne!(reply.source_port, port, "{service:?} answers from a new port");
        } else {
            assert_eq!(reply.source_port, port, "{service:?} answers from its own port");
        }
        if let Some(bits) = table.for_port(port).echoed_cookie(udp_payload(frame)) {
            assert_eq!(bits.value, cookie & bits.mask, "{service:?} echoes the cookie");
        }
        answered.insert((reply.source, port));
    }
    assert_eq!(answered.len(), sent.len());
    assert_eq!(simulator.datagrams_to("198.18.9.1".parse().unwrap(), 53), 1);
    assert_eq!(simulator.counters().datagrams, sent.len() as u64);
    // A datagram its service does not understand (an empty one to DNS) is not answered.
    simulator.handle_frame(Duration::from_millis(3), &udp_frame("198.18.9.1".parse().unwrap(), 9999, 1)[..]);
    let mut wrong = udp_frame("198.18.9.1".parse().unwrap(), 53, 1);
    let header = wrong.len() - table.for_port(53).bytes.len();
    wrong[header + 2] |= 0x80; // a response: servers do not answer those
    simulator.handle_frame(Duration::from_millis(3), &wrong);
    let later = drain(&mut simulator, Duration::from_millis(3), Duration::from_millis(5), Duration::from_micros(100));
    assert_eq!(later.len(), 1, "the echo service on 9999 answers, DNS does not answer a response");
}

#[test]
fn closed_udp_ports_answer_port_unreachable_within_the_host_s_per_peer_limit_like_linux() {
    let model = udp_lan(UdpPortMix::default(), true);
    let mut simulator = Simulator::new(model.clone(), SimulatorOptions::default()).unwrap();
    let (v4, v6): (IpAddr, IpAddr) = ("198.18.20.1".parse().unwrap(), "2001:2::20:1".parse().unwrap());
    // 20 ports at once to each host: the burst of 6 answers.
    for port in 1000..1020 {
        for address in [v4, v6] {
            assert_eq!(model.udp_truth(address, port, Duration::ZERO), TrueState::Closed);
            simulator.handle_frame(Duration::ZERO, &udp_frame(address, port, u32::from(port)));
        }
    }
    let burst = drain(&mut simulator, Duration::ZERO, Duration::from_millis(2), Duration::from_micros(100));
    assert_eq!(burst.len(), 12, "6 per host");
    assert_eq!(simulator.counters().icmp_peer_rate_limited, 28);
    for (_, frame) in &burst {
        let ReplyRepr::Unreachable(icmp) = parsed(frame) else { panic!("ICMP port unreachable") };
        assert_eq!(icmp.code, if icmp.is_icmpv6 { 4 } else { 3 });
        assert_eq!(icmp.reporter, icmp.probe.destination, "from the host itself");
        assert_eq!(icmp.probe.transport, synwatch_wire::QuotedTransport::Udp);
        assert_eq!(icmp.probe.source_port, 40_001);
        assert!((1000..1020).contains(&icmp.probe.destination_port));
    }
    // Then one a second: probes 1.2 s apart are all answered, probes 0.1 s apart one in ten.
    let mut now = Duration::from_millis(100);
    let mut paced = 0;
    for port in 2000..2005 {
        now += Duration::from_millis(1200);
        simulator.handle_frame(now, &udp_frame(v4, port, 1));
        paced += drain(&mut simulator, now, now + Duration::from_millis(2), Duration::from_micros(100)).len();
    }
    assert_eq!(paced, 5);
    let mut hurried = 0;
    for port in 3000..3020 {
        now += Duration::from_millis(100);
        simulator.handle_frame(now, &udp_frame(v4, port, 1));
        hurried += drain(&mut simulator, now, now + Duration::from_millis(2), Duration::from_micros(100)).len();
    }
    assert!((2..=3).contains(&hurried), "{hurried} of 20 answered over 2 s");
    // Another peer's limit is its own: the scanner's IPv4 address is not the only peer.
    let mut other = udp_frame(v4, 4000, 1);
    other[14 + 12..14 + 16].copy_from_slice(&[198, 19, 255, 9]);
    now += Duration::from_millis(10);
    simulator.handle_frame(now, &other);
    assert_eq!(drain(&mut simulator, now, now + Duration::from_millis(2), Duration::from_micros(100)).len(), 1);
}

#[test]
fn udp_probes_are_answered_as_the_udp_ground_truth_says_in_the_internet_profile() {
    let model = lossless(profile("internet", 8).unwrap());
    let mut simulator = Simulator::new(model.clone(), SimulatorOptions::default()).unwrap();
    let mut truth = BTreeMap::new();
    let mut now = Duration::ZERO;
    for host in 0..2048u32 {
        let address: IpAddr =
            std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 32, 0)) + host).into();
        for port in [53u16, 123, 161] {
            // 2 ms apart: within the router's 1,000 errors a second.
            now += Duration::from_millis(2);
            truth.insert((address, port), model.udp_truth(address, port, now));
            simulator.handle_frame(now, &udp_frame(address, port, host));
        }
    }
    let replies = drain(&mut simulator, Duration::ZERO, now + Duration::from_secs(1), Duration::from_millis(1));
    let mut seen = BTreeMap::new();
    for (_, frame) in &replies {
        let (key, state) = match parsed(frame) {
            ReplyRepr::Udp(reply) => ((reply.source, reply.source_port), TrueState::Open),
            ReplyRepr::Unreachable(icmp) => {
                let state = if icmp.code == 3 { TrueState::Closed } else { TrueState::Filtered };
                ((icmp.probe.destination, icmp.probe.destination_port), state)
            }
            ReplyRepr::Tcp(_) => panic!("no TCP was sent"),
        };
        assert!(seen.insert(key, state).is_none(), "one answer per probe: {key:?}");
    }
    let mut by_state = BTreeMap::new();
    for (key, state) in &truth {
        *by_state.entry(*state).or_insert(0) += 1;
        let answered = seen.get(key).copied().unwrap_or(TrueState::OpenFiltered);
        assert_eq!(answered, *state, "{key:?}");
    }
    // 30 % of hosts answer for themselves; of their ports 4 % open, 22 % silent or filtered.
    let count = |state| by_state.get(&state).copied().unwrap_or(0);
    assert!(count(TrueState::Open) > 30, "{by_state:?}");
    assert!(count(TrueState::Closed) > 1000, "{by_state:?}");
    assert!(count(TrueState::Filtered) > 100, "{by_state:?}");
    assert!(count(TrueState::OpenFiltered) > 4000, "{by_state:?}");
    assert_eq!(count(TrueState::Suspect), 0, "SYN proxies stand in front of TCP only");
}
