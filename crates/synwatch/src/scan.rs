//! `synwatch scan`: parse the command line into a job, run it on a fresh engine, stream the
//! results, print a summary.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use synwatch_engine::targets::AddressRange;
use synwatch_engine::{AddressFamily, HostName, TargetItem, parse_target_item, parse_target_item_list};
use synwatch_engine::{
    ExclusionPolicy, HostSet, JobSettings, Port, PortSet, PortState, Protocol, Shard, Suspect, TargetSpace,
    TimeSetting, TimingBounds, TimingReport,
};
use synwatch_exporter::names::{Resolution, ResolvedNames, resolve_names};
use synwatch_io::{Engine, EngineConfig, JobRequest, Mode, TransmitChoice, Verdict, VerifyOptions};

use crate::UsageError;
use crate::output::{Format, OpenNotes, Writer};

/// Options of `synwatch scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Targets: addresses, CIDRs, ranges (a.b.c.d-e.f.g.h), host names (resolved once, A and
    /// AAAA; `ipv4:NAME` or `ipv6:NAME` for one family), or @FILE: one per line, or a
    /// Prometheus file_sd file (YAML or JSON; its host:port entries add their ports).
    #[arg(required = true, value_name = "TARGET")]
    targets: Vec<String>,
    /// Name servers for the targets given by name (`address` or `address:port`, repeatable);
    /// default: the system's, from /etc/resolv.conf. /etc/hosts is read first either way.
    #[arg(long, value_name = "ADDRESS", value_parser = parse_nameserver)]
    nameserver: Vec<std::net::SocketAddr>,
    /// Ports, for example 22,80,443,8000-8100.
    #[arg(short, long)]
    ports: String,
    /// Packets per second, all probes and retries included.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// How many times an unanswered probe is sent again.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// How many more times an unanswered probe is sent again when its host answered on another
    /// port (its silence is then more likely loss than a filter); 0 to 8.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=8))]
    host_up_retries: u32,
    /// Pause between the end of one round and the retries of the next: auto (each network
    /// group's measured timeout, srtt + 4·rttvar) or a fixed duration.
    #[arg(long, default_value = "auto", value_parser = crate::durations::parse_time_setting)]
    retry_gap: TimeSetting,
    /// How long to wait for late replies after the last probe: auto (twice the slowest
    /// waiting group's timeout, at most --max-wait) or a fixed duration.
    #[arg(long, default_value = "auto", value_parser = crate::durations::parse_time_setting)]
    wait: TimeSetting,
    /// The timeout before any round trip is measured (nmap's --initial-rtt-timeout).
    #[arg(long, default_value = "1s", value_parser = crate::durations::parse_positive_duration)]
    initial_rtt_timeout: Duration,
    /// The shortest learned timeout (nmap's --min-rtt-timeout).
    #[arg(long, default_value = "100ms", value_parser = crate::durations::parse_positive_duration)]
    min_rtt_timeout: Duration,
    /// The longest learned timeout (nmap's --max-rtt-timeout).
    #[arg(long, default_value = "10s", value_parser = crate::durations::parse_positive_duration)]
    max_rtt_timeout: Duration,
    /// Canary ports per host that answered SYN-ACK (0 to 8; 0 turns them off): high ports no
    /// real service listens on, whose SYN-ACKs show a SYN proxy or tarpit.
    #[arg(long, default_value_t = synwatch_engine::DEFAULT_CANARIES, value_parser = clap::value_parser!(u32).range(0..=8))]
    canaries: u32,
    /// The least time between two UDP retries to one host that answered, so that hosts
    /// rate-limiting their ICMP port unreachable (Linux: one a second) answer each; 0: none.
    #[arg(long, default_value = "1200ms", value_parser = crate::durations::parse_cli_duration)]
    udp_host_interval: Duration,
    /// A file of UDP payloads, one per line (`udp/9999 hex 00ff`, `7777 text "ping\r\n"`), over
    /// the built-in ones (see docs/CONFIGURATION.md, "UDP payloads").
    #[arg(long, value_name = "FILE")]
    udp_payloads: Option<String>,
    /// After the scan, complete a real handshake (connect(), no privilege needed) with every
    /// open port of a host not judged suspect, send nothing and reset it: none or connect.
    #[arg(long, default_value = "none", value_parser = ["none", "connect"])]
    verify: String,
    /// The longest automatic wait after the last probe.
    #[arg(long, default_value = "10s", value_parser = crate::durations::parse_positive_duration)]
    max_wait: Duration,
    /// Give up after this long whatever is left (unanswered probes count as filtered).
    #[arg(long, value_parser = crate::durations::parse_cli_duration)]
    timeout: Option<Duration>,
    /// Addresses, CIDRs or ranges to leave out (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<String>,
    /// A file of addresses to leave out, in the @FILE format.
    #[arg(long)]
    exclude_file: Vec<String>,
    /// Also scan the ranges excluded by default (0.0.0.0/8, multicast, 240.0.0.0/4, ff00::/8).
    #[arg(long)]
    allow_reserved: bool,
    /// Permutation seed (random when not given). Shards of one scan must use the same seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Scan only shard i of n (1-based); needs --seed.
    #[arg(long)]
    shard: Option<String>,
    /// Send through this interface.
    #[arg(long)]
    interface: Option<String>,
    /// Source address (once per family).
    #[arg(long)]
    source_ip: Vec<IpAddr>,
    /// Which states to print: open, closed, filtered (with UDP's open|filtered), or all
    /// (comma-separated).
    #[arg(long, default_value = "open", value_delimiter = ',')]
    states: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Write results to this file instead of stdout.
    #[arg(short, long)]
    output: Option<String>,
    /// Scan mode: auto (SYN when raw sockets can be opened, else connect), syn, or connect.
    #[arg(long, default_value = "auto", value_parser = parse_mode)]
    mode: Mode,
    /// connect() mode: attempts in flight at most (default: from RLIMIT_NOFILE, with a margin).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_inflight: Option<u32>,
    /// Transmit path: auto (TX ring when possible), sendmmsg, or ring.
    #[arg(long, default_value = "auto", value_parser = parse_transmit)]
    transmit: TransmitChoice,
    /// Probes per batch (per sendmmsg call or ring flush).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    /// Sender threads, each with its own sockets (in connect mode: connect() threads, each with
    /// its own epoll). One SYN sender sends about a million packets per second on a typical
    /// core; one connect() thread some 15,000 probes per second.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    sender_threads: u32,
    /// Say which interface, source address and transmitter were picked.
    #[arg(short, long)]
    verbose: bool,
    /// Do not show the progress bar.
    #[arg(long)]
    no_progress: bool,
}

