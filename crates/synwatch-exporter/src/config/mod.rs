//! The exporter's YAML configuration, behind one [`load`] (and [`parse`] for text in hand).
//!
//! The format is strict: unknown keys are errors, every value is validated while it is read
//! (addresses, port specifications, durations such as `30s` or `5m`, rates), and nothing is
//! coerced: a duration must be a string with a unit, a port a number from 1 to 65535 or a
//! specification string. Every error names `file:line:column` and what was expected.
//!
//! * The public section types deserialize directly: each one's `Default` is the one place its
//!   defaults are written, and its values are read through the adapters of `values`, which check
//!   them where they are written so the position of an error is the offending value's.
//! * `ConfigFile` is the file's own shape; it differs from [`Config`] only in its targets, whose
//!   settings fall back to `defaults:`. [`parse`] resolves them and checks what involves several
//!   keys (unique names, a target's space, `expect:`, the on-demand allowlist, DNS TTLs, the
//!   listener policy); those errors point at the node concerned, located by the parser (`yaml`).
//! * Each target's space is built once while parsing and kept in the [`Target`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_with::serde_as;
use synwatch_engine::{AddressRange, PortSet, TimeSetting};

mod dns;
pub use dns::DnsSection;
mod history;
pub use history::HistorySection;
mod listeners;
use listeners::listener_policy_problem;
pub use listeners::{ListenerPorts, ListenersSection, Protocol};
mod target_files;
mod targets;
use target_files::TopLevelItem;
pub use target_files::{
    MAX_FILE_BYTES, MAX_FILE_ENTRIES, TargetsFilesEntry, matching_files, parse_entry, parse_target_file,
    read_target_file, target_files_fingerprint,
};
use targets::TargetFile;
pub use targets::{ExpectHosts, Expectation, Target};
mod values;
pub(crate) use values::serve_ports;
mod yaml;

use synwatch_io::PayloadTable;
use values::{
    Addresses, AnyDuration, Burst, Canaries, ConcurrentScans, Listen, Name, Ports, PositiveDuration, ProbeCount, Rate,
    RequestRate, Retries, TimeValue,
};
use yaml::{NodePositions, Step, from_yaml};

/// The config `synwatch serve` runs without a file: loopback only, common ports, every minute.
/// It is `configs/synwatch.yaml`, so the shipped example and the default cannot drift apart.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../../configs/synwatch.yaml");

/// A rejected config: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The file name (or `<embedded>`).
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

/// The whole configuration.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Where the last results are kept across restarts (none: not kept).
    pub state_dir: Option<PathBuf>,
    /// Engine settings.
    pub engine: EngineSection,
    /// Defaults for every target.
    pub defaults: Defaults,
    /// Hard cap on per-port series over all targets.
    pub details_budget: usize,
    /// The targets, names unique.
    pub targets: Vec<Target>,
    /// `/probe` and the scans API, and their guards.
    pub ondemand: OnDemandSection,
    /// Named presets for on-demand scans.
    pub modules: BTreeMap<String, Module>,
    /// Reverse-resolve responding hosts after each scan (`/sd` hostnames, `synwatch_host_info`).
    pub resolve_hostnames: bool,
    /// How reverse lookups are made.
    pub dns: DnsSection,
    /// The local listeners collector (this host's listening sockets).
    pub listeners: ListenersSection,
    /// The exposure history in `state_dir`.
    pub history: HistorySection,
    /// Target files in Prometheus's `file_sd` format, each group of which is a target.
    #[serde_as(as = "Vec<TopLevelItem>")]
    pub targets_files: Vec<TargetsFilesEntry>,
    /// How often the target files are read again when no change was noticed (inotify tells of
    /// most changes at once).
    #[serde_as(as = "PositiveDuration")]
    pub targets_files_refresh: Duration,
    /// Every target file pattern of the config (top level and per target), resolved against the
    /// config's directory: what the watcher watches.
    #[serde(skip)]
    pub target_file_patterns: Vec<PathBuf>,
    /// A hash of every target file read, to tell whether they changed since.
    #[serde(skip)]
    pub target_files_fingerprint: u64,
    /// The UDP payloads of every scan: the built-in ones, under those of `engine.udp_payloads`
    /// (read by [`load`]; [`parse`] leaves the built-in ones).
    #[serde(skip)]
    pub udp_payloads: Arc<PayloadTable>,
}

