//! The exporter's YAML configuration, behind one [`load`] (and [`parse`] for text in hand).
//!
//! The format is strict: unknown keys are errors, every value is validated while it is read
//! (addresses, port specifications, durations such as `30s` or `5m`, rates), and nothing is
//! coerced: a duration must be a string with a unit, a port a number from 1 to 65535 or a
//! specification string. Every error names `file:line:column` and what was expected. Values are
//! validated inside their `Deserialize` implementations so that the YAML layer (`yaml`) attaches the position
//! of the offending value to the error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use synwatch_engine::targets::parse_target;
use synwatch_engine::{AddressRange, ExclusionPolicy, HostSet, PortSet, Shard, TargetError, TargetSpace};

mod yaml;

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
}

/// `dns:`: how the reverse (PTR) lookups of `resolve_hostnames` are made and cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsSection {
    /// Name servers as `address` or `address:port` (empty: the system's, from /etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// One lookup's deadline.
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    /// A found name is kept at least this long, whatever its record's TTL.
    #[serde(serialize_with = "serialize_duration")]
    pub min_ttl: Duration,
    /// A found name is looked up again after this long at most.
    #[serde(serialize_with = "serialize_duration")]
    pub max_ttl: Duration,
    /// A failed lookup (no PTR record, time-out, error) is retried after this long.
    #[serde(serialize_with = "serialize_duration")]
    pub negative_ttl: Duration,
    /// Addresses remembered at most.
    pub cache_size: usize,
    /// Lookups in flight at once.
    pub concurrency: usize,
}

impl Default for DnsSection {
    fn default() -> DnsSection {
        DnsSection {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(300),
            cache_size: 65_536,
            concurrency: 32,
        }
    }
}

/// A transport protocol of the listeners collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Listening TCP sockets.
    Tcp,
    /// Bound, unconnected UDP sockets.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, the `protocol` label.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Ports of one protocol, as written in `expect_listening` / `forbid_listening`
/// (`22`, `"tcp/22"`, `"udp/53"`, `"tcp/8000-8100"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerPorts {
    /// The protocol (a bare port means TCP).
    pub protocol: Protocol,
    /// The ports.
    pub ports: PortSet,
}

impl fmt::Display for ListenerPorts {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.protocol.name(), self.ports)
    }
}

impl Serialize for ListenerPorts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `listeners:`: the collector of this host's listening sockets, off by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenersSection {
    /// Read /proc and export `synwatch_listener_up` when true.
    pub enabled: bool,
    /// Only these ports (none: every port).
    #[serde(serialize_with = "serialize_optional_ports")]
    pub include_ports: Option<PortSet>,
    /// Never these ports.
    #[serde(serialize_with = "serialize_optional_ports")]
    pub exclude_ports: Option<PortSet>,
    /// Only sockets of these processes (by command name; empty: every process).
    pub include_processes: Vec<String>,
    /// Never sockets of these processes.
    pub exclude_processes: Vec<String>,
    /// Time between two readings.
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
    /// A listener that went away is exported as 0 this long, then forgotten.
    #[serde(serialize_with = "serialize_duration")]
    pub forget_after: Duration,
    /// Whether bound UDP sockets on ephemeral ports (`ip_local_port_range`, the source ports of
    /// clients) are listeners too.
    pub udp_ephemeral: bool,
    /// Listener series at most (the rest are counted as dropped).
    pub max_series: usize,
    /// Ports that must have a listener.
    pub expect_listening: Vec<ListenerPorts>,
    /// Ports that must not have one.
    pub forbid_listening: Vec<ListenerPorts>,
}

impl Default for ListenersSection {
    fn default() -> ListenersSection {
        ListenersSection {
            enabled: false,
            include_ports: None,
            exclude_ports: None,
            include_processes: Vec::new(),
            exclude_processes: Vec::new(),
            interval: Duration::from_secs(15),
            forget_after: Duration::from_secs(3600),
            udp_ephemeral: false,
            max_series: 1000,
            expect_listening: Vec::new(),
            forbid_listening: Vec::new(),
        }
    }
}

/// A target's `expect:`: the ports that should be open and the ones that should not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expectation {
    /// Ports expected open. When given, it is an allowlist: any other open port is unexpected.
    #[serde(serialize_with = "serialize_optional_ports")]
    pub open: Option<PortSet>,
    /// Ports expected closed or filtered.
    #[serde(serialize_with = "serialize_optional_ports")]
    pub closed: Option<PortSet>,
    /// Which hosts must have the `open` ports: `all` of the target's addresses, or only the
    /// `responding` ones (for sparse ranges).
    pub hosts: ExpectHosts,
}

