//! Scripted UDP services for the kernel lab: one responder per protocol that synwatch has a
//! payload for, answering the way the protocol's specification (and its common servers) do.
//!
//! Each responder first checks that the request is one its protocol's server would answer
//! (the right message type, version, lengths and fields), so a probe payload that is wrong gets
//! no answer and its test fails; then it answers with the protocol's real reply shape, echoing
//! the request's id where the protocol does (the DNS id, the NTP transmit timestamp as the
//! origin, the SNMP request-id, ...). Where the real server answers from another port (TFTP
//! answers from a new transfer port, RFC 1350 §4), so does the scripted one.
//!
//! They are written here because no Debian server fits most of them in a test (an SNMP agent,
//! an IKE daemon or a memcached would each need its own configuration, privileges and start-up
//! wait); DNS is also tested against a real dnsmasq by the integration tests. Their BER and
//! header reading is written apart from `synwatch_wire::payloads` on purpose: a second
//! implementation, so that a mistake in the probes' encoding is not mirrored by the server.
//!
//! All services of a lab run on one thread in the target namespace, one socket bound per
//! (address, port) with `IP_FREEBIND` (the addresses are the lab's AnyIP ranges), so replies
//! leave from exactly the probed address and port.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use socket2::{Domain, Socket, Type};

/// A scripted UDP service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UdpService {
    /// DNS (RFC 1035): answers queries, echoing the id (other requests get NOTIMP or FORMERR).
    Dns,
    /// NTP server (RFC 5905): answers mode-3 requests with mode 4, origin = our transmit.
    Ntp,
    /// SNMP agent (RFC 3416) for community `public`, v1 and v2c: GetResponse with the
    /// request-id.
    Snmp,
    /// SSDP (UPnP): answers M-SEARCH with HTTP/1.1 200.
    Ssdp,
    /// NetBIOS name service (RFC 1002): answers node status requests.
    NetbiosNs,
    /// mDNS responder answering legacy unicast queries (RFC 6762 §6.7), id echoed.
    Mdns,
    /// memcached's UDP protocol: answers `stats` with the request id.
    Memcached,
    /// IKEv2 responder (RFC 7296): answers IKE_SA_INIT with NO_PROPOSAL_CHOSEN.
    Ike,
    /// OpenVPN server: answers a client hard reset with a server hard reset.
    OpenVpn,
    /// SIP user agent (RFC 3261): answers OPTIONS with 200 OK.
    Sip,
    /// CLDAP (RFC 4511 over UDP): answers a root DSE search.
    Cldap,
    /// Portmapper (RFC 1833): answers the NULL procedure.
    Portmapper,
    /// TFTP server (RFC 1350): answers a read request with an error, from a new port.
    Tftp,
    /// MS-SQL browser (MC-SQLR): answers CLNT_BCAST_EX / CLNT_UCAST_EX with SVR_RESP.
    MssqlBrowser,
    /// CoAP server (RFC 7252): answers GET /.well-known/core with 2.05 Content.
    Coap,
    /// QUIC server (RFC 9000 §6): answers an unknown version with Version Negotiation.
    Quic,
    /// Echoes any datagram.
    Echo,
    /// Bound and silent: the port is open, but nothing ever answers (`open|filtered`).
    Silent,
}

impl UdpService {
    /// The service's well-known port.
    pub fn default_port(self) -> u16 {
        match self {
            UdpService::Dns => 53,
            UdpService::Ntp => 123,
            UdpService::Snmp => 161,
            UdpService::Ssdp => 1900,
            UdpService::NetbiosNs => 137,
            UdpService::Mdns => 5353,
            UdpService::Memcached => 11211,
            UdpService::Ike => 500,
            UdpService::OpenVpn => 1194,
            UdpService::Sip => 5060,
            UdpService::Cldap => 389,
            UdpService::Portmapper => 111,
            UdpService::Tftp => 69,
            UdpService::MssqlBrowser => 1434,
            UdpService::Coap => 5683,
            UdpService::Quic => 443,
            UdpService::Echo => 7,
            UdpService::Silent => 9,
        }
    }

