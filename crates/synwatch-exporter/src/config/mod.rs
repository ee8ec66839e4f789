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

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_with::serde_as;
use synwatch_engine::{
    AddressFamily, AddressRange, ExclusionPolicy, HostName, HostSet, PortSet, Shard, TargetError, TargetItem,
    TargetSpace, TimeSetting,
};

mod dns;
pub use dns::DnsSection;
mod history;
pub use history::HistorySection;
mod listeners;
use listeners::listener_policy_problem;
pub use listeners::{ListenerPorts, ListenersSection, Protocol};
mod target_files;
use target_files::{FileGroup, FilesRead, TopLevelItem};
pub use target_files::{
    MAX_FILE_BYTES, MAX_FILE_ENTRIES, TargetsFilesEntry, matching_files, parse_entry, read_target_file,
    target_files_fingerprint,
};
mod values;
pub(crate) use values::serve_ports;
mod yaml;

use synwatch_io::PayloadTable;
use values::{
    Addresses, AnyDuration, Burst, Canaries, ConcurrentScans, Family, Labels, Listen, Name, Ports, PositiveDuration,
    ProbeCount, Rate, RequestRate, Retries, TargetItems, TimeValue,
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

/// A target's `expect:`: the ports that should be open and the ones that should not.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Expectation {
    /// Ports expected open. When given, it is an allowlist: any other open port is unexpected.
    #[serde_as(as = "Option<Ports>")]
    pub open: Option<PortSet>,
    /// Ports expected closed or filtered.
    #[serde_as(as = "Option<Ports>")]
    pub closed: Option<PortSet>,
    /// Which hosts must have the `open` ports: `all` of the target's addresses, or only the
    /// `responding` ones (for sparse ranges).
    pub hosts: ExpectHosts,
}

/// Which hosts an expectation's `open` ports apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectHosts {
    /// Every address of the target.
    #[default]
    All,
    /// Addresses that answered at least one probe (SYN-ACK or RST).
    Responding,
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

/// One configured target, with the defaults applied.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Unique name, the `target` label.
    pub name: String,
    /// Addresses, CIDRs and ranges (from `addresses:` and the target's files).
    #[serde_as(as = "Addresses<0>")]
    pub addresses: Vec<AddressRange>,
    /// DNS names, resolved at the start of every scan (from `addresses:` and the target's files).
    #[serde_as(as = "Vec<serde_with::DisplayFromStr>")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<HostName>,
    /// The target's own labels, written on its per-target series after `target`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The patterns of the target's own files (as written).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets_files: Vec<String>,
    /// Ports.
    #[serde_as(as = "Ports")]
    pub ports: PortSet,
    /// Interval, timeout, retries and wait for this target.
    #[serde(flatten)]
    pub settings: Defaults,
    /// Whether per-port series are exported.
    pub details: bool,
    /// The expected-port policy, if any.
    pub expect: Option<Expectation>,
    /// The probes of this target when it has no names: its addresses minus the built-in
    /// exclusions, times its ports, built once while parsing. `None` for a named target (its
    /// space is built at each scan) and for one whose files list nothing yet.
    #[serde(skip)]
    space: Option<Arc<TargetSpace>>,
}

impl Target {
    /// Whether the target has names, resolved at the start of each scan.
    pub fn is_named(&self) -> bool {
        !self.names.is_empty()
    }

    /// Whether there is anything to scan: addresses, names, and ports.
    pub fn has_hosts(&self) -> bool {
        self.space.is_some() || self.is_named()
    }

    /// The probes of a target without names (see the field).
    pub fn space(&self) -> Option<&Arc<TargetSpace>> {
        self.space.as_ref()
    }

