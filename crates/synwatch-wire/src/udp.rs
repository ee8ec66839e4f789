//! UDP probe templates.
//!
//! A [`UdpTemplate`] holds the link, IP and UDP headers of a probe for one address family and
//! link layer; [`UdpTemplate::write`] copies them and a [`UdpPayload`] into a caller-owned
//! buffer and patches addresses, ports, the payload's cookie slot, lengths and checksums. No
//! allocation happens per probe.

use std::net::IpAddr;

use pnet_packet::ethernet::{EtherTypes, MutableEthernetPacket};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::{self, Ipv4Flags, MutableIpv4Packet};
use pnet_packet::ipv6::MutableIpv6Packet;
use pnet_packet::udp::{self, MutableUdpPacket};

use crate::payloads::{MAX_UDP_PAYLOAD, UdpPayload};
use crate::syn::{ETHERNET_HEADER_LEN, LinkLayer, WriteError};

/// Length of the UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// Largest frame a UDP template writes (Ethernet + IPv6 + UDP + the largest payload).
pub const MAX_UDP_FRAME_LEN: usize = ETHERNET_HEADER_LEN + 40 + UDP_HEADER_LEN + MAX_UDP_PAYLOAD;

/// The per-probe fields of a UDP probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFields {
    /// Our address. Must be of the template's family.
    pub source: IpAddr,
    /// The target's address. Must be of the template's family.
    pub destination: IpAddr,
    /// Our port (derived from the cookie).
    pub source_port: u16,
    /// The target port.
    pub destination_port: u16,
    /// The cookie written into the payload's slot (the probe's stamped sequence).
    pub cookie: u32,
}

/// The headers of a UDP probe for one address family and link layer.
#[derive(Debug, Clone)]
pub struct UdpTemplate {
    headers: [u8; ETHERNET_HEADER_LEN + 40 + UDP_HEADER_LEN],
    ip_offset: usize,
    is_ipv6: bool,
}

impl UdpTemplate {
    /// Builds the template for the family of `address`.
    pub fn for_address(address: IpAddr, link: LinkLayer) -> UdpTemplate {
        UdpTemplate::build(address.is_ipv6(), link)
    }

    /// Builds the template of a family.
    pub fn build(is_ipv6: bool, link: LinkLayer) -> UdpTemplate {
        let mut headers = [0u8; ETHERNET_HEADER_LEN + 40 + UDP_HEADER_LEN];
        let ip_offset = match link {
            LinkLayer::None => 0,
            LinkLayer::Ethernet { .. } => ETHERNET_HEADER_LEN,
        };
        if let LinkLayer::Ethernet { source_mac, destination_mac } = link {
            let mut ethernet = MutableEthernetPacket::new(&mut headers[..ETHERNET_HEADER_LEN + 1])
                .expect("static buffer is large enough for an Ethernet header");
            ethernet.set_source(source_mac.into());
            ethernet.set_destination(destination_mac.into());
            ethernet.set_ethertype(if is_ipv6 { EtherTypes::Ipv6 } else { EtherTypes::Ipv4 });
        }
        let ip = &mut headers[ip_offset..];
        if is_ipv6 {
            let mut header = MutableIpv6Packet::new(ip).expect("static buffer fits IPv6");
            header.set_version(6);
            header.set_next_header(IpNextHeaderProtocols::Udp);
            header.set_hop_limit(64);
        } else {
            let mut header = MutableIpv4Packet::new(ip).expect("static buffer fits IPv4");
            header.set_version(4);
            header.set_header_length(5);
            header.set_flags(Ipv4Flags::DontFragment);
            header.set_ttl(64);
            header.set_next_level_protocol(IpNextHeaderProtocols::Udp);
        }
        UdpTemplate { headers, ip_offset, is_ipv6 }
    }

    /// Whether the template is for IPv6.
    pub fn is_ipv6(&self) -> bool {
        self.is_ipv6
    }

    /// Length of the frame carrying `payload`.
    pub fn frame_len(&self, payload: &UdpPayload) -> usize {
        self.ip_offset + self.ip_header_len() + UDP_HEADER_LEN + payload.bytes.len()
    }

    fn ip_header_len(&self) -> usize {
        if self.is_ipv6 { 40 } else { 20 }
    }