/// `ondemand:`: scans on request, off by default (see `docs/CONFIGURATION.md`).
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnDemandSection {
    /// `/probe` and `/api/v1/scans` answer 404 unless true.
    pub enabled: bool,
    /// What may be scanned on request; required (non-empty) when enabled.
    #[serde_as(as = "Addresses<0>")]
    pub allow_targets: Vec<AddressRange>,
    /// Who may ask (empty: any client that passes authentication).
    #[serde_as(as = "Addresses<0>")]
    pub allow_clients: Vec<AddressRange>,
    /// Peers whose `X-Forwarded-For` is believed.
    #[serde_as(as = "Addresses<0>")]
    pub trusted_proxies: Vec<AddressRange>,
    /// Requests per second per client.
    #[serde_as(as = "RequestRate")]
    pub rate_limit: f64,
    /// Requests a client may make at once after being idle.
    #[serde_as(as = "Burst")]
    pub burst: u32,
    /// Requests per second over all clients (`None` in the file: `rate_limit`; always set in a
    /// parsed config).
    #[serde_as(as = "Option<RequestRate>")]
    pub global_rate_limit: Option<f64>,
    /// Burst over all clients (`None` in the file: `burst`; always set in a parsed config).
    #[serde_as(as = "Option<Burst>")]
    pub global_burst: Option<u32>,
    /// On-demand jobs (probes and API scans) running at once.
    #[serde_as(as = "ConcurrentScans")]
    pub max_concurrent: usize,
    /// Hosts × ports one request may ask for.
    #[serde_as(as = "ProbeCount")]
    pub max_probes_per_request: u64,
    /// Deadline of a probe that names none (and of an API scan, at most `max_scan_timeout`).
    #[serde_as(as = "PositiveDuration")]
    pub timeout: Duration,
    /// Subtracted from `X-Prometheus-Scrape-Timeout-Seconds`.
    #[serde_as(as = "AnyDuration")]
    pub timeout_offset: Duration,
    /// The longest deadline an API scan may ask for.
    #[serde_as(as = "PositiveDuration")]
    pub max_scan_timeout: Duration,
    /// Finished API scans kept at most.
    pub scan_retention: usize,
    /// Finished API scans are dropped after this long.
    #[serde_as(as = "PositiveDuration")]
    pub scan_retention_age: Duration,
    /// A repeated `dedupe_key` within this window returns the first scan.
    #[serde_as(as = "AnyDuration")]
    pub dedupe_window: Duration,
}

impl OnDemandSection {
    /// Requests per second over all clients.
    pub fn global_rate(&self) -> f64 {
        self.global_rate_limit.unwrap_or(self.rate_limit)
    }

    /// Burst over all clients.
    pub fn global_burst(&self) -> u32 {
        self.global_burst.unwrap_or(self.burst)
    }
}

impl Default for OnDemandSection {
    fn default() -> OnDemandSection {
        OnDemandSection {
            enabled: false,
            allow_targets: Vec::new(),
            allow_clients: Vec::new(),
            trusted_proxies: Vec::new(),
            rate_limit: 1.0,
            burst: 2,
            global_rate_limit: None,
            global_burst: None,
            max_concurrent: 2,
            max_probes_per_request: 4096,
            timeout: Duration::from_secs(10),
            timeout_offset: Duration::from_millis(500),
            max_scan_timeout: Duration::from_secs(3600),
            scan_retention: 100,
            scan_retention_age: Duration::from_secs(3600),
            dedupe_window: Duration::from_secs(600),
        }
    }
}

