//! `synwatch bench`: sweeps packet rates against targets and finds the knee, the highest rate
//! at which recall holds, to recommend `engine.max_rate`.
//!
//! * Each step (a requested rate) runs a whole scan `--repetitions` times on one engine per
//!   mode (`Engine::set_rate` between steps) and records the achieved rate (the first round's
//!   send span, [`synwatch_io::SendSpan`]), replies, open ports, recall, receive drops, send
//!   errors and CPU per probe; the pure part (medians, knee, table, JSON, plot) is
//!   `synwatch-bench`.
//! * `--lab` builds a namespace lab from a [`LabPlan`] (hosts, open share, filtered share,
//!   loss, families) and tears it down at the end; recall is then against its ground truth.
//!   `--compare masscan,zmap,nmap` runs those programs on the same lab targets at the same
//!   rates, each inside the lab's scanner namespace.
//! * Outside the lab only the targets the user names are scanned, never a default, and rates
//!   above [`CONSERVATIVE_RATE`] need `--confirm-targets`.
//!
//! CPU per probe is the process's CPU time over the step (minus the lab's accept thread, which
//! plays the targets' side) over the first round's probes; for the compared programs it is
//! their own CPU time from `wait4`. In the lab both include the kernel work the targets' side
//! does in the sender's softirq context, alike for every tool.

use std::collections::HashSet;
use std::fs;
use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ipnetwork::IpNetwork;
use synwatch_bench::plot::{human_rate, render_svg};
use synwatch_bench::tools::{self, ToolScan, ZmapPorts};
use synwatch_bench::{
    ExternalTool, LabFamily, LabPlan, Repetition, StepReport, SweepReport, ToolReport, parse_ramp, parse_rates,
};
use synwatch_engine::targets::{AddressRange, parse_target};
use synwatch_engine::{ExclusionPolicy, HostSet, JobSettings, PortSet, PortState, Shard, TargetSpace};
use synwatch_io::{Engine, EngineConfig, JobRequest, Mode, TransmitChoice};
use synwatch_lab::runner;
use synwatch_lab::{Lab, LabConfig};

use crate::UsageError;
use crate::scan::{parse_mode, parse_transmit, read_targets};

/// Rates above this need `--confirm-targets` outside the lab: about what one `connect()` thread
/// does, and far below what trips rate limits on a typical host or firewall.
pub const CONSERVATIVE_RATE: u64 = 10_000;

/// The ramp swept when neither `--rates` nor `--ramp` is given.
const DEFAULT_RAMP: &str = "10k..1M";