pub(crate) fn parse_mode(text: &str) -> Result<Mode, String> {
    match text {
        "auto" => Ok(Mode::Auto),
        "syn" => Ok(Mode::Syn),
        "connect" => Ok(Mode::Connect),
        other => Err(format!("{other:?} is not one of auto, syn, connect")),
    }
}

pub(crate) fn parse_transmit(text: &str) -> Result<TransmitChoice, String> {
    match text {
        "auto" => Ok(TransmitChoice::Auto),
        "sendmmsg" => Ok(TransmitChoice::Sendmmsg),
        "ring" => Ok(TransmitChoice::Ring),
        other => Err(format!("{other:?} is not one of auto, sendmmsg, ring")),
    }
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// TARGET arguments as given: addresses, names, and the ports `file_sd` entries add.
#[derive(Debug, Default)]
pub(crate) struct TargetArguments {
    pub(crate) ranges: Vec<AddressRange>,
    pub(crate) names: Vec<HostName>,
    pub(crate) ports: Vec<Port>,
    /// The names already in `names` (a file_sd file may hold 100,000 of them).
    seen: std::collections::HashSet<HostName>,
}

impl TargetArguments {
    fn add(&mut self, item: TargetItem) {
        match item {
            TargetItem::Addresses(range) => self.ranges.push(range),
            TargetItem::Name(name) => {
                if self.seen.insert(name.clone()) {
                    self.names.push(name);
                }
            }
        }
    }
}

/// Reads TARGET arguments (`@file` included), names allowed.
pub(crate) fn read_target_arguments(items: &[String], what: &str) -> Result<TargetArguments> {
    let mut read = TargetArguments::default();
    for item in items {
        if let Some(path) = item.strip_prefix('@') {
            read_target_file(path, what, &mut read)?;
        } else {
            for part in item.split(',').filter(|part| !part.trim().is_empty()) {
                let item =
                    parse_target_item(part, AddressFamily::Any).map_err(|error| usage(format!("{what}: {error}")))?;
                read.add(item);
            }
        }
    }
    Ok(read)
}

/// Reads TARGET arguments (`@file` included) that must be addresses (exclusions, the bench).
pub(crate) fn read_targets(items: &[String], what: &str) -> Result<Vec<AddressRange>> {
    let read = read_target_arguments(items, what)?;
    if let Some(name) = read.names.first() {
        return Err(usage(format!(
            "{what}: {name:?} is a host name; only addresses, CIDRs and ranges are taken here",
            name = name.name()
        )));
    }
    Ok(read.ranges)
}

/// Reads an @FILE: a Prometheus `file_sd` file (by its `.yml`, `.yaml` or `.json` name, or a
/// first character of `[` or `-`), else a plain list.
fn read_target_file(path: &str, what: &str, read: &mut TargetArguments) -> Result<()> {
    let text = fs::read_to_string(path).map_err(|error| usage(format!("{what} file {path}: {error}")))?;
    let by_name = [".yml", ".yaml", ".json"].iter().any(|extension| path.ends_with(extension));
    let by_content = text.trim_start().starts_with(['[', '-']);
    if by_name || by_content {
        let (items, ports) = synwatch_exporter::config::read_target_file(std::path::Path::new(path))
            .map_err(|error| usage(format!("{what} file: {error}")))?;
        for item in items {
            read.add(item);
        }
        read.ports.extend(ports);
        return Ok(());
    }
    let items = parse_target_item_list(&text).map_err(|(line, error)| usage(format!("{path}:{line}: {error}")))?;
    for item in items {
        read.add(item);
    }
    Ok(())
}

/// `--nameserver`: an address, with an optional port (53 by default).
fn parse_nameserver(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse::<std::net::SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|address| std::net::SocketAddr::new(address, 53)))
        .map_err(|_| format!("{text:?} is not a name server address such as 192.0.2.53 or [2001:db8::53]:5353"))
}

