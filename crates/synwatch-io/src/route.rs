//! Finding the path to a target: source address, interface, and the next hop's link address.
//!
//! No flags are needed for the common case:
//!
//! * The source address is the one the kernel would pick: a UDP socket is `connect()`ed to the
//!   target (which sends nothing) and asked for its local address.
//! * The interface is the one holding that address (`getifaddrs`).
//! * For IPv4, the next hop comes from the routing table and its hardware address from the
//!   neighbour table, both read from `/proc/thread-self/net` (per thread, because a thread may
//!   have entered another network namespace). When the neighbour is not cached, the caller sends
//!   one probe through the kernel (raw IP socket), which makes the kernel resolve it, waits for
//!   the kernel's neighbour notification ([`NeighbourEvents`]) and asks again (see `paths`).
//! * IPv6 neighbours are not listed in /proc; IPv6 probes go through the kernel's raw IPv6
//!   socket, which resolves neighbours itself. Loopback needs no neighbour on either family.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::ifaddrs::getifaddrs;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket};

/// Where probes to one family of targets leave from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// Interface name, for example `eth0` or `lo`.
    pub interface: String,
    /// Interface index.
    pub interface_index: u32,
    /// Our source address.
    pub source: IpAddr,
    /// Our interface's hardware address (all zero on `lo`).
    pub source_mac: [u8; 6],
    /// The IPv4 gateway, when the targets are routed through one.
    pub gateway: Option<IpAddr>,
    /// Whether the interface is a loopback device.
    pub is_loopback: bool,
}

impl Path {
    /// One line for `-v` output.
    pub fn describe(&self) -> String {
        let via = match self.gateway {
            Some(gateway) => format!("via {gateway}"),
            None if self.is_loopback => "on loopback".to_string(),
            None => "on-link".to_string(),
        };
        format!("interface {} (index {}), source {}, {via}", self.interface, self.interface_index, self.source)
    }
}

/// Errors of path resolution.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The kernel has no route to the target.
    #[error("no route to {target}: {source}")]
    NoRoute {
        /// The target.
        target: IpAddr,
        /// The kernel's answer.
        source: io::Error,
    },
    /// No interface holds the source address (or the named interface does not exist).
    #[error("no interface {0}")]
    NoInterface(String),
}

/// Finds the path to `target`, honouring `--interface` and `--source-ip` overrides.
pub fn resolve_path(target: IpAddr, interface: Option<&str>, source: Option<IpAddr>) -> Result<Path, RouteError> {
    let source = match source {
        Some(source) => source,
        None => kernel_source_for(target).map_err(|error| RouteError::NoRoute { target, source: error })?,
    };
    let interfaces = list_interfaces().map_err(|error| RouteError::NoInterface(error.to_string()))?;
    let chosen = match interface {
        Some(name) => interfaces.iter().find(|candidate| candidate.name == name),
        None => interfaces.iter().find(|candidate| candidate.addresses.contains(&source)),
    };
    let chosen = match chosen {
        Some(chosen) => chosen.clone(),
        // An AnyIP source (a local route rather than an address) lives on `lo`.
        None if interface.is_none() && source.is_loopback() => interfaces
            .iter()
            .find(|candidate| candidate.is_loopback)
            .cloned()
            .ok_or_else(|| RouteError::NoInterface("lo".into()))?,
        None => {
            return Err(RouteError::NoInterface(interface.map_or_else(|| format!("holding {source}"), str::to_string)));
        }
    };
    let gateway = match target {
        IpAddr::V4(target) if !chosen.is_loopback => ipv4_gateway(target, &chosen.name).map(IpAddr::V4),
        _ => None,
    };
    Ok(Path {
        interface: chosen.name,
        interface_index: chosen.index,
        source,
        source_mac: chosen.mac,
        gateway,
        is_loopback: chosen.is_loopback,
    })
}

