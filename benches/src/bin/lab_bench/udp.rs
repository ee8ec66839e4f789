//! `lab_bench udp` (issue 22): a UDP scan of a kernel lab range side by side with nmap -sU,
//! masscan and zmap -M udp, in one run: wall time, probes per second, recall and false opens.
//!
//! The target side runs the lab's scripted UDP services ([`synwatch_lab::UdpService`]) on a
//! seeded ~5 % of the (address, port)s, every other port of the range is closed (the target
//! kernel answers ICMP port unreachable, unthrottled in the lab), one /24 is blackholed and one
//! answers ICMP admin-prohibited. masscan gets synwatch's payloads as an nmap-payloads file and
//! zmap as a payload file per port (their cookie slots zeroed); nmap keeps its own payloads,
//! which it sends per port by default.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnetwork::{IpNetwork, Ipv4Network};
use synwatch_bench::tools::{self, ExternalTool};
use synwatch_lab::runner;
use synwatch_lab::{Lab, LabConfig, UdpService};

use crate::Arguments;

/// The tools `lab_bench udp` runs by default.
pub const UDP_TOOLS: &str = "synwatch,synwatch-connect,masscan,masscan-own,zmap,nmap";

/// What `lab_bench udp` is asked to run (and `lab_bench field-udp` builds per profile).
pub struct UdpTable<'a> {
    /// The scanned range.
    pub target: &'a str,
    /// The range nmap scans (a part of `target` it can finish), or the whole target.
    pub nmap_target: Option<&'a str>,
    /// UDP ports (numbers).
    pub ports: &'a [u16],
    /// Rate of the tools that take one.
    pub rate: u64,
    /// Random loss at the target side, in percent.
    pub loss: u8,
    /// Tools, in order.
    pub tools: &'a [String],
}

/// The scripted service a port gets in this benchmark.
fn service_of(port: u16) -> Option<UdpService> {
    UdpService::PROTOCOLS.into_iter().find(|service| service.default_port() == port)
}

/// A seeded ~5 % of the range × ports, outside the blackholed and prohibited /24s.
fn services(target: Ipv4Network, ports: &[u16], avoid: &[IpNetwork]) -> Vec<(SocketAddr, UdpService)> {
    let mut chosen = Vec::new();
    for (host, address) in target.iter().enumerate() {
        if avoid.iter().any(|range| range.contains(IpAddr::V4(address))) {
            continue;
        }
        for &port in ports {
            let mut state = (host as u64) << 16 | u64::from(port) | 0x5eed_0000_0000_0000;
            state ^= state >> 33;
            state = state.wrapping_mul(0xff51_afd7_ed55_8ccd);
            state ^= state >> 33;
            if state % 100 < 5
                && let Some(service) = service_of(port)
            {
                chosen.push((SocketAddr::new(IpAddr::V4(address), port), service));
            }
        }
    }
    chosen
}

/// synwatch's payloads in the nmap-payloads format masscan reads (`udp PORT "\xHH..."`).
fn nmap_payloads(ports: &[u16]) -> String {
    let table = synwatch_wire::PayloadTable::built_in();
    let mut text = String::from("# synwatch's built-in payloads, cookie slots zeroed\n");
    for &port in ports {
        let bytes = &table.for_port(port).bytes;
        let escaped: String = bytes.iter().map(|byte| format!("\\x{byte:02x}")).collect();
        text.push_str(&format!("udp {port} \"{escaped}\"\n"));
    }
    text
}

/// The opens in masscan's list output (`open udp 53 198.18.0.7 1700000000`).
fn masscan_udp_open(text: &str) -> BTreeSet<(IpAddr, u16)> {
    text.lines()
        .filter_map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["open", "udp", port, address, ..] => Some((address.parse().ok()?, port.parse().ok()?)),
            _ => None,
        })
        .collect()
}

/// The UDP (address, port)s in `state` in synwatch's JSON lines.
fn synwatch_udp_in_state(text: &str, state: &str) -> BTreeSet<(IpAddr, u16)> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|value| value["state"] == state && value["proto"] == "udp")
        .filter_map(|value| Some((value["ip"].as_str()?.parse().ok()?, value["port"].as_u64()? as u16)))
        .collect()
}

/// One run of one tool: wall time, CPU, the opens it reported and, for the tools that report
/// them (synwatch and nmap; masscan and zmap list replies only), the closed ports.
pub struct UdpRun {
    pub wall: Duration,
    pub cpu: Duration,
    pub open: BTreeSet<(IpAddr, u16)>,
    pub closed: Option<BTreeSet<(IpAddr, u16)>>,
    /// Filtered (an ICMP error other than port unreachable), where the tool reports it.
    pub filtered: Option<BTreeSet<(IpAddr, u16)>>,
}

