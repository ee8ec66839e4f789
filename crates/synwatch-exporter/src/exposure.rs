//! What the exposure history records of a scan: each probe's [`Exposure`] (its state, and for
//! an open whether it is trusted), and the changes between two scans' results that touch an
//! open.
//!
//! A change is recorded when the exposure of a (address, port) known in both scans differs and
//! one of the two is an open (trusted, suspect or unverified). Changes between closed,
//! filtered and open|filtered are not: they are not what a user is alerted on, and a flapping
//! firewall in front of a /16 would write millions of them. The `opened` and `closed` changes
//! among them are exactly those `synwatch_port_changes_total` counts.

use std::net::IpAddr;

use synwatch_engine::{Port, PortState, Suspect};
use synwatch_io::Verdict;

use crate::results::ScanResults;

/// A probe's result as the history records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Open, trusted.
    Open,
    /// A SYN-ACK of a host judged suspect, with the reason.
    Suspect(Suspect),
    /// A SYN-ACK whose verifying handshake failed, with the verdict.
    Unverified(Verdict),
    /// Closed.
    Closed,
    /// Filtered.
    Filtered,
    /// UDP: no answer.
    OpenFiltered,
}

impl Exposure {
    /// The history's state name (`synwatch_history::states`).
    pub fn state_name(self) -> &'static str {
        match self {
            Exposure::Open => synwatch_history::states::OPEN,
            Exposure::Suspect(_) => synwatch_history::states::SUSPECT,
            Exposure::Unverified(_) => synwatch_history::states::UNVERIFIED,
            Exposure::Closed => synwatch_history::states::CLOSED,
            Exposure::Filtered => synwatch_history::states::FILTERED,
            Exposure::OpenFiltered => synwatch_history::states::OPEN_FILTERED,
        }
    }

    /// Why an untrusted open is not trusted (`all_open`, `synproxy`, or the verdict).
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Exposure::Suspect(reason) => Some(reason.name()),
            Exposure::Unverified(verdict) => Some(verdict.name()),
            _ => None,
        }
    }

    /// Whether it is an open, trusted or not.
    pub fn is_open(self) -> bool {
        matches!(self, Exposure::Open | Exposure::Suspect(_) | Exposure::Unverified(_))
    }
}

/// The exposure of probe `index` of `results` (none when it is unknown).
pub fn exposure_of(results: &ScanResults, index: u64) -> Option<Exposure> {
    let exposure = match results.get(index) {
        PortState::Unknown => return None,
        PortState::Open => {
            let (address, port) = results.space().probe_at(index)?;
            // Suspicion and verification are about SYN-ACKs: a UDP answer is the service's own.
            match (port.is_tcp().then(|| results.suspect_of(address)).flatten(), results.unverified_of(address, port)) {
                (Some(reason), _) => Exposure::Suspect(reason),
                (None, Some(verdict)) => Exposure::Unverified(verdict),
                (None, None) => Exposure::Open,
            }
        }
        PortState::Closed => Exposure::Closed,
        PortState::Filtered => Exposure::Filtered,
        PortState::OpenFiltered => Exposure::OpenFiltered,
    };
    Some(exposure)
}

/// One recorded change: (address, port, before, now).
pub type ExposureChange = (IpAddr, Port, Exposure, Exposure);

/// The changes from `previous` to `now` that touch an open (see the module documentation), in
/// probe order. `previous` is projected onto `now`'s space when the spaces differ.
pub fn exposure_changes(previous: &ScanResults, now: &ScanResults) -> Vec<ExposureChange> {
    if **previous.space() != **now.space() {
        return exposure_changes(&previous.project(std::sync::Arc::clone(now.space())), now);
    }
    // When no host's trust changed, a probe whose packed state did not change did not change
    // its exposure either, so whole unchanged bytes are skipped.
    let same_trust = previous.suspects() == now.suspects() && previous.unverified() == now.unverified();
    let mut changes = Vec::new();
    for (byte_index, (&after, &before)) in now.packed().iter().zip(previous.packed()).enumerate() {
        if same_trust && after == before {
            continue;
        }
        for slot in 0..4 {
            let index = byte_index as u64 * 4 + slot;
            let (Some(before), Some(after)) = (exposure_of(previous, index), exposure_of(now, index)) else {
                continue;
            };
            if before == after || !(before.is_open() || after.is_open()) {
                continue;
            }
            if let Some((address, port)) = now.space().probe_at(index) {
                changes.push((address, port, before, after));
            }
        }
    }
    changes
}

/// Every open of `results` (trusted or not) with its exposure, in probe order.
pub fn open_exposures(results: &ScanResults) -> Vec<(IpAddr, Port, Exposure)> {
    let endpoints = results.endpoints();
    let mut opens: Vec<(IpAddr, Port, Exposure)> =
        endpoints.open.iter().map(|&(address, port)| (address, port, Exposure::Open)).collect();
    opens.extend(endpoints.suspect.iter().map(|&(address, port, reason)| (address, port, Exposure::Suspect(reason))));
    opens.extend(
        endpoints.unverified.iter().map(|&(address, port, verdict)| (address, port, Exposure::Unverified(verdict))),
    );
    opens
}
