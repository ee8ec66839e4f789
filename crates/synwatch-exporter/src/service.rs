//! The running exporter: the scheduler thread that drives scans on the shared engine, folds
//! their results into the per-target records, counts changes and saves the state; plus reload,
//! readiness, the landing page and the `/metrics` text for the HTTP crate to serve.
//!
//! The engine is reached through the [`Scanner`] trait, implemented for `synwatch_io::Engine`
//! and, in the tests, for a simulated network, so that everything here is tested without
//! sockets.
//!
//! Architecture invariant: records are written only by the scheduler thread (after a scan) and
//! by [`Exporter::reload`] (which drops or re-projects the records of changed targets, and alone
//! swaps the config); readers (`/metrics`, the landing page) take a read lock just long enough to
//! clone `Arc`s, so a scrape never waits for a scan and a scan never waits for a scrape.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex, RwLock};
use synwatch_engine::{FinishReason, JobSettings, PortState, Shard, TargetSpace};
use synwatch_io::{CounterSnapshot, Engine, JobHandle, JobRequest, Priority};

use crate::config::{self, Config, ConfigError, Target};
use crate::hostnames::{HostnameCache, ResolverFactory, ReverseResolver};
use crate::listeners::{ListenerSnapshot, ListenerTracker};
use crate::metrics::{BuildInfo, HostView, Metrics, TargetView};
use crate::ondemand::{OnDemand, Outcome, ScannerFactory};
use crate::policy::PolicyReport;
use crate::results::{Endpoints, ScanResults};
use crate::schedule::{Schedule, ScheduledTarget};
use crate::state::{ScanAttempt, StateStore, TargetRecord, unix_seconds};
use synwatch_http::site::{OnDemandRequest, RefusalKind, Reply};

/// A scan to start.
#[derive(Debug, Clone)]
pub struct ScanOrder {
    /// What to scan.
    pub space: Arc<TargetSpace>,
    /// Retries, waits, seed.
    pub settings: JobSettings,
    /// Cut off after this long.
    pub timeout: Duration,
    /// Interactive (on-demand probes) goes first.
    pub priority: Priority,
    /// The job's own rate cap.
    pub rate: Option<u64>,
}

impl ScanOrder {
    /// A background scan without its own rate cap.
    pub fn background(space: Arc<TargetSpace>, settings: JobSettings, timeout: Duration) -> ScanOrder {
        ScanOrder { space, settings, timeout, priority: Priority::Background, rate: None }
    }
}

/// A running scan's progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanProgress {
    /// Probes sent, retries included.
    pub sent: u64,
    /// Probes sent at least once.
    pub distinct_sent: u64,
    /// Probes answered.
    pub answered: u64,
    /// The current round (0 = first pass).
    pub round: u32,
}

/// The engine as the exporter uses it.
pub trait Scanner: Send + Sync {
    /// Starts a scan.
    fn start(&self, order: ScanOrder) -> Result<Box<dyn RunningScan>, String>;
    /// The engine's counters.
    fn counters(&self) -> CounterSnapshot;
    /// `syn` or `connect`.
    fn mode_name(&self) -> &'static str;
    /// Whether the engine's threads are all alive.
    fn is_running(&self) -> bool;
    /// Changes the global rate cap.
    fn set_rate(&self, rate: u64);
}

