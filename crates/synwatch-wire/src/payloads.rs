//! UDP probe payloads: one per well-known port that makes its usual service answer, an empty
//! datagram for every other port, and the user's own from a payload file.
//!
//! A UDP service answers only a request it understands, so a UDP probe carries one. Each
//! built-in payload below is written by hand from the protocol's specification (named on each
//! entry); none is copied from another scanner's payload file.
//!
//! Where the protocol has a request id that the answer echoes (a DNS id, an RPC xid, an SNMP
//! request-id, the NTP origin timestamp, ...), the probe's cookie goes there too
//! ([`CookieSlot`]): [`UdpPayload::write_cookie`] patches it into a probe and
//! [`UdpPayload::echoed_cookie`] reads it back from an answer's first bytes, as far as they
//! carry it (a [`CookieBits`] value and mask). Together with the cookie in the source port that
//! makes forged or stray datagrams unlikely to be taken for answers.
//!
//! [`PayloadTable::parse_file`] reads a user payload file (see its doc for the format) with
//! file:line:column errors. Contract: reading answers never panics, whatever their bytes.

use std::collections::BTreeMap;
use std::fmt;

/// Largest UDP payload a probe carries (a QUIC Initial must fill 1200 bytes).
pub const MAX_UDP_PAYLOAD: usize = 1200;

/// How many bytes of an answer (or of a quoted probe) are kept for reading a cookie back.
pub const ANSWER_HEAD_LEN: usize = 64;

/// Where a payload carries the probe's cookie, and where its answer echoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieSlot {
    /// No request id: only the source port carries the cookie.
    None,
    /// A 16-bit id at `offset` of the probe, echoed at the same offset of the answer (DNS,
    /// NetBIOS, memcached's request id, CoAP's message id).
    Echo16 {
        /// Byte offset in the probe and in the answer.
        offset: usize,
    },
    /// A 32-bit id at `offset`, echoed at the same offset (ONC RPC xid, the IKE initiator SPI).
    Echo32 {
        /// Byte offset in the probe and in the answer.
        offset: usize,
    },
    /// NTP: our transmit timestamp's seconds (offset 40) come back as the origin timestamp
    /// (offset 24) of the server's answer.
    Ntp,
    /// A BER INTEGER of 4 bytes at `offset` of the probe, always in 0x40000000..0x7fffffff so
    /// that 4 bytes is its minimal encoding; the answer is walked depth first to its
    /// `nth_integer` INTEGER (SNMP's request-id, CLDAP's messageID).
    BerInteger {
        /// Byte offset of the INTEGER's four value bytes in the probe.
        offset: usize,
        /// Which INTEGER of the answer (from 0, depth first) holds the id: SNMP's is 1 (the
        /// PDU's request-id after the version; the community is a string), CLDAP's 0.
        nth_integer: usize,
    },
    /// OpenVPN: our session id (offset 1) comes back as the remote session id after the
    /// server's one-entry ack array (offset 14 when byte 9 is 1).
    OpenVpn,
    /// QUIC: our source connection id (8 bytes at offset 15) comes back as the destination
    /// connection id (offset 6, after its length byte 8) of a Version Negotiation packet.
    Quic,
}

/// The cookie bits an answer carried: `value` is meaningful where `mask` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieBits {
    /// The bits read back.
    pub value: u32,
    /// Which bits of the cookie they are.
    pub mask: u32,
}

/// A UDP probe payload and where its cookie goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPayload {
    /// A short name (`dns`, `ntp`, ..., `empty`, or `user` for a payload file's).
    pub name: &'static str,
    /// The bytes as sent, with the cookie slot zeroed.
    pub bytes: Vec<u8>,
    /// Where the cookie goes.
    pub cookie: CookieSlot,
}

/// The 30 bits a BER INTEGER slot carries (see [`CookieSlot::BerInteger`]).
const BER_COOKIE_MASK: u32 = 0x3fff_ffff;

impl UdpPayload {
    /// The empty datagram sent to ports without a payload of their own.
    pub fn empty() -> UdpPayload {
        UdpPayload { name: "empty", bytes: Vec::new(), cookie: CookieSlot::None }
    }

