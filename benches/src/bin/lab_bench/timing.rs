//! `lab_bench timing`: the RTT-adaptive timing's table (issue 20), side by side in one run.
//!
//! The kernel lab holds a /16 answering on port 80 in about 0.1 ms, with 8 blackholed /24s
//! (198.18.10.0 to 198.18.17.255: nothing answers) and 4 ICMP-prohibited /24s (198.18.20.0 to
//! 198.18.23.255). Three scans:
//!
//! * the /16 × port 80 at 2,000,000/s with one retry: synwatch with the learned timing (its
//!   default), synwatch with the fixed timing it had before (`--retry-gap 1s --wait 1s`), zmap
//!   with a 1 s cooldown and masscan with its default wait;
//! * the /18 of it in connect() mode: synwatch (learned and fixed) against
//!   `nmap -sT -n -Pn -T5 --min-rate 100000`;
//! * an IPv6 /120 × port 80 with 10 % loss each way and three retries at 20,000/s: synwatch
//!   learned and fixed.
//!
//! Each row gives the median wall time of `--runs` runs, the open ports found against the
//! lab's truth, and for synwatch whether the filtered set is exactly the blackholed and
//! prohibited addresses.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use synwatch_bench::tools::{self, ExternalTool, ToolScan, ZmapPorts};
use synwatch_lab::{Lab, LabConfig};

use crate::{Arguments, in_scanner, installed, median};

/// Runs `command` to its end: its wall time, and its stderr's `synwatch timing:` line.
fn measure_timing(mut command: std::process::Command) -> Result<(f64, String)> {
    let stderr_path = std::env::temp_dir().join(format!("lab-bench-timing-stderr-{}", std::process::id()));
    command.stdout(std::process::Stdio::null()).stderr(std::fs::File::create(&stderr_path)?);
    let started = std::time::Instant::now();
    let child = command.spawn().with_context(|| format!("starting {command:?}"))?;
    let usage =
        synwatch_lab::runner::wait_child(child.id() as libc::pid_t, true)?.context("wait4 returned no child")?;
    let wall = started.elapsed().as_secs_f64();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr_path);
    anyhow::ensure!(usage.status == 0, "{command:?} exited with status {}: {stderr}", usage.status);
    let timing = stderr.lines().find_map(|line| line.strip_prefix("synwatch timing: ")).unwrap_or_default();
    Ok((wall, timing.to_string()))
}

/// The blackholed and prohibited /24s of the lab (third octets).
const BLACKHOLED: std::ops::RangeInclusive<u8> = 10..=17;
const PROHIBITED: std::ops::RangeInclusive<u8> = 20..=23;

fn networks(octets: std::ops::RangeInclusive<u8>) -> Vec<ipnetwork::IpNetwork> {
    octets.map(|octet| format!("198.18.{octet}.0/24").parse().expect("valid")).collect()
}

/// Whether `address` of the /16 is filtered in the lab.
fn filtered_in_lab(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let third = v4.octets()[2];
            BLACKHOLED.contains(&third) || PROHIBITED.contains(&third)
        }
        IpAddr::V6(_) => false,
    }
}

/// What one synwatch run reported: the open and filtered addresses (port 80 only).
fn synwatch_states(path: &str) -> (BTreeSet<IpAddr>, BTreeSet<IpAddr>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut open, mut filtered) = (BTreeSet::new(), BTreeSet::new());
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(address) = value["ip"].as_str().and_then(|text| text.parse().ok()) else {
            continue;
        };
        match value["state"].as_str() {
            Some("open") => {
                open.insert(address);
            }
            Some("filtered") => {
                filtered.insert(address);
            }
            _ => {}
        }
    }
    (open, filtered)
}

/// One row's command: a synwatch scan with learned or fixed timing, or an anchor.
fn command(arguments: &Arguments, lab: &Lab, tool: &str, scan: &TimingScan<'_>) -> Result<Vec<String>> {
    let synwatch = arguments.synwatch.to_string_lossy().to_string();
    let mut argv: Vec<String> = match tool {
        "synwatch" | "synwatch-fixed" | "synwatch-connect" | "synwatch-connect-fixed" => [
            synwatch.as_str(),
            "scan",
            scan.target,
            "-p",
            "80",
            "--rate",
            &scan.rate.to_string(),
            "--retries",
            &scan.retries.to_string(),
            "--states",
            "open,filtered",
            "--no-progress",
            "--format",
            "jsonl",
            "-o",
            scan.output,
        ]
        .iter()
        .map(|item| item.to_string())
        .collect(),
        "zmap" | "masscan" => {
            let tool_scan = ToolScan {
                target: scan.target.parse().context("an IPv4 CIDR")?,
                ports: vec![80],
                rate: scan.rate,
                retries: 0,
                wait_seconds: 1,
                interface: lab.scanner_link().to_string(),
                source: synwatch_lab::SCANNER_V4,
                gateway_mac: lab.gateway_mac()?,
                output: scan.output.to_string(),
                sender_threads: 1,
                zmap_ports: ZmapPorts::OneRunPerPort,
            };
            let which = if tool == "zmap" { ExternalTool::Zmap } else { ExternalTool::Masscan };
            tools::commands(which, &tool_scan).remove(0).argv
        }
        "nmap-st" => {
            ["nmap", "-sT", "-n", "-Pn", "-T5", "--min-rate", "100000", "-p", "80", "-oG", scan.output, scan.target]
                .iter()
                .map(|item| item.to_string())
                .collect()
        }
        other => anyhow::bail!("unknown timing tool {other}"),
    };
    if tool.ends_with("-fixed") {
        argv.extend(["--retry-gap", "1s", "--wait", "1s"].map(String::from));
    }
    if tool.starts_with("synwatch-connect") {
        argv.extend(["--mode", "connect"].map(String::from));
    }
    Ok(argv)
}