/// A scan in progress.
pub trait RunningScan: Send {
    /// Why it ended, once it has.
    fn finished(&self) -> Option<FinishReason>;
    /// Asks it to stop.
    fn cancel(&self);
    /// The state of probe `index` (meaningful once finished).
    fn state(&self, index: u64) -> PortState;
    /// Progress so far.
    fn progress(&self) -> ScanProgress;
    /// Waits at most `timeout` for the end (the default polls every millisecond).
    fn wait(&self, timeout: Duration) -> Option<FinishReason> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(reason) = self.finished() {
                return Some(reason);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Scanner for Engine {
    fn start(&self, order: ScanOrder) -> Result<Box<dyn RunningScan>, String> {
        let request = JobRequest {
            priority: order.priority,
            rate: order.rate,
            ..JobRequest::new(order.space, order.settings, Some(order.timeout))
        };
        match self.submit(request) {
            Ok(handle) => Ok(Box::new(handle)),
            Err(error) => Err(error.to_string()),
        }
    }
    fn counters(&self) -> CounterSnapshot {
        Engine::counters(self)
    }
    fn mode_name(&self) -> &'static str {
        self.mode().name()
    }
    fn is_running(&self) -> bool {
        Engine::is_running(self)
    }
    fn set_rate(&self, rate: u64) {
        Engine::set_rate(self, rate);
    }
}

impl RunningScan for JobHandle {
    fn finished(&self) -> Option<FinishReason> {
        self.summary().map(|summary| summary.reason)
    }
    fn cancel(&self) {
        JobHandle::cancel(self);
    }
    fn state(&self, index: u64) -> PortState {
        self.table().get(index)
    }
    fn progress(&self) -> ScanProgress {
        let progress = JobHandle::progress(self);
        // Round 0 sends each probe once; a later round means every probe was sent.
        let distinct_sent = if progress.round > 0 { progress.total } else { progress.sent.min(progress.total) };
        ScanProgress { sent: progress.sent, distinct_sent, answered: progress.answered, round: progress.round }
    }
    fn wait(&self, timeout: Duration) -> Option<FinishReason> {
        self.wait_timeout(timeout).map(|summary| summary.reason)
    }
}

/// How the exporter is set up.
#[derive(Debug, Clone)]
pub struct ExporterOptions {
    /// The config file (`None`: the embedded default, which reloads to itself).
    pub config_path: Option<PathBuf>,
    /// Overrides `state_dir` of the config.
    pub state_dir: Option<PathBuf>,
    /// Version and revision for `synwatch_build_info`.
    pub build: BuildInfo,
    /// Seed of the schedule jitter and the scan permutations.
    pub seed: u64,
    /// Scheduler tick: how often running scans are checked (default 50 ms).
    pub tick: Duration,
    /// The part of every target this replica scans (`serve --shard i/n`; the whole by default).
    pub shard: Shard,
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Targets added.
    pub added: Vec<String>,
    /// Targets removed (their series are gone).
    pub removed: Vec<String>,
    /// Settings that changed but take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
}

#[derive(Default)]
struct Control {
    config_changed: bool,
    shutdown: bool,
}

struct Inner {
    scanner: Arc<dyn Scanner>,
    config: RwLock<Arc<Config>>,
    spaces: RwLock<Arc<BTreeMap<String, Arc<TargetSpace>>>>,
    config_path: Option<PathBuf>,
    records: RwLock<BTreeMap<String, Arc<TargetRecord>>>,
    metrics: Metrics,
    store: Option<StateStore>,
    control: Mutex<Control>,
    wake: Condvar,
    epoch: Instant,
    seed: u64,
    tick: Duration,
    /// This replica's shard of every target.
    shard: Shard,
    /// Serializes reloads (the HTTP endpoint and SIGHUP may race).
    reloading: Mutex<()>,
    /// `/probe` and the scans API.
    ondemand: OnDemand,
    /// What each target's results give the readers (targets with results only), derived once
    /// per completed scan and per reload.
    derived: RwLock<BTreeMap<String, Arc<Derived>>>,
    /// Reverse DNS names of responding hosts.
    hostnames: HostnameCache,
    /// Addresses for the `synwatch-dns` thread to look up (none after shutdown).
    dns_queue: Mutex<Option<SyncSender<Vec<IpAddr>>>>,
    /// How to build the resolver (handed in by the binary; none: no lookups).
    resolver_factory: Mutex<Option<ResolverFactory>>,
    /// The last reading of the local listeners (none while the collector is off).
    listeners: RwLock<Option<Arc<ListenerSnapshot>>>,
}

/// Batches of addresses waiting for the DNS thread at most; more are dropped (the next scan
/// asks again).
const DNS_QUEUE_BATCHES: usize = 64;

/// What `/metrics` and `/sd` read of a target's last results, computed when they change (a
/// completed scan, a reload) rather than per request: the responding hosts and open endpoints
/// take one pass over the whole space, the policy another.
#[derive(Debug, Default)]
struct Derived {
    endpoints: Endpoints,
    /// The `expect:` policy checked against the results (targets with `expect:` only).
    policy: Option<PolicyReport>,
}

impl Inner {
    /// Derives what the readers need from the results of target `name`, under the config now
    /// running (a reload may have swapped it since the caller's copy).
    fn refresh_derived(&self, name: &str) -> Option<Arc<Derived>> {
        let config = Arc::clone(&self.config.read());
        let derived = config.targets.iter().find(|target| target.name == name).and_then(|target| {
            let record = self.records.read().get(name).cloned()?;
            let results = record.results.as_ref()?;
            let policy =
                target.expect.as_ref().map(|expect| crate::policy::evaluate(expect, results, config.details_budget));
            Some(Arc::new(Derived { endpoints: results.endpoints(), policy }))
        });
        let mut all = self.derived.write();
        match &derived {
            Some(derived) => {
                all.insert(name.to_string(), Arc::clone(derived));
            }
            None => {
                all.remove(name);
            }
        }
        derived
    }

