//! How the exporter reaches the engine: the [`Scanner`] and [`RunningScan`] traits, implemented
//! for `synwatch_io::Engine` and its `JobHandle`, and in the tests for a simulated network, so
//! that the exporter is tested without sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::IpAddr;

use parking_lot::Mutex;
use synwatch_engine::{FinishReason, JobSettings, Port, PortState, Suspect, TargetSpace};
use synwatch_io::{
    CounterSnapshot, Engine, JobHandle, JobRequest, PayloadTable, Priority, Verdict, Verifier, VerifyOptions,
};

/// A scan to start.
#[derive(Debug, Clone)]
pub struct ScanOrder {
    /// What to scan.
    pub space: Arc<TargetSpace>,
    /// Retries, waits, seed.
    pub settings: JobSettings,
    /// Cut off after this long.
    pub timeout: Duration,
    /// Interactive (on-demand probes) goes first.
    pub priority: Priority,
    /// The job's own rate cap.
    pub rate: Option<u64>,
    /// Verify the opens of hosts not judged suspect once the job has ended (the scan counts as
    /// running until that is done).
    pub verify: bool,
    /// The UDP payloads (the config's: built-in ones under `engine.udp_payloads`).
    pub payloads: Arc<PayloadTable>,
}

impl ScanOrder {
    /// A background scan without its own rate cap or verification, with the built-in UDP
    /// payloads.
    pub fn background(space: Arc<TargetSpace>, settings: JobSettings, timeout: Duration) -> ScanOrder {
        ScanOrder {
            space,
            settings,
            timeout,
            priority: Priority::Background,
            rate: None,
            verify: false,
            payloads: Arc::new(PayloadTable::built_in()),
        }
    }
}

/// A running scan's progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanProgress {
    /// Probes sent, retries included.
    pub sent: u64,
    /// Probes sent at least once.
    pub distinct_sent: u64,
    /// Probes answered.
    pub answered: u64,
    /// The current round (0 = first pass).
    pub round: u32,
}

/// The engine as the exporter uses it.
pub trait Scanner: Send + Sync {
    /// Starts a scan.
    fn start(&self, order: ScanOrder) -> Result<Box<dyn RunningScan>, String>;
    /// The engine's counters.
    fn counters(&self) -> CounterSnapshot;
    /// `syn` or `connect`.
    fn mode_name(&self) -> &'static str;
    /// Whether the engine's threads are all alive.
    fn is_running(&self) -> bool;
    /// Changes the global rate cap.
    fn set_rate(&self, rate: u64);
}