    /// Writes `cookie` into `payload` (a copy of [`UdpPayload::bytes`]) at the payload's slot.
    pub fn write_cookie(&self, payload: &mut [u8], cookie: u32) {
        let mut put = |offset: usize, bytes: &[u8]| {
            if let Some(target) = payload.get_mut(offset..offset + bytes.len()) {
                target.copy_from_slice(bytes);
            }
        };
        match self.cookie {
            CookieSlot::None => {}
            CookieSlot::Echo16 { offset } => put(offset, &(cookie as u16).to_be_bytes()),
            CookieSlot::Echo32 { offset } => put(offset, &cookie.to_be_bytes()),
            CookieSlot::Ntp => put(40, &cookie.to_be_bytes()),
            CookieSlot::BerInteger { offset, .. } => {
                put(offset, &((cookie & BER_COOKIE_MASK) | 0x4000_0000).to_be_bytes())
            }
            CookieSlot::OpenVpn => put(1, &cookie.to_be_bytes()),
            CookieSlot::Quic => put(15, &cookie.to_be_bytes()),
        }
    }

    /// The cookie bits this probe's slot holds, read from a copy of the probe (as an ICMP error
    /// quotes it): `None` when the slot is not within `probe`, or the payload has none.
    pub fn quoted_cookie(&self, probe: &[u8]) -> Option<CookieBits> {
        let read16 = |offset: usize| probe.get(offset..offset + 2).map(|b| u32::from(u16::from_be_bytes([b[0], b[1]])));
        let read32 =
            |offset: usize| probe.get(offset..offset + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        match self.cookie {
            CookieSlot::None => None,
            CookieSlot::Echo16 { offset } => read16(offset).map(|value| CookieBits { value, mask: 0xffff }),
            CookieSlot::Echo32 { offset } => read32(offset).map(|value| CookieBits { value, mask: u32::MAX }),
            CookieSlot::Ntp => read32(40).map(|value| CookieBits { value, mask: u32::MAX }),
            CookieSlot::BerInteger { offset, .. } => {
                read32(offset).map(|value| CookieBits { value: value & BER_COOKIE_MASK, mask: BER_COOKIE_MASK })
            }
            CookieSlot::OpenVpn => read32(1).map(|value| CookieBits { value, mask: u32::MAX }),
            CookieSlot::Quic => read32(15).map(|value| CookieBits { value, mask: u32::MAX }),
        }
    }

    /// The cookie bits an answer to this payload echoes, read from the answer's first bytes.
    /// `None` when the payload has no slot; a value with mask 0 is never returned: an answer
    /// too short or not shaped like the protocol's answer gives `Some` with the bits it
    /// should have carried and a value that cannot match (so the caller drops it).
    pub fn echoed_cookie(&self, answer: &[u8]) -> Option<CookieBits> {
        let read16 =
            |offset: usize| answer.get(offset..offset + 2).map(|b| u32::from(u16::from_be_bytes([b[0], b[1]])));
        let read32 =
            |offset: usize| answer.get(offset..offset + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        // An answer that does not carry the id it must: bits that never match a cookie, because
        // the caller compares `value` with the expected cookie under `mask` and the complement
        // of any cookie differs from it in every bit.
        let (value, mask) = match self.cookie {
            CookieSlot::None => return None,
            CookieSlot::Echo16 { offset } => (read16(offset), 0xffff),
            CookieSlot::Echo32 { offset } => (read32(offset), u32::MAX),
            CookieSlot::Ntp => (read32(24), u32::MAX),
            CookieSlot::BerInteger { nth_integer, .. } => {
                (ber_nth_integer(answer, nth_integer).map(|value| value & BER_COOKIE_MASK), BER_COOKIE_MASK)
            }
            CookieSlot::OpenVpn => ((answer.get(9) == Some(&1)).then(|| read32(14)).flatten(), u32::MAX),
            CookieSlot::Quic => ((answer.get(5) == Some(&8)).then(|| read32(6)).flatten(), u32::MAX),
        };
        Some(match value {
            Some(value) => CookieBits { value, mask },
            None => CookieBits { value: 0, mask: 0 },
        })
    }
}

/// The value of the `nth` (0-based) BER INTEGER met walking `bytes` depth first, entering
/// every constructed value, at most 64 elements. Never panics.
fn ber_nth_integer(bytes: &[u8], nth: usize) -> Option<u32> {
    let mut position = 0;
    let mut seen = 0;
    for _ in 0..64 {
        let tag = *bytes.get(position)?;
        let first_length = *bytes.get(position + 1)?;
        let (length, header) = if first_length < 0x80 {
            (usize::from(first_length), 2)
        } else {
            let count = usize::from(first_length & 0x7f);
            if count == 0 || count > 4 {
                return None;
            }
            let mut length = 0usize;
            for index in 0..count {
                length = (length << 8) | usize::from(*bytes.get(position + 2 + index)?);
            }
            (length, 2 + count)
        };
        let content = position + header;
        if tag & 0x20 != 0 {
            // Constructed (SEQUENCE, a PDU, an application tag): step inside.
            position = content;
            continue;
        }
        if tag == 0x02 {
            if seen == nth {
                let value = bytes.get(content..content.checked_add(length)?)?;
                if value.is_empty() || value.len() > 5 {
                    return None;
                }
                return Some(value.iter().fold(0u32, |acc, &byte| (acc << 8) | u32::from(byte)));
            }
            seen += 1;
        }
        position = content.checked_add(length)?;
    }
    None
}

/// A DNS query (RFC 1035 §4.1) for `name` (dot-separated labels) of `qtype` and `qclass`,
/// recursion desired, id zero (the cookie slot).
fn dns_query(name: &str, qtype: u16, qclass: u16) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.').filter(|label| !label.is_empty()) {
        bytes.push(label.len() as u8);
        bytes.extend_from_slice(label.as_bytes());
    }
    bytes.push(0);
    bytes.extend_from_slice(&qtype.to_be_bytes());
    bytes.extend_from_slice(&qclass.to_be_bytes());
    bytes
}

