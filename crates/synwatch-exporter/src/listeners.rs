//! The local listeners collector: this host's listening TCP sockets and bound UDP sockets, read
//! from /proc, as `synwatch_listener_up{protocol,address,port,process}`.
//!
//! A listener is identified by its protocol, local address, port and process command name (empty
//! when the owning process cannot be seen: with only `CAP_NET_RAW`, other users' `/proc/PID/fd`
//! are unreadable). [`ListenerTracker`] is the pure part: fed each reading, it keeps a listener
//! that went away at 0 for `forget_after` (so that alerts fire on "down", not on a series that
//! vanished), counts the changes (`new`, `down`, `recovered`), applies the include/exclude
//! filters and the series cap, and checks `expect_listening` / `forbid_listening`. The policy
//! is checked against every socket read, before the filters: a forbidden port is forbidden
//! whoever holds it. [`ProcSource`] is the reading itself (the procfs crate).
//!
//! Bound UDP sockets on ephemeral ports (`/proc/sys/net/ipv4/ip_local_port_range`) are, by
//! default, not listeners: they are the source ports of clients (a resolver's queries) and would
//! make a series per query. `udp_ephemeral: true` keeps them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::time::Instant;

use crate::config::{ListenersSection, Protocol};

/// One socket as read: a listening TCP socket or a bound, unconnected UDP socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerKey {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The local address (`0.0.0.0` / `::` for every address).
    pub address: IpAddr,
    /// The local port.
    pub port: u16,
    /// The owning process's command name, or empty when unknown.
    pub process: String,
}

/// Where readings come from.
pub trait ListenerSource: Send {
    /// Every listening socket now, and the ephemeral port range. The owners of ephemeral UDP
    /// sockets need not be looked up unless `config.udp_ephemeral`.
    fn read(&mut self, config: &ListenersSection) -> Result<Reading, String>;
}

/// One reading of the host's sockets.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// The sockets (duplicates, such as `SO_REUSEPORT` groups, allowed).
    pub sockets: Vec<ListenerKey>,
    /// `ip_local_port_range`.
    pub ephemeral: Option<RangeInclusive<u16>>,
}

/// One tracked listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tracked {
    up: bool,
    /// When it went down (meaningful while down).
    down_since: Instant,
}

/// A listener-policy violation, the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ListenerViolationKind {
    /// In `expect_listening`, with no socket.
    ExpectedMissing,
    /// In `forbid_listening`, with a socket.
    ForbiddenListening,
}

impl ListenerViolationKind {
    /// `expected_missing` or `forbidden_listening`.
    pub fn label(self) -> &'static str {
        match self {
            ListenerViolationKind::ExpectedMissing => "expected_missing",
            ListenerViolationKind::ForbiddenListening => "forbidden_listening",
        }
    }
}

/// What one update changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerChanges {
    /// Listeners seen for the first time (or again after being forgotten).
    pub new: u64,
    /// Listeners that went away.
    pub down: u64,
    /// Listeners back after being down.
    pub recovered: u64,
    /// Listeners not tracked because `max_series` was reached.
    pub dropped: u64,
}

/// What `/metrics` shows of the listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerSnapshot {
    /// Every tracked listener and whether it is up, in key order.
    pub listeners: Vec<(ListenerKey, bool)>,
    /// Ports expected listening with no socket.
    pub expected_missing: u64,
    /// Ports forbidden with a socket.
    pub forbidden: u64,
    /// The violations (protocol, port, kind), at most `max_series`.
    pub violations: Vec<(Protocol, u16, ListenerViolationKind)>,
}

/// The state between readings (see the module documentation).
#[derive(Debug, Default)]
pub struct ListenerTracker {
    tracked: BTreeMap<ListenerKey, Tracked>,
}

fn wanted(config: &ListenersSection, key: &ListenerKey, ephemeral: Option<&RangeInclusive<u16>>) -> bool {
    let port_in = |set: &Option<synwatch_engine::PortSet>| {
        set.as_ref().map(|set| set.contains(synwatch_engine::Port::tcp(key.port)))
    };
    if port_in(&config.include_ports) == Some(false) || port_in(&config.exclude_ports) == Some(true) {
        return false;
    }
    if !config.include_processes.is_empty() && !config.include_processes.contains(&key.process) {
        return false;
    }
    if config.exclude_processes.contains(&key.process) {
        return false;
    }
    !(key.protocol == Protocol::Udp
        && !config.udp_ephemeral
        && ephemeral.is_some_and(|range| range.contains(&key.port)))
}

