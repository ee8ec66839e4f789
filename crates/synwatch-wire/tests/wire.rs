//! Build and parse tests of the wire crate, against byte fixtures made by an independent
//! implementation (see `src/fixtures.rs`), plus robustness checks on mangled input.

#[path = "../src/fixtures.rs"]
mod fixtures;

use std::net::IpAddr;

use synwatch_wire::reply::tcp_flags;
use synwatch_wire::{LinkLayer, ParseError, ReplyRepr, SynFields, SynTemplate, parse_reply};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn fields(source: &str, destination: &str, destination_port: u16) -> SynFields {
    SynFields {
        source: ip(source),
        destination: ip(destination),
        source_port: 40000,
        destination_port,
        sequence: 0x1122_3344,
        timestamp_value: 0x0102_0304,
    }
}

#[test]
fn ipv4_syn_matches_fixture_byte_for_byte() {
    let template = SynTemplate::ipv4(LinkLayer::None);
    let mut buffer = [0u8; 128];
    let len = template.write(&mut buffer, &fields("192.0.2.100", "192.0.2.1", 80)).unwrap();
    assert_eq!(&buffer[..len], &fixtures::SYN_V4[..]);
}

#[test]
fn ipv6_syn_matches_fixture_byte_for_byte() {
    let template = SynTemplate::ipv6(LinkLayer::None);
    let mut buffer = [0u8; 128];
    let len = template.write(&mut buffer, &fields("2001:db8::100", "2001:db8::1", 443)).unwrap();
    assert_eq!(&buffer[..len], &fixtures::SYN_V6[..]);
}

#[test]
fn ethernet_template_prefixes_the_link_header() {
    let link = LinkLayer::Ethernet { source_mac: [2, 0, 0, 0, 0, 1], destination_mac: [2, 0, 0, 0, 0, 2] };
    let template = SynTemplate::ipv4(link);
    let mut buffer = [0u8; 128];
    let len = template.write(&mut buffer, &fields("192.0.2.100", "192.0.2.1", 80)).unwrap();
    assert_eq!(len, 74);
    assert_eq!(&buffer[..6], &[2, 0, 0, 0, 0, 2]);
    assert_eq!(&buffer[6..12], &[2, 0, 0, 0, 0, 1]);
    assert_eq!(&buffer[12..14], &[0x08, 0x00]);
    assert_eq!(&buffer[14..len], &fixtures::SYN_V4[..]);
}

#[test]
fn write_rejects_short_buffers_and_mixed_families() {
    let template = SynTemplate::ipv4(LinkLayer::None);
    let mut short = [0u8; 59];
    assert!(template.write(&mut short, &fields("192.0.2.100", "192.0.2.1", 80)).is_err());
    let mut buffer = [0u8; 128];
    assert!(template.write(&mut buffer, &fields("2001:db8::1", "192.0.2.1", 80)).is_err());
}

#[test]
fn our_own_syn_parses_back() {
    let reply = parse_reply(&fixtures::SYN_V4).unwrap();
    let ReplyRepr::Tcp(tcp) = reply else { panic!("expected TCP, got {reply:?}") };
    assert_eq!(tcp.flags, tcp_flags::SYN);
    assert!(!tcp.is_syn_ack());
    assert_eq!(tcp.sequence, 0x1122_3344);
}

#[test]
fn ipv4_syn_ack_parses_with_timestamp_echo() {
    let ReplyRepr::Tcp(tcp) = parse_reply(&fixtures::SYN_ACK_V4).unwrap() else { panic!() };
    assert!(tcp.is_syn_ack());
    assert!(!tcp.is_rst());
    assert_eq!(tcp.source, ip("192.0.2.1"));
    assert_eq!(tcp.destination, ip("192.0.2.100"));
    assert_eq!((tcp.source_port, tcp.destination_port), (80, 40000));
    assert_eq!(tcp.acknowledgement, 0x1122_3345);
    assert_eq!(tcp.timestamp_echo, Some(0x0102_0304));
    assert_eq!((tcp.window, tcp.has_options, tcp.ttl), (0xfaf0, true, 64));
}

