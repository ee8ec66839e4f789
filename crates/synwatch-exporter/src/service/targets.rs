//! Everything the exporter holds about its configured targets, in one table in config order:
//! per target its config, this replica's space, its record (last results and attempt) and
//! what readers derive from the results. Folding a finished scan into a record is the pure
//! [`fold_scan`]; sharing the details budget is [`detail_allotments`].
//!
//! The table is immutable once built: the scheduler thread and reload build a new one and swap
//! the `Arc`, so readers never hold a lock while they render.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use synwatch_engine::{Shard, TargetSpace};

use crate::config::{Config, Target};
use crate::names::ResolvedNames;
use crate::policy::PolicyReport;
use crate::results::{Changes, Endpoints, ScanResults};
use crate::state::{ScanAttempt, TargetRecord};

/// What `/metrics` and `/sd` read of a target's last results, computed when they change (a
/// completed scan, a reload) rather than per request: the responding hosts and open endpoints
/// take one pass over the whole space, the policy another.
#[derive(Debug, Default)]
pub(crate) struct Derived {
    pub(crate) endpoints: Endpoints,
    /// The `expect:` policy checked against the results (targets with `expect:` only).
    pub(crate) policy: Option<PolicyReport>,
}

impl Derived {
    fn of(target: &Target, results: &ScanResults, details_budget: usize) -> Derived {
        let policy = target.expect.as_ref().map(|expect| crate::policy::evaluate(expect, results, details_budget));
        Derived { endpoints: results.endpoints(), policy }
    }
}

/// One configured target and all the exporter holds about it.
#[derive(Debug, Clone)]
pub(crate) struct TargetEntry {
    pub(crate) target: Target,
    /// This replica's part of the target's space; `None` when its shard is empty here (the
    /// target is then never scanned by this replica). A named target's space is found at each
    /// scan: here it is that of its last results (with the ports configured now), `None`
    /// before the first.
    pub(crate) space: Option<Arc<TargetSpace>>,
    /// The last results and attempt (`None` before the first attempt).
    pub(crate) record: Option<Arc<TargetRecord>>,
    /// Derived from `record`'s results (`None` without results).
    pub(crate) derived: Option<Arc<Derived>>,
}

impl TargetEntry {
    fn results(&self) -> Option<&ScanResults> {
        self.record.as_ref().and_then(|record| record.results.as_ref())
    }

    /// Whether the scheduler scans this target in this replica.
    pub(crate) fn scheduled(&self) -> bool {
        self.space.is_some() || self.target.is_named()
    }

    /// The hosts that answered the last completed scan.
    pub(crate) fn responding(&self) -> &[IpAddr] {
        self.derived.as_ref().map_or(&[], |derived| derived.endpoints.responding.as_slice())
    }
}

/// The targets of the running config, in config order.
#[derive(Debug, Clone, Default)]
pub(crate) struct TargetTable {
    entries: Vec<TargetEntry>,
}

impl TargetTable {
    /// The table for `config` and `shard`, keeping the records of `records` (by target name)
    /// expressed over each target's current space; records of targets no longer configured are
    /// dropped.
    pub(crate) fn build(config: &Config, shard: Shard, records: &BTreeMap<String, Arc<TargetRecord>>) -> TargetTable {
        let entries = config
            .targets
            .iter()
            .map(|target| {
                let space = if target.is_named() {
                    // The hosts its names had at the last scan, with the ports configured now.
                    records
                        .get(&target.name)
                        .and_then(|record| record.results.as_ref())
                        .and_then(|results| {
                            TargetSpace::new(results.space().hosts().clone(), target.ports.clone()).ok()
                        })
                        .map(Arc::new)
                } else {
                    target.shard_space(shard)
                };
                let record = match (records.get(&target.name), &space) {
                    (Some(record), Some(space)) => Some(match &record.results {
                        Some(results) if **results.space() != **space => Arc::new(TargetRecord {
                            results: Some(results.project(Arc::clone(space))),
                            last_attempt: record.last_attempt,
                            names: record.names.clone(),
                        }),
                        _ => Arc::clone(record),
                    }),
                    _ => None,
                };
                let mut entry = TargetEntry { target: target.clone(), space, record, derived: None };
                entry.derived =
                    entry.results().map(|results| Arc::new(Derived::of(target, results, config.details_budget)));
                entry
            })
            .collect();
        TargetTable { entries }
    }

    /// The entries, in config order.
    pub(crate) fn entries(&self) -> &[TargetEntry] {
        &self.entries
    }

    /// The entry of target `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&TargetEntry> {
        self.entries.iter().find(|entry| entry.target.name == name)
    }

    /// The records, by name (what the state file keeps).
    pub(crate) fn records(&self) -> BTreeMap<String, Arc<TargetRecord>> {
        self.entries
            .iter()
            .filter_map(|entry| Some((entry.target.name.clone(), Arc::clone(entry.record.as_ref()?))))
            .collect()
    }

    /// The same table with target `name`'s record replaced (and its derived views with it).
    /// `None` when the target is no longer configured.
    pub(crate) fn with_record(&self, name: &str, record: TargetRecord, details_budget: usize) -> Option<TargetTable> {
        let mut table = self.clone();
        let entry = table.entries.iter_mut().find(|entry| entry.target.name == name)?;
        let results_changed = record.results.as_ref() != entry.results();
        if entry.target.is_named() {
            entry.space = record.results.as_ref().map(|results| Arc::clone(results.space()));
        }
        entry.record = Some(Arc::new(record));
        if results_changed || entry.derived.is_none() {
            entry.derived =
                entry.results().map(|results| Arc::new(Derived::of(&entry.target, results, details_budget)));
        }
        Some(table)
    }
}