/// The address the kernel would use as source towards `target`.
pub fn kernel_source_for(target: IpAddr) -> io::Result<IpAddr> {
    let bind: SocketAddr =
        if target.is_ipv6() { "[::]:0".parse().expect("valid") } else { "0.0.0.0:0".parse().expect("valid") };
    let socket = UdpSocket::bind(bind)?;
    // connect() on UDP only selects a route and a source; no packet is sent.
    socket.connect(SocketAddr::new(target, 9))?;
    Ok(socket.local_addr()?.ip())
}

/// The indices of the interfaces a TX ring may be needed on: every non-loopback interface with
/// a hardware address and an IPv4 address. The engine opens one packet socket per such
/// interface at start, while it still holds `CAP_NET_RAW`.
pub fn ring_capable_interfaces() -> Vec<u32> {
    let mut indices: Vec<u32> = list_interfaces()
        .unwrap_or_default()
        .into_iter()
        .filter(|interface| {
            !interface.is_loopback
                && interface.index != 0
                && interface.mac != [0; 6]
                && interface.addresses.iter().any(IpAddr::is_ipv4)
        })
        .map(|interface| interface.index)
        .collect();
    indices.sort_unstable();
    indices.dedup();
    indices
}

#[derive(Debug, Clone)]
struct Interface {
    name: String,
    index: u32,
    mac: [u8; 6],
    addresses: Vec<IpAddr>,
    is_loopback: bool,
}

fn list_interfaces() -> io::Result<Vec<Interface>> {
    let mut interfaces: Vec<Interface> = Vec::new();
    for entry in getifaddrs().map_err(io::Error::from)? {
        let position = match interfaces.iter().position(|known| known.name == entry.interface_name) {
            Some(position) => position,
            None => {
                let index = nix::net::if_::if_nametoindex(entry.interface_name.as_str()).unwrap_or(0);
                interfaces.push(Interface {
                    name: entry.interface_name.clone(),
                    index,
                    mac: [0; 6],
                    addresses: Vec::new(),
                    is_loopback: entry.flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK),
                });
                interfaces.len() - 1
            }
        };
        let Some(address) = entry.address else {
            continue;
        };
        if let Some(link) = address.as_link_addr() {
            if let Some(mac) = link.addr() {
                interfaces[position].mac = mac;
            }
        } else if let Some(v4) = address.as_sockaddr_in() {
            interfaces[position].addresses.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = address.as_sockaddr_in6() {
            interfaces[position].addresses.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(interfaces)
}

/// The gateway of the longest-prefix IPv4 route to `target` on `interface`, from
/// `/proc/thread-self/net/route` (`None` when the target is on-link).
fn ipv4_gateway(target: Ipv4Addr, interface: &str) -> Option<Ipv4Addr> {
    let table = fs::read_to_string("/proc/thread-self/net/route").ok()?;
    parse_ipv4_gateway(&table, target, interface)
}

/// Parses the kernel's IPv4 route table text (hexadecimal, host byte order).
fn parse_ipv4_gateway(table: &str, target: Ipv4Addr, interface: &str) -> Option<Ipv4Addr> {
    let target = u32::from(target);
    let mut best: Option<(u32, u32)> = None; // (mask, gateway)
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 || fields[0] != interface {
            continue;
        }
        let parse = |text: &str| u32::from_str_radix(text, 16).ok().map(u32::from_be);
        let (Some(destination), Some(gateway), Some(mask)) = (parse(fields[1]), parse(fields[2]), parse(fields[7]))
        else {
            continue;
        };
        if target & mask == destination & mask
            && best.is_none_or(|(best_mask, _)| mask.count_ones() > best_mask.count_ones())
        {
            best = Some((mask, gateway));
        }
    }
    best.and_then(|(_, gateway)| (gateway != 0).then(|| Ipv4Addr::from(gateway)))
}

/// The hardware address of an IPv4 neighbour on `interface`, if the kernel has it resolved.
pub fn ipv4_neighbour(address: Ipv4Addr, interface: &str) -> Option<[u8; 6]> {
    let table = fs::read_to_string("/proc/thread-self/net/arp").ok()?;
    parse_arp(&table, address, interface)
}

/// A subscription to the kernel's neighbour-table notifications (rtnetlink group
/// `RTMGRP_NEIGH`), so that a thread waiting for a next hop to be resolved wakes when the table
/// changes instead of polling it. Written on nix's netlink socket rather than with a netlink
/// crate: only the wake-up is needed, the messages are not parsed (the table is read again).
#[derive(Debug)]
pub struct NeighbourEvents {
    /// `None` when the socket could not be opened; waits then sleep in short steps.
    socket: Option<OwnedFd>,
}

impl NeighbourEvents {
    /// Subscribes on the calling thread's network namespace. Needs no privilege.
    pub fn subscribe() -> NeighbourEvents {
        const RTMGRP_NEIGH: u32 = 4;
        let opened = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)
            .and_then(|socket| {
                bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &NetlinkAddr::new(0, RTMGRP_NEIGH)).map(|()| socket)
            });
        match opened {
            Ok(socket) => NeighbourEvents { socket: Some(socket) },
            Err(error) => {
                tracing::debug!(%error, "no neighbour notifications; polling the neighbour table");
                NeighbourEvents { socket: None }
            }
        }
    }

    /// Waits at most `timeout` for a change of the neighbour table (any change: the caller reads
    /// the table again).
    pub fn wait(&mut self, timeout: Duration) {
        let Some(socket) = &self.socket else {
            std::thread::sleep(timeout.min(Duration::from_millis(10)));
            return;
        };
        let millis = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        if matches!(poll(&mut fds, PollTimeout::from(millis)), Ok(ready) if ready > 0) {
            let mut buffer = [0u8; 8192];
            while recv(std::os::fd::AsRawFd::as_raw_fd(socket), &mut buffer, MsgFlags::MSG_DONTWAIT)
                .is_ok_and(|len| len > 0)
            {}
        }
    }
}

