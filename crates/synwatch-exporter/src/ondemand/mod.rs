//! On-demand scans: `/probe` (the blackbox_exporter multi-target contract) and the scans API
//! (`/api/v1/scans...`), with every guard in front of them. Both are off unless
//! `ondemand.enabled` is true; when on, every request passes, in this order:
//!
//! (Statuses below are what the HTTP crate makes of each [`RefusalKind`].)
//!
//! 1. authentication (in the HTTP crate, from the web config file: 401 `unauthorized`);
//! 2. the client's address (`X-Forwarded-For` believed only from `trusted_proxies`) against
//!    `allow_clients` (403 `forbidden`);
//! 3. the rate limits, per client and global, for requests that start or stop work (429
//!    `rate_limited` with `Retry-After`);
//! 4. the parameters (400 `bad_request`);
//! 5. every requested address against `allow_targets`: a target outside is refused whole,
//!    before any packet is sent (403 `forbidden`). Names are resolved once, here, and **every**
//!    address found is checked: one outside refuses the whole request (a name rebound to an
//!    address outside gets no probe), and the scan is over exactly the addresses checked. A
//!    name that does not resolve is a 400 with the reason;
//! 6. hosts × ports against `max_probes_per_request` (400 `too_large`, with the numbers);
//! 7. on-demand jobs running against `max_concurrent` (429 `concurrency`).
//!
//! Probes run on the shared engine as interactive jobs, ahead of background scans, under a
//! deadline that is the smallest of the request's `timeout`, the module's and the scrape
//! timeout minus `timeout_offset`; the answer comes at the deadline at the latest, with what was
//! learned by then. Scans of the API run in the background and are polled.
//!
//! Architecture invariant: nothing here writes a target record or a per-target series; an
//! on-demand scan is visible only in its own answer, in the scans API, and in the request
//! counters.

pub mod guard;
pub mod probe;
pub mod scans;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use siphasher::sip::SipHasher13;
use synwatch_engine::{ExclusionPolicy, HostName, HostSet, JobSettings, PortState, Shard, TargetSpace};
use synwatch_http::site::{Body, OnDemandRequest, Operation, Refusal, RefusalKind, Reply};
use synwatch_io::Priority;

use crate::config::{Config, ModeSetting, Module, OnDemandSection};
use crate::metrics::{Metrics, Outcome};
use crate::names::Resolution;
use crate::query::{query_pairs, query_value};
use crate::scanner::{ScanOrder, Scanner};
use crate::state::unix_seconds;
use guard::{RateLimiter, RetryAfter};
use probe::ScanParams;
use scans::{ApiScan, ScanDescription, ScanRegistry, ScanStatus};

/// Builds a scanner for a mode the primary engine does not run (the connect() mode, which needs
/// no privilege, started on first use).
pub type ScannerFactory = Box<dyn Fn() -> Result<Arc<dyn Scanner>, String> + Send + Sync>;

/// The on-demand side of the exporter (see the module documentation).
pub struct OnDemand {
    scanner: Arc<dyn Scanner>,
    connect_factory: Mutex<Option<ScannerFactory>>,
    connect_scanner: Mutex<Option<Arc<dyn Scanner>>>,
    limiter: Mutex<Option<RateLimiter>>,
    inflight: AtomicUsize,
    registry: Mutex<ScanRegistry>,
    epoch: Instant,
    seed: u64,
    jobs_started: AtomicU64,
}

impl std::fmt::Debug for OnDemand {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("OnDemand").field("inflight", &self.inflight.load(Ordering::Relaxed)).finish()
    }
}

/// A slot among `max_concurrent`, given back when dropped.
struct InflightSlot<'a> {
    ondemand: &'a OnDemand,
    metrics: &'a Metrics,
}

impl Drop for InflightSlot<'_> {
    fn drop(&mut self) {
        let now = self.ondemand.inflight.fetch_sub(1, Ordering::AcqRel) - 1;
        self.metrics.ondemand_inflight.set(now as i64);
    }
}