impl ListenerTracker {
    /// Folds one reading taken at `now` into the state.
    pub fn update(&mut self, reading: &Reading, config: &ListenersSection, now: Instant) -> ListenerChanges {
        let mut changes = ListenerChanges::default();
        let present: BTreeSet<&ListenerKey> =
            reading.sockets.iter().filter(|key| wanted(config, key, reading.ephemeral.as_ref())).collect();
        // Listeners filtered out since (a reload changed the filters) are forgotten at once,
        // without counting them down.
        self.tracked.retain(|key, _| wanted(config, key, None));
        for (key, tracked) in self.tracked.iter_mut() {
            let is_present = present.contains(key);
            if tracked.up && !is_present {
                tracked.up = false;
                tracked.down_since = now;
                changes.down += 1;
            } else if !tracked.up && is_present {
                tracked.up = true;
                changes.recovered += 1;
            }
        }
        // Those down for longer than `forget_after` go too.
        self.tracked
            .retain(|_, tracked| tracked.up || now.saturating_duration_since(tracked.down_since) < config.forget_after);
        for key in present {
            if self.tracked.contains_key(key) {
                continue;
            }
            if self.tracked.len() >= config.max_series {
                changes.dropped += 1;
                continue;
            }
            self.tracked.insert(key.clone(), Tracked { up: true, down_since: now });
            changes.new += 1;
        }
        changes
    }

    /// The state as exported, with the policy checked against `reading` (all its sockets).
    pub fn snapshot(&self, reading: &Reading, config: &ListenersSection) -> ListenerSnapshot {
        let listening: BTreeSet<(Protocol, u16)> = reading
            .sockets
            .iter()
            .filter(|key| {
                !(key.protocol == Protocol::Udp
                    && !config.udp_ephemeral
                    && reading.ephemeral.as_ref().is_some_and(|range| range.contains(&key.port)))
            })
            .map(|key| (key.protocol, key.port))
            .collect();
        let mut snapshot = ListenerSnapshot {
            listeners: self.tracked.iter().map(|(key, tracked)| (key.clone(), tracked.up)).collect(),
            ..ListenerSnapshot::default()
        };
        let mut violations = BTreeSet::new();
        for rule in &config.expect_listening {
            for port in rule.ports.tcp_numbers() {
                if !listening.contains(&(rule.protocol, port)) {
                    violations.insert((rule.protocol, port, ListenerViolationKind::ExpectedMissing));
                }
            }
        }
        for rule in &config.forbid_listening {
            for &(protocol, port) in &listening {
                if protocol == rule.protocol && rule.ports.contains(synwatch_engine::Port::tcp(port)) {
                    violations.insert((protocol, port, ListenerViolationKind::ForbiddenListening));
                }
            }
        }
        for violation in violations {
            match violation.2 {
                ListenerViolationKind::ExpectedMissing => snapshot.expected_missing += 1,
                ListenerViolationKind::ForbiddenListening => snapshot.forbidden += 1,
            }
            if snapshot.violations.len() < config.max_series {
                snapshot.violations.push(violation);
            }
        }
        snapshot
    }

    /// Forgets everything (the collector was turned off).
    pub fn clear(&mut self) {
        self.tracked.clear();
    }
}

/// Reads /proc (the network namespace and process table synwatch runs in).
#[cfg(target_os = "linux")]
#[derive(Debug, Default)]
pub struct ProcSource {
    /// Socket inode → process command name (empty: not visible), kept between readings so that
    /// the process table is walked only when a new socket appears.
    owners: std::collections::HashMap<u64, String>,
}