/// Resolves the names of a scan once, with /etc/hosts and the given or the system's name
/// servers.
fn resolve(names: &[HostName], nameservers: &[std::net::SocketAddr]) -> Result<ResolvedNames> {
    if names.is_empty() {
        return Ok(ResolvedNames::default());
    }
    let dns = synwatch_exporter::config::DnsSection {
        nameservers: nameservers.to_vec(),
        ..synwatch_exporter::config::DnsSection::default()
    };
    let resolver = crate::dns::HickoryResolver::new(&dns)
        .map_err(|error| anyhow::anyhow!("cannot set up the DNS resolver: {error}"))?;
    match resolve_names(names, &resolver) {
        Resolution::Resolved(resolved) => {
            for (name, addresses) in resolved.entries() {
                tracing::info!("{} resolved to {addresses:?}", name.name());
            }
            Ok(resolved)
        }
        Resolution::Failed { name, reason, detail } => {
            Err(anyhow::anyhow!("target {} did not resolve ({}): {detail}", name.name(), reason.label()))
        }
    }
}

/// Which states to print.
#[derive(Debug, Clone, Copy)]
struct StateFilter {
    open: bool,
    closed: bool,
    filtered: bool,
}

impl StateFilter {
    fn parse(items: &[String]) -> Result<StateFilter> {
        let mut filter = StateFilter { open: false, closed: false, filtered: false };
        for item in items {
            match item.trim() {
                "open" => filter.open = true,
                "closed" => filter.closed = true,
                "filtered" => filter.filtered = true,
                "all" => filter = StateFilter { open: true, closed: true, filtered: true },
                other => {
                    return Err(usage(format!("--states: {other:?} is not one of open, closed, filtered, all")));
                }
            }
        }
        Ok(filter)
    }

