//! `listeners:`: the collector of this host's listening sockets and its policy.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use serde_with::serde_as;
use synwatch_engine::{Port, PortSet};

use super::values::{AnyDuration, Bounded, Ports, PositiveDuration, ProcessName};

/// A transport protocol of the listeners collector: the engine's, so that `udp/53` means the
/// same to a listener rule and to a scan.
pub use synwatch_engine::Protocol;

/// Ports of one protocol, as written in `expect_listening` / `forbid_listening`
/// (`22`, `"tcp/22"`, `"udp/53"`, `"tcp/8000-8100"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerPorts {
    /// The protocol (a bare port means TCP).
    pub protocol: Protocol,
    /// The ports.
    pub ports: PortSet,
}

impl fmt::Display for ListenerPorts {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.protocol.name(), self.ports)
    }
}

impl Serialize for ListenerPorts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `listeners:`: the collector of this host's listening sockets, off by default.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenersSection {
    /// Read /proc and export `synwatch_listener_up` when true.
    pub enabled: bool,
    /// Only these ports (none: every port).
    #[serde_as(as = "Option<Ports>")]
    pub include_ports: Option<PortSet>,
    /// Never these ports.
    #[serde_as(as = "Option<Ports>")]
    pub exclude_ports: Option<PortSet>,
    /// Only sockets of these processes (by command name; empty: every process).
    #[serde_as(as = "Vec<ProcessName>")]
    pub include_processes: Vec<String>,
    /// Never sockets of these processes.
    #[serde_as(as = "Vec<ProcessName>")]
    pub exclude_processes: Vec<String>,
    /// Time between two readings.
    #[serde_as(as = "PositiveDuration")]
    pub interval: Duration,
    /// A listener that went away is exported as 0 this long, then forgotten.
    #[serde_as(as = "AnyDuration")]
    pub forget_after: Duration,
    /// Whether bound UDP sockets on ephemeral ports (`ip_local_port_range`, the source ports of
    /// clients) are listeners too.
    pub udp_ephemeral: bool,
    /// Listener series at most (the rest are counted as dropped).
    #[serde_as(as = "Bounded<1, 1_000_000>")]
    pub max_series: usize,
    /// Ports that must have a listener.
    pub expect_listening: Vec<ListenerPorts>,
    /// Ports that must not have one.
    pub forbid_listening: Vec<ListenerPorts>,
}

impl Default for ListenersSection {
    fn default() -> ListenersSection {
        ListenersSection {
            enabled: false,
            include_ports: None,
            exclude_ports: None,
            include_processes: Vec::new(),
            exclude_processes: Vec::new(),
            interval: Duration::from_secs(15),
            forget_after: Duration::from_secs(3600),
            udp_ephemeral: false,
            max_series: 1000,
            expect_listening: Vec::new(),
            forbid_listening: Vec::new(),
        }
    }
}

/// What is wrong with the listener policy, if anything: a port both expected and forbidden.
pub(super) fn listener_policy_problem(listeners: &ListenersSection) -> Option<String> {
    for expected in &listeners.expect_listening {
        for forbidden in listeners.forbid_listening.iter().filter(|rule| rule.protocol == expected.protocol) {
            if let Some(port) = expected.ports.tcp_numbers().find(|&port| forbidden.ports.contains(Port::tcp(port))) {
                return Some(format!(
                    "listeners: {}/{port} is in both expect_listening and forbid_listening",
                    expected.protocol.name()
                ));
            }
        }
    }
    None
}
