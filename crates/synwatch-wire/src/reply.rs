//! Parsing of replies to SYN and UDP probes.
//!
//! [`parse_reply`] takes the bytes of one network-layer packet (starting at the IPv4 or IPv6
//! header, as an `AF_PACKET`/`SOCK_DGRAM` socket delivers them) and returns a [`ReplyRepr`]:
//!
//! * [`ReplyRepr::Tcp`]: any TCP segment, with the fields the engine needs to decide whether it
//!   answers one of its probes (flags, sequence and acknowledgement numbers, the echoed TCP
//!   timestamp).
//! * [`ReplyRepr::Udp`]: any UDP datagram, with its ports and the first
//!   [`ANSWER_HEAD_LEN`] bytes of its payload (where an answer echoes the probe's cookie).
//! * [`ReplyRepr::Unreachable`]: an ICMPv4 type 3 or ICMPv6 type 1 message quoting a TCP segment
//!   or a UDP datagram, with the quoted probe's addresses, ports and sequence number (TCP) or
//!   payload head (UDP).
//!
//! Contract: this module never panics, whatever the input. Every error is a [`ParseError`] so
//! the caller can count malformed packets instead of crashing.

use std::net::IpAddr;

use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::Ipv4Packet;
use pnet_packet::ipv6::Ipv6Packet;
use pnet_packet::tcp::{TcpFlags, TcpPacket};

use crate::payloads::ANSWER_HEAD_LEN;

/// IANA protocol number of ICMPv4.
const PROTOCOL_ICMP: u8 = 1;
/// IANA protocol number of TCP.
const PROTOCOL_TCP: u8 = 6;
/// IANA protocol number of UDP.
const PROTOCOL_UDP: u8 = 17;
/// IANA protocol number of ICMPv6.
const PROTOCOL_ICMPV6: u8 = 58;

/// Why a packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The packet ends before a header it announces.
    #[error("packet truncated")]
    Truncated,
    /// The IP version nibble is neither 4 nor 6.
    #[error("unknown IP version {0}")]
    UnknownVersion(u8),
    /// A header length field is inconsistent with the packet.
    #[error("bad header length")]
    BadHeaderLength,
    /// A non-first fragment, which carries no transport header.
    #[error("non-first fragment")]
    Fragment,
    /// Neither TCP nor UDP nor an ICMP destination-unreachable message about either.
    #[error("not a TCP segment, a UDP datagram or an ICMP unreachable about one")]
    NotRelevant,
}

/// TCP flag bits as they appear in a [`TcpReply`].
pub mod tcp_flags {
    pub use pnet_packet::tcp::TcpFlags::{ACK, FIN, PSH, RST, SYN, URG};
}

/// A TCP segment, as far as the scanner cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpReply {
    /// Sender of the segment (the scanned host).
    pub source: IpAddr,
    /// Receiver of the segment (us).
    pub destination: IpAddr,
    /// The scanned port.
    pub source_port: u16,
    /// Our probe's source port.
    pub destination_port: u16,
    /// Sequence number.
    pub sequence: u32,
    /// Acknowledgement number.
    pub acknowledgement: u32,
    /// Flags (see [`tcp_flags`]).
    pub flags: u8,
    /// The TSecr of a timestamp option, when present: our probe's send time echoed.
    pub timestamp_echo: Option<u32>,
    /// The advertised receive window.
    pub window: u16,
    /// Whether the segment carries any option other than padding (end of list, no-op).
    pub has_options: bool,
    /// The IPv4 TTL or IPv6 hop limit it arrived with.
    pub ttl: u8,
}

impl TcpReply {
    /// SYN and ACK set, RST not set.
    pub fn is_syn_ack(&self) -> bool {
        self.flags & (TcpFlags::SYN | TcpFlags::ACK | TcpFlags::RST) == (TcpFlags::SYN | TcpFlags::ACK)
    }

    /// RST set.
    pub fn is_rst(&self) -> bool {
        self.flags & TcpFlags::RST != 0
    }
}

/// The first bytes of a UDP payload: an answer's, or a quoted probe's.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PayloadHead {
    bytes: [u8; ANSWER_HEAD_LEN],
    len: u8,
}

impl PayloadHead {
    /// The first bytes of `payload` (at most [`ANSWER_HEAD_LEN`]).
    pub fn of(payload: &[u8]) -> PayloadHead {
        let len = payload.len().min(ANSWER_HEAD_LEN);
        let mut bytes = [0u8; ANSWER_HEAD_LEN];
        bytes[..len].copy_from_slice(&payload[..len]);
        PayloadHead { bytes, len: len as u8 }
    }