/// Options of `synwatch bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Targets to sweep against (addresses, CIDRs, ranges, @FILE), only ones you own; not with
    /// --lab.
    #[arg(value_name = "TARGET")]
    targets: Vec<String>,
    /// Build a namespace lab and sweep against it (needs root, iproute2 and nftables).
    #[arg(long)]
    lab: bool,
    /// Lab hosts per address family: a power of two up to 65536.
    #[arg(long, default_value_t = 65_536, requires = "lab")]
    lab_hosts: u32,
    /// Lab address families: v4, v6 or both.
    #[arg(long, default_value = "v4", value_parser = parse_family, requires = "lab")]
    lab_family: LabFamily,
    /// Share of the lab's probes that find an open port, percent.
    #[arg(long, default_value_t = 5.0, requires = "lab")]
    lab_open: f64,
    /// Share of the lab's hosts that drop every packet (filtered), percent.
    #[arg(long, default_value_t = 0.0, requires = "lab")]
    lab_filtered: f64,
    /// Share of TCP packets the lab's targets drop at random, percent.
    #[arg(long, default_value_t = 0, requires = "lab")]
    lab_loss: u8,
    /// Seed of the lab's open ports.
    #[arg(long, default_value_t = 1, requires = "lab")]
    lab_seed: u64,
    /// Ports (default in the lab: 80).
    #[arg(short, long)]
    ports: Option<String>,
    /// Rates to try, for example 10k,50k,100k,500k.
    #[arg(long, conflicts_with = "ramp")]
    rates: Option<String>,
    /// A geometric ramp FROM..TO (default 10k..1M).
    #[arg(long)]
    ramp: Option<String>,
    /// Steps of the ramp.
    #[arg(long, default_value_t = 6)]
    steps: usize,
    /// Scans per step; the step's figures are the medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repetitions: u32,
    /// Recall (percent of the best step, or of the lab's ground truth) a rate must keep.
    #[arg(long, default_value_t = 99.9)]
    min_recall: f64,
    /// synwatch modes to sweep: auto, syn, connect (comma-separated).
    #[arg(long, default_value = "auto", value_delimiter = ',', value_parser = parse_mode)]
    mode: Vec<Mode>,
    /// Re-sends of unanswered probes. The default, none, shows where packets start to get lost;
    /// retries hide that (and recover it: try your config's retries to see how much).
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Pause between rounds when retrying.
    #[arg(long, default_value = "1s", value_parser = crate::durations::parse_cli_duration)]
    retry_gap: Duration,
    /// Wait for late replies after the last probe of each scan.
    #[arg(long, default_value = "1s", value_parser = crate::durations::parse_cli_duration)]
    wait: Duration,
    /// Sender threads (connect threads in connect mode).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    sender_threads: u32,
    /// Transmit path: auto, sendmmsg, or ring.
    #[arg(long, default_value = "auto", value_parser = parse_transmit)]
    transmit: TransmitChoice,
    /// Send through this interface (not with --lab).
    #[arg(long)]
    interface: Option<String>,
    /// Also run these programs on the lab's targets: masscan, zmap, nmap (lab only).
    #[arg(long, requires = "lab")]
    compare: Option<String>,
    /// Write the results as JSON to this file (`-`: stdout, and the table goes to stderr).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the sweep to this file, .svg or .png.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Scan the named targets at rates above 10k/s: you own them and the path can take it.
    #[arg(long)]
    confirm_targets: bool,
}

fn parse_family(text: &str) -> Result<LabFamily, String> {
    LabFamily::parse(text).map_err(|error| error.to_string())
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// What the sweep scans: the space, and the ground truth when it is the lab.
struct Sweep {
    rates: Vec<u64>,
    space: Arc<TargetSpace>,
    settings: JobSettings,
    truth: Option<HashSet<SocketAddr>>,
    description: String,
}

fn rates(args: &BenchArgs) -> Result<Vec<u64>> {
    let rates = match (&args.rates, &args.ramp) {
        (Some(list), _) => parse_rates(list).map_err(|error| usage(format!("--rates: {error}")))?,
        (None, ramp) => parse_ramp(ramp.as_deref().unwrap_or(DEFAULT_RAMP), args.steps)
            .map_err(|error| usage(format!("--ramp: {error}")))?,
    };
    Ok(rates)
}

fn check_arguments(args: &BenchArgs, rates: &[u64]) -> Result<()> {
    if !(0.0..=100.0).contains(&args.min_recall) || args.min_recall == 0.0 {
        return Err(usage(format!("--min-recall {}: a percentage above 0 and at most 100", args.min_recall)));
    }
    if let Some(plot) = &args.plot
        && !matches!(plot.extension().and_then(|extension| extension.to_str()), Some("svg" | "png"))
    {
        return Err(usage(format!("--plot {}: the file must end in .svg or .png", plot.display())));
    }
    if args.lab {
        if !args.targets.is_empty() {
            return Err(usage("--lab scans the lab's own targets; name no targets with it"));
        }
        if args.interface.is_some() {
            return Err(usage("--interface is chosen by the lab; leave it out with --lab"));
        }
        return Ok(());
    }
    if args.targets.is_empty() {
        return Err(usage(
            "name the targets to sweep (only hosts you own), or use --lab to build a lab on this machine",
        ));
    }
    let fastest = rates.iter().copied().max().unwrap_or(0);
    if fastest > CONSERVATIVE_RATE && !args.confirm_targets {
        return Err(usage(format!(
            "rates up to {}/s against the named targets: above {}/s this needs --confirm-targets (you own the targets, and the network between may carry that rate)",
            human_rate(fastest as f64),
            human_rate(CONSERVATIVE_RATE as f64)
        )));
    }
    Ok(())
}

fn lab_plan(args: &BenchArgs) -> Result<LabPlan> {
    let ports =
        PortSet::parse(args.ports.as_deref().unwrap_or("80")).map_err(|error| usage(format!("--ports: {error}")))?;
    let plan = LabPlan {
        hosts: args.lab_hosts,
        family: args.lab_family,
        ports: ports.as_slice().to_vec(),
        open_percent: args.lab_open,
        filtered_percent: args.lab_filtered,
        loss_percent: args.lab_loss,
        seed: args.lab_seed,
    };
    plan.validate().map_err(|error| usage(error.to_string()))?;
    Ok(plan)
}

fn build_space(includes: Vec<AddressRange>, ports: &str) -> Result<Arc<TargetSpace>> {
    let ports = PortSet::parse(ports).map_err(|error| usage(format!("--ports {ports:?}: {error}")))?;
    let hosts =
        HostSet::build(includes, Vec::new(), ExclusionPolicy::Default).map_err(|error| usage(error.to_string()))?;
    Ok(Arc::new(TargetSpace::new(hosts, ports).map_err(|error| usage(error.to_string()))?))
}

/// Raises the soft descriptor limit to the hard one and checks that `needed` fit.
fn ensure_descriptors(needed: u64) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    }
    if needed > hard {
        return Err(usage(format!(
            "the lab needs {needed} descriptors for its listeners but the limit is {hard}: lower --lab-open or --lab-hosts, or raise the limit (ulimit -Hn)"
        )));
    }
    Ok(())
}

