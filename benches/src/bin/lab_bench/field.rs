//! `lab_bench field` and `lab_bench field-speed`: the field lab (a simulated network answered by
//! the lab's responder, `synwatch_lab::field`) side by side.
//!
//! * `field`: in each profile, one range small enough for nmap, every tool as its users run it
//!   (synwatch's defaults; zmap one run per port with a 1 s cooldown; masscan `--wait 1`; nmap
//!   `-T4`), scored against the model: wall time, open recall, false opens (SYN proxies and
//!   tarpits reported open) and SYNs sent (counted by the responder).
//! * `field-speed`: the responder's answer rate (the target link's transmit counter, between
//!   10 % and 90 % of the replies) and its CPU, with synwatch and zmap as the sender, in `lan`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnetwork::IpNetwork;
use synwatch_bench::tools::{self, ExternalTool, ToolScan, ZmapPorts};
use synwatch_lab::field::profiles::Knobs;
use synwatch_lab::field::{SimulatorOptions, Transport, TrueState, profile};
use synwatch_lab::{Lab, LabConfig, runner};

use super::{Arguments, median};

/// The tools of the side-by-side table.
pub const FIELD_TOOLS: &str = "synwatch,synwatch-connect,zmap,masscan,nmap-ss,nmap-st";

pub fn field_lab(name: &str, seed: u64, knobs: &Knobs) -> Result<Lab> {
    let mut model = profile(name, seed).with_context(|| format!("no profile {name:?} (lan, internet, hostile)"))?;
    knobs.apply(&mut model);
    let options = SimulatorOptions { count_per_port: false, ..SimulatorOptions::default() };
    Ok(Lab::build(LabConfig {
        field: Some(model),
        field_options: options,
        static_neighbour: true,
        ..LabConfig::default()
    })?)
}

/// One tool's command lines (zmap: one per port) and which reader parses each output file.
fn commands(
    arguments: &Arguments,
    lab: &Lab,
    tool: &str,
    scan: &ToolScan,
) -> Result<Vec<(tools::ToolCommand, Option<ExternalTool>)>> {
    // Absolute: the tools run in the temporary directory (masscan writes paused.conf there).
    let synwatch = std::fs::canonicalize(&arguments.synwatch)
        .with_context(|| format!("{}", arguments.synwatch.display()))?
        .to_string_lossy()
        .to_string();
    let strings = |items: &[&str]| items.iter().map(|item| item.to_string()).collect::<Vec<_>>();
    let ports = scan.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let (target, rate) = (scan.target.to_string(), scan.rate.to_string());
    let single = |argv: Vec<String>, reader| {
        vec![(tools::ToolCommand { argv, output: scan.output.clone(), metadata: None, port: None }, reader)]
    };
    Ok(match tool {
        // synwatch as its users run it: the default retries, retry gap and wait (learned);
        // `-fixed`, with the fixed 1 s gap and wait it had before they were learned.
        "synwatch"
        | "synwatch-connect"
        | "synwatch-fixed"
        | "synwatch-connect-fixed"
        | "synwatch-verify"
        | "synwatch-no-canaries" => {
            let mut argv = strings(&[
                &synwatch,
                "scan",
                &target,
                "-p",
                &ports,
                "--rate",
                &rate,
                "--no-progress",
                "--format",
                "jsonl",
                "-o",
                &scan.output,
            ]);
            if tool.starts_with("synwatch-connect") {
                argv.extend(strings(&["--mode", "connect"]));
            }
            if tool.ends_with("-fixed") {
                argv.extend(strings(&["--retry-gap", "1s", "--wait", "1s"]));
            }
            // The costs of the trust in an open: verification, and (by its absence) canaries.
            if tool == "synwatch-verify" {
                argv.extend(strings(&["--verify", "connect"]));
            }
            if tool == "synwatch-no-canaries" {
                argv.extend(strings(&["--canaries", "0"]));
            }
            single(argv, None)
        }
        "zmap" => tools::commands(ExternalTool::Zmap, scan)
            .into_iter()
            .map(|command| (command, Some(ExternalTool::Zmap)))
            .collect(),
        "masscan" => tools::commands(ExternalTool::Masscan, scan)
            .into_iter()
            .map(|command| (command, Some(ExternalTool::Masscan)))
            .collect(),
        "nmap-ss" => single(
            strings(&[
                "nmap",
                "-sS",
                "-T4",
                "-n",
                "-Pn",
                "-p",
                &ports,
                "-e",
                lab.scanner_link(),
                "-S",
                &scan.source.to_string(),
                "-oG",
                &scan.output,
                &target,
            ]),
            Some(ExternalTool::Nmap),
        ),
        "nmap-st" => single(
            strings(&["nmap", "-sT", "-T4", "-n", "-Pn", "-p", &ports, "-oG", &scan.output, &target]),
            Some(ExternalTool::NmapConnect),
        ),
        other => bail!(
            "unknown field tool {other} (expected some of {FIELD_TOOLS}, synwatch-fixed, synwatch-connect-fixed, synwatch-verify, synwatch-no-canaries)"
        ),
    })
}