/// A BER TLV with a short or long length.
fn ber(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut bytes = vec![tag];
    match content.len() {
        length @ 0..=0x7f => bytes.push(length as u8),
        length @ 0x80..=0xff => bytes.extend_from_slice(&[0x81, length as u8]),
        length => bytes.extend_from_slice(&[0x82, (length >> 8) as u8, length as u8]),
    }
    bytes.extend_from_slice(content);
    bytes
}

/// Where the four value bytes of the first INTEGER `02 04 40 00 00 00` are in `bytes`.
fn ber_cookie_offset(bytes: &[u8]) -> usize {
    bytes.windows(6).position(|window| window == [0x02, 0x04, 0x40, 0, 0, 0]).map_or(0, |index| index + 2)
}

/// SNMPv1 GetRequest (RFC 1157 §4.1.2, the PDU as RFC 3416 keeps it) for sysDescr.0
/// (1.3.6.1.2.1.1.1.0), community `public`: version 1 because v1-only agents ignore v2c
/// messages while agents that speak v2c answer v1 too (net-snmp's default).
fn snmp_get_request() -> Vec<u8> {
    let oid = ber(0x06, &[0x2b, 6, 1, 2, 1, 1, 1, 0]);
    let varbind = ber(0x30, &[oid, vec![0x05, 0x00]].concat());
    let varbinds = ber(0x30, &varbind);
    let pdu = ber(
        0xa0,
        &[vec![0x02, 0x04, 0x40, 0, 0, 0], vec![0x02, 0x01, 0x00], vec![0x02, 0x01, 0x00], varbinds].concat(),
    );
    ber(0x30, &[vec![0x02, 0x01, 0x00], ber(0x04, b"public"), pdu].concat())
}

/// A connectionless LDAP (RFC 4511 §4.5.1, CLDAP as RFC 1798 and Active Directory's DC
/// locator use it) search of the root DSE for `(objectClass=*)`.
fn cldap_root_dse_search() -> Vec<u8> {
    let search = ber(
        0x63,
        &[
            ber(0x04, b""),            // baseObject: the root DSE
            vec![0x0a, 0x01, 0x00],    // scope: baseObject
            vec![0x0a, 0x01, 0x00],    // derefAliases: never
            vec![0x02, 0x01, 0x00],    // sizeLimit
            vec![0x02, 0x01, 0x00],    // timeLimit
            vec![0x01, 0x01, 0x00],    // typesOnly: false
            ber(0x87, b"objectClass"), // filter: present
            ber(0x30, &[]),            // attributes: all user attributes
        ]
        .concat(),
    );
    ber(0x30, &[vec![0x02, 0x04, 0x40, 0, 0, 0], search].concat())
}

/// NTPv4 client request (RFC 5905 §7.3): LI 3 (unsynchronised), version 4, mode 3; the
/// transmit timestamp (offset 40) carries the cookie and comes back as the origin timestamp.
fn ntp_client_request() -> Vec<u8> {
    let mut bytes = vec![0u8; 48];
    bytes[0] = 0xe3;
    bytes
}

/// NetBIOS name service node status request (RFC 1002 §4.2.17) for the wildcard name `*`.
fn netbios_node_status() -> Vec<u8> {
    let mut bytes = vec![0, 0, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 32];
    // First-level encoding (RFC 1001 §14.1) of "*" and 15 NULs: each nibble + 'A'.
    let mut name = [0u8; 16];
    name[0] = b'*';
    for byte in name {
        bytes.push(b'A' + (byte >> 4));
        bytes.push(b'A' + (byte & 0x0f));
    }
    bytes.extend_from_slice(&[0, 0x00, 0x21, 0x00, 0x01]); // NBSTAT, class IN
    bytes
}