/// Which hosts an expectation's `open` ports apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectHosts {
    /// Every address of the target.
    All,
    /// Addresses that answered at least one probe (SYN-ACK or RST).
    Responding,
}

/// `ondemand:`: scans on request, off by default (see `docs/CONFIGURATION.md`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OnDemandSection {
    /// `/probe` and `/api/v1/scans` answer 404 unless true.
    pub enabled: bool,
    /// What may be scanned on request; required (non-empty) when enabled.
    #[serde(serialize_with = "serialize_addresses")]
    pub allow_targets: Vec<AddressRange>,
    /// Who may ask (empty: any client that passes authentication).
    #[serde(serialize_with = "serialize_addresses")]
    pub allow_clients: Vec<AddressRange>,
    /// Peers whose `X-Forwarded-For` is believed.
    #[serde(serialize_with = "serialize_addresses")]
    pub trusted_proxies: Vec<AddressRange>,
    /// Requests per second per client.
    pub rate_limit: f64,
    /// Requests a client may make at once after being idle.
    pub burst: u32,
    /// Requests per second over all clients (default: `rate_limit`).
    pub global_rate_limit: f64,
    /// Burst over all clients (default: `burst`).
    pub global_burst: u32,
    /// On-demand jobs (probes and API scans) running at once.
    pub max_concurrent: usize,
    /// Hosts × ports one request may ask for.
    pub max_probes_per_request: u64,
    /// Deadline of a probe that names none (and of an API scan, at most `max_scan_timeout`).
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    /// Subtracted from `X-Prometheus-Scrape-Timeout-Seconds`.
    #[serde(serialize_with = "serialize_duration")]
    pub timeout_offset: Duration,
    /// The longest deadline an API scan may ask for.
    #[serde(serialize_with = "serialize_duration")]
    pub max_scan_timeout: Duration,
    /// Finished API scans kept at most.
    pub scan_retention: usize,
    /// Finished API scans are dropped after this long.
    #[serde(serialize_with = "serialize_duration")]
    pub scan_retention_age: Duration,
    /// A repeated `dedupe_key` within this window returns the first scan.
    #[serde(serialize_with = "serialize_duration")]
    pub dedupe_window: Duration,
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
            global_rate_limit: 1.0,
            global_burst: 2,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Module {
    /// Ports when the request names none.
    #[serde(serialize_with = "serialize_optional_ports")]
    pub ports: Option<PortSet>,
    /// `auto` (the engine's mode), `syn` or `connect`.
    pub mode: ModeSetting,
    /// The job's own cap in probes per second.
    pub rate: Option<u64>,
    /// Re-sends of unanswered probes (default 1).
    pub retries: u32,
    /// Upper bound of the deadline.
    #[serde(serialize_with = "serialize_optional_duration")]
    pub timeout: Option<Duration>,
    /// Wait for late replies after the last send, and between rounds (default 1s).
    #[serde(serialize_with = "serialize_duration")]
    pub wait: Duration,
}

impl Default for Module {
    fn default() -> Module {
        Module {
            ports: None,
            mode: ModeSetting::Auto,
            rate: None,
            retries: 1,
            timeout: None,
            wait: Duration::from_secs(1),
        }
    }
}

/// `engine:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineSection {
    /// auto, syn or connect.
    pub mode: ModeSetting,
    /// Global cap in probes per second.
    pub max_rate: u64,
    /// Send through this interface instead of the routed one.
    pub interface: Option<String>,
    /// Source addresses (at most one per family).
    pub source_addresses: Vec<IpAddr>,
    /// Scans running at once at most; further due targets wait in the scheduler queue.
    pub max_concurrent_scans: usize,
}

/// The scan mode as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeSetting {
    /// SYN when raw sockets can be opened, connect() otherwise.
    Auto,
    /// SYN only.
    Syn,
    /// connect() only.
    Connect,
}

/// `defaults:` (and the effective values of each target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Defaults {
    /// Time between the starts of two scans of a target.
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
    /// A scan that runs longer is cut off.
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    /// Re-sends of unanswered probes.
    pub retries: u32,
    /// Wait for late replies after the last send.
    #[serde(serialize_with = "serialize_duration")]
    pub wait: Duration,
}

/// One configured target, with the defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Unique name, the `target` label.
    pub name: String,
    /// Addresses, CIDRs and ranges.
    #[serde(serialize_with = "serialize_addresses")]
    pub addresses: Vec<AddressRange>,
    /// Ports.
    #[serde(serialize_with = "serialize_ports")]
    pub ports: PortSet,
    /// Interval, timeout, retries and wait for this target.
    #[serde(flatten)]
    pub settings: Defaults,
    /// Whether per-port series are exported.
    pub details: bool,
    /// The expected-port policy, if any.
    pub expect: Option<Expectation>,
}