    /// Whether results in `state` are written; `filtered` covers UDP's `open|filtered` too.
    fn wants(&self, state: PortState) -> bool {
        match state {
            PortState::Open => self.open,
            PortState::Closed => self.closed,
            _ => self.filtered,
        }
    }
}

/// Builds the job from the arguments (every check that is the user's fault happens here).
fn build_job(args: &ScanArgs) -> Result<(Arc<TargetSpace>, JobSettings, ResolvedNames)> {
    let ports = PortSet::parse(&args.ports).map_err(|error| usage(format!("--ports {:?}: {error}", args.ports)))?;
    let targets = read_target_arguments(&args.targets, "target")?;
    let mut exclusions = read_targets(&args.exclude, "--exclude")?;
    let excluded_files: Vec<String> = args.exclude_file.iter().map(|path| format!("@{path}")).collect();
    exclusions.extend(read_targets(&excluded_files, "--exclude-file")?);
    let ports = if targets.ports.is_empty() {
        ports
    } else {
        let mut all = ports.ports().to_vec();
        all.extend(&targets.ports);
        PortSet::from_entries(all)
    };
    let resolved = resolve(&targets.names, &args.nameserver)?;
    let mut includes = targets.ranges;
    includes.extend(resolved.addresses().into_iter().map(AddressRange::single));
    let policy = if args.allow_reserved { ExclusionPolicy::AllowReserved } else { ExclusionPolicy::Default };
    let hosts = HostSet::build(includes, exclusions, policy).map_err(|error| usage(error.to_string()))?;
    if hosts.excluded_by_default() > 0 {
        tracing::warn!(
            addresses = %hosts.excluded_by_default(),
            "left out reserved or multicast addresses (use --allow-reserved to scan them)"
        );
    }
    let space = TargetSpace::new(hosts, ports).map_err(|error| usage(error.to_string()))?;
    let shard = match &args.shard {
        Some(text) => {
            if args.seed.is_none() {
                return Err(usage("--shard needs --seed: every shard must use the same permutation"));
            }
            Shard::parse(text).map_err(|error| usage(format!("--shard: {error}")))?
        }
        None => Shard::WHOLE,
    };
    if args.rate == 0 {
        return Err(usage("--rate must be at least 1"));
    }
    let seed = match args.seed {
        Some(seed) => seed,
        // The seed only orders probes; it protects nothing (the cookies have their own keys).
        None => getrandom::u64().map_err(|error| anyhow::anyhow!("no randomness from the OS: {error}"))?,
    };
    let timing = TimingBounds {
        initial: args.initial_rtt_timeout,
        min: args.min_rtt_timeout,
        max: args.max_rtt_timeout,
        max_wait: args.max_wait,
        ..TimingBounds::DEFAULT
    };
    timing.validate().map_err(|error| usage(format!("timeouts: {error}")))?;
    let settings = JobSettings {
        retries: args.retries,
        host_up_retries: args.host_up_retries,
        retry_gap: args.retry_gap,
        wait: args.wait,
        timing,
        canaries: args.canaries,
        udp_host_interval: args.udp_host_interval,
        seed,
        shard,
    };
    Ok((Arc::new(space), settings, resolved))
}