/// A scan in progress.
pub trait RunningScan: Send {
    /// Why it ended, once it has.
    fn finished(&self) -> Option<FinishReason>;
    /// Asks it to stop.
    fn cancel(&self);
    /// The state of probe `index` (meaningful once finished).
    fn state(&self, index: u64) -> PortState;
    /// Progress so far.
    fn progress(&self) -> ScanProgress;
    /// The hosts judged suspect (meaningful once finished; none by default).
    fn suspects(&self) -> Vec<(IpAddr, Suspect)> {
        Vec::new()
    }
    /// The verdicts of the verification of its opens, when it was asked for (meaningful once
    /// finished; none by default).
    fn verdicts(&self) -> Vec<(IpAddr, Port, Verdict)> {
        Vec::new()
    }
    /// Waits at most `timeout` for the end (the default polls every millisecond).
    fn wait(&self, timeout: Duration) -> Option<FinishReason> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(reason) = self.finished() {
                return Some(reason);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Scanner for Engine {
    fn start(&self, order: ScanOrder) -> Result<Box<dyn RunningScan>, String> {
        let request = JobRequest {
            priority: order.priority,
            rate: order.rate,
            payloads: Some(order.payloads),
            ..JobRequest::new(order.space, order.settings, Some(order.timeout))
        };
        match self.submit(request) {
            Ok(handle) if order.verify => Ok(Box::new(VerifyingScan {
                handle: Arc::new(handle),
                verifier: self.verifier(),
                phase: Arc::new(Mutex::new(VerifyPhase::NotStarted)),
            })),
            Ok(handle) => Ok(Box::new(handle)),
            Err(error) => Err(error.to_string()),
        }
    }
    fn counters(&self) -> CounterSnapshot {
        Engine::counters(self)
    }
    fn mode_name(&self) -> &'static str {
        self.mode().name()
    }
    fn is_running(&self) -> bool {
        Engine::is_running(self)
    }
    fn set_rate(&self, rate: u64) {
        Engine::set_rate(self, rate);
    }
}

impl RunningScan for JobHandle {
    fn finished(&self) -> Option<FinishReason> {
        self.summary().map(|summary| summary.reason)
    }
    fn cancel(&self) {
        JobHandle::cancel(self);
    }
    fn state(&self, index: u64) -> PortState {
        self.table().get(index)
    }
    fn suspects(&self) -> Vec<(IpAddr, Suspect)> {
        JobHandle::suspects(self)
    }
    fn progress(&self) -> ScanProgress {
        let progress = JobHandle::progress(self);
        // Round 0 sends each probe once; a later round means every probe was sent.
        let distinct_sent = if progress.round > 0 { progress.total } else { progress.sent.min(progress.total) };
        ScanProgress { sent: progress.sent, distinct_sent, answered: progress.answered, round: progress.round }
    }
    fn wait(&self, timeout: Duration) -> Option<FinishReason> {
        self.wait_timeout(timeout).map(|summary| summary.reason)
    }
}

/// Where the verification of a finished job stands.
enum VerifyPhase {
    NotStarted,
    Running,
    Done(Vec<(IpAddr, Port, Verdict)>),
}

/// A job whose opens are verified once it has ended, on a thread of their own; the scan is
/// finished only when the verification is.
struct VerifyingScan {
    handle: Arc<JobHandle>,
    verifier: Verifier,
    phase: Arc<Mutex<VerifyPhase>>,
}

impl VerifyingScan {
    /// Verifies the opens of the hosts not judged suspect, and only those.
    fn run(handle: &JobHandle, verifier: &Verifier) -> Vec<(IpAddr, Port, Verdict)> {
        let summary = handle.summary().unwrap_or_else(|| handle.wait());
        let suspects: std::collections::HashSet<IpAddr> =
            handle.suspects().into_iter().map(|(address, _)| address).collect();
        let space = handle.space();
        let table = handle.table();
        // A handshake verifies TCP opens; a UDP open is a service's own answer already.
        let endpoints: Vec<(IpAddr, u16)> = (0..space.len())
            .filter(|&index| table.get(index) == PortState::Open)
            .filter_map(|index| space.probe_at(index))
            .filter(|(address, port)| port.is_tcp() && !suspects.contains(address))
            .map(|(address, port)| (address, port.number))
            .collect();
        let options = VerifyOptions::from_timing(
            summary.timing.last_timeout.map(|(timeout, _)| timeout),
            summary.timing.estimate.map(|estimate| estimate.srtt),
        );
        match verifier.verify(&endpoints, options) {
            Ok(verifications) => verifications
                .into_iter()
                .map(|verification| (verification.address, Port::tcp(verification.port), verification.verdict))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot verify the open ports; they stay open unverified");
                Vec::new()
            }
        }
    }
}

impl RunningScan for VerifyingScan {
    fn finished(&self) -> Option<FinishReason> {
        let reason = RunningScan::finished(&*self.handle)?;
        let mut phase = self.phase.lock();
        match *phase {
            VerifyPhase::Done(_) => return Some(reason),
            VerifyPhase::Running => return None,
            // A scan that did not complete leaves its results unused: nothing to verify.
            VerifyPhase::NotStarted if !matches!(reason, FinishReason::AllAnswered | FinishReason::WaitOver) => {
                *phase = VerifyPhase::Done(Vec::new());
                return Some(reason);
            }
            VerifyPhase::NotStarted => *phase = VerifyPhase::Running,
        }
        let (handle, verifier, shared) = (Arc::clone(&self.handle), self.verifier.clone(), Arc::clone(&self.phase));
        let spawned = std::thread::Builder::new().name("synwatch-verify".into()).spawn(move || {
            let verdicts = VerifyingScan::run(&handle, &verifier);
            *shared.lock() = VerifyPhase::Done(verdicts);
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the verification thread; the opens stay unverified");
            *phase = VerifyPhase::Done(Vec::new());
            return Some(reason);
        }
        None
    }
    fn cancel(&self) {
        self.handle.cancel();
    }
    fn state(&self, index: u64) -> PortState {
        self.handle.table().get(index)
    }
    fn progress(&self) -> ScanProgress {
        RunningScan::progress(&*self.handle)
    }
    fn suspects(&self) -> Vec<(IpAddr, Suspect)> {
        self.handle.suspects()
    }
    fn verdicts(&self) -> Vec<(IpAddr, Port, Verdict)> {
        match &*self.phase.lock() {
            VerifyPhase::Done(verdicts) => verdicts.clone(),
            _ => Vec::new(),
        }
    }
}
