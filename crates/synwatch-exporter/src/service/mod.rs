//! The running exporter: the scheduler thread that drives scans on the shared engine, folds
//! their results into the target table, counts changes and saves the state; plus reload,
//! readiness, the landing page and the `/metrics` text for the HTTP crate to serve.
//!
//! The engine is reached through [`crate::scanner::Scanner`] (implemented for
//! `synwatch_io::Engine` and, in the tests, for a simulated network).
//!
//! * `targets`: the target table (per target: config, space, record, derived views) and the
//!   pure fold of a finished scan into a record.
//! * `scheduling`: the scheduler thread; `dns_thread`, `listeners_thread` and
//!   `history_thread` (the exposure history's writer): the helpers.
//! * `status_page`: the status page at `/`.
//!
//! Architecture invariant: the target table is replaced only by the scheduler thread (after a
//! scan) and by [`Exporter::reload`] (which builds it anew for the new config, keeping and
//! re-projecting the records of kept targets), serialized by one lock; readers (`/metrics`,
//! `/sd`, the landing page) clone one `Arc`, so a scrape never waits for a scan and a scan
//! never waits for a scrape.

mod dns_thread;
mod files_thread;
mod history_thread;
mod listeners_thread;
mod scheduling;
mod status_page;
mod targets;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex, RwLock};
use synwatch_engine::Shard;
use synwatch_http::site::{HistoryRequest, OnDemandRequest, Refusal, RefusalKind, Reply};

use crate::config::{self, Config, ConfigError, DnsSection};
use crate::hostnames::{HostnameCache, Resolver, ResolverFactory};
use crate::listeners::ListenerSnapshot;
use crate::metrics::Outcome;
use crate::metrics::{BuildInfo, HostView, Metrics, TargetView};
use crate::ondemand::{OnDemand, ScannerFactory};
use crate::state::{StateStore, TargetRecord, unix_seconds};

use crate::scanner::Scanner;
use history_thread::HistoryEvent;
use targets::{TargetTable, detail_allotments};

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
    /// Every configured target with its space, record and derived views.
    targets: RwLock<Arc<TargetTable>>,
    config_path: Option<PathBuf>,
    metrics: Metrics,
    store: Option<StateStore>,
    control: Mutex<Control>,
    wake: Condvar,
    epoch: Instant,
    seed: u64,
    tick: Duration,
    /// This replica's shard of every target.
    shard: Shard,
    /// Serializes the replacements of the target table: reloads (the HTTP endpoint and SIGHUP
    /// may race) and the scheduler's folding of a finished scan.
    reloading: Mutex<()>,
    /// `/probe` and the scans API.
    ondemand: OnDemand,
    /// Reverse DNS names of responding hosts.
    hostnames: HostnameCache,
    /// Addresses for the `synwatch-dns` thread to look up (none after shutdown).
    dns_queue: Mutex<Option<SyncSender<Vec<IpAddr>>>>,
    /// How to build the resolver (handed in by the binary; none: no lookups).
    resolver_factory: Mutex<Option<ResolverFactory>>,
    /// The resolver the factory built, and the `dns:` section it was built for.
    resolver: Mutex<Option<(DnsSection, Arc<dyn Resolver>)>>,
    /// The last reading of the local listeners (none while the collector is off).
    listeners: RwLock<Option<Arc<ListenerSnapshot>>>,
    /// Events for the `synwatch-history` thread (none after shutdown).
    history_queue: Mutex<Option<Sender<HistoryEvent>>>,
    /// The exposure history database, when there is one (its readers open it read-only).
    history_path: Option<PathBuf>,
    /// The readers' connection, opened at the first reading.
    history_reader: Mutex<Option<synwatch_history::HistoryStore>>,
}