    /// The bytes kept.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for PayloadHead {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "PayloadHead({:02x?})", self.as_slice())
    }
}

/// A UDP datagram, as far as the scanner cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpReply {
    /// Sender of the datagram (the scanned host).
    pub source: IpAddr,
    /// Receiver of the datagram (us).
    pub destination: IpAddr,
    /// The scanned port.
    pub source_port: u16,
    /// Our probe's source port.
    pub destination_port: u16,
    /// The payload's length.
    pub payload_len: u16,
    /// The payload's first bytes.
    pub head: PayloadHead,
    /// The IPv4 TTL or IPv6 hop limit it arrived with.
    pub ttl: u8,
}

impl UdpReply {
    /// The payload's first bytes.
    pub fn head(&self) -> &[u8] {
        self.head.as_slice()
    }
}

/// Which transport an ICMP error quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotedTransport {
    /// A TCP segment: [`QuotedProbe::sequence`] is its sequence number.
    Tcp,
    /// A UDP datagram: [`QuotedProbe::payload`] holds what the error quotes of its payload.
    Udp,
}

/// The probe quoted inside an ICMP error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotedProbe {
    /// The quoted probe's transport.
    pub transport: QuotedTransport,
    /// Source of the quoted segment (us).
    pub source: IpAddr,
    /// Destination of the quoted segment (the scanned host).
    pub destination: IpAddr,
    /// Quoted source port.
    pub source_port: u16,
    /// Quoted destination port (the scanned port).
    pub destination_port: u16,
    /// Quoted sequence number (the probe's cookie); 0 for UDP.
    pub sequence: u32,
    /// What the error quotes of a UDP probe's payload (empty for TCP, and when only the UDP
    /// header is quoted, as RFC 792 requires no more).
    pub payload: PayloadHead,
}

/// An ICMPv4 destination unreachable (type 3) or ICMPv6 destination unreachable (type 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnreachableReply {
    /// The router or host that reported it.
    pub reporter: IpAddr,
    /// The ICMP code (for example 13, administratively prohibited, in ICMPv4).
    pub code: u8,
    /// Whether it is ICMPv6.
    pub is_icmpv6: bool,
    /// The probe it quotes.
    pub probe: QuotedProbe,
}

/// A parsed reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyRepr {
    /// A TCP segment.
    Tcp(TcpReply),
    /// A UDP datagram.
    Udp(UdpReply),
    /// An ICMP destination unreachable quoting a TCP segment or a UDP datagram.
    Unreachable(UnreachableReply),
}

/// Parses one network-layer packet. Never panics.
pub fn parse_reply(packet: &[u8]) -> Result<ReplyRepr, ParseError> {
    let first = *packet.first().ok_or(ParseError::Truncated)?;
    match first >> 4 {
        4 => {
            let ip = parse_ipv4_header(packet)?;
            match ip.protocol {
                PROTOCOL_TCP => parse_tcp(&ip).map(ReplyRepr::Tcp),
                PROTOCOL_UDP => parse_udp(&ip).map(ReplyRepr::Udp),
                PROTOCOL_ICMP => parse_icmpv4(ip.source, ip.payload),
                _ => Err(ParseError::NotRelevant),
            }
        }
        6 => {
            let ip = parse_ipv6_header(packet)?;
            match ip.protocol {
                PROTOCOL_TCP => parse_tcp(&ip).map(ReplyRepr::Tcp),
                PROTOCOL_UDP => parse_udp(&ip).map(ReplyRepr::Udp),
                PROTOCOL_ICMPV6 => parse_icmpv6(ip.source, ip.payload),
                _ => Err(ParseError::NotRelevant),
            }
        }
        version => Err(ParseError::UnknownVersion(version)),
    }
}

/// The parts of an IP header the parser uses.
struct IpHeader<'a> {
    source: IpAddr,
    destination: IpAddr,
    protocol: u8,
    ttl: u8,
    payload: &'a [u8],
}

/// Parses an IPv4 header. The payload is bounded by the total length field, which may be
/// shorter than the buffer (Ethernet padding) but never longer.
fn parse_ipv4_header(packet: &[u8]) -> Result<IpHeader<'_>, ParseError> {
    let view = Ipv4Packet::new(packet).ok_or(ParseError::Truncated)?;
    let header_len = usize::from(view.get_header_length()) * 4;
    let total_len = usize::from(view.get_total_length());
    if header_len < 20 || total_len < header_len {
        return Err(ParseError::BadHeaderLength);
    }
    if total_len > packet.len() {
        return Err(ParseError::Truncated);
    }
    if view.get_fragment_offset() != 0 {
        return Err(ParseError::Fragment);
    }
    Ok(IpHeader {
        source: IpAddr::V4(view.get_source()),
        destination: IpAddr::V4(view.get_destination()),
        protocol: view.get_next_level_protocol().0,
        ttl: view.get_ttl(),
        payload: &packet[header_len..total_len],
    })
}

