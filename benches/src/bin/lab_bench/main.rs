//! `lab_bench`: the lab measurements behind `docs/BENCHMARKS.md`, side by side with masscan and
//! zmap (Debian packages) when they are installed. Needs root (it builds a namespace lab).
//!
//! * `send-only`: the sender's own cost. The target side's link is down, so nothing answers;
//!   the rate is read from the scanner link's transmit counters (sent + dropped), between 10 %
//!   and 90 % of each run, so start-up and tear-down do not count.
//! * `round-trip`: a /16 × port 80 scan where every address listens (a wildcard listener behind
//!   an AnyIP route): wall time, open ports found, CPU per probe.
//! * `memory`: peak resident memory of `synwatch scan` over 65,536 hosts × 100 ports.
//! * `probe-latency`: `/probe` of a probe-only `synwatch serve` (at the default `max_rate`, or
//!   `--max-rate`) against prometheus-blackbox-exporter's tcp prober on the same lab ports
//!   (1 host × 3 ports, the same host by name through a dnsmasq in the namespace, and a /24 ×
//!   3 ports), both over keep-alive HTTP connections from inside the scanner namespace.
//!
//! * `target-files`: `synwatch check-config` over file_sd target files of up to 100,000 entries,
//!   and a running serve's reload after a file changes (issue 24; loopback only).
//! * `listener-read`: one reading of the listeners collector (procfs) against `ss -ltunp`.
//! * `growth`: how a scan's cost grows with the work: 1,024, 65,536 and 1,048,576 probes at one
//!   fixed rate (wall time, CPU, peak RSS, open ports found), synwatch against masscan and zmap.
//!
//! * `timing`: the learned retry and wait timing against the fixed one, zmap, masscan and nmap
//!   (filtered ranges, connect() mode, loss).
//! * `field`, `field-speed`: the field lab (see `field.rs`); `udp`: UDP side by side in the kernel
//!   lab (`udp.rs`); `field-udp`: UDP in the field lab (`field_udp.rs`).
//! * `metrics-render`, `exporter-memory`, `probe-latency`: the exporter (`exporter.rs`).
//! * `history`: the exposure history's writes, queries and memory (`history.rs`; no lab).
//!
//! Every figure is the median of `--runs` runs (default 3).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use synwatch_bench::tools::{self, ExternalTool, SynwatchVariant, ToolScan, ZmapPorts};
use synwatch_lab::{Lab, LabConfig, runner};

mod exporter;
mod field;
mod field_udp;
mod history;
mod target_files;
mod timing;
mod udp;

