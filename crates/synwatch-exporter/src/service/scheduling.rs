//! The `synwatch-schedule` thread: starts the scans the [`Schedule`] says are due, on the
//! shared engine, collects the finished ones, folds them into the target table and saves the
//! state.
//!
//! A named target's scan starts with the resolution of its names, on a `synwatch-resolve`
//! thread of its own (a slow name server never holds up this loop); it holds its scan slot
//! meanwhile. The scan then runs over the addresses just found. A name that does not resolve
//! ends the attempt as `resolve_failed`, with the previous results kept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

use synwatch_engine::{FinishReason, JobSettings, Protocol, Shard, TargetSpace};

use crate::names::{Resolution, ResolveFailure, ResolvedNames, resolve_names};
use crate::results::ScanResults;
use crate::schedule::{Schedule, ScheduledTarget};
use crate::state::{ScanAttempt, TargetRecord, unix_seconds};

use super::Inner;
use super::history_thread::HistoryEvent;
use super::targets::{detail_allotments, fold_scan};
use crate::scanner::{RunningScan, ScanOrder};

/// Where a started scan is.
enum Phase {
    /// Its names are being resolved; the answer comes on this channel.
    Resolving(Receiver<Resolution>),
    /// It runs on the engine over `space`, found with `names` (named targets).
    Scanning { scan: Box<dyn RunningScan>, space: Arc<TargetSpace>, names: Option<ResolvedNames> },
}

struct Running {
    name: String,
    phase: Phase,
    started: Instant,
}

impl Running {
    fn cancel(&self) {
        if let Phase::Scanning { scan, .. } = &self.phase {
            scan.cancel();
        }
    }
}

/// How a started scan ended.
enum Ended {
    /// It completed, with its results (and the names it found).
    Completed(Box<ScanResults>, Option<ResolvedNames>),
    /// It was cut off, failed or could not start.
    Failed,
    /// A name of the target did not resolve.
    ResolveFailed,
    /// None of the addresses found falls in this replica's shard: nothing to record.
    NothingHere,
}

/// The longest a resolution waits for the binary to hand in its resolver (just after start).
const RESOLVER_WAIT: Duration = Duration::from_secs(2);

pub(super) struct SchedulerLoop {
    inner: Arc<Inner>,
    schedule: Schedule,
    running: Vec<Running>,
    scans_started: u64,
}

impl SchedulerLoop {
    pub(super) fn new(inner: Arc<Inner>) -> SchedulerLoop {
        let schedule = Schedule::new(inner.seed);
        SchedulerLoop { inner, schedule, running: Vec::new(), scans_started: 0 }
    }

    fn now(&self) -> Duration {
        self.inner.epoch.elapsed()
    }

    /// Hands the current targets to the schedule; cancels scans of removed targets.
    fn apply_config(&mut self) {
        let config = Arc::clone(&self.inner.config.read());
        let now = self.now();
        let now_unix = unix_seconds(SystemTime::now());
        let table = self.inner.targets();
        let targets: Vec<ScheduledTarget> = table
            .entries()
            .iter()
            // A target whose shard is empty in this replica (or whose files list nothing) is not
            // scheduled at all.
            .filter(|entry| entry.scheduled())
            .map(|entry| {
                let target = &entry.target;
                // After a restart, a target scanned recently waits for the rest of its interval.
                let first_due = entry.record.as_ref().and_then(|record| record.last_attempt).and_then(|attempt| {
                    let age = Duration::from_secs_f64((now_unix - attempt.timestamp).max(0.0));
                    target.settings.interval.checked_sub(age).map(|left| now + left)
                });
                ScheduledTarget { name: target.name.clone(), interval: target.settings.interval, first_due }
            })
            .collect();
        for name in self.schedule.set_targets(&targets, now) {
            if let Some(running) = self.running.iter().find(|running| running.name == name) {
                running.cancel();
            }
        }
        if config.resolve_hostnames {
            self.inner.request_all_lookups(&config);
        } else {
            self.inner.hostnames.clear();
            self.inner.metrics.dns_cache_entries.set(0);
        }
    }

