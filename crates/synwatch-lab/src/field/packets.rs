//! The responder's wire side: reading a TCP segment or UDP datagram out of an Ethernet frame
//! and writing the replies the model decided on (SYN-ACK in three styles, RST, a UDP service's
//! answer, ICMP and ICMPv6 destination unreachable). Parsing never panics on any input: every
//! length is checked by the `pnet` views, and a frame that is not an IPv4 or IPv6 TCP segment or
//! UDP datagram is `None`.
//!
//! A frame may arrive cut short (the responder's receive ring keeps the first few hundred bytes
//! of each): a TCP segment must be whole, a UDP datagram may be cut in its payload, and
//! [`parse_probe`] says how long the payload really was.

use std::net::IpAddr;

use pnet_packet::Packet;
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmp::{self, IcmpCode, IcmpTypes, MutableIcmpPacket};
use pnet_packet::icmpv6::{self, Icmpv6Code, Icmpv6Types, MutableIcmpv6Packet};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::{self, Ipv4Flags, Ipv4Packet, MutableIpv4Packet};
use pnet_packet::ipv6::{Ipv6Packet, MutableIpv6Packet};
use pnet_packet::tcp::{self, MutableTcpPacket, TcpFlags, TcpOption, TcpOptionNumbers, TcpPacket};
use pnet_packet::udp::{self, MutableUdpPacket, UdpPacket};

use super::model::Transport;

/// Bytes of the probe kept for an ICMP quote: IPv4 quotes the IP header and 8 bytes (RFC 792),
/// IPv6 as much of the packet as fits the minimum MTU (RFC 4443); a SYN probe is at most 60
/// bytes of IPv6 header and TCP header with options, so 100 bytes is the whole probe (of a UDP
/// probe, its headers and the first bytes of its payload).
pub const QUOTE_LEN: usize = 100;

/// The longest UDP answer [`write_reply`] writes (longer ones are cut to it).
pub const MAX_ANSWER_LEN: usize = 1200;

/// The longest frame [`write_reply`] writes.
pub const MAX_REPLY_LEN: usize = 14 + 40 + 8 + MAX_ANSWER_LEN;

/// What the responder needs of an arriving TCP segment or UDP datagram (for UDP, the sequence
/// and flags are zero and no options are offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// TCP or UDP.
    pub transport: Transport,
    /// The Ethernet source (the scanner) and destination (us).
    pub source_mac: [u8; 6],
    /// Our hardware address, as the frame named it.
    pub destination_mac: [u8; 6],
    /// The scanner's address.
    pub source: IpAddr,
    /// The probed address.
    pub destination: IpAddr,
    /// The scanner's port.
    pub source_port: u16,
    /// The probed port.
    pub destination_port: u16,
    /// Sequence number.
    pub sequence: u32,
    /// TCP flags.
    pub flags: u8,
    /// The options the SYN offered (the SYN-ACK of a real stack mirrors them).
    pub offered: OfferedOptions,
    /// The IP packet's first bytes, for an ICMP quote.
    pub quote: [u8; QUOTE_LEN],
    /// How many of `quote` are the packet's.
    pub quote_len: u8,
}

/// TCP options a SYN offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OfferedOptions {
    /// SACK permitted.
    pub sack_permitted: bool,
    /// Window scaling.
    pub window_scale: bool,
    /// The timestamp value, when the SYN carried the option.
    pub timestamp: Option<u32>,
}

impl Segment {
    /// A TCP SYN alone (no ACK, RST or FIN): a probe or a connection attempt.
    pub fn is_syn(&self) -> bool {
        self.transport == Transport::Tcp
            && self.flags & (TcpFlags::SYN | TcpFlags::ACK | TcpFlags::RST | TcpFlags::FIN) == TcpFlags::SYN
    }
}