#[derive(Debug, Parser)]
struct Arguments {
    /// The synwatch binary to measure (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/synwatch")]
    synwatch: PathBuf,
    /// Runs per measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Tools to run: synwatch-ring, synwatch-sendmmsg, synwatch-connect (connect() mode),
    /// masscan, zmap, nmap-st (`nmap -sT`), comma-separated; a `-2t` suffix on synwatch-ring,
    /// synwatch-sendmmsg or zmap runs it with two sender threads.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "synwatch-ring,synwatch-ring-2t,synwatch-sendmmsg,masscan,zmap,zmap-2t"
    )]
    tools: Vec<String>,
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Sender throughput with nothing answering.
    SendOnly {
        /// Ports per address of 198.18.0.0/15 (131,072 addresses each).
        #[arg(long, default_value_t = 16)]
        ports: u16,
    },
    /// A /16 × 1 port scan where every probe is answered.
    RoundTrip {
        /// Requested rate for every tool.
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
        /// Wait for late replies, in seconds, for every tool.
        #[arg(long, default_value_t = 1)]
        wait: u64,
        /// Re-sends of unanswered probes for synwatch (its default); masscan and zmap run with
        /// their defaults (no re-sends), as users run them.
        #[arg(long, default_value_t = 2)]
        retries: u32,
    },
    /// Peak RSS of synwatch for 65,536 hosts × 100 ports.
    Memory,
    /// `/metrics` with 100,000 detail series: render time, size, and memory over many renders
    /// (no lab, no packets).
    MetricsRender {
        /// Renders to time.
        #[arg(long, default_value_t = 200)]
        renders: usize,
    },
    /// Prometheus `file_sd` target files (issue 24): `synwatch check-config` over 1,000 to
    /// 100,000 loopback entries, the bound's refusal, and a running serve's reload latency after
    /// a file changes (no lab; loopback only).
    TargetFiles,
    /// The exposure history (issue 23): writing scans of many changes, queries over millions
    /// of stored changes through the store and through `serve`, and serve's memory holding
    /// them (no lab, no packets).
    History {
        /// Changes to store in all.
        #[arg(long, default_value_t = 10_000_000)]
        changes: u64,
        /// Changes per scan.
        #[arg(long, default_value_t = 100_000)]
        per_scan: u64,
    },
    /// Resident memory of `synwatch serve`: idle on its embedded loopback config, and scanning
    /// a /16 × 10 ports target in the lab (peak, then idle holding the results).
    ExporterMemory,
    /// One reading of this host's listening sockets by the listeners collector (procfs),
    /// against `ss -ltunp` (iproute2), with `sockets` extra listeners opened on loopback (no lab,
    /// no packets).
    ListenerRead {
        /// Readings to time.
        #[arg(long, default_value_t = 200)]
        readings: usize,
        /// TCP listeners to open on 127.0.0.1 first.
        #[arg(long, default_value_t = 1000)]
        sockets: usize,
    },
    /// Wall time, CPU and peak RSS for 1k, 64k and 1M probes at one rate (1 % open).
    Growth {
        /// Requested rate for every tool and size.
        #[arg(long, default_value_t = 200_000)]
        rate: u64,
    },
    /// The field lab side by side: in each profile one range small enough for nmap, every tool
    /// as its users run it, scored against the model (wall time, recall, false opens, SYNs).
    Field {
        /// Profiles, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "lan,internet,hostile")]
        profiles: Vec<String>,
        /// The scanned range (IPv4, inside 198.18.0.0/16).
        #[arg(long, default_value = "198.18.32.0/22")]
        target: String,
        /// Ports.
        #[arg(long, default_value = "22,80,443,3306,5432,6379,8080,9100")]
        ports: String,
        /// Rate of the tools that take one.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// The profiles' seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Tools: synwatch, synwatch-connect, zmap, masscan, nmap-ss (`-sS -T4`), nmap-st (`-sT -T4`);
        /// synwatch-fixed and synwatch-connect-fixed run synwatch with a fixed 1 s gap and wait;
        /// synwatch-verify adds `--verify connect`, synwatch-no-canaries `--canaries 0`.
        #[arg(long, value_delimiter = ',', default_value = field::FIELD_TOOLS)]
        field_tools: Vec<String>,
        /// Write each profile's model and ground truth for the range to DIR/field-PROFILE.jsonl.
        #[arg(long, value_name = "DIR")]
        ground_truth: Option<PathBuf>,
    },
    /// The learned timing against the fixed one and the anchors (issue 20): a /16 with
    /// filtered ranges, its /18 in connect() mode, an IPv6 /120 with 10 % loss.
    Timing,
    /// A UDP scan side by side with nmap -sU, masscan and zmap -M udp (issue 22).
    Udp {
        /// The scanned range (IPv4, inside 198.18.0.0/16).
        #[arg(long, default_value = "198.18.0.0/20")]
        target: String,
        /// The range nmap scans, when it cannot finish the whole target in reasonable time.
        #[arg(long)]
        nmap_target: Option<String>,
        /// UDP ports (numbers; each gets its scripted service on ~5 % of the hosts).
        #[arg(long, value_delimiter = ',', default_value = "53,123,161,1900,11211")]
        udp_ports: Vec<u16>,
        /// Rate of the tools that take one.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Random loss at the target side, in percent.
        #[arg(long, default_value_t = 0)]
        loss: u8,
        /// Tools: synwatch, synwatch-connect, masscan (with synwatch's payloads), masscan-own (its
        /// own), zmap, nmap (`-sU -T4`).
        #[arg(long, value_delimiter = ',', default_value = udp::UDP_TOOLS)]
        udp_tools: Vec<String>,
    },
    /// A UDP scan of a field lab range side by side with masscan, zmap -M udp and nmap -sU in
    /// each profile: open and closed recall against the model, behind the hosts' ICMP limits.
    FieldUdp {
        /// Profiles, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "lan,internet,hostile")]
        profiles: Vec<String>,
        /// The scanned range (IPv4, inside 198.18.0.0/16).
        #[arg(long, default_value = "198.18.32.0/22")]
        target: String,
        /// The part of it nmap scans.
        #[arg(long, default_value = "198.18.32.0/26")]
        nmap_target: String,
        /// UDP ports (numbers).
        #[arg(long, value_delimiter = ',', default_value = "53,123,161,1900,11211")]
        udp_ports: Vec<u16>,
        /// Rate of the tools that take one.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// The profiles' seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Tools: synwatch, synwatch-connect, masscan (with synwatch's payloads), zmap, nmap.
        #[arg(long, value_delimiter = ',', default_value = field_udp::FIELD_UDP_TOOLS)]
        udp_tools: Vec<String>,
    },
    /// The field responder's answer rate in `lan`, with synwatch and zmap as the sender.
    FieldSpeed {
        /// Ports per address of 198.18.0.0/16.
        #[arg(long, default_value_t = 16)]
        ports: u16,
        /// Requested rate.
        #[arg(long, default_value_t = 2_000_000)]
        rate: u64,
        /// Senders: synwatch, synwatch-2t, zmap.
        #[arg(long, value_delimiter = ',', default_value = "synwatch,synwatch-2t,zmap")]
        senders: Vec<String>,
    },
    /// `/probe` latency against prometheus-blackbox-exporter's tcp prober, in the lab.
    ProbeLatency {
        /// Repetitions of the single-host measurement (the /24 one runs a tenth as often).
        #[arg(long, default_value_t = 200)]
        repetitions: usize,
        /// The engine's `max_rate` for synwatch; without it, the default a config gets.
        #[arg(long)]
        max_rate: Option<u64>,
    },
}

