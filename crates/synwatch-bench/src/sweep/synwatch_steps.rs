//! The steps of synwatch itself: one engine per mode, `Engine::set_rate` between steps, one scan
//! per repetition, its achieved rate from the first round's send span.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use synwatch_engine::{JobSettings, PortState};
use synwatch_io::{Engine, EngineConfig, JobRequest, Mode};

use super::cpu::scanner_cpu;
use super::error::{Context, SweepError};
use super::{Sweep, SweepOptions, interrupted, report_repetition};
use crate::{Repetition, StepReport, ToolReport};

/// Runs every step of one synwatch mode on one engine.
pub(crate) fn sweep_synwatch(
    options: &SweepOptions,
    sweep: &Sweep,
    mode: Mode,
    in_lab: bool,
) -> Result<ToolReport, SweepError> {
    let config = EngineConfig {
        rate: sweep.rates[0],
        mode,
        sender_threads: options.sender_threads,
        interface: options.interface.clone(),
        transmit: options.transmit,
        // In the lab the bench still needs root afterwards (the other tools, the tear-down).
        drop_privileges: !in_lab,
        ..EngineConfig::default()
    };
    let engine = Engine::start(config).context("starting the engine")?;
    let name = format!("synwatch-{}", engine.mode().name());
    let mut steps = Vec::new();
    for &rate in &sweep.rates {
        engine.set_rate(rate);
        let mut repetitions = Vec::new();
        for number in 1..=options.repetitions {
            let Some(repetition) = synwatch_step(&engine, sweep, number)? else { break };
            let truth = sweep.truth.as_ref().map(HashSet::len);
            report_repetition(&name, rate, number, options.repetitions, &repetition, truth);
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
fn synwatch_step(engine: &Engine, sweep: &Sweep, number: u32) -> Result<Option<Repetition>, SweepError> {
    let settings = JobSettings { seed: sweep.settings.seed.wrapping_add(u64::from(number)), ..sweep.settings };
    let before = engine.counters();
    let cpu_before = scanner_cpu();
    let started = Instant::now();
    let job =
        engine.submit(JobRequest::new(Arc::clone(&sweep.space), settings, None)).context("submitting the scan")?;
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
        if table.get(index) == PortState::Open {
            open_found += 1;
            let (address, port) = sweep.space.probe_at(index).expect("index within the space");
            if sweep.truth.as_ref().is_none_or(|truth| truth.contains(&SocketAddr::new(address, port.number))) {
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