/// How long a shutdown waits for the history thread's last writes.
const HISTORY_SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Opens the exposure history in `state_dir` when there is one and `history.enabled`; a file
/// that cannot be used is set aside (logged, as a corrupt state file is) and one that cannot
/// be opened at all leaves the exporter without a history (logged and counted), never stopped.
fn open_history(
    state_dir: Option<&std::path::Path>,
    config: &Config,
    metrics: &Metrics,
) -> Option<synwatch_history::HistoryStore> {
    let state_dir = state_dir?;
    if !config.history.enabled {
        tracing::info!("history.enabled is false: no exposure history is kept");
        return None;
    }
    let path = state_dir.join(synwatch_history::HISTORY_FILE);
    let opened = std::fs::create_dir_all(state_dir)
        .map_err(|error| error.to_string())
        .and_then(|()| synwatch_history::HistoryStore::open(&path).map_err(|error| error.to_string()));
    match opened {
        Ok(opened) => {
            if let Some((aside, reason)) = &opened.set_aside {
                tracing::error!(path = %aside.display(), %reason, "the history database is unusable; set aside, starting a new history");
            }
            tracing::info!(path = %path.display(), migrated_from = opened.migrated_from, "exposure history opened");
            metrics.history.database_bytes.set(opened.store.size_bytes() as i64);
            Some(opened.store)
        }
        Err(error) => {
            metrics.history.write_failures.inc();
            tracing::error!(path = %path.display(), %error, "cannot open the exposure history; running without one");
            None
        }
    }
}

/// Batches of addresses waiting for the DNS thread at most; more are dropped (the next scan
/// asks again).
const DNS_QUEUE_BATCHES: usize = 64;

impl Inner {
    /// Reloads the config file (see [`Exporter::reload`]).
    fn reload(&self) -> Result<ReloadReport, ConfigError> {
        let _serialized = self.reloading.lock();
        let metrics = &self.metrics;
        let loaded = match &self.config_path {
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
        let old = Arc::clone(&self.config.read());
        let mut needs_restart = Vec::new();
        if new.listen != old.listen {
            needs_restart.push("listen");
        }
        if new.state_dir != old.state_dir {
            needs_restart.push("state_dir");
        }
        if new.history.enabled != old.history.enabled {
            needs_restart.push("history.enabled");
        }
        if new.engine.mode != old.engine.mode
            || new.engine.interface != old.engine.interface
            || new.engine.source_addresses != old.engine.source_addresses
        {
            needs_restart.push("engine (mode, interface, source_addresses)");
        }
        if new.engine.max_rate != old.engine.max_rate {
            self.scanner.set_rate(new.engine.max_rate);
        }
        let added = target_names_missing_from(&new, &old);
        let removed = target_names_missing_from(&old, &new);
        let table = TargetTable::build(&new, self.shard, &self.targets().records());
        *self.targets.write() = Arc::new(table);
        for name in &removed {
            metrics.remove_target(name);
        }
        for name in &added {
            metrics.add_target(name, new.targets.iter().any(|target| target.name == *name && target.is_named()));
        }
        *self.config.write() = Arc::new(new);
        metrics.reload_successful.set(1);
        metrics.reload_timestamp.set(unix_seconds(SystemTime::now()));
        for setting in &needs_restart {
            tracing::warn!(setting, "changed in the config; it takes effect after a restart");
        }
        tracing::info!(?added, ?removed, "config reloaded");
        self.control.lock().config_changed = true;
        self.wake.notify_all();
        Ok(ReloadReport { added, removed, needs_restart })
    }

    /// The target table now.
    fn targets(&self) -> Arc<TargetTable> {
        Arc::clone(&self.targets.read())
    }

    /// The resolver for `dns`, built by the binary's factory (again when the section changed).
    fn resolver(&self, dns: &DnsSection) -> Result<Arc<dyn Resolver>, String> {
        let mut cached = self.resolver.lock();
        if let Some((section, resolver)) = cached.as_ref()
            && section == dns
        {
            return Ok(Arc::clone(resolver));
        }
        let factory = self.resolver_factory.lock();
        let Some(factory) = factory.as_ref() else {
            return Err("this exporter has no DNS resolver yet".into());
        };
        let built = factory(dns)?;
        *cached = Some((dns.clone(), Arc::clone(&built)));
        Ok(built)
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
        for entry in self.targets().entries() {
            self.request_lookups(config, entry.responding());
        }
    }

    /// Runs `read` on the history readers' connection (opened at the first reading); `None`
    /// when there is no history.
    pub(super) fn read_history<T>(
        &self,
        read: impl FnOnce(&synwatch_history::HistoryStore) -> Result<T, synwatch_history::HistoryError>,
    ) -> Option<Result<T, synwatch_history::HistoryError>> {
        let path = self.history_path.as_ref()?;
        let mut reader = self.history_reader.lock();
        let store = match reader.take() {
            Some(store) => store,
            None => match synwatch_history::HistoryStore::open_read_only(path) {
                Ok(store) => store,
                Err(error) => return Some(Err(error)),
            },
        };
        let answer = read(&store);
        *reader = Some(store);
        Some(answer)
    }

    /// Hands an event to the history thread (after shutdown, nothing is written).
    fn tell_history(&self, event: HistoryEvent) {
        if let Some(queue) = self.history_queue.lock().as_ref() {
            let _ = queue.send(event);
        }
    }

    fn shutting_down(&self) -> bool {
        self.control.lock().shutdown
    }
}

/// The exporter service (see the module documentation).
pub struct Exporter {
    inner: Arc<Inner>,
    thread: Mutex<Option<Worker>>,
    /// The DNS and listeners threads.
    helpers: Mutex<Vec<Worker>>,
    /// The history thread (it writes what it was given before it ends).
    history: Mutex<Option<Worker>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Exporter").field("config_path", &self.inner.config_path).finish()
    }
}

