//! The engine's settings, modes and errors.

use std::io;
use std::net::IpAddr;

use synwatch_engine::SourcePortRange;

use crate::route::RouteError;

/// Which transmitter the engine may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransmitChoice {
    /// The TX ring where the link-layer destination is known, `sendmmsg` otherwise.
    #[default]
    Auto,
    /// Always `sendmmsg` on raw IP sockets.
    Sendmmsg,
    /// The TX ring wherever possible (like `Auto`, but says so in the logs when it cannot).
    Ring,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Global cap in packets per second over all jobs.
    pub rate: u64,
    /// Sender threads, each with its own sockets (default 1). A second thread pays off only
    /// above what one core can send (about a million packets per second).
    pub sender_threads: usize,
    /// SYN, connect(), or decide by trying (default).
    pub mode: Mode,
    /// connect() mode: attempts in flight at most (default: from `RLIMIT_NOFILE`).
    pub max_inflight: Option<usize>,
    /// Drop every capability once the sockets are open (default true). Capabilities are per
    /// thread: this drops them on the calling thread and the engine's threads.
    pub drop_privileges: bool,
    /// Frames per batch (per `sendmmsg` or ring flush).
    pub batch: usize,
    /// The source ports probes use.
    pub source_ports: SourcePortRange,
    /// Send through this interface instead of the routed one.
    pub interface: Option<String>,
    /// Use these source addresses (at most one per family) instead of the routed ones.
    pub source_addresses: Vec<IpAddr>,
    /// Transmitter choice.
    pub transmit: TransmitChoice,
    /// Receive buffer of the reply socket in bytes.
    pub receive_buffer: usize,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            rate: 10_000,
            sender_threads: 1,
            mode: Mode::Auto,
            max_inflight: None,
            drop_privileges: true,
            batch: 256,
            source_ports: SourcePortRange::DEFAULT,
            interface: None,
            source_addresses: Vec::new(),
            transmit: TransmitChoice::Auto,
            receive_buffer: 8 << 20,
        }
    }
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Raw sockets could not be opened for lack of privilege.
    #[error(
        "raw sockets need CAP_NET_RAW ({0}). Either grant it (`sudo setcap cap_net_raw+ep $(command -v synwatch)`, or `AmbientCapabilities=CAP_NET_RAW` in the systemd unit, or run as root), or use the connect() mode (`--mode connect`), which needs no privilege"
    )]
    NoPermission(io::Error),
    /// Any other socket error.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// No path to the targets.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The engine has stopped.
    #[error("the engine has stopped")]
    Stopped,
}

impl EngineError {
    /// A socket error, told apart by whether it is for lack of privilege.
    pub(crate) fn from_socket(error: io::Error) -> EngineError {
        if error.kind() == io::ErrorKind::PermissionDenied {
            EngineError::NoPermission(error)
        } else {
            EngineError::Io(error)
        }
    }
}

/// How the engine scans, as asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// SYN scans when the raw sockets can be opened, connect() scans otherwise.
    #[default]
    Auto,
    /// SYN scans only; without `CAP_NET_RAW` the engine does not start.
    Syn,
    /// connect() scans, which need no privilege.
    Connect,
}

/// How the engine actually scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunningMode {
    /// Raw SYN probes.
    Syn,
    /// Non-blocking connect() calls.
    Connect,
}

impl RunningMode {
    /// "syn" or "connect".
    pub fn name(self) -> &'static str {
        match self {
            RunningMode::Syn => "syn",
            RunningMode::Connect => "connect",
        }
    }
}