/// synwatch's opens as a user alerting on them reads them: the SYN-ACKs of hosts it judged
/// suspect, and those whose verification failed, are not open (they are counted apart).
fn synwatch_open(text: &str) -> (BTreeSet<(IpAddr, u16)>, usize) {
    let mut untrusted = 0;
    let open = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|value| value["state"] == "open")
        .filter(|value| {
            let trusted = value.get("suspect").is_none() && value.get("verify").is_none_or(|verdict| verdict == "ok");
            untrusted += usize::from(!trusted);
            trusted
        })
        .filter_map(|value| Some((value["ip"].as_str()?.parse().ok()?, value["port"].as_u64()? as u16)))
        .collect();
    (open, untrusted)
}

/// One run: wall time, CPU, opens found, SYNs the network received.
struct FieldRun {
    wall: Duration,
    cpu: Duration,
    found: BTreeSet<(IpAddr, u16)>,
    /// synwatch's SYN-ACKs reported suspect or unverified rather than open.
    flagged: usize,
    syns: u64,
}

fn run_tool(arguments: &Arguments, lab: &Lab, tool: &str, scan: &ToolScan, probes: u64) -> Result<FieldRun> {
    let mut run = FieldRun { wall: Duration::ZERO, cpu: Duration::ZERO, found: BTreeSet::new(), flagged: 0, syns: 0 };
    let syns_before = lab.syns_received()?;
    let started = Instant::now();
    for (command, reader) in commands(arguments, lab, tool, scan)? {
        let _ = std::fs::remove_file(&command.output);
        let stderr_path = format!("{}.stderr", command.output);
        let mut child = spawn_in_scanner(lab, &command.argv, &std::env::temp_dir(), &stderr_path)?;
        // masscan: past its probes, its wait and 2 s it is nudged, then stopped; everything
        // else gets a generous deadline.
        let sending = Duration::from_secs_f64(probes as f64 / scan.rate as f64);
        let deadline = Instant::now()
            + if tool == "masscan" {
                sending + Duration::from_secs(scan.wait_seconds + 2)
            } else {
                Duration::from_secs(600)
            };
        let ended = runner::wait_child_until(child.id() as libc::pid_t, deadline, &|| lab.nudge_scanner(), &|| false)?;
        let _ = child.try_wait();
        if ended.status != 0 && !ended.stopped {
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            bail!("{} exited with status {}: {}", command.argv.join(" "), ended.status, stderr.trim());
        }
        // synwatch says what timing it used: shown beside the table.
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        for prefix in ["synwatch timing: ", "synwatch evidence: ", "synwatch verify: "] {
            if let Some(line) = stderr.lines().find_map(|line| line.strip_prefix(prefix)) {
                eprintln!("    {tool}: {prefix}{line}");
            }
        }
        let _ = std::fs::remove_file(&stderr_path);
        run.cpu += ended.cpu;
        let text = std::fs::read_to_string(&command.output).unwrap_or_default();
        match reader {
            None => {
                let (open, untrusted) = synwatch_open(&text);
                run.found.extend(open);
                run.flagged += untrusted;
            }
            Some(tool) => run.found.extend(tools::parse_open(tool, &text, command.port)),
        }
        let _ = std::fs::remove_file(&command.output);
        if let Some(metadata) = &command.metadata {
            let _ = std::fs::remove_file(metadata);
        }
    }
    run.wall = started.elapsed();
    run.syns = lab.syns_received()?.saturating_sub(syns_before);
    Ok(run)
}