/// One run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    wall: Duration,
    packets: u64,
    rate: f64,
    cpu: Duration,
    max_rss_kib: u64,
    found: u64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values[values.len() / 2]
}

/// Runs a command to completion, returning its wall time and the child's CPU time and peak RSS
/// (KiB) from `wait4`.
fn measure(mut command: Command, may_be_killed: bool) -> Result<(Duration, Duration, u64)> {
    // Results go to each tool's output file; stderr goes to a file too, so tools that print
    // progress there never block on a full pipe.
    let stderr_path = std::env::temp_dir().join(format!("lab-bench-stderr-{}", std::process::id()));
    command.stdout(Stdio::null()).stderr(std::fs::File::create(&stderr_path)?);
    let started = Instant::now();
    let child = command.spawn().with_context(|| format!("starting {command:?}"))?;
    let usage = runner::wait_child(child.id() as libc::pid_t, true)?.context("wait4 returned no child")?;
    let (status, cpu, max_rss) = (usage.status, usage.cpu, usage.max_rss_kib);
    let wall = started.elapsed();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr_path);
    // 137: killed (SIGKILL); 124: stopped by `timeout` at its deadline.
    if status != 0 && !(may_be_killed && (status == 137 || status == 124)) {
        bail!("{command:?} exited with status {status}: {stderr}");
    }
    Ok((wall, cpu, max_rss))
}

/// Samples the scanner link's transmit counter while `work` runs; returns the rate between the
/// 10 % and 90 % marks of the packets sent.
fn sampled_rate(lab: &Lab, work: impl FnOnce() -> Result<Run>) -> Result<Run> {
    let (run, link) = lab.sample_link(work);
    let mut run = run?;
    run.rate = link.rate().unwrap_or(run.rate);
    run.packets = link.packets;
    Ok(run)
}

fn in_scanner(lab: &Lab, program: &str, arguments: &[String]) -> Command {
    let mut command = lab.scanner_command(program);
    command.args(arguments);
    command
}

/// How one tool is to scan.
struct Scan<'a> {
    targets: &'a str,
    ports: &'a str,
    rate: u64,
    /// Seconds to wait for late replies after the last probe.
    wait: u64,
    /// Re-sends of unanswered probes.
    retries: u32,
    output: &'a str,
}

