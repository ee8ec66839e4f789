//! SYN probe templates.
//!
//! A [`SynTemplate`] holds one fully formed probe frame for an address family and link layer.
//! [`SynTemplate::write`] copies it into a caller-owned buffer (a sendmmsg slot or an AF_PACKET
//! ring frame) and patches the per-probe fields. No allocation happens per probe.
//!
//! The TCP options are the ones a Linux host sends in its SYN (MSS, SACK permitted, timestamps,
//! NOP, window scale 7), in Linux's order, so probes look like ordinary connection attempts. The
//! timestamp value carries the send time in microseconds; a SYN-ACK echoes it, which gives the
//! round-trip time without keeping any per-probe state.

use std::net::IpAddr;

use pnet_packet::ethernet::{EtherTypes, MutableEthernetPacket};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::{self, Ipv4Flags, MutableIpv4Packet};
use pnet_packet::ipv6::MutableIpv6Packet;
use pnet_packet::tcp::{self, MutableTcpPacket, TcpFlags, TcpOption};

/// Length of the Ethernet header when the template carries one.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Length of the TCP header of a probe: 20 bytes plus 20 bytes of options.
pub const TCP_PROBE_LEN: usize = 40;
/// Largest frame a template produces (Ethernet + IPv6 + TCP).
pub const MAX_PROBE_FRAME_LEN: usize = ETHERNET_HEADER_LEN + 40 + TCP_PROBE_LEN;

/// Offset of the TSval field inside the TCP header of a probe
/// (MSS 4 bytes + SACK_PERM 2 bytes + kind/len 2 bytes after the 20-byte fixed header).
const TSVAL_OFFSET_IN_TCP: usize = 20 + 4 + 2 + 2;

/// Link layer written in front of the IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLayer {
    /// No link header: the frame starts at the IP header (raw IP sockets).
    None,
    /// An Ethernet II header (AF_PACKET on Ethernet-like devices, including `lo`).
    Ethernet {
        /// Our interface's hardware address.
        source_mac: [u8; 6],
        /// The next hop's hardware address.
        destination_mac: [u8; 6],
    },
}

/// The per-probe fields of a SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynFields {
    /// Our address. Must be of the template's family.
    pub source: IpAddr,
    /// The target's address. Must be of the template's family.
    pub destination: IpAddr,
    /// Our port (derived from the cookie).
    pub source_port: u16,
    /// The target port.
    pub destination_port: u16,
    /// The initial sequence number (the cookie).
    pub sequence: u32,
    /// The TCP timestamp value: the send time in microseconds, echoed by a SYN-ACK.
    pub timestamp_value: u32,
}

/// Error from [`SynTemplate::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The buffer is shorter than [`SynTemplate::frame_len`].
    #[error("buffer of {have} bytes is shorter than the {need}-byte probe")]
    BufferTooShort {
        /// Bytes available.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// An address is not of the template's family.
    #[error("address family does not match the template")]
    FamilyMismatch,
}

/// A ready-made SYN probe frame for one address family and link layer.
#[derive(Debug, Clone)]
pub struct SynTemplate {
    frame: [u8; MAX_PROBE_FRAME_LEN],
    frame_len: usize,
    ip_offset: usize,
    is_ipv6: bool,
}

impl SynTemplate {
    /// Builds the IPv4 template.
    pub fn ipv4(link: LinkLayer) -> SynTemplate {
        SynTemplate::build(false, link)
    }

    /// Builds the IPv6 template.
    pub fn ipv6(link: LinkLayer) -> SynTemplate {
        SynTemplate::build(true, link)
    }

    /// Builds the template for the family of `address`.
    pub fn for_address(address: IpAddr, link: LinkLayer) -> SynTemplate {
        SynTemplate::build(address.is_ipv6(), link)
    }