/// Starts a compared program (`argv`) in the lab's scanner namespace, in `directory`, its
/// stderr into `stderr_path` and nothing on stdin or stdout.
pub fn spawn_in_scanner(
    lab: &Lab,
    argv: &[String],
    directory: &std::path::Path,
    stderr_path: &str,
) -> Result<std::process::Child> {
    lab.scanner_command(&argv[0])
        .args(&argv[1..])
        .current_dir(directory)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr_path)?)
        .spawn()
        .with_context(|| format!("starting {}", argv[0]))
}

/// One tool's scan of `target` × `ports` in the lab (no retries, a 1 s wait, one thread, zmap
/// one run per port); callers change what they need.
pub fn tool_scan(
    lab: &Lab,
    target: ipnetwork::Ipv4Network,
    ports: Vec<u16>,
    rate: u64,
    output: String,
) -> Result<ToolScan> {
    Ok(ToolScan {
        target,
        ports,
        rate,
        retries: 0,
        wait_seconds: 1,
        interface: lab.scanner_link().to_string(),
        source: synwatch_lab::SCANNER_V4,
        gateway_mac: lab.gateway_mac()?,
        output,
        sender_threads: 1,
        zmap_ports: ZmapPorts::OneRunPerPort,
    })
}

/// What `lab_bench field` is asked to run.
pub struct FieldTable<'a> {
    /// Profiles, in order.
    pub profiles: &'a [String],
    /// The scanned IPv4 range.
    pub target: &'a str,
    /// Ports.
    pub ports: &'a str,
    /// Rate of the tools that take one.
    pub rate: u64,
    /// The profiles' seed.
    pub seed: u64,
    /// Tools, in order.
    pub tools: &'a [String],
    /// Where to write each profile's ground truth.
    pub ground_truth: Option<&'a std::path::Path>,
}

/// The side-by-side table of every profile.
pub fn field_table(arguments: &Arguments, table: &FieldTable<'_>) -> Result<()> {
    let FieldTable { profiles, target, ports, rate, seed, tools: tool_list, ground_truth } = *table;
    let target: ipnetwork::Ipv4Network = target.parse().context("--target is an IPv4 CIDR inside 198.18.0.0/16")?;
    let ports = synwatch_engine::PortSet::parse(ports)?.tcp_numbers().collect::<Vec<_>>();
    let probes = u64::from(target.size()) * ports.len() as u64;
    let output =
        std::env::temp_dir().join(format!("lab-bench-field-{}", std::process::id())).to_string_lossy().to_string();
    println!(
        "{target} × {} ports ({probes} probes), {rate}/s where a tool takes a rate, medians of {} runs",
        ports.len(),
        arguments.runs
    );
    println!();
    println!(
        "| profile | tool | wall s | open found | recall % | false opens | flagged, not open | SYNs sent | SYNs per probe | CPU s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for name in profiles {
        let lab = field_lab(name, seed, &Knobs::default())?;
        let model = lab.field_model().expect("a field lab").clone();
        if let Some(directory) = ground_truth {
            // The model and its truth for the scanned range, for scorers outside this crate.
            let path = directory.join(format!("field-{name}.jsonl"));
            let file =
                std::io::BufWriter::new(std::fs::File::create(&path).with_context(|| path.display().to_string())?);
            let tcp_ports: Vec<_> = ports.iter().map(|&port| (Transport::Tcp, port)).collect();
            synwatch_lab::field::ground_truth_json(&model, &[IpNetwork::V4(target)], &tcp_ports, Duration::ZERO, file)?;
        }
        let mut truth_open = BTreeSet::new();
        for address in IpNetwork::V4(target).iter() {
            for &port in &ports {
                if model.truth(address, port, Duration::ZERO) == TrueState::Open {
                    truth_open.insert((address, port));
                }
            }
        }
        for tool in tool_list {
            let program = match tool.as_str() {
                "nmap-ss" | "nmap-st" => "nmap",
                other if other.starts_with("synwatch") => "sh",
                other => other,
            };
            if !runner::program_installed(program) {
                println!("| {name} | {tool} | not installed | | | | | | | |");
                continue;
            }
            let mut runs = Vec::new();
            for _ in 0..arguments.runs {
                let scan = tool_scan(&lab, target, ports.clone(), rate, output.clone())?;
                runs.push(run_tool(arguments, &lab, tool, &scan, probes)?);
            }
            let found_true = |run: &FieldRun| run.found.intersection(&truth_open).count() as f64;
            let wall = median(runs.iter().map(|run| run.wall.as_secs_f64()).collect());
            let found = median(runs.iter().map(|run| run.found.len() as f64).collect());
            let recall =
                median(runs.iter().map(|run| found_true(run) * 100.0 / truth_open.len().max(1) as f64).collect());
            let false_opens = median(runs.iter().map(|run| run.found.len() as f64 - found_true(run)).collect());
            let flagged = median(runs.iter().map(|run| run.flagged as f64).collect());
            let syns = median(runs.iter().map(|run| run.syns as f64).collect());
            let cpu = median(runs.iter().map(|run| run.cpu.as_secs_f64()).collect());
            println!(
                "| {name} | {tool} | {wall:.2} | {found:.0} | {recall:.2} | {false_opens:.0} | {flagged:.0} | {syns:.0} | {:.2} | {cpu:.2} |",
                syns / probes as f64
            );
        }
        let counters = lab.field().expect("a responder").simulator().counters();
        eprintln!("{name}: {} really open; responder {counters:?}", truth_open.len());
    }
    Ok(())
}