/// The command line of one tool for `scan`, inside the lab's scanner namespace; the command
/// lines themselves come from `synwatch_bench::tools`, as `synwatch bench --compare`'s do.
fn tool_command(arguments: &Arguments, lab: &Lab, tool: &str, scan: &Scan) -> Result<Command> {
    // A "-2t" suffix runs the tool with two sender threads (synwatch and zmap both have them).
    let (tool, sender_threads) = match tool.strip_suffix("-2t") {
        Some(base) => (base, 2),
        None => (tool, 1),
    };
    let tool_scan = ToolScan {
        target: scan.targets.parse().context("lab_bench targets are IPv4 CIDRs")?,
        ports: synwatch_engine::PortSet::parse(scan.ports)?.tcp_numbers().collect::<Vec<_>>(),
        rate: scan.rate,
        retries: scan.retries,
        wait_seconds: scan.wait,
        interface: lab.scanner_link().to_string(),
        source: synwatch_lab::SCANNER_V4,
        gateway_mac: lab.gateway_mac()?,
        output: scan.output.to_string(),
        sender_threads,
        // Send-only and round-trip measure packets: several ports are extra copies of each
        // probe in one zmap run (its output then names the first port only).
        zmap_ports: ZmapPorts::CopiesOfTheFirst,
    };
    let synwatch = arguments.synwatch.to_string_lossy();
    let argv = match tool {
        "synwatch-ring" => tools::synwatch_scan(&synwatch, SynwatchVariant::Ring, &tool_scan),
        "synwatch-sendmmsg" => tools::synwatch_scan(&synwatch, SynwatchVariant::Sendmmsg, &tool_scan),
        "synwatch-connect" => tools::synwatch_scan(&synwatch, SynwatchVariant::Connect, &tool_scan),
        "nmap-st" => tools::commands(ExternalTool::NmapConnect, &tool_scan).remove(0).argv,
        "masscan" => tools::commands(ExternalTool::Masscan, &tool_scan).remove(0).argv,
        "zmap" => tools::commands(ExternalTool::Zmap, &tool_scan).remove(0).argv,
        other => bail!("unknown tool {other}"),
    };
    Ok(in_scanner(lab, &argv[0], &argv[1..]))
}

fn installed(tool: &str) -> bool {
    match tool.strip_suffix("-2t").unwrap_or(tool) {
        synwatch if synwatch.starts_with("synwatch") => true,
        "nmap-st" => runner::program_installed("nmap"),
        other => runner::program_installed(other),
    }
}

fn count_lines(path: &str, pattern: &str) -> u64 {
    std::fs::read_to_string(path)
        .map(|text| text.lines().filter(|line| line.contains(pattern)).count() as u64)
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let arguments = Arguments::parse();
    if let Bench::MetricsRender { renders } = arguments.command {
        return exporter::metrics_render(renders);
    }
    if let Bench::ListenerRead { readings, sockets } = arguments.command {
        return listener_read(readings, sockets);
    }
    if let Bench::TargetFiles = arguments.command {
        return target_files::target_files(&arguments);
    }
    if let Bench::History { changes, per_scan } = arguments.command {
        return history::history(&arguments, changes, per_scan);
    }
    if let Err(reason) = synwatch_lab::lab_available() {
        bail!("the lab needs root, iproute2, nftables and ethtool: {reason}");
    }
    match arguments.command {
        Bench::SendOnly { ports } => send_only(&arguments, ports),
        Bench::RoundTrip { rate, wait, retries } => round_trip(&arguments, rate, wait, retries),
        Bench::Memory => memory(&arguments),
        Bench::ExporterMemory => exporter::exporter_memory(&arguments),
        Bench::ProbeLatency { repetitions, max_rate } => exporter::probe_latency(&arguments, repetitions, max_rate),
        Bench::Growth { rate } => growth(&arguments, rate),
        Bench::Timing => timing::timing_table(&arguments),
        Bench::Field { ref profiles, ref target, ref ports, rate, seed, ref field_tools, ref ground_truth } => {
            let table = field::FieldTable {
                profiles,
                target,
                ports,
                rate,
                seed,
                tools: field_tools,
                ground_truth: ground_truth.as_deref(),
            };
            field::field_table(&arguments, &table)
        }
        Bench::FieldSpeed { ports, rate, ref senders } => field::field_speed(&arguments, ports, rate, senders),
        Bench::Udp { ref target, ref nmap_target, ref udp_ports, rate, loss, ref udp_tools } => {
            let table = udp::UdpTable {
                target,
                nmap_target: nmap_target.as_deref(),
                ports: udp_ports,
                rate,
                loss,
                tools: udp_tools,
            };
            udp::udp_table(&arguments, &table)
        }
        Bench::FieldUdp { ref profiles, ref target, ref nmap_target, ref udp_ports, rate, seed, ref udp_tools } => {
            let table = field_udp::FieldUdpTable {
                profiles,
                target,
                nmap_target,
                ports: udp_ports,
                rate,
                seed,
                tools: udp_tools,
            };
            field_udp::field_udp_table(&arguments, &table)
        }
        Bench::MetricsRender { .. } | Bench::ListenerRead { .. } | Bench::History { .. } | Bench::TargetFiles => {
            unreachable!("handled above")
        }
    }
}