    fn build(is_ipv6: bool, link: LinkLayer) -> SynTemplate {
        let mut frame = [0u8; MAX_PROBE_FRAME_LEN];
        let ip_offset = match link {
            LinkLayer::None => 0,
            LinkLayer::Ethernet { .. } => ETHERNET_HEADER_LEN,
        };
        let ip_header_len = if is_ipv6 { 40 } else { 20 };
        let frame_len = ip_offset + ip_header_len + TCP_PROBE_LEN;
        if let LinkLayer::Ethernet { source_mac, destination_mac } = link {
            let mut ethernet = MutableEthernetPacket::new(&mut frame[..ETHERNET_HEADER_LEN + 1])
                .expect("static buffer is large enough for an Ethernet header");
            ethernet.set_source(source_mac.into());
            ethernet.set_destination(destination_mac.into());
            ethernet.set_ethertype(if is_ipv6 { EtherTypes::Ipv6 } else { EtherTypes::Ipv4 });
        }
        let ip = &mut frame[ip_offset..frame_len];
        if is_ipv6 {
            let mut header = MutableIpv6Packet::new(ip).expect("static buffer fits IPv6");
            header.set_version(6);
            header.set_payload_length(TCP_PROBE_LEN as u16);
            header.set_next_header(IpNextHeaderProtocols::Tcp);
            header.set_hop_limit(64);
        } else {
            let mut header = MutableIpv4Packet::new(ip).expect("static buffer fits IPv4");
            header.set_version(4);
            header.set_header_length(5);
            header.set_total_length((20 + TCP_PROBE_LEN) as u16);
            header.set_flags(Ipv4Flags::DontFragment);
            header.set_ttl(64);
            header.set_next_level_protocol(IpNextHeaderProtocols::Tcp);
        }
        let tcp_bytes = &mut frame[ip_offset + ip_header_len..frame_len];
        let mut segment = MutableTcpPacket::new(tcp_bytes).expect("static buffer fits TCP");
        segment.set_data_offset((TCP_PROBE_LEN / 4) as u8);
        segment.set_flags(TcpFlags::SYN);
        segment.set_window(64240);
        segment.set_options(&[
            TcpOption::mss(if is_ipv6 { 1440 } else { 1460 }),
            TcpOption::sack_perm(),
            TcpOption::timestamp(0, 0),
            TcpOption::nop(),
            TcpOption::wscale(7),
        ]);
        SynTemplate { frame, frame_len, ip_offset, is_ipv6 }
    }

    /// Length in bytes of every frame this template writes.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Whether the template is for IPv6.
    pub fn is_ipv6(&self) -> bool {
        self.is_ipv6
    }

    /// Writes one probe into `buffer` and returns its length.
    pub fn write(&self, buffer: &mut [u8], fields: &SynFields) -> Result<usize, WriteError> {
        let need = self.frame_len;
        if buffer.len() < need {
            return Err(WriteError::BufferTooShort { have: buffer.len(), need });
        }
        let frame = &mut buffer[..need];
        frame.copy_from_slice(&self.frame[..need]);
        let ip_header_len = if self.is_ipv6 { 40 } else { 20 };
        let (ip_header, tcp_bytes) = frame[self.ip_offset..].split_at_mut(ip_header_len);
        tcp_bytes[TSVAL_OFFSET_IN_TCP..TSVAL_OFFSET_IN_TCP + 4].copy_from_slice(&fields.timestamp_value.to_be_bytes());
        let mut segment = MutableTcpPacket::new(tcp_bytes).expect("length checked above");
        segment.set_source(fields.source_port);
        segment.set_destination(fields.destination_port);
        segment.set_sequence(fields.sequence);
        match (fields.source, fields.destination, self.is_ipv6) {
            (IpAddr::V4(source), IpAddr::V4(destination), false) => {
                let checksum = tcp::ipv4_checksum(&segment.to_immutable(), &source, &destination);
                segment.set_checksum(checksum);
                let mut header = MutableIpv4Packet::new(ip_header).expect("length checked");
                header.set_source(source);
                header.set_destination(destination);
                // The IP identification is taken from the sequence number so that it varies
                // like a real host's does instead of being a fixed scanner fingerprint.
                header.set_identification((fields.sequence >> 16) as u16);
                header.set_checksum(0);
                let checksum = ipv4::checksum(&header.to_immutable());
                header.set_checksum(checksum);
            }
            (IpAddr::V6(source), IpAddr::V6(destination), true) => {
                let checksum = tcp::ipv6_checksum(&segment.to_immutable(), &source, &destination);
                segment.set_checksum(checksum);
                let mut header = MutableIpv6Packet::new(ip_header).expect("length checked");
                header.set_source(source);
                header.set_destination(destination);
            }
            _ => return Err(WriteError::FamilyMismatch),
        }
        Ok(need)
    }

    /// The raw template bytes (for tests and fixtures).
    pub fn template_bytes(&self) -> &[u8] {
        &self.frame[..self.frame_len]
    }
}