/// Runs `tool` once over `table` (nmap over its `nmap_target`), `probes` being what it sends
/// in its first round (masscan is stopped 3 s past sending them).
pub fn run_udp_tool(
    arguments: &Arguments,
    lab: &Lab,
    tool: &str,
    table: &UdpTable<'_>,
    scratch: &std::path::Path,
    probes: u64,
) -> Result<UdpRun> {
    let started = Instant::now();
    let mut run = UdpRun {
        wall: Duration::ZERO,
        cpu: Duration::ZERO,
        open: BTreeSet::new(),
        closed: (tool.starts_with("synwatch") || tool == "nmap").then(BTreeSet::new),
        filtered: (tool.starts_with("synwatch") || tool == "nmap").then(BTreeSet::new),
    };
    for command in commands(arguments, lab, tool, table, scratch)? {
        let _ = std::fs::remove_file(&command.output);
        let stderr_path = format!("{}.stderr", command.output);
        let mut child = crate::field::spawn_in_scanner(lab, &command.argv, scratch, &stderr_path)?;
        let sending = Duration::from_secs_f64(probes as f64 / table.rate as f64);
        let deadline = Instant::now()
            + if tool.starts_with("masscan") { sending + Duration::from_secs(3) } else { Duration::from_secs(1800) };
        let ended = runner::wait_child_until(child.id() as libc::pid_t, deadline, &|| lab.nudge_scanner(), &|| false)?;
        let _ = child.try_wait();
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        if ended.status != 0 && !ended.stopped {
            bail!("{} exited with status {}: {}", command.argv.join(" "), ended.status, stderr.trim());
        }
        if let Some(line) = stderr.lines().find(|line| line.starts_with("synwatch udp: ")) {
            eprintln!("    {tool}: {line}");
        }
        run.cpu += ended.cpu;
        let text = std::fs::read_to_string(&command.output).unwrap_or_default();
        run.open.extend(match tool {
            "masscan" | "masscan-own" => masscan_udp_open(&text),
            "zmap" => tools::parse_open(ExternalTool::Zmap, &text, command.port),
            "nmap" => tools::parse_open(ExternalTool::Nmap, &text, None),
            _ => synwatch_udp_in_state(&text, "open"),
        });
        for (set, state) in [(&mut run.closed, "closed"), (&mut run.filtered, "filtered")] {
            if let Some(set) = set {
                set.extend(match tool {
                    "nmap" => tools::nmap_ports_in_state(&text, state),
                    _ => synwatch_udp_in_state(&text, state),
                });
            }
        }
    }
    run.wall = started.elapsed();
    Ok(run)
}