fn send_only(arguments: &Arguments, ports: u16) -> Result<()> {
    let lab = Lab::build(LabConfig { target_link_down: true, ..LabConfig::default() })?;
    let port_spec = format!("1-{ports}");
    let output = std::env::temp_dir().join("lab-bench-send-only.out").to_string_lossy().to_string();
    println!("| tool | packets/s (median of {}) | packets | CPU s | CPU ns/packet |", arguments.runs);
    println!("|---|---|---|---|---|");
    for tool in &arguments.tools {
        if !installed(tool) {
            println!("| {tool} | not installed | | | |");
            continue;
        }
        let mut runs = Vec::new();
        for _ in 0..arguments.runs {
            let scan = Scan {
                targets: "198.18.0.0/15",
                ports: &port_spec,
                rate: 100_000_000,
                wait: 0,
                retries: 0,
                output: &output,
            };
            let mut command = tool_command(arguments, &lab, tool, &scan)?;
            if tool == "masscan" {
                // masscan never exits when nothing answers (it keeps "waiting"); it is killed
                // once its packets are out. Its rate comes from the link counters either way.
                let seconds = (u64::from(ports) * 131_072 / 250_000 + 5).to_string();
                let mut killer = Command::new("timeout");
                killer.args(["-s", "KILL", &seconds]).arg(command.get_program()).args(command.get_args());
                command = killer;
            }
            let run = sampled_rate(&lab, || {
                let (wall, cpu, max_rss_kib) = measure(command, tool == "masscan")?;
                Ok(Run { wall, cpu, max_rss_kib, ..Run::default() })
            })?;
            runs.push(run);
        }
        let rate = median(runs.iter().map(|run| run.rate).collect());
        let cpu = median(runs.iter().map(|run| run.cpu.as_secs_f64()).collect());
        let packets = median(runs.iter().map(|run| run.packets as f64).collect());
        println!("| {tool} | {:.0} | {packets:.0} | {cpu:.2} | {:.0} |", rate, cpu * 1e9 / packets.max(1.0));
    }
    Ok(())
}