/// Parses an IPv6 header and walks the common extension headers (hop-by-hop, routing,
/// destination options, fragment) to the upper-layer protocol.
fn parse_ipv6_header(packet: &[u8]) -> Result<IpHeader<'_>, ParseError> {
    let view = Ipv6Packet::new(packet).ok_or(ParseError::Truncated)?;
    let payload_len = usize::from(view.get_payload_length());
    let end = 40usize.checked_add(payload_len).ok_or(ParseError::BadHeaderLength)?;
    if end > packet.len() {
        return Err(ParseError::Truncated);
    }
    let source = IpAddr::V6(view.get_source());
    let destination = IpAddr::V6(view.get_destination());
    let (protocol, offset) = skip_ipv6_extensions(packet, view.get_next_header().0, 40, end)?;
    Ok(IpHeader { source, destination, protocol, ttl: view.get_hop_limit(), payload: &packet[offset..end] })
}

/// Skips IPv6 extension headers starting at `offset`; returns the upper-layer protocol and
/// its offset. At most eight extension headers are walked.
fn skip_ipv6_extensions(
    packet: &[u8],
    mut next_header: u8,
    mut offset: usize,
    end: usize,
) -> Result<(u8, usize), ParseError> {
    for _ in 0..8 {
        match next_header {
            0 | 43 | 60 => {
                let header = packet.get(offset..offset + 2).ok_or(ParseError::Truncated)?;
                let len = (usize::from(header[1]) + 1) * 8;
                next_header = header[0];
                offset += len;
            }
            44 => {
                let header = packet.get(offset..offset + 8).ok_or(ParseError::Truncated)?;
                let fragment_offset = u16::from_be_bytes([header[2], header[3]]) >> 3;
                if fragment_offset != 0 {
                    return Err(ParseError::Fragment);
                }
                next_header = header[0];
                offset += 8;
            }
            _ => {
                if offset > end {
                    return Err(ParseError::Truncated);
                }
                return Ok((next_header, offset));
            }
        }
        if offset > end {
            return Err(ParseError::Truncated);
        }
    }
    Err(ParseError::NotRelevant)
}

/// Parses a TCP header including its options.
fn parse_tcp(ip: &IpHeader<'_>) -> Result<TcpReply, ParseError> {
    let bytes = ip.payload;
    let view = TcpPacket::new(bytes).ok_or(ParseError::Truncated)?;
    let header_len = usize::from(view.get_data_offset()) * 4;
    if header_len < 20 {
        return Err(ParseError::BadHeaderLength);
    }
    let options = bytes.get(20..header_len).ok_or(ParseError::Truncated)?;
    Ok(TcpReply {
        source: ip.source,
        destination: ip.destination,
        source_port: view.get_source(),
        destination_port: view.get_destination(),
        sequence: view.get_sequence(),
        acknowledgement: view.get_acknowledgement(),
        flags: view.get_flags(),
        timestamp_echo: find_timestamp_echo(options),
        window: view.get_window(),
        has_options: options.iter().find(|&&kind| kind != 1).is_some_and(|&kind| kind != 0),
        ttl: ip.ttl,
    })
}

/// Parses a UDP header; the payload is bounded by the UDP length field when it is consistent
/// and by the IP payload otherwise.
fn parse_udp(ip: &IpHeader<'_>) -> Result<UdpReply, ParseError> {
    let bytes = ip.payload;
    let header = bytes.get(..8).ok_or(ParseError::Truncated)?;
    let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if length < 8 {
        return Err(ParseError::BadHeaderLength);
    }
    let payload = &bytes[8..length.min(bytes.len())];
    Ok(UdpReply {
        source: ip.source,
        destination: ip.destination,
        source_port: u16::from_be_bytes([header[0], header[1]]),
        destination_port: u16::from_be_bytes([header[2], header[3]]),
        payload_len: payload.len() as u16,
        head: PayloadHead::of(payload),
        ttl: ip.ttl,
    })
}