impl Target {
    /// The probes of this target: its addresses minus the built-in exclusions, times its ports.
    /// Always `Ok` for a target of a parsed config (checked while parsing).
    pub fn space(&self) -> Result<TargetSpace, TargetError> {
        let hosts = HostSet::build(self.addresses.clone(), Vec::new(), ExclusionPolicy::Default)?;
        TargetSpace::new(hosts, self.ports.clone())
    }

    /// The probes of this target that a replica running `shard` scans: its block of the
    /// target's hosts ([`HostSet::shard`]) times every port; `None` when the target has fewer
    /// hosts than shards and this replica's block is empty (or when the target is invalid,
    /// which a target of a parsed config never is).
    pub fn shard_space(&self, shard: Shard) -> Option<TargetSpace> {
        let space = self.space().ok()?;
        if shard == Shard::WHOLE {
            return Some(space);
        }
        let hosts = space.hosts().shard(shard)?;
        TargetSpace::new(hosts, self.ports.clone()).ok()
    }
}

/// Loads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        origin: origin.clone(),
        line: 1,
        column: 1,
        message: error.to_string(),
    })?;
    parse(&text, &origin)
}

/// Parses and validates config text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let at =
        |line: usize, column: usize, message: String| ConfigError { origin: origin.to_string(), line, column, message };
    if text.trim().is_empty() {
        return Err(at(1, 1, "the config is empty; expected a mapping with at least `targets`".into()));
    }
    let raw: RawConfig = from_yaml(text).map_err(|error| at(error.position.0, error.position.1, error.message))?;
    // Errors found after deserialization point at the node concerned, located by the parser.
    let key_at = |path: &[Step]| NodePositions::of(text).and_then(|nodes| nodes.key(path)).unwrap_or((1, 1));
    let name_of_target = |index: usize| {
        let path = [Step::Key("targets".into()), Step::Item(index), Step::Key("name".into())];
        NodePositions::of(text).and_then(|nodes| nodes.value(&path)).unwrap_or((1, 1))
    };
    let defaults = Defaults {
        interval: raw.defaults.interval.map_or(Duration::from_secs(300), |value| value.0),
        timeout: raw.defaults.timeout.map_or(Duration::from_secs(120), |value| value.0),
        retries: raw.defaults.retries.map_or(2, |value| value.0 as u32),
        wait: raw.defaults.wait.map_or(Duration::from_secs(1), |value| value.0),
    };
    let mut names = BTreeSet::new();
    let mut targets = Vec::with_capacity(raw.targets.len());
    for (index, target) in raw.targets.into_iter().enumerate() {
        if !names.insert(target.name.0.clone()) {
            let (line, column) = name_of_target(index);
            return Err(at(line, column, format!("duplicate target name {:?}; names must be unique", target.name.0)));
        }
        let target = Target {
            name: target.name.0,
            addresses: target.addresses.0,
            ports: target.ports.0,
            settings: Defaults {
                interval: target.interval.map_or(defaults.interval, |value| value.0),
                timeout: target.timeout.map_or(defaults.timeout, |value| value.0),
                retries: target.retries.map_or(defaults.retries, |value| value.0 as u32),
                wait: target.wait.map_or(defaults.wait, |value| value.0),
            },
            details: target.details,
            expect: target.expect.map(|expect| Expectation {
                open: expect.open.map(|ports| ports.0),
                closed: expect.closed.map(|ports| ports.0),
                hosts: expect.hosts.unwrap_or(ExpectHosts::All),
            }),
        };
        // Addresses that are all excluded (multicast, say) or a space too large are found only
        // once addresses and ports are combined; the error points at the target's name.
        if let Err(error) = target.space() {
            let (line, column) = name_of_target(index);
            return Err(at(line, column, format!("target {:?}: {error}", target.name)));
        }
        if let Some(problem) = target.expect.as_ref().and_then(|expect| expectation_problem(expect, &target.ports)) {
            let (line, column) = name_of_target(index);
            return Err(at(line, column, format!("target {:?}: {problem}", target.name)));
        }
        targets.push(target);
    }
    let defaults_ondemand = OnDemandSection::default();
    let raw_ondemand = raw.ondemand;
    let rate_limit = raw_ondemand.rate_limit.map_or(defaults_ondemand.rate_limit, |value| value.0);
    let burst = raw_ondemand.burst.map_or(defaults_ondemand.burst, |value| value.0 as u32);
    let ondemand = OnDemandSection {
        enabled: raw_ondemand.enabled,
        allow_targets: raw_ondemand.allow_targets.0,
        allow_clients: raw_ondemand.allow_clients.0,
        trusted_proxies: raw_ondemand.trusted_proxies.0,
        rate_limit,
        burst,
        global_rate_limit: raw_ondemand.global_rate_limit.map_or(rate_limit, |value| value.0),
        global_burst: raw_ondemand.global_burst.map_or(burst, |value| value.0 as u32),
        max_concurrent: raw_ondemand.max_concurrent.map_or(defaults_ondemand.max_concurrent, |value| value.0 as usize),
        max_probes_per_request: raw_ondemand
            .max_probes_per_request
            .map_or(defaults_ondemand.max_probes_per_request, |value| value.0),
        timeout: raw_ondemand.timeout.map_or(defaults_ondemand.timeout, |value| value.0),
        timeout_offset: raw_ondemand.timeout_offset.map_or(defaults_ondemand.timeout_offset, |value| value.0),
        max_scan_timeout: raw_ondemand.max_scan_timeout.map_or(defaults_ondemand.max_scan_timeout, |value| value.0),
        scan_retention: raw_ondemand.scan_retention.unwrap_or(defaults_ondemand.scan_retention),
        scan_retention_age: raw_ondemand
            .scan_retention_age
            .map_or(defaults_ondemand.scan_retention_age, |value| value.0),
        dedupe_window: raw_ondemand.dedupe_window.map_or(defaults_ondemand.dedupe_window, |value| value.0),
    };
    if ondemand.enabled && ondemand.allow_targets.is_empty() {
        let (line, column) = key_at(&[Step::Key("ondemand".into())]);
        return Err(at(
            line,
            column,
            "ondemand.enabled is true but ondemand.allow_targets is empty: list the CIDRs that may be scanned on request"
                .into(),
        ));
    }
    let modules = raw
        .modules
        .into_iter()
        .map(|(name, module)| {
            let defaults = Module::default();
            let module = Module {
                ports: module.ports.map(|ports| ports.0),
                mode: module.mode.unwrap_or(defaults.mode),
                rate: module.rate.map(|rate| rate.0),
                retries: module.retries.map_or(defaults.retries, |value| value.0 as u32),
                timeout: module.timeout.map(|value| value.0),
                wait: module.wait.map_or(defaults.wait, |value| value.0),
            };
            (name.0, module)
        })
        .collect();
    let dns_defaults = DnsSection::default();
    let raw_dns = raw.dns;
    let dns = DnsSection {
        nameservers: raw_dns.nameservers.into_iter().map(|server| server.0).collect(),
        timeout: raw_dns.timeout.map_or(dns_defaults.timeout, |value| value.0),
        min_ttl: raw_dns.min_ttl.map_or(dns_defaults.min_ttl, |value| value.0),
        max_ttl: raw_dns.max_ttl.map_or(dns_defaults.max_ttl, |value| value.0),
        negative_ttl: raw_dns.negative_ttl.map_or(dns_defaults.negative_ttl, |value| value.0),
        cache_size: raw_dns.cache_size.map_or(dns_defaults.cache_size, |value| value.0 as usize),
        concurrency: raw_dns.concurrency.map_or(dns_defaults.concurrency, |value| value.0 as usize),
    };
    if dns.min_ttl > dns.max_ttl {
        let (line, column) = key_at(&[Step::Key("dns".into())]);
        return Err(at(line, column, "dns.min_ttl is longer than dns.max_ttl".into()));
    }
    let listener_defaults = ListenersSection::default();
    let raw_listeners = raw.listeners;
    let listeners = ListenersSection {
        enabled: raw_listeners.enabled,
        include_ports: raw_listeners.include_ports.map(|ports| ports.0),
        exclude_ports: raw_listeners.exclude_ports.map(|ports| ports.0),
        include_processes: raw_listeners.include_processes.into_iter().map(|name| name.0).collect(),
        exclude_processes: raw_listeners.exclude_processes.into_iter().map(|name| name.0).collect(),
        interval: raw_listeners.interval.map_or(listener_defaults.interval, |value| value.0),
        forget_after: raw_listeners.forget_after.map_or(listener_defaults.forget_after, |value| value.0),
        udp_ephemeral: raw_listeners.udp_ephemeral,
        max_series: raw_listeners.max_series.map_or(listener_defaults.max_series, |value| value.0 as usize),
        expect_listening: raw_listeners.expect_listening.into_iter().map(|item| item.0).collect(),
        forbid_listening: raw_listeners.forbid_listening.into_iter().map(|item| item.0).collect(),
    };
    if let Some(problem) = listener_policy_problem(&listeners) {
        let (line, column) = key_at(&[Step::Key("listeners".into())]);
        return Err(at(line, column, problem));
    }
    // A config without background targets is a probe-only exporter (blackbox_exporter style,
    // driven by `/probe`) or a listeners-only one (this host's own sockets); with neither it
    // would do nothing at all, which is surely a mistake.
    if targets.is_empty() && !ondemand.enabled && !listeners.enabled {
        let (line, column) = key_at(&[Step::Key("targets".into())]);
        return Err(at(
            line,
            column,
            "no targets, and neither ondemand.enabled nor listeners.enabled: this exporter would do nothing; \
             add a target, or enable on-demand scanning (/probe) or the listeners collector"
                .into(),
        ));
    }
    Ok(Config {
        resolve_hostnames: raw.resolve_hostnames,
        dns,
        listeners,
        listen: raw.listen.map_or_else(|| "127.0.0.1:10045".parse().expect("valid"), |value| value.0),
        state_dir: raw.state_dir,
        engine: EngineSection {
            mode: raw.engine.mode.unwrap_or(ModeSetting::Auto),
            max_rate: raw.engine.max_rate.map_or(10_000, |value| value.0),
            interface: raw.engine.interface,
            source_addresses: raw.engine.source_addresses,
            max_concurrent_scans: raw.engine.max_concurrent_scans.map_or(4, |value| value.0 as usize),
        },
        defaults,
        details_budget: raw.details_budget.unwrap_or(10_000),
        targets,
        ondemand,
        modules,
    })
}