#[test]
fn syn_ack_fingerprint_fields_window_options_and_ttl() {
    // The RST fixture turned into a SYN-ACK: window 0 and no options, as SYN proxies answer.
    let mut bare = fixtures::RST_V4;
    bare[33] = 0x12;
    bare[8] = 250;
    let ReplyRepr::Tcp(tcp) = parse_reply(&bare).unwrap() else { panic!() };
    assert!(tcp.is_syn_ack());
    assert_eq!((tcp.window, tcp.has_options, tcp.ttl), (0, false, 250));
    // Options that are only padding (no-ops, then the end of the list) are no options.
    let mut padded = fixtures::SYN_ACK_V4;
    padded[40..60].copy_from_slice(&[1, 1, 1, 1, 0, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
    let ReplyRepr::Tcp(tcp) = parse_reply(&padded).unwrap() else { panic!() };
    assert!(!tcp.has_options);
    assert_eq!(tcp.timestamp_echo, None);
    padded[44] = 2;
    let ReplyRepr::Tcp(tcp) = parse_reply(&padded).unwrap() else { panic!() };
    assert!(tcp.has_options);
}

#[test]
fn ipv4_rst_parses() {
    let ReplyRepr::Tcp(tcp) = parse_reply(&fixtures::RST_V4).unwrap() else { panic!() };
    assert!(tcp.is_rst());
    assert!(!tcp.is_syn_ack());
    assert_eq!(tcp.source_port, 81);
    assert_eq!(tcp.acknowledgement, 0x1122_3345);
    assert_eq!(tcp.timestamp_echo, None);
}

#[test]
fn ipv6_syn_ack_and_rst_parse() {
    let ReplyRepr::Tcp(syn_ack) = parse_reply(&fixtures::SYN_ACK_V6).unwrap() else { panic!() };
    assert!(syn_ack.is_syn_ack());
    assert_eq!(syn_ack.source, ip("2001:db8::1"));
    assert_eq!(syn_ack.timestamp_echo, Some(0x0102_0304));
    assert!(syn_ack.has_options && syn_ack.window != 0);
    let ReplyRepr::Tcp(rst) = parse_reply(&fixtures::RST_V6).unwrap() else { panic!() };
    assert!(rst.is_rst());
    assert_eq!(rst.source_port, 444);
}

#[test]
fn icmpv4_unreachable_quotes_the_probe() {
    let ReplyRepr::Unreachable(icmp) = parse_reply(&fixtures::ICMP_UNREACHABLE_V4).unwrap() else { panic!() };
    assert_eq!(icmp.reporter, ip("192.0.2.254"));
    assert_eq!(icmp.code, 13);
    assert!(!icmp.is_icmpv6);
    assert_eq!(icmp.probe.source, ip("192.0.2.100"));
    assert_eq!(icmp.probe.destination, ip("192.0.2.9"));
    assert_eq!((icmp.probe.source_port, icmp.probe.destination_port), (40001, 22));
    assert_eq!(icmp.probe.sequence, 0xdead_beef);
}

#[test]
fn icmpv6_unreachable_quotes_the_probe() {
    let ReplyRepr::Unreachable(icmp) = parse_reply(&fixtures::ICMP_UNREACHABLE_V6).unwrap() else { panic!() };
    assert!(icmp.is_icmpv6);
    assert_eq!(icmp.code, 1);
    assert_eq!(icmp.probe.destination, ip("2001:db8::9"));
    assert_eq!(icmp.probe.destination_port, 22);
    assert_eq!(icmp.probe.sequence, 0xdead_beef);
}

#[test]
fn every_truncation_of_every_fixture_is_an_error_not_a_panic() {
    let all: [&[u8]; 8] = [
        &fixtures::SYN_V4,
        &fixtures::SYN_V6,
        &fixtures::SYN_ACK_V4,
        &fixtures::RST_V4,
        &fixtures::SYN_ACK_V6,
        &fixtures::RST_V6,
        &fixtures::ICMP_UNREACHABLE_V4,
        &fixtures::ICMP_UNREACHABLE_V6,
    ];
    for packet in all {
        assert!(parse_reply(packet).is_ok());
        for len in 0..packet.len() {
            assert!(parse_reply(&packet[..len]).is_err(), "prefix of {len} bytes parsed");
        }
    }
}

#[test]
fn mangled_length_fields_are_errors() {
    let mut packet = fixtures::SYN_ACK_V4;
    packet[0] = 0x44; // IHL of 16 bytes
    assert_eq!(parse_reply(&packet), Err(ParseError::BadHeaderLength));
    let mut packet = fixtures::SYN_ACK_V4;
    packet[0] = 0x4f; // IHL of 60 bytes > total length 60 - TCP
    assert!(parse_reply(&packet).is_err());
    let mut packet = fixtures::SYN_ACK_V4;
    packet[32] = 0xf0; // TCP data offset 60 bytes, beyond the packet
    assert_eq!(parse_reply(&packet), Err(ParseError::Truncated));
    let mut packet = fixtures::SYN_ACK_V4;
    packet[0] = 0x35;
    assert_eq!(parse_reply(&packet), Err(ParseError::UnknownVersion(3)));
    let mut packet = fixtures::SYN_ACK_V6;
    packet[5] = 0xff; // payload length beyond the buffer
    assert_eq!(parse_reply(&packet), Err(ParseError::Truncated));
}

/// Parses 20,000 copies of each seed with one to four bytes changed and a random length, from a
/// small deterministic xorshift generator; the fuzz target does the thorough job.
fn parse_mangled_copies(seeds: &[&[u8]], mut state: u64) {
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seed in seeds {
        for _ in 0..20_000 {
            let mut packet = seed.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let position = (next() as usize) % packet.len();
                packet[position] = next() as u8;
            }
            packet.truncate((next() as usize) % (seed.len() + 1));
            let _ = parse_reply(&packet);
        }
    }
}

#[test]
fn pseudo_random_garbage_never_panics() {
    let seeds: [&[u8]; 3] = [&fixtures::SYN_ACK_V4, &fixtures::ICMP_UNREACHABLE_V4, &fixtures::ICMP_UNREACHABLE_V6];
    parse_mangled_copies(&seeds, 0x9e37_79b9_7f4a_7c15);
}

/// Found by the fuzz target `parse_reply` (issue 22): an ICMP error quoting an IPv4 header
/// longer than the quote itself.
#[test]
fn an_icmp_quote_shorter_than_its_own_header_is_truncated_not_a_panic() {
    let packet: [u8; 56] = [
        0x45, 0x00, 0x00, 0x38, 0x00, 0x00, 0x40, 0x00, 0x40, 0x01, 0xb6, 0x41, 0xc0, 0x00, 0x02, 0x01, 0xc0, 0x00,
        0x02, 0x64, 0x03, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x4e, 0x00, 0x02, 0x04, 0x3a, 0x00, 0x40, 0x00,
        0x41, 0x11, 0xb6, 0x4d, 0xc0, 0x00, 0x02, 0x64, 0xc0, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x64,
        0x00, 0x03,
    ];
    assert_eq!(parse_reply(&packet), Err(ParseError::Truncated));
}

/// UDP answers and ICMP errors quoting UDP probes, mangled at random, never panic either.
#[test]
fn mangled_udp_answers_and_quotes_never_panic() {
    let udp_answer: &[u8] = include_bytes!("../../../fuzz/seeds/parse_reply/udp-dns-answer");
    let udp_quote: &[u8] = include_bytes!("../../../fuzz/seeds/parse_reply/icmp-port-unreachable-udp");
    assert!(matches!(parse_reply(udp_answer), Ok(ReplyRepr::Udp(_))));
    assert!(matches!(parse_reply(udp_quote), Ok(ReplyRepr::Unreachable(_))));
    parse_mangled_copies(&[udp_answer, udp_quote], 0x2545_f491_4f6c_dd1d);
}