fn parse_arp(table: &str, address: Ipv4Addr, interface: &str) -> Option<[u8; 6]> {
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || fields[5] != interface || fields[0].parse::<Ipv4Addr>().ok()? != address {
            continue;
        }
        let flags = u32::from_str_radix(fields[2].trim_start_matches("0x"), 16).ok()?;
        if flags & 0x2 == 0 {
            return None; // incomplete
        }
        let mut mac = [0u8; 6];
        let mut parts = fields[3].split(':');
        for byte in &mut mac {
            *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
        }
        return Some(mac);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t006433C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        veth0\t000012C6\t02FF13C6\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0\n";

    #[test]
    fn longest_prefix_route_wins() {
        // 198.51.100.0/24 is on-link; the default route goes via 192.0.2.1.
        assert_eq!(parse_ipv4_gateway(ROUTES, "198.51.100.5".parse().unwrap(), "eth0"), None);
        assert_eq!(
            parse_ipv4_gateway(ROUTES, "203.0.113.1".parse().unwrap(), "eth0"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            parse_ipv4_gateway(ROUTES, "198.18.3.4".parse().unwrap(), "veth0"),
            Some("198.19.255.2".parse().unwrap())
        );
    }

    #[test]
    fn arp_entries_need_the_complete_flag() {
        let table = "IP address       HW type     Flags       HW address            Mask     Device\n\
            198.19.255.2     0x1         0x2         02:aa:bb:cc:dd:ee     *        veth0\n\
            198.19.255.3     0x1         0x0         00:00:00:00:00:00     *        veth0\n";
        assert_eq!(parse_arp(table, "198.19.255.2".parse().unwrap(), "veth0"), Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]));
        assert_eq!(parse_arp(table, "198.19.255.3".parse().unwrap(), "veth0"), None);
        assert_eq!(parse_arp(table, "198.19.255.2".parse().unwrap(), "eth0"), None);
    }

    #[test]
    fn loopback_path_needs_no_neighbour() {
        let path = resolve_path("127.0.0.1".parse().unwrap(), None, None).unwrap();
        assert!(path.is_loopback);
        assert_eq!(path.source, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(path.gateway, None);
    }
}