fn round_trip(arguments: &Arguments, rate: u64, wait: u64, retries: u32) -> Result<()> {
    let listener: SocketAddr = "0.0.0.0:80".parse().expect("valid");
    let lab = Lab::build(LabConfig {
        target_ranges: vec!["198.18.0.0/16".parse().expect("valid")],
        listeners: vec![listener],
        ..LabConfig::default()
    })?;
    let output = std::env::temp_dir().join("lab-bench-round-trip.out").to_string_lossy().to_string();
    println!(
        "| tool | wall s (median of {}) | open found of 65,536 | CPU s | CPU µs per probe | peak RSS MiB |",
        arguments.runs
    );
    println!("|---|---|---|---|---|---|");
    for tool in &arguments.tools {
        if !installed(tool) {
            println!("| {tool} | not installed | | | | |");
            continue;
        }
        let mut runs = Vec::new();
        for _ in 0..arguments.runs {
            let _ = std::fs::remove_file(&output);
            let retries = if tool.starts_with("synwatch") { retries } else { 0 };
            let scan = Scan { targets: "198.18.0.0/16", ports: "80", rate, wait, retries, output: &output };
            let command = tool_command(arguments, &lab, tool, &scan)?;
            let (wall, cpu, max_rss_kib) = measure(command, false)?;
            let mut run = Run { wall, cpu, max_rss_kib, ..Run::default() };
            run.found = match tool.strip_suffix("-2t").unwrap_or(tool) {
                "masscan" => count_lines(&output, "open tcp 80"),
                "nmap-st" => count_lines(&output, "80/open"),
                "zmap" => count_lines(&output, "198.18."),
                _ => count_lines(&output, "\"open\""),
            };
            runs.push(run);
        }
        let wall = median(runs.iter().map(|run| run.wall.as_secs_f64()).collect());
        let found = median(runs.iter().map(|run| run.found as f64).collect());
        let cpu = median(runs.iter().map(|run| run.cpu.as_secs_f64()).collect());
        let rss = median(runs.iter().map(|run| run.max_rss_kib as f64 / 1024.0).collect());
        println!("| {tool} | {wall:.2} | {found:.0} | {cpu:.2} | {:.2} | {rss:.1} |", cpu * 1e6 / 65_536.0);
    }
    Ok(())
}