/// The process's CPU time (user + system).
fn process_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |usage| {
        let time = |value: nix::sys::time::TimeVal| {
            Duration::from_secs(value.tv_sec() as u64) + Duration::from_micros(value.tv_usec() as u64)
        };
        time(usage.user_time()) + time(usage.system_time())
    })
}

/// CPU time of this process's threads named `name` (procfs: /proc/self/task/*/stat).
fn thread_cpu(name: &str) -> Duration {
    let Ok(tasks) = procfs::process::Process::myself().and_then(|process| process.tasks()) else {
        return Duration::ZERO;
    };
    let ticks: u64 = tasks
        .flatten()
        .filter_map(|task| task.stat().ok())
        .filter(|stat| stat.comm == name)
        .map(|stat| stat.utime + stat.stime)
        .sum();
    Duration::from_millis(ticks * 1000 / procfs::ticks_per_second().max(1))
}

/// The CPU time that belongs to the scanner: everything but the lab's accept thread.
fn scanner_cpu() -> Duration {
    process_cpu().saturating_sub(thread_cpu("lab-accept"))
}

fn progress(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

fn report_repetition(name: &str, rate: u64, number: u32, of: u32, repetition: &Repetition, truth: Option<usize>) {
    let recall = match truth {
        Some(truth) if truth > 0 => {
            format!(" ({:.2} % of {truth})", repetition.open_true as f64 * 100.0 / truth as f64)
        }
        _ => String::new(),
    };
    progress(&format!(
        "{name} {}/s {number}/{of}: {} achieved, {} open{recall}, {:.2} s",
        human_rate(rate as f64),
        repetition.achieved_pps.map_or("-".into(), |rate| format!("{}/s", human_rate(rate))),
        repetition.open_found,
        repetition.wall_seconds
    ));
}

/// Runs every step of one synwatch mode on one engine.
fn sweep_synwatch(args: &BenchArgs, sweep: &Sweep, mode: Mode, in_lab: bool) -> Result<ToolReport> {
    let config = EngineConfig {
        rate: sweep.rates[0],
        mode,
        sender_threads: args.sender_threads as usize,
        interface: args.interface.clone(),
        transmit: args.transmit,
        // In the lab the bench still needs root afterwards (the other tools, the tear-down).
        drop_privileges: !in_lab,
        ..EngineConfig::default()
    };
    let engine = Engine::start(config)?;
    let name = format!("synwatch-{}", engine.mode().name());
    let mut steps = Vec::new();
    for &rate in &sweep.rates {
        engine.set_rate(rate);
        let mut repetitions = Vec::new();
        for number in 1..=args.repetitions {
            let Some(repetition) = synwatch_step(&engine, sweep, number)? else { break };
            let truth = sweep.truth.as_ref().map(HashSet::len);
            report_repetition(&name, rate, number, args.repetitions, &repetition, truth);
            repetitions.push(repetition);
        }
        if !repetitions.is_empty() {
            steps.push(StepReport { requested: rate, repetitions });
        }
        if interrupted() {
            break;
        }
    }
    Ok(ToolReport { name, steps })
}

/// One scan on the engine; `None` when the sweep was interrupted during it.
fn synwatch_step(engine: &Engine, sweep: &Sweep, number: u32) -> Result<Option<Repetition>> {
    let settings = JobSettings { seed: sweep.settings.seed.wrapping_add(u64::from(number)), ..sweep.settings };
    let before = engine.counters();
    let cpu_before = scanner_cpu();
    let started = Instant::now();
    let job = engine.submit(JobRequest::new(Arc::clone(&sweep.space), settings, None))?;
    let summary = loop {
        if let Some(summary) = job.wait_timeout(Duration::from_millis(100)) {
            break summary;
        }
        if interrupted() {
            job.cancel();
            job.wait();
            return Ok(None);
        }
    };
    let wall = started.elapsed();
    let cpu = scanner_cpu().saturating_sub(cpu_before);
    let after = engine.counters();
    let (mut open_found, mut open_true) = (0, 0);
    let table = job.table();
    for index in 0..sweep.space.len() {
        if table.get(index).finalized() == PortState::Open {
            open_found += 1;
            let (address, port) = sweep.space.probe_at(index).expect("index within the space");
            if sweep.truth.as_ref().is_none_or(|truth| truth.contains(&SocketAddr::new(address, port))) {
                open_true += 1;
            }
        }
    }
    let replies = |snapshot: &synwatch_io::CounterSnapshot| {
        snapshot.replies_open + snapshot.replies_closed + snapshot.replies_filtered
    };
    Ok(Some(Repetition {
        achieved_pps: summary.first_round.rate(),
        probes: summary.first_round.probes,
        replies: Some(replies(&after) - replies(&before)),
        open_found,
        open_true,
        receive_drops: Some(after.receive_drops - before.receive_drops),
        send_errors: Some(after.send_errors - before.send_errors),
        cpu_seconds: cpu.as_secs_f64(),
        wall_seconds: wall.as_secs_f64(),
        stopped: false,
    }))
}

/// Set by SIGINT or SIGTERM: the sweep stops, reports what it measured, and tears down its lab.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Ctrl-C and SIGTERM stop the sweep between (or inside) repetitions instead of killing the
/// process, so the results so far are written and the lab is torn down.
fn catch_interrupts() -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(SigHandler::Handler(on_interrupt), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.context("installing the interrupt handler")?;
    }
    Ok(())
}