/// What is wrong with an `expect:` of a target scanning `ports`, if anything.
fn expectation_problem(expect: &Expectation, ports: &PortSet) -> Option<String> {
    if expect.open.is_none() && expect.closed.is_none() {
        return Some("expect needs `open`, `closed` or both".into());
    }
    for (key, listed) in [("open", &expect.open), ("closed", &expect.closed)] {
        let Some(listed) = listed else { continue };
        if let Some(port) = listed.as_slice().iter().find(|port| ports.index_of(**port).is_none()) {
            return Some(format!("expect.{key} lists port {port}, which the target does not scan (ports: {ports})"));
        }
    }
    if let (Some(open), Some(closed)) = (&expect.open, &expect.closed)
        && let Some(port) = open.as_slice().iter().find(|port| closed.index_of(**port).is_some())
    {
        return Some(format!("port {port} is in both expect.open and expect.closed"));
    }
    None
}

/// What is wrong with the listener policy, if anything: a port both expected and forbidden.
fn listener_policy_problem(listeners: &ListenersSection) -> Option<String> {
    for expected in &listeners.expect_listening {
        for forbidden in listeners.forbid_listening.iter().filter(|rule| rule.protocol == expected.protocol) {
            if let Some(port) = expected.ports.as_slice().iter().find(|port| forbidden.ports.index_of(**port).is_some())
            {
                return Some(format!(
                    "listeners: {}/{port} is in both expect_listening and forbid_listening",
                    expected.protocol.name()
                ));
            }
        }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Listen>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    defaults: RawDefaults,
    details_budget: Option<usize>,
    #[serde(default)]
    targets: Vec<RawTarget>,
    #[serde(default)]
    ondemand: RawOnDemand,
    #[serde(default)]
    modules: BTreeMap<ModuleName, RawModule>,
    #[serde(default)]
    resolve_hostnames: bool,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    listeners: RawListeners,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    nameservers: Vec<Nameserver>,
    timeout: Option<PositiveDuration>,
    min_ttl: Option<AnyDuration>,
    max_ttl: Option<PositiveDuration>,
    negative_ttl: Option<PositiveDuration>,
    cache_size: Option<Bounded<1, 10_000_000>>,
    concurrency: Option<Bounded<1, 1024>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListeners {
    #[serde(default)]
    enabled: bool,
    include_ports: Option<Ports>,
    exclude_ports: Option<Ports>,
    #[serde(default)]
    include_processes: Vec<ProcessName>,
    #[serde(default)]
    exclude_processes: Vec<ProcessName>,
    interval: Option<PositiveDuration>,
    forget_after: Option<AnyDuration>,
    #[serde(default)]
    udp_ephemeral: bool,
    max_series: Option<Bounded<1, 1_000_000>>,
    #[serde(default)]
    expect_listening: Vec<ListenerPortsItem>,
    #[serde(default)]
    forbid_listening: Vec<ListenerPortsItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    open: Option<Ports>,
    closed: Option<Ports>,
    hosts: Option<ExpectHosts>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnDemand {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    allow_targets: AddressList,
    #[serde(default)]
    allow_clients: AddressList,
    #[serde(default)]
    trusted_proxies: AddressList,
    rate_limit: Option<RequestRate>,
    burst: Option<Burst>,
    global_rate_limit: Option<RequestRate>,
    global_burst: Option<Burst>,
    max_concurrent: Option<ConcurrentScans>,
    max_probes_per_request: Option<ProbeCount>,
    timeout: Option<PositiveDuration>,
    timeout_offset: Option<AnyDuration>,
    max_scan_timeout: Option<PositiveDuration>,
    scan_retention: Option<usize>,
    scan_retention_age: Option<PositiveDuration>,
    dedupe_window: Option<AnyDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModule {
    ports: Option<Ports>,
    mode: Option<ModeSetting>,
    rate: Option<Rate>,
    retries: Option<Retries>,
    timeout: Option<PositiveDuration>,
    wait: Option<AnyDuration>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    mode: Option<ModeSetting>,
    max_rate: Option<Rate>,
    interface: Option<String>,
    #[serde(default)]
    source_addresses: Vec<IpAddr>,
    max_concurrent_scans: Option<ConcurrentScans>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    interval: Option<PositiveDuration>,
    timeout: Option<PositiveDuration>,
    retries: Option<Retries>,
    wait: Option<AnyDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: TargetName,
    addresses: Addresses,
    ports: Ports,
    interval: Option<PositiveDuration>,
    timeout: Option<PositiveDuration>,
    retries: Option<Retries>,
    wait: Option<AnyDuration>,
    #[serde(default)]
    details: bool,
    expect: Option<RawExpect>,
}

/// Deserializes a string and converts it inside the visitor: an error raised there carries the
/// position of the string itself (an error raised after `deserialize_str` returns would carry the
/// position of the enclosing mapping).
fn from_string<'de, D, T>(
    deserializer: D,
    expected: &'static str,
    convert: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct ConvertVisitor<F> {
        expected: &'static str,
        convert: F,
    }
    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for ConvertVisitor<F> {
        type Value = T;
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str(self.expected)
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
            (self.convert)(value).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(ConvertVisitor { expected, convert })
}

struct Listen(SocketAddr);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Listen, D::Error> {
        from_string(deserializer, "an address and port such as 127.0.0.1:10045", |text| {
            text.parse().map(Listen).map_err(|_| format!("{text:?} is not an address and port such as 127.0.0.1:10045"))
        })
    }
}

/// Config files write every duration with its unit, as Prometheus's do (`30s`, `5m`); the
/// command line also takes a bare number as seconds, as masscan and zmap do, but a file is read
/// long after it was written, when `5` could mean anything.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim().parse::<f64>().is_ok() {
        return Err(format!(
            "{text:?} needs a unit, such as {}s or {}m: durations in config files are written with units, as in Prometheus's",
            text.trim(),
            text.trim()
        ));
    }
    humantime::parse_duration(text)
        .map_err(|error| format!("{text:?} is not a duration such as 30s, 5m or 1h30m ({error})"))
}

/// A duration above zero (intervals and timeouts).
struct PositiveDuration(Duration);

impl<'de> Deserialize<'de> for PositiveDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PositiveDuration, D::Error> {
        from_string(deserializer, "a duration such as 30s or 5m", |text| {
            let duration = parse_duration(text)?;
            if duration.is_zero() {
                return Err(format!("{text:?}: expected a duration above zero"));
            }
            Ok(PositiveDuration(duration))
        })
    }
}