/// One entry of `modules:`, a preset for on-demand scans.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Module {
    /// Ports when the request names none.
    #[serde_as(as = "Option<Ports>")]
    pub ports: Option<PortSet>,
    /// `auto` (the engine's mode), `syn` or `connect`.
    pub mode: ModeSetting,
    /// The job's own cap in probes per second.
    #[serde_as(as = "Option<Rate>")]
    pub rate: Option<u64>,
    /// Re-sends of unanswered probes (default 1).
    #[serde_as(as = "Retries")]
    pub retries: u32,
    /// Upper bound of the deadline.
    #[serde_as(as = "Option<PositiveDuration>")]
    pub timeout: Option<Duration>,
    /// Wait for late replies after the last send: `auto` (learned, the default) or a duration.
    #[serde_as(as = "TimeValue")]
    pub wait: TimeSetting,
    /// Pause between rounds: `auto` (learned, the default) or a duration.
    #[serde_as(as = "TimeValue")]
    pub retry_gap: TimeSetting,
    /// Verify the opens of hosts not judged suspect with a real handshake: `none` or `connect`.
    pub verify: VerifySetting,
    /// Canary ports per host that answered SYN-ACK (0 to 8; 0 turns them off).
    #[serde_as(as = "Canaries")]
    pub canaries: u32,
    /// The least time between two UDP retries to one host that answered (`0s`: none).
    #[serde_as(as = "AnyDuration")]
    pub udp_host_interval: Duration,
}

impl Default for Module {
    fn default() -> Module {
        Module {
            ports: None,
            mode: ModeSetting::default(),
            rate: None,
            retries: 1,
            timeout: None,
            wait: TimeSetting::Auto,
            retry_gap: TimeSetting::Auto,
            verify: VerifySetting::None,
            canaries: synwatch_engine::DEFAULT_CANARIES,
            udp_host_interval: synwatch_engine::DEFAULT_UDP_HOST_INTERVAL,
        }
    }
}

/// Whether the opens a scan found are verified with a real handshake afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifySetting {
    /// No verification (the default): a SYN-ACK from a host not judged suspect is open.
    #[default]
    None,
    /// A connect() to each open port of a host not judged suspect, reset at once.
    Connect,
}

impl VerifySetting {
    /// Whether it asks for verification.
    pub fn connect(self) -> bool {
        self == VerifySetting::Connect
    }
}

/// `engine:`.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// auto, syn or connect.
    pub mode: ModeSetting,
    /// Global cap in probes per second.
    #[serde_as(as = "Rate")]
    pub max_rate: u64,
    /// Send through this interface instead of the routed one.
    pub interface: Option<String>,
    /// Source addresses (at most one per family).
    pub source_addresses: Vec<IpAddr>,
    /// Scans running at once at most; further due targets wait in the scheduler queue.
    #[serde_as(as = "ConcurrentScans")]
    pub max_concurrent_scans: usize,
    /// A file of UDP payloads over the built-in ones (the format of `synwatch scan
    /// --udp-payloads`), read and checked when the config is loaded; a relative path is relative
    /// to the config file's directory.
    pub udp_payloads: Option<PathBuf>,
}

impl Default for EngineSection {
    fn default() -> EngineSection {
        EngineSection {
            mode: ModeSetting::Auto,
            max_rate: 10_000,
            interface: None,
            source_addresses: Vec::new(),
            max_concurrent_scans: 4,
            udp_payloads: None,
        }
    }
}

/// The scan mode as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeSetting {
    /// SYN when raw sockets can be opened, connect() otherwise.
    #[default]
    Auto,
    /// SYN only.
    Syn,
    /// connect() only.
    Connect,
}