/// The responder's answer rate with synwatch and zmap sending as fast as they can in `lan`.
pub fn field_speed(arguments: &Arguments, ports: u16, rate: u64, tool_list: &[String]) -> Result<()> {
    let lab = field_lab("lan", 1, &Knobs::default())?;
    let target: ipnetwork::Ipv4Network = "198.18.0.0/16".parse().expect("valid");
    let port_list: Vec<u16> = (1..=ports).collect();
    let probes = u64::from(target.size()) * u64::from(ports);
    let output = std::env::temp_dir()
        .join(format!("lab-bench-field-speed-{}", std::process::id()))
        .to_string_lossy()
        .to_string();
    println!(
        "lan profile, {target} × {ports} ports ({probes} probes), requested {rate}/s, medians of {} runs",
        arguments.runs
    );
    println!();
    println!("| sender | probes/s sent | replies/s (responder) | replies | responder CPU s | responder µs per reply |");
    println!("|---|---|---|---|---|---|");
    for tool in tool_list {
        let mut rows = Vec::new();
        for _ in 0..arguments.runs {
            let cpu_before = runner::thread_cpu("field-responder");
            let replies_before = lab.target_link_transmitted()?;
            let (result, sent) = lab.sample_link(|| -> Result<_> {
                let (wall, answer_rate) = sample_target_link(&lab, || {
                    let mut scan = tool_scan(&lab, target, port_list.clone(), rate, output.clone())?;
                    let argv = match tool.as_str() {
                        "synwatch" | "synwatch-2t" => {
                            scan.sender_threads = if tool.ends_with("-2t") { 2 } else { 1 };
                            tools::synwatch_scan(
                                &arguments.synwatch.to_string_lossy(),
                                tools::SynwatchVariant::Ring,
                                &scan,
                            )
                        }
                        "zmap" => {
                            // One run with a copy of each probe per port: the same packets.
                            scan.zmap_ports = ZmapPorts::CopiesOfTheFirst;
                            tools::commands(ExternalTool::Zmap, &scan).remove(0).argv
                        }
                        other => bail!("field-speed senders are synwatch, synwatch-2t and zmap, not {other}"),
                    };
                    let mut command = lab.scanner_command(&argv[0]);
                    command.args(&argv[1..]);
                    let (wall, _, _) = super::measure(command, false)?;
                    Ok(wall)
                })?;
                Ok((wall, answer_rate))
            });
            let (_wall, answer_rate) = result?;
            let replies = lab.target_link_transmitted()?.saturating_sub(replies_before);
            let cpu = runner::thread_cpu("field-responder").saturating_sub(cpu_before);
            rows.push((sent.rate().unwrap_or(0.0), answer_rate.unwrap_or(0.0), replies as f64, cpu.as_secs_f64()));
        }
        let sent = median(rows.iter().map(|row| row.0).collect());
        let answers = median(rows.iter().map(|row| row.1).collect());
        let replies = median(rows.iter().map(|row| row.2).collect());
        let cpu = median(rows.iter().map(|row| row.3).collect());
        println!(
            "| {tool} | {sent:.0} | {answers:.0} | {replies:.0} | {cpu:.2} | {:.2} |",
            cpu * 1e6 / replies.max(1.0)
        );
        let responder = lab.field().expect("a responder");
        eprintln!(
            "{tool}: responder {:?}, receive ring drops {}, send errors {}",
            responder.simulator().counters(),
            responder.ring_drops(),
            responder.send_errors()
        );
    }
    responder_capacity(arguments, &lab, &output)
}