    /// Derives every target's (after a start or a reload).
    fn refresh_all_derived(&self) {
        let config = Arc::clone(&self.config.read());
        self.derived.write().retain(|name, _| config.targets.iter().any(|target| &target.name == name));
        for target in &config.targets {
            self.refresh_derived(&target.name);
        }
    }

    /// Asks the DNS thread to look up `addresses` (when names are on).
    fn request_lookups(&self, config: &Config, addresses: &[IpAddr]) {
        if !config.resolve_hostnames || addresses.is_empty() {
            return;
        }
        if let Some(queue) = self.dns_queue.lock().as_ref()
            && let Err(TrySendError::Full(_)) = queue.try_send(addresses.to_vec())
        {
            tracing::debug!("the DNS queue is full; these hosts are looked up after their next scan");
        }
    }

    /// Asks the DNS thread to look up the responding hosts of every target.
    fn request_all_lookups(&self, config: &Config) {
        let derived: Vec<Arc<Derived>> = self.derived.read().values().cloned().collect();
        for target in derived {
            self.request_lookups(config, &target.endpoints.responding);
        }
    }

    fn shutting_down(&self) -> bool {
        self.control.lock().shutdown
    }
}

/// The exporter service (see the module documentation).
pub struct Exporter {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The DNS and listeners threads.
    helpers: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Exporter").field("config_path", &self.inner.config_path).finish()
    }
}

/// Builds the target space of every configured target: this replica's shard of it. A target
/// with fewer hosts than shards has no space in some replicas; they never scan it.
fn spaces_of(config: &Config, shard: Shard) -> BTreeMap<String, Arc<TargetSpace>> {
    config
        .targets
        .iter()
        .filter_map(|target| Some((target.name.clone(), Arc::new(target.shard_space(shard)?))))
        .collect()
}

/// The names of the targets of `config` that `other` does not have.
fn target_names_missing_from(config: &Config, other: &Config) -> Vec<String> {
    config
        .targets
        .iter()
        .filter(|target| !other.targets.iter().any(|known| known.name == target.name))
        .map(|target| target.name.clone())
        .collect()
}

/// The per-port series a target asks for: its known probes when `details: true`, else none.
fn wanted_detail_series(target: &Target, record: Option<&TargetRecord>) -> u64 {
    match record.and_then(|record| record.results.as_ref()) {
        Some(results) if target.details => results.space().len() - results.counts().unknown,
        _ => 0,
    }
}

/// Detail series allowed per target within `details_budget`, in config order; `records` gives
/// the record of each configured target, in the same order.
fn detail_allotments<'a>(config: &Config, records: impl IntoIterator<Item = Option<&'a TargetRecord>>) -> Vec<u64> {
    let mut remaining = config.details_budget as u64;
    config
        .targets
        .iter()
        .zip(records)
        .map(|(target, record)| {
            let allotted = wanted_detail_series(target, record).min(remaining);
            remaining -= allotted;
            allotted
        })
        .collect()
}

impl Exporter {
    /// Starts the exporter with a loaded config: restores the state, then starts the
    /// scheduler thread.
    pub fn start(config: Config, scanner: Arc<dyn Scanner>, options: ExporterOptions) -> Exporter {
        let metrics = Metrics::new(&options.build, scanner.mode_name(), options.shard);
        metrics.reload_successful.set(1);
        metrics.reload_timestamp.set(unix_seconds(SystemTime::now()));
        for target in &config.targets {
            metrics.add_target(&target.name);
        }
        let store = options.state_dir.clone().or_else(|| config.state_dir.clone()).map(StateStore::new);
        let spaces = spaces_of(&config, options.shard);
        let mut records = BTreeMap::new();
        match &store {
            None => tracing::info!("no state_dir: results are not kept across restarts"),
            Some(store) => {
                let loaded = store.load();
                if let Some((path, reason)) = &loaded.set_aside {
                    tracing::error!(path = %path.display(), %reason, "the state file is unusable; set aside, starting with no state");
                }
                for (name, record) in loaded.records {
                    // Records of targets no longer configured are dropped; the others are
                    // expressed over the target's current space.
                    let Some(space) = spaces.get(&name) else { continue };
                    let results = record.results.map(|results| results.project(Arc::clone(space)));
                    records.insert(name, Arc::new(TargetRecord { results, last_attempt: record.last_attempt }));
                }
                tracing::info!(path = %store.path().display(), targets = records.len(), "state restored");
            }
        }
        let inner = Arc::new(Inner {
            ondemand: OnDemand::new(Arc::clone(&scanner), options.seed.rotate_left(17) ^ 0x5eed),
            scanner,
            config: RwLock::new(Arc::new(config)),
            spaces: RwLock::new(Arc::new(spaces)),
            config_path: options.config_path,
            records: RwLock::new(records),
            metrics,
            store,
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            epoch: Instant::now(),
            seed: options.seed,
            tick: options.tick,
            shard: options.shard,
            reloading: Mutex::new(()),
            derived: RwLock::new(BTreeMap::new()),
            hostnames: HostnameCache::default(),
            dns_queue: Mutex::new(None),
            resolver_factory: Mutex::new(None),
            listeners: RwLock::new(None),
        });
        inner.refresh_all_derived();
        let (dns_sender, dns_receiver) = std::sync::mpsc::sync_channel(DNS_QUEUE_BATCHES);
        *inner.dns_queue.lock() = Some(dns_sender);
        let dns_inner = Arc::clone(&inner);
        let dns = std::thread::Builder::new()
            .name("synwatch-dns".into())
            .spawn(move || dns_loop(&dns_inner, &dns_receiver))
            .expect("the DNS thread starts");
        let listeners_inner = Arc::clone(&inner);
        let listeners = std::thread::Builder::new()
            .name("synwatch-listeners".into())
            .spawn(move || listeners_loop(&listeners_inner))
            .expect("the listeners thread starts");
        let thread_inner = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("synwatch-schedule".into())
            .spawn(move || SchedulerLoop::new(thread_inner).run())
            .expect("the scheduler thread starts");
        Exporter { inner, thread: Mutex::new(Some(thread)), helpers: Mutex::new(vec![dns, listeners]) }
    }

