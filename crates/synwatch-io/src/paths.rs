//! Which transmitter and probe template each address family of a job uses.
//!
//! The TX ring needs the link-layer destination of the next hop, known for routed IPv4 (the
//! gateway's entry in the neighbour table). When the gateway is not in the table yet, the job's
//! first probe of the family (in its own shard) also goes once through the kernel (a raw IP
//! socket), which makes the kernel resolve the gateway, and the choice waits for the kernel's
//! neighbour notification (netlink) instead of polling the table. Loopback and IPv6 go through
//! raw IP sockets and `sendmmsg`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use synwatch_engine::{CookieKey, Port};
use synwatch_wire::{LinkLayer, SynFields, SynTemplate, UdpFields, UdpTemplate};

use crate::config::TransmitChoice;
use crate::route::{self, NeighbourEvents, Path};
use crate::transmit::{RawIpTransmitter, Transmit};

/// How long a job's submission waits for the kernel to resolve its gateway.
const NEIGHBOUR_WAIT: Duration = Duration::from_millis(500);

/// Per family: the probe templates (SYN and UDP, for the same link layer) and the
/// transmitter they go through.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) template: SynTemplate,
    pub(crate) udp_template: UdpTemplate,
    pub(crate) transmitter: TransmitterKey,
}

/// Names one transmitter of a sender thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TransmitterKey {
    Raw { ipv6: bool },
    Ring { interface_index: u32 },
}

impl Route {
    /// Raw IP and `sendmmsg` for the family of `first`.
    pub(crate) fn raw(first: IpAddr) -> Route {
        Route {
            template: SynTemplate::for_address(first, LinkLayer::None),
            udp_template: UdpTemplate::for_address(first, LinkLayer::None),
            transmitter: TransmitterKey::Raw { ipv6: first.is_ipv6() },
        }
    }
}

/// Chooses routes for submitted jobs.
pub(crate) struct PathChooser {
    transmit: TransmitChoice,
    /// Raw sockets kept for sending a job's first probe through the kernel, which makes it
    /// resolve the next hop (opened at start, before privileges are dropped).
    warm_up: Mutex<[Option<RawIpTransmitter>; 2]>,
}

impl PathChooser {
    pub(crate) fn new(transmit: TransmitChoice, warm_up: [Option<RawIpTransmitter>; 2]) -> PathChooser {
        PathChooser { transmit, warm_up: Mutex::new(warm_up) }
    }

    /// Picks the transmitter and template for a path (of the family of `first`), and names the
    /// transmitter. `own_first_probe` is the job's first probe of the family, sent ahead
    /// through the kernel when the gateway is not known; without one (a family too rare in
    /// the job to find it quickly) an unknown gateway means raw IP sockets.
    pub(crate) fn choose(
        &self,
        path: &Path,
        first: IpAddr,
        own_first_probe: Option<(IpAddr, Port)>,
        cookie_key: &CookieKey,
    ) -> (Route, &'static str) {
        if self.transmit == TransmitChoice::Sendmmsg {
            return (Route::raw(first), "sendmmsg");
        }
        // Loopback always goes through the kernel: an IPv4 packet injected on `lo` by AF_PACKET
        // has no cached route and a loopback source, which the kernel drops as a martian unless
        // route_localnet is set.
        let destination_mac = match (path.is_loopback, path.gateway) {
            (false, Some(IpAddr::V4(gateway))) if !first.is_ipv6() => {
                route::ipv4_neighbour(gateway, &path.interface).or_else(|| {
                    let probe = own_first_probe?;
                    // Subscribe before the warm-up, so that its resolution is not missed.
                    let mut events = NeighbourEvents::subscribe();
                    warm_up_neighbour(self.warm_up.lock()[0].as_mut(), path, probe, cookie_key);
                    let deadline = Instant::now() + NEIGHBOUR_WAIT;
                    loop {
                        if let Some(mac) = route::ipv4_neighbour(gateway, &path.interface) {
                            return Some(mac);
                        }
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return None;
                        }
                        events.wait(left);
                    }
                })
            }
            _ => None,
        };
        match destination_mac {
            Some(destination_mac) => {
                let link = LinkLayer::Ethernet { source_mac: path.source_mac, destination_mac };
                (
                    Route {
                        template: SynTemplate::for_address(first, link),
                        udp_template: UdpTemplate::for_address(first, link),
                        transmitter: TransmitterKey::Ring { interface_index: path.interface_index },
                    },
                    "tx-ring",
                )
            }
            None => {
                if self.transmit == TransmitChoice::Ring {
                    tracing::warn!(interface = %path.interface, "the TX ring needs a known next hop; using sendmmsg");
                }
                (Route::raw(first), "sendmmsg")
            }
        }
    }
}

/// Sends the job's first probe through the kernel so that it resolves the next hop. It is the
/// same (address, port, cookie) the schedule sends first, in the job's own shard, so it probes
/// nothing the job would not; its reply validates like any other once the job is registered.
fn warm_up_neighbour(
    transmitter: Option<&mut RawIpTransmitter>,
    path: &Path,
    (target, port): (IpAddr, Port),
    cookie_key: &CookieKey,
) {
    let Some(transmitter) = transmitter else {
        return;
    };
    let cookie = cookie_key.cookie(path.source, target, port);
    let Some(slot) = transmitter.slot() else {
        return;
    };
    // A UDP first probe goes out empty: it is only there to make the kernel resolve the hop.
    let written = if port.is_udp() {
        let fields = UdpFields {
            source: path.source,
            destination: target,
            source_port: cookie.source_port,
            destination_port: port.number,
            cookie: cookie.sequence,
        };
        UdpTemplate::for_address(target, LinkLayer::None).write(slot, &fields, &synwatch_wire::UdpPayload::empty())
    } else {
        let fields = SynFields {
            source: path.source,
            destination: target,
            source_port: cookie.source_port,
            destination_port: port.number,
            sequence: cookie.sequence,
            timestamp_value: 0,
        };
        SynTemplate::for_address(target, LinkLayer::None).write(slot, &fields)
    };
    if let Ok(len) = written {
        transmitter.commit(len, target);
        let _ = transmitter.flush();
    }
}