/// A thread of the exporter, and the end of its closure as an event: the thread holds the
/// sending half of a channel, which closes when the closure returns or panics, so a shutdown
/// waits on the channel instead of polling the thread.
struct Worker {
    handle: JoinHandle<()>,
    ended: Receiver<()>,
}

impl Worker {
    fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> Worker {
        let (ending, ended) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ending = ending;
                work();
            })
            .unwrap_or_else(|error| panic!("the {name} thread cannot start: {error}"));
        Worker { handle, ended }
    }

    fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits at most `timeout` for the thread to end and joins it; false when it did not end.
    fn join_within(self, timeout: Duration) -> bool {
        match self.ended.recv_timeout(timeout) {
            Err(RecvTimeoutError::Timeout) => false,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = self.handle.join();
                true
            }
        }
    }
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

impl Exporter {
    /// Starts the exporter with a loaded config: restores the state, then starts the
    /// scheduler thread.
    pub fn start(config: Config, scanner: Arc<dyn Scanner>, options: ExporterOptions) -> Exporter {
        let metrics = Metrics::new(&options.build, scanner.mode_name(), options.shard);
        metrics.reload_successful.set(1);
        metrics.reload_timestamp.set(unix_seconds(SystemTime::now()));
        for target in &config.targets {
            metrics.add_target(&target.name, target.is_named());
        }
        let state_dir = options.state_dir.clone().or_else(|| config.state_dir.clone());
        let store = state_dir.clone().map(StateStore::new);
        let mut records = BTreeMap::new();
        match &store {
            None => tracing::info!("no state_dir: results are not kept across restarts"),
            Some(store) => {
                let loaded = store.load();
                if let Some((path, reason)) = &loaded.set_aside {
                    tracing::error!(path = %path.display(), %reason, "the state file is unusable; set aside, starting with no state");
                }
                records = loaded.records.into_iter().map(|(name, record)| (name, Arc::new(record))).collect();
            }
        }
        // Records of targets no longer configured are dropped; the others are expressed over
        // the target's current space.
        let table = TargetTable::build(&config, options.shard, &records);
        if let Some(store) = &store {
            let restored = table.entries().iter().filter(|entry| entry.record.is_some()).count();
            tracing::info!(path = %store.path().display(), targets = restored, "state restored");
        }
        let history = open_history(state_dir.as_deref(), &config, &metrics);
        let history_path = history.as_ref().map(|store| store.path().to_path_buf());
        let inner = Arc::new(Inner {
            ondemand: OnDemand::new(Arc::clone(&scanner), options.seed.rotate_left(17) ^ 0x5eed),
            scanner,
            config: RwLock::new(Arc::new(config)),
            targets: RwLock::new(Arc::new(table)),
            config_path: options.config_path,
            metrics,
            store,
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            epoch: Instant::now(),
            seed: options.seed,
            tick: options.tick,
            shard: options.shard,
            reloading: Mutex::new(()),
            hostnames: HostnameCache::default(),
            dns_queue: Mutex::new(None),
            resolver_factory: Mutex::new(None),
            resolver: Mutex::new(None),
            listeners: RwLock::new(None),
            history_queue: Mutex::new(None),
            history_path,
            history_reader: Mutex::new(None),
        });
        let (history_sender, history_receiver) = std::sync::mpsc::channel();
        // The first event: make the database agree with the restored results.
        let restored: Vec<(String, Arc<TargetRecord>)> = inner
            .targets()
            .entries()
            .iter()
            .filter_map(|entry| Some((entry.target.name.clone(), Arc::clone(entry.record.as_ref()?))))
            .collect();
        let _ = history_sender.send(HistoryEvent::Reconcile(restored));
        *inner.history_queue.lock() = Some(history_sender);
        let history_inner = Arc::clone(&inner);
        let history = Worker::spawn("synwatch-history", move || {
            history_thread::history_loop(&history_inner, history, &history_receiver);
        });
        let (dns_sender, dns_receiver) = std::sync::mpsc::sync_channel(DNS_QUEUE_BATCHES);
        *inner.dns_queue.lock() = Some(dns_sender);
        let dns_inner = Arc::clone(&inner);
        let dns = Worker::spawn("synwatch-dns", move || dns_thread::dns_loop(&dns_inner, &dns_receiver));
        let files_inner = Arc::clone(&inner);
        let files = Worker::spawn("synwatch-files", move || files_thread::files_loop(&files_inner));
        let listeners_inner = Arc::clone(&inner);
        let listeners = Worker::spawn("synwatch-listeners", move || listeners_thread::listeners_loop(&listeners_inner));
        let thread_inner = Arc::clone(&inner);
        let thread = Worker::spawn("synwatch-schedule", move || scheduling::SchedulerLoop::new(thread_inner).run());
        Exporter {
            inner,
            thread: Mutex::new(Some(thread)),
            helpers: Mutex::new(vec![dns, listeners, files]),
            history: Mutex::new(Some(history)),
        }
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
        let table = self.inner.targets();
        let targets: Vec<crate::sd::SdTarget<'_>> = table
            .entries()
            .iter()
            .filter_map(|entry| {
                let endpoints = &entry.derived.as_ref()?.endpoints;
                Some(crate::sd::SdTarget {
                    name: entry.target.name.as_str(),
                    open: &endpoints.open,
                    suspect: &endpoints.suspect,
                    names: entry.record.as_ref().and_then(|record| record.names.as_ref()),
                    labels: &entry.target.labels,
                })
            })
            .collect();
        let names_on = config.resolve_hostnames;
        Ok(crate::sd::render_sd(
            &targets,
            &filter,
            |address| {
                if names_on { self.inner.hostnames.name(address) } else { None }
            },
        ))
    }