/// memcached's UDP frame header (request id, sequence 0, 1 datagram, reserved; memcached's
/// protocol.txt, "UDP protocol") before `stats\r\n`.
fn memcached_stats() -> Vec<u8> {
    [&[0u8, 0, 0, 0, 0, 1, 0, 0][..], b"stats\r\n"].concat()
}

/// ONC RPC call (RFC 5531 §9) of the portmapper's NULL procedure (program 100000, version 2,
/// procedure 0; RFC 1833), AUTH_NONE credentials and verifier.
fn portmapper_null_call() -> Vec<u8> {
    let words: [u32; 10] = [0, 0, 2, 100_000, 2, 0, 0, 0, 0, 0];
    words.iter().flat_map(|word| word.to_be_bytes()).collect()
}

/// An IKEv2 IKE_SA_INIT request (RFC 7296 §1.2, §3) with one proposal (AES-CBC-128,
/// HMAC-SHA1-96, PRF-HMAC-SHA1, group 14) and KE and Nonce payloads: a responder answers it
/// (with its own IKE_SA_INIT or a notify such as INVALID_KE_PAYLOAD or NO_PROPOSAL_CHOSEN),
/// echoing our initiator SPI (offset 0, the cookie).
fn ike_sa_init() -> Vec<u8> {
    fn transform(last: bool, kind: u8, id: u16, attributes: &[u8]) -> Vec<u8> {
        let length = (8 + attributes.len()) as u16;
        let mut bytes = vec![if last { 0 } else { 3 }, 0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(&[kind, 0]);
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(attributes);
        bytes
    }
    let transforms = [
        transform(false, 1, 12, &[0x80, 0x0e, 0x00, 0x80]), // ENCR_AES_CBC, key length 128
        transform(false, 2, 2, &[]),                        // PRF_HMAC_SHA1
        transform(false, 3, 2, &[]),                        // AUTH_HMAC_SHA1_96
        transform(true, 4, 14, &[]),                        // 2048-bit MODP group
    ]
    .concat();
    let mut proposal = vec![0, 0, 0, 0, 1, 1, 0, 4]; // last, length, #1, IKE, no SPI, 4 transforms
    proposal.extend_from_slice(&transforms);
    let proposal_length = proposal.len() as u16;
    proposal[2..4].copy_from_slice(&proposal_length.to_be_bytes());
    let mut sa = vec![34, 0, 0, 0]; // next: KE
    sa.extend_from_slice(&proposal);
    let sa_length = sa.len() as u16;
    sa[2..4].copy_from_slice(&sa_length.to_be_bytes());
    let mut ke = vec![40, 0, 0, 0, 0, 14, 0, 0]; // next: Nonce; group 14
    // A fixed public value: any 256 bytes in range do for drawing an answer.
    ke.extend((0..256u32).map(|index| (index.wrapping_mul(151).wrapping_add(7) % 251) as u8 | 1));
    let ke_length = ke.len() as u16;
    ke[2..4].copy_from_slice(&ke_length.to_be_bytes());
    let mut nonce = vec![0, 0, 0, 36];
    nonce.extend((0..32u8).map(|index| index.wrapping_mul(37).wrapping_add(11)));
    let mut header = vec![0u8; 28];
    header[16] = 33; // next payload: SA
    header[17] = 0x20; // IKEv2
    header[18] = 34; // IKE_SA_INIT
    header[19] = 0x08; // initiator
    let body = [sa, ke, nonce].concat();
    let length = (28 + body.len()) as u32;
    header[24..28].copy_from_slice(&length.to_be_bytes());
    [header, body].concat()
}

/// OpenVPN P_CONTROL_HARD_RESET_CLIENT_V2 (opcode 7, key id 0; OpenVPN's protocol overview,
/// "reliability layer"): our session id (the cookie), an empty ack array, message id 0.
fn openvpn_hard_reset() -> Vec<u8> {
    let mut bytes = vec![7 << 3];
    bytes.extend_from_slice(&[0u8; 8]);
    bytes.push(0);
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    bytes
}

/// A SIP OPTIONS request (RFC 3261 §11) to `sip:probe@invalid` over UDP.
fn sip_options() -> Vec<u8> {
    b"OPTIONS sip:probe@invalid SIP/2.0\r\n\
Via: SIP/2.0/UDP invalid;branch=z9hG4bKsynwatch;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:synwatch@invalid>;tag=synwatch\r\n\
To: <sip:probe@invalid>\r\n\
Call-ID: synwatch-probe@invalid\r\n\
CSeq: 1 OPTIONS\r\n\
Accept: application/sdp\r\n\
Content-Length: 0\r\n\r\n"
        .to_vec()
}

/// SSDP discovery (UPnP Device Architecture 2.0, §1.3.2) for all devices.
fn ssdp_m_search() -> Vec<u8> {
    b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n"
        .to_vec()
}

/// A TFTP read request (RFC 1350 §5) for a file that does not exist, in octet mode.
fn tftp_read_request() -> Vec<u8> {
    [&[0u8, 1][..], b"synwatch-probe\0octet\0"].concat()
}

/// A CoAP confirmable GET of `/.well-known/core` (RFC 7252 §3, RFC 6690 §4), message id as
/// the cookie (offset 2), no token.
fn coap_well_known_core() -> Vec<u8> {
    let mut bytes = vec![0x40, 0x01, 0, 0];
    bytes.push(0xbb); // Uri-Path (11), length 11
    bytes.extend_from_slice(b".well-known");
    bytes.push(0x04); // Uri-Path again (delta 0), length 4
    bytes.extend_from_slice(b"core");
    bytes
}

/// A QUIC long-header packet of an unsupported version (RFC 9000 §6, §17.2; RFC 8999's
/// invariants): a server answers it with Version Negotiation, echoing our source connection
/// id (the cookie, 8 bytes at offset 15) as its destination connection id. Padded to 1200
/// bytes, since servers ignore shorter Initial datagrams (RFC 9000 §14.1).
fn quic_version_probe() -> Vec<u8> {
    let mut bytes = vec![0xc0];
    bytes.extend_from_slice(&0x1a2a_3a4a_u32.to_be_bytes()); // a reserved (greased) version
    bytes.push(8);
    bytes.extend_from_slice(b"synwatch"); // destination connection id
    bytes.push(8);
    bytes.extend_from_slice(&[0u8; 8]); // source connection id: the cookie
    bytes.resize(MAX_UDP_PAYLOAD, 0);
    bytes
}

/// The built-in payloads, by port.
fn built_in(port: u16) -> Option<UdpPayload> {
    let (name, bytes, cookie) = match port {
        53 => ("dns", dns_query("version.bind", 16, 3), CookieSlot::Echo16 { offset: 0 }),
        69 => ("tftp", tftp_read_request(), CookieSlot::None),
        111 => ("portmapper", portmapper_null_call(), CookieSlot::Echo32 { offset: 0 }),
        123 => ("ntp", ntp_client_request(), CookieSlot::Ntp),
        137 => ("netbios-ns", netbios_node_status(), CookieSlot::Echo16 { offset: 0 }),
        161 => {
            let bytes = snmp_get_request();
            let offset = ber_cookie_offset(&bytes);
            ("snmp", bytes, CookieSlot::BerInteger { offset, nth_integer: 1 })
        }
        389 => {
            let bytes = cldap_root_dse_search();
            let offset = ber_cookie_offset(&bytes);
            ("cldap", bytes, CookieSlot::BerInteger { offset, nth_integer: 0 })
        }
        443 => ("quic", quic_version_probe(), CookieSlot::Quic),
        500 => ("ike", ike_sa_init(), CookieSlot::Echo32 { offset: 0 }),
        1194 => ("openvpn", openvpn_hard_reset(), CookieSlot::OpenVpn),
        1434 => ("mssql-browser", vec![0x02], CookieSlot::None),
        1900 => ("ssdp", ssdp_m_search(), CookieSlot::None),
        5060 => ("sip", sip_options(), CookieSlot::None),
        5353 => ("mdns", dns_query("_services._dns-sd._udp.local", 12, 1), CookieSlot::Echo16 { offset: 0 }),
        5683 => ("coap", coap_well_known_core(), CookieSlot::Echo16 { offset: 2 }),
        11211 => ("memcached", memcached_stats(), CookieSlot::Echo16 { offset: 0 }),
        _ => return None,
    };
    Some(UdpPayload { name, bytes, cookie })
}

/// The ports with a built-in payload.
pub const BUILT_IN_PORTS: [u16; 16] =
    [53, 69, 111, 123, 137, 161, 389, 443, 500, 1194, 1434, 1900, 5060, 5353, 5683, 11211];

/// Why a payload file was rejected: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {reason}")]
pub struct PayloadFileError {
    /// Line, from 1.
    pub line: usize,
    /// Column (in characters), from 1.
    pub column: usize,
    /// What is wrong.
    pub reason: String,
}

/// The payload of every UDP port of a job: the user's, then the built-in ones, then the empty
/// datagram.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayloadTable {
    user: BTreeMap<u16, UdpPayload>,
    built_in: BTreeMap<u16, UdpPayload>,
}