    pub(super) fn run(mut self) {
        self.apply_config();
        loop {
            {
                let mut control = self.inner.control.lock();
                if control.shutdown {
                    break;
                }
                if std::mem::take(&mut control.config_changed) {
                    drop(control);
                    self.apply_config();
                }
            }
            self.collect_finished();
            let now = self.now();
            self.schedule.poll(now);
            let slots = self.inner.config.read().engine.max_concurrent_scans;
            while self.running.len() < slots {
                let Some(name) = self.schedule.start_next(now) else { break };
                self.start_scan(name);
            }
            let metrics = &self.inner.metrics;
            metrics.queue_length.set(self.schedule.queue_length() as i64);
            metrics.scans_running.set(self.running.len() as i64);
            // Ended API scans give their on-demand slot back here (and on API requests).
            let config = Arc::clone(&self.inner.config.read());
            self.inner.ondemand.maintain(&config.ondemand, metrics);
            let mut sleep = self.inner.tick;
            if self.running.is_empty()
                && self.inner.ondemand.scans_running() == 0
                && let Some(due) = self.schedule.next_due()
            {
                sleep = due.saturating_sub(self.now()).clamp(Duration::from_millis(1), Duration::from_secs(1));
            }
            let mut control = self.inner.control.lock();
            if !control.shutdown && !control.config_changed {
                self.inner.wake.wait_for(&mut control, sleep);
            }
        }
        self.stop();
    }

    fn start_scan(&mut self, name: String) {
        let table = self.inner.targets();
        let Some(entry) = table.get(&name) else {
            self.schedule.finished(&name, self.now());
            return;
        };
        self.scans_started += 1;
        let started = Instant::now();
        if entry.target.is_named() {
            let (sender, receiver) = std::sync::mpsc::channel();
            let names = entry.target.names.clone();
            let dns = self.inner.config.read().dns.clone();
            let inner = Arc::clone(&self.inner);
            let spawned = std::thread::Builder::new().name("synwatch-resolve".into()).spawn(move || {
                let resolution = match wait_for_resolver(&inner, &dns) {
                    Ok(resolver) => resolve_names(&names, resolver.as_ref()),
                    Err(detail) => Resolution::Failed { name: names[0].clone(), reason: ResolveFailure::Error, detail },
                };
                let _ = sender.send(resolution);
            });
            match spawned {
                Ok(_) => self.running.push(Running { name, phase: Phase::Resolving(receiver), started }),
                Err(error) => {
                    tracing::warn!(target = %name, %error, "cannot start a resolver thread");
                    self.record_attempt(&name, started, Ended::Failed);
                    self.schedule.finished(&name, self.now());
                }
            }
            return;
        }
        let Some(space) = entry.space.clone() else {
            self.schedule.finished(&name, self.now());
            return;
        };
        match self.launch(&name, &space) {
            Ok(scan) => {
                self.running.push(Running { name, phase: Phase::Scanning { scan, space, names: None }, started })
            }
            Err(()) => {
                self.record_attempt(&name, started, Ended::Failed);
                self.schedule.finished(&name, self.now());
            }
        }
    }

    /// Starts the engine's scan of `space` for target `name`.
    fn launch(&self, name: &str, space: &Arc<TargetSpace>) -> Result<Box<dyn RunningScan>, ()> {
        let table = self.inner.targets();
        let Some(entry) = table.get(name) else { return Err(()) };
        let target = &entry.target;
        let settings = JobSettings {
            retries: target.settings.retries,
            retry_gap: target.settings.retry_gap,
            wait: target.settings.wait,
            canaries: target.settings.canaries,
            udp_host_interval: target.settings.udp_host_interval,
            seed: self.inner.seed ^ self.scans_started.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            shard: Shard::WHOLE,
            ..JobSettings::default()
        };
        let order = ScanOrder {
            verify: target.settings.verify.connect(),
            payloads: Arc::clone(&self.inner.config.read().udp_payloads),
            ..ScanOrder::background(Arc::clone(space), settings, target.settings.timeout)
        };
        match self.inner.scanner.start(order) {
            Ok(scan) => {
                tracing::debug!(target = %name, probes = space.len(), "scan started");
                Ok(scan)
            }
            Err(error) => {
                tracing::warn!(target = %name, %error, "scan could not start");
                Err(())
            }
        }
    }