/// Runs `synwatch scan`.
pub fn run(args: ScanArgs) -> Result<()> {
    init_logging(args.verbose);
    let filter = StateFilter::parse(&args.states)?;
    let (space, settings, resolved) = build_job(&args)?;
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(fs::File::create(path).with_context(|| format!("cannot create {path}"))?),
        None => Box::new(io::stdout().lock()),
    };
    let names = resolved
        .entries()
        .iter()
        .rev()
        .flat_map(|(name, addresses)| addresses.iter().map(|address| (*address, name.name().to_string())))
        .collect();
    let mut writer = Writer::new(args.format, BufWriter::new(out))?.with_names(names);
    let config = EngineConfig {
        rate: args.rate,
        batch: args.batch as usize,
        sender_threads: args.sender_threads as usize,
        mode: args.mode,
        max_inflight: args.max_inflight.map(|limit| limit as usize),
        interface: args.interface.clone(),
        source_addresses: args.source_ip.clone(),
        transmit: args.transmit,
        ..EngineConfig::default()
    };
    let payloads = match &args.udp_payloads {
        Some(path) => Some(Arc::new(read_payloads(path)?)),
        None => None,
    };
    let engine = Engine::start(config)?;
    let started = Instant::now();
    let job = engine.submit(JobRequest {
        stream_results: true,
        payloads,
        ..JobRequest::new(Arc::clone(&space), settings, args.timeout)
    })?;
    for (path, transmitter) in job.paths() {
        tracing::info!("{} via {transmitter}", path.describe());
    }
    let progress = progress_bar(&args, job.progress().total);
    let results = job.results().expect("results were requested");
    // Opens wait for the end of the job: whether their host is suspect, and how their
    // verification went, is known only then. Without canaries or verification they stream.
    let hold_opens = settings.canaries > 0 || args.verify == "connect";
    let mut opens = Vec::new();
    let mut take = |result: synwatch_io::ProbeResult, writer: &mut Writer<_>| -> io::Result<()> {
        if result.state == PortState::Open && hold_opens {
            opens.push(result);
        } else if filter.wants(result.state) {
            writer.write(result.address, result.port, result.state.name(), result.rtt)?;
        }
        Ok(())
    };
    loop {
        // Results are drained in batches and the wait is on the job's end, not on the channel:
        // blocking on the channel would make the engine wake this thread once per result.
        for result in results.try_iter() {
            take(result, &mut writer)?;
        }
        if job.wait_timeout(Duration::from_millis(50)).is_some() {
            break;
        }
        if let Some(bar) = &progress {
            let now = job.progress();
            bar.set_position(now.answered);
            bar.set_message(format!("sent {} round {}", now.sent, now.round + 1));
        }
    }
    let summary = job.wait();
    while let Ok(result) = results.try_recv() {
        take(result, &mut writer)?;
    }
    let suspects: HashMap<IpAddr, Suspect> = job.suspects().into_iter().collect();
    opens.sort_by_key(|result| result.index);
    let verified = if args.verify == "connect" {
        // A handshake verifies TCP opens; a UDP open is already a service's own answer.
        let endpoints: Vec<(IpAddr, u16)> = opens
            .iter()
            .filter(|result| result.port.is_tcp() && !suspects.contains_key(&result.address))
            .map(|result| (result.address, result.port.number))
            .collect();
        let options = VerifyOptions::from_timing(
            summary.timing.last_timeout.map(|(timeout, _)| timeout),
            summary.timing.estimate.map(|estimate| estimate.srtt),
        );
        let started = Instant::now();
        let verifications = engine.verify(&endpoints, options).context("cannot verify the open ports")?;
        Some((verifications, started.elapsed()))
    } else {
        None
    };
    let verdicts: HashMap<(IpAddr, Port), Verdict> = verified
        .iter()
        .flat_map(|(verifications, _)| verifications)
        .map(|verification| ((verification.address, Port::tcp(verification.port)), verification.verdict))
        .collect();
    if filter.open && hold_opens {
        for result in &opens {
            let notes = OpenNotes {
                suspect: suspects.get(&result.address).map(|reason| reason.name()),
                verify: verdicts.get(&(result.address, result.port)).map(|verdict| verdict.name()),
            };
            writer.write_noted(result.address, result.port, "open", result.rtt, notes)?;
        }
    }
    if filter.filtered {
        for index in job.unanswered() {
            if let Some((address, port)) = space.probe_at(index) {
                writer.write(address, port, PortState::Unknown.finalized(port.protocol).name(), None)?;
            }
        }
    }
    writer.flush()?;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let elapsed = started.elapsed();
    let counters = engine.counters();
    let table = job.table();
    let filtered_total = job.progress().total - table.count(PortState::Open) - table.count(PortState::Closed);
    eprintln!(
        "synwatch ({} mode): {} probes sent, {} replies; {} open, {} closed, {} filtered; {:.2}s, {:.0} probes/s; {} receive drops, {} send errors, {} backpressure pauses ({:?})",
        engine.mode().name(),
        summary.probes_sent,
        counters.replies_open + counters.replies_closed + counters.replies_filtered + counters.replies_duplicate,
        table.count(PortState::Open),
        table.count(PortState::Closed),
        filtered_total,
        elapsed.as_secs_f64(),
        counters.packets_sent as f64 / elapsed.as_secs_f64().max(1e-9),
        counters.receive_drops,
        counters.send_errors,
        counters.send_backpressure,
        summary.reason,
    );
    eprintln!("synwatch timing: {}", describe_timing(&settings, &summary.timing));
    if space.ports().count_of(Protocol::Udp) > 0 {
        let limited = job.hosts_closed_on_retries();
        eprintln!("synwatch udp: {}", describe_udp(&space, table, &limited, !settings.udp_host_interval.is_zero()));
    }
    let evidence = summary.evidence;
    let suspect_opens = opens.iter().filter(|result| suspects.contains_key(&result.address)).count();
    eprintln!(
        "synwatch evidence: {} canary ports to {} hosts, {} canary probes ({} answered open, {} closed); {} hosts suspect ({} all_open, {} synproxy) with {} of the {} opens",
        evidence.canary_ports,
        evidence.hosts_canaried,
        evidence.canary_probes_sent,
        evidence.canaries_open,
        evidence.canaries_closed,
        suspects.len(),
        summary.hosts_suspect[0],
        summary.hosts_suspect[1],
        suspect_opens,
        table.count(PortState::Open),
    );
    if let Some((verifications, took)) = &verified {
        let count =
            |wanted: Verdict| verifications.iter().filter(|verification| verification.verdict == wanted).count();
        let verdicts: Vec<String> =
            Verdict::ALL.iter().map(|&verdict| format!("{} {}", count(verdict), verdict.name())).collect();
        eprintln!(
            "synwatch verify: {} opens verified by connect() in {:.2}s: {}",
            verifications.len(),
            took.as_secs_f64(),
            verdicts.join(", ")
        );
    }
    Ok(())
}