/// Walks TCP options by hand (pnet's option iterator trusts length bytes) and returns the
/// TSecr of a well-formed timestamp option.
fn find_timestamp_echo(mut options: &[u8]) -> Option<u32> {
    while let Some(&kind) = options.first() {
        match kind {
            0 => return None,
            1 => options = &options[1..],
            _ => {
                let len = usize::from(*options.get(1)?);
                if len < 2 || len > options.len() {
                    return None;
                }
                if kind == 8 && len == 10 {
                    return Some(u32::from_be_bytes([options[6], options[7], options[8], options[9]]));
                }
                options = &options[len..];
            }
        }
    }
    None
}

/// Reads the quoted transport header: ports and sequence number of TCP, ports and payload
/// head of UDP. ICMPv4 guarantees only the first eight bytes are quoted.
fn parse_quoted_transport(
    protocol: u8,
    bytes: &[u8],
) -> Result<(QuotedTransport, u16, u16, u32, PayloadHead), ParseError> {
    let head = bytes.get(..8).ok_or(ParseError::Truncated)?;
    let source_port = u16::from_be_bytes([head[0], head[1]]);
    let destination_port = u16::from_be_bytes([head[2], head[3]]);
    match protocol {
        PROTOCOL_TCP => Ok((
            QuotedTransport::Tcp,
            source_port,
            destination_port,
            u32::from_be_bytes([head[4], head[5], head[6], head[7]]),
            PayloadHead::of(&[]),
        )),
        PROTOCOL_UDP => Ok((QuotedTransport::Udp, source_port, destination_port, 0, PayloadHead::of(&bytes[8..]))),
        _ => Err(ParseError::NotRelevant),
    }
}

/// Parses an ICMPv4 destination unreachable quoting TCP.
fn parse_icmpv4(reporter: IpAddr, bytes: &[u8]) -> Result<ReplyRepr, ParseError> {
    let header = bytes.get(..8).ok_or(ParseError::Truncated)?;
    if header[0] != 3 {
        return Err(ParseError::NotRelevant);
    }
    let code = header[1];
    let quoted = &bytes[8..];
    let view = Ipv4Packet::new(quoted).ok_or(ParseError::Truncated)?;
    if view.get_version() != 4 {
        return Err(ParseError::UnknownVersion(view.get_version()));
    }
    let protocol = view.get_next_level_protocol();
    if protocol != IpNextHeaderProtocols::Tcp && protocol != IpNextHeaderProtocols::Udp {
        return Err(ParseError::NotRelevant);
    }
    let header_len = usize::from(view.get_header_length()) * 4;
    if header_len < 20 {
        return Err(ParseError::BadHeaderLength);
    }
    // The quote ends where the quoted datagram says it does, or where the error ends (a
    // header longer than the quote is a truncated quote, never a panic).
    let quoted_end = usize::from(view.get_total_length()).min(quoted.len()).max(header_len);
    let transport = quoted.get(header_len..quoted_end).ok_or(ParseError::Truncated)?;
    let (transport, source_port, destination_port, sequence, payload) = parse_quoted_transport(protocol.0, transport)?;
    Ok(ReplyRepr::Unreachable(UnreachableReply {
        reporter,
        code,
        is_icmpv6: false,
        probe: QuotedProbe {
            transport,
            source: IpAddr::V4(view.get_source()),
            destination: IpAddr::V4(view.get_destination()),
            source_port,
            destination_port,
            sequence,
            payload,
        },
    }))
}

/// Parses an ICMPv6 destination unreachable quoting TCP.
fn parse_icmpv6(reporter: IpAddr, bytes: &[u8]) -> Result<ReplyRepr, ParseError> {
    let header = bytes.get(..8).ok_or(ParseError::Truncated)?;
    if header[0] != 1 {
        return Err(ParseError::NotRelevant);
    }
    let code = header[1];
    let quoted = &bytes[8..];
    let view = Ipv6Packet::new(quoted).ok_or(ParseError::Truncated)?;
    if view.get_version() != 6 {
        return Err(ParseError::UnknownVersion(view.get_version()));
    }
    let (protocol, offset) = skip_ipv6_extensions(quoted, view.get_next_header().0, 40, quoted.len())?;
    let quoted_end = (40 + usize::from(view.get_payload_length())).min(quoted.len()).max(offset);
    let (transport, source_port, destination_port, sequence, payload) =
        parse_quoted_transport(protocol, quoted.get(offset..quoted_end).ok_or(ParseError::Truncated)?)?;
    Ok(ReplyRepr::Unreachable(UnreachableReply {
        reporter,
        code,
        is_icmpv6: true,
        probe: QuotedProbe {
            transport,
            source: IpAddr::V6(view.get_source()),
            destination: IpAddr::V6(view.get_destination()),
            source_port,
            destination_port,
            sequence,
            payload,
        },
    }))
}
