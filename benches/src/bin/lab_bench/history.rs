//! `lab_bench history` (issue 23): the exposure history's own costs, no lab and no packets.
//!
//! 1. Fill a database the way the exporter writes it: a /16 target (`inventory`, 65,536
//!    addresses × tcp/22 and tcp/443, every endpoint flipping between open and closed) in scans
//!    of `--per-scan` changes, each with the target's opens at its end, plus a sparse target
//!    (`web`, one change a scan), up to `--changes` changes: time per scan and size per million
//!    changes.
//! 2. While the last scans are written, a reader on its own connection asks for the latest 100
//!    changes in a loop: its latency during writes.
//! 3. The queries of the issue through the store: the latest 100 of a target (dense and
//!    sparse), every change of one address, the first page and the whole of the /16's open
//!    inventory.
//! 4. The same readings through `synwatch serve`'s HTTP API and the status page, serve holding
//!    that database, and its resident memory against serve with an empty history (same config,
//!    same session).
//! 5. Scrapes while the history writes: the exporter in this process on a scanner that sends
//!    nothing and flips every probe of a /16 × 2 ports target each scan; `/metrics` render
//!    times with the history on and off.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use synwatch_history::{
    ChangeQuery, ChangeRow, EndpointQuery, HistoryStore, OpenEndpoint, Proto, ScanOutcome, ScanRow, states,
};

use crate::{Arguments, median, status_kib};

/// Endpoints of the dense target: 65,536 addresses × 2 ports.
const ENDPOINTS: u64 = 65_536 * 2;

fn endpoint(index: u64) -> (IpAddr, u16) {
    let host = (index / 2) as u32;
    let address = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + host);
    (IpAddr::V4(address), if index.is_multiple_of(2) { 22 } else { 443 })
}

/// Milliseconds of `runs` runs of `query`: (median, max).
fn timed<T>(runs: usize, mut query: impl FnMut() -> Result<T>) -> Result<(f64, f64, T)> {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        last = Some(query()?);
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    Ok((median(times), max, last.context("no run")?))
}

