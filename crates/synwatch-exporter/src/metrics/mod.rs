//! The `/metrics` text: self metrics through the `prometheus` crate, per-target families written
//! directly from the last known results.
//!
//! Event-driven metrics (scan duration histogram, change and scan counters, reload status, the
//! engine's counters, the process collector) live in a `prometheus::Registry`. The per-target
//! families, above all `synwatch_port_open` with up to `details_budget` series, are rendered by
//! hand from [`ScanResults`]: the `prometheus` crate materializes every series as a protobuf
//! message with owned label strings on each gather, which for 100,000 series costs tens of
//! megabytes of short-lived allocations and far more than the 50 ms budget. Writing them straight
//! from the packed states needs one buffer and formats each host's address once.
//!
//! Architecture invariant: rendering reads state and never scans, never blocks on a scan, and
//! never changes what it reads (the engine counters are copied into their counters under a lock
//! so that two concurrent scrapes cannot count a delta twice).

use std::net::IpAddr;

use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use synwatch_engine::Shard;
use synwatch_io::CounterSnapshot;

use crate::hostnames::HostnameCache;
use crate::listeners::ListenerSnapshot;
use crate::names::{ResolveFailure, ResolvedNames};
use crate::policy::PolicyReport;
use crate::results::ScanResults;
use crate::state::ScanAttempt;

mod text;

pub use text::{RENDERED_FAMILIES, render_targets};
use text::{render_engine_rtt, render_host_info, render_listeners};

/// The outcome label of `synwatch_probe_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Scanned (whatever the scan found).
    Ok,
    /// Bad parameters.
    BadRequest,
    /// No or wrong credentials.
    Unauthorized,
    /// Client or target not allowed.
    Forbidden,
    /// Over the rate limit.
    RateLimited,
    /// Too many on-demand jobs running.
    Concurrency,
    /// More probes than `max_probes_per_request`.
    TooLarge,
    /// The scan could not start (no route, engine stopped).
    Error,
}

impl Outcome {
    /// Every outcome, for zero-initialized series.
    pub const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::BadRequest,
        Outcome::Unauthorized,
        Outcome::Forbidden,
        Outcome::RateLimited,
        Outcome::Concurrency,
        Outcome::TooLarge,
        Outcome::Error,
    ];

    /// The outcome a refusal is counted as, when it is counted (a scan id that is not known, or
    /// on-demand scans being disabled, count as no outcome).
    pub fn of_refusal(kind: synwatch_http::RefusalKind) -> Option<Outcome> {
        match kind {
            synwatch_http::RefusalKind::BadRequest => Some(Outcome::BadRequest),
            synwatch_http::RefusalKind::TooLarge => Some(Outcome::TooLarge),
            synwatch_http::RefusalKind::Unauthorized => Some(Outcome::Unauthorized),
            synwatch_http::RefusalKind::Forbidden => Some(Outcome::Forbidden),
            synwatch_http::RefusalKind::RateLimited => Some(Outcome::RateLimited),
            synwatch_http::RefusalKind::Concurrency => Some(Outcome::Concurrency),
            synwatch_http::RefusalKind::Failed => Some(Outcome::Error),
            synwatch_http::RefusalKind::Disabled | synwatch_http::RefusalKind::NotFound => None,
        }
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadRequest => "bad_request",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::RateLimited => "rate_limited",
            Outcome::Concurrency => "concurrency",
            Outcome::TooLarge => "too_large",
            Outcome::Error => "error",
        }
    }
}

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Scan duration buckets, in seconds: from a loopback scan to a large range.
const DURATION_BUCKETS: [f64; 14] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// The version and revision exported in `synwatch_build_info`.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    /// The crate version.
    pub version: String,
    /// The source revision (a git hash, or `unknown`).
    pub revision: String,
}