    /// How to build the reverse DNS resolver for `resolve_hostnames` (without one, no lookups
    /// are made and addresses stand in for names).
    pub fn set_resolver_factory(&self, factory: ResolverFactory) {
        *self.inner.resolver_factory.lock() = Some(factory);
        // Hosts already known are looked up now rather than after their next scan.
        self.inner.request_all_lookups(&self.config());
    }

    /// `/sd`: the open endpoints as Prometheus HTTP service discovery JSON, or why the query
    /// was refused.
    pub fn service_discovery(&self, query: &str) -> Result<Vec<u8>, String> {
        let filter = crate::sd::parse_sd_query(query)?;
        let config = self.config();
        let derived: Vec<(&str, Arc<Derived>)> = {
            let derived = self.inner.derived.read();
            config
                .targets
                .iter()
                .filter_map(|target| {
                    derived.get(&target.name).map(|derived| (target.name.as_str(), Arc::clone(derived)))
                })
                .collect()
        };
        let targets: Vec<(&str, &[(IpAddr, u16)])> =
            derived.iter().map(|(name, derived)| (*name, derived.endpoints.open.as_slice())).collect();
        let names_on = config.resolve_hostnames;
        Ok(crate::sd::render_sd(
            &targets,
            &filter,
            |address| {
                if names_on { self.inner.hostnames.name(address) } else { None }
            },
        ))
    }

    /// Answers an on-demand request (`/probe`, `/api/v1/scans...`); blocks while a probe runs.
    pub fn ondemand(&self, request: &OnDemandRequest) -> Reply {
        let config = self.config();
        self.inner.ondemand.handle(&config, &self.inner.metrics, request)
    }

    /// Counts an on-demand request that starts or stops work, refused by the HTTP layer before
    /// it got here (authentication, or too many password checks at once).
    pub fn ondemand_refused(&self, kind: RefusalKind) {
        if let Some(outcome) = Outcome::of_refusal(kind) {
            self.inner.ondemand.refused(&self.inner.metrics, outcome);
        }
    }

