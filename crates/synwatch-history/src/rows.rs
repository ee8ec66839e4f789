//! The rows the store writes and reads: protocols, state names, scans, changes and endpoints,
//! and how an address is stored (16 bytes, IPv4 as IPv4-mapped IPv6, so that addresses sort
//! by number).

use std::net::{IpAddr, Ipv6Addr};

/// A port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    pub fn from_name(name: &str) -> Option<Proto> {
        match name {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// The state names an endpoint can have in the history; the first three are opens.
pub mod states {
    /// Open, trusted.
    pub const OPEN: &str = "open";
    /// Open, but its host was judged suspect (a SYN proxy, every port open); `reason` says why.
    pub const SUSPECT: &str = "suspect";
    /// Open, but the verifying handshake failed; `reason` has the verdict.
    pub const UNVERIFIED: &str = "unverified";
    /// Closed.
    pub const CLOSED: &str = "closed";
    /// Filtered.
    pub const FILTERED: &str = "filtered";
    /// UDP, no answer.
    pub const OPEN_FILTERED: &str = "open|filtered";
    /// No longer scanned: the endpoint left its target (a name moved to other addresses, a
    /// target file or the config dropped the address or port). Its change's old state is what
    /// it last was; neither that change nor a later one back is an `opened` or `closed` one.
    pub const NOT_SCANNED: &str = "not_scanned";

    /// The constant of a state name read back (none for a name that is not one).
    pub fn named(state: &str) -> Option<&'static str> {
        [OPEN, SUSPECT, UNVERIFIED, CLOSED, FILTERED, OPEN_FILTERED, NOT_SCANNED]
            .into_iter()
            .find(|known| *known == state)
    }

    /// Whether `state` is one of the opens (trusted or not).
    pub fn is_open(state: &str) -> bool {
        matches!(state, OPEN | SUSPECT | UNVERIFIED)
    }
}

/// One scan as it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanRow {
    /// The target's name.
    pub target: String,
    /// Start, in seconds since the Unix epoch.
    pub started: f64,
    /// End, in seconds since the Unix epoch; the time of its changes.
    pub ended: f64,
    /// How it ended.
    pub result: ScanOutcome,
    /// Probes open (trusted), closed and filtered (the rest) at its end.
    pub open: u64,
    /// Closed.
    pub closed: u64,
    /// Filtered and open|filtered.
    pub filtered: u64,
}

/// How a scan row came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanOutcome {
    /// The scan completed; its changes are against the previous results.
    Success,
    /// The scan did not complete (its results were not used): a row without changes.
    Failure,
    /// Not a scan: the history was made to agree with the results the exporter serves (after
    /// a restart, or after a write that failed), and its changes are those it had missed.
    Reconciled,
}

impl ScanOutcome {
    /// `success`, `failure` or `reconciled`, as stored.
    pub fn name(self) -> &'static str {
        match self {
            ScanOutcome::Success => "success",
            ScanOutcome::Failure => "failure",
            ScanOutcome::Reconciled => "reconciled",
        }
    }
}

/// One change as it is written: an endpoint of the scan's target whose state went into or out
/// of an open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    /// The address.
    pub ip: IpAddr,
    /// The protocol.
    pub proto: Proto,
    /// The port.
    pub port: u16,
    /// The state before ([`states`]).
    pub old_state: &'static str,
    /// The state now.
    pub new_state: &'static str,
    /// Why the new state is suspect or unverified (the suspect reason, the verdict).
    pub reason: Option<String>,
    /// The host name the address came from, for targets given by name.
    pub hostname: Option<String>,
}

/// An endpoint open (trusted or not) at the end of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenEndpoint {
    /// The address.
    pub ip: IpAddr,
    /// The protocol.
    pub proto: Proto,
    /// The port.
    pub port: u16,
    /// [`states::OPEN`], [`states::SUSPECT`] or [`states::UNVERIFIED`].
    pub state: &'static str,
    /// Why, for the last two.
    pub reason: Option<String>,
    /// The host name the address came from, for targets given by name.
    pub hostname: Option<String>,
}