    /// The probes of this target that a replica running `shard` scans: its block of the
    /// target's hosts ([`HostSet::shard`]) times every port; `None` when the target has fewer
    /// hosts than shards and this replica's block is empty, and for named targets.
    pub fn shard_space(&self, shard: Shard) -> Option<Arc<TargetSpace>> {
        let space = self.space.as_ref()?;
        if shard == Shard::WHOLE {
            return Some(Arc::clone(space));
        }
        let hosts = space.hosts().shard(shard)?;
        TargetSpace::new(hosts, self.ports.clone()).ok().map(Arc::new)
    }

    /// The probes of a scan that found its names at `resolved`: the target's addresses and
    /// those, minus the built-in exclusions, this replica's block of them, times the ports.
    pub fn resolved_space(&self, resolved: &[IpAddr], shard: Shard) -> Result<Option<TargetSpace>, TargetError> {
        let mut includes = self.addresses.clone();
        includes.extend(resolved.iter().map(|address| AddressRange::single(*address)));
        let hosts = HostSet::build(includes, Vec::new(), ExclusionPolicy::Default)?;
        let hosts = if shard == Shard::WHOLE {
            hosts
        } else {
            match hosts.shard(shard) {
                Some(hosts) => hosts,
                None => return Ok(None),
            }
        };
        TargetSpace::new(hosts, self.ports.clone()).map(Some)
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

/// One target as written: its settings are `defaults:`'s where not given.
#[serde_as]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    #[serde_as(as = "Name")]
    name: String,
    #[serde_as(as = "TargetItems")]
    #[serde(default)]
    addresses: Vec<TargetItem>,
    #[serde_as(as = "Option<Family>")]
    #[serde(default)]
    family: Option<AddressFamily>,
    #[serde_as(as = "Labels")]
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    targets_files: Vec<String>,
    #[serde_as(as = "Option<Ports>")]
    #[serde(default)]
    ports: Option<PortSet>,
    #[serde_as(as = "Option<PositiveDuration>")]
    #[serde(default)]
    interval: Option<Duration>,
    #[serde_as(as = "Option<PositiveDuration>")]
    #[serde(default)]
    timeout: Option<Duration>,
    #[serde_as(as = "Option<Retries>")]
    #[serde(default)]
    retries: Option<u32>,
    #[serde_as(as = "Option<TimeValue>")]
    #[serde(default)]
    wait: Option<TimeSetting>,
    #[serde_as(as = "Option<TimeValue>")]
    #[serde(default)]
    retry_gap: Option<TimeSetting>,
    #[serde(default)]
    verify: Option<VerifySetting>,
    #[serde_as(as = "Option<Canaries>")]
    #[serde(default)]
    canaries: Option<u32>,
    #[serde_as(as = "Option<AnyDuration>")]
    #[serde(default)]
    udp_host_interval: Option<Duration>,
    #[serde(default)]
    details: bool,
    expect: Option<Expectation>,
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
    let name_of_target = |index: usize| {
        let path = [Step::Key("targets".into()), Step::Item(index), Step::Key("name".into())];
        NodePositions::of(text).and_then(|nodes| nodes.value(&path)).unwrap_or((1, 1))
    };
    let defaults = file.defaults;
    let mut files = FilesRead::default();
    let mut patterns = Vec::new();
    let mut names = BTreeSet::new();
    let mut targets = Vec::with_capacity(file.targets.len());
    for (index, target) in file.targets.into_iter().enumerate() {
        let refuse = |message: String| {
            let (line, column) = name_of_target(index);
            at(line, column, message)
        };
        if !names.insert(target.name.clone()) {
            return Err(refuse(format!("duplicate target name {:?}; names must be unique", target.name)));
        }
        if target.addresses.is_empty() && target.targets_files.is_empty() {
            let path = [Step::Key("targets".into()), Step::Item(index), Step::Key("addresses".into())];
            if let Some((line, column)) = NodePositions::of(text).and_then(|nodes| nodes.value(&path)) {
                return Err(at(
                    line,
                    column,
                    format!("target {:?}: expected at least one address, CIDR, range or host name", target.name),
                ));
            }
            return Err(refuse(format!(
                "target {:?}: addresses: expected at least one address, CIDR, range or host name (or targets_files)",
                target.name
            )));
        }
        let mut items = target.addresses;
        let mut ports = target.ports.map(|ports| ports.ports().to_vec()).unwrap_or_default();
        let mut labels = target.labels;
        for pattern in &target.targets_files {
            patterns.push(base.join(pattern));
            target_files::read_pattern(pattern, base, &mut files)?;
        }
        for group in files.groups.drain(..) {
            merge_group(&target.name, group, &mut items, &mut ports, &mut labels)?;
        }
        let settings = Defaults {
            interval: target.interval.unwrap_or(defaults.interval),
            timeout: target.timeout.unwrap_or(defaults.timeout),
            retries: target.retries.unwrap_or(defaults.retries),
            wait: target.wait.unwrap_or(defaults.wait),
            retry_gap: target.retry_gap.unwrap_or(defaults.retry_gap),
            verify: target.verify.unwrap_or(defaults.verify),
            canaries: target.canaries.unwrap_or(defaults.canaries),
            udp_host_interval: target.udp_host_interval.unwrap_or(defaults.udp_host_interval),
        };
        let written = TargetParts {
            name: target.name.clone(),
            items,
            family: target.family.unwrap_or_default(),
            ports: PortSet::from_entries(ports),
            settings,
            details: target.details,
            expect: target.expect,
            labels,
            targets_files: target.targets_files,
        };
        targets.push(build_target(written).map_err(|problem| refuse(format!("target {:?}: {problem}", target.name)))?);
    }
    for entry in &file.targets_files {
        patterns.push(base.join(&entry.files));
        target_files::read_pattern(&entry.files, base, &mut files)?;
        for group in files.groups.drain(..) {
            let refuse = |message: String| ConfigError {
                origin: group.origin.clone(),
                line: group.position.0,
                column: group.position.1,
                message,
            };
            let name = if group.groups_in_file == 1 {
                group.stem.clone()
            } else {
                format!("{}-{}", group.stem, group.index + 1)
            };
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(refuse(format!(
                    "this group would be target {name:?}; a target name has 1 to 64 letters, digits, '_', '-' or '.': rename the file"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(refuse(format!("this group would be target {name:?}, a name already taken")));
            }
            let mut ports = entry.ports.as_ref().map(|ports| ports.ports().to_vec()).unwrap_or_default();
            for port in &group.ports {
                if !ports.contains(port) {
                    ports.push(*port);
                }
            }
            let written = TargetParts {
                name: name.clone(),
                items: group.items.clone(),
                family: entry.family.unwrap_or_default(),
                ports: PortSet::from_entries(ports),
                settings: defaults,
                details: entry.details,
                expect: None,
                labels: group.labels.clone(),
                targets_files: Vec::new(),
            };
            targets.push(build_target(written).map_err(|problem| refuse(format!("target {name:?}: {problem}")))?);
        }
    }
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
    // would do nothing at all, which is surely a mistake.
    if targets.is_empty() && !ondemand.enabled && !file.listeners.enabled {
        let (line, column) = key_at("targets");
        return Err(at(
            line,
            column,
            "no targets, and neither ondemand.enabled nor listeners.enabled: this exporter would do nothing; \
             add a target, or enable on-demand scanning (/probe) or the listeners collector"
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
        target_files_fingerprint: files.hasher.finish(),
        udp_payloads: Arc::new(PayloadTable::built_in()),
    })
}

/// A target as written or as a file's group made it, before its checks.
struct TargetParts {
    name: String,
    items: Vec<TargetItem>,
    family: AddressFamily,
    ports: PortSet,
    settings: Defaults,
    details: bool,
    expect: Option<Expectation>,
    labels: BTreeMap<String, String>,
    targets_files: Vec<String>,
}

/// Adds a file's group to a target: its entries, its ports, and its labels, which must agree
/// with the target's (a conflict is an error at the group).
fn merge_group(
    target: &str,
    group: FileGroup,
    items: &mut Vec<TargetItem>,
    ports: &mut Vec<synwatch_engine::Port>,
    labels: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let refuse = |message: String| ConfigError {
        origin: group.origin.clone(),
        line: group.position.0,
        column: group.position.1,
        message,
    };
    for (name, value) in &group.labels {
        match labels.get(name) {
            Some(existing) if existing != value => {
                return Err(refuse(format!(
                    "label {name:?} is {value:?} here but {existing:?} elsewhere for target {target:?}: a target's labels must agree"
                )));
            }
            _ => {
                labels.insert(name.clone(), value.clone());
            }
        }
    }
    if labels.len() > values::MAX_TARGET_LABELS {
        return Err(refuse(format!(
            "target {target:?} would have {} labels, more than the limit of {}",
            labels.len(),
            values::MAX_TARGET_LABELS
        )));
    }
    for port in &group.ports {
        if !ports.contains(port) {
            ports.push(*port);
        }
    }
    items.extend(group.items);
    Ok(())
}

/// Checks a target and builds its space when it has no names.
fn build_target(parts: TargetParts) -> Result<Target, String> {
    let mut addresses = Vec::new();
    let mut names: Vec<HostName> = Vec::new();
    for item in parts.items {
        match item {
            TargetItem::Addresses(range) => addresses.push(range),
            TargetItem::Name(name) => {
                let name = if name.family() == AddressFamily::Any { name.with_family(parts.family) } else { name };
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    let has_hosts = !addresses.is_empty() || !names.is_empty();
    if has_hosts && parts.ports.is_empty() {
        return Err("no ports: give `ports:`, or host:port entries in its files".into());
    }
    // Addresses that are all excluded (multicast, say) or a space too large are found only
    // once addresses and ports are combined.
    let space = if names.is_empty() && has_hosts {
        let space = HostSet::build(addresses.clone(), Vec::new(), ExclusionPolicy::Default)
            .and_then(|hosts| TargetSpace::new(hosts, parts.ports.clone()))
            .map_err(|error| error.to_string())?;
        Some(Arc::new(space))
    } else {
        None
    };
    if let Some(problem) = parts.expect.as_ref().and_then(|expect| expectation_problem(expect, &parts.ports)) {
        return Err(problem);
    }
    Ok(Target {
        name: parts.name,
        addresses,
        names,
        labels: parts.labels,
        targets_files: parts.targets_files,
        ports: parts.ports,
        settings: parts.settings,
        details: parts.details,
        expect: parts.expect,
        space,
    })
}

/// What is wrong with an `expect:` of a target scanning `ports`, if anything.
fn expectation_problem(expect: &Expectation, ports: &PortSet) -> Option<String> {
    if expect.open.is_none() && expect.closed.is_none() {
        return Some("expect needs `open`, `closed` or both".into());
    }
    for (key, listed) in [("open", &expect.open), ("closed", &expect.closed)] {
        let Some(listed) = listed else { continue };
        if let Some(port) = listed.ports().iter().find(|port| !ports.contains(**port)) {
            return Some(format!("expect.{key} lists port {port}, which the target does not scan (ports: {ports})"));
        }
    }
    if let (Some(open), Some(closed)) = (&expect.open, &expect.closed)
        && let Some(port) = open.ports().iter().find(|port| closed.contains(**port))
    {
        return Some(format!("port {port} is in both expect.open and expect.closed"));
    }
    None
}

/// The config as YAML, as it will run (defaults applied). There are no secrets in it yet; when
/// there are (issue 5's tokens), they are redacted here.
pub fn render_effective(config: &Config) -> String {
    // Long port lists stay on one line, as a user writes them, not folded with `>-`.
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(config, options).unwrap_or_else(|error| format!("# cannot render: {error}\n"))
}