    /// Counts one answered HTTP request.
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        self.inner.metrics.observe_request(route, status, seconds);
    }

    /// Counts one HTTP connection dropped by the server's admission rule.
    pub fn observe_connection_dropped(&self, reason: &str) {
        self.inner.metrics.observe_connection_dropped(reason);
    }

    /// How to start a connect() engine when a module asks for one and the engine runs SYN.
    pub fn set_connect_factory(&self, factory: ScannerFactory) {
        self.inner.ondemand.set_connect_factory(factory);
    }

    /// On-demand jobs running now.
    pub fn ondemand_inflight(&self) -> usize {
        self.inner.ondemand.inflight()
    }

    /// The config now running.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.inner.config.read())
    }

    /// A target's record.
    pub fn record(&self, name: &str) -> Option<Arc<TargetRecord>> {
        self.inner.records.read().get(name).cloned()
    }

    /// `Ok` when the engine runs, the config is loaded and the exporter is not stopping.
    pub fn ready(&self) -> Result<(), String> {
        if self.inner.control.lock().shutdown {
            return Err("shutting down".into());
        }
        // A scheduler thread that ended without a shutdown has panicked.
        if self.thread.lock().as_ref().is_none_or(JoinHandle::is_finished) {
            return Err("the scheduler has stopped".into());
        }
        if !self.inner.scanner.is_running() {
            return Err("the scan engine is not running".into());
        }
        Ok(())
    }

    /// Reloads the config file. A bad file is rejected (and counted in the reload metrics);
    /// the old config keeps running.
    pub fn reload(&self) -> Result<ReloadReport, ConfigError> {
        let _serialized = self.inner.reloading.lock();
        let metrics = &self.inner.metrics;
        let loaded = match &self.inner.config_path {
            Some(path) => config::load(path),
            None => config::parse(config::EMBEDDED_DEFAULT, "<embedded>"),
        };
        let new = match loaded {
            Ok(new) => new,
            Err(error) => {
                metrics.reload_successful.set(0);
                tracing::error!(%error, "config reload rejected; the previous config keeps running");
                return Err(error);
            }
        };
        let old = self.config();
        let mut needs_restart = Vec::new();
        if new.listen != old.listen {
            needs_restart.push("listen");
        }
        if new.state_dir != old.state_dir {
            needs_restart.push("state_dir");
        }
        if new.engine.mode != old.engine.mode
            || new.engine.interface != old.engine.interface
            || new.engine.source_addresses != old.engine.source_addresses
        {
            needs_restart.push("engine (mode, interface, source_addresses)");
        }
        if new.engine.max_rate != old.engine.max_rate {
            self.inner.scanner.set_rate(new.engine.max_rate);
        }
        let added = target_names_missing_from(&new, &old);
        let removed = target_names_missing_from(&old, &new);
        let spaces = spaces_of(&new, self.inner.shard);
        {
            let mut records = self.inner.records.write();
            records.retain(|name, _| spaces.contains_key(name));
            for (name, record) in records.iter_mut() {
                let space = &spaces[name];
                if let Some(results) = &record.results
                    && **results.space() != **space
                {
                    let projected = results.project(Arc::clone(space));
                    *record = Arc::new(TargetRecord { results: Some(projected), last_attempt: record.last_attempt });
                }
            }
            *self.inner.spaces.write() = Arc::new(spaces);
            *self.inner.config.write() = Arc::new(new);
        }
        self.inner.refresh_all_derived();
        for name in &removed {
            metrics.remove_target(name);
        }
        for name in &added {
            metrics.add_target(name);
        }
        metrics.reload_successful.set(1);
        metrics.reload_timestamp.set(unix_seconds(SystemTime::now()));
        for setting in &needs_restart {
            tracing::warn!(setting, "changed in the config; it takes effect after a restart");
        }
        tracing::info!(?added, ?removed, "config reloaded");
        self.inner.control.lock().config_changed = true;
        self.inner.wake.notify_all();
        Ok(ReloadReport { added, removed, needs_restart })
    }

    /// Renders `/metrics` into `output`.
    pub fn render_metrics(&self, output: &mut Vec<u8>) {
        let config = self.config();
        let records: Vec<Option<Arc<TargetRecord>>> = {
            let records = self.inner.records.read();
            config.targets.iter().map(|target| records.get(&target.name).cloned()).collect()
        };
        let allotments = detail_allotments(&config, records.iter().map(Option::as_deref));
        let derived: Vec<Option<Arc<Derived>>> = {
            let derived = self.inner.derived.read();
            config.targets.iter().map(|target| derived.get(&target.name).cloned()).collect()
        };
        // The violation series share details_budget in config order, like the port series.
        let mut violations_left = config.details_budget as u64;
        let views: Vec<TargetView<'_>> = config
            .targets
            .iter()
            .zip(&records)
            .zip(allotments)
            .zip(&derived)
            .map(|(((target, record), detail_series), derived)| {
                let policy = derived.as_ref().and_then(|derived| derived.policy.as_ref());
                let violation_series = policy.map_or(0, |policy| (policy.violations.len() as u64).min(violations_left));
                violations_left -= violation_series;
                TargetView {
                    name: &target.name,
                    results: record.as_ref().and_then(|record| record.results.as_ref()),
                    last_attempt: record.as_ref().and_then(|record| record.last_attempt),
                    detail_series,
                    interval_seconds: target.settings.interval.as_secs_f64(),
                    policy,
                    violation_series,
                    responding: derived.as_ref().map_or(&[], |derived| derived.endpoints.responding.as_slice()),
                }
            })
            .collect();
        let listeners = self.inner.listeners.read().clone();
        let host = HostView {
            hostnames: config.resolve_hostnames.then_some(&self.inner.hostnames),
            host_info_limit: config.details_budget as u64,
            listeners: listeners.as_deref(),
        };
        self.inner.metrics.render(&self.inner.scanner.counters(), &views, &host, output);
    }

    /// The landing page (HTML): targets, their last scan, links.
    pub fn landing_page(&self) -> String {
        let config = self.config();
        let mut page = String::from(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>synwatch</title></head><body>\n<h1>synwatch</h1>\n\
             <p><a href=\"/metrics\">/metrics</a> · <a href=\"/sd\">/sd</a> · <a href=\"/-/healthy\">/-/healthy</a> · <a href=\"/-/ready\">/-/ready</a></p>\n\
             <table border=\"1\" cellpadding=\"4\"><tr><th>target</th><th>addresses</th><th>ports</th><th>interval</th>\
             <th>last scan</th><th>result</th><th>open</th><th>closed</th><th>filtered</th></tr>\n",
        );
        for target in &config.targets {
            let record = self.record(&target.name);
            let addresses: Vec<String> = target.addresses.iter().map(ToString::to_string).collect();
            let (when, result) = match record.as_ref().and_then(|record| record.last_attempt) {
                Some(attempt) => (
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs_f64(attempt.timestamp.max(0.0)),
                    )
                    .to_string(),
                    if attempt.success { "ok" } else { "failed" },
                ),
                None => ("not yet".to_string(), "-"),
            };
            let counts = record.as_ref().and_then(|record| record.results.as_ref()).map(ScanResults::counts);
            let count = |value: Option<u64>| value.map_or("-".to_string(), |value| value.to_string());
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{when}</td><td>{result}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html_escape(&target.name),
                html_escape(&addresses.join(", ")),
                html_escape(&target.ports.to_string()),
                humantime::format_duration(target.settings.interval),
                count(counts.map(|counts| counts.open)),
                count(counts.map(|counts| counts.closed)),
                count(counts.map(|counts| counts.filtered)),
            );
        }
        page.push_str("</table>\n");
        if config.targets.is_empty() {
            // A probe-only or listeners-only exporter: say what it does instead of an empty table.
            let mut roles = Vec::new();
            if config.ondemand.enabled {
                roles.push("answers <a href=\"/probe\">/probe</a> and the scans API on request");
            }
            if config.listeners.enabled {
                roles.push("watches this host's own listening sockets");
            }
            let _ = writeln!(page, "<p>No background targets: this exporter {}.</p>", roles.join(" and "));
        }
        page.push_str("</body></html>\n");
        page
    }

    /// Stops the scheduler: cancels running scans, waits for them at most `grace`, saves the
    /// state. Idempotent.
    pub fn shutdown(&self, grace: Duration) {
        {
            let mut control = self.inner.control.lock();
            control.shutdown = true;
        }
        self.inner.wake.notify_all();
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            let deadline = Instant::now() + grace + Duration::from_millis(500);
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!("the scheduler did not stop in time; leaving it behind");
            }
        }
        self.inner.dns_queue.lock().take();
        let helpers = std::mem::take(&mut *self.helpers.lock());
        let deadline = Instant::now() + Duration::from_millis(1000);
        for helper in helpers {
            while !helper.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if helper.is_finished() {
                let _ = helper.join();
            }
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(1));
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