/// The empty payload, shared.
static EMPTY: UdpPayload = UdpPayload { name: "empty", bytes: Vec::new(), cookie: CookieSlot::None };

impl PayloadTable {
    /// The built-in payloads only.
    pub fn built_in() -> PayloadTable {
        PayloadTable {
            user: BTreeMap::new(),
            built_in: BUILT_IN_PORTS.iter().filter_map(|&port| built_in(port).map(|payload| (port, payload))).collect(),
        }
    }

    /// The payload sent to `port`.
    pub fn for_port(&self, port: u16) -> &UdpPayload {
        self.user.get(&port).or_else(|| self.built_in.get(&port)).unwrap_or(&EMPTY)
    }

    /// How many ports have a payload of the user's.
    pub fn user_ports(&self) -> usize {
        self.user.len()
    }

    /// Reads a payload file over the built-in payloads. One payload per line:
    ///
    /// ```text
    /// # comment
    /// udp/9999 hex 00 01 02 ff        # hex bytes, spaces allowed between them
    /// 7777 text "ping\r\n"           # text with \r \n \t \\ \" \xHH escapes
    /// udp/53,5353 hex 1234 0100 ...   # a port list or range takes the same payload
    /// ```
    ///
    /// A port may carry `udp/` (the file is about UDP; `tcp/` is an error). A later line for
    /// the same port replaces an earlier one. A user payload carries no cookie slot (its
    /// answers are matched by address, port and source-port cookie). At most 1200 bytes each.
    pub fn parse_file(&self, text: &str) -> Result<PayloadTable, PayloadFileError> {
        let mut table = self.clone();
        for (index, raw_line) in text.lines().enumerate() {
            let line_number = index + 1;
            let error = |byte_offset: usize, reason: String| PayloadFileError {
                line: line_number,
                column: raw_line[..byte_offset.min(raw_line.len())].chars().count() + 1,
                reason,
            };
            let content = strip_comment(raw_line);
            let trimmed = content.trim_start();
            if trimmed.trim().is_empty() {
                continue;
            }
            // Every piece is a subslice of `raw_line`: its byte offset is where it starts.
            let offset_of = |piece: &str| piece.as_ptr() as usize - raw_line.as_ptr() as usize;
            let (ports_text, rest) = split_word(trimmed);
            let ports_offset = offset_of(ports_text);
            let ports =
                parse_payload_ports(ports_text).map_err(|(offset, reason)| error(ports_offset + offset, reason))?;
            let kind_trimmed = rest.trim_start();
            let (kind, data) = split_word(kind_trimmed);
            let kind_offset = offset_of(kind);
            let data_trimmed = data.trim();
            let data_offset = offset_of(data_trimmed);
            let bytes = match kind {
                "hex" => parse_hex(data_trimmed).map_err(|(offset, reason)| error(data_offset + offset, reason))?,
                "text" => parse_text(data_trimmed).map_err(|(offset, reason)| error(data_offset + offset, reason))?,
                "" => return Err(error(kind_offset, "a payload needs `hex` or `text` after its ports".into())),
                other => return Err(error(kind_offset, format!("{other:?} is not a payload kind (hex or text)"))),
            };
            if bytes.len() > MAX_UDP_PAYLOAD {
                return Err(error(
                    data_offset,
                    format!("the payload is {} bytes, more than the {MAX_UDP_PAYLOAD} a probe carries", bytes.len()),
                ));
            }
            for port in ports {
                table.user.insert(port, UdpPayload { name: "user", bytes: bytes.clone(), cookie: CookieSlot::None });
            }
        }
        Ok(table)
    }
}

