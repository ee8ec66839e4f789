//! The `synwatch-history` thread: for every scan the scheduler folded, one structured log line
//! per change (with or without a database), and, with a history database, the scan written in
//! one transaction; pruning at start and every `history.prune_interval`; and, at start, the
//! database made to agree with the results the exporter serves.
//!
//! It runs off the scheduler's and the scrapes' paths: the scheduler hands it the target's
//! record after the fold (an `Arc`) and goes on. Each scan's changes are taken against the
//! results the thread last wrote for the target (the same `Arc` as the previous record while
//! every write succeeds), so a write that fails (a full or read-only disk: counted and logged)
//! loses nothing: the next write holds the changes of both scans. A target the thread has
//! written nothing for yet is written against what the database holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use synwatch_history::{ChangeKind, ChangeRow, HistoryStore, OpenEndpoint, ScanOutcome, ScanRow};

use super::Inner;
use crate::history::{change_rows, open_rows, reconcile_rows};
use crate::results::ScanResults;
use crate::state::{TargetRecord, unix_seconds};

/// What the history thread is told.
pub(super) enum HistoryEvent {
    /// A scan of `target` ended; `now` is the target's record after it was folded in (a
    /// failed scan's keeps the old results).
    ScanEnded { target: String, started: f64, ended: f64, success: bool, now: Arc<TargetRecord> },
    /// The records the exporter serves at start: the database is made to agree with them.
    Reconcile(Vec<(String, Arc<TargetRecord>)>),
}

