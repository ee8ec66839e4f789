//! The exporter's side of the exposure history (the store is `synwatch-history`): the rows a
//! finished scan writes, and the rows that make the history agree with the results the
//! exporter serves when it may not (at start, when the history may have missed the last scans
//! before a crash, and after a write that failed).
//!
//! The `synwatch-history` thread that writes them is `service::history_thread`; the HTTP
//! readings are `history_api`.

use std::net::IpAddr;

use synwatch_engine::Port;
use synwatch_history::{ChangeRow, OpenEndpoint, Proto, states};

use crate::exposure::{Exposure, exposure_changes, exposure_of, open_exposures};
use crate::names::ResolvedNames;
use crate::results::ScanResults;

/// What the history believes of a target: per (ip, proto, port) ever open, its state and
/// reason (`HistoryStore::endpoints_of`).
pub(crate) type Believed = synwatch_history::EndpointStates;

/// The history's protocol of a port.
pub(crate) fn proto_of(port: Port) -> Proto {
    if port.is_tcp() { Proto::Tcp } else { Proto::Udp }
}

/// The engine's port of a history endpoint.
pub(crate) fn port_of(proto: Proto, number: u16) -> Port {
    match proto {
        Proto::Tcp => Port::tcp(number),
        Proto::Udp => Port::udp(number),
    }
}

/// The host name `address` came from, when its target is given by name.
fn hostname(names: Option<&ResolvedNames>, address: IpAddr) -> Option<String> {
    names.and_then(|names| names.name_of(address)).map(str::to_string)
}

fn change_row(
    address: IpAddr,
    port: Port,
    old_state: &'static str,
    now: Exposure,
    names: Option<&ResolvedNames>,
) -> ChangeRow {
    ChangeRow {
        ip: address,
        proto: proto_of(port),
        port: port.number,
        old_state,
        new_state: now.state_name(),
        reason: now.reason().map(str::to_string),
        hostname: hostname(names, address),
    }
}

/// The opens of `results` as the history writes them (`names`: the names of a named target's
/// scan, for their `hostname`).
pub(crate) fn open_rows(results: &ScanResults, names: Option<&ResolvedNames>) -> Vec<OpenEndpoint> {
    open_exposures(results)
        .into_iter()
        .map(|(address, port, exposure)| OpenEndpoint {
            ip: address,
            proto: proto_of(port),
            port: port.number,
            state: exposure.state_name(),
            reason: exposure.reason().map(str::to_string),
            hostname: hostname(names, address),
        })
        .collect()
}

/// The change of an endpoint that was `old_state` and is no longer scanned.
fn not_scanned_row(address: IpAddr, port: Port, old_state: &'static str, hostname: Option<String>) -> ChangeRow {
    ChangeRow {
        ip: address,
        proto: proto_of(port),
        port: port.number,
        old_state,
        new_state: states::NOT_SCANNED,
        reason: None,
        hostname,
    }
}

/// The changes of a scan whose results are `now` (with the names of a named target's scan),
/// against the previous results (and their names): the changes into or out of an open, and
/// each previous open no longer scanned (its address or port left the target) going to
/// `not_scanned`, so the history does not keep it open for ever.
pub(crate) fn change_rows(
    (previous, previous_names): (&ScanResults, Option<&ResolvedNames>),
    now: &ScanResults,
    names: Option<&ResolvedNames>,
) -> Vec<ChangeRow> {
    let mut rows: Vec<ChangeRow> = exposure_changes(previous, now)
        .into_iter()
        .map(|(address, port, before, after)| change_row(address, port, before.state_name(), after, names))
        .collect();
    for (address, port, before) in open_exposures(previous) {
        if now.space().index_of(address, port).is_none() {
            rows.push(not_scanned_row(address, port, before.state_name(), hostname(previous_names, address)));
        }
    }
    rows
}