/// How a compared program's run ended.
struct ChildEnd {
    status: i32,
    cpu: Duration,
    /// It was sent SIGINT: past its deadline, or the sweep was interrupted.
    stopped: bool,
}

/// Waits for a child (`wait4`, for its CPU time). Once `deadline` passes (or the sweep is
/// interrupted) it calls `nudge` every 200 ms, sends SIGINT 5 s later, and SIGKILL 10 s after
/// that.
fn wait_child(pid: libc::pid_t, deadline: Instant, nudge: &dyn Fn()) -> Result<ChildEnd> {
    use nix::sys::signal::{Signal, kill};
    let (mut overdue, mut signalled, mut nudged): (Option<Instant>, Option<Instant>, Option<Instant>) =
        (None, None, None);
    loop {
        if let Some(usage) = runner::wait_child(pid, false).context("wait4")? {
            return Ok(ChildEnd { status: usage.status, cpu: usage.cpu, stopped: signalled.is_some() });
        }
        let now = Instant::now();
        let child = nix::unistd::Pid::from_raw(pid);
        if overdue.is_none() && (now >= deadline || interrupted()) {
            overdue = Some(now);
        }
        if let Some(since) = overdue {
            if nudged.is_none_or(|at| now.duration_since(at) >= Duration::from_millis(200)) {
                nudge();
                nudged = Some(Instant::now());
            }
            match signalled {
                None if now.duration_since(since) >= Duration::from_secs(5) => {
                    let _ = kill(child, Signal::SIGINT);
                    signalled = Some(now);
                }
                Some(at) if now.duration_since(at) >= Duration::from_secs(10) => {
                    let _ = kill(child, Signal::SIGKILL);
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs every step of one compared program.
fn sweep_tool(
    args: &BenchArgs,
    lab: &Lab,
    plan: &LabPlan,
    truth: &HashSet<SocketAddr>,
    tool: ExternalTool,
    scratch: &Path,
    rates: &[u64],
) -> Result<ToolReport> {
    let target = match plan.target_ranges()[0] {
        IpNetwork::V4(network) => network,
        IpNetwork::V6(_) => bail!("--compare needs the lab's IPv4 targets"),
    };
    let gateway_mac = lab.gateway_mac()?;
    let mut steps = Vec::new();
    for &rate in rates {
        let mut repetitions = Vec::new();
        for number in 1..=args.repetitions {
            let scan = ToolScan {
                target,
                ports: plan.ports.clone(),
                rate,
                retries: args.retries,
                wait_seconds: args.wait.as_secs_f64().ceil().max(1.0) as u64,
                interface: lab.scanner_link().to_string(),
                source: synwatch_lab::SCANNER_V4,
                gateway_mac: gateway_mac.clone(),
                output: scratch.join(format!("{}-{rate}-{number}", tool.name())).to_string_lossy().into_owned(),
                sender_threads: 1,
                zmap_ports: ZmapPorts::OneRunPerPort,
            };
            let Some(repetition) = tool_step(lab, plan, truth, tool, &scan, scratch)? else { break };
            if repetition.stopped {
                progress(&format!("{} did not exit after its wait: stopped with SIGINT", tool.name()));
            }
            report_repetition(tool.name(), rate, number, args.repetitions, &repetition, Some(truth.len()));
            repetitions.push(repetition);
        }
        if !repetitions.is_empty() {
            steps.push(StepReport { requested: rate, repetitions });
        }
        if interrupted() {
            break;
        }
    }
    Ok(ToolReport { name: tool.name().to_string(), steps })
}

fn tool_step(
    lab: &Lab,
    plan: &LabPlan,
    truth: &HashSet<SocketAddr>,
    tool: ExternalTool,
    scan: &ToolScan,
    scratch: &Path,
) -> Result<Option<Repetition>> {
    let mut repetition = Repetition {
        achieved_pps: None,
        probes: u64::from(plan.hosts) * plan.ports.len() as u64,
        replies: None,
        open_found: 0,
        open_true: 0,
        receive_drops: None,
        send_errors: None,
        cpu_seconds: 0.0,
        wall_seconds: 0.0,
        stopped: false,
    };
    let (mut span_packets, mut span_time, mut link_packets, mut syns) = (0u64, Duration::ZERO, 0u64, 0u64);
    for command in tools::commands(tool, scan) {
        for file in [Some(&command.output), command.metadata.as_ref()].into_iter().flatten() {
            let _ = fs::remove_file(file);
        }
        let stderr_path = scratch.join(format!("{}.stderr", tool.name()));
        let syns_before = lab.syns_received()?;
        let started = Instant::now();
        // masscan can stay in "waiting -N secs" long after its wait is over: its capture thread
        // sleeps until a packet arrives, and nothing arrives once the scan is over. Past its
        // deadline (its probes, its wait and 2 s) the targets' side pings the scanner, which
        // wakes the capture and lets masscan exit by itself with all its output; SIGINT and
        // SIGKILL follow only if that fails. Every program gets a generous deadline too.
        let sending = Duration::from_secs_f64(repetition.probes as f64 / scan.rate as f64);
        let wait = Duration::from_secs(scan.wait_seconds);
        let deadline = started
            + match tool {
                ExternalTool::Masscan => sending + wait + Duration::from_secs(2),
                _ => sending * 3 + wait + Duration::from_secs(60),
            };
        let (ended, link) = lab.sample_link(|| -> Result<ChildEnd> {
            let mut child = lab
                .scanner_command(&command.argv[0])
                .args(&command.argv[1..])
                // masscan writes `paused.conf` into its working directory when stopped.
                .current_dir(scratch)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&stderr_path)?)
                .spawn()
                .with_context(|| format!("starting {}", command.argv[0]))?;
            let ended = wait_child(child.id() as libc::pid_t, deadline, &|| lab.nudge_scanner())?;
            // The child is reaped by wait4; `Child` must not wait for it again.
            let _ = child.try_wait();
            if ended.status != 0 && !ended.stopped {
                let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
                bail!("{} exited with status {}: {}", command.argv.join(" "), ended.status, stderr.trim());
            }
            Ok(ended)
        });
        let ended = ended?;
        if interrupted() {
            return Ok(None);
        }
        repetition.stopped |= ended.stopped;
        repetition.wall_seconds += started.elapsed().as_secs_f64();
        repetition.cpu_seconds += ended.cpu.as_secs_f64();
        syns += lab.syns_received()?.saturating_sub(syns_before);
        link_packets += link.packets;
        if let Some((packets, time)) = link.middle {
            span_packets += packets;
            span_time += time;
        }
        let text = fs::read_to_string(&command.output).unwrap_or_default();
        for (address, port) in tools::parse_open(tool, &text, command.port) {
            repetition.open_found += 1;
            if truth.contains(&SocketAddr::new(address, port)) {
                repetition.open_true += 1;
            }
        }
        if let Some(metadata) = command.metadata.as_ref().and_then(|path| fs::read_to_string(path).ok())
            && let Some(metadata) = tools::parse_zmap_metadata(&metadata)
        {
            *repetition.replies.get_or_insert(0) += metadata.replies;
            *repetition.receive_drops.get_or_insert(0) += metadata.receive_drops;
            *repetition.send_errors.get_or_insert(0) += metadata.send_errors;
        }
    }
    // The link also carries the scanner kernel's RSTs to SYN-ACKs (and ARP): the rate is scaled
    // by the share of its packets that were SYNs reaching the targets' side.
    if span_packets > 0 && !span_time.is_zero() && link_packets > 0 {
        let syn_share = (syns as f64 / link_packets as f64).min(1.0);
        repetition.achieved_pps = Some(span_packets as f64 / span_time.as_secs_f64() * syn_share);
    }
    Ok(Some(repetition))
}

fn lab_description(plan: &LabPlan, open: usize) -> String {
    let families = match plan.family {
        LabFamily::V4 => "IPv4",
        LabFamily::V6 => "IPv6",
        LabFamily::Both => "IPv4 and IPv6",
    };
    format!(
        "lab: {} {families} hosts × {} port(s) ({} probes), {open} open, {} % of hosts filtered, {} % loss",
        plan.hosts,
        plan.ports.len(),
        plan.probes(),
        plan.filtered_percent,
        plan.loss_percent
    )
}

fn write_outputs(args: &BenchArgs, report: &SweepReport) -> Result<()> {
    let table = report.table();
    match &args.json {
        Some(path) if path.as_os_str() == "-" => {
            eprint!("{table}");
            println!("{}", serde_json::to_string_pretty(&report.json())?);
        }
        Some(path) => {
            print!("{table}");
            fs::write(path, serde_json::to_string_pretty(&report.json())? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        None => print!("{table}"),
    }
    if let Some(path) = &args.plot {
        let title = format!("synwatch bench: {}", report.targets);
        let svg = render_svg(&title, &report.plot_series())?;
        let bytes = if path.extension().is_some_and(|extension| extension == "png") {
            svg_to_png(&svg)?
        } else {
            svg.into_bytes()
        };
        fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Renders the plot's SVG to PNG with resvg, with the system's fonts for the text.
fn svg_to_png(svg: &str) -> Result<Vec<u8>> {
    let mut options = resvg::usvg::Options::default();
    options.fontdb_mut().load_system_fonts();
    if options.fontdb.is_empty() {
        bail!(
            "a PNG plot needs a font for its text and this system has none (Debian: fonts-dejavu-core); write an .svg instead"
        );
    }
    let tree = resvg::usvg::Tree::from_str(svg, &options).context("reading the plot's SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).context("the plot has no size")?;
    resvg::render(&tree, resvg::tiny_skia::Transform::identity(), &mut pixmap.as_mut());
    pixmap.encode_png().context("encoding the PNG")
}

/// Runs `synwatch bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    crate::scan::init_logging(false);
    let rates = rates(&args)?;
    check_arguments(&args, &rates)?;
    catch_interrupts()?;
    let compare = match &args.compare {
        Some(list) => ExternalTool::parse_list(list).map_err(|error| usage(error.to_string()))?,
        None => Vec::new(),
    };
    let mut modes: Vec<Mode> = Vec::new();
    for &mode in &args.mode {
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    // Connect mode last: a SYN engine outside the lab drops the process's capabilities.
    modes.sort_by_key(|mode| *mode == Mode::Connect);
    let seed = getrandom::u64().map_err(|error| anyhow::anyhow!("no randomness from the OS: {error}"))?;
    let settings =
        JobSettings { retries: args.retries, retry_gap: args.retry_gap, wait: args.wait, seed, shard: Shard::WHOLE };
    let min_recall = args.min_recall / 100.0;
    let mut tools = Vec::new();
    let report = if args.lab {
        let plan = lab_plan(&args)?;
        if !compare.is_empty() && plan.family != LabFamily::V4 {
            return Err(usage("--compare runs on an IPv4 lab (zmap 2 scans IPv4 only): use --lab-family v4"));
        }
        if let Err(reason) = synwatch_lab::lab_available() {
            bail!("--lab needs root, iproute2 and nftables: {reason}");
        }
        let open = plan.open_endpoints();
        ensure_descriptors(open.len() as u64 + 256)?;
        let includes: Vec<AddressRange> = plan
            .target_ranges()
            .iter()
            .map(|range| parse_target(&range.to_string()).expect("the plan's ranges parse"))
            .collect();
        let port_list: Vec<String> = plan.ports.iter().map(u16::to_string).collect();
        let space = build_space(includes, &port_list.join(","))?;
        let description = lab_description(&plan, open.len());
        progress(&format!("building the {description}"));
        let lab = Lab::build(LabConfig {
            target_ranges: plan.target_ranges(),
            listeners: open.clone(),
            blackholed: plan.filtered_ranges(),
            loss_percent: plan.loss_percent,
            static_neighbour: true,
            ..LabConfig::default()
        })?;
        let truth: HashSet<SocketAddr> = open.into_iter().collect();
        let sweep = Sweep { rates: rates.clone(), space, settings, truth: Some(truth), description };
        for &mode in modes.iter().take_while(|_| !interrupted()) {
            tools.push(lab.in_scanner(|| sweep_synwatch(&args, &sweep, mode, true))?);
        }
        let scratch = std::env::temp_dir().join(format!("synwatch-bench-{}", std::process::id()));
        fs::create_dir_all(&scratch)?;
        for &tool in compare.iter().take_while(|_| !interrupted()) {
            if !runner::program_installed(tool.name()) {
                progress(&format!("{} is not installed (Debian package {0}): left out", tool.name()));
                continue;
            }
            let truth = sweep.truth.as_ref().expect("the lab has ground truth");
            match sweep_tool(&args, &lab, &plan, truth, tool, &scratch, &rates) {
                Ok(report) => tools.push(report),
                Err(error) => progress(&format!("{} failed, left out: {error:#}", tool.name())),
            }
        }
        let _ = fs::remove_dir_all(&scratch);
        drop(lab);
        SweepReport {
            targets: sweep.description,
            probes: sweep.space.len(),
            ground_truth_open: sweep.truth.as_ref().map(|truth| truth.len() as u64),
            min_recall,
            tools,
        }
    } else {
        let includes = read_targets(&args.targets, "target")?;
        let ports = args.ports.as_deref().ok_or_else(|| usage("--ports is needed with named targets"))?;
        let space = build_space(includes, ports)?;
        let description = format!("{} × ports {ports}", args.targets.join(" "));
        let sweep = Sweep { rates, space, settings, truth: None, description };
        for &mode in modes.iter().take_while(|_| !interrupted()) {
            tools.push(sweep_synwatch(&args, &sweep, mode, false)?);
        }
        SweepReport {
            targets: sweep.description,
            probes: sweep.space.len(),
            ground_truth_open: None,
            min_recall,
            tools,
        }
    };
    if io::stdout().is_terminal() {
        println!();
    }
    if interrupted() {
        progress("interrupted: the results so far follow; the lab is torn down");
    }
    write_outputs(&args, &report)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(arguments: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(arguments.iter().copied())).map(|cli| cli.bench)
    }

    fn refusal(arguments: &[&str]) -> String {
        let args = parse(arguments).expect("clap accepts it");
        let rates = rates(&args);
        let error = rates.and_then(|rates| check_arguments(&args, &rates).and_then(|()| lab_plan(&args).map(|_| ())));
        let error = error.expect_err("refused");
        assert!(error.is::<UsageError>(), "a usage error: {error}");
        error.to_string()
    }

    #[test]
    fn outside_the_lab_only_named_targets_and_fast_rates_need_confirmation() {
        assert!(refusal(&["--rates", "5k"]).contains("name the targets"));
        let fast = refusal(&["127.0.0.1", "-p", "80", "--rates", "5k,50k"]);
        assert!(fast.contains("--confirm-targets") && fast.contains("50k/s"), "{fast}");
        let args = parse(&["127.0.0.1", "-p", "80", "--rates", "5k,10k"]).unwrap();
        assert!(check_arguments(&args, &rates(&args).unwrap()).is_ok(), "10k/s is within the conservative default");
        let args = parse(&["127.0.0.1", "-p", "80", "--rates", "5k,50k", "--confirm-targets"]).unwrap();
        assert!(check_arguments(&args, &rates(&args).unwrap()).is_ok());
        // The default ramp goes to 1M/s.
        assert!(refusal(&["127.0.0.1", "-p", "80"]).contains("1M/s"));
        // Lab-only options need --lab.
        assert!(parse(&["127.0.0.1", "--compare", "masscan"]).is_err());
        assert!(parse(&["127.0.0.1", "--lab-hosts", "256"]).is_err());
    }

    #[test]
    fn bad_lab_rate_and_output_options_are_refused_with_the_reason() {
        assert!(refusal(&["--lab", "127.0.0.1"]).contains("name no targets"));
        assert!(refusal(&["--lab", "--lab-hosts", "1000"]).contains("power of two"));
        assert!(refusal(&["--lab", "--lab-open", "150"]).contains("--lab-open 150"));
        assert!(refusal(&["--lab", "--rates", "10k,0"]).contains("--rates"));
        assert!(refusal(&["--lab", "--ramp", "1M..10k"]).contains("--ramp"));
        assert!(refusal(&["--lab", "--min-recall", "0"]).contains("--min-recall"));
        assert!(refusal(&["--lab", "--plot", "out.jpg"]).contains(".svg or .png"));
        assert!(parse(&["--lab", "--rates", "10k", "--ramp", "1k..2k"]).is_err(), "--rates and --ramp conflict");
        let args = parse(&["--lab", "--lab-hosts", "256", "--ports", "22,80", "--lab-family", "both"]).unwrap();
        let plan = lab_plan(&args).unwrap();
        assert_eq!((plan.hosts, plan.ports.clone(), plan.probes()), (256, vec![22, 80], 1024));
        assert_eq!(rates(&args).unwrap().len(), 6, "the default ramp");
    }
}