    /// Every service with a protocol of its own (not `Echo` nor `Silent`).
    pub const PROTOCOLS: [UdpService; 16] = [
        UdpService::Dns,
        UdpService::Ntp,
        UdpService::Snmp,
        UdpService::Ssdp,
        UdpService::NetbiosNs,
        UdpService::Mdns,
        UdpService::Memcached,
        UdpService::Ike,
        UdpService::OpenVpn,
        UdpService::Sip,
        UdpService::Cldap,
        UdpService::Portmapper,
        UdpService::Tftp,
        UdpService::MssqlBrowser,
        UdpService::Coap,
        UdpService::Quic,
    ];

    /// The service with a protocol of its own whose well-known port is `port`.
    pub fn for_port(port: u16) -> Option<UdpService> {
        UdpService::PROTOCOLS.into_iter().find(|service| service.default_port() == port)
    }

    /// The answer to `request`, or `None` when the service would not answer it.
    pub fn answer(self, request: &[u8]) -> Option<Vec<u8>> {
        match self {
            UdpService::Dns | UdpService::Mdns => dns_answer(request),
            UdpService::Ntp => ntp_answer(request),
            UdpService::Snmp => snmp_answer(request),
            UdpService::Ssdp => ssdp_answer(request),
            UdpService::NetbiosNs => netbios_answer(request),
            UdpService::Memcached => memcached_answer(request),
            UdpService::Ike => ike_answer(request),
            UdpService::OpenVpn => openvpn_answer(request),
            UdpService::Sip => sip_answer(request),
            UdpService::Cldap => cldap_answer(request),
            UdpService::Portmapper => portmapper_answer(request),
            UdpService::Tftp => tftp_answer(request),
            UdpService::MssqlBrowser => mssql_answer(request),
            UdpService::Coap => coap_answer(request),
            UdpService::Quic => quic_answer(request),
            UdpService::Echo => Some(request.to_vec()),
            UdpService::Silent => None,
        }
    }

    /// Whether the service answers from a new port instead of its own (TFTP).
    pub fn answers_from_new_port(self) -> bool {
        self == UdpService::Tftp
    }
}