/// Reads a UDP payload file over the built-in payloads; a bad line is a usage error with its
/// file:line:column.
fn read_payloads(path: &str) -> Result<synwatch_io::PayloadTable> {
    let text = fs::read_to_string(path).map_err(|error| usage(format!("--udp-payloads {path}: {error}")))?;
    synwatch_io::PayloadTable::built_in()
        .parse_file(&text)
        .map_err(|error| usage(format!("--udp-payloads {path}:{}:{}: {}", error.line, error.column, error.reason)))
}

/// The UDP part of a scan's summary: its four states, and the hosts whose ICMP errors look
/// rate-limited (Linux sends six to a peer, then one a second).
///
/// * `limited`: hosts that answered port unreachable to retries on two or more ports they had
///   left unanswered at first ([`synwatch_io::JobHandle::hosts_closed_on_retries`]). Retries
///   paced per host (`--udp-host-interval`) get through such a limit, so their closed ports are
///   found; any still silent may be closed too.
/// * Without pacing (`paced` false) a limited host may answer nothing to its retries, so a host
///   that answered port unreachable on some ports and nothing on others is reported as perhaps
///   limited. With pacing such a host is taken as it looks: some ports closed, others filtered.
fn describe_udp(space: &TargetSpace, table: &synwatch_engine::StateTable, limited: &[u64], paced: bool) -> String {
    let ports = space.ports().len() as u64;
    let udp_slots: Vec<u64> = space
        .ports()
        .ports()
        .iter()
        .enumerate()
        .filter(|(_, port)| port.is_udp())
        .map(|(slot, _)| slot as u64)
        .collect();
    let limited: std::collections::BTreeSet<u64> = limited.iter().copied().collect();
    let (mut open, mut closed, mut filtered, mut silent) = (0u64, 0, 0, 0);
    let (mut limited_silent, mut mixed_hosts, mut mixed_silent) = (0u64, 0u64, 0u64);
    for host in 0..space.hosts().len() {
        let (mut host_closed, mut host_silent) = (0, 0);
        for &slot in &udp_slots {
            match table.get(host * ports + slot) {
                PortState::Open => open += 1,
                PortState::Closed => host_closed += 1,
                PortState::Filtered => filtered += 1,
                _ => host_silent += 1,
            }
        }
        closed += host_closed;
        silent += host_silent;
        if limited.contains(&host) {
            limited_silent += host_silent;
        } else if !paced && host_closed > 0 && host_silent > 0 {
            mixed_hosts += 1;
            mixed_silent += host_silent;
        }
    }
    let mut text = format!(
        "{} probes to {} ports: {open} open, {closed} closed, {filtered} filtered, {silent} open|filtered",
        udp_slots.len() as u64 * space.hosts().len(),
        udp_slots.len()
    );
    if !limited.is_empty() {
        text.push_str(&format!(
            "; {} hosts answered port unreachable to retries on ports they had left unanswered: their ICMP looks rate-limited",
            limited.len()
        ));
        if paced {
            text.push_str(" (retries paced per host found those ports closed)");
        }
        if limited_silent > 0 {
            text.push_str(&format!(
                ", and {limited_silent} of their ports stayed open|filtered and may be closed (scan them again with more retries or fewer ports per host)"
            ));
        }
    }
    if mixed_hosts > 0 {
        text.push_str(&format!(
            "; {mixed_hosts} hosts answered port unreachable on some ports and nothing on {mixed_silent} others: their ICMP may be rate-limited, so those ports may be closed (retries were not paced: leave --udp-host-interval on)"
        ));
    }
    text
}