/// The per-port series a target asks for: its known probes when `details: true`, else none.
fn wanted_detail_series(entry: &TargetEntry) -> u64 {
    match entry.results() {
        Some(results) if entry.target.details => results.space().len() - results.counts().unknown,
        _ => 0,
    }
}

/// Detail series allowed per target within `details_budget`, in config order, with the series
/// each target wanted.
pub(crate) fn detail_allotments(table: &TargetTable, details_budget: usize) -> Vec<(u64, u64)> {
    let mut remaining = details_budget as u64;
    table
        .entries
        .iter()
        .map(|entry| {
            let wanted = wanted_detail_series(entry);
            let allotted = wanted.min(remaining);
            remaining -= allotted;
            (allotted, wanted)
        })
        .collect()
}

/// A scan's end folded into a target's record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Folded {
    /// The new record.
    pub(crate) record: TargetRecord,
    /// Ports opened and closed since the previous results (a completed scan after another).
    pub(crate) changes: Option<Changes>,
}

/// Folds the end of a scan into `previous`: the attempt always, and when the scan completed,
/// its `results` expressed over `space` (the target's space now: a reload may have changed it
/// while the scan ran; a named target's is the scan's own) with the `names` it resolved, and
/// the changes since the previous results. A scan that did not complete (or whose names did
/// not resolve) keeps the previous results and names.
pub(crate) fn fold_scan(
    previous: Option<&TargetRecord>,
    results: Option<ScanResults>,
    space: Option<&Arc<TargetSpace>>,
    attempt: ScanAttempt,
    names: Option<ResolvedNames>,
) -> Folded {
    let before = previous.and_then(|record| record.results.as_ref());
    match results {
        Some(results) => {
            let results = match space {
                Some(space) if **results.space() != **space => results.project(Arc::clone(space)),
                _ => results,
            };
            let changes = before.map(|before| results.changes_since(before));
            Folded { record: TargetRecord { results: Some(results), last_attempt: Some(attempt), names }, changes }
        }
        None => {
            let names = previous.and_then(|record| record.names.clone());
            Folded {
                record: TargetRecord { results: before.cloned(), last_attempt: Some(attempt), names },
                changes: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synwatch_engine::targets::parse_target;
    use synwatch_engine::{ExclusionPolicy, HostSet, PortSet, PortState};

    fn space(ports: &str) -> Arc<TargetSpace> {
        let hosts =
            HostSet::build(vec![parse_target("192.0.2.0/30").unwrap()], Vec::new(), ExclusionPolicy::Default).unwrap();
        Arc::new(TargetSpace::new(hosts, PortSet::parse(ports).unwrap()).unwrap())
    }

    fn attempt(success: bool) -> ScanAttempt {
        ScanAttempt { timestamp: 1_700_000_000.0, duration_seconds: 1.5, success }
    }

    /// Results over `space` where the probes of `open` indices are open, the others closed.
    fn results(space: &Arc<TargetSpace>, open: &[u64]) -> ScanResults {
        ScanResults::from_fn(
            Arc::clone(space),
            |index| {
                if open.contains(&index) { PortState::Open } else { PortState::Closed }
            },
        )
    }

    #[test]
    fn a_completed_scan_replaces_the_results_and_counts_the_changes() {
        let space = space("22,80");
        let first = fold_scan(None, Some(results(&space, &[0, 1])), Some(&space), attempt(true), None);
        assert_eq!(first.changes, None, "nothing to compare the first results with");
        assert_eq!(first.record.results.as_ref().unwrap().counts().open, 2);
        let second = fold_scan(Some(&first.record), Some(results(&space, &[1, 2])), Some(&space), attempt(true), None);
        assert_eq!(second.changes, Some(Changes { opened: 1, closed: 1, turned_suspect: 0 }));
        assert_eq!(second.record.last_attempt, Some(attempt(true)));
    }

    #[test]
    fn a_failed_scan_keeps_the_results_and_records_the_attempt() {
        let space = space("22");
        let done = fold_scan(None, Some(results(&space, &[3])), Some(&space), attempt(true), None);
        let failed = fold_scan(Some(&done.record), None, Some(&space), attempt(false), None);
        assert_eq!(failed.record.results, done.record.results);
        assert_eq!(failed.record.last_attempt, Some(attempt(false)));
        assert_eq!(failed.changes, None);
    }

    #[test]
    fn results_of_a_scan_that_ran_over_a_reload_are_projected_onto_the_new_space() {
        let old = space("22,80");
        let new = space("80,443");
        let before = fold_scan(None, Some(results(&old, &[1])), Some(&old), attempt(true), None);
        // The scan ran over the old space; the target now scans 80 and 443.
        let folded = fold_scan(Some(&before.record), Some(results(&old, &[1, 3])), Some(&new), attempt(true), None);
        let kept = folded.record.results.unwrap();
        assert_eq!(**kept.space(), *new);
        // Port 80 of every host is known (open on the first two), 443 of none.
        assert_eq!((kept.counts().open, kept.counts().closed, kept.counts().unknown), (2, 2, 4));
    }
}
