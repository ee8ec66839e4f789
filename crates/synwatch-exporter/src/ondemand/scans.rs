//! The scans API's memory: scans started on request, by id, with their dedupe keys, kept after
//! they end up to a count and an age. No clock is read here (times come in as [`Duration`]s
//! since the owner's epoch) and no scan is started: the owner starts it and hands it in.
//!
//! Architecture invariant: these scans live only here. Nothing in this module (or the code
//! that feeds it) writes a target record, so an on-demand scan never creates a `/metrics`
//! series.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use synwatch_engine::{FinishReason, PortState, TargetSpace};

use crate::results::ScanResults;
use crate::scanner::RunningScan;

/// Where a scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanStatus {
    /// Sending or waiting for replies.
    Running,
    /// Every probe answered, or all rounds sent and the wait over.
    Done,
    /// Cut off by its deadline.
    TimedOut,
    /// Cancelled through the API (or at shutdown).
    Cancelled,
}

impl ScanStatus {
    /// The name used in JSON and in `?state=`.
    pub fn name(self) -> &'static str {
        match self {
            ScanStatus::Running => "running",
            ScanStatus::Done => "done",
            ScanStatus::TimedOut => "timed_out",
            ScanStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a `?state=` value.
    pub fn parse(text: &str) -> Option<ScanStatus> {
        [ScanStatus::Running, ScanStatus::Done, ScanStatus::TimedOut, ScanStatus::Cancelled]
            .into_iter()
            .find(|status| status.name() == text)
    }
}

/// What the request asked for, echoed in answers.
#[derive(Debug, Clone, Serialize)]
pub struct ScanDescription {
    /// The targets as given.
    pub targets: Vec<String>,
    /// The ports.
    pub ports: String,
    /// The module, when named.
    pub module: Option<String>,
    /// `background` or `interactive`.
    pub priority: &'static str,
    /// The dedupe key, when given.
    pub dedupe_key: Option<String>,
    /// The deadline in seconds.
    pub timeout_seconds: f64,
    /// Who asked.
    pub client: IpAddr,
}

/// One scan of the API.
pub struct ApiScan {
    /// The id (unguessable, 16 hex digits).
    pub id: String,
    /// The request.
    pub description: ScanDescription,
    /// Unix time of creation.
    pub created_unix: f64,
    /// When it ended (since the epoch), once it has.
    pub ended_at: Option<Duration>,
    /// Unix time of the end.
    pub ended_unix: Option<f64>,
    /// Where it is.
    pub status: ScanStatus,
    /// Its space.
    pub space: Arc<TargetSpace>,
    /// The engine job, while it runs.
    pub running: Option<Box<dyn RunningScan>>,
    /// The results, once it ended.
    pub results: Option<ScanResults>,
    /// Probes sent, retries included, at the end.
    pub sent_at_end: u64,
}

impl std::fmt::Debug for ApiScan {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("ApiScan").field("id", &self.id).field("status", &self.status).finish()
    }
}

impl ApiScan {
    /// The state of probe `index`, live while running.
    pub fn state(&self, index: u64) -> PortState {
        match (&self.results, &self.running) {
            (Some(results), _) => results.get(index),
            (None, Some(running)) => running.state(index),
            (None, None) => PortState::Unknown,
        }
    }

    /// Why the host of probe `index` is suspect, once the scan ended and if it is.
    pub fn suspect_at(&self, index: u64) -> Option<synwatch_engine::Suspect> {
        let results = self.results.as_ref()?;
        let (address, _) = self.space.probe_at(index)?;
        results.suspect_of(address)
    }

    /// The failed verdict of the verification of probe `index`, once the scan ended.
    pub fn unverified_at(&self, index: u64) -> Option<synwatch_io::Verdict> {
        let results = self.results.as_ref()?;
        let (address, port) = self.space.probe_at(index)?;
        results.unverified_of(address, port)
    }

    /// (sent, answered, total, round).
    pub fn progress(&self) -> (u64, u64, u64, u32) {
        let total = self.space.len();
        match &self.running {
            Some(running) => {
                let progress = running.progress();
                (progress.sent, progress.answered, total, progress.round)
            }
            None => {
                let counts = self.results.as_ref().map(ScanResults::counts);
                let answered = counts.map_or(0, |counts| total - counts.unknown);
                (self.sent_at_end, answered, total, 0)
            }
        }
    }
}