/// The first word of `text` and what follows it, both subslices of `text`.
fn split_word(text: &str) -> (&str, &str) {
    let end = text.find(char::is_whitespace).unwrap_or(text.len());
    (&text[..end], &text[end..])
}

/// The line up to a `#` that is not inside double quotes.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    for (index, character) in line.char_indices() {
        match character {
            '\\' if quoted && !escaped => {
                escaped = true;
                continue;
            }
            '"' if !escaped => quoted = !quoted,
            '#' if !quoted => return &line[..index],
            _ => {}
        }
        escaped = false;
    }
    line
}

/// `53`, `udp/53`, `53,5353`, `udp/1000-1010`: the UDP ports of a payload line.
fn parse_payload_ports(text: &str) -> Result<Vec<u16>, (usize, String)> {
    let (offset, list) = match text.split_once('/') {
        Some(("udp" | "UDP", rest)) => (text.len() - rest.len(), rest),
        Some((other, _)) => return Err((0, format!("{other:?}: payloads are for udp/ ports"))),
        None => (0, text),
    };
    let mut ports = Vec::new();
    let mut position = offset;
    for item in list.split(',') {
        let number = |text: &str| -> Result<u16, (usize, String)> {
            match text.parse::<u32>() {
                Ok(value @ 1..=65535) => Ok(value as u16),
                Ok(value) => Err((position, format!("port {value} is outside 1-65535"))),
                Err(_) => Err((position, format!("{text:?} is not a port number"))),
            }
        };
        let (low, high) = match item.split_once('-') {
            Some((low, high)) => (number(low)?, number(high)?),
            None => (number(item)?, number(item)?),
        };
        if low > high {
            return Err((position, format!("range {low}-{high} is reversed")));
        }
        ports.extend(low..=high);
        position += item.len() + 1;
    }
    Ok(ports)
}