/// A parsed probe: the segment, and for UDP the payload bytes the frame holds and the
/// payload's real length (more when the frame was cut short).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe<'a> {
    /// The headers.
    pub segment: Segment,
    /// The UDP payload as captured (empty for TCP).
    pub payload: &'a [u8],
    /// The UDP payload's length on the wire.
    pub payload_len: usize,
}

fn offered_options(segment: &TcpPacket<'_>) -> OfferedOptions {
    let mut offered = OfferedOptions::default();
    for option in segment.get_options_iter() {
        let number = option.get_number();
        if number == TcpOptionNumbers::SACK_PERMITTED {
            offered.sack_permitted = true;
        } else if number == TcpOptionNumbers::WSCALE {
            offered.window_scale = true;
        } else if number == TcpOptionNumbers::TIMESTAMPS {
            let payload = option.payload();
            if payload.len() >= 4 {
                offered.timestamp = Some(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]));
            }
        }
    }
    offered
}

/// Reads an Ethernet frame carrying an IPv4 or IPv6 TCP segment (IPv4 not fragmented, IPv6
/// without extension headers); anything else (UDP included) is `None`.
pub fn parse_segment(frame: &[u8]) -> Option<Segment> {
    parse_probe(frame, frame.len()).map(|probe| probe.segment).filter(|segment| segment.transport == Transport::Tcp)
}

/// Reads an Ethernet frame of `wire_len` bytes, of which `frame` holds the first, carrying an
/// IPv4 or IPv6 TCP segment or UDP datagram (IPv4 not fragmented, IPv6 without extension
/// headers); anything else is `None`. Only a UDP datagram's payload may be missing from
/// `frame`.
pub fn parse_probe(frame: &[u8], wire_len: usize) -> Option<Probe<'_>> {
    let ethernet = EthernetPacket::new(frame)?;
    // What the IP header says is there, against what the frame holds.
    let cut = wire_len.saturating_sub(frame.len());
    let source_mac = ethernet.get_source().octets();
    let destination_mac = ethernet.get_destination().octets();
    // The frame's own bytes, not the view's, so the payload can outlive the view.
    let ip_bytes = frame.get(14..)?;
    let transport_of = |protocol| match protocol {
        IpNextHeaderProtocols::Tcp => Some(Transport::Tcp),
        IpNextHeaderProtocols::Udp => Some(Transport::Udp),
        _ => None,
    };
    // `end`: where the transport's bytes end on the wire, which for UDP may be past the frame.
    let (source, destination, transport, start, end) = match ethernet.get_ethertype() {
        EtherTypes::Ipv4 => {
            let header = Ipv4Packet::new(ip_bytes)?;
            let header_len = usize::from(header.get_header_length()) * 4;
            let total_len = usize::from(header.get_total_length());
            let fragmented = header.get_fragment_offset() != 0 || header.get_flags() & Ipv4Flags::MoreFragments != 0;
            if header.get_version() != 4
                || header_len < 20
                || total_len < header_len
                || total_len > ip_bytes.len() + cut
                || fragmented
            {
                return None;
            }
            let transport = transport_of(header.get_next_level_protocol())?;
            (IpAddr::V4(header.get_source()), IpAddr::V4(header.get_destination()), transport, header_len, total_len)
        }
        EtherTypes::Ipv6 => {
            let header = Ipv6Packet::new(ip_bytes)?;
            let end = 40 + usize::from(header.get_payload_length());
            if header.get_version() != 6 || end > ip_bytes.len() + cut {
                return None;
            }
            let transport = transport_of(header.get_next_header())?;
            (IpAddr::V6(header.get_source()), IpAddr::V6(header.get_destination()), transport, 40, end)
        }
        _ => return None,
    };
    let held = ip_bytes.get(start..end.min(ip_bytes.len()))?;
    let (source_port, destination_port, sequence, flags, offered, payload, payload_len) = match transport {
        Transport::Tcp => {
            if end > ip_bytes.len() {
                return None;
            }
            let segment = TcpPacket::new(held)?;
            let data_offset = usize::from(segment.get_data_offset()) * 4;
            if data_offset < 20 || data_offset > held.len() {
                return None;
            }
            let offered = offered_options(&segment);
            (
                segment.get_source(),
                segment.get_destination(),
                segment.get_sequence(),
                segment.get_flags(),
                offered,
                &[][..],
                0,
            )
        }
        Transport::Udp => {
            let datagram = UdpPacket::new(held)?;
            let length = usize::from(datagram.get_length());
            if length < 8 || length != end - start {
                return None;
            }
            let payload = &held[8..];
            (datagram.get_source(), datagram.get_destination(), 0, 0, OfferedOptions::default(), payload, length - 8)
        }
    };
    let mut quote = [0u8; QUOTE_LEN];
    let ip_len = ip_bytes.len().min(QUOTE_LEN);
    quote[..ip_len].copy_from_slice(&ip_bytes[..ip_len]);
    let quote_len = match source {
        // The IPv4 header and the first 8 bytes of TCP or UDP.
        IpAddr::V4(_) => (start + 8).min(ip_len),
        IpAddr::V6(_) => ip_len.min(end),
    } as u8;
    let segment = Segment {
        transport,
        source_mac,
        destination_mac,
        source,
        destination,
        source_port,
        destination_port,
        sequence,
        flags,
        offered,
        quote,
        quote_len,
    };
    Some(Probe { segment, payload, payload_len })
}