    /// Answers a reading of the exposure history (`/api/v1/changes`, `/api/v1/endpoints`), with
    /// the next page's cursor.
    pub fn history(&self, request: &HistoryRequest) -> (Reply, Option<String>) {
        if self.inner.history_path.is_none() {
            let reason = "no exposure history here: it needs state_dir (and history.enabled)";
            return (Reply::Refused(Refusal::new(RefusalKind::Disabled, reason)), None);
        }
        let parsed = match crate::history_api::parse_reading(request, unix_seconds(SystemTime::now())) {
            Ok(parsed) => parsed,
            Err(reason) => return (Reply::Refused(Refusal::new(RefusalKind::BadRequest, reason)), None),
        };
        match self.inner.read_history(|store| Ok(crate::history_api::answer(store, &parsed))) {
            Some(Ok(answer)) => answer,
            Some(Err(error)) => {
                tracing::error!(%error, "cannot read the exposure history");
                (Reply::Refused(Refusal::new(RefusalKind::Failed, error.to_string())), None)
            }
            None => (Reply::Refused(Refusal::new(RefusalKind::Disabled, "no exposure history here")), None),
        }
    }

    /// Answers an on-demand request (`/probe`, `/api/v1/scans...`); blocks while a probe runs.
    pub fn ondemand(&self, request: &OnDemandRequest) -> Reply {
        let config = self.config();
        let resolve = |names: &[synwatch_engine::HostName]| match self.inner.resolver(&config.dns) {
            Ok(resolver) => crate::names::resolve_names(names, resolver.as_ref()),
            Err(detail) => crate::names::Resolution::Failed {
                name: names[0].clone(),
                reason: crate::names::ResolveFailure::Error,
                detail,
            },
        };
        self.inner.ondemand.handle(&config, &self.inner.metrics, request, &resolve)
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
        self.inner.targets().get(name)?.record.clone()
    }