/// A duration, zero allowed (the wait for late replies).
struct AnyDuration(Duration);

impl<'de> Deserialize<'de> for AnyDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AnyDuration, D::Error> {
        from_string(deserializer, "a duration such as 1s or 500ms", |text| parse_duration(text).map(AnyDuration))
    }
}

/// Deserializes an unsigned number and checks it inside the visitor (see [`from_string`]).
fn bounded_number<'de, D: Deserializer<'de>>(
    deserializer: D,
    expected: &'static str,
    check: impl FnOnce(u64) -> Result<u64, String>,
) -> Result<u64, D::Error> {
    struct NumberVisitor<F> {
        expected: &'static str,
        check: F,
    }
    impl<F: FnOnce(u64) -> Result<u64, String>> Visitor<'_> for NumberVisitor<F> {
        type Value = u64;
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str(self.expected)
        }
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
            (self.check)(value).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
            Err(E::custom(format!("{value}: expected {}", self.expected)))
        }
    }
    deserializer.deserialize_u64(NumberVisitor { expected, check })
}

struct TargetName(String);

impl<'de> Deserialize<'de> for TargetName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TargetName, D::Error> {
        from_string(deserializer, "a target name", |text| {
            let valid = !text.is_empty()
                && text.len() <= 64
                && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if valid {
                Ok(TargetName(text.to_string()))
            } else {
                Err(format!("target name {text:?}: expected 1 to 64 letters, digits, '_', '-' or '.'"))
            }
        })
    }
}