/// One target as rendered: its name, what is known, and how many detail series it may have.
#[derive(Debug)]
pub struct TargetView<'a> {
    /// The configured name (the `target` label).
    pub name: &'a str,
    /// What is written between `target="` and the closing quote: the name, then the target's
    /// own labels as `",name="value` each (values escaped), so that every writer of a
    /// per-target series writes them by writing this (see [`target_label_text`]).
    pub label_text: &'a str,
    /// A named target's names and their addresses (the `hostname` label of its per-port and
    /// per-host series).
    pub names: Option<&'a ResolvedNames>,
    /// The last completed scan.
    pub results: Option<&'a ScanResults>,
    /// The last attempt.
    pub last_attempt: Option<ScanAttempt>,
    /// Detail series allowed for this target (0 when `details: false`).
    pub detail_series: u64,
    /// The configured interval between scans, in seconds.
    pub interval_seconds: f64,
    /// The expected-port policy checked against the results (targets with `expect:`).
    pub policy: Option<&'a PolicyReport>,
    /// `synwatch_port_policy_violation` series allowed for this target.
    pub violation_series: u64,
    /// The hosts that answered the last completed scan (for `synwatch_host_info`).
    pub responding: &'a [IpAddr],
}

/// The `label_text` of a [`TargetView`]: `name`, then each of `labels` as `",key="value`, with
/// the values escaped for the text format.
pub fn target_label_text(name: &str, labels: &std::collections::BTreeMap<String, String>) -> String {
    let mut output = Vec::with_capacity(name.len() + labels.len() * 16);
    output.extend_from_slice(name.as_bytes());
    for (key, value) in labels {
        output.extend_from_slice(b"\",");
        output.extend_from_slice(key.as_bytes());
        output.extend_from_slice(b"=\"");
        text::push_label_value(&mut output, value);
    }
    String::from_utf8(output).unwrap_or_else(|_| name.to_string())
}

/// What `/metrics` shows beyond the targets: host names and this host's listeners.
#[derive(Debug, Default)]
pub struct HostView<'a> {
    /// The names found so far, when `resolve_hostnames` is on.
    pub hostnames: Option<&'a HostnameCache>,
    /// `synwatch_host_info` series at most (the `details_budget`).
    pub host_info_limit: u64,
    /// The listeners, when the collector is on and has read once.
    pub listeners: Option<&'a ListenerSnapshot>,
}

/// The self metrics (see the module documentation).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    registered: Vec<String>,
    pub(crate) scan_duration: HistogramVec,
    pub(crate) port_changes: IntCounterVec,
    pub(crate) hosts_turned_suspect: IntCounterVec,
    pub(crate) resolve_failures: IntCounterVec,
    pub(crate) address_changes: IntCounterVec,
    pub(crate) verifications: IntCounterVec,
    pub(crate) scans: IntCounterVec,
    pub(crate) details_dropped: IntCounter,
    pub(crate) queue_length: IntGauge,
    pub(crate) scans_running: IntGauge,
    pub(crate) reload_successful: IntGauge,
    pub(crate) reload_timestamp: Gauge,
    pub(crate) state_writes_failed: IntCounter,
    pub(crate) probe_requests: IntCounterVec,
    pub(crate) api_requests: IntCounterVec,
    pub(crate) http_connections_dropped: IntCounterVec,
    pub(crate) ondemand_inflight: IntGauge,
    pub(crate) request_duration: HistogramVec,
    pub(crate) listener_changes: IntCounterVec,
    pub(crate) listener_series_dropped: IntCounter,
    pub(crate) listener_read_errors: IntCounter,
    pub(crate) dns_lookups: IntCounterVec,
    pub(crate) dns_cache_entries: IntGauge,
    pub(crate) history: HistoryCounters,
    engine: EngineCounters,
    /// Serializes copying the engine counters (see the module documentation).
    sync: Mutex<()>,
}

/// The exposure history's own series.
#[derive(Debug)]
pub(crate) struct HistoryCounters {
    pub(crate) database_bytes: IntGauge,
    pub(crate) write_failures: IntCounter,
    pub(crate) changes_recorded: IntCounter,
    pub(crate) changes_pruned: IntCounter,
}

impl HistoryCounters {
    fn new(registry: &Registrar) -> HistoryCounters {
        HistoryCounters {
            database_bytes: register(
                registry,
                IntGauge::new(
                    "synwatch_history_database_bytes",
                    "Size of the exposure history database and its write-ahead log (0 without a history).",
                )
                .expect("valid metric"),
            ),
            write_failures: counter(
                registry,
                "synwatch_history_write_failures_total",
                "Writes to the exposure history that failed (a full or read-only disk); the history catches up on the target's next scan.",
            ),
            changes_recorded: counter(
                registry,
                "synwatch_history_changes_recorded_total",
                "Changes written to the exposure history.",
            ),
            changes_pruned: counter(
                registry,
                "synwatch_history_changes_pruned_total",
                "Changes removed from the exposure history by retention or max_changes.",
            ),
        }
    }
}