/// The JSON body of `POST /api/v1/scans`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanSubmission {
    targets: OneOrMany,
    ports: Option<OneOrMany>,
    module: Option<String>,
    timeout: Option<String>,
    dedupe_key: Option<String>,
    priority: Option<String>,
}

/// A validated `POST /api/v1/scans` body.
#[derive(Debug)]
pub struct ScanBody {
    /// What to scan and how.
    pub params: ScanParams,
    /// `background` (the default) or `interactive`.
    pub priority: Priority,
    /// The client's deduplication key, 1 to 200 characters.
    pub dedupe_key: Option<String>,
}

/// Parses and validates a `POST /api/v1/scans` body against the config's modules: a pure
/// function of untrusted bytes (fuzzed by `fuzz/fuzz_targets/scan_body.rs`).
pub fn parse_scan_body(body: &[u8], modules: &BTreeMap<String, Module>) -> Result<ScanBody, String> {
    let submission: ScanSubmission = serde_json::from_slice(body).map_err(|error| format!("request body: {error}"))?;
    let timeout = submission.timeout.as_deref().map(probe::parse_timeout).transpose()?;
    let ports = submission.ports.as_ref().map(OneOrMany::joined_ports);
    let params = probe::scan_params(
        &submission.targets.joined(),
        ports.as_deref(),
        submission.module.as_deref(),
        timeout,
        false,
        false,
        modules,
    )?;
    let priority = match submission.priority.as_deref() {
        None | Some("background") => Priority::Background,
        Some("interactive") => Priority::Interactive,
        Some(other) => return Err(format!("priority {other:?}: expected background or interactive")),
    };
    if let Some(key) = &submission.dedupe_key
        && (key.is_empty() || key.len() > 200)
    {
        return Err("dedupe_key: expected 1 to 200 characters".into());
    }
    Ok(ScanBody { params, priority, dedupe_key: submission.dedupe_key })
}