/// The responder's capacity on one core: paused, its receive ring fills with 196,608 probes
/// (synwatch sends them and exits); resumed, the time it takes to answer them all, with nothing
/// else sending.
fn responder_capacity(arguments: &Arguments, lab: &Lab, output: &str) -> Result<()> {
    let responder = lab.field().expect("a responder");
    let probes = 196_608u64;
    assert!(probes as usize <= synwatch_lab::field::Responder::RING_FRAMES);
    let mut rows = Vec::new();
    for _ in 0..arguments.runs {
        responder.set_paused(true);
        let syns_before = responder.simulator().counters().syns;
        let drops_before = responder.ring_drops();
        let scan = ToolScan {
            retries: 0,
            wait_seconds: 0,
            ..tool_scan(lab, "198.18.0.0/16".parse().expect("valid"), vec![1, 2, 3], 1_000_000, output.to_string())?
        };
        let argv = tools::synwatch_scan(&arguments.synwatch.to_string_lossy(), tools::SynwatchVariant::Ring, &scan);
        let mut command = lab.scanner_command(&argv[0]);
        command.args(&argv[1..]);
        super::measure(command, false)?;
        let replies_before = lab.target_link_transmitted()?;
        let cpu_before = runner::thread_cpu("field-responder");
        let started = Instant::now();
        responder.set_paused(false);
        let (mut last, mut last_change) = (0u64, Instant::now());
        let answered = loop {
            std::thread::sleep(Duration::from_millis(1));
            let syns = responder.simulator().counters().syns - syns_before;
            let replies = lab.target_link_transmitted()?.saturating_sub(replies_before);
            if replies != last {
                (last, last_change) = (replies, Instant::now());
            }
            if (syns > 0 && replies >= syns) || last_change.elapsed() > Duration::from_secs(1) {
                break (replies, last_change.duration_since(started));
            }
        };
        let cpu = runner::thread_cpu("field-responder").saturating_sub(cpu_before);
        let dropped = responder.ring_drops() - drops_before;
        rows.push((answered.0 as f64, answered.1.as_secs_f64(), cpu.as_secs_f64(), dropped as f64));
    }
    let replies = median(rows.iter().map(|row| row.0).collect());
    let seconds = median(rows.iter().map(|row| row.1).collect());
    let cpu = median(rows.iter().map(|row| row.2).collect());
    let dropped = median(rows.iter().map(|row| row.3).collect());
    println!();
    println!(
        "| responder capacity (ring filled, then drained) | replies | seconds | replies/s | CPU µs per reply | ring drops |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| 196,608 probes waiting | {replies:.0} | {seconds:.3} | {:.0} | {:.2} | {dropped:.0} |",
        replies / seconds,
        cpu * 1e6 / replies.max(1.0)
    );
    Ok(())
}

/// Runs `work` while sampling the target link's transmit counter every 2 ms; returns the
/// work's result and the reply rate between the 10 % and 90 % marks of the replies.
fn sample_target_link<R>(lab: &Lab, work: impl FnOnce() -> Result<R>) -> Result<(R, Option<f64>)> {
    let running = std::sync::atomic::AtomicBool::new(true);
    let (samples, result) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while running.load(std::sync::atomic::Ordering::Acquire) {
                if let Ok(count) = lab.target_link_transmitted() {
                    samples.push((Instant::now(), count));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            samples
        });
        let result = work();
        running.store(false, std::sync::atomic::Ordering::Release);
        (sampler.join().expect("the sampler panicked"), result)
    });
    let result = result?;
    let first = samples.first().map_or(0, |sample| sample.1);
    let total = samples.last().map_or(0, |sample| sample.1) - first;
    let at = |share: f64| samples.iter().find(|(_, count)| (count - first) as f64 >= share * total as f64).copied();
    let rate = match (at(0.1), at(0.9)) {
        (Some(low), Some(high)) if high.0 > low.0 => Some((high.1 - low.1) as f64 / (high.0 - low.0).as_secs_f64()),
        _ => None,
    };
    Ok((result, rate))
}