#[derive(Debug)]
struct EngineCounters {
    packets_sent: IntCounter,
    replies: IntCounterVec,
    invalid: IntCounter,
    receive_drops: IntCounter,
    send_errors: IntCounter,
    backpressure: IntCounter,
}

/// The registry while the metrics are registered, with the names of every family registered
/// (the `prometheus` crate has no way to list them afterwards; the metrics reference test needs
/// them).
#[derive(Default)]
struct Registrar {
    registry: Registry,
    names: std::cell::RefCell<Vec<String>>,
}

impl Registrar {
    fn add(&self, collector: Box<dyn Collector>) {
        self.names.borrow_mut().extend(collector.desc().iter().map(|desc| desc.fq_name.clone()));
        self.registry.register(collector).expect("metric names are unique");
    }
}

fn register<C: Collector + Clone + 'static>(registry: &Registrar, collector: C) -> C {
    registry.add(Box::new(collector.clone()));
    collector
}

fn counter(registry: &Registrar, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric"))
}

impl Metrics {
    /// Registers every self metric; `mode` is the engine's running mode (`syn` or `connect`),
    /// `shard` the part of every target this replica scans.
    pub fn new(build: &BuildInfo, mode: &str, shard: Shard) -> Metrics {
        let registry = Registrar::default();
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("synwatch_build_info", "Always 1; the labels carry the version and source revision."),
                &["version", "revision"],
            )
            .expect("valid metric"),
        );
        build_info.with_label_values(&[build.version.as_str(), build.revision.as_str()]).set(1);
        let scan_mode = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("synwatch_scan_mode", "1 for the scan mode the engine runs in (syn or connect)."),
                &["mode"],
            )
            .expect("valid metric"),
        );
        scan_mode.with_label_values(&[mode]).set(1);
        let shard_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "synwatch_shard_info",
                    "Always 1; shard (1-based) of shards is the part of every target this replica scans (serve --shard).",
                ),
                &["shard", "shards"],
            )
            .expect("valid metric"),
        );
        let (index, count) = ((shard.index + 1).to_string(), shard.count.to_string());
        shard_info.with_label_values(&[index.as_str(), count.as_str()]).set(1);
        let shards = register(
            &registry,
            IntGauge::new("synwatch_shards", "How many replicas split the targets (serve --shard i/n: n).")
                .expect("valid metric"),
        );
        shards.set(i64::try_from(shard.count).unwrap_or(i64::MAX));
        #[cfg(target_os = "linux")]
        registry.add(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        let engine = EngineCounters {
            packets_sent: counter(&registry, "synwatch_packets_sent_total", "Probes handed to the kernel, retries included."),
            replies: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "synwatch_replies_received_total",
                        "Valid replies by kind: open (SYN-ACK), closed (RST), filtered (ICMP), duplicate, unmatched (late or not ours), canary (first answers to canary probes).",
                    ),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            invalid: counter(
                &registry,
                "synwatch_replies_invalid_total",
                "Replies dropped as malformed or carrying a wrong cookie.",
            ),
            receive_drops: counter(
                &registry,
                "synwatch_receive_drops_total",
                "Packets the kernel dropped on the reply socket for lack of buffer space.",
            ),
            send_errors: counter(&registry, "synwatch_send_errors_total", "Send calls that failed (not backpressure)."),
            backpressure: counter(
                &registry,
                "synwatch_send_backpressure_total",
                "Times the kernel pushed back on sending; the probe was kept and sent later.",
            ),
        };
        for kind in ["open", "closed", "filtered", "duplicate", "unmatched", "canary"] {
            engine.replies.with_label_values(&[kind]);
        }
        let scan_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new("synwatch_scan_duration_seconds", "Duration of scans, completed or not.")
                    .buckets(DURATION_BUCKETS.to_vec()),
                &["target"],
            )
            .expect("valid metric"),
        );
        let port_changes = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "synwatch_port_state_changes_total",
                    "Ports that opened or closed (closed or filtered) between two completed scans of a target.",
                ),
                &["target", "change"],
            )
            .expect("valid metric"),
        );
        let hosts_turned_suspect = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "synwatch_target_hosts_turned_suspect_total",
                    "Hosts judged suspect (all_open or synproxy) in a completed scan that were not in the target's previous results.",
                ),
                &["target"],
            )
            .expect("valid metric"),
        );
        let resolve_failures = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "synwatch_target_resolve_failures_total",
                    "Scans of a named target that did not start because a name did not resolve, by reason (not_found, no_address_of_family, timeout, error); the previous results stay.",
                ),
                &["target", "reason"],
            )
            .expect("valid metric"),
        );
        let address_changes = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "synwatch_target_address_changes_total",
                    "Names of a target whose addresses differed from those of its previous scan (each scanned at its new addresses).",
                ),
                &["target"],
            )
            .expect("valid metric"),
        );
        let verifications = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "synwatch_verifications_total",
                    "Real handshakes made by verify: connect to open ports, by verdict (ok, reset, refused, timeout, unreachable).",
                ),
                &["target", "verdict"],
            )
            .expect("valid metric"),
        );
        let scans = register(
            &registry,
            IntCounterVec::new(
                Opts::new("synwatch_scans_total", "Scans that ended, by result (success or failure)."),
                &["target", "result"],
            )
            .expect("valid metric"),
        );
        let probe_requests = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "synwatch_probe_requests_total",
                    "On-demand requests that start or stop work (/probe, POST /api/v1/scans...) by outcome.",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
        );
        for outcome in Outcome::ALL {
            probe_requests.with_label_values(&[outcome.label()]);
        }
        let api_requests = register(
            &registry,
            IntCounterVec::new(
                Opts::new("synwatch_api_requests_total", "HTTP requests answered, by route and status code."),
                &["route", "code"],
            )
            .expect("valid metric"),
        );
        let http_connections_dropped = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "synwatch_http_connections_dropped_total",
                    "HTTP connections shed to make room, refused at accept, or closed after a 431, by reason.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        );
        for reason in HTTP_DROP_REASONS {
            http_connections_dropped.with_label_values(&[reason]);
        }
        let request_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new("synwatch_http_request_duration_seconds", "Time to answer HTTP requests, by route.")
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                &["route"],
            )
            .expect("valid metric"),
        );
        let listener_changes = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "synwatch_listener_changes_total",
                    "Local listeners that appeared (new), went away (down) or came back (recovered).",
                ),
                &["change"],
            )
            .expect("valid metric"),
        );
        for change in ["new", "down", "recovered"] {
            listener_changes.with_label_values(&[change]);
        }
        let dns_lookups = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "synwatch_dns_lookups_total",
                    "Reverse DNS lookups of responding hosts, by result (found, not_found, timeout, error).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        for result in ["found", "not_found", "timeout", "error"] {
            dns_lookups.with_label_values(&[result]);
        }
        Metrics {
            listener_changes,
            listener_series_dropped: counter(
                &registry,
                "synwatch_listener_series_dropped_total",
                "Local listeners not exported because listeners.max_series was reached, counted per reading.",
            ),
            listener_read_errors: counter(
                &registry,
                "synwatch_listener_read_errors_total",
                "Readings of the local listeners from /proc that failed.",
            ),
            dns_lookups,
            dns_cache_entries: register(
                &registry,
                IntGauge::new("synwatch_dns_cache_entries", "Addresses in the reverse DNS cache.")
                    .expect("valid metric"),
            ),
            probe_requests,
            api_requests,
            http_connections_dropped,
            request_duration,
            ondemand_inflight: register(
                &registry,
                IntGauge::new("synwatch_ondemand_inflight", "On-demand scans (probes and API scans) running now.")
                    .expect("valid metric"),
            ),
            scan_duration,
            port_changes,
            hosts_turned_suspect,
            resolve_failures,
            address_changes,
            verifications,
            scans,
            details_dropped: counter(
                &registry,
                "synwatch_details_series_dropped_total",
                "Per-port series refused because details_budget was reached, counted once per scan.",
            ),
            queue_length: register(
                &registry,
                IntGauge::new("synwatch_scheduler_queue_length", "Targets due and waiting for a scan slot.")
                    .expect("valid metric"),
            ),
            scans_running: register(
                &registry,
                IntGauge::new("synwatch_scheduler_scans_running", "Scans running now.").expect("valid metric"),
            ),
            reload_successful: register(
                &registry,
                IntGauge::new(
                    "synwatch_config_last_reload_successful",
                    "1 if the last configuration load or reload succeeded, 0 if it was rejected.",
                )
                .expect("valid metric"),
            ),
            reload_timestamp: register(
                &registry,
                Gauge::new(
                    "synwatch_config_last_reload_success_timestamp_seconds",
                    "Time of the last successful configuration load or reload.",
                )
                .expect("valid metric"),
            ),
            state_writes_failed: counter(
                &registry,
                "synwatch_state_write_failures_total",
                "Failed writes of the state file (the previous file stays in place).",
            ),
            history: HistoryCounters::new(&registry),
            engine,
            sync: Mutex::new(()),
            registered: registry.names.take(),
            registry: registry.registry,
        }
    }

    /// The name of every family in the registry (the hand-rendered ones are
    /// [`RENDERED_FAMILIES`]).
    pub fn registered_names(&self) -> &[String] {
        &self.registered
    }

    /// Counts one answered HTTP request. `route` comes from a fixed set (the HTTP crate's
    /// route labels), so clients cannot create series.
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        let mut code = itoa::Buffer::new();
        self.api_requests.with_label_values(&[route, code.format(status)]).inc();
        self.request_duration.with_label_values(&[route]).observe(seconds);
    }

    /// Counts one HTTP connection dropped by the server's admission rule, with the HTTP
    /// crate's reason label (one of [`HTTP_DROP_REASONS`]).
    pub fn observe_connection_dropped(&self, reason: &str) {
        if HTTP_DROP_REASONS.contains(&reason) {
            self.http_connections_dropped.with_label_values(&[reason]).inc();
        }
    }

    /// Adds the per-target series that must exist from the start (zero counters).
    pub(crate) fn add_target(&self, name: &str, named: bool) {
        for change in ["opened", "closed"] {
            self.port_changes.with_label_values(&[name, change]);
        }
        self.hosts_turned_suspect.with_label_values(&[name]);
        for result in ["success", "failure"] {
            self.scans.with_label_values(&[name, result]);
        }
        if named {
            self.scans.with_label_values(&[name, "resolve_failed"]);
            for reason in ResolveFailure::ALL {
                self.resolve_failures.with_label_values(&[name, reason.label()]);
            }
            self.address_changes.with_label_values(&[name]);
        }
    }

    /// Removes every series of a target that left the config.
    pub(crate) fn remove_target(&self, name: &str) {
        for change in ["opened", "closed"] {
            let _ = self.port_changes.remove_label_values(&[name, change]);
        }
        let _ = self.hosts_turned_suspect.remove_label_values(&[name]);
        for verdict in synwatch_io::Verdict::ALL {
            let _ = self.verifications.remove_label_values(&[name, verdict.name()]);
        }
        for result in ["success", "failure", "resolve_failed"] {
            let _ = self.scans.remove_label_values(&[name, result]);
        }
        for reason in ResolveFailure::ALL {
            let _ = self.resolve_failures.remove_label_values(&[name, reason.label()]);
        }
        let _ = self.address_changes.remove_label_values(&[name]);
        let _ = self.scan_duration.remove_label_values(&[name]);
    }

    fn sync_engine(&self, snapshot: &CounterSnapshot) {
        let _guard = self.sync.lock();
        let advance = |counter: &IntCounter, value: u64| {
            let current = counter.get();
            if value > current {
                counter.inc_by(value - current);
            }
        };
        let engine = &self.engine;
        advance(&engine.packets_sent, snapshot.packets_sent);
        advance(&engine.invalid, snapshot.replies_malformed + snapshot.replies_bad_cookie);
        advance(&engine.receive_drops, snapshot.receive_drops);
        advance(&engine.send_errors, snapshot.send_errors);
        advance(&engine.backpressure, snapshot.send_backpressure);
        for (kind, value) in [
            ("open", snapshot.replies_open),
            ("closed", snapshot.replies_closed),
            ("filtered", snapshot.replies_filtered),
            ("duplicate", snapshot.replies_duplicate),
            ("unmatched", snapshot.replies_unmatched),
            ("canary", snapshot.replies_canary),
        ] {
            advance(&engine.replies.with_label_values(&[kind]), value);
        }
    }

    /// Renders the whole exposition: the registry, the per-target families, then the host
    /// names and listeners.
    pub fn render(
        &self,
        engine: &CounterSnapshot,
        targets: &[TargetView<'_>],
        host: &HostView<'_>,
        output: &mut Vec<u8>,
    ) {
        self.sync_engine(engine);
        let families = self.registry.gather();
        if let Err(error) = TextEncoder::new().encode(&families, output) {
            tracing::error!(%error, "cannot encode the self metrics");
        }
        render_engine_rtt(&engine.rtt, output);
        render_targets(targets, output);
        if host.hostnames.is_some() || targets.iter().any(|target| target.names.is_some()) {
            render_host_info(targets, host.hostnames, host.host_info_limit, output);
        }
        if let Some(listeners) = host.listeners {
            render_listeners(listeners, output);
        }
    }
}