fn memory(arguments: &Arguments) -> Result<()> {
    let lab = Lab::build(LabConfig { target_link_down: true, ..LabConfig::default() })?;
    let output = std::env::temp_dir().join("lab-bench-memory.out").to_string_lossy().to_string();
    println!("| scan | peak RSS MiB (median of {}) | wall s |", arguments.runs);
    println!("|---|---|---|");
    let mut runs = Vec::new();
    for _ in 0..arguments.runs {
        let scan =
            Scan { targets: "198.18.0.0/16", ports: "1-100", rate: 2_000_000, wait: 0, retries: 0, output: &output };
        let command = tool_command(arguments, &lab, "synwatch-ring", &scan)?;
        let (wall, _, max_rss_kib) = measure(command, false)?;
        runs.push((max_rss_kib as f64 / 1024.0, wall.as_secs_f64()));
    }
    let rss = median(runs.iter().map(|run| run.0).collect());
    let wall = median(runs.iter().map(|run| run.1).collect());
    println!("| 65,536 hosts × 100 ports (6,553,600 probes) | {rss:.1} | {wall:.2} |");
    Ok(())
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix(" kB")?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn listener_read(readings: usize, sockets: usize) -> Result<()> {
    use synwatch_exporter::listeners::{ListenerSource, ProcSource};
    let _listeners: Vec<std::net::TcpListener> =
        (0..sockets).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    let config = synwatch_exporter::config::ListenersSection { enabled: true, ..Default::default() };
    let mut source = ProcSource::default();
    // The first reading walks the process table for the owners of every socket.
    let started = Instant::now();
    let first = source.read(&config).map_err(|error| anyhow::anyhow!(error))?;
    let first_ms = started.elapsed().as_secs_f64() * 1e3;
    let named = first.sockets.iter().filter(|socket| !socket.process.is_empty()).count();
    let mut times = Vec::with_capacity(readings);
    for _ in 0..readings {
        let started = Instant::now();
        source.read(&config).map_err(|error| anyhow::anyhow!(error))?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let mut baseline = Vec::new();
    for _ in 0..readings.div_ceil(10) {
        let started = Instant::now();
        let status = Command::new("ss").arg("-ltunpH").stdout(Stdio::null()).status().context("running ss")?;
        if !status.success() {
            bail!("ss -ltunp failed");
        }
        baseline.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let (steady, ss) = (median(times), median(baseline));
    println!(
        "| sockets read | with a process name | first reading ms | later readings ms (median) | ss -ltunp ms (median) | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    println!("| {} | {named} | {first_ms:.2} | {steady:.2} | {ss:.2} | {:.2}x |", first.sockets.len(), steady / ss);
    Ok(())
}

/// One size of the growth table: `hosts` × `ports` of a lab with 1 % of its probes open.
fn growth(arguments: &Arguments, rate: u64) -> Result<()> {
    use synwatch_bench::{LabFamily, LabPlan};
    println!(
        "| probes | tool | wall s (median of {}) | CPU s | CPU µs per probe | peak RSS MiB | open found |",
        arguments.runs
    );
    println!("|---|---|---|---|---|---|---|");
    for (hosts, ports) in [(1_024u32, 1u16), (65_536, 1), (65_536, 16)] {
        let plan = LabPlan {
            hosts,
            family: LabFamily::V4,
            ports: (80..80 + ports).collect(),
            open_percent: 1.0,
            filtered_percent: 0.0,
            loss_percent: 0,
            seed: 1,
            field: None,
        };
        let open = plan.open_endpoints();
        let lab = Lab::build(LabConfig {
            target_ranges: plan.target_ranges(),
            listeners: open.clone(),
            static_neighbour: true,
            ..LabConfig::default()
        })?;
        let target = plan.target_ranges()[0];
        let port_spec = format!("80-{}", 80 + ports - 1);
        let output = std::env::temp_dir().join("lab-bench-growth.out").to_string_lossy().to_string();
        for tool in &arguments.tools {
            if !installed(tool) {
                continue;
            }
            let mut runs = Vec::new();
            for _ in 0..arguments.runs {
                let commands: Vec<(Command, Option<u16>)> = match tool.as_str() {
                    "masscan" | "zmap" => {
                        let external = if tool == "masscan" { ExternalTool::Masscan } else { ExternalTool::Zmap };
                        let ipnetwork::IpNetwork::V4(network) = target else { bail!("the growth lab is IPv4") };
                        let scan = field::tool_scan(&lab, network, plan.ports.clone(), rate, output.clone())?;
                        // masscan may stay in "waiting -N secs" after its wait: `timeout` stops
                        // it with SIGINT (which flushes its output) 5 s after its probes and wait.
                        let seconds = (plan.probes() / rate + 6).to_string();
                        tools::commands(external, &scan)
                            .into_iter()
                            .map(|command| {
                                let inner = in_scanner(&lab, &command.argv[0], &command.argv[1..]);
                                let mut outer = Command::new("timeout");
                                outer.args(["-s", "INT", &seconds]).arg(inner.get_program()).args(inner.get_args());
                                (if external == ExternalTool::Masscan { outer } else { inner }, command.port)
                            })
                            .collect()
                    }
                    _ => {
                        let scan = Scan {
                            targets: &target.to_string(),
                            ports: &port_spec,
                            rate,
                            wait: 1,
                            retries: 0,
                            output: &output,
                        };
                        vec![(tool_command(arguments, &lab, tool, &scan)?, None)]
                    }
                };
                let mut run = Run::default();
                for (command, port) in commands {
                    let file = match port {
                        Some(port) => format!("{output}.{port}"),
                        None => output.clone(),
                    };
                    let _ = std::fs::remove_file(&file);
                    let (wall, cpu, max_rss_kib) = measure(command, tool == "masscan")?;
                    run.wall += wall;
                    run.cpu += cpu;
                    run.max_rss_kib = run.max_rss_kib.max(max_rss_kib);
                    run.found += match tool.as_str() {
                        "masscan" => count_lines(&file, "open tcp"),
                        "zmap" => count_lines(&file, "198.18."),
                        _ => count_lines(&file, "\"open\""),
                    };
                }
                runs.push(run);
            }
            let wall = median(runs.iter().map(|run| run.wall.as_secs_f64()).collect());
            let cpu = median(runs.iter().map(|run| run.cpu.as_secs_f64()).collect());
            let rss = median(runs.iter().map(|run| run.max_rss_kib as f64 / 1024.0).collect());
            let found = median(runs.iter().map(|run| run.found as f64).collect());
            println!(
                "| {} | {tool} | {wall:.2} | {cpu:.2} | {:.2} | {rss:.1} | {found:.0} of {} |",
                plan.probes(),
                cpu * 1e6 / plan.probes() as f64,
                open.len()
            );
        }
    }
    Ok(())
}
