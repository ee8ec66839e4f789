//! What the exporter's test binaries share: a simulated network that answers every probe at
//! once from a table, the exporter started on it, and readers of the rendered metrics. Each
//! binary uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use synwatch_engine::{FinishReason, PortState, Shard, Suspect};
use synwatch_exporter::{BuildInfo, Exporter, ExporterOptions, RunningScan, ScanOrder, ScanProgress, Scanner};
use synwatch_io::CounterSnapshot;

/// A network where every probe is answered at once from a table (closed when not listed).
#[derive(Default)]
pub struct SimulatedNetwork {
    pub ports: Mutex<HashMap<(IpAddr, u16), PortState>>,
    /// Hosts the engine would judge suspect.
    pub suspects: Mutex<Vec<(IpAddr, Suspect)>>,
    pub scans: AtomicU64,
    /// When set, scans never finish by themselves (only a timeout or cancel ends them).
    pub hang: AtomicBool,
    pub running: AtomicU64,
    pub max_running: AtomicU64,
}

impl SimulatedNetwork {
    pub fn set(&self, address: &str, port: u16, state: PortState) {
        self.ports.lock().insert((address.parse().unwrap(), port), state);
    }
}

pub struct SimulatedScan {
    states: Vec<PortState>,
    suspects: Vec<(IpAddr, Suspect)>,
    network: Arc<SimulatedNetwork>,
    deadline: Instant,
    cancelled: AtomicBool,
    counted: AtomicBool,
}

impl SimulatedScan {
    fn leave(&self) {
        if !self.counted.swap(true, Ordering::SeqCst) {
            self.network.running.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl RunningScan for SimulatedScan {
    fn finished(&self) -> Option<FinishReason> {
        let reason = if self.cancelled.load(Ordering::SeqCst) {
            Some(FinishReason::Cancelled)
        } else if !self.network.hang.load(Ordering::SeqCst) {
            Some(FinishReason::AllAnswered)
        } else if Instant::now() >= self.deadline {
            Some(FinishReason::DeadlineReached)
        } else {
            None
        };
        if reason.is_some() {
            self.leave();
        }
        reason
    }
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
    fn state(&self, index: u64) -> PortState {
        self.states[index as usize]
    }
    fn suspects(&self) -> Vec<(IpAddr, Suspect)> {
        self.suspects.clone()
    }
    fn progress(&self) -> ScanProgress {
        let total = self.states.len() as u64;
        ScanProgress { sent: total, distinct_sent: total, answered: total, round: 0 }
    }
}

pub struct SimulatedScanner(pub Arc<SimulatedNetwork>);

impl Scanner for SimulatedScanner {
    fn start(&self, order: ScanOrder) -> Result<Box<dyn RunningScan>, String> {
        let (space, timeout) = (order.space, order.timeout);
        let network = &self.0;
        network.scans.fetch_add(1, Ordering::SeqCst);
        let running = network.running.fetch_add(1, Ordering::SeqCst) + 1;
        network.max_running.fetch_max(running, Ordering::SeqCst);
        let ports = network.ports.lock();
        let states = (0..space.len())
            .map(|index| {
                let (address, port) = space.probe_at(index).unwrap();
                ports.get(&(address, port.number)).copied().unwrap_or(PortState::Closed)
            })
            .collect();
        Ok(Box::new(SimulatedScan {
            states,
            suspects: network.suspects.lock().clone(),
            network: Arc::clone(network),
            deadline: Instant::now() + timeout,
            cancelled: AtomicBool::new(false),
            counted: AtomicBool::new(false),
        }))
    }
    fn counters(&self) -> CounterSnapshot {
        CounterSnapshot { packets_sent: self.0.scans.load(Ordering::SeqCst), ..CounterSnapshot::default() }
    }
    fn mode_name(&self) -> &'static str {
        "syn"
    }
    fn is_running(&self) -> bool {
        true
    }
    fn set_rate(&self, _rate: u64) {}
}

pub fn scratch(name: &str) -> PathBuf {
    let directory = std::env::temp_dir().join(format!("synwatch-service-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

pub fn start(network: &Arc<SimulatedNetwork>, config_path: &Path, state_dir: Option<&Path>) -> Exporter {
    start_shard(network, config_path, state_dir, Shard::WHOLE)
}

pub fn start_shard(
    network: &Arc<SimulatedNetwork>,
    config_path: &Path,
    state_dir: Option<&Path>,
    shard: Shard,
) -> Exporter {
    let config = synwatch_exporter::load(config_path).unwrap();
    Exporter::start(
        config,
        Arc::new(SimulatedScanner(Arc::clone(network))),
        ExporterOptions {
            config_path: Some(config_path.to_path_buf()),
            state_dir: state_dir.map(Path::to_path_buf),
            build: BuildInfo { version: "test".into(), revision: "test".into() },
            seed: 42,
            tick: Duration::from_millis(5),
            shard,
        },
    )
}

pub fn render(exporter: &Exporter) -> String {
    let mut output = Vec::new();
    exporter.render_metrics(&mut output);
    String::from_utf8(output).unwrap()
}

/// The value of the sample whose name and labels are exactly `series`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub fn series_count(text: &str, prefix: &str) -> usize {
    text.lines().filter(|line| line.starts_with(prefix)).count()
}

/// Waits until `condition` holds (the scheduler runs on its own thread).
pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn successes(exporter: &Exporter, target: &str) -> f64 {
    sample(&render(exporter), &format!("synwatch_scans_total{{result=\"success\",target=\"{target}\"}}")).unwrap_or(0.0)
}

pub fn wait_for_scans(exporter: &Exporter, target: &str, more: f64) {
    let goal = successes(exporter, target) + more;
    wait_for(&format!("{more} more scans of {target}"), || successes(exporter, target) >= goal);
}

/// One reading of the exporter's history (`/api/v1/changes`, `/api/v1/endpoints`), as JSON
/// unless the query asks for CSV.
pub fn read(
    exporter: &Exporter,
    resource: synwatch_http::site::HistoryResource,
    query: &str,
) -> (synwatch_http::site::Reply, Option<String>) {
    exporter.history(&synwatch_http::site::HistoryRequest { resource, query: query.into(), accepts_csv: false })
}

/// A reading of the history that must succeed, as JSON.
pub fn json(exporter: &Exporter, resource: synwatch_http::site::HistoryResource, query: &str) -> serde_json::Value {
    match read(exporter, resource, query).0 {
        synwatch_http::site::Reply::Done(synwatch_http::site::Body::Json(value)) => value,
        other => panic!("{query}: {other:?}"),
    }
}