#[cfg(target_os = "linux")]
impl ProcSource {
    fn walk_processes(&mut self, wanted_inodes: &BTreeSet<u64>) {
        let Ok(processes) = procfs::process::all_processes() else {
            return;
        };
        for process in processes.flatten() {
            // Other users' descriptors are unreadable without privileges; those sockets keep
            // an empty process name.
            let Ok(descriptors) = process.fd() else { continue };
            let mut name: Option<String> = None;
            for descriptor in descriptors.flatten() {
                if let procfs::process::FDTarget::Socket(inode) = descriptor.target
                    && wanted_inodes.contains(&inode)
                {
                    let name = name.get_or_insert_with(|| process.stat().map(|stat| stat.comm).unwrap_or_default());
                    self.owners.insert(inode, name.clone());
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
impl ListenerSource for ProcSource {
    fn read(&mut self, config: &ListenersSection) -> Result<Reading, String> {
        let mut found: Vec<(Protocol, std::net::SocketAddr, u64)> = Vec::new();
        for (family, entries) in [("tcp", procfs::net::tcp()), ("tcp6", procfs::net::tcp6())] {
            match entries {
                Ok(entries) => found.extend(
                    entries
                        .into_iter()
                        .filter(|entry| entry.state == procfs::net::TcpState::Listen)
                        .map(|entry| (Protocol::Tcp, entry.local_address, entry.inode)),
                ),
                // No IPv6 in this kernel: no tcp6 file.
                Err(procfs::ProcError::NotFound(_)) if family == "tcp6" => {}
                Err(error) => return Err(format!("/proc/net/{family}: {error}")),
            }
        }
        for (family, entries) in [("udp", procfs::net::udp()), ("udp6", procfs::net::udp6())] {
            match entries {
                Ok(entries) => found.extend(
                    entries
                        .into_iter()
                        .filter(|entry| entry.remote_address.port() == 0 && entry.local_address.port() != 0)
                        .map(|entry| (Protocol::Udp, entry.local_address, entry.inode)),
                ),
                Err(procfs::ProcError::NotFound(_)) if family == "udp6" => {}
                Err(error) => return Err(format!("/proc/net/{family}: {error}")),
            }
        }
        let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok().and_then(|text| {
            let mut numbers = text.split_whitespace().filter_map(|number| number.parse::<u16>().ok());
            Some(numbers.next()?..=numbers.next()?)
        });
        let inodes: BTreeSet<u64> = found.iter().map(|(_, _, inode)| *inode).collect();
        self.owners.retain(|inode, _| inodes.contains(inode));
        let client_port = |protocol: Protocol, port: u16| {
            protocol == Protocol::Udp
                && !config.udp_ephemeral
                && ephemeral.as_ref().is_some_and(|range| range.contains(&port))
        };
        let unknown: BTreeSet<u64> = found
            .iter()
            .filter(|(protocol, local, inode)| {
                !client_port(*protocol, local.port()) && !self.owners.contains_key(inode)
            })
            .map(|(_, _, inode)| *inode)
            .collect();
        if !unknown.is_empty() {
            self.walk_processes(&unknown);
            // An owner not found is not visible to this process (or the socket just closed);
            // it is remembered as unknown so that the table is not walked again for it.
            for inode in unknown {
                self.owners.entry(inode).or_default();
            }
        }
        let sockets = found
            .into_iter()
            .map(|(protocol, local, inode)| ListenerKey {
                protocol,
                address: local.ip().to_canonical(),
                port: local.port(),
                process: self.owners.get(&inode).cloned().unwrap_or_default(),
            })
            .collect();
        Ok(Reading { sockets, ephemeral })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ListenerPorts;
    use synwatch_engine::PortSet;

    fn key(protocol: Protocol, address: &str, port: u16, process: &str) -> ListenerKey {
        ListenerKey { protocol, address: address.parse().unwrap(), port, process: process.into() }
    }

    fn reading(sockets: &[ListenerKey]) -> Reading {
        Reading { sockets: sockets.to_vec(), ephemeral: Some(32768..=60999) }
    }

    fn config() -> ListenersSection {
        ListenersSection { enabled: true, forget_after: Duration::from_secs(60), ..ListenersSection::default() }
    }

    #[test]
    fn a_listener_goes_new_down_recovered_and_is_forgotten_after_forget_after() {
        let (mut tracker, config, start) = (ListenerTracker::default(), config(), Instant::now());
        let ssh = key(Protocol::Tcp, "0.0.0.0", 22, "sshd");
        // SO_REUSEPORT duplicates are one listener.
        let changes = tracker.update(&reading(&[ssh.clone(), ssh.clone()]), &config, start);
        assert_eq!(changes, ListenerChanges { new: 1, ..ListenerChanges::default() });
        let gone = tracker.update(&reading(&[]), &config, start + Duration::from_secs(1));
        assert_eq!(gone, ListenerChanges { down: 1, ..ListenerChanges::default() });
        assert_eq!(tracker.snapshot(&reading(&[]), &config).listeners, vec![(ssh.clone(), false)]);
        // Still down: no new change.
        assert_eq!(tracker.update(&reading(&[]), &config, start + Duration::from_secs(2)), ListenerChanges::default());
        let back = tracker.update(&reading(std::slice::from_ref(&ssh)), &config, start + Duration::from_secs(3));
        assert_eq!(back, ListenerChanges { recovered: 1, ..ListenerChanges::default() });
        assert_eq!(tracker.snapshot(&reading(&[]), &config).listeners, vec![(ssh.clone(), true)]);
        // Down for longer than forget_after: the series goes; coming back later is new again.
        tracker.update(&reading(&[]), &config, start + Duration::from_secs(4));
        tracker.update(&reading(&[]), &config, start + Duration::from_secs(65));
        assert!(tracker.snapshot(&reading(&[]), &config).listeners.is_empty());
        let again = tracker.update(&reading(&[ssh]), &config, start + Duration::from_secs(70));
        assert_eq!(again.new, 1);
    }

    #[test]
    fn filters_ephemeral_udp_and_the_series_cap_decide_what_is_tracked() {
        let start = Instant::now();
        let sockets = [
            key(Protocol::Tcp, "0.0.0.0", 22, "sshd"),
            key(Protocol::Tcp, "127.0.0.1", 5432, "postgres"),
            key(Protocol::Tcp, "::", 9100, "node_exporter"),
            key(Protocol::Udp, "0.0.0.0", 53, "named"),
            key(Protocol::Udp, "0.0.0.0", 40000, "named"),
        ];
        let tracked = |config: &ListenersSection| {
            let mut tracker = ListenerTracker::default();
            let changes = tracker.update(&reading(&sockets), config, start);
            let ports: Vec<u16> =
                tracker.snapshot(&reading(&sockets), config).listeners.iter().map(|(key, _)| key.port).collect();
            (ports, changes.dropped)
        };
        assert_eq!(tracked(&config()), (vec![22, 5432, 9100, 53], 0));
        let with_ephemeral = ListenersSection { udp_ephemeral: true, ..config() };
        assert_eq!(tracked(&with_ephemeral).0.len(), 5);
        let ports = ListenersSection {
            include_ports: Some(PortSet::parse("1-10000").unwrap()),
            exclude_ports: Some(PortSet::parse("5432").unwrap()),
            ..config()
        };
        assert_eq!(tracked(&ports).0, vec![22, 9100, 53]);
        let processes = ListenersSection { include_processes: vec!["named".into(), "sshd".into()], ..config() };
        assert_eq!(tracked(&processes).0, vec![22, 53]);
        let excluded = ListenersSection { exclude_processes: vec!["named".into()], ..config() };
        assert_eq!(tracked(&excluded).0, vec![22, 5432, 9100]);
        let capped = ListenersSection { max_series: 2, ..config() };
        assert_eq!(tracked(&capped), (vec![22, 5432], 2));
        // A reload that filters a tracked listener out forgets it without counting it down.
        let mut tracker = ListenerTracker::default();
        tracker.update(&reading(&sockets), &config(), start);
        let narrowed = ListenersSection { include_ports: Some(PortSet::parse("22").unwrap()), ..config() };
        let changes = tracker.update(&reading(&sockets), &narrowed, start);
        assert_eq!(changes, ListenerChanges::default());
        assert_eq!(tracker.snapshot(&reading(&sockets), &narrowed).listeners.len(), 1);
    }

    #[test]
    fn the_policy_sees_every_socket_whatever_the_filters() {
        let sockets = [key(Protocol::Tcp, "0.0.0.0", 22, "sshd"), key(Protocol::Tcp, "0.0.0.0", 23, "telnetd")];
        let config = ListenersSection {
            include_ports: Some(PortSet::parse("22").unwrap()),
            expect_listening: vec![
                ListenerPorts { protocol: Protocol::Tcp, ports: PortSet::parse("22,9100").unwrap() },
                ListenerPorts { protocol: Protocol::Udp, ports: PortSet::parse("22").unwrap() },
            ],
            forbid_listening: vec![ListenerPorts { protocol: Protocol::Tcp, ports: PortSet::parse("23,25").unwrap() }],
            ..config()
        };
        let mut tracker = ListenerTracker::default();
        tracker.update(&reading(&sockets), &config, Instant::now());
        let snapshot = tracker.snapshot(&reading(&sockets), &config);
        assert_eq!(snapshot.listeners.len(), 1);
        assert_eq!((snapshot.expected_missing, snapshot.forbidden), (2, 1));
        assert_eq!(
            snapshot.violations,
            vec![
                (Protocol::Tcp, 23, ListenerViolationKind::ForbiddenListening),
                (Protocol::Tcp, 9100, ListenerViolationKind::ExpectedMissing),
                (Protocol::Udp, 22, ListenerViolationKind::ExpectedMissing),
            ]
        );
    }
}