struct Running {
    name: String,
    scan: Box<dyn RunningScan>,
    space: Arc<TargetSpace>,
    started: Instant,
}

struct SchedulerLoop {
    inner: Arc<Inner>,
    schedule: Schedule,
    running: Vec<Running>,
    scans_started: u64,
}

impl SchedulerLoop {
    fn new(inner: Arc<Inner>) -> SchedulerLoop {
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
        let targets: Vec<ScheduledTarget> = {
            let records = self.inner.records.read();
            let spaces = Arc::clone(&self.inner.spaces.read());
            config
                .targets
                .iter()
                // A target whose shard is empty in this replica is not scheduled at all.
                .filter(|target| spaces.contains_key(&target.name))
                .map(|target| {
                    // After a restart, a target scanned recently waits for the rest of its interval.
                    let first_due =
                        records.get(&target.name).and_then(|record| record.last_attempt).and_then(|attempt| {
                            let age = Duration::from_secs_f64((now_unix - attempt.timestamp).max(0.0));
                            target.settings.interval.checked_sub(age).map(|left| now + left)
                        });
                    ScheduledTarget { name: target.name.clone(), interval: target.settings.interval, first_due }
                })
                .collect()
        };
        for name in self.schedule.set_targets(&targets, now) {
            if let Some(running) = self.running.iter().find(|running| running.name == name) {
                running.scan.cancel();
            }
        }
        if config.resolve_hostnames {
            self.inner.request_all_lookups(&config);
        } else {
            self.inner.hostnames.clear();
            self.inner.metrics.dns_cache_entries.set(0);
        }
    }