struct Command {
    argv: Vec<String>,
    output: String,
    /// zmap's output lists addresses only: the port of its run.
    port: Option<u16>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

fn commands(
    arguments: &Arguments,
    lab: &Lab,
    tool: &str,
    table: &UdpTable<'_>,
    scratch: &std::path::Path,
) -> Result<Vec<Command>> {
    let output = scratch.join(format!("{tool}.out")).to_string_lossy().into_owned();
    let rate = table.rate.to_string();
    let source = synwatch_lab::SCANNER_V4.to_string();
    let gateway = lab.gateway_mac()?;
    let numbers: Vec<String> = table.ports.iter().map(u16::to_string).collect();
    Ok(match tool {
        "synwatch" | "synwatch-connect" => {
            // Absolute: the tools run in the scratch directory.
            let synwatch = std::fs::canonicalize(&arguments.synwatch)
                .with_context(|| format!("{}", arguments.synwatch.display()))?;
            let mut argv = vec![synwatch.to_string_lossy().into_owned()];
            argv.extend(strings(&[
                "scan",
                table.target,
                "-p",
                &format!("udp/{}", numbers.join(",")),
                "--rate",
                &rate,
                "--no-progress",
                "--format",
                "jsonl",
                "--states",
                "all",
                "-o",
                &output,
            ]));
            if tool == "synwatch-connect" {
                argv.extend(strings(&["--mode", "connect"]));
            }
            vec![Command { argv, output, port: None }]
        }
        "masscan" | "masscan-own" => {
            let payloads = scratch.join("nmap-payloads");
            std::fs::write(&payloads, nmap_payloads(table.ports))?;
            let ports: Vec<String> = table.ports.iter().map(|port| format!("U:{port}")).collect();
            let mut argv = strings(&[
                "masscan",
                table.target,
                "-p",
                &ports.join(","),
                "--rate",
                &rate,
                "--wait",
                "1",
                "--adapter",
                lab.scanner_link(),
                "--adapter-ip",
                &source,
                "--router-mac",
                &gateway,
                "-oL",
                &output,
            ]);
            // masscan-own keeps masscan's built-in payloads (and its parsers, which check
            // the ids it put in them); masscan gets synwatch's.
            if tool == "masscan" {
                argv.extend(strings(&["--nmap-payloads", &payloads.to_string_lossy()]));
            }
            vec![Command { argv, output, port: None }]
        }
        "zmap" => {
            let payloads = synwatch_wire::PayloadTable::built_in();
            let mut runs = Vec::new();
            for &port in table.ports {
                let payload = scratch.join(format!("zmap-payload-{port}"));
                std::fs::write(&payload, &payloads.for_port(port).bytes)?;
                let output = format!("{output}.{port}");
                let argv = strings(&[
                    "zmap",
                    "-M",
                    "udp",
                    "-p",
                    &port.to_string(),
                    &format!("--probe-args=file:{}", payload.display()),
                    "-r",
                    &rate,
                    "-c",
                    "1",
                    "-i",
                    lab.scanner_link(),
                    "-S",
                    &source,
                    "-G",
                    &gateway,
                    "-b",
                    "/dev/null",
                    "-o",
                    &output,
                    "-q",
                    table.target,
                ]);
                runs.push(Command { argv, output, port: Some(port) });
            }
            runs
        }
        "nmap" => {
            let target = table.nmap_target.unwrap_or(table.target);
            let argv = strings(&[
                "nmap",
                "-sU",
                "-T4",
                "-n",
                "-Pn",
                "-p",
                &numbers.join(","),
                "-e",
                lab.scanner_link(),
                "-S",
                &source,
                "-oG",
                &output,
                target,
            ]);
            vec![Command { argv, output, port: None }]
        }
        other => bail!("unknown UDP tool {other} (expected some of {UDP_TOOLS})"),
    })
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the side-by-side table.
pub fn udp_table(arguments: &Arguments, table: &UdpTable<'_>) -> Result<()> {
    let target: Ipv4Network = table.target.parse().context("--target is an IPv4 CIDR inside 198.18.0.0/16")?;
    // The target's 15th and 16th /24 (outside a target smaller than a /20, where they are inert).
    let slash_24 = |offset: u32| -> Result<IpNetwork> {
        let first = std::net::Ipv4Addr::from(u32::from(target.network()).wrapping_add(offset << 8));
        Ok(IpNetwork::V4(Ipv4Network::new(first, 24)?))
    };
    let (blackholed, prohibited) = (slash_24(14)?, slash_24(15)?);
    let services = services(target, table.ports, &[blackholed, prohibited]);
    let truth: BTreeSet<(IpAddr, u16)> = services.iter().map(|(address, _)| (address.ip(), address.port())).collect();
    let lab = Lab::build(LabConfig {
        target_ranges: vec![IpNetwork::V4(target)],
        udp_services: services,
        blackholed: vec![blackholed],
        prohibited: vec![prohibited],
        loss_percent: table.loss,
        static_neighbour: true,
        ..LabConfig::default()
    })?;
    let scratch = std::env::temp_dir().join(format!("lab-bench-udp-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    println!(
        "{} × udp/{:?} ({} really open, {} % loss at the target), {}/s where a tool takes a rate, medians of {} runs",
        table.target,
        table.ports,
        truth.len(),
        table.loss,
        table.rate,
        arguments.runs
    );
    println!();
    println!("| tool | range | probes | wall s | probes/s | open found | recall % | false opens | CPU s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for tool in table.tools {
        let program = match tool.as_str() {
            name if name.starts_with("synwatch") => "sh",
            "masscan-own" => "masscan",
            name => name,
        };
        if !runner::program_installed(program) {
            println!("| {tool} | not installed | | | | | | | |");
            continue;
        }
        let range: Ipv4Network =
            if tool == "nmap" { table.nmap_target.unwrap_or(table.target).parse()? } else { target };
        let probes = u64::from(range.size()) * table.ports.len() as u64;
        let in_range: BTreeSet<(IpAddr, u16)> = truth
            .iter()
            .copied()
            .filter(|(address, _)| matches!(address, IpAddr::V4(v4) if range.contains(*v4)))
            .collect();
        let mut runs = Vec::new();
        for _ in 0..arguments.runs {
            let run = run_udp_tool(arguments, &lab, tool, table, &scratch, probes)?;
            runs.push((run.wall, run.cpu, run.open));
        }
        let wall = median(runs.iter().map(|(wall, _, _)| wall.as_secs_f64()).collect());
        let cpu = median(runs.iter().map(|(_, cpu, _)| cpu.as_secs_f64()).collect());
        let found = median(runs.iter().map(|(_, _, found)| found.len() as f64).collect());
        let recall = median(
            runs.iter()
                .map(|(_, _, found)| {
                    found.intersection(&in_range).count() as f64 * 100.0 / in_range.len().max(1) as f64
                })
                .collect(),
        );
        let false_opens = median(runs.iter().map(|(_, _, found)| found.difference(&in_range).count() as f64).collect());
        println!(
            "| {tool} | {range} | {probes} | {wall:.2} | {:.0} | {found:.0} | {recall:.2} | {false_opens:.0} | {cpu:.2} |",
            probes as f64 / wall.max(1e-9)
        );
        // Where recall is lost: the last run's opens found per port.
        if let Some((_, _, found)) = runs.last() {
            let per_port: Vec<String> = table
                .ports
                .iter()
                .map(|&port| {
                    let truly = in_range.iter().filter(|(_, open_port)| *open_port == port).count();
                    let hit = found.intersection(&in_range).filter(|(_, open_port)| *open_port == port).count();
                    format!("{port} {hit}/{truly}")
                })
                .collect();
            eprintln!("    {tool}: opens found per port: {}", per_port.join(", "));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    drop(lab);
    Ok(())
}
