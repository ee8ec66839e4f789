//! The expected-port policy of a target (`expect: {open, closed, hosts}`), checked against its
//! last completed scan.
//!
//! * An open port is **unexpected** when `open` is given and does not list it (`open` is an
//!   allowlist), or when `closed` lists it.
//! * An expected port is **missing** when `open` lists it and the scan found it closed or
//!   filtered, on every host of the target (`hosts: all`, the default) or only on the hosts that
//!   answered at least one probe (`hosts: responding`, for sparse ranges where most addresses
//!   are empty).
//! * A probe whose state is unknown (a port added since the last scan) is neither.
//!
//! The report is computed once per completed scan and once per reload (never while a scrape
//! waits), and keeps every count exact while listing at most `limit` violations (the
//! `details_budget`); the metrics renderer shares that budget between targets in config order.

use std::net::IpAddr;

use synwatch_engine::{Port, PortState};

use crate::config::{ExpectHosts, Expectation};
use crate::results::ScanResults;

/// The kind of a violation, the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ViolationKind {
    /// Open, but not expected open.
    UnexpectedOpen,
    /// Expected open, but closed or filtered.
    ExpectedMissing,
}

impl ViolationKind {
    /// `unexpected_open` or `expected_missing`.
    pub fn label(self) -> &'static str {
        match self {
            ViolationKind::UnexpectedOpen => "unexpected_open",
            ViolationKind::ExpectedMissing => "expected_missing",
        }
    }
}

/// One port of one host that breaks the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// The host.
    pub address: IpAddr,
    /// The port.
    pub port: Port,
    /// What is wrong.
    pub kind: ViolationKind,
}

/// A target's policy checked against its last results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyReport {
    /// Open ports (over all hosts) that should not be.
    pub unexpected_open: u64,
    /// Expected ports (over the hosts they apply to) that are not open.
    pub expected_missing: u64,
    /// The violations in probe order, at most the `limit` given to [`evaluate`].
    pub violations: Vec<Violation>,
}