/// Which reply to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// A SYN-ACK from a real stack: MSS, and the options the SYN offered, as Linux answers.
    StackSynAck,
    /// A SYN proxy's SYN-ACK: window 0, no options.
    ProxySynAck,
    /// A tarpit's SYN-ACK: a tiny window and only an MSS option.
    TarpitSynAck,
    /// RST, ACK.
    Rst,
    /// ICMP administratively prohibited (ICMPv4 type 3 code 13, ICMPv6 type 1 code 1).
    Prohibited,
    /// ICMP host unreachable (ICMPv4 type 3 code 1, ICMPv6 type 1 code 3, address
    /// unreachable).
    HostUnreachable,
    /// ICMP port unreachable (ICMPv4 type 3 code 3, ICMPv6 type 1 code 4).
    PortUnreachable,
    /// A UDP datagram carrying a service's answer, from the probed address.
    UdpAnswer,
}

/// A decided reply, held in the timer wheel until it is due.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    /// What to write.
    pub kind: ReplyKind,
    /// The probe it answers.
    pub probe: Segment,
    /// Who sends an ICMP reply (the host or the router); TCP replies come from the probed
    /// address.
    pub icmp_source: IpAddr,
    /// The SYN-ACK's initial sequence number.
    pub initial_sequence: u32,
    /// The IP TTL or hop limit the reply arrives with.
    pub ttl: u8,
    /// A UDP answer's source port: the probed port, or another one for a service that
    /// answers from a new port (TFTP).
    pub answer_port: u16,
    /// Which of the simulator's stored answers a UDP answer carries (its bytes are held out of
    /// line, so a reply stays small and `Copy` in the timer wheel); 0 for none.
    pub answer: u32,
}

fn write_ip_header(
    buffer: &mut [u8],
    source: IpAddr,
    destination: IpAddr,
    payload_len: usize,
    protocol: u8,
    ttl: u8,
) -> Option<usize> {
    match (source, destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            let mut header = MutableIpv4Packet::new(buffer.get_mut(..20)?)?;
            header.set_version(4);
            header.set_header_length(5);
            header.set_total_length((20 + payload_len) as u16);
            header.set_flags(Ipv4Flags::DontFragment);
            header.set_ttl(ttl);
            header.set_next_level_protocol(pnet_packet::ip::IpNextHeaderProtocol(protocol));
            header.set_source(source);
            header.set_destination(destination);
            header.set_checksum(0);
            let checksum = ipv4::checksum(&header.to_immutable());
            header.set_checksum(checksum);
            Some(20)
        }
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            let mut header = MutableIpv6Packet::new(buffer.get_mut(..40)?)?;
            header.set_version(6);
            header.set_payload_length(payload_len as u16);
            header.set_next_header(pnet_packet::ip::IpNextHeaderProtocol(protocol));
            header.set_hop_limit(ttl);
            header.set_source(source);
            header.set_destination(destination);
            Some(40)
        }
        _ => None,
    }
}