/// A module name: the same characters as a target name.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct ModuleName(String);

impl<'de> Deserialize<'de> for ModuleName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ModuleName, D::Error> {
        TargetName::deserialize(deserializer).map(|name| ModuleName(name.0))
    }
}

/// A list of addresses, CIDRs and ranges that may be empty (the allowlists).
#[derive(Default)]
struct AddressList(Vec<AddressRange>);

impl<'de> Deserialize<'de> for AddressList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AddressList, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = Vec<AddressRange>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a list of addresses, CIDRs and ranges")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Self::Value, A::Error> {
                let mut ranges = Vec::new();
                while let Some(Address(range)) = sequence.next_element()? {
                    ranges.push(range);
                }
                Ok(ranges)
            }
        }
        deserializer.deserialize_seq(ListVisitor).map(AddressList)
    }
}

/// Requests per second: a number above 0 and at most 1,000,000.
struct RequestRate(f64);

impl<'de> Deserialize<'de> for RequestRate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RequestRate, D::Error> {
        struct RateVisitor;
        impl Visitor<'_> for RateVisitor {
            type Value = f64;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("requests per second, a number above 0 such as 0.5 or 10")
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
                if value.is_finite() && value > 0.0 && value <= 1_000_000.0 {
                    Ok(value)
                } else {
                    Err(E::custom(format!("rate {value}: expected requests per second above 0 and at most 1000000")))
                }
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
                self.visit_f64(value as f64)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
                self.visit_f64(value as f64)
            }
        }
        deserializer.deserialize_f64(RateVisitor).map(RequestRate)
    }
}