    fn run(mut self) {
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
        let config = Arc::clone(&self.inner.config.read());
        let space = self.inner.spaces.read().get(&name).cloned();
        let (Some(target), Some(space)) = (config.targets.iter().find(|target| target.name == name), space) else {
            self.schedule.finished(&name, self.now());
            return;
        };
        self.scans_started += 1;
        let settings = JobSettings {
            retries: target.settings.retries,
            retry_gap: target.settings.wait.max(Duration::from_millis(100)),
            wait: target.settings.wait,
            seed: self.inner.seed ^ self.scans_started.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            shard: Shard::WHOLE,
        };
        let started = Instant::now();
        match self.inner.scanner.start(ScanOrder::background(Arc::clone(&space), settings, target.settings.timeout)) {
            Ok(scan) => {
                tracing::debug!(target = %name, probes = space.len(), "scan started");
                self.running.push(Running { name, scan, space, started });
            }
            Err(error) => {
                tracing::warn!(target = %name, %error, "scan could not start");
                self.record_attempt(&name, started, None);
                self.schedule.finished(&name, self.now());
            }
        }
    }

    fn collect_finished(&mut self) {
        let mut index = 0;
        while index < self.running.len() {
            let Some(reason) = self.running[index].scan.finished() else {
                index += 1;
                continue;
            };
            let running = self.running.swap_remove(index);
            let success = matches!(reason, FinishReason::AllAnswered | FinishReason::WaitOver);
            if success {
                let results =
                    ScanResults::from_fn(Arc::clone(&running.space), |probe| running.scan.state(probe).finalized());
                self.record_attempt(&running.name, running.started, Some(results));
            } else {
                tracing::warn!(target = %running.name, ?reason, "scan did not complete; the previous results stay");
                self.record_attempt(&running.name, running.started, None);
            }
            self.schedule.finished(&running.name, self.now());
        }
    }

    /// Folds a scan's end into the target's record: its attempt, and when it completed its
    /// results, the changes since the previous results and the details budget.
    fn record_attempt(&mut self, name: &str, started: Instant, results: Option<ScanResults>) {
        let metrics = &self.inner.metrics;
        let duration = started.elapsed();
        let success = results.is_some();
        let attempt = ScanAttempt {
            timestamp: unix_seconds(SystemTime::now()),
            duration_seconds: duration.as_secs_f64(),
            success,
        };
        let config = Arc::clone(&self.inner.config.read());
        if !config.targets.iter().any(|target| target.name == name) {
            return; // Removed by a reload while it ran: its series are already gone.
        }
        metrics.scan_duration.with_label_values(&[name]).observe(duration.as_secs_f64());
        metrics.scans.with_label_values(&[name, if success { "success" } else { "failure" }]).inc();
        let current_space = self.inner.spaces.read().get(name).cloned();
        let snapshot = {
            let mut records = self.inner.records.write();
            let previous = records.get(name).cloned();
            let results = match (results, current_space) {
                (Some(results), Some(space)) => Some(results.project(space)),
                (results, _) => results,
            };
            let results = match results {
                Some(results) => {
                    if let Some(before) = previous.as_ref().and_then(|record| record.results.as_ref()) {
                        let changes = results.changes_since(before);
                        metrics.port_changes.with_label_values(&[name, "opened"]).inc_by(changes.opened);
                        metrics.port_changes.with_label_values(&[name, "closed"]).inc_by(changes.closed);
                        if changes.opened + changes.closed > 0 {
                            tracing::info!(target = %name, opened = changes.opened, closed = changes.closed, "ports changed");
                        }
                    }
                    Some(results)
                }
                None => previous.as_ref().and_then(|record| record.results.clone()),
            };
            records.insert(name.to_string(), Arc::new(TargetRecord { results, last_attempt: Some(attempt) }));
            if success && let Some(position) = config.targets.iter().position(|target| target.name == name) {
                let wanted = wanted_detail_series(&config.targets[position], records.get(name).map(|record| &**record));
                let allotments = detail_allotments(
                    &config,
                    config.targets.iter().map(|target| records.get(&target.name).map(|record| &**record)),
                );
                if wanted > allotments[position] {
                    let refused = wanted - allotments[position];
                    metrics.details_dropped.inc_by(refused);
                    tracing::warn!(target = %name, refused, budget = config.details_budget, "details_budget reached");
                }
            }
            records.clone()
        };
        if success && let Some(derived) = self.inner.refresh_derived(name) {
            self.inner.request_lookups(&config, &derived.endpoints.responding);
        }
        tracing::info!(target = %name, success, seconds = duration.as_secs_f64(), "scan ended");
        self.save(&snapshot);
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
            running.scan.cancel();
        }
        self.inner.ondemand.cancel_all();
        let deadline = Instant::now() + Duration::from_millis(500);
        while self.running.iter().any(|running| running.scan.finished().is_none()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.running.clear();
        let records = self.inner.records.read().clone();
        self.save(&records);
        tracing::info!("scheduler stopped; state saved");
    }
}

