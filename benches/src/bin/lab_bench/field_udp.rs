//! `lab_bench field-udp` (issue 22): a UDP scan of a field lab range side by side with
//! masscan, zmap -M udp and nmap -sU, in each profile, scored against the model.
//!
//! Unlike the kernel lab of `lab_bench udp`, the field lab's hosts keep Linux's per-peer ICMP
//! error limit (a burst of 6, then one a second), lose packets and answer late, and its ranges
//! mix silent hosts, firewalls and open|filtered services. So besides the open recall the table
//! gives the closed recall: how many of the model's closed ports (port unreachable behind the
//! limit) a tool reported closed, and the same for filtered ones (other ICMP errors). masscan and zmap report replies only, so theirs is empty;
//! what a user of them reads as "not open" is every other port. The tools get synwatch's
//! payloads as in `lab_bench udp` (nmap its own); nmap scans a smaller range it can finish. Every
//! run starts once the hosts' ICMP buckets have refilled, so that runs do not inherit each
//! other's spent limits.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use ipnetwork::{IpNetwork, Ipv4Network};
use synwatch_lab::field::TrueState;
use synwatch_lab::field::profiles::Knobs;
use synwatch_lab::runner;

use crate::Arguments;
use crate::udp::{UdpRun, UdpTable, median, run_udp_tool};

/// The tools `lab_bench field-udp` runs by default (`@small`: over nmap's range).
pub const FIELD_UDP_TOOLS: &str = "synwatch,synwatch-connect,masscan,zmap,nmap,synwatch@small";

/// What `lab_bench field-udp` is asked to run.
pub struct FieldUdpTable<'a> {
    /// Profiles, in order.
    pub profiles: &'a [String],
    /// The scanned range.
    pub target: &'a str,
    /// The part of it nmap scans.
    pub nmap_target: &'a str,
    /// UDP ports.
    pub ports: &'a [u16],
    /// Rate of the tools that take one.
    pub rate: u64,
    /// The profiles' seed.
    pub seed: u64,
    /// Tools, in order.
    pub tools: &'a [String],
}

/// Some (address, port)s.
type Endpoints = BTreeSet<(IpAddr, u16)>;

/// The model's (address, port)s of `range` × `ports` in each true state.
struct Truth {
    open: Endpoints,
    closed: Endpoints,
    filtered: Endpoints,
}

fn truth(model: &synwatch_lab::field::FieldModel, range: Ipv4Network, ports: &[u16]) -> Truth {
    let mut truth = Truth { open: BTreeSet::new(), closed: BTreeSet::new(), filtered: BTreeSet::new() };
    for address in IpNetwork::V4(range).iter() {
        for &port in ports {
            match model.udp_truth(address, port, Duration::ZERO) {
                TrueState::Open => truth.open.insert((address, port)),
                TrueState::Closed => truth.closed.insert((address, port)),
                TrueState::Filtered => truth.filtered.insert((address, port)),
                _ => false,
            };
        }
    }
    truth
}