fn dns_answer(request: &[u8]) -> Option<Vec<u8>> {
    let header = request.get(..12)?;
    if header[2] & 0x80 != 0 {
        return None; // a response: servers do not answer those
    }
    // Like BIND and dnsmasq, a request that is not a one-question standard query gets a bare
    // header back: NOTIMP for another opcode, FORMERR for another question count.
    let opcode = header[2] & 0x78;
    if opcode != 0 || u16::from_be_bytes([header[4], header[5]]) != 1 {
        let rcode = if opcode != 0 { 4 } else { 1 };
        return Some(vec![
            header[0],
            header[1],
            0x80 | opcode | (header[2] & 0x01),
            0x80 | rcode,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ]);
    }
    let mut position = 12;
    loop {
        let length = usize::from(*request.get(position)?);
        if length == 0 {
            position += 1;
            break;
        }
        if length > 63 {
            return None;
        }
        position += 1 + length;
    }
    let question = request.get(12..position + 4)?;
    let mut answer = vec![header[0], header[1], 0x80 | (header[2] & 0x01), 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
    answer.extend_from_slice(question);
    Some(answer)
}

fn ntp_answer(request: &[u8]) -> Option<Vec<u8>> {
    if request.len() < 48 || request[0] & 0x07 != 3 {
        return None;
    }
    let version = (request[0] >> 3) & 0x07;
    let mut answer = vec![0u8; 48];
    answer[0] = (version << 3) | 4;
    answer[1] = 2; // stratum
    answer[2] = 6; // poll
    answer[3] = 0xec; // precision
    answer[12..16].copy_from_slice(b"LAB\0");
    answer[24..32].copy_from_slice(&request[40..48]); // origin = the client's transmit
    answer[32..40].copy_from_slice(&[0xea, 0, 0, 0, 0, 0, 0, 0]);
    answer[40..48].copy_from_slice(&[0xea, 0, 0, 0, 0, 0, 0, 1]);
    Some(answer)
}

/// One BER element at `position`: (tag, content range, end).
fn ber_element(bytes: &[u8], position: usize) -> Option<(u8, std::ops::Range<usize>)> {
    let tag = *bytes.get(position)?;
    let first = *bytes.get(position + 1)?;
    let (length, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 2 {
            return None;
        }
        let mut length = 0;
        for index in 0..count {
            length = (length << 8) | usize::from(*bytes.get(position + 2 + index)?);
        }
        (length, 2 + count)
    };
    let start = position + header;
    let end = start.checked_add(length)?;
    (end <= bytes.len()).then_some((tag, start..end))
}

fn ber(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut bytes = vec![tag];
    if content.len() < 0x80 {
        bytes.push(content.len() as u8);
    } else {
        bytes.extend_from_slice(&[0x82, (content.len() >> 8) as u8, content.len() as u8]);
    }
    bytes.extend_from_slice(content);
    bytes
}

fn snmp_answer(request: &[u8]) -> Option<Vec<u8>> {
    let (tag, message) = ber_element(request, 0)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, version) = ber_element(request, message.start)?;
    // SNMPv1 (0) or v2c (1), answered in the request's version, as net-snmp does.
    if tag != 0x02 || !matches!(request[version.clone()], [0] | [1]) {
        return None;
    }
    let answer_version = ber(0x02, &request[version.clone()]);
    let (tag, community) = ber_element(request, version.end)?;
    if tag != 0x04 || &request[community.clone()] != b"public" {
        return None;
    }
    let (tag, pdu) = ber_element(request, community.end)?;
    if tag != 0xa0 && tag != 0xa1 {
        return None; // GetRequest or GetNextRequest
    }
    let (tag, request_id) = ber_element(request, pdu.start)?;
    if tag != 0x02 {
        return None;
    }
    let oid = ber(0x06, &[0x2b, 6, 1, 2, 1, 1, 1, 0]);
    let varbind = ber(0x30, &[oid, ber(0x04, b"synwatch lab agent")].concat());
    let pdu = ber(
        0xa2,
        &[ber(0x02, &request[request_id]), vec![0x02, 0x01, 0x00], vec![0x02, 0x01, 0x00], ber(0x30, &varbind)]
            .concat(),
    );
    Some(ber(0x30, &[answer_version, ber(0x04, b"public"), pdu].concat()))
}

fn ssdp_answer(request: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(request).ok()?;
    if !text.starts_with("M-SEARCH * HTTP/1.1\r\n") || !text.contains("\"ssdp:discover\"") {
        return None;
    }
    Some(
        b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\nLOCATION: http://192.0.2.1/lab.xml\r\n\
SERVER: Linux/6 UPnP/2.0 lab/1\r\nST: upnp:rootdevice\r\nUSN: uuid:lab::upnp:rootdevice\r\n\r\n"
            .to_vec(),
    )
}