pub fn history(arguments: &Arguments, total_changes: u64, per_scan: u64) -> Result<()> {
    let directory = std::env::temp_dir().join(format!("synwatch-history-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    let state_dir = directory.join("state");
    std::fs::create_dir_all(&state_dir)?;
    let path = state_dir.join(synwatch_history::HISTORY_FILE);
    let mut store = HistoryStore::open(&path)?.store;
    let scans = total_changes.div_ceil(per_scan);
    println!(
        "## Writing: {scans} scans of {per_scan} changes (a /16 × 2 ports target, its opens upserted each scan) and 1 change of a sparse target"
    );
    let mut open = vec![false; ENDPOINTS as usize];
    let mut written = 0u64;
    let mut scan_times = Vec::new();
    let reading = Arc::new(AtomicBool::new(false));
    let mut reader: Option<std::thread::JoinHandle<Result<Vec<f64>>>> = None;
    for scan in 0..scans {
        // The last tenth of the scans is written with a reader beside the writer.
        if reader.is_none() && scan >= scans - scans.div_ceil(10) {
            reading.store(true, Ordering::SeqCst);
            let (reading, path) = (Arc::clone(&reading), path.clone());
            reader = Some(std::thread::spawn(move || {
                let store = HistoryStore::open_read_only(&path)?;
                let mut times = Vec::new();
                while reading.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    store.changes(&ChangeQuery {
                        target: Some("inventory".into()),
                        limit: 100,
                        ..Default::default()
                    })?;
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(times)
            }));
        }
        let count = per_scan.min(total_changes - written);
        let mut changes = Vec::with_capacity(count as usize);
        for k in 0..count {
            let index = (written + k) % ENDPOINTS;
            let (address, port) = endpoint(index);
            let was_open = open[index as usize];
            open[index as usize] = !was_open;
            let (old_state, new_state) =
                if was_open { (states::OPEN, states::CLOSED) } else { (states::CLOSED, states::OPEN) };
            changes.push(ChangeRow {
                ip: address,
                proto: Proto::Tcp,
                port,
                old_state,
                new_state,
                reason: None,
                hostname: None,
            });
        }
        let opens: Vec<OpenEndpoint> = (0..ENDPOINTS)
            .filter(|index| open[*index as usize])
            .map(|index| {
                let (address, port) = endpoint(index);
                OpenEndpoint { ip: address, proto: Proto::Tcp, port, state: states::OPEN, reason: None, hostname: None }
            })
            .collect();
        let time = 1_790_000_000.0 + scan as f64 * 60.0;
        let row = |target: &str| ScanRow {
            target: target.into(),
            started: time - 30.0,
            ended: time,
            result: ScanOutcome::Success,
            open: opens.len() as u64,
            closed: ENDPOINTS - opens.len() as u64,
            filtered: 0,
        };
        let started = Instant::now();
        store.record_scan(&row("inventory"), &changes, &opens)?;
        scan_times.push(started.elapsed().as_secs_f64());
        let sparse = ChangeRow {
            ip: IpAddr::V4(Ipv4Addr::new(198, 18, 255, 1)),
            proto: Proto::Tcp,
            port: 8080,
            old_state: if scan.is_multiple_of(2) { states::CLOSED } else { states::OPEN },
            new_state: if scan.is_multiple_of(2) { states::OPEN } else { states::CLOSED },
            reason: None,
            hostname: None,
        };
        store.record_scan(&row("web"), &[sparse], &[])?;
        written += count;
    }
    reading.store(false, Ordering::SeqCst);
    let during = match reader {
        Some(reader) => reader.join().map_err(|_| anyhow::anyhow!("the reader panicked"))??,
        None => Vec::new(),
    };
    let size = store.size_bytes();
    let stored = store.change_count()?;
    let max_scan = scan_times.iter().copied().fold(0.0, f64::max);
    println!("| measure | value |\n|---|---|");
    println!("| changes stored | {stored} |");
    println!(
        "| write of one {per_scan}-change scan (+{} opens upserted), median s | {:.2} |",
        ENDPOINTS / 2,
        median(scan_times.clone())
    );
    println!("| same, max s | {max_scan:.2} |");
    println!("| database + WAL MiB | {:.1} |", size as f64 / f64::from(1 << 20));
    println!("| MiB per million changes | {:.1} |", size as f64 / f64::from(1 << 20) / (stored as f64 / 1e6));
    if !during.is_empty() {
        let max = during.iter().copied().fold(0.0, f64::max);
        println!(
            "| latest 100 during writes ({} reads), median / max ms | {:.2} / {max:.1} |",
            during.len(),
            median(during)
        );
    }
    drop(store);

    println!(
        "\n## Queries through the store over {stored} changes (medians of {} runs, and max)\n",
        arguments.runs.max(5)
    );
    let runs = arguments.runs.max(5);
    let store = HistoryStore::open_read_only(&path)?;
    println!("| query | rows | median ms | max ms |\n|---|---|---|---|");
    let (med, max, rows) = timed(runs, || {
        Ok(store
            .changes(&ChangeQuery { target: Some("inventory".into()), limit: 100, ..Default::default() })?
            .changes
            .len())
    })?;
    println!("| latest 100 of the /16 target | {rows} | {med:.2} | {max:.2} |");
    let (med, max, rows) = timed(runs, || {
        Ok(store.changes(&ChangeQuery { target: Some("web".into()), limit: 100, ..Default::default() })?.changes.len())
    })?;
    println!("| latest 100 of the sparse target | {rows} | {med:.2} | {max:.2} |");
    let one = endpoint(4242).0;
    let (med, max, rows) = timed(runs, || {
        Ok(store.changes(&ChangeQuery { ip: Some(one), limit: 100_000, ..Default::default() })?.changes.len())
    })?;
    println!("| every change of {one} | {rows} | {med:.2} | {max:.2} |");
    let inventory = |limit| EndpointQuery {
        target: Some("inventory".into()),
        state: Some(states::OPEN.into()),
        limit,
        ..Default::default()
    };
    let (med, max, rows) = timed(runs, || Ok(store.endpoints(&inventory(1000))?.endpoints.len()))?;
    println!("| open inventory of the /16, first page | {rows} | {med:.2} | {max:.2} |");
    let (med, max, rows) = timed(runs, || {
        let mut query = inventory(1000);
        let mut rows = 0;
        loop {
            let page = store.endpoints(&query)?;
            rows += page.endpoints.len();
            match page.next_cursor {
                Some(cursor) => query.after = Some(cursor),
                None => return Ok(rows),
            }
        }
    })?;
    println!("| open inventory of the /16, every page of 1000 | {rows} | {med:.2} | {max:.2} |");
    let (med, max, rows) = timed(runs, || Ok(store.endpoints(&inventory(1_000_000))?.endpoints.len()))?;
    println!("| open inventory of the /16, one query | {rows} | {med:.2} | {max:.2} |");
    drop(store);

    serve_readings(arguments, &directory, runs)?;
    scrapes_during_writes(&directory)?;
    std::fs::remove_dir_all(&directory)?;
    Ok(())
}

/// A scanner that sends nothing: every scan of its target answers at once, every probe's state
/// the opposite of the scan before (a /16 × 2 ports: 131,072 changes a scan).
struct FlippingScanner(std::sync::atomic::AtomicU64);

struct FlippedScan {
    flip: u64,
    total: u64,
}

impl synwatch_exporter::RunningScan for FlippedScan {
    fn finished(&self) -> Option<synwatch_engine::FinishReason> {
        Some(synwatch_engine::FinishReason::AllAnswered)
    }
    fn cancel(&self) {}
    fn state(&self, index: u64) -> synwatch_engine::PortState {
        if (index + self.flip).is_multiple_of(2) {
            synwatch_engine::PortState::Open
        } else {
            synwatch_engine::PortState::Closed
        }
    }
    fn progress(&self) -> synwatch_exporter::ScanProgress {
        synwatch_exporter::ScanProgress { sent: self.total, distinct_sent: self.total, answered: self.total, round: 0 }
    }
}

impl synwatch_exporter::Scanner for FlippingScanner {
    fn start(&self, order: synwatch_exporter::ScanOrder) -> Result<Box<dyn synwatch_exporter::RunningScan>, String> {
        Ok(Box::new(FlippedScan { flip: self.0.fetch_add(1, Ordering::SeqCst), total: order.space.len() }))
    }
    fn counters(&self) -> synwatch_io::CounterSnapshot {
        synwatch_io::CounterSnapshot::default()
    }
    fn mode_name(&self) -> &'static str {
        "syn"
    }
    fn is_running(&self) -> bool {
        true
    }
    fn set_rate(&self, _rate: u64) {}
}

/// Step 5: the exporter in this process on the flipping scanner, a /16 × 2 ports target scanned
/// every 5 s, each scan 131,072 changes: `/metrics` renders timed every 10 ms for 30 s, with
/// the history on and (the baseline, same session) off; and how long each scan's history
/// write took after the scan was folded.
fn scrapes_during_writes(directory: &std::path::Path) -> Result<()> {
    println!(
        "\n## Scrapes while the history writes scans of 131,072 changes (in-process exporter, renders every 10 ms for 30 s)\n"
    );
    println!(
        "| history | scans | renders | median ms | p99 ms | max ms | history write after each scan, median s |\n|---|---|---|---|---|---|---|"
    );
    for enabled in [true, false] {
        let config_path = directory.join(format!("flip-{enabled}.yaml"));
        std::fs::write(
            &config_path,
            format!(
                "history: {{enabled: {enabled}}}\ntargets:\n  - name: flip\n    addresses: [198.18.0.0/16]\n    ports: \"22,443\"\n    interval: 5s\n"
            ),
        )?;
        let state_dir = directory.join(format!("flip-state-{enabled}"));
        let exporter = synwatch_exporter::Exporter::start(
            synwatch_exporter::load(&config_path)?,
            Arc::new(FlippingScanner(std::sync::atomic::AtomicU64::new(0))),
            synwatch_exporter::ExporterOptions {
                config_path: Some(config_path.clone()),
                state_dir: Some(state_dir),
                build: synwatch_exporter::BuildInfo { version: "bench".into(), revision: "bench".into() },
                seed: 1,
                tick: Duration::from_millis(50),
                shard: synwatch_engine::Shard::WHOLE,
            },
        );
        let sample = |text: &str, name: &str| -> f64 {
            text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
        };
        let mut renders = Vec::new();
        let mut write_delays = Vec::new();
        let mut last_scans = 0.0;
        let mut folded_at: Option<Instant> = None;
        let mut last_recorded = 0.0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let mut output = Vec::with_capacity(64 << 10);
            let render_started = Instant::now();
            exporter.render_metrics(&mut output);
            renders.push(render_started.elapsed().as_secs_f64() * 1e3);
            let text = String::from_utf8_lossy(&output);
            let scans = sample(&text, "synwatch_scans_total{result=\"success\",target=\"flip\"}");
            let recorded = sample(&text, "synwatch_history_changes_recorded_total");
            if scans > last_scans {
                last_scans = scans;
                folded_at = Some(Instant::now());
            }
            if recorded > last_recorded {
                last_recorded = recorded;
                if let Some(at) = folded_at.take() {
                    write_delays.push(at.elapsed().as_secs_f64());
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        exporter.shutdown(Duration::from_secs(2));
        let count = renders.len();
        let mut sorted = renders.clone();
        sorted.sort_by(f64::total_cmp);
        let p99 = sorted[(count * 99 / 100).min(count - 1)];
        let max = sorted[count - 1];
        let delay = if write_delays.is_empty() { "-".to_string() } else { format!("{:.2}", median(write_delays)) };
        println!(
            "| {} | {last_scans} | {count} | {:.3} | {p99:.3} | {max:.2} | {delay} |",
            if enabled { "on" } else { "off" },
            median(renders)
        );
    }
    Ok(())
}

/// Step 4: `serve` holding the database, then holding an empty one.
fn serve_readings(arguments: &Arguments, directory: &std::path::Path, runs: usize) -> Result<()> {
    // Targets named as in the database; they scan loopback only (connect(), once an hour).
    let config = directory.join("serve.yaml");
    std::fs::write(
        &config,
        "engine: {mode: connect}\ndefaults: {interval: 1h}\ntargets:\n  - name: inventory\n    addresses: [127.0.0.1]\n    ports: \"22,443\"\n\
         \x20 - name: web\n    addresses: [127.0.0.1]\n    ports: \"8080\"\n",
    )?;
    let start = |state_dir: &std::path::Path| -> Result<(std::process::Child, std::net::SocketAddr)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = Command::new(&arguments.synwatch)
            .args(["serve", "--log-level", "warn", "--listen", &address.to_string(), "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(state_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start synwatch serve (build it with cargo build --release)")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = crate::exporter::http_client();
        while crate::exporter::get(&client, address, "/-/ready").ok().map(|(status, _)| status) != Some(200) {
            anyhow::ensure!(Instant::now() < deadline, "serve was not ready in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((child, address))
    };
    let client = crate::exporter::http_client();
    let (mut full, address) = start(&directory.join("state"))?;
    // The first scan (loopback) and the start's reconciling finish first.
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = status_kib(full.id(), "VmRSS")?;
    println!(
        "\n## Through `synwatch serve` holding that database (HTTP on loopback, medians of {runs} runs, and max)\n"
    );
    println!("| reading | bytes | median ms | max ms |\n|---|---|---|---|");
    let one = endpoint(4242).0;
    for path in [
        "/api/v1/changes?target=inventory&limit=100".to_string(),
        "/api/v1/changes?target=web&limit=100".to_string(),
        format!("/api/v1/changes?ip={one}&limit=1000"),
        "/api/v1/endpoints?target=inventory&state=open&limit=1000".to_string(),
        "/api/v1/endpoints?target=inventory&state=open&limit=1000&format=csv".to_string(),
        "/?target=inventory".to_string(),
        "/".to_string(),
        "/metrics".to_string(),
    ] {
        let (med, max, bytes) = timed(runs, || {
            let (status, body) = crate::exporter::get(&client, address, &path)?;
            anyhow::ensure!(status == 200, "{path}: {status}: {body}");
            Ok(body.len())
        })?;
        println!("| `{path}` | {bytes} | {med:.2} | {max:.2} |");
    }
    let rss_after = status_kib(full.id(), "VmRSS")?;
    let peak = status_kib(full.id(), "VmHWM")?;
    full.kill()?;
    full.wait()?;
    let empty_dir = directory.join("empty-state");
    std::fs::create_dir_all(&empty_dir)?;
    let (mut empty, address) = start(&empty_dir)?;
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..runs {
        crate::exporter::get(&client, address, "/api/v1/changes?limit=100")?;
        crate::exporter::get(&client, address, "/")?;
    }
    let empty_rss = status_kib(empty.id(), "VmRSS")?;
    let empty_peak = status_kib(empty.id(), "VmHWM")?;
    empty.kill()?;
    empty.wait()?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("\n| synwatch serve | RSS MiB idle | RSS MiB after the readings | peak MiB |\n|---|---|---|---|");
    println!("| holding the filled history | {:.1} | {:.1} | {:.1} |", mib(rss_idle), mib(rss_after), mib(peak));
    println!("| with an empty history | - | {:.1} | {:.1} |", mib(empty_rss), mib(empty_peak));
    Ok(())
}