struct TimingScan<'a> {
    target: &'a str,
    rate: u64,
    retries: u32,
    output: &'a str,
}

/// The open addresses an anchor's output names (port 80 only).
fn anchor_open(tool: &str, path: &str) -> BTreeSet<IpAddr> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let address_of = |word: &str| word.parse::<IpAddr>().ok();
    match tool {
        "masscan" => text
            .lines()
            .filter(|line| line.starts_with("open tcp 80"))
            .filter_map(|line| line.split(' ').nth(3))
            .filter_map(address_of)
            .collect(),
        "nmap-st" => text
            .lines()
            .filter(|line| line.contains("80/open"))
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter_map(address_of)
            .collect(),
        // zmap writes one address per line to OUTPUT.80 (one run per port).
        _ => std::fs::read_to_string(format!("{path}.80"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| address_of(line.trim()))
            .collect(),
    }
}

fn table(
    arguments: &Arguments,
    lab: &Lab,
    title: &str,
    scan: &TimingScan<'_>,
    tools: &[&str],
    truth: u64,
) -> Result<()> {
    println!("\n{title}\n");
    println!("| tool | wall s (median of {}) | open found of {truth} | filtered set exact |", arguments.runs);
    println!("|---|---|---|---|");
    for &tool in tools {
        if !installed(tool) {
            println!("| {tool} | not installed | | |");
            continue;
        }
        let mut walls = Vec::new();
        let mut found = Vec::new();
        let mut exact = Vec::new();
        let mut timings = Vec::new();
        for _ in 0..arguments.runs {
            let _ = std::fs::remove_file(scan.output);
            let _ = std::fs::remove_file(format!("{}.80", scan.output));
            let argv = command(arguments, lab, tool, scan)?;
            let (wall, timing) = measure_timing(in_scanner(lab, &argv[0], &argv[1..]))?;
            walls.push(wall);
            if !timing.is_empty() {
                timings.push(timing);
            }
            if tool.starts_with("synwatch") {
                let (open, filtered) = synwatch_states(scan.output);
                found.push(open.len() as f64);
                let wrong = filtered.iter().filter(|address| !filtered_in_lab(**address)).count();
                let expected = if scan.target.contains(':') {
                    None
                } else {
                    let network: ipnetwork::Ipv4Network = scan.target.parse()?;
                    Some(network.iter().filter(|address| filtered_in_lab(IpAddr::V4(*address))).count())
                };
                exact.push(expected.is_some_and(|expected| wrong == 0 && filtered.len() == expected));
            } else {
                found.push(anchor_open(tool, scan.output).len() as f64);
            }
        }
        let exact = match (tool.starts_with("synwatch"), scan.target.contains(':')) {
            (false, _) => "-".to_string(),
            (true, true) => "(nothing filtered)".to_string(),
            (true, false) => format!("{} of {}", exact.iter().filter(|&&exact| exact).count(), exact.len()),
        };
        println!("| {tool} | {:.2} | {:.0} | {exact} |", median(walls), median(found));
        for timing in timings {
            eprintln!("    {tool}: {timing}");
        }
    }
    Ok(())
}

/// Runs the three tables.
pub fn timing_table(arguments: &Arguments) -> Result<()> {
    let listener: SocketAddr = "0.0.0.0:80".parse().expect("valid");
    let output = std::env::temp_dir().join("lab-bench-timing.out").to_string_lossy().to_string();
    let lab = Lab::build(LabConfig {
        target_ranges: vec!["198.18.0.0/16".parse().expect("valid")],
        listeners: vec![listener],
        blackholed: networks(BLACKHOLED),
        prohibited: networks(PROHIBITED),
        ..LabConfig::default()
    })?;
    let filtered =
        ((BLACKHOLED.end() - BLACKHOLED.start() + 1) as u64 + (PROHIBITED.end() - PROHIBITED.start() + 1) as u64) * 256;
    let scan = TimingScan { target: "198.18.0.0/16", rate: 2_000_000, retries: 1, output: &output };
    table(
        arguments,
        &lab,
        "Kernel lab, 198.18.0.0/16 × port 80, 12 filtered /24s, 2,000,000/s, synwatch --retries 1:",
        &scan,
        &["synwatch", "synwatch-fixed", "zmap", "masscan"],
        65_536 - filtered,
    )?;
    let scan = TimingScan { target: "198.18.0.0/18", rate: 100_000, retries: 1, output: &output };
    table(
        arguments,
        &lab,
        "Kernel lab, connect() mode, 198.18.0.0/18 × port 80 (the same 12 filtered /24s), 100,000/s:",
        &scan,
        &["synwatch-connect", "synwatch-connect-fixed", "nmap-st"],
        16_384 - filtered,
    )?;
    drop(lab);
    let lab = Lab::build(LabConfig {
        target_ranges: vec!["2001:2::/120".parse().expect("valid")],
        listeners: vec!["[::]:80".parse().expect("valid")],
        loss_percent: 10,
        ..LabConfig::default()
    })?;
    let scan = TimingScan { target: "2001:2::/120", rate: 20_000, retries: 3, output: &output };
    table(
        arguments,
        &lab,
        "Kernel lab, 2001:2::/120 × port 80, 10 % loss each way, 20,000/s, --retries 3:",
        &scan,
        &["synwatch", "synwatch-fixed"],
        256,
    )
}