/// Hex digits in pairs, spaces allowed between pairs.
fn parse_hex(text: &str) -> Result<Vec<u8>, (usize, String)> {
    let mut bytes = Vec::new();
    let mut pending: Option<(usize, u8)> = None;
    for (offset, character) in text.char_indices() {
        if character.is_whitespace() {
            if let Some((start, _)) = pending {
                return Err((start, "a hex byte needs two digits".into()));
            }
            continue;
        }
        let Some(digit) = character.to_digit(16) else {
            return Err((offset, format!("{character:?} is not a hex digit")));
        };
        match pending.take() {
            None => pending = Some((offset, digit as u8)),
            Some((_, high)) => bytes.push((high << 4) | digit as u8),
        }
    }
    if let Some((start, _)) = pending {
        return Err((start, "a hex byte needs two digits".into()));
    }
    if bytes.is_empty() {
        return Err((0, "no hex bytes".into()));
    }
    Ok(bytes)
}

/// A double-quoted string with `\r \n \t \0 \\ \" \xHH` escapes.
fn parse_text(text: &str) -> Result<Vec<u8>, (usize, String)> {
    let inner = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .filter(|_| text.len() >= 2)
        .ok_or((0, "text must be in double quotes".to_string()))?;
    let mut bytes = Vec::new();
    let mut characters = inner.char_indices().peekable();
    while let Some((offset, character)) = characters.next() {
        let offset = offset + 1;
        if character == '"' {
            return Err((offset, "a quote inside text must be escaped (\\\")".into()));
        }
        if character != '\\' {
            let mut buffer = [0u8; 4];
            bytes.extend_from_slice(character.encode_utf8(&mut buffer).as_bytes());
            continue;
        }
        match characters.next().map(|(_, escaped)| escaped) {
            Some('r') => bytes.push(b'\r'),
            Some('n') => bytes.push(b'\n'),
            Some('t') => bytes.push(b'\t'),
            Some('0') => bytes.push(0),
            Some('\\') => bytes.push(b'\\'),
            Some('"') => bytes.push(b'"'),
            Some('x') => {
                let high = characters.next().and_then(|(_, digit)| digit.to_digit(16));
                let low = characters.next().and_then(|(_, digit)| digit.to_digit(16));
                match (high, low) {
                    (Some(high), Some(low)) => bytes.push((high * 16 + low) as u8),
                    _ => return Err((offset, "\\x needs two hex digits".into())),
                }
            }
            Some(other) => return Err((offset, format!("unknown escape \\{other}"))),
            None => return Err((offset, "the text ends in a lone backslash".into())),
        }
    }
    Ok(bytes)
}