/// Checks `results` against `expect`, listing at most `limit` violations.
pub fn evaluate(expect: &Expectation, results: &ScanResults, limit: usize) -> PolicyReport {
    let mut report = PolicyReport::default();
    let space = results.space();
    let ports = space.ports().ports();
    let port_count = ports.len() as u64;
    let listed =
        |set: &Option<synwatch_engine::PortSet>, port: Port| set.as_ref().is_some_and(|set| set.contains(port));
    for host in 0..space.hosts().len() {
        let applies_to_host = match expect.hosts {
            ExpectHosts::All => true,
            ExpectHosts::Responding => results.host_responded(host),
        };
        // A suspect host's SYN-ACKs say nothing about its services: neither a violation nor
        // an expected port present.
        let suspect = !results.suspects().is_empty()
            && space.hosts().address_at(host).is_some_and(|address| results.suspect_of(address).is_some());
        for (slot, &port) in ports.iter().enumerate() {
            let mut state = results.get(host * port_count + slot as u64);
            // An open port whose real handshake failed is not open.
            if state == PortState::Open
                && !results.unverified().is_empty()
                && space.hosts().address_at(host).is_some_and(|address| results.unverified_of(address, port).is_some())
            {
                state = PortState::Closed;
            }
            let kind = match state {
                PortState::Unknown => continue,
                PortState::Open if suspect => continue,
                PortState::Open => {
                    let allowed = expect.open.as_ref().is_none_or(|open| open.contains(port));
                    if allowed && !listed(&expect.closed, port) {
                        continue;
                    }
                    report.unexpected_open += 1;
                    ViolationKind::UnexpectedOpen
                }
                PortState::Closed | PortState::Filtered | PortState::OpenFiltered => {
                    if !applies_to_host || !listed(&expect.open, port) {
                        continue;
                    }
                    report.expected_missing += 1;
                    ViolationKind::ExpectedMissing
                }
            };
            if report.violations.len() < limit
                && let Some(address) = space.hosts().address_at(host)
            {
                report.violations.push(Violation { address, port, kind });
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use synwatch_engine::Port;
    use synwatch_engine::targets::parse_target;
    use synwatch_engine::{ExclusionPolicy, HostSet, PortSet, TargetSpace};

    fn scan(addresses: &str, ports: &str, open: &[(&str, u16)], silent_hosts: &[&str]) -> ScanResults {
        let hosts =
            HostSet::build(vec![parse_target(addresses).unwrap()], Vec::new(), ExclusionPolicy::Default).unwrap();
        let space = Arc::new(TargetSpace::new(hosts, PortSet::parse(ports).unwrap()).unwrap());
        ScanResults::from_fn(Arc::clone(&space), |index| {
            let (address, port) = space.probe_at(index).unwrap();
            let address = address.to_string();
            if open.iter().any(|(host, open_port)| *host == address && *open_port == port.number) {
                PortState::Open
            } else if silent_hosts.contains(&address.as_str()) {
                PortState::Filtered
            } else {
                PortState::Closed
            }
        })
    }

    fn expect(open: Option<&str>, closed: Option<&str>, hosts: ExpectHosts) -> Expectation {
        Expectation {
            open: open.map(|ports| PortSet::parse(ports).unwrap()),
            closed: closed.map(|ports| PortSet::parse(ports).unwrap()),
            hosts,
        }
    }

    #[test]
    fn open_is_an_allowlist_and_missing_ports_are_counted_per_host() {
        // 192.0.2.0/30: .1 has 22 and 443 open (as expected), .2 has 22 and 3306 (443 missing,
        // 3306 unexpected), .0 and .3 answer RST everywhere (both missing 22 and 443).
        let results = scan(
            "192.0.2.0/30",
            "22,443,3306",
            &[("192.0.2.1", 22), ("192.0.2.1", 443), ("192.0.2.2", 22), ("192.0.2.2", 3306)],
            &[],
        );
        let report = evaluate(&expect(Some("22,443"), None, ExpectHosts::All), &results, 100);
        assert_eq!(report.unexpected_open, 1);
        assert_eq!(report.expected_missing, 1 + 2 + 2);
        assert!(report.violations.contains(&Violation {
            address: "192.0.2.2".parse().unwrap(),
            port: Port::tcp(3306),
            kind: ViolationKind::UnexpectedOpen
        }));
        assert!(report.violations.contains(&Violation {
            address: "192.0.2.2".parse().unwrap(),
            port: Port::tcp(443),
            kind: ViolationKind::ExpectedMissing
        }));
        assert_eq!(report.violations.len(), 6);
    }

    #[test]
    fn closed_only_flags_the_listed_ports_and_responding_skips_silent_hosts() {
        let results =
            scan("192.0.2.0/30", "22,443,3306", &[("192.0.2.1", 22), ("192.0.2.1", 3306)], &["192.0.2.0", "192.0.2.3"]);
        let closed_only = evaluate(&expect(None, Some("3306"), ExpectHosts::All), &results, 100);
        assert_eq!((closed_only.unexpected_open, closed_only.expected_missing), (1, 0));
        // Silent hosts (.0 and .3 filtered everywhere) do not owe the expected ports with
        // `hosts: responding`; .2 answered RST, so it does.
        let responding = evaluate(&expect(Some("22"), None, ExpectHosts::Responding), &results, 100);
        assert_eq!((responding.unexpected_open, responding.expected_missing), (1, 1));
        let all = evaluate(&expect(Some("22"), None, ExpectHosts::All), &results, 100);
        assert_eq!(all.expected_missing, 3);
    }

    #[test]
    fn counts_stay_exact_when_the_list_is_capped_and_unknown_probes_are_ignored() {
        let results = scan("192.0.2.0/28", "22,80", &[], &[]);
        let report = evaluate(&expect(Some("22,80"), None, ExpectHosts::All), &results, 5);
        assert_eq!(report.expected_missing, 32);
        assert_eq!(report.violations.len(), 5);
        let unknown = ScanResults::from_fn(Arc::clone(results.space()), |_| PortState::Unknown);
        assert_eq!(evaluate(&expect(Some("22,80"), None, ExpectHosts::All), &unknown, 5), PolicyReport::default());
    }
}