/// The registry (see the module documentation).
#[derive(Debug, Default)]
pub struct ScanRegistry {
    scans: BTreeMap<String, ApiScan>,
    /// Creation order, oldest first.
    order: Vec<String>,
    dedupe: HashMap<String, (String, Duration)>,
}

impl ScanRegistry {
    /// The scan a `dedupe_key` names, if it was used within `window` before `now` and the scan
    /// is still kept.
    pub fn deduplicated(&self, key: &str, now: Duration, window: Duration) -> Option<&ApiScan> {
        let (id, at) = self.dedupe.get(key)?;
        if now.saturating_sub(*at) > window {
            return None;
        }
        self.scans.get(id)
    }

    /// Adds a started scan created at `now`.
    pub fn insert(&mut self, scan: ApiScan, now: Duration) {
        if let Some(key) = &scan.description.dedupe_key {
            self.dedupe.insert(key.clone(), (scan.id.clone(), now));
        }
        self.order.push(scan.id.clone());
        self.scans.insert(scan.id.clone(), scan);
    }

    /// A scan by id.
    pub fn get(&self, id: &str) -> Option<&ApiScan> {
        self.scans.get(id)
    }

    /// Scans newest first, optionally only those in `status`, at most `limit`.
    pub fn list(&self, status: Option<ScanStatus>, limit: usize) -> Vec<&ApiScan> {
        self.order
            .iter()
            .rev()
            .filter_map(|id| self.scans.get(id))
            .filter(|scan| status.is_none_or(|status| scan.status == status))
            .take(limit)
            .collect()
    }

    /// Asks a running scan to stop; false when there is no such scan.
    pub fn cancel(&self, id: &str) -> bool {
        match self.scans.get(id) {
            Some(scan) => {
                if let Some(running) = &scan.running {
                    running.cancel();
                }
                true
            }
            None => false,
        }
    }

    /// Cancels every running scan (shutdown).
    pub fn cancel_all(&self) {
        for scan in self.scans.values() {
            if let Some(running) = &scan.running {
                running.cancel();
            }
        }
    }

    /// Scans still running.
    pub fn running(&self) -> usize {
        self.scans.values().filter(|scan| scan.running.is_some()).count()
    }

    /// Folds ended jobs into results (dropping the engine's handle) and returns how many ended.
    pub fn reap(&mut self, now: Duration, unix_now: f64) -> usize {
        let mut ended = 0;
        for scan in self.scans.values_mut() {
            let Some(reason) = scan.running.as_ref().and_then(|running| running.finished()) else {
                continue;
            };
            let running = scan.running.take().expect("checked above");
            scan.results = Some(
                ScanResults::from_fn(Arc::clone(&scan.space), |index| running.state(index))
                    .with_suspects(running.suspects())
                    .with_verdicts(running.verdicts()),
            );
            scan.sent_at_end = running.progress().sent;
            scan.status = match reason {
                FinishReason::AllAnswered | FinishReason::WaitOver => ScanStatus::Done,
                FinishReason::DeadlineReached => ScanStatus::TimedOut,
                FinishReason::Cancelled => ScanStatus::Cancelled,
            };
            scan.ended_at = Some(now);
            scan.ended_unix = Some(unix_now);
            ended += 1;
        }
        ended
    }

    /// Drops ended scans older than `max_age`, then the oldest ended ones beyond `max_count`,
    /// and dedupe keys past their window. Running scans are never dropped.
    pub fn prune(&mut self, now: Duration, max_count: usize, max_age: Duration, window: Duration) {
        let expired: Vec<String> = self
            .scans
            .values()
            .filter(|scan| scan.ended_at.is_some_and(|ended| now.saturating_sub(ended) > max_age))
            .map(|scan| scan.id.clone())
            .collect();
        for id in expired {
            self.scans.remove(&id);
        }
        let mut ended: Vec<(Duration, String)> =
            self.scans.values().filter_map(|scan| scan.ended_at.map(|ended| (ended, scan.id.clone()))).collect();
        if ended.len() > max_count {
            ended.sort();
            for (_, id) in ended.drain(..ended.len() - max_count) {
                self.scans.remove(&id);
            }
        }
        let scans = &self.scans;
        self.order.retain(|id| scans.contains_key(id));
        self.dedupe.retain(|_, (id, at)| scans.contains_key(id) && now.saturating_sub(*at) <= window);
    }

    /// Scans kept.
    pub fn len(&self) -> usize {
        self.scans.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.scans.is_empty()
    }
}