struct Addresses(Vec<AddressRange>);

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Addresses, D::Error> {
        struct AddressesVisitor;
        impl<'de> Visitor<'de> for AddressesVisitor {
            type Value = Vec<AddressRange>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a list of addresses, CIDRs and ranges")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Self::Value, A::Error> {
                let mut ranges = Vec::new();
                while let Some(Address(range)) = sequence.next_element()? {
                    ranges.push(range);
                }
                if ranges.is_empty() {
                    return Err(de::Error::custom("expected at least one address"));
                }
                Ok(ranges)
            }
        }
        deserializer.deserialize_seq(AddressesVisitor).map(Addresses)
    }
}

struct Address(AddressRange);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Address, D::Error> {
        from_string(deserializer, "an address, CIDR or range", |text| {
            parse_target(text).map(Address).map_err(|error| error.to_string())
        })
    }
}

/// `"22,80,8000-8100"` or `[22, 80, "8000-8100"]`.
struct Ports(PortSet);

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Ports, D::Error> {
        struct PortsVisitor;
        impl<'de> Visitor<'de> for PortsVisitor {
            type Value = PortSet;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter
                    .write_str("a port specification such as \"22,80,8000-8100\", or a list of ports and such strings")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<PortSet, E> {
                PortSet::parse(value).map_err(|error| E::custom(format!("ports {value:?}: {error}")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<PortSet, A::Error> {
                let mut items = Vec::new();
                while let Some(PortItem(item)) = sequence.next_element()? {
                    items.push(item);
                }
                if items.is_empty() {
                    return Err(de::Error::custom("expected at least one port"));
                }
                PortSet::parse(&items.join(",")).map_err(|error| de::Error::custom(error.to_string()))
            }
        }
        deserializer.deserialize_any(PortsVisitor).map(Ports)
    }
}

/// One list item: a port number or a specification string, checked on its own.
struct PortItem(String);

impl<'de> Deserialize<'de> for PortItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PortItem, D::Error> {
        struct ItemVisitor;
        impl Visitor<'_> for ItemVisitor {
            type Value = String;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a port from 1 to 65535 or a string such as \"8000-8100\"")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<String, E> {
                if (1..=65535).contains(&value) {
                    Ok(value.to_string())
                } else {
                    Err(E::custom(format!("port {value}: expected 1 to 65535")))
                }
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<String, E> {
                Err(E::custom(format!("port {value}: expected 1 to 65535")))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
                PortSet::parse(value).map_err(|error| E::custom(format!("ports {value:?}: {error}")))?;
                Ok(value.to_string())
            }
        }
        deserializer.deserialize_any(ItemVisitor).map(PortItem)
    }
}

