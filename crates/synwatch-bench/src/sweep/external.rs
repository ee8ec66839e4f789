//! The steps of the compared programs (masscan, zmap, nmap): each runs inside the lab's scanner
//! namespace with the command line of [`crate::tools`], its CPU time from `wait4`, its achieved
//! rate from the lab link's counters.

use std::collections::HashSet;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use synwatch_lab::Lab;
use synwatch_lab::runner::{self, ChildEnd};

use super::error::{Context, SweepError, failed};
use super::{SweepOptions, interrupted, progress, report_repetition};
use crate::tools::{self, ExternalTool, ToolScan, ZmapPorts};
use crate::{LabPlan, Repetition, StepReport, ToolReport};

/// zmap 2.1.1 (Debian's) sometimes aborts at start on small target sets with this assertion: a
/// send shard rolls past its end (fixed upstream in zmap pull request 786, not in the package).
/// The run sent next to nothing, so it is run again, at most [`ZMAP_ATTEMPTS`] times in all.
const ZMAP_SPORADIC_ABORT: &str = "constraint_lookup_index";

/// How many times one zmap command is started when it aborts with [`ZMAP_SPORADIC_ABORT`].
const ZMAP_ATTEMPTS: u32 = 3;

/// Waits for a compared program: past its deadline (or once the sweep is interrupted) the lab
/// nudges the scanner, then SIGINT and SIGKILL follow ([`runner::wait_child_until`]).
fn wait_child(pid: libc::pid_t, deadline: Instant, nudge: &dyn Fn()) -> Result<ChildEnd, SweepError> {
    runner::wait_child_until(pid, deadline, nudge, &interrupted).context("wait4")
}

/// Runs every step of one compared program.
pub(crate) fn sweep_tool(
    options: &SweepOptions,
    lab: &Lab,
    plan: &LabPlan,
    truth: &HashSet<SocketAddr>,
    tool: ExternalTool,
    scratch: &Path,
    rates: &[u64],
) -> Result<ToolReport, SweepError> {
    let target = match plan.target_ranges()[0] {
        IpNetwork::V4(network) => network,
        IpNetwork::V6(_) => return Err(failed("--compare needs the lab's IPv4 targets")),
    };
    let gateway_mac = lab.gateway_mac().context("the lab's gateway address")?;
    let mut steps = Vec::new();
    for &rate in rates {
        let mut repetitions = Vec::new();
        for number in 1..=options.repetitions {
            let scan = ToolScan {
                target,
                ports: plan.ports.clone(),
                rate,
                retries: options.settings.retries,
                wait_seconds: options.settings.wait.fixed().map_or(1.0, |wait| wait.as_secs_f64()).ceil().max(1.0)
                    as u64,
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
            report_repetition(tool.name(), rate, number, options.repetitions, &repetition, Some(truth.len()));
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
) -> Result<Option<Repetition>, SweepError> {
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
        let mut attempt = 1;
        let (ended, link, started, syns_before) = loop {
            let syns_before = lab.syns_received().context("counting the SYNs the lab received")?;
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
            let (ended, link) = lab.sample_link(|| -> Result<ChildEnd, SweepError> {
                let mut child = lab
                    .scanner_command(&command.argv[0])
                    .args(&command.argv[1..])
                    // masscan writes `paused.conf` into its working directory when stopped.
                    .current_dir(scratch)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(fs::File::create(&stderr_path).context(format!("creating {}", stderr_path.display()))?)
                    .spawn()
                    .context(format!("starting {}", command.argv[0]))?;
                let ended = wait_child(child.id() as libc::pid_t, deadline, &|| lab.nudge_scanner())?;
                // The child is reaped by wait4; `Child` must not wait for it again.
                let _ = child.try_wait();
                if ended.status != 0 && !ended.stopped {
                    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
                    return Err(failed(format!(
                        "{} exited with status {}: {}",
                        command.argv.join(" "),
                        ended.status,
                        stderr.trim()
                    )));
                }
                Ok(ended)
            });
            match ended {
                Err(SweepError::Failed(message))
                    if tool == ExternalTool::Zmap
                        && message.contains(ZMAP_SPORADIC_ABORT)
                        && attempt < ZMAP_ATTEMPTS
                        && !interrupted() =>
                {
                    progress(&format!(
                        "zmap aborted with its known sporadic assertion (attempt {attempt} of {ZMAP_ATTEMPTS}): run again"
                    ));
                    attempt += 1;
                }
                ended => break (ended?, link, started, syns_before),
            }
        };
        if interrupted() {
            return Ok(None);
        }
        repetition.stopped |= ended.stopped;
        repetition.wall_seconds += started.elapsed().as_secs_f64();
        repetition.cpu_seconds += ended.cpu.as_secs_f64();
        syns += lab.syns_received().context("counting the SYNs the lab received")?.saturating_sub(syns_before);
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