/// The `synwatch-dns` thread: looks up the addresses the scheduler hands over, with the
/// resolver the binary's factory builds for the current `dns:` section (rebuilt when it
/// changes), in chunks of `dns.concurrency`, and stores the answers in the cache.
fn dns_loop(inner: &Inner, queue: &Receiver<Vec<IpAddr>>) {
    let mut resolver: Option<(crate::config::DnsSection, Arc<dyn ReverseResolver>)> = None;
    let mut factory_missing_logged = false;
    loop {
        let batch = match queue.recv_timeout(Duration::from_millis(250)) {
            Ok(batch) => batch,
            Err(RecvTimeoutError::Timeout) => {
                if inner.shutting_down() {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let config = Arc::clone(&inner.config.read());
        if !config.resolve_hostnames {
            continue;
        }
        if resolver.as_ref().is_none_or(|(section, _)| *section != config.dns) {
            let built = match inner.resolver_factory.lock().as_ref() {
                Some(factory) => factory(&config.dns),
                None => {
                    // The binary hands the factory in just after the start; a batch sent before
                    // that is asked for again by `set_resolver_factory`.
                    if !factory_missing_logged && inner.epoch.elapsed() > Duration::from_secs(5) {
                        tracing::warn!(
                            "resolve_hostnames is on but this exporter has no resolver; names stay addresses"
                        );
                        factory_missing_logged = true;
                    }
                    continue;
                }
            };
            match built {
                Ok(built) => resolver = Some((config.dns.clone(), built)),
                Err(error) => {
                    tracing::error!(%error, "cannot set up the DNS resolver; names stay addresses");
                    continue;
                }
            }
        }
        let Some((_, active)) = resolver.as_ref() else { continue };
        let due = inner.hostnames.due(batch, Instant::now());
        for chunk in due.chunks(config.dns.concurrency.max(1)) {
            if inner.shutting_down() {
                return;
            }
            for (address, lookup) in active.reverse(chunk) {
                inner.metrics.dns_lookups.with_label_values(&[lookup.label()]).inc();
                if let crate::hostnames::ReverseLookup::Failed(error) = &lookup {
                    tracing::debug!(%address, %error, "reverse lookup failed");
                }
                inner.hostnames.store(address, &lookup, Instant::now(), &config.dns);
            }
            inner.metrics.dns_cache_entries.set(inner.hostnames.len() as i64);
        }
    }
}

/// The `synwatch-listeners` thread: reads this host's listening sockets every
/// `listeners.interval` while the collector is on (see [`crate::listeners`]).
fn listeners_loop(inner: &Inner) {
    let mut tracker = ListenerTracker::default();
    #[cfg(target_os = "linux")]
    let mut source = crate::listeners::ProcSource::default();
    let mut next_reading = Instant::now();
    loop {
        let config = Arc::clone(&inner.config.read());
        let section = &config.listeners;
        if !section.enabled {
            if inner.listeners.write().take().is_some() {
                tracker.clear();
            }
        } else if Instant::now() >= next_reading {
            #[cfg(target_os = "linux")]
            {
                use crate::listeners::ListenerSource as _;
                match source.read(section) {
                    Ok(reading) => {
                        let changes = tracker.update(&reading, section, Instant::now());
                        let metrics = &inner.metrics;
                        for (change, count) in
                            [("new", changes.new), ("down", changes.down), ("recovered", changes.recovered)]
                        {
                            metrics.listener_changes.with_label_values(&[change]).inc_by(count);
                        }
                        metrics.listener_series_dropped.inc_by(changes.dropped);
                        if changes.down > 0 || changes.recovered > 0 {
                            tracing::info!(
                                down = changes.down,
                                recovered = changes.recovered,
                                new = changes.new,
                                "local listeners changed"
                            );
                        }
                        *inner.listeners.write() = Some(Arc::new(tracker.snapshot(&reading, section)));
                    }
                    Err(error) => {
                        inner.metrics.listener_read_errors.inc();
                        tracing::warn!(%error, "cannot read the local listeners");
                    }
                }
            }
            next_reading = Instant::now() + section.interval;
        }
        let mut control = inner.control.lock();
        if control.shutdown {
            return;
        }
        let sleep = next_reading
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(500));
        inner.wake.wait_for(&mut control, sleep);
        if control.shutdown {
            return;
        }
    }
}