/// `defaults:` (and the effective values of each target).
#[serde_as]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Defaults {
    /// Time between the starts of two scans of a target.
    #[serde_as(as = "PositiveDuration")]
    pub interval: Duration,
    /// A scan that runs longer is cut off.
    #[serde_as(as = "PositiveDuration")]
    pub timeout: Duration,
    /// Re-sends of unanswered probes.
    #[serde_as(as = "Retries")]
    pub retries: u32,
    /// Wait for late replies after the last send: `auto` (learned, the default) or a duration.
    #[serde_as(as = "TimeValue")]
    pub wait: TimeSetting,
    /// Pause between rounds: `auto` (learned, the default) or a duration.
    #[serde_as(as = "TimeValue")]
    pub retry_gap: TimeSetting,
    /// Verify the opens of hosts not judged suspect with a real handshake: `none` or `connect`.
    pub verify: VerifySetting,
    /// Canary ports per host that answered SYN-ACK (0 to 8; 0 turns them off).
    #[serde_as(as = "Canaries")]
    pub canaries: u32,
    /// The least time between two UDP retries to one host that answered (`0s`: none).
    #[serde_as(as = "AnyDuration")]
    pub udp_host_interval: Duration,
}

impl Default for Defaults {
    fn default() -> Defaults {
        Defaults {
            interval: Duration::from_secs(300),
            timeout: Duration::from_secs(120),
            retries: 2,
            wait: TimeSetting::Auto,
            retry_gap: TimeSetting::Auto,
            verify: VerifySetting::None,
            canaries: synwatch_engine::DEFAULT_CANARIES,
            udp_host_interval: synwatch_engine::DEFAULT_UDP_HOST_INTERVAL,
        }
    }
}

/// Loads and validates a config file, and the UDP payload file it names (an error in that file
/// is reported at its own line and column).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        origin: origin.clone(),
        line: 1,
        column: 1,
        message: error.to_string(),
    })?;
    let mut config = parse_in(&text, &origin, path.parent().unwrap_or(Path::new(".")))?;
    if let Some(payloads) = &config.engine.udp_payloads {
        let payloads = path.parent().unwrap_or(Path::new(".")).join(payloads);
        config.udp_payloads = Arc::new(load_udp_payloads(&payloads)?);
    }
    Ok(config)
}

/// Reads a UDP payload file over the built-in payloads.
fn load_udp_payloads(path: &Path) -> Result<PayloadTable, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        origin: origin.clone(),
        line: 1,
        column: 1,
        message: format!("engine.udp_payloads: {error}"),
    })?;
    PayloadTable::built_in().parse_file(&text).map_err(|error| ConfigError {
        origin,
        line: error.line,
        column: error.column,
        message: error.reason,
    })
}

/// The file's own shape: [`Config`] but for its targets, whose settings fall back to
/// `defaults:`. Every section's defaults are its type's `Default`.
#[serde_as]
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigFile {
    #[serde_as(as = "Listen")]
    listen: SocketAddr,
    state_dir: Option<PathBuf>,
    engine: EngineSection,
    defaults: Defaults,
    details_budget: usize,
    targets: Vec<TargetFile>,
    ondemand: OnDemandSection,
    #[serde_as(as = "BTreeMap<Name, _>")]
    modules: BTreeMap<String, Module>,
    resolve_hostnames: bool,
    dns: DnsSection,
    listeners: ListenersSection,
    history: HistorySection,
    #[serde_as(as = "Vec<TopLevelItem>")]
    targets_files: Vec<TargetsFilesEntry>,
    #[serde_as(as = "PositiveDuration")]
    targets_files_refresh: Duration,
}

impl Default for ConfigFile {
    fn default() -> ConfigFile {
        ConfigFile {
            listen: SocketAddr::from(([127, 0, 0, 1], 10045)),
            state_dir: None,
            engine: EngineSection::default(),
            defaults: Defaults::default(),
            details_budget: 10_000,
            targets: Vec::new(),
            ondemand: OnDemandSection::default(),
            modules: BTreeMap::new(),
            resolve_hostnames: false,
            dns: DnsSection::default(),
            listeners: ListenersSection::default(),
            history: HistorySection::default(),
            targets_files: Vec::new(),
            targets_files_refresh: Duration::from_secs(300),
        }
    }
}