    /// A named target's resolution came in: scan the addresses found, or end the attempt.
    /// Returns the new phase, or how the attempt ended.
    fn resolved(&mut self, name: &str, resolution: Resolution) -> Result<Phase, Ended> {
        let metrics = &self.inner.metrics;
        let names = match resolution {
            Resolution::Resolved(names) => names,
            Resolution::Failed { name: host, reason, detail } => {
                metrics.resolve_failures.with_label_values(&[name, reason.label()]).inc();
                tracing::warn!(
                    target = %name, name = %host, reason = reason.label(), %detail,
                    "a name of the target did not resolve; the scan does not start and the previous results stay"
                );
                return Err(Ended::ResolveFailed);
            }
        };
        let table = self.inner.targets();
        let Some(entry) = table.get(name) else { return Err(Ended::Failed) };
        if let Some(previous) = entry.record.as_ref().and_then(|record| record.names.as_ref()) {
            for (host, before, now) in names.changes_from(previous) {
                metrics.address_changes.with_label_values(&[name]).inc();
                tracing::info!(
                    target = %name, name = %host.name(), before = ?before, now = ?now,
                    "a name's addresses changed; the target is scanned at the new ones"
                );
            }
        }
        let space = match entry.target.resolved_space(&names.addresses(), self.inner.shard) {
            Ok(Some(space)) => Arc::new(space),
            Ok(None) => {
                tracing::debug!(target = %name, "no address of the target's names falls in this replica's shard");
                return Err(Ended::NothingHere);
            }
            Err(error) => {
                tracing::warn!(target = %name, %error, "the target's names gave nothing to scan");
                return Err(Ended::Failed);
            }
        };
        match self.launch(name, &space) {
            Ok(scan) => Ok(Phase::Scanning { scan, space, names: Some(names) }),
            Err(()) => Err(Ended::Failed),
        }
    }