/// The timing a scan used, for its summary: what it measured, the last timeout and where it
/// came from, and the wait.
fn describe_timing(settings: &JobSettings, report: &TimingReport) -> String {
    let measured = match report.estimate {
        Some(estimate) => format!(
            "srtt {:.1} ms, rttvar {:.1} ms over {} replies in {} groups",
            estimate.srtt.as_secs_f64() * 1e3,
            estimate.rttvar.as_secs_f64() * 1e3,
            estimate.samples,
            report.groups_sampled
        ),
        None => "no round trip measured".to_string(),
    };
    let timeout = match (settings.retry_gap, report.last_timeout) {
        (TimeSetting::Fixed(gap), _) => format!("retry gap fixed at {gap:?}"),
        (TimeSetting::Auto, Some((timeout, source))) => {
            format!("last timeout {:.0} ms ({})", timeout.as_secs_f64() * 1e3, source.name())
        }
        (TimeSetting::Auto, None) => "no timeout needed".to_string(),
    };
    format!("{measured}; {timeout}; wait {}", settings.wait)
}

fn progress_bar(args: &ScanArgs, total: u64) -> Option<indicatif::ProgressBar> {
    if args.no_progress || !io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} answered, {msg}, eta {eta}",
        )
        .expect("valid template"),
    );
    Some(bar)
}

pub(crate) fn init_logging(verbose: bool) {
    let default = if verbose { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SYNWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .without_time()
        .try_init();
}