/// The changes that take the history from what it `believed` of a target to `results`: an
/// open it does not hold as such, an open it holds that the results know as something else,
/// and an open it holds that the target no longer scans (to `not_scanned`). An endpoint the
/// results hold unknown (not scanned yet) keeps what the history holds; an open the history
/// never held is a first sighting, written as an open (with [`open_rows`]) and not as a
/// change.
pub(crate) fn reconcile_rows(
    believed: &Believed,
    results: &ScanResults,
    names: Option<&ResolvedNames>,
) -> Vec<ChangeRow> {
    let mut changes = Vec::new();
    let opens = open_exposures(results);
    let mut served_open = std::collections::HashSet::with_capacity(opens.len());
    for &(address, port, exposure) in &opens {
        let key = (address, proto_of(port), port.number);
        served_open.insert(key);
        if let Some((state, reason)) = believed.get(&key)
            && (state != exposure.state_name() || reason.as_deref() != exposure.reason())
            && let Some(old_state) = states::named(state)
        {
            changes.push(change_row(address, port, old_state, exposure, names));
        }
    }
    let mut stale: Vec<_> =
        believed.iter().filter(|(key, (state, _))| states::is_open(state) && !served_open.contains(*key)).collect();
    stale.sort_by_key(|(key, _)| **key);
    for (&(address, proto, number), (state, _)) in stale {
        let port = port_of(proto, number);
        let Some(old_state) = states::named(state) else { continue };
        let Some(index) = results.space().index_of(address, port) else {
            changes.push(not_scanned_row(address, port, old_state, None));
            continue;
        };
        if let Some(now) = exposure_of(results, index) {
            changes.push(change_row(address, port, old_state, now, names));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use synwatch_engine::targets::parse_target;
    use synwatch_engine::{ExclusionPolicy, HostSet, PortSet, PortState, Suspect, TargetSpace};

    fn space(ports: &str) -> Arc<TargetSpace> {
        let hosts =
            HostSet::build(vec![parse_target("192.0.2.0/30").unwrap()], Vec::new(), ExclusionPolicy::Default).unwrap();
        Arc::new(TargetSpace::new(hosts, PortSet::parse(ports).unwrap()).unwrap())
    }

    /// Results over `space` with the given (index, state)s; every other probe closed.
    fn results(space: &Arc<TargetSpace>, states: &[(u64, PortState)]) -> ScanResults {
        ScanResults::from_fn(Arc::clone(space), |index| {
            states.iter().find(|(at, _)| *at == index).map_or(PortState::Closed, |(_, state)| *state)
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_scan_writes_the_changes_that_touch_an_open_and_nothing_else() {
        let space = space("22,udp/53");
        // Probe 0 is 192.0.2.0:22, 1 is 192.0.2.0 udp/53, 2 is 192.0.2.1:22, 3 is .1 udp/53.
        let before = results(&space, &[(0, PortState::Open), (1, PortState::OpenFiltered), (3, PortState::Filtered)]);
        let after = results(&space, &[(1, PortState::Open), (2, PortState::Filtered), (3, PortState::OpenFiltered)]);
        let rows = change_rows((&before, None), &after, None);
        let summary: Vec<(IpAddr, Proto, u16, &str, &str)> =
            rows.iter().map(|row| (row.ip, row.proto, row.port, row.old_state, row.new_state)).collect();
        assert_eq!(
            summary,
            vec![
                (ip("192.0.2.0"), Proto::Tcp, 22, "open", "closed"),
                (ip("192.0.2.0"), Proto::Udp, 53, "open|filtered", "open"),
            ],
            "closed to filtered and filtered to open|filtered are not written"
        );
        // The same opens, their host turned suspect: open to suspect, with the reason.
        let suspect = after.clone().with_suspects(vec![(ip("192.0.2.0"), Suspect::AllOpen)]);
        let tcp_open = results(&space, &[(0, PortState::Open)]);
        let rows = change_rows(
            (&tcp_open, None),
            &tcp_open.clone().with_suspects(vec![(ip("192.0.2.0"), Suspect::Synproxy)]),
            None,
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].old_state, rows[0].new_state, rows[0].reason.as_deref()),
            ("open", "suspect", Some("synproxy"))
        );
        // A UDP answer stays the service's own when its host is suspect.
        assert!(change_rows((&after, None), &suspect, None).is_empty());
        assert_eq!(open_rows(&suspect, None).len(), 1);
        assert_eq!(open_rows(&suspect, None)[0].state, "open");
    }

    #[test]
    fn an_open_whose_address_or_port_left_the_target_goes_to_not_scanned() {
        // Before: 192.0.2.0/30 × 22,80 with .0:22 and .1:80 open. Now the target scans
        // 192.0.2.0/30 × 22 only (port 80 dropped), and .0:22 is still open.
        let before = results(&space("22,80"), &[(0, PortState::Open), (3, PortState::Open)]);
        let now = results(&space("22"), &[(0, PortState::Open)]);
        let rows = change_rows((&before, None), &now, None);
        let summary: Vec<(IpAddr, u16, &str, &str)> =
            rows.iter().map(|row| (row.ip, row.port, row.old_state, row.new_state)).collect();
        assert_eq!(summary, vec![(ip("192.0.2.1"), 80, "open", "not_scanned")]);
        assert_eq!(
            synwatch_history::ChangeKind::of(rows[0].old_state, rows[0].new_state),
            synwatch_history::ChangeKind::Other,
            "neither opened nor closed"
        );
        // Coming back into the scans is no change the results can see: a first sighting.
        assert!(change_rows((&now, None), &before, None).iter().all(|row| row.new_state != "not_scanned"));
    }

    #[test]
    fn reconciling_writes_what_the_history_missed_and_marks_what_the_target_no_longer_scans() {
        let space = space("22,80");
        // Served: .0:22 open, .0:80 closed, .1:22 open, .1:80 unknown (not scanned yet).
        let served = results(&space, &[(0, PortState::Open), (2, PortState::Open), (3, PortState::Unknown)]);
        let mut believed = Believed::new();
        // The history missed .0:80 closing and .1:22 reopening; it holds .1:80 open (unknown now)
        // and 443, which the target no longer scans.
        believed.insert((ip("192.0.2.0"), Proto::Tcp, 22), ("open".into(), None));
        believed.insert((ip("192.0.2.0"), Proto::Tcp, 80), ("open".into(), None));
        believed.insert((ip("192.0.2.1"), Proto::Tcp, 22), ("closed".into(), None));
        believed.insert((ip("192.0.2.1"), Proto::Tcp, 80), ("open".into(), None));
        believed.insert((ip("192.0.2.1"), Proto::Tcp, 443), ("open".into(), None));
        let rows = reconcile_rows(&believed, &served, None);
        let summary: Vec<(IpAddr, u16, &str, &str)> =
            rows.iter().map(|row| (row.ip, row.port, row.old_state, row.new_state)).collect();
        assert_eq!(
            summary,
            vec![
                (ip("192.0.2.1"), 22, "closed", "open"),
                (ip("192.0.2.0"), 80, "open", "closed"),
                (ip("192.0.2.1"), 443, "open", "not_scanned"),
            ]
        );
        // A history that agrees needs nothing; one that knows nothing learns opens, not changes.
        let mut agreeing = Believed::new();
        agreeing.insert((ip("192.0.2.0"), Proto::Tcp, 22), ("open".into(), None));
        agreeing.insert((ip("192.0.2.1"), Proto::Tcp, 22), ("open".into(), None));
        assert!(reconcile_rows(&agreeing, &served, None).is_empty());
        assert!(reconcile_rows(&Believed::new(), &served, None).is_empty());
        assert_eq!(open_rows(&served, None).len(), 2);
    }
}