/// Parses and validates config text; `origin` names it in errors. Target files are read
/// relative to the working directory.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    parse_in(text, origin, Path::new("."))
}

/// [`parse`], with target file patterns relative to `base` (the config file's directory).
pub fn parse_in(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
    let at =
        |line: usize, column: usize, message: String| ConfigError { origin: origin.to_string(), line, column, message };
    if text.trim().is_empty() {
        return Err(at(1, 1, "the config is empty; expected a mapping with at least `targets`".into()));
    }
    let file: ConfigFile = from_yaml(text).map_err(|error| at(error.position.0, error.position.1, error.message))?;
    // Errors found after deserialization point at the node concerned, located by the parser.
    let key_at = |key: &str| NodePositions::of(text).and_then(|nodes| nodes.key(&[Step::Key(key.into())]));
    let key_at = |key: &str| key_at(key).unwrap_or((1, 1));
    let defaults = file.defaults;
    let (targets, patterns, fingerprint) =
        targets::build_targets(file.targets, &file.targets_files, defaults, text, origin, base)?;
    let mut ondemand = file.ondemand;
    ondemand.global_rate_limit = Some(ondemand.global_rate());
    ondemand.global_burst = Some(ondemand.global_burst());
    if ondemand.enabled && ondemand.allow_targets.is_empty() {
        let (line, column) = key_at("ondemand");
        return Err(at(
            line,
            column,
            "ondemand.enabled is true but ondemand.allow_targets is empty: list the CIDRs that may be scanned on request"
                .into(),
        ));
    }
    if file.dns.min_ttl > file.dns.max_ttl {
        let (line, column) = key_at("dns");
        return Err(at(line, column, "dns.min_ttl is longer than dns.max_ttl".into()));
    }
    if let Some(problem) = listener_policy_problem(&file.listeners) {
        let (line, column) = key_at("listeners");
        return Err(at(line, column, problem));
    }
    // A config without background targets is a probe-only exporter (blackbox_exporter style,
    // driven by `/probe`) or a listeners-only one (this host's own sockets); with neither it
    // would do nothing at all, which is surely a mistake. Target files whose patterns match
    // nothing yet are not that: the watch applies the first file written, as Prometheus's file_sd
    // starts with an empty directory.
    if targets.is_empty() && patterns.is_empty() && !ondemand.enabled && !file.listeners.enabled {
        let (line, column) = key_at("targets");
        return Err(at(
            line,
            column,
            "no targets, no targets_files, and neither ondemand.enabled nor listeners.enabled: this exporter \
             would do nothing; add a target, or enable on-demand scanning (/probe) or the listeners collector"
                .into(),
        ));
    }
    Ok(Config {
        listen: file.listen,
        state_dir: file.state_dir,
        engine: file.engine,
        defaults,
        details_budget: file.details_budget,
        targets,
        ondemand,
        modules: file.modules,
        resolve_hostnames: file.resolve_hostnames,
        dns: file.dns,
        listeners: file.listeners,
        history: file.history,
        targets_files: file.targets_files,
        targets_files_refresh: file.targets_files_refresh,
        target_file_patterns: patterns,
        target_files_fingerprint: fingerprint,
        udp_payloads: Arc::new(PayloadTable::built_in()),
    })
}

/// The config as YAML, as it will run (defaults applied). There are no secrets in it yet; when
/// there are (issue 5's tokens), they are redacted here.
pub fn render_effective(config: &Config) -> String {
    // Long port lists stay on one line, as a user writes them, not folded with `>-`.
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(config, options).unwrap_or_else(|error| format!("# cannot render: {error}\n"))
}