    /// `Ok` when the engine runs, the config is loaded and the exporter is not stopping.
    pub fn ready(&self) -> Result<(), String> {
        if self.inner.control.lock().shutdown {
            return Err("shutting down".into());
        }
        // A scheduler thread that ended without a shutdown has panicked.
        if self.thread.lock().as_ref().is_none_or(Worker::is_finished) {
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
        self.inner.reload()
    }

    /// Renders `/metrics` into `output`.
    pub fn render_metrics(&self, output: &mut Vec<u8>) {
        let config = self.config();
        let table = self.inner.targets();
        let allotments = detail_allotments(&table, config.details_budget);
        // The violation series share details_budget in config order, like the port series.
        let mut violations_left = config.details_budget as u64;
        let label_texts: Vec<String> = table
            .entries()
            .iter()
            .map(|entry| crate::metrics::target_label_text(&entry.target.name, &entry.target.labels))
            .collect();
        let views: Vec<TargetView<'_>> = table
            .entries()
            .iter()
            .zip(allotments)
            .zip(&label_texts)
            .map(|((entry, (detail_series, _)), label_text)| {
                let policy = entry.derived.as_ref().and_then(|derived| derived.policy.as_ref());
                let violation_series = policy.map_or(0, |policy| (policy.violations.len() as u64).min(violations_left));
                violations_left -= violation_series;
                TargetView {
                    name: &entry.target.name,
                    label_text,
                    names: entry.record.as_ref().and_then(|record| record.names.as_ref()),
                    results: entry.record.as_ref().and_then(|record| record.results.as_ref()),
                    last_attempt: entry.record.as_ref().and_then(|record| record.last_attempt),
                    detail_series,
                    interval_seconds: entry.target.settings.interval.as_secs_f64(),
                    policy,
                    violation_series,
                    responding: entry.responding(),
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

    /// The status page (`/`, HTML): the engine, the targets and the latest changes; with
    /// `target=NAME`, that target's open endpoints and changes.
    pub fn status_page(&self, query: &str) -> Reply {
        status_page::answer(&self.inner, query)
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
        if let Some(thread) = thread
            && !thread.join_within(grace + Duration::from_millis(500))
        {
            tracing::warn!("the scheduler did not stop in time; leaving it behind");
        }
        self.inner.dns_queue.lock().take();
        let helpers = std::mem::take(&mut *self.helpers.lock());
        let deadline = Instant::now() + Duration::from_millis(1000);
        for helper in helpers {
            helper.join_within(deadline.saturating_duration_since(Instant::now()));
        }
        // The scheduler has handed over its last scan: the history thread writes what it has
        // and ends.
        self.inner.history_queue.lock().take();
        if let Some(history) = self.history.lock().take()
            && !history.join_within(HISTORY_SHUTDOWN_WAIT)
        {
            tracing::warn!("the history thread did not finish its writes in time; the next start reconciles");
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(1));
    }
}