/// A stored change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Its id: increasing, the paging cursor.
    pub id: i64,
    /// The scan it came from.
    pub scan: i64,
    /// When (the scan's end), in seconds since the Unix epoch.
    pub time: f64,
    /// The target.
    pub target: String,
    /// The address.
    pub ip: IpAddr,
    /// The protocol.
    pub proto: Proto,
    /// The port.
    pub port: u16,
    /// The state before.
    pub old_state: String,
    /// The state after.
    pub new_state: String,
    /// The suspect reason or verification verdict of the new state.
    pub reason: Option<String>,
    /// The host name the address came from (targets given by name).
    pub hostname: Option<String>,
}

impl Change {
    /// What kind of change it is.
    pub fn kind(&self) -> ChangeKind {
        ChangeKind::of(&self.old_state, &self.new_state)
    }
}

/// What a change did, as the `opened` and `closed` changes of `/metrics` count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Now open (trusted), and not open at all before (an untrusted open turning trusted is
    /// not an `opened` change, as `/metrics` does not count it).
    Opened,
    /// Open (trusted) before, now closed, filtered or open|filtered.
    Closed,
    /// Between a trusted and an untrusted open, or between untrusted opens and not open.
    Other,
}

impl ChangeKind {
    /// The kind of a change from `old` to `new`.
    pub fn of(old: &str, new: &str) -> ChangeKind {
        if old == states::NOT_SCANNED || new == states::NOT_SCANNED {
            // Leaving the scans, or coming back into them: `/metrics` counts neither.
            return ChangeKind::Other;
        }
        match (old == states::OPEN, new == states::OPEN) {
            (false, true) if !states::is_open(old) => ChangeKind::Opened,
            (true, false) if !states::is_open(new) => ChangeKind::Closed,
            _ => ChangeKind::Other,
        }
    }

    /// `opened`, `closed` or `other`.
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Opened => "opened",
            ChangeKind::Closed => "closed",
            ChangeKind::Other => "other",
        }
    }
}

/// A stored endpoint: one that was ever open.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The target.
    pub target: String,
    /// The address.
    pub ip: IpAddr,
    /// The protocol.
    pub proto: Proto,
    /// The port.
    pub port: u16,
    /// Its state now.
    pub state: String,
    /// The suspect reason or verdict of its state.
    pub reason: Option<String>,
    /// When it was first seen open.
    pub first_seen: f64,
    /// Last seen open: for an endpoint open now, its target's last scan that saw anything; for
    /// one not open, the last scan that saw it open (the column holds only the latter: an
    /// unchanged open endpoint is never rewritten).
    pub last_seen_open: f64,
    /// Its last change (or its first sighting).
    pub last_change: f64,
    /// How many times it was seen opening (its first sighting included).
    pub times_opened: u64,
    /// The host name the address came from when last written (targets given by name).
    pub hostname: Option<String>,
}

impl Endpoint {
    /// The paging cursor that continues after this endpoint.
    pub fn cursor(&self) -> String {
        format!("{}/{}/{}/{}", hex(self.target.as_bytes()), self.ip, self.proto.name(), self.port)
    }
}

/// An address as 16 bytes: IPv4 as IPv4-mapped IPv6, so that addresses sort by number.
pub(crate) fn address_bytes(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub(crate) fn address_from(bytes: &[u8]) -> IpAddr {
    let octets: [u8; 16] = bytes.try_into().unwrap_or([0; 16]);
    let v6 = Ipv6Addr::from(octets);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Reads an [`Endpoint::cursor`].
pub(crate) fn parse_endpoint_cursor(cursor: &str) -> Option<(String, IpAddr, Proto, u16)> {
    let mut parts = cursor.split('/');
    let target_hex = parts.next()?;
    if target_hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..target_hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(target_hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let target = String::from_utf8(bytes).ok()?;
    let ip = parts.next()?.parse().ok()?;
    let proto = Proto::from_name(parts.next()?)?;
    let port = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((target, ip, proto, port))
}
