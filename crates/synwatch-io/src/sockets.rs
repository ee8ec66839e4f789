//! The privileged sockets of the SYN mode, opened at start before the privilege drop, and the
//! set of transmitters each sender thread owns.

use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::config::{EngineConfig, EngineError, TransmitChoice};
use crate::paths::TransmitterKey;
use crate::receive::ReplySocket;
use crate::route;
use crate::transmit::{RawIpTransmitter, RingTransmitter, Transmit};

/// The privileged sockets of the SYN mode, all opened before the privilege drop.
pub(crate) struct RawSockets {
    pub(crate) reply_socket: ReplySocket,
    /// Per sender thread: its raw IP transmitters, and one packet socket per interface a TX
    /// ring may be set up on later.
    pub(crate) per_thread: Vec<(Transmitters, Vec<(u32, OwnedFd)>)>,
    pub(crate) warm_up: [Option<RawIpTransmitter>; 2],
}

impl RawSockets {
    pub(crate) fn open(config: &EngineConfig) -> Result<RawSockets, EngineError> {
        let reply_socket = ReplySocket::open(config.source_ports, 64, config.receive_buffer, Duration::from_millis(20))
            .map_err(EngineError::from_socket)?;
        let ring_interfaces =
            if config.transmit == TransmitChoice::Sendmmsg { Vec::new() } else { route::ring_capable_interfaces() };
        let mut per_thread = Vec::with_capacity(config.sender_threads);
        for _ in 0..config.sender_threads {
            let mut transmitters = Transmitters::default();
            let raw_v4 = RawIpTransmitter::open(false, config.batch).map_err(EngineError::from_socket)?;
            transmitters.insert(TransmitterKey::Raw { ipv6: false }, Box::new(raw_v4));
            // IPv6 may be disabled on the host; IPv6 jobs then fail at submission.
            if let Ok(raw_v6) = RawIpTransmitter::open(true, config.batch) {
                transmitters.insert(TransmitterKey::Raw { ipv6: true }, Box::new(raw_v6));
            }
            let mut packet_sockets = Vec::new();
            for &interface_index in &ring_interfaces {
                packet_sockets
                    .push((interface_index, RingTransmitter::open_socket().map_err(EngineError::from_socket)?));
            }
            per_thread.push((transmitters, packet_sockets));
        }
        let warm_up = [RawIpTransmitter::open(false, 1).ok(), RawIpTransmitter::open(true, 1).ok()];
        Ok(RawSockets { reply_socket, per_thread, warm_up })
    }
}

/// The sender's transmitters: a handful at most (raw IPv4, raw IPv6, one ring per interface),
/// so a vector searched linearly is cheaper per probe than hashing the key.
#[derive(Default)]
pub(crate) struct Transmitters(Vec<(TransmitterKey, Box<dyn Transmit>)>);

impl Transmitters {
    pub(crate) fn insert(&mut self, key: TransmitterKey, transmitter: Box<dyn Transmit>) {
        self.0.retain(|(existing, _)| *existing != key);
        self.0.push((key, transmitter));
    }

    pub(crate) fn contains_key(&self, key: &TransmitterKey) -> bool {
        self.0.iter().any(|(existing, _)| existing == key)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, key: &TransmitterKey) -> Option<&mut Box<dyn Transmit>> {
        self.0.iter_mut().find(|(existing, _)| existing == key).map(|(_, transmitter)| transmitter)
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Box<dyn Transmit>> {
        self.0.iter_mut().map(|(_, transmitter)| transmitter)
    }
}