    fn collect_finished(&mut self) {
        let mut index = 0;
        while index < self.running.len() {
            let ended = match &self.running[index].phase {
                Phase::Resolving(receiver) => {
                    let resolution = match receiver.try_recv() {
                        Ok(resolution) => resolution,
                        Err(TryRecvError::Empty) => {
                            index += 1;
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => Resolution::Failed {
                            name: synwatch_engine::HostName::parse("resolver.invalid", Default::default())
                                .expect("a valid name"),
                            reason: ResolveFailure::Error,
                            detail: "the resolver thread ended without an answer".into(),
                        },
                    };
                    let name = self.running[index].name.clone();
                    match self.resolved(&name, resolution) {
                        Ok(phase) => {
                            self.running[index].phase = phase;
                            index += 1;
                            continue;
                        }
                        Err(ended) => ended,
                    }
                }
                Phase::Scanning { scan, space, names } => {
                    let Some(reason) = scan.finished() else {
                        index += 1;
                        continue;
                    };
                    let running = &self.running[index];
                    if matches!(reason, FinishReason::AllAnswered | FinishReason::WaitOver) {
                        let results = ScanResults::from_fn(Arc::clone(space), |probe| {
                            // No answer is filtered for TCP, open|filtered for UDP.
                            let protocol = space.probe_at(probe).map_or(Protocol::Tcp, |(_, port)| port.protocol);
                            scan.state(probe).finalized(protocol)
                        })
                        .with_suspects(scan.suspects());
                        let verdicts = scan.verdicts();
                        for verdict in synwatch_io::Verdict::ALL {
                            let count = verdicts.iter().filter(|(_, _, found)| *found == verdict).count() as u64;
                            if count > 0 {
                                self.inner
                                    .metrics
                                    .verifications
                                    .with_label_values(&[&running.name, verdict.name()])
                                    .inc_by(count);
                            }
                        }
                        Ended::Completed(Box::new(results.with_verdicts(verdicts)), names.clone())
                    } else {
                        tracing::warn!(target = %running.name, ?reason, "scan did not complete; the previous results stay");
                        Ended::Failed
                    }
                }
            };
            let running = self.running.swap_remove(index);
            if !matches!(ended, Ended::NothingHere) {
                self.record_attempt(&running.name, running.started, ended);
            }
            self.schedule.finished(&running.name, self.now());
        }
    }

    /// Folds a scan's end into the target's record ([`fold_scan`]), counts it and its changes,
    /// checks the details budget, asks for the names of the responding hosts and saves.
    fn record_attempt(&mut self, name: &str, started: Instant, ended: Ended) {
        let metrics = &self.inner.metrics;
        let duration = started.elapsed();
        let (results, names, result_label) = match ended {
            Ended::Completed(results, names) => (Some(*results), names, "success"),
            Ended::Failed | Ended::NothingHere => (None, None, "failure"),
            Ended::ResolveFailed => (None, None, "resolve_failed"),
        };
        let success = results.is_some();
        let attempt = ScanAttempt {
            timestamp: unix_seconds(SystemTime::now()),
            duration_seconds: duration.as_secs_f64(),
            success,
        };
        let config = Arc::clone(&self.inner.config.read());
        // The table is replaced by the scheduler thread (here) and by reloads, serialized by
        // `reloading`, so that a reload in between cannot lose this record.
        let _serialized = self.inner.reloading.lock();
        let table = self.inner.targets();
        let Some(entry) = table.get(name) else {
            return; // Removed by a reload while it ran: its series are already gone.
        };
        // A named target's results are over the addresses its scan found, never projected back.
        let space = if entry.target.is_named() { None } else { entry.space.as_ref() };
        let folded = fold_scan(entry.record.as_deref(), results, space, attempt, names);
        let Some(table) = table.with_record(name, folded.record, config.details_budget) else { return };
        metrics.scan_duration.with_label_values(&[name]).observe(duration.as_secs_f64());
        metrics.scans.with_label_values(&[name, result_label]).inc();
        if let Some(changes) = folded.changes {
            metrics.port_changes.with_label_values(&[name, "opened"]).inc_by(changes.opened);
            metrics.port_changes.with_label_values(&[name, "closed"]).inc_by(changes.closed);
            metrics.hosts_turned_suspect.with_label_values(&[name]).inc_by(changes.turned_suspect);
            if changes.opened + changes.closed > 0 {
                tracing::info!(target = %name, opened = changes.opened, closed = changes.closed, "ports changed");
            }
            if changes.turned_suspect > 0 {
                tracing::warn!(target = %name, hosts = changes.turned_suspect, "hosts turned suspect (SYN-ACK on every port)");
            }
        }
        if success && let Some(position) = table.entries().iter().position(|entry| entry.target.name == name) {
            let (allotted, wanted) = detail_allotments(&table, config.details_budget)[position];
            if wanted > allotted {
                let refused = wanted - allotted;
                metrics.details_dropped.inc_by(refused);
                tracing::warn!(target = %name, refused, budget = config.details_budget, "details_budget reached");
            }
        }
        let table = Arc::new(table);
        *self.inner.targets.write() = Arc::clone(&table);
        drop(_serialized);
        if let Some(now) = table.get(name).and_then(|entry| entry.record.clone()) {
            self.inner.tell_history(HistoryEvent::ScanEnded {
                target: name.to_string(),
                started: attempt.timestamp - attempt.duration_seconds,
                ended: attempt.timestamp,
                success,
                now,
            });
        }
        if success && let Some(entry) = table.get(name) {
            self.inner.request_lookups(&config, entry.responding());
        }
        tracing::info!(target = %name, success, seconds = duration.as_secs_f64(), "scan ended");
        self.save(&table.records());
    }

    fn save(&self, records: &BTreeMap<String, Arc<TargetRecord>>) {
        let Some(store) = &self.inner.store else { return };
        if let Err(error) = store.save(records) {
            self.inner.metrics.state_writes_failed.inc();
            tracing::error!(path = %store.path().display(), %error, "cannot save the state");
        }
    }

    /// Shutdown: cancel every scan, wait briefly for them to stop, save the state.
    fn stop(mut self) {
        for running in &self.running {
            running.cancel();
        }
        self.inner.ondemand.cancel_all();
        let deadline = Instant::now() + Duration::from_millis(500);
        for running in &self.running {
            if let Phase::Scanning { scan, .. } = &running.phase {
                scan.wait(deadline.saturating_duration_since(Instant::now()));
            }
        }
        self.running.clear();
        self.save(&self.inner.targets().records());
        tracing::info!("scheduler stopped; state saved");
    }
}

/// The resolver for `dns`, waiting up to [`RESOLVER_WAIT`] for the binary to hand its factory
/// in (it does so just after the start, when the first scans may already be due).
fn wait_for_resolver(
    inner: &super::Inner,
    dns: &crate::config::DnsSection,
) -> Result<Arc<dyn crate::hostnames::Resolver>, String> {
    let deadline = Instant::now() + RESOLVER_WAIT;
    loop {
        match inner.resolver(dns) {
            Ok(resolver) => return Ok(resolver),
            Err(error) if Instant::now() >= deadline || inner.resolver_factory.lock().is_some() => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