/// `"22,80"`, `22`, or a list of either (targets: strings only make sense, numbers are
/// rejected when parsed as addresses).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Item),
    Many(Vec<Item>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Item {
    Text(String),
    Number(u64),
}

impl Item {
    fn text(&self) -> String {
        match self {
            Item::Text(text) => text.clone(),
            Item::Number(number) => number.to_string(),
        }
    }
}

impl OneOrMany {
    /// Port items joined into one specification, each item standing alone as in a config
    /// list: a bare item after a `udp/` one is TCP, so it gets its `tcp/` here.
    fn joined_ports(&self) -> String {
        match self {
            OneOrMany::One(item) => item.text(),
            OneOrMany::Many(items) => items
                .iter()
                .map(Item::text)
                .map(|text| {
                    let prefixed = text
                        .trim_start()
                        .get(..4)
                        .is_some_and(|head| head.eq_ignore_ascii_case("tcp/") || head.eq_ignore_ascii_case("udp/"));
                    if prefixed { text } else { format!("tcp/{}", text.trim_start()) }
                })
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    fn joined(&self) -> String {
        match self {
            OneOrMany::One(item) => item.text(),
            OneOrMany::Many(items) => items.iter().map(Item::text).collect::<Vec<_>>().join(","),
        }
    }
}

impl OnDemand {
    /// The on-demand side over `scanner` (the engine the background scans use too).
    pub fn new(scanner: Arc<dyn Scanner>, seed: u64) -> OnDemand {
        OnDemand {
            scanner,
            connect_factory: Mutex::new(None),
            connect_scanner: Mutex::new(None),
            limiter: Mutex::new(None),
            inflight: AtomicUsize::new(0),
            registry: Mutex::new(ScanRegistry::default()),
            epoch: Instant::now(),
            seed,
            jobs_started: AtomicU64::new(0),
        }
    }

    /// How to build a connect() scanner when a module asks for one and the engine runs SYN.
    pub fn set_connect_factory(&self, factory: ScannerFactory) {
        *self.connect_factory.lock() = Some(factory);
    }

    /// On-demand jobs running now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Folds ended API scans into results and applies retention (the scheduler calls this on
    /// every tick; requests to the API call it too).
    pub fn maintain(&self, section: &OnDemandSection, metrics: &Metrics) {
        let now = self.epoch.elapsed();
        let mut registry = self.registry.lock();
        let ended = registry.reap(now, unix_seconds(SystemTime::now()));
        for _ in 0..ended {
            let left = self.inflight.fetch_sub(1, Ordering::AcqRel) - 1;
            metrics.ondemand_inflight.set(left as i64);
        }
        registry.prune(now, section.scan_retention, section.scan_retention_age, section.dedupe_window);
    }

    /// Cancels every running API scan (shutdown).
    pub fn cancel_all(&self) {
        self.registry.lock().cancel_all();
    }

    /// Answers one request (blocking: a probe waits for its scan).
    /// `resolve` resolves the names of a request (with the exporter's resolver).
    pub fn handle(
        &self,
        config: &Config,
        metrics: &Metrics,
        request: &OnDemandRequest,
        resolve: &dyn Fn(&[HostName]) -> Resolution,
    ) -> Reply {
        let section = &config.ondemand;
        if !section.enabled {
            return Reply::Refused(Refusal::new(
                RefusalKind::Disabled,
                "not found: on-demand scans are disabled (ondemand.enabled: false)",
            ));
        }
        let work = request.operation.starts_or_stops_work();
        let reply = match self.admit_client(section, request, work) {
            Err(refusal) => Reply::Refused(refusal),
            Ok(client) => match &request.operation {
                Operation::Probe => {
                    self.probe(config, metrics, request, client, resolve).unwrap_or_else(Reply::Refused)
                }
                Operation::SubmitScan => {
                    self.submit_scan(config, metrics, request, client, resolve).unwrap_or_else(Reply::Refused)
                }
                Operation::ListScans => self.list_scans(config, metrics, &request.query),
                Operation::ScanStatus { id } => self.scan_status(config, metrics, id, &request.query),
                Operation::CancelScan { id } => self.cancel_scan(id),
            },
        };
        if work
            && let Reply::Refused(refusal) = &reply
            && let Some(outcome) = Outcome::of_refusal(refusal.kind)
        {
            metrics.probe_requests.with_label_values(&[outcome.label()]).inc();
        }
        reply
    }

    /// Steps 2 and 3: who asks, and whether they may now.
    fn admit_client(
        &self,
        section: &OnDemandSection,
        request: &OnDemandRequest,
        rate_limited: bool,
    ) -> Result<std::net::IpAddr, Refusal> {
        let client = guard::client_address(request.peer, &request.forwarded_for, &section.trusted_proxies)
            .map_err(|reason| Refusal::new(RefusalKind::BadRequest, reason))?;
        if !section.allow_clients.is_empty() && !guard::allowed(&section.allow_clients, client) {
            return Err(Refusal::new(
                RefusalKind::Forbidden,
                format!("client {client} is not in ondemand.allow_clients"),
            ));
        }
        if rate_limited {
            let now = self.epoch.elapsed();
            let mut limiter = self.limiter.lock();
            let limiter = limiter.get_or_insert_with(|| {
                RateLimiter::new(section.rate_limit, section.burst, section.global_rate(), section.global_burst(), now)
            });
            // A reload may have changed the limits.
            limiter.configure(section.rate_limit, section.burst, section.global_rate(), section.global_burst());
            if let Err(RetryAfter(seconds)) = limiter.check(client, now) {
                return Err(Refusal::new(
                    RefusalKind::RateLimited,
                    format!(
                        "rate limit: {} request(s)/s per client (burst {}), {}/s overall (burst {}); retry in {seconds} s",
                        section.rate_limit, section.burst, section.global_rate(), section.global_burst()
                    ),
                )
                .retry_after(seconds));
            }
        }
        Ok(client)
    }

    /// Steps 5 to 7 and the space: refuses before anything is sent.
    fn admit_scan<'a>(
        &'a self,
        section: &OnDemandSection,
        metrics: &'a Metrics,
        params: &ScanParams,
        resolve: &dyn Fn(&[HostName]) -> Resolution,
    ) -> Result<(Arc<TargetSpace>, InflightSlot<'a>), Refusal> {
        for range in &params.targets {
            if !guard::range_allowed(&section.allow_targets, range) {
                return Err(Refusal::new(
                    RefusalKind::Forbidden,
                    format!("target {range} is not inside ondemand.allow_targets; nothing was scanned"),
                ));
            }
        }
        let mut includes = params.targets.clone();
        if !params.names.is_empty() {
            // Resolved once; what is checked here is exactly what is scanned.
            let names = match resolve(&params.names) {
                Resolution::Resolved(names) => names,
                Resolution::Failed { name, reason, detail } => {
                    return Err(Refusal::new(
                        RefusalKind::BadRequest,
                        format!(
                            "target {} did not resolve ({}): {detail}; nothing was scanned",
                            name.name(),
                            reason.label()
                        ),
                    ));
                }
            };
            for (name, addresses) in names.entries() {
                if let Some(outside) =
                    addresses.iter().find(|address| !guard::allowed(&section.allow_targets, **address))
                {
                    return Err(Refusal::new(
                        RefusalKind::Forbidden,
                        format!(
                            "target {} resolved to {outside}, which is not inside ondemand.allow_targets; nothing was scanned",
                            name.name()
                        ),
                    ));
                }
            }
            includes.extend(names.addresses().into_iter().map(synwatch_engine::AddressRange::single));
        }
        let hosts = HostSet::build(includes, Vec::new(), ExclusionPolicy::Default)
            .map_err(|error| Refusal::new(RefusalKind::BadRequest, format!("target: {error}")))?;
        let probes = u128::from(hosts.len()) * params.ports.len() as u128;
        if probes > u128::from(section.max_probes_per_request) {
            return Err(Refusal::new(
                RefusalKind::TooLarge,
                format!(
                    "{} host(s) x {} port(s) = {probes} probes, over ondemand.max_probes_per_request = {}",
                    hosts.len(),
                    params.ports.len(),
                    section.max_probes_per_request
                ),
            ));
        }
        let space = TargetSpace::new(hosts, params.ports.clone())
            .map_err(|error| Refusal::new(RefusalKind::BadRequest, error.to_string()))?;
        let max = section.max_concurrent;
        if self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| (now < max).then_some(now + 1))
            .is_err()
        {
            return Err(Refusal::new(
                RefusalKind::Concurrency,
                format!("{max} on-demand scan(s) are running (ondemand.max_concurrent); retry shortly"),
            )
            .retry_after(1));
        }
        metrics.ondemand_inflight.set(self.inflight.load(Ordering::Acquire) as i64);
        Ok((Arc::new(space), InflightSlot { ondemand: self, metrics }))
    }

    fn scanner_for(&self, module: &Module) -> Result<Arc<dyn Scanner>, String> {
        let primary = self.scanner.mode_name();
        match module.mode {
            ModeSetting::Auto => Ok(Arc::clone(&self.scanner)),
            ModeSetting::Syn if primary == "syn" => Ok(Arc::clone(&self.scanner)),
            ModeSetting::Syn => {
                Err("the module asks for SYN scans but the engine runs connect() (no CAP_NET_RAW)".into())
            }
            ModeSetting::Connect if primary == "connect" => Ok(Arc::clone(&self.scanner)),
            ModeSetting::Connect => {
                let mut connect = self.connect_scanner.lock();
                if let Some(scanner) = &*connect {
                    return Ok(Arc::clone(scanner));
                }
                let factory = self.connect_factory.lock();
                let factory = factory.as_ref().ok_or("no connect() engine is available")?;
                let scanner = factory()?;
                *connect = Some(Arc::clone(&scanner));
                Ok(scanner)
            }
        }
    }

    fn settings(&self, module: &Module) -> JobSettings {
        let count = self.jobs_started.fetch_add(1, Ordering::Relaxed);
        let mut hasher = SipHasher13::new_with_keys(self.seed, 0x6f6e_6465_6d61_6e64);
        std::hash::Hasher::write_u64(&mut hasher, count);
        JobSettings {
            retries: module.retries,
            retry_gap: module.retry_gap,
            wait: module.wait,
            canaries: module.canaries,
            udp_host_interval: module.udp_host_interval,
            seed: std::hash::Hasher::finish(&hasher),
            shard: Shard::WHOLE,
            ..JobSettings::default()
        }
    }

    fn probe(
        &self,
        config: &Config,
        metrics: &Metrics,
        request: &OnDemandRequest,
        client: std::net::IpAddr,
        resolve: &dyn Fn(&[HostName]) -> Resolution,
    ) -> Result<Reply, Refusal> {
        let started = Instant::now();
        let section = &config.ondemand;
        let pairs = query_pairs(&request.query);
        let params = probe::parse_probe_query(&pairs, &config.modules)
            .map_err(|reason| Refusal::new(RefusalKind::BadRequest, reason))?;
        let (deadline, bounds) = probe::probe_deadline(section, &params, request.scrape_timeout.as_deref())
            .map_err(|reason| Refusal::new(RefusalKind::BadRequest, reason))?;
        let (space, slot) = self.admit_scan(section, metrics, &params, resolve)?;
        let mut log = Vec::new();
        let mut note = |line: String| {
            if params.debug {
                log.push(format!("{:>8.3} ms  {line}", started.elapsed().as_secs_f64() * 1e3));
            }
        };
        note(format!("client {client}, module {}", params.module.as_deref().unwrap_or("(none)")));
        note(format!("{} host(s) x {} port(s) = {} probes", space.hosts().len(), space.ports().len(), space.len()));
        note(format!("deadline {deadline:?}: the smallest of {}", bounds.join(", ")));
        let settings = self.settings(&params.preset);
        let started_scan = self.scanner_for(&params.preset).and_then(|scanner| {
            note(format!(
                "engine mode {}, retries {} (+{} for hosts that answer), retry gap {}, wait {}",
                scanner.mode_name(),
                settings.retries,
                settings.host_up_retries,
                settings.retry_gap,
                settings.wait
            ));
            scanner.start(ScanOrder {
                space: Arc::clone(&space),
                settings,
                timeout: deadline,
                priority: Priority::Interactive,
                rate: params.preset.rate,
                verify: params.preset.verify.connect(),
                payloads: Arc::clone(&config.udp_payloads),
            })
        });
        let (outcome, success, scan) = match started_scan {
            Err(error) => {
                note(format!("the scan could not start: {error}"));
                (Outcome::Error, false, None)
            }
            Ok(scan) => {
                // The engine ends the job at its deadline; the extra wait only covers the engine's
                // own reaction time, after which the job is cancelled and answered as it is.
                let remaining = deadline.saturating_sub(started.elapsed());
                let reason = scan.wait(remaining + Duration::from_millis(50)).or_else(|| {
                    scan.cancel();
                    scan.wait(Duration::from_millis(50))
                });
                note(format!("scan ended: {}", reason.map_or("cut off".to_string(), |reason| format!("{reason:?}"))));
                let success = matches!(
                    reason,
                    Some(synwatch_engine::FinishReason::AllAnswered | synwatch_engine::FinishReason::WaitOver)
                );
                (Outcome::Ok, success, Some(scan))
            }
        };
        drop(slot);
        let mut outcome_text = match &scan {
            Some(scan) => {
                let progress = scan.progress();
                let states = (0..space.len()).map(|index| {
                    let (address, port) = space.probe_at(index).expect("index inside the space");
                    (address, port, scan.state(index))
                });
                let untrusted = probe::Untrusted { suspects: scan.suspects(), verdicts: scan.verdicts() };
                let tally = probe::tally(states, progress.distinct_sent, params.details, &untrusted);
                if params.debug {
                    for index in 0..space.len() {
                        let state = scan.state(index);
                        if matches!(state, PortState::Open | PortState::Closed | PortState::Filtered) {
                            let (address, port) = space.probe_at(index).expect("index inside the space");
                            note(format!("{} {port}: {}", address, state.name()));
                        }
                    }
                }
                tally
            }
            None => probe::ProbeOutcome { requested: space.len(), ..probe::ProbeOutcome::default() },
        };
        outcome_text.success = success;
        outcome_text.duration = started.elapsed();
        outcome_text.timeout = deadline;
        metrics.probe_requests.with_label_values(&[outcome.label()]).inc();
        let rendered = probe::render(&outcome_text);
        if params.debug {
            let mut body = log.join("\n");
            body.push_str("\n\nMetrics that would have been returned:\n");
            body.push_str(&rendered);
            return Ok(Reply::Done(Body::Text(body)));
        }
        Ok(Reply::Done(Body::Metrics(rendered)))
    }

    fn submit_scan(
        &self,
        config: &Config,
        metrics: &Metrics,
        request: &OnDemandRequest,
        client: std::net::IpAddr,
        resolve: &dyn Fn(&[HostName]) -> Resolution,
    ) -> Result<Reply, Refusal> {
        let section = &config.ondemand;
        let ScanBody { params, priority, dedupe_key } = parse_scan_body(&request.body, &config.modules)
            .map_err(|reason| Refusal::new(RefusalKind::BadRequest, reason))?;
        self.maintain(section, metrics);
        if let Some(key) = &dedupe_key {
            let registry = self.registry.lock();
            if let Some(existing) = registry.deduplicated(key, self.epoch.elapsed(), section.dedupe_window) {
                metrics.probe_requests.with_label_values(&[Outcome::Ok.label()]).inc();
                return Ok(Reply::Accepted(Body::Json(
                    json!({"id": existing.id, "state": existing.status.name(), "deduplicated": true,
                            "url": format!("/api/v1/scans/{}", existing.id)}),
                )));
            }
        }
        let (space, slot) = self.admit_scan(section, metrics, &params, resolve)?;
        let deadline = [params.timeout, params.preset.timeout]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(section.max_scan_timeout)
            .min(section.max_scan_timeout);
        let settings = self.settings(&params.preset);
        let scan = self
            .scanner_for(&params.preset)
            .and_then(|scanner| {
                scanner.start(ScanOrder {
                    space: Arc::clone(&space),
                    settings,
                    timeout: deadline,
                    priority,
                    rate: params.preset.rate,
                    verify: params.preset.verify.connect(),
                    payloads: Arc::clone(&config.udp_payloads),
                })
            })
            .map_err(|error| Refusal::new(RefusalKind::Failed, format!("the scan could not start: {error}")))?;
        // The slot stays taken while the scan runs; `maintain` gives it back when it ends.
        std::mem::forget(slot);
        let id = format!("{:016x}", self.settings(&params.preset).seed);
        let description = ScanDescription {
            targets: params.targets.iter().map(ToString::to_string).collect(),
            ports: params.ports.to_string(),
            module: params.module.clone(),
            priority: if priority == Priority::Interactive { "interactive" } else { "background" },
            dedupe_key,
            timeout_seconds: deadline.as_secs_f64(),
            client,
        };
        let scan = ApiScan {
            id: id.clone(),
            description,
            created_unix: unix_seconds(SystemTime::now()),
            ended_at: None,
            ended_unix: None,
            status: ScanStatus::Running,
            space,
            running: Some(scan),
            results: None,
            sent_at_end: 0,
        };
        self.registry.lock().insert(scan, self.epoch.elapsed());
        metrics.probe_requests.with_label_values(&[Outcome::Ok.label()]).inc();
        Ok(Reply::Accepted(Body::Json(
            json!({"id": id, "state": "running", "deduplicated": false, "url": format!("/api/v1/scans/{id}")}),
        )))
    }

    fn summary(scan: &ApiScan) -> serde_json::Value {
        let (sent, answered, total, round) = scan.progress();
        let (mut open, mut suspect, mut unverified, mut closed, mut filtered) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for index in 0..total {
            match scan.state(index) {
                PortState::Open if scan.suspect_at(index).is_some() => suspect += 1,
                PortState::Open if scan.unverified_at(index).is_some() => unverified += 1,
                PortState::Open => open += 1,
                PortState::Closed => closed += 1,
                PortState::Filtered => filtered += 1,
                // Unanswered (a UDP probe's is open|filtered once the scan is over).
                PortState::OpenFiltered | PortState::Unknown => {}
            }
        }
        json!({
            "id": scan.id,
            "state": scan.status.name(),
            "request": scan.description,
            "created_at": scan.created_unix,
            "ended_at": scan.ended_unix,
            "progress": {"sent": sent, "answered": answered, "total": total, "round": round},
            "counts": {"open": open, "suspect": suspect, "unverified": unverified, "closed": closed,
                "filtered": filtered, "unanswered": total - open - suspect - unverified - closed - filtered},
            "hosts_suspect": scan.results.as_ref().map_or(0, |results| results.suspects().len()),
        })
    }

    fn scan_status(&self, config: &Config, metrics: &Metrics, id: &str, query: &str) -> Reply {
        self.maintain(&config.ondemand, metrics);
        let pairs = query_pairs(query);
        let get = |name: &str| query_value(&pairs, name);
        let filter = get("results").unwrap_or("open");
        let wanted: &[PortState] = match filter {
            "open" => &[PortState::Open],
            "closed" => &[PortState::Closed],
            "answered" => &[PortState::Open, PortState::Closed, PortState::Filtered],
            "all" => &[PortState::Open, PortState::Closed, PortState::Filtered, PortState::Unknown],
            other => {
                return refuse(
                    RefusalKind::BadRequest,
                    format!("results={other:?}: expected open, closed, answered or all"),
                );
            }
        };
        let number = |name: &str, default: u64, max: u64| -> Result<u64, String> {
            match get(name) {
                None => Ok(default),
                Some(text) => match text.parse::<u64>() {
                    Ok(value) if value <= max => Ok(value),
                    _ => Err(format!("{name}={text:?}: expected a number from 0 to {max}")),
                },
            }
        };
        let (offset, limit) = match (number("offset", 0, u64::MAX), number("limit", 1000, 10_000)) {
            (Ok(offset), Ok(limit)) => (offset, limit),
            (Err(reason), _) | (_, Err(reason)) => return refuse(RefusalKind::BadRequest, reason),
        };
        let registry = self.registry.lock();
        let Some(scan) = registry.get(id) else {
            return refuse(RefusalKind::NotFound, format!("no scan {id:?} (unknown, or dropped after retention)"));
        };
        let mut summary = OnDemand::summary(scan);
        let mut items = Vec::new();
        let mut matched = 0u64;
        for index in 0..scan.space.len() {
            let state = scan.state(index);
            if !wanted.contains(&state) {
                continue;
            }
            if matched >= offset && (items.len() as u64) < limit {
                let (address, port) = scan.space.probe_at(index).expect("index inside the space");
                let name = if state == PortState::Unknown { "unanswered" } else { state.name() };
                let mut item =
                    json!({"ip": address, "port": port.number, "proto": port.protocol.name(), "state": name});
                if state == PortState::Open
                    && let Some(reason) = scan.suspect_at(index)
                {
                    item["suspect"] = json!(reason.name());
                }
                if state == PortState::Open
                    && let Some(verdict) = scan.unverified_at(index)
                {
                    item["verify"] = json!(verdict.name());
                }
                items.push(item);
            }
            matched += 1;
        }
        let next = offset + items.len() as u64;
        summary["results"] = json!({
            "filter": filter, "offset": offset, "limit": limit, "matched": matched,
            "items": items, "next_offset": if next < matched { Some(next) } else { None },
        });
        Reply::Done(Body::Json(summary))
    }

    fn cancel_scan(&self, id: &str) -> Reply {
        let registry = self.registry.lock();
        if !registry.cancel(id) {
            return refuse(RefusalKind::NotFound, format!("no scan {id:?}"));
        }
        let state = registry.get(id).map_or("cancelled", |scan| {
            if scan.status == ScanStatus::Running { "cancelling" } else { scan.status.name() }
        });
        Reply::Accepted(Body::Json(json!({"id": id, "state": state})))
    }

    fn list_scans(&self, config: &Config, metrics: &Metrics, query: &str) -> Reply {
        self.maintain(&config.ondemand, metrics);
        let pairs = query_pairs(query);
        let get = |name: &str| query_value(&pairs, name);
        let status = match get("state") {
            None => None,
            Some(text) => match ScanStatus::parse(text) {
                Some(status) => Some(status),
                None => {
                    return refuse(
                        RefusalKind::BadRequest,
                        format!("state={text:?}: expected running, done, timed_out or cancelled"),
                    );
                }
            },
        };
        let limit = match get("limit").map(str::parse::<usize>) {
            None => 100,
            Some(Ok(limit)) if (1..=1000).contains(&limit) => limit,
            Some(_) => return refuse(RefusalKind::BadRequest, "limit: expected 1 to 1000"),
        };
        let registry = self.registry.lock();
        let scans: Vec<serde_json::Value> = registry.list(status, limit).into_iter().map(OnDemand::summary).collect();
        Reply::Done(Body::Json(json!({"scans": scans, "kept": registry.len()})))
    }

    /// Running API scans.
    pub fn scans_running(&self) -> usize {
        self.registry.lock().running()
    }

    #[doc(hidden)]
    pub fn refused(&self, metrics: &Metrics, outcome: Outcome) {
        metrics.probe_requests.with_label_values(&[outcome.label()]).inc();
    }
}

/// A refusal as a reply.
fn refuse(kind: RefusalKind, reason: impl Into<String>) -> Reply {
    Reply::Refused(Refusal::new(kind, reason))
}

#[cfg(test)]
mod tests {
    use synwatch_engine::Port;

    use super::*;

    #[test]
    fn a_scan_body_takes_udp_ports_and_each_list_item_stands_alone() {
        let modules = BTreeMap::new();
        let ports = |body: &str| parse_scan_body(body.as_bytes(), &modules).map(|body| body.params.ports);
        let listed = ports(r#"{"targets": "198.18.0.1", "ports": ["udp/53", 161, "22,udp/123"]}"#).unwrap();
        assert_eq!(listed.ports(), [Port::tcp(22), Port::tcp(161), Port::udp(53), Port::udp(123)]);
        let text = ports(r#"{"targets": "198.18.0.1", "ports": "udp/53,161"}"#).unwrap();
        assert_eq!(text.ports(), [Port::udp(53), Port::udp(161)]);
        assert!(ports(r#"{"targets": "198.18.0.1", "ports": "sctp/9"}"#).unwrap_err().contains("not a protocol"));
    }
}