fn netbios_answer(request: &[u8]) -> Option<Vec<u8>> {
    // A query with one question for the wildcard name, type NBSTAT (0x21), class IN.
    if request.len() < 50 || request[2] & 0x80 != 0 || request[4..6] != [0, 1] || request[12] != 32 {
        return None;
    }
    if &request[13..15] != b"CK"
        || request[15..45].iter().any(|&byte| byte != b'A')
        || request[46..50] != [0, 0x21, 0, 1]
    {
        return None;
    }
    let mut answer = vec![request[0], request[1], 0x84, 0x00, 0, 0, 0, 1, 0, 0, 0, 0];
    answer.extend_from_slice(&request[12..50]); // the name, type and class
    answer.extend_from_slice(&[0, 0, 0, 0]); // TTL
    let mut data = vec![1u8]; // one name
    data.extend_from_slice(b"LAB            \x00"); // 15 characters and the suffix
    data.extend_from_slice(&[0x04, 0x00]); // active
    data.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, 0x00, 0x01]); // unit id
    data.extend_from_slice(&[0u8; 40]); // statistics
    answer.extend_from_slice(&(data.len() as u16).to_be_bytes());
    answer.extend_from_slice(&data);
    Some(answer)
}

fn memcached_answer(request: &[u8]) -> Option<Vec<u8>> {
    let (header, command) = (request.get(..8)?, request.get(8..)?);
    if header[4..6] != [0, 1] || !command.starts_with(b"stats") {
        return None;
    }
    Some([&[header[0], header[1], 0, 0, 0, 1, 0, 0][..], b"STAT pid 1\r\nSTAT version 1.6\r\nEND\r\n"].concat())
}

fn ike_answer(request: &[u8]) -> Option<Vec<u8>> {
    let header = request.get(..28)?;
    // IKEv2 (major 2), IKE_SA_INIT (34), the initiator's request, no responder SPI yet.
    if header[17] >> 4 != 2 || header[18] != 34 || header[19] & 0x28 != 0x08 || header[8..16] != [0; 8] {
        return None;
    }
    if u32::from_be_bytes([header[24], header[25], header[26], header[27]]) as usize != request.len() {
        return None;
    }
    let mut answer = header.to_vec();
    answer[8..16].copy_from_slice(&[0x1a, 0xb0, 0, 0, 0, 0, 0, 1]); // responder SPI
    answer[16] = 41; // next payload: Notify
    answer[19] = 0x20; // response
    let notify = [0u8, 0, 0, 8, 0, 0, 0, 14]; // NO_PROPOSAL_CHOSEN
    answer.extend_from_slice(&notify);
    let length = answer.len() as u32;
    answer[24..28].copy_from_slice(&length.to_be_bytes());
    Some(answer)
}

fn openvpn_answer(request: &[u8]) -> Option<Vec<u8>> {
    // P_CONTROL_HARD_RESET_CLIENT_V2, a session id, an ack array, a message packet id.
    if request.len() < 14 || request[0] >> 3 != 7 {
        return None;
    }
    let acks = usize::from(request[9]);
    let message_id = request.get(10 + acks * 4..14 + acks * 4)?;
    let mut answer = vec![8 << 3];
    answer.extend_from_slice(&[0x5e, 0x55, 0x10, 0x4e, 0, 0, 0, 1]); // server session id
    answer.push(1);
    answer.extend_from_slice(message_id); // the acknowledged packet id
    answer.extend_from_slice(&request[1..9]); // the client's session id
    answer.extend_from_slice(&[0, 0, 0, 0]);
    Some(answer)
}

fn sip_answer(request: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(request).ok()?;
    if !text.starts_with("OPTIONS sip:") || !text.contains("SIP/2.0\r\n") {
        return None;
    }
    let mut answer = String::from("SIP/2.0 200 OK\r\n");
    for name in ["Via:", "From:", "To:", "Call-ID:", "CSeq:"] {
        answer.push_str(text.lines().find(|line| line.starts_with(name))?);
        answer.push_str("\r\n");
    }
    answer.push_str("Allow: INVITE, ACK, CANCEL, OPTIONS, BYE\r\nContent-Length: 0\r\n\r\n");
    Some(answer.into_bytes())
}