/// Probes per second (`max_rate`, a module's `rate`).
type Rate = Bounded<1, 100_000_000>;
/// Scans or on-demand jobs at once.
type ConcurrentScans = Bounded<1, 64>;
/// Re-sends of unanswered probes.
type Retries = Bounded<0, 10>;
/// Requests a client may make at once after being idle.
type Burst = Bounded<1, 100_000>;
/// Hosts × ports of one on-demand request.
type ProbeCount = Bounded<1, 1_000_000_000>;

/// A whole number from `MIN` to `MAX`, checked where it is written (the key's path comes from
/// serde_yaml's error).
struct Bounded<const MIN: u64, const MAX: u64>(u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        bounded_number(deserializer, "a whole number", |value| {
            if (MIN..=MAX).contains(&value) { Ok(value) } else { Err(format!("{value}: expected {MIN} to {MAX}")) }
        })
        .map(Bounded)
    }
}

/// A name server: `192.0.2.53`, `192.0.2.53:5353`, `2001:db8::53` or `[2001:db8::53]:5353`.
struct Nameserver(SocketAddr);

impl<'de> Deserialize<'de> for Nameserver {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Nameserver, D::Error> {
        from_string(deserializer, "a name server address, with an optional :port", |text| {
            if let Ok(address) = text.parse::<SocketAddr>() {
                return Ok(Nameserver(address));
            }
            text.parse::<IpAddr>().map(|address| Nameserver(SocketAddr::new(address, 53))).map_err(|_| {
                format!(
                    "{text:?} is not a name server address such as 192.0.2.53, 192.0.2.53:5353 or [2001:db8::53]:53"
                )
            })
        })
    }
}

/// A process command name as /proc shows it (`comm`: at most 15 bytes).
struct ProcessName(String);

impl<'de> Deserialize<'de> for ProcessName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ProcessName, D::Error> {
        from_string(deserializer, "a process command name", |text| {
            if text.is_empty() || text.len() > 15 || text.contains('/') {
                return Err(format!(
                    "process {text:?}: expected a command name of 1 to 15 bytes without '/', as in /proc/PID/comm"
                ));
            }
            Ok(ProcessName(text.to_string()))
        })
    }
}

/// One entry of `expect_listening` / `forbid_listening`: `22` (TCP), `"tcp/22"`, `"udp/53"`,
/// `"tcp/8000-8100"`.
struct ListenerPortsItem(ListenerPorts);

impl<'de> Deserialize<'de> for ListenerPortsItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ListenerPortsItem, D::Error> {
        struct ItemVisitor;
        impl Visitor<'_> for ItemVisitor {
            type Value = ListenerPorts;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a port or a string such as \"tcp/22\", \"udp/53\" or \"tcp/8000-8100\"")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ListenerPorts, E> {
                match u16::try_from(value) {
                    Ok(port) if port > 0 => {
                        Ok(ListenerPorts { protocol: Protocol::Tcp, ports: PortSet::from_ports(vec![port]) })
                    }
                    _ => Err(E::custom(format!("port {value}: expected 1 to 65535"))),
                }
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ListenerPorts, E> {
                Err(E::custom(format!("port {value}: expected 1 to 65535")))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<ListenerPorts, E> {
                let (protocol, spec) = match value.split_once('/') {
                    Some(("tcp", spec)) => (Protocol::Tcp, spec),
                    Some(("udp", spec)) => (Protocol::Udp, spec),
                    Some((other, _)) => {
                        return Err(E::custom(format!("{value:?}: unknown protocol {other:?}; expected tcp or udp")));
                    }
                    None => (Protocol::Tcp, value),
                };
                PortSet::parse(spec)
                    .map(|ports| ListenerPorts { protocol, ports })
                    .map_err(|error| E::custom(format!("{value:?}: {error}")))
            }
        }
        deserializer.deserialize_any(ItemVisitor).map(ListenerPortsItem)
    }
}

fn serialize_duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*duration).to_string())
}

fn serialize_optional_duration<S: Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => serialize_duration(duration, serializer),
        None => serializer.serialize_none(),
    }
}

fn serialize_optional_ports<S: Serializer>(ports: &Option<PortSet>, serializer: S) -> Result<S::Ok, S::Error> {
    match ports {
        Some(ports) => serialize_ports(ports, serializer),
        None => serializer.serialize_none(),
    }
}

fn serialize_addresses<S: Serializer>(ranges: &[AddressRange], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(ranges.iter().map(|range| range.to_string()))
}

fn serialize_ports<S: Serializer>(ports: &PortSet, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&ports.to_string())
}