    /// Writes one probe carrying `payload` into `buffer` and returns its length.
    pub fn write(&self, buffer: &mut [u8], fields: &UdpFields, payload: &UdpPayload) -> Result<usize, WriteError> {
        let need = self.frame_len(payload);
        if buffer.len() < need {
            return Err(WriteError::BufferTooShort { have: buffer.len(), need });
        }
        let headers_len = self.ip_offset + self.ip_header_len() + UDP_HEADER_LEN;
        let frame = &mut buffer[..need];
        frame[..headers_len].copy_from_slice(&self.headers[..headers_len]);
        frame[headers_len..].copy_from_slice(&payload.bytes);
        payload.write_cookie(&mut frame[headers_len..], fields.cookie);
        let (ip_header, datagram) = frame[self.ip_offset..].split_at_mut(self.ip_header_len());
        let datagram_len = datagram.len() as u16;
        let mut packet = MutableUdpPacket::new(datagram).expect("length checked above");
        packet.set_source(fields.source_port);
        packet.set_destination(fields.destination_port);
        packet.set_length(datagram_len);
        packet.set_checksum(0);
        match (fields.source, fields.destination, self.is_ipv6) {
            (IpAddr::V4(source), IpAddr::V4(destination), false) => {
                let checksum = udp::ipv4_checksum(&packet.to_immutable(), &source, &destination);
                // A computed zero is sent as all ones (RFC 768): zero means "no checksum".
                packet.set_checksum(if checksum == 0 { 0xffff } else { checksum });
                let mut header = MutableIpv4Packet::new(ip_header).expect("length checked");
                header.set_total_length(20 + datagram_len);
                header.set_source(source);
                header.set_destination(destination);
                header.set_identification((fields.cookie >> 16) as u16);
                header.set_checksum(0);
                let checksum = ipv4::checksum(&header.to_immutable());
                header.set_checksum(checksum);
            }
            (IpAddr::V6(source), IpAddr::V6(destination), true) => {
                let checksum = udp::ipv6_checksum(&packet.to_immutable(), &source, &destination);
                packet.set_checksum(if checksum == 0 { 0xffff } else { checksum });
                let mut header = MutableIpv6Packet::new(ip_header).expect("length checked");
                header.set_payload_length(datagram_len);
                header.set_source(source);
                header.set_destination(destination);
            }
            _ => return Err(WriteError::FamilyMismatch),
        }
        Ok(need)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payloads::PayloadTable;
    use crate::reply::{ReplyRepr, parse_reply};

    /// The one's-complement sum a receiver checks: a correct UDP checksum makes it 0xffff.
    fn pseudo_header_sum(frame: &[u8], v6: bool) -> u16 {
        let (source, destination, datagram): (&[u8], &[u8], &[u8]) = if v6 {
            (&frame[8..24], &frame[24..40], &frame[40..])
        } else {
            (&frame[12..16], &frame[16..20], &frame[20..])
        };
        let mut sum: u32 = 17 + datagram.len() as u32;
        for chunk in source.chunks(2).chain(destination.chunks(2)).chain(datagram.chunks(2)) {
            sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn writes_a_dns_probe_with_its_cookie_and_valid_checksums() {
        let payloads = PayloadTable::built_in();
        for (source, destination) in [("192.0.2.100", "192.0.2.1"), ("2001:db8::100", "2001:db8::1")] {
            let (source, destination): (IpAddr, IpAddr) = (source.parse().unwrap(), destination.parse().unwrap());
            let template = UdpTemplate::for_address(destination, LinkLayer::None);
            let fields =
                UdpFields { source, destination, source_port: 41000, destination_port: 53, cookie: 0xdead_beef };
            let mut buffer = [0u8; MAX_UDP_FRAME_LEN];
            let len = template.write(&mut buffer, &fields, payloads.for_port(53)).unwrap();
            let frame = &buffer[..len];
            let v6 = destination.is_ipv6();
            let udp_offset = if v6 { 40 } else { 20 };
            assert_eq!(&frame[udp_offset..udp_offset + 4], &[0xa0, 0x28, 0, 53]);
            assert_eq!(&frame[udp_offset + 8..udp_offset + 10], &[0xbe, 0xef], "the DNS id carries the cookie");
            assert_eq!(pseudo_header_sum(frame, v6), 0xffff);
            if !v6 {
                assert_eq!(
                    ipv4::checksum(&pnet_packet::ipv4::Ipv4Packet::new(frame).unwrap()),
                    u16::from_be_bytes([frame[10], frame[11]])
                );
            }
            // Our own probe parses back as a UDP datagram with the payload's head.
            match parse_reply(frame).unwrap() {
                ReplyRepr::Udp(reply) => {
                    assert_eq!((reply.source, reply.source_port, reply.destination_port), (source, 41000, 53));
                    assert_eq!(&reply.head()[..2], &[0xbe, 0xef]);
                }
                other => panic!("{other:?}"),
            }
        }
        let template = UdpTemplate::build(false, LinkLayer::None);
        let probe_fields = UdpFields {
            source: "192.0.2.100".parse().unwrap(),
            destination: "192.0.2.1".parse().unwrap(),
            source_port: 41000,
            destination_port: 161,
            cookie: 0x0102_0304,
        };
        let mut probe = [0u8; MAX_UDP_FRAME_LEN];
        let probe_len = template.write(&mut probe, &probe_fields, payloads.for_port(161)).unwrap();
        // An ICMP port unreachable from the target quoting the whole probe (as Linux does), and
        // one quoting only the UDP header (as RFC 792 allows).
        for quoted_len in [probe_len, 28] {
            let mut icmp = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 192, 0, 2, 1, 192, 0, 2, 100];
            icmp.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
            icmp.extend_from_slice(&probe[..quoted_len]);
            let total = icmp.len() as u16;
            icmp[2..4].copy_from_slice(&total.to_be_bytes());
            match parse_reply(&icmp).unwrap() {
                ReplyRepr::Unreachable(unreachable) => {
                    assert_eq!(unreachable.code, 3);
                    assert_eq!(unreachable.probe.transport, crate::reply::QuotedTransport::Udp);
                    assert_eq!((unreachable.probe.source_port, unreachable.probe.destination_port), (41000, 161));
                    let quoted = payloads.for_port(161).quoted_cookie(unreachable.probe.payload.as_slice());
                    if quoted_len == 28 {
                        assert_eq!(quoted, None);
                    } else {
                        assert_eq!(quoted.map(|bits| bits.value), Some(0x0102_0304));
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        let fields = UdpFields {
            source: "192.0.2.100".parse().unwrap(),
            destination: "2001:db8::1".parse().unwrap(),
            source_port: 1,
            destination_port: 2,
            cookie: 0,
        };
        assert_eq!(template.write(&mut [0u8; 200], &fields, &UdpPayload::empty()), Err(WriteError::FamilyMismatch));
        assert!(matches!(
            template.write(&mut [0u8; 20], &fields, &UdpPayload::empty()),
            Err(WriteError::BufferTooShort { .. })
        ));
    }
}