pub(super) fn history_loop(inner: &Inner, mut store: Option<HistoryStore>, events: &Receiver<HistoryEvent>) {
    let mut writer = Writer { inner, written: HashMap::new() };
    let mut next_prune = Instant::now();
    loop {
        let timeout = next_prune.saturating_duration_since(Instant::now());
        match events.recv_timeout(timeout) {
            Ok(event) => writer.handle(store.as_mut(), event),
            Err(RecvTimeoutError::Timeout) => {
                writer.prune(store.as_mut());
                next_prune = Instant::now() + inner.config.read().history.prune_interval;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some(store) = &store {
            inner.metrics.history.database_bytes.set(store.size_bytes() as i64);
        }
    }
    tracing::debug!("history thread stopped");
}

struct Writer<'a> {
    inner: &'a Inner,
    /// Per target, the record whose results the database holds (the last one written, or the
    /// one the start reconciled it with).
    written: HashMap<String, Arc<TargetRecord>>,
}

impl Writer<'_> {
    fn handle(&mut self, store: Option<&mut HistoryStore>, event: HistoryEvent) {
        match event {
            HistoryEvent::ScanEnded { target, started, ended, success, now } => {
                self.scan_ended(store, &target, (started, ended), success.then_some(now));
            }
            HistoryEvent::Reconcile(records) => {
                let mut store = store;
                let now = unix_seconds(SystemTime::now());
                for (target, record) in records {
                    match &mut store {
                        Some(store) => self.reconcile(store, &target, now, &record),
                        // No database: the next scan's log lines are against these results.
                        None => {
                            self.written.insert(target, record);
                        }
                    }
                }
            }
        }
    }

    fn scan_ended(
        &mut self,
        store: Option<&mut HistoryStore>,
        target: &str,
        (started, ended): (f64, f64),
        now: Option<Arc<TargetRecord>>,
    ) {
        let Some((record, results)) = now.as_ref().and_then(|record| Some((record, record.results.as_ref()?))) else {
            // A scan that did not complete changes nothing; its row says it ran.
            if let Some(store) = store {
                let row = scan_row(target, started, ended, ScanOutcome::Failure, None);
                self.write(store, target, &row, &[], &[], None);
            }
            return;
        };
        // The results last written, with the names they were found with.
        let written =
            self.written.get(target).and_then(|record| Some((record.results.as_ref()?, record.names.as_ref())));
        let Some(store) = store else {
            // No database: the log lines alone, against the previous results.
            if let Some(previous) = written {
                log_changes(target, ended, &change_rows(previous, results, record.names.as_ref()), false);
            }
            self.written.insert(target.to_string(), Arc::clone(record));
            return;
        };
        let changes = match written {
            Some(written) => change_rows(written, results, record.names.as_ref()),
            None => match store.endpoints_of(target) {
                Ok(believed) => reconcile_rows(&believed, results, record.names.as_ref()),
                Err(error) => return self.failed(target, &error),
            },
        };
        let row = scan_row(target, started, ended, ScanOutcome::Success, Some(results));
        if self.write(store, target, &row, &changes, &open_rows(results, record.names.as_ref()), Some(record)) {
            log_changes(target, ended, &changes, false);
        }
    }

    fn reconcile(&mut self, store: &mut HistoryStore, target: &str, now: f64, record: &Arc<TargetRecord>) {
        let Some(results) = record.results.as_ref() else { return };
        let believed = match store.endpoints_of(target) {
            Ok(believed) => believed,
            Err(error) => return self.failed(target, &error),
        };
        let changes = reconcile_rows(&believed, results, record.names.as_ref());
        let opens = open_rows(results, record.names.as_ref());
        let unknown_open = opens.iter().any(|open| !believed.contains_key(&(open.ip, open.proto, open.port)));
        if changes.is_empty() && !unknown_open {
            self.written.insert(target.to_string(), Arc::clone(record));
            return;
        }
        let row = scan_row(target, now, now, ScanOutcome::Reconciled, Some(results));
        if self.write(store, target, &row, &changes, &opens, Some(record)) {
            tracing::info!(target = %target, changes = changes.len(), "history reconciled with the served results");
            log_changes(target, now, &changes, true);
        }
    }

    /// Writes one scan row; on success (true) the database holds `record`'s results (when
    /// given). The changes are logged only once written, so a failed write that the next one
    /// catches up logs each change once.
    fn write(
        &mut self,
        store: &mut HistoryStore,
        target: &str,
        row: &ScanRow,
        changes: &[ChangeRow],
        opens: &[OpenEndpoint],
        record: Option<&Arc<TargetRecord>>,
    ) -> bool {
        let started = Instant::now();
        match store.record_scan(row, changes, opens) {
            Ok(_) => {
                if let Some(record) = record {
                    self.written.insert(target.to_string(), Arc::clone(record));
                }
                self.inner.metrics.history.changes_recorded.inc_by(changes.len() as u64);
                tracing::debug!(
                    target = %target,
                    changes = changes.len(),
                    opens = opens.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "scan written to the history"
                );
                true
            }
            Err(error) => {
                self.failed(target, &error);
                false
            }
        }
    }

    fn failed(&mut self, target: &str, error: &synwatch_history::HistoryError) {
        self.inner.metrics.history.write_failures.inc();
        tracing::error!(target = %target, %error, "cannot write the exposure history; the next scan writes what this one missed");
    }

    fn prune(&mut self, store: Option<&mut HistoryStore>) {
        let Some(store) = store else { return };
        let settings = self.inner.config.read().history.clone();
        let now = unix_seconds(SystemTime::now());
        match store.prune(now, settings.retention, settings.max_changes) {
            Ok(pruned) => {
                self.inner.metrics.history.changes_pruned.inc_by(pruned.changes);
                if pruned.changes + pruned.scans + pruned.endpoints > 0 {
                    tracing::info!(
                        changes = pruned.changes,
                        scans = pruned.scans,
                        endpoints = pruned.endpoints,
                        "exposure history pruned"
                    );
                }
            }
            Err(error) => {
                self.inner.metrics.history.write_failures.inc();
                tracing::error!(%error, "cannot prune the exposure history");
            }
        }
    }
}

fn scan_row(target: &str, started: f64, ended: f64, result: ScanOutcome, results: Option<&ScanResults>) -> ScanRow {
    let counts = results.map(ScanResults::counts).unwrap_or_default();
    ScanRow {
        target: target.to_string(),
        started,
        ended,
        result,
        open: counts.open,
        closed: counts.closed,
        filtered: counts.filtered + counts.open_filtered,
    }
}

/// One structured log line per change: with `--log-format json`, a record a log pipeline
/// (Loki, Elasticsearch) can keep as the history.
fn log_changes(target: &str, time: f64, changes: &[ChangeRow], reconciled: bool) {
    if changes.is_empty() {
        return;
    }
    let time = humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(time.max(0.0)));
    for change in changes {
        tracing::info!(
            target = %target,
            ip = %change.ip,
            proto = change.proto.name(),
            port = change.port,
            from = change.old_state,
            to = change.new_state,
            change = ChangeKind::of(change.old_state, change.new_state).name(),
            reason = change.reason.as_deref().unwrap_or(""),
            time = %time,
            reconciled,
            "port state changed"
        );
    }
}