/// Writes `reply` as an Ethernet frame into `buffer` (at least [`MAX_REPLY_LEN`] bytes) and
/// returns its length; `answer` is a UDP answer's payload (cut to [`MAX_ANSWER_LEN`]), ignored
/// for every other kind. `None` only for a buffer too short or mixed families.
pub fn write_reply(reply: &Reply, answer: &[u8], buffer: &mut [u8]) -> Option<usize> {
    let probe = &reply.probe;
    // Buffers are reused: every byte a field setter does not write (the fragment offset, the
    // urgent pointer, ICMP's unused word) must be zero, not the last frame's.
    let buffer = buffer.get_mut(..MAX_REPLY_LEN)?;
    // Every reply but a UDP answer fits in the first bytes, and a UDP answer's payload is
    // written whole: clearing only those keeps a TCP reply as cheap as it was.
    buffer[..14 + 40 + 8 + QUOTE_LEN].fill(0);
    let is_ipv6 = probe.source.is_ipv6();
    {
        let mut ethernet = MutableEthernetPacket::new(buffer.get_mut(..14)?)?;
        ethernet.set_source(probe.destination_mac.into());
        ethernet.set_destination(probe.source_mac.into());
        ethernet.set_ethertype(if is_ipv6 { EtherTypes::Ipv6 } else { EtherTypes::Ipv4 });
    }
    let ip_header_len = if is_ipv6 { 40 } else { 20 };
    let (ip_part, rest) = buffer.get_mut(14..)?.split_at_mut(ip_header_len);
    let payload_len = match reply.kind {
        ReplyKind::StackSynAck | ReplyKind::ProxySynAck | ReplyKind::TarpitSynAck | ReplyKind::Rst => {
            let mut options = Vec::with_capacity(6);
            let (flags, window, sequence) = match reply.kind {
                ReplyKind::Rst => (TcpFlags::RST | TcpFlags::ACK, 0, 0),
                ReplyKind::ProxySynAck => (TcpFlags::SYN | TcpFlags::ACK, 0, reply.initial_sequence),
                ReplyKind::TarpitSynAck => {
                    options.push(TcpOption::mss(536));
                    (TcpFlags::SYN | TcpFlags::ACK, 5, reply.initial_sequence)
                }
                _ => {
                    options.push(TcpOption::mss(if is_ipv6 { 1440 } else { 1460 }));
                    match (probe.offered.sack_permitted, probe.offered.timestamp) {
                        (true, Some(value)) => {
                            options.push(TcpOption::sack_perm());
                            options.push(TcpOption::timestamp(reply.initial_sequence, value));
                        }
                        (false, Some(value)) => {
                            options.extend([TcpOption::nop(), TcpOption::nop()]);
                            options.push(TcpOption::timestamp(reply.initial_sequence, value));
                        }
                        (true, None) => options.extend([TcpOption::nop(), TcpOption::nop(), TcpOption::sack_perm()]),
                        (false, None) => {}
                    }
                    if probe.offered.window_scale {
                        options.extend([TcpOption::nop(), TcpOption::wscale(7)]);
                    }
                    (TcpFlags::SYN | TcpFlags::ACK, 65160, reply.initial_sequence)
                }
            };
            let options_len: usize = options
                .iter()
                .map(|option| match option.number {
                    TcpOptionNumbers::NOP => 1,
                    TcpOptionNumbers::MSS => 4,
                    TcpOptionNumbers::SACK_PERMITTED => 2,
                    TcpOptionNumbers::WSCALE => 3,
                    _ => 10,
                })
                .sum();
            let tcp_len = 20 + options_len;
            let mut segment = MutableTcpPacket::new(rest.get_mut(..tcp_len)?)?;
            segment.set_source(probe.destination_port);
            segment.set_destination(probe.source_port);
            segment.set_sequence(sequence);
            segment.set_acknowledgement(probe.sequence.wrapping_add(1));
            segment.set_data_offset((tcp_len / 4) as u8);
            segment.set_flags(flags);
            segment.set_window(window);
            segment.set_options(&options);
            let checksum = match (probe.destination, probe.source) {
                (IpAddr::V4(from), IpAddr::V4(to)) => tcp::ipv4_checksum(&segment.to_immutable(), &from, &to),
                (IpAddr::V6(from), IpAddr::V6(to)) => tcp::ipv6_checksum(&segment.to_immutable(), &from, &to),
                _ => return None,
            };
            segment.set_checksum(checksum);
            write_ip_header(ip_part, probe.destination, probe.source, tcp_len, 6, reply.ttl)?;
            tcp_len
        }
        ReplyKind::UdpAnswer => {
            let answer = &answer[..answer.len().min(MAX_ANSWER_LEN)];
            let udp_len = 8 + answer.len();
            let mut datagram = MutableUdpPacket::new(rest.get_mut(..udp_len)?)?;
            datagram.set_source(reply.answer_port);
            datagram.set_destination(probe.source_port);
            datagram.set_length(udp_len as u16);
            datagram.set_payload(answer);
            let checksum = match (probe.destination, probe.source) {
                (IpAddr::V4(from), IpAddr::V4(to)) => udp::ipv4_checksum(&datagram.to_immutable(), &from, &to),
                (IpAddr::V6(from), IpAddr::V6(to)) => udp::ipv6_checksum(&datagram.to_immutable(), &from, &to),
                _ => return None,
            };
            datagram.set_checksum(checksum);
            write_ip_header(ip_part, probe.destination, probe.source, udp_len, 17, reply.ttl)?;
            udp_len
        }
        ReplyKind::Prohibited | ReplyKind::HostUnreachable | ReplyKind::PortUnreachable => {
            let quote = &probe.quote[..usize::from(probe.quote_len)];
            let icmp_len = 8 + quote.len();
            let bytes = rest.get_mut(..icmp_len)?;
            bytes[8..].copy_from_slice(quote);
            if is_ipv6 {
                let mut message = MutableIcmpv6Packet::new(bytes)?;
                message.set_icmpv6_type(Icmpv6Types::DestinationUnreachable);
                let code = match reply.kind {
                    ReplyKind::Prohibited => 1,
                    ReplyKind::PortUnreachable => 4,
                    _ => 3,
                };
                message.set_icmpv6_code(Icmpv6Code(code));
                let (IpAddr::V6(from), IpAddr::V6(to)) = (reply.icmp_source, probe.source) else { return None };
                let checksum = icmpv6::checksum(&message.to_immutable(), &from, &to);
                message.set_checksum(checksum);
                write_ip_header(ip_part, reply.icmp_source, probe.source, icmp_len, 58, reply.ttl)?;
            } else {
                let mut message = MutableIcmpPacket::new(bytes)?;
                message.set_icmp_type(IcmpTypes::DestinationUnreachable);
                let code = match reply.kind {
                    ReplyKind::Prohibited => 13,
                    ReplyKind::PortUnreachable => 3,
                    _ => 1,
                };
                message.set_icmp_code(IcmpCode(code));
                let checksum = icmp::checksum(&message.to_immutable());
                message.set_checksum(checksum);
                write_ip_header(ip_part, reply.icmp_source, probe.source, icmp_len, 1, reply.ttl)?;
            }
            icmp_len
        }
    };
    Some(14 + ip_header_len + payload_len)
}