fn cldap_answer(request: &[u8]) -> Option<Vec<u8>> {
    let (tag, message) = ber_element(request, 0)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, id) = ber_element(request, message.start)?;
    if tag != 0x02 {
        return None;
    }
    let (tag, _) = ber_element(request, id.end)?;
    if tag != 0x63 {
        return None; // a SearchRequest
    }
    let id = ber(0x02, &request[id]);
    let attribute = ber(0x30, &[ber(0x04, b"namingContexts"), ber(0x31, &ber(0x04, b"dc=lab"))].concat());
    let entry = ber(0x30, &[id.clone(), ber(0x64, &[ber(0x04, b""), ber(0x30, &attribute)].concat())].concat());
    let done = ber(0x30, &[id, ber(0x65, &[vec![0x0a, 0x01, 0x00], ber(0x04, b""), ber(0x04, b"")].concat())].concat());
    Some([entry, done].concat())
}

fn portmapper_answer(request: &[u8]) -> Option<Vec<u8>> {
    let word =
        |index: usize| request.get(index * 4..index * 4 + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    // CALL, RPC version 2, program 100000.
    if word(1)? != 0 || word(2)? != 2 || word(3)? != 100_000 {
        return None;
    }
    let mut answer = request[..4].to_vec();
    for value in [1u32, 0, 0, 0, 0] {
        answer.extend_from_slice(&value.to_be_bytes()); // REPLY, MSG_ACCEPTED, AUTH_NONE, SUCCESS
    }
    Some(answer)
}

fn tftp_answer(request: &[u8]) -> Option<Vec<u8>> {
    // RRQ: opcode 1, a file name and a mode, each NUL-terminated.
    if request.get(..2)? != [0, 1] || request.iter().skip(2).filter(|&&byte| byte == 0).count() < 2 {
        return None;
    }
    Some([&[0u8, 5, 0, 1][..], b"File not found\0"].concat())
}

fn mssql_answer(request: &[u8]) -> Option<Vec<u8>> {
    if !matches!(request.first(), Some(0x02 | 0x03)) {
        return None;
    }
    let text = b"ServerName;LAB;InstanceName;MSSQLSERVER;IsClustered;No;Version;15.0.2000.5;tcp;1433;;";
    let mut answer = vec![0x05];
    answer.extend_from_slice(&(text.len() as u16).to_le_bytes());
    answer.extend_from_slice(text);
    Some(answer)
}

fn coap_answer(request: &[u8]) -> Option<Vec<u8>> {
    let header = request.get(..4)?;
    // Version 1, confirmable, no token, GET.
    if header[0] != 0x40 || header[1] != 0x01 {
        return None;
    }
    if !request.windows(11).any(|window| window == b".well-known") {
        return None;
    }
    let mut answer = vec![0x60, 0x45, header[2], header[3], 0xc1, 0x28, 0xff]; // ACK 2.05, Content-Format 40
    answer.extend_from_slice(b"</lab>;rt=\"synwatch\"");
    Some(answer)
}

fn quic_answer(request: &[u8]) -> Option<Vec<u8>> {
    // A long header of a version the server does not speak, in a full-size datagram.
    if request.len() < 1200 || request[0] & 0x80 == 0 || request.get(1..5)? == [0, 0, 0, 1] {
        return None;
    }
    let dcid_len = usize::from(*request.get(5)?);
    let dcid = request.get(6..6 + dcid_len)?;
    let scid_len = usize::from(*request.get(6 + dcid_len)?);
    let scid = request.get(7 + dcid_len..7 + dcid_len + scid_len)?;
    let mut answer = vec![0xc5, 0, 0, 0, 0];
    answer.push(scid_len as u8);
    answer.extend_from_slice(scid);
    answer.push(dcid_len as u8);
    answer.extend_from_slice(dcid);
    answer.extend_from_slice(&1u32.to_be_bytes());
    Some(answer)
}

/// The running services of a lab: one thread, one socket per (address, port).
#[derive(Debug)]
pub struct UdpServices {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    answered: Arc<AtomicU64>,
}

impl UdpServices {
    /// Binds every service (in the calling thread's namespace: call it inside the target
    /// namespace) and starts answering.
    pub fn start(services: &[(SocketAddr, UdpService)]) -> io::Result<UdpServices> {
        let mut sockets = Vec::with_capacity(services.len());
        for &(address, service) in services {
            let socket = Socket::new(Domain::for_address(address), Type::DGRAM, None)?;
            crate::bind_any_lab_address(&socket, address)?;
            socket.set_nonblocking(true)?;
            sockets.push((address, service, std::net::UdpSocket::from(socket)));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            std::thread::Builder::new().name("lab-udp".into()).spawn(move || serve(sockets, &stop, &answered))?
        };
        Ok(UdpServices { stop, thread: Some(thread), answered })
    }

    /// Answers sent so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for UdpServices {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(sockets: Vec<(SocketAddr, UdpService, std::net::UdpSocket)>, stop: &AtomicBool, answered: &AtomicU64) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut buffer = [0u8; 2048];
    while !stop.load(Ordering::Acquire) {
        let mut descriptors: Vec<PollFd<'_>> =
            sockets.iter().map(|(_, _, socket)| PollFd::new(socket.as_fd(), PollFlags::POLLIN)).collect();
        if poll(&mut descriptors, PollTimeout::from(20u8)).unwrap_or(0) == 0 {
            continue;
        }
        let readable: Vec<bool> = descriptors
            .iter()
            .map(|descriptor| descriptor.revents().is_some_and(|events| events.contains(PollFlags::POLLIN)))
            .collect();
        for ((address, service, socket), readable) in sockets.iter().zip(readable) {
            if !readable {
                continue;
            }
            while let Ok((length, peer)) = socket.recv_from(&mut buffer) {
                let Some(answer) = service.answer(&buffer[..length]) else { continue };
                let sent = if service.answers_from_new_port() {
                    reply_from_new_port(*address, peer, &answer)
                } else {
                    socket.send_to(&answer, peer).map(|_| ())
                };
                if sent.is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Sends `answer` from a new socket on `address` with a port of the kernel's choosing.
fn reply_from_new_port(address: SocketAddr, peer: SocketAddr, answer: &[u8]) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(address), Type::DGRAM, None)?;
    crate::bind_any_lab_address(&socket, SocketAddr::new(address.ip(), 0))?;
    socket.send_to(answer, &peer.into()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use synwatch_wire::{CookieSlot, PayloadTable};

    use super::*;

    #[test]
    fn every_built_in_payload_draws_an_answer_that_echoes_its_cookie() {
        let payloads = PayloadTable::built_in();
        for service in UdpService::PROTOCOLS {
            let payload = payloads.for_port(service.default_port());
            let mut probe = payload.bytes.clone();
            payload.write_cookie(&mut probe, 0x1357_9bdf);
            let answer = service.answer(&probe).unwrap_or_else(|| panic!("{service:?} ignored its payload"));
            if payload.cookie != CookieSlot::None {
                let echoed = payload.echoed_cookie(&answer).expect("a slot");
                assert_ne!(echoed.mask, 0, "{service:?}: the answer does not carry the id");
                assert_eq!(echoed.value, 0x1357_9bdf & echoed.mask, "{service:?}");
            }
            // Another protocol's request, an empty one and garbage get no answer.
            assert_eq!(service.answer(&[]), None, "{service:?}");
            assert_eq!(service.answer(&[0xff; 7]), None, "{service:?}");
        }
        // A DNS server answers a non-query header with an error code, never a response.
        let ntp_as_dns = UdpService::Dns.answer(&payloads.for_port(123).bytes).unwrap();
        assert_eq!(ntp_as_dns.len(), 12);
        assert_eq!(UdpService::Dns.answer(&[0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(UdpService::Silent.answer(b"anything"), None);
        assert_eq!(UdpService::Echo.answer(b"ping").as_deref(), Some(&b"ping"[..]));
    }
}