impl fmt::Display for UdpPayload {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} ({} bytes)", self.name, self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_payload_fits_and_takes_its_cookie_back() {
        let table = PayloadTable::built_in();
        for port in BUILT_IN_PORTS {
            let payload = table.for_port(port);
            assert_ne!(payload.name, "empty", "port {port}");
            assert!(payload.bytes.len() <= MAX_UDP_PAYLOAD, "port {port}");
            let mut probe = payload.bytes.clone();
            payload.write_cookie(&mut probe, 0x1234_5678);
            if payload.cookie != CookieSlot::None {
                let quoted = payload.quoted_cookie(&probe).expect("the slot is inside the probe");
                assert_eq!(quoted.value, 0x1234_5678 & quoted.mask, "port {port}");
                assert_ne!(probe, payload.bytes, "port {port}: the cookie changed the probe");
            }
        }
        assert_eq!(table.for_port(9).name, "empty");
        assert!(table.for_port(9).bytes.is_empty());
    }

    #[test]
    fn dns_query_is_version_bind_chaos_txt() {
        let payload = PayloadTable::built_in().for_port(53).clone();
        let expected: &[u8] =
            b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07version\x04bind\x00\x00\x10\x00\x03";
        assert_eq!(payload.bytes, expected);
        let mut answer = payload.bytes.clone();
        answer[0..2].copy_from_slice(&[0xab, 0xcd]);
        answer[2] = 0x85;
        assert_eq!(payload.echoed_cookie(&answer), Some(CookieBits { value: 0xabcd, mask: 0xffff }));
        assert_eq!(payload.echoed_cookie(&[0xab]), Some(CookieBits { value: 0, mask: 0 }));
    }

    #[test]
    fn snmp_and_cldap_answers_give_their_ids_back() {
        let table = PayloadTable::built_in();
        let snmp = table.for_port(161);
        // An answer with a longer community and a short (minimal) request-id encoding.
        let pdu = ber(
            0xa2,
            &[vec![0x02, 0x04, 0x41, 0x02, 0x03, 0x04], vec![0x02, 0x01, 0x00], vec![0x02, 0x01, 0x00], ber(0x30, &[])]
                .concat(),
        );
        let answer = ber(0x30, &[vec![0x02, 0x01, 0x01], ber(0x04, b"a-longer-community"), pdu].concat());
        assert_eq!(snmp.echoed_cookie(&answer), Some(CookieBits { value: 0x0102_0304, mask: BER_COOKIE_MASK }));
        let mut probe = snmp.bytes.clone();
        snmp.write_cookie(&mut probe, 0xc102_0304);
        assert_eq!(snmp.quoted_cookie(&probe), Some(CookieBits { value: 0x0102_0304, mask: BER_COOKIE_MASK }));
        let cldap = table.for_port(389);
        let answer = ber(0x30, &[vec![0x02, 0x04, 0x40, 0, 0, 9], ber(0x64, &[ber(0x04, b"")].concat())].concat());
        assert_eq!(cldap.echoed_cookie(&answer), Some(CookieBits { value: 9, mask: BER_COOKIE_MASK }));
        // Garbage never panics and never gives a usable id.
        for garbage in [&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff][..], &[0x30], &[0x02, 0x09, 1, 2], &[]] {
            assert_eq!(snmp.echoed_cookie(garbage).map(|bits| bits.mask), Some(0));
        }
    }

    #[test]
    fn payload_files_parse_and_report_positions() {
        let table = PayloadTable::built_in()
            .parse_file("# mine\nudp/9999 hex 00 01 ff  # trailing\n7777,7778 text \"ping\\r\\n\\x00#\"\n53 hex 0102\n")
            .unwrap();
        assert_eq!(table.for_port(9999).bytes, [0, 1, 0xff]);
        assert_eq!(table.for_port(7778).bytes, b"ping\r\n\0#");
        assert_eq!(table.for_port(53).bytes, [1, 2]);
        assert_eq!(table.for_port(53).cookie, CookieSlot::None);
        assert_eq!(table.user_ports(), 4);
        let cases = [
            ("udp/9999 hex 0g", 1, 15, "not a hex digit"),
            ("\n  tcp/22 hex 00", 2, 3, "payloads are for udp/ ports"),
            ("70000 hex 00", 1, 1, "outside 1-65535"),
            ("53 base64 AA==", 1, 4, "not a payload kind"),
            ("53 text ping", 1, 9, "double quotes"),
            ("53 text \"a\\q\"", 1, 11, "unknown escape"),
            ("53 hex 0 1", 1, 8, "two digits"),
            ("53", 1, 3, "needs `hex` or `text`"),
        ];
        for (text, line, column, reason) in cases {
            let error = PayloadTable::built_in().parse_file(text).unwrap_err();
            assert_eq!((error.line, error.column), (line, column), "{text:?}: {error}");
            assert!(error.reason.contains(reason), "{text:?}: {error}");
        }
        let huge = format!("53 hex {}", "00".repeat(MAX_UDP_PAYLOAD + 1));
        assert!(PayloadTable::built_in().parse_file(&huge).unwrap_err().reason.contains("more than"));
    }
}