/// Runs the side-by-side table.
pub fn field_udp_table(arguments: &Arguments, table: &FieldUdpTable<'_>) -> Result<()> {
    let target: Ipv4Network = table.target.parse().context("--target is an IPv4 CIDR inside 198.18.0.0/16")?;
    let nmap_target: Ipv4Network = table.nmap_target.parse().context("--nmap-target is an IPv4 CIDR")?;
    let scratch = std::env::temp_dir().join(format!("lab-bench-field-udp-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    println!(
        "{target} (nmap: {nmap_target}) × udp/{:?}, {}/s where a tool takes a rate, medians of {} runs",
        table.ports, table.rate, arguments.runs
    );
    println!();
    println!(
        "| profile | tool | range | probes | wall s | open found | open recall % | false opens | closed found | closed recall % | filtered found | filtered recall % | datagrams sent | CPU s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for name in table.profiles {
        let lab = crate::field::field_lab(name, table.seed, &Knobs::default())?;
        let model = lab.field_model().expect("a field lab").clone();
        let refill = model
            .host_icmp_peer_limit
            .map_or(Duration::ZERO, |limit| Duration::from_secs_f64(limit.burst / limit.per_second.max(1e-3) + 0.5));
        let udp_table = || UdpTable {
            target: table.target,
            nmap_target: Some(table.nmap_target),
            ports: table.ports,
            rate: table.rate,
            loss: 0,
            tools: table.tools,
        };
        for label in table.tools {
            // `TOOL@small`: the tool over nmap's range, for a ratio at equal work.
            let (tool, small) = match label.strip_suffix("@small") {
                Some(tool) => (tool, true),
                None => (label.as_str(), label == "nmap"),
            };
            let program = match tool {
                name if name.starts_with("synwatch") => "sh",
                name => name,
            };
            if !runner::program_installed(program) {
                println!("| {name} | {label} | | not installed | | | | | | | | | | |");
                continue;
            }
            let range = if small { nmap_target } else { target };
            let udp_table = UdpTable { target: if small { table.nmap_target } else { table.target }, ..udp_table() };
            let truth = truth(&model, range, table.ports);
            let probes = u64::from(range.size()) * table.ports.len() as u64;
            let mut runs = Vec::new();
            for _ in 0..arguments.runs {
                // Each host's ICMP bucket refills first (burst / rate seconds), so that a run does
                // not inherit the previous one's spent limit.
                std::thread::sleep(refill);
                let before = lab.field().expect("a responder").simulator().counters().datagrams;
                let run = run_udp_tool(arguments, &lab, tool, &udp_table, &scratch, probes)?;
                let datagrams = lab.field().expect("a responder").simulator().counters().datagrams - before;
                runs.push((run, datagrams));
            }
            let figure = |value: &dyn Fn(&UdpRun) -> f64| median(runs.iter().map(|(run, _)| value(run)).collect());
            let wall = figure(&|run| run.wall.as_secs_f64());
            let cpu = figure(&|run| run.cpu.as_secs_f64());
            let found = figure(&|run| run.open.len() as f64);
            let recall = figure(&|run| {
                run.open.intersection(&truth.open).count() as f64 * 100.0 / truth.open.len().max(1) as f64
            });
            let false_opens = figure(&|run| run.open.difference(&truth.open).count() as f64);
            let datagrams = median(runs.iter().map(|(_, datagrams)| *datagrams as f64).collect());
            // Found and recall of a state only some tools report.
            let reported = |set: fn(&UdpRun) -> &Option<Endpoints>, true_set: &Endpoints| {
                if set(&runs[0].0).is_none() {
                    return ("not reported".to_string(), "—".to_string());
                }
                if true_set.is_empty() {
                    let found = figure(&|run| set(run).as_ref().map_or(0, BTreeSet::len) as f64);
                    return (format!("{found:.0}"), "— (none true)".to_string());
                }
                let found = figure(&|run| set(run).as_ref().map_or(0, BTreeSet::len) as f64);
                let recall = figure(&|run| {
                    let hits = set(run).as_ref().map_or(0, |found| found.intersection(true_set).count());
                    hits as f64 * 100.0 / true_set.len().max(1) as f64
                });
                (format!("{found:.0}"), format!("{recall:.2}"))
            };
            let (closed_found, closed_recall) = reported(|run| &run.closed, &truth.closed);
            let (filtered_found, filtered_recall) = reported(|run| &run.filtered, &truth.filtered);
            println!(
                "| {name} | {label} | {range} | {probes} | {wall:.2} | {found:.0} | {recall:.2} | {false_opens:.0} | {closed_found} | {closed_recall} | {filtered_found} | {filtered_recall} | {datagrams:.0} | {cpu:.2} |"
            );
            eprintln!(
                "    {name}/{label}: {} really open, {} really closed, {} really filtered in {range}",
                truth.open.len(),
                truth.closed.len(),
                truth.filtered.len()
            );
        }
        let counters = lab.field().expect("a responder").simulator().counters();
        eprintln!("{name}: responder {counters:?}");
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