/// The `reason` labels of `synwatch_http_connections_dropped_total` (the HTTP crate's
/// `DropReason` labels; a test of the binary keeps the two lists equal).
pub const HTTP_DROP_REASONS: &[&str] =
    &["shed_client_limit", "shed_server_full", "refused_client_limit", "refused_server_full", "head_too_large"];

#[cfg(test)]
mod tests {
    use super::*;

    use crate::hostnames::HostnameCache;
    use crate::listeners::ListenerSnapshot;

    /// The `# HELP` names of an exposition, in order.
    fn help_names(text: &str) -> Vec<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# HELP "))
            .map(|rest| rest.split(' ').next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn the_engine_round_trip_histogram_is_cumulative_per_kind() {
        use std::time::Duration;
        let counters = synwatch_io::Counters::default();
        counters.observe_rtt(synwatch_io::Priority::Background, Duration::from_millis(3));
        counters.observe_rtt(synwatch_io::Priority::Background, Duration::from_millis(30));
        counters.observe_rtt(synwatch_io::Priority::Interactive, Duration::from_secs(20));
        let mut output = Vec::new();
        render_engine_rtt(&counters.snapshot().rtt, &mut output);
        let text = String::from_utf8(output).unwrap();
        for line in [
            "synwatch_engine_rtt_seconds_bucket{kind=\"background\",le=\"0.0025\"} 0",
            "synwatch_engine_rtt_seconds_bucket{kind=\"background\",le=\"0.005\"} 1",
            "synwatch_engine_rtt_seconds_bucket{kind=\"background\",le=\"0.05\"} 2",
            "synwatch_engine_rtt_seconds_bucket{kind=\"background\",le=\"+Inf\"} 2",
            "synwatch_engine_rtt_seconds_sum{kind=\"background\"} 0.033",
            "synwatch_engine_rtt_seconds_bucket{kind=\"interactive\",le=\"10\"} 0",
            "synwatch_engine_rtt_seconds_count{kind=\"interactive\"} 1",
        ] {
            assert!(text.lines().any(|written| written == line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn rendered_families_are_listed() {
        let build = BuildInfo { version: "0.0.0".into(), revision: "test".into() };
        let metrics = Metrics::new(&build, "syn", Shard { index: 1, count: 3 });
        let hostnames = HostnameCache::default();
        let listeners = ListenerSnapshot::default();
        let host = HostView { hostnames: Some(&hostnames), host_info_limit: 10, listeners: Some(&listeners) };
        let mut output = Vec::new();
        metrics.render(&CounterSnapshot::default(), &[], &host, &mut output);
        let text = String::from_utf8(output).unwrap();
        let names = help_names(&text);
        let registered: Vec<&String> = names.iter().filter(|name| metrics.registered_names().contains(name)).collect();
        let rendered: Vec<&str> =
            names.iter().filter(|name| !metrics.registered_names().contains(name)).map(String::as_str).collect();
        assert_eq!(rendered, RENDERED_FAMILIES, "every hand-written family is in RENDERED_FAMILIES, in order");
        assert!(registered.len() > 20, "the registry's families are rendered too: {registered:?}");
        assert!(text.contains("synwatch_shard_info{shard=\"2\",shards=\"3\"} 1"), "{text}");
        assert!(text.contains("synwatch_shards 3"), "{text}");
    }
}
