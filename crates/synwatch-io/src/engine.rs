//! The long-lived engine: one or more sender threads and one receiver thread serving any number
//! of scan jobs at once under one global rate cap.
//!
//! * [`Engine::start`] opens the sockets (this is the only step that needs `CAP_NET_RAW`) and
//!   starts the threads.
//! * [`Engine::submit`] resolves the path for each address family of a job, builds its
//!   [`JobCore`], splits it into lanes (one per sender thread for large jobs, see
//!   [`JobCore::into_lanes`]) and hands each lane to a sender; it returns a [`JobHandle`] with
//!   the job's own state table, progress, results stream and cancel.
//! * Each sender thread owns its transmitters (its own raw sockets and TX rings, so the threads
//!   share no socket) and its lanes. It takes tokens from the one global [`TokenBucket`] (a
//!   mutex taken once per batch), asks its lanes round-robin for probes, writes them into its
//!   transmitters' batches and flushes them. Only the owning thread mutates a lane's schedule.
//! * The receiver thread reads filtered batches from the reply socket, parses, classifies and
//!   offers each reply to the live jobs' [`ReplyMatcher`]s, which record it lock-free.
//!
//! Architecture invariant: after a job is reported finished, no result for it is produced any
//! more. The sender removes a finished job from the receiver's list and only reports it
//! finished once no receiver batch that could have seen the old list is still being processed
//! (the receiver's phase counter is odd while it holds a list; see [`Shared::receiver_phase`]).
//! An idle receiver therefore costs a finishing job nothing, which keeps small on-demand probes
//! within a millisecond of their last answer.

use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Condvar, Mutex, RwLock};
use synwatch_engine::job::FinishReason;
use synwatch_engine::{
    CookieKey, JobCore, JobSettings, Permutation, PortState, ReplyMatch, ReplyMatcher, SourcePortRange, StateTable,
    TargetSpace, TokenBucket, classify_reply,
};
use synwatch_wire::{LinkLayer, ParseError, SynFields, SynTemplate, parse_reply};

use crate::connect::{self, ConnectLoop};
use crate::lane::{Grant, Lane, next_due_probe, take_tokens};
use crate::privileges;
use crate::receive::ReplySocket;
use crate::route::{self, Path, RouteError};
use crate::transmit::{Flush, RawIpTransmitter, RingTransmitter, Transmit};

/// Which transmitter the engine may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransmitChoice {
    /// The TX ring where the link-layer destination is known, `sendmmsg` otherwise.
    #[default]
    Auto,
    /// Always `sendmmsg` on raw IP sockets.
    Sendmmsg,
    /// The TX ring wherever possible (like `Auto`, but says so in the logs when it cannot).
    Ring,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Global cap in packets per second over all jobs.
    pub rate: u64,
    /// Sender threads, each with its own sockets (default 1). A second thread pays off only
    /// above what one core can send (about a million packets per second).
    pub sender_threads: usize,
    /// SYN, connect(), or decide by trying (default).
    pub mode: Mode,
    /// connect() mode: attempts in flight at most (default: from `RLIMIT_NOFILE`).
    pub max_inflight: Option<usize>,
    /// Drop every capability once the sockets are open (default true). Capabilities are per
    /// thread: this drops them on the calling thread and the engine's threads.
    pub drop_privileges: bool,
    /// Frames per batch (per `sendmmsg` or ring flush).
    pub batch: usize,
    /// The source ports probes use.
    pub source_ports: SourcePortRange,
    /// Send through this interface instead of the routed one.
    pub interface: Option<String>,
    /// Use these source addresses (at most one per family) instead of the routed ones.
    pub source_addresses: Vec<IpAddr>,
    /// Transmitter choice.
    pub transmit: TransmitChoice,
    /// Receive buffer of the reply socket in bytes.
    pub receive_buffer: usize,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            rate: 10_000,
            sender_threads: 1,
            mode: Mode::Auto,
            max_inflight: None,
            drop_privileges: true,
            batch: 256,
            source_ports: SourcePortRange::DEFAULT,
            interface: None,
            source_addresses: Vec::new(),
            transmit: TransmitChoice::Auto,
            receive_buffer: 8 << 20,
        }
    }
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Raw sockets could not be opened for lack of privilege.
    #[error(
        "raw sockets need CAP_NET_RAW ({0}). Either grant it (`sudo setcap cap_net_raw+ep $(command -v synwatch)`, or `AmbientCapabilities=CAP_NET_RAW` in the systemd unit, or run as root), or use the connect() mode (`--mode connect`), which needs no privilege"
    )]
    NoPermission(io::Error),
    /// Any other socket error.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// No path to the targets.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The engine has stopped.
    #[error("the engine has stopped")]
    Stopped,
}

fn socket_error(error: io::Error) -> EngineError {
    if error.kind() == io::ErrorKind::PermissionDenied {
        EngineError::NoPermission(error)
    } else {
        EngineError::Io(error)
    }
}

/// Engine-wide counters, all monotonic.
#[derive(Debug, Default)]
pub struct Counters {
    /// Probes handed to the kernel.
    pub packets_sent: AtomicU64,
    /// Send calls that failed for another reason than backpressure.
    pub send_errors: AtomicU64,
    /// Times the kernel pushed back (ENOBUFS, EAGAIN, full ring); no probe is lost.
    pub send_backpressure: AtomicU64,
    /// First valid answers: open.
    pub replies_open: AtomicU64,
    /// First valid answers: closed.
    pub replies_closed: AtomicU64,
    /// First valid answers: filtered (ICMP).
    pub replies_filtered: AtomicU64,
    /// Valid answers for probes that already had one.
    pub replies_duplicate: AtomicU64,
    /// Packets that passed the kernel filter but failed to parse (counted and dropped).
    pub replies_malformed: AtomicU64,
    /// Replies to a job's target whose cookie did not match (forged, stale, another run).
    pub replies_bad_cookie: AtomicU64,
    /// Replies that belong to no live job (late after the job ended, or not ours).
    pub replies_unmatched: AtomicU64,
    /// Packets the kernel dropped on the reply socket for lack of buffer space.
    pub receive_drops: AtomicU64,
}

/// A plain copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct CounterSnapshot {
    pub packets_sent: u64,
    pub send_errors: u64,
    pub send_backpressure: u64,
    pub replies_open: u64,
    pub replies_closed: u64,
    pub replies_filtered: u64,
    pub replies_duplicate: u64,
    pub replies_malformed: u64,
    pub replies_bad_cookie: u64,
    pub replies_unmatched: u64,
    pub receive_drops: u64,
}

impl Counters {
    /// Reads every counter.
    pub fn snapshot(&self) -> CounterSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CounterSnapshot {
            packets_sent: read(&self.packets_sent),
            send_errors: read(&self.send_errors),
            send_backpressure: read(&self.send_backpressure),
            replies_open: read(&self.replies_open),
            replies_closed: read(&self.replies_closed),
            replies_filtered: read(&self.replies_filtered),
            replies_duplicate: read(&self.replies_duplicate),
            replies_malformed: read(&self.replies_malformed),
            replies_bad_cookie: read(&self.replies_bad_cookie),
            replies_unmatched: read(&self.replies_unmatched),
            receive_drops: read(&self.receive_drops),
        }
    }
}

/// One answer, as streamed to a job's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeResult {
    /// Probe index in the job's space.
    pub index: u64,
    /// Target address.
    pub address: IpAddr,
    /// Target port.
    pub port: u16,
    /// Open, closed or filtered.
    pub state: PortState,
    /// Round-trip time, when the reply echoed our timestamp (SYN-ACKs of most hosts).
    pub rtt: Option<Duration>,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSummary {
    /// Why it ended.
    pub reason: FinishReason,
    /// Probes sent, retries included.
    pub probes_sent: u64,
    /// Time from submission to the end.
    pub duration: Duration,
    /// How fast the first round went out: what the job actually sent at (see [`SendSpan`]).
    pub first_round: SendSpan,
}

/// The probes of a job's first round (every probe once) and the time from the first of them
/// to the last, as the sending threads took them from the schedule. Each batch is stamped when
/// its tokens are taken, so the span misses the last batch's own sending time: with batches of
/// `b` probes the rate is high by at most `b` over the round's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendSpan {
    /// Probes sent in the first round.
    pub probes: u64,
    /// From the first batch to the last batch of the round.
    pub duration: Duration,
}

impl SendSpan {
    /// Probes per second, or `None` when the round was a single batch (no span to divide by).
    pub fn rate(&self) -> Option<f64> {
        (self.probes > 0 && !self.duration.is_zero()).then(|| self.probes as f64 / self.duration.as_secs_f64())
    }
}

/// Whose job it is, for the senders' choice of the next probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// A background scan: takes turns with the other background jobs.
    #[default]
    Background,
    /// Somebody waits for the answer (an on-demand probe): sent before any background probe.
    Interactive,
}

/// A job to run.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// What to scan.
    pub space: Arc<TargetSpace>,
    /// Retries, waits, seed, shard.
    pub settings: JobSettings,
    /// Give up after this long, whatever is left.
    pub timeout: Option<Duration>,
    /// Stream each answer to [`JobHandle::results`].
    pub stream_results: bool,
    /// Interactive jobs go before background ones.
    pub priority: Priority,
    /// The job's own cap in probes per second, under the engine's global one.
    pub rate: Option<u64>,
}

impl JobRequest {
    /// A background job without its own rate cap.
    pub fn new(space: Arc<TargetSpace>, settings: JobSettings, timeout: Option<Duration>) -> JobRequest {
        JobRequest { space, settings, timeout, stream_results: false, priority: Priority::Background, rate: None }
    }
}

/// A job's shared state: what the owner's handle, the sender (or connect) thread and the
/// receiver thread all see.
pub(crate) struct JobState {
    pub(crate) id: u64,
    pub(crate) settings: JobSettings,
    pub(crate) matcher: Arc<ReplyMatcher>,
    pub(crate) shard_size: u64,
    pub(crate) results: Option<Sender<ProbeResult>>,
    pub(crate) cancel: AtomicBool,
    pub(crate) probes_sent: AtomicU64,
    pub(crate) round: AtomicU32,
    /// When the first batch of probes was taken, in nanoseconds since the engine's epoch
    /// (`u64::MAX` until then), the last batch of the first round, and the first round's probes
    /// published so far: [`JobSummary::first_round`].
    pub(crate) first_batch_at: AtomicU64,
    pub(crate) first_round_last_batch_at: AtomicU64,
    pub(crate) first_round_sent: AtomicU64,
    /// Lanes not yet finished; the thread that finishes the last one retires the job.
    pub(crate) lanes_left: AtomicUsize,
    /// The job's end reason so far, combined over its finished lanes.
    pub(crate) reason: Mutex<Option<FinishReason>>,
    pub(crate) submitted: Instant,
    pub(crate) summary: Mutex<Option<JobSummary>>,
    pub(crate) finished: Condvar,
    pub(crate) priority: Priority,
    /// Each lane's share of the job's own rate cap.
    pub(crate) lane_rate: Option<u64>,
    /// The control channels of the sender threads holding the job's lanes: the receiver wakes
    /// them when the last probe is answered, so the job ends at once instead of at the
    /// sender's next poll.
    pub(crate) wakers: Vec<Sender<Control>>,
    pub(crate) woken: AtomicBool,
}

/// The owner's side of a job.
pub struct JobHandle {
    state: Arc<JobState>,
    results: Option<Receiver<ProbeResult>>,
    paths: Vec<(Path, &'static str)>,
}

impl std::fmt::Debug for JobHandle {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("JobHandle").field("id", &self.state.id).finish()
    }
}

/// A job's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Probes sent, retries included.
    pub sent: u64,
    /// Probes answered.
    pub answered: u64,
    /// Probes in the job's shard.
    pub total: u64,
    /// Current round (0 = first pass).
    pub round: u32,
}

impl JobHandle {
    /// The job's engine-wide id.
    pub fn id(&self) -> u64 {
        self.state.id
    }

    /// The paths the job's probes take, with the transmitter used for each.
    pub fn paths(&self) -> &[(Path, &'static str)] {
        &self.paths
    }

    /// Asks the engine to stop the job; it ends with [`FinishReason::Cancelled`].
    pub fn cancel(&self) {
        self.state.cancel.store(true, Ordering::Release);
    }

    /// The job's summary once it has ended.
    pub fn summary(&self) -> Option<JobSummary> {
        *self.state.summary.lock()
    }

    /// Waits for the end of the job.
    pub fn wait(&self) -> JobSummary {
        let mut summary = self.state.summary.lock();
        loop {
            if let Some(summary) = *summary {
                return summary;
            }
            self.state.finished.wait(&mut summary);
        }
    }

    /// Waits at most `timeout` for the end of the job.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<JobSummary> {
        let mut summary = self.state.summary.lock();
        if summary.is_none() {
            self.state.finished.wait_for(&mut summary, timeout);
        }
        *summary
    }

    /// Progress so far.
    pub fn progress(&self) -> Progress {
        Progress {
            sent: self.state.probes_sent.load(Ordering::Relaxed),
            answered: self.state.matcher.table().answered(),
            total: self.state.shard_size,
            round: self.state.round.load(Ordering::Relaxed),
        }
    }

    /// The stream of answers (when requested). It carries each probe's first answer once;
    /// probes that never answered are not in it (they are unknown in the table, reported
    /// filtered). Once [`JobHandle::wait`] returned, everything is in the channel.
    pub fn results(&self) -> Option<&Receiver<ProbeResult>> {
        self.results.as_ref()
    }

    /// The indices of the job's shard that have no answer (after the end: the filtered ones
    /// that never replied), in index order for a whole scan and permutation order for a shard.
    pub fn unanswered(&self) -> Box<dyn Iterator<Item = u64> + '_> {
        let table = self.table();
        let len = self.space().len();
        let shard = self.state.settings.shard;
        if shard.count == 1 {
            return Box::new((0..len).filter(move |&index| table.get(index) == PortState::Unknown));
        }
        let permutation = Permutation::new(len, self.state.settings.seed);
        Box::new(
            (0..shard.size(len))
                .map(move |k| permutation.at(shard.position(k)))
                .filter(move |&index| table.get(index) == PortState::Unknown),
        )
    }

    /// The job's state table.
    pub fn table(&self) -> &StateTable {
        self.state.matcher.table()
    }

    /// The job's target space.
    pub fn space(&self) -> &TargetSpace {
        self.state.matcher.space()
    }
}

/// Per family: the probe template and the transmitter it goes through.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    template: SynTemplate,
    transmitter: TransmitterKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TransmitterKey {
    Raw { ipv6: bool },
    Ring { interface_index: u32 },
}

pub(crate) struct NewJob {
    pub(crate) core: JobCore,
    pub(crate) state: Arc<JobState>,
    pub(crate) routes: [Option<Route>; 2],
}

pub(crate) enum Control {
    Add(Box<NewJob>),
    /// A job of this thread may have ended; look now.
    Wake,
}

/// A job is split into at most one lane per this many probes (and at most one per sender).
const MIN_PROBES_PER_LANE: u64 = 4096;

pub(crate) struct Shared {
    pub(crate) epoch: Instant,
    /// The global rate cap, shared by the sender threads.
    pub(crate) bucket: Mutex<TokenBucket>,
    pub(crate) stop: AtomicBool,
    pub(crate) jobs: RwLock<Arc<Vec<Arc<JobState>>>>,
    /// Odd while the receiver processes a batch against a snapshot of `jobs`, even while it
    /// waits for packets (holding no snapshot). Incremented with `SeqCst` around each batch.
    pub(crate) receiver_phase: AtomicU64,
    pub(crate) counters: Counters,
    pub(crate) next_job_id: AtomicU64,
}

/// The running engine. Dropping it stops both threads and cancels all jobs.
pub struct Engine {
    shared: Arc<Shared>,
    config: EngineConfig,
    mode: RunningMode,
    max_inflight: usize,
    /// One control channel per sender thread (or the one connect() thread).
    controls: Vec<Sender<Control>>,
    /// Raw sockets kept for sending a job's first probe through the kernel, which makes it
    /// resolve the next hop (opened at start, before privileges are dropped).
    warm_up: Mutex<[Option<RawIpTransmitter>; 2]>,
    threads: Vec<JoinHandle<()>>,
}

/// The privileged sockets of the SYN mode, all opened before the privilege drop.
struct RawSockets {
    reply_socket: ReplySocket,
    /// Per sender thread: its raw IP transmitters, and one packet socket per interface a TX
    /// ring may be set up on later.
    per_thread: Vec<(Transmitters, Vec<(u32, OwnedFd)>)>,
    warm_up: [Option<RawIpTransmitter>; 2],
}

impl RawSockets {
    fn open(config: &EngineConfig) -> Result<RawSockets, EngineError> {
        let reply_socket = ReplySocket::open(config.source_ports, 64, config.receive_buffer, Duration::from_millis(20))
            .map_err(socket_error)?;
        let ring_interfaces =
            if config.transmit == TransmitChoice::Sendmmsg { Vec::new() } else { route::ring_capable_interfaces() };
        let mut per_thread = Vec::with_capacity(config.sender_threads);
        for _ in 0..config.sender_threads {
            let mut transmitters = Transmitters::default();
            let raw_v4 = RawIpTransmitter::open(false, config.batch).map_err(socket_error)?;
            transmitters.insert(TransmitterKey::Raw { ipv6: false }, Box::new(raw_v4));
            // IPv6 may be disabled on the host; IPv6 jobs then fail at submission.
            if let Ok(raw_v6) = RawIpTransmitter::open(true, config.batch) {
                transmitters.insert(TransmitterKey::Raw { ipv6: true }, Box::new(raw_v6));
            }
            let mut packet_sockets = Vec::new();
            for &interface_index in &ring_interfaces {
                packet_sockets.push((interface_index, RingTransmitter::open_socket().map_err(socket_error)?));
            }
            per_thread.push((transmitters, packet_sockets));
        }
        let warm_up = [RawIpTransmitter::open(false, 1).ok(), RawIpTransmitter::open(true, 1).ok()];
        Ok(RawSockets { reply_socket, per_thread, warm_up })
    }
}

/// How the engine scans, as asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// SYN scans when the raw sockets can be opened, connect() scans otherwise.
    #[default]
    Auto,
    /// SYN scans only; without `CAP_NET_RAW` the engine does not start.
    Syn,
    /// connect() scans, which need no privilege.
    Connect,
}

/// How the engine actually scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunningMode {
    /// Raw SYN probes.
    Syn,
    /// Non-blocking connect() calls.
    Connect,
}

impl RunningMode {
    /// "syn" or "connect".
    pub fn name(self) -> &'static str {
        match self {
            RunningMode::Syn => "syn",
            RunningMode::Connect => "connect",
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Engine").field("config", &self.config).finish()
    }
}

impl Engine {
    /// Opens the sockets, drops every privilege (when `config.drop_privileges`), and starts the
    /// threads. In [`Mode::Auto`] the mode is decided by trying to open the raw sockets.
    pub fn start(mut config: EngineConfig) -> Result<Engine, EngineError> {
        config.sender_threads = config.sender_threads.max(1);
        let raw_sockets = match config.mode {
            Mode::Connect => None,
            Mode::Syn => Some(RawSockets::open(&config)?),
            Mode::Auto => match RawSockets::open(&config) {
                Ok(sockets) => Some(sockets),
                Err(EngineError::NoPermission(error)) => {
                    tracing::warn!(
                        "no CAP_NET_RAW ({error}): using connect() scans, slower and visible in the targets' logs"
                    );
                    None
                }
                Err(other) => return Err(other),
            },
        };
        let mode = if raw_sockets.is_some() { RunningMode::Syn } else { RunningMode::Connect };
        // The connect() mode opens one descriptor per attempt in flight.
        let max_inflight = match config.max_inflight {
            Some(limit) => limit.max(1),
            None if mode == RunningMode::Connect => connect::default_max_inflight(connect::raise_descriptor_limit()),
            None => 0,
        };
        if config.drop_privileges {
            // Every privileged socket is open; the threads started below begin with nothing.
            let others = privileges::drop_all().map_err(|error| EngineError::Io(io::Error::other(error)))?;
            if others > 0 {
                tracing::debug!(others, "threads started before the engine keep their capabilities");
            }
        }
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            bucket: Mutex::new(TokenBucket::new(
                config.rate,
                TokenBucket::default_burst(config.rate, config.batch as u32),
                Duration::ZERO,
            )),
            stop: AtomicBool::new(false),
            jobs: RwLock::new(Arc::new(Vec::new())),
            receiver_phase: AtomicU64::new(0),
            counters: Counters::default(),
            next_job_id: AtomicU64::new(1),
        });
        let mut controls = Vec::new();
        let mut threads = Vec::new();
        let warm_up = match raw_sockets {
            Some(RawSockets { reply_socket, per_thread, warm_up }) => {
                for (number, (transmitters, packet_sockets)) in per_thread.into_iter().enumerate() {
                    let (control, control_receiver) = crossbeam_channel::unbounded();
                    let sender = SenderLoop {
                        shared: Arc::clone(&shared),
                        control: control_receiver,
                        transmitters,
                        packet_sockets,
                        batch: config.batch as u32,
                        jobs: Vec::new(),
                        finishing: Vec::new(),
                        next_job: 0,
                    };
                    controls.push(control);
                    threads.push(
                        std::thread::Builder::new()
                            .name(format!("synwatch-send-{number}"))
                            .spawn(move || sender.run())?,
                    );
                }
                let receiver =
                    ReceiverLoop { shared: Arc::clone(&shared), socket: reply_socket, ports: config.source_ports };
                threads
                    .push(std::thread::Builder::new().name("synwatch-receive".into()).spawn(move || receiver.run())?);
                warm_up
            }
            None => {
                // One connect() thread per sender thread asked for, sharing the in-flight limit.
                let per_thread = max_inflight.div_ceil(config.sender_threads).max(1);
                for number in 0..config.sender_threads {
                    let (control, control_receiver) = crossbeam_channel::unbounded();
                    let connect_loop =
                        ConnectLoop::new(Arc::clone(&shared), control_receiver, per_thread, config.batch as u32)?;
                    controls.push(control);
                    threads.push(
                        std::thread::Builder::new()
                            .name(format!("synwatch-connect-{number}"))
                            .spawn(move || connect_loop.run())?,
                    );
                }
                Default::default()
            }
        };
        tracing::info!(mode = mode.name(), max_inflight, "engine started");
        Ok(Engine { shared, config, mode, max_inflight, controls, warm_up: Mutex::new(warm_up), threads })
    }

    /// The mode the engine runs in.
    pub fn mode(&self) -> RunningMode {
        self.mode
    }

    /// The connect() mode's limit of attempts in flight (0 in SYN mode).
    pub fn max_inflight(&self) -> usize {
        self.max_inflight
    }

    /// Engine-wide counters.
    pub fn counters(&self) -> CounterSnapshot {
        self.shared.counters.snapshot()
    }

    /// Whether the engine runs: not stopped, and none of its threads has ended.
    pub fn is_running(&self) -> bool {
        !self.shared.stop.load(Ordering::Acquire) && self.threads.iter().all(|thread| !thread.is_finished())
    }

    /// Changes the global rate cap.
    pub fn set_rate(&self, rate: u64) {
        let now = self.shared.epoch.elapsed();
        self.shared.bucket.lock().set_rate(rate, TokenBucket::default_burst(rate, self.config.batch as u32), now);
    }

    /// Jobs currently running.
    pub fn active_jobs(&self) -> usize {
        self.shared.jobs.read().len()
    }

    /// Starts a job.
    pub fn submit(&self, request: JobRequest) -> Result<JobHandle, EngineError> {
        if self.shared.stop.load(Ordering::Acquire) {
            return Err(EngineError::Stopped);
        }
        let mut key = [0u8; 16];
        getrandom::fill(&mut key).map_err(|error| EngineError::Io(io::Error::other(error.to_string())))?;
        let cookie_key = CookieKey::new(key, self.config.source_ports);
        let (has_v4, has_v6) = request.space.hosts().families();
        let mut sources = [None, None];
        let mut routes = [None, None];
        let mut paths = Vec::new();
        for (ipv6, present) in [(false, has_v4), (true, has_v6)] {
            if !present {
                continue;
            }
            let (first, first_port) = first_probe(&request.space, ipv6).expect("the family is present");
            let source_override =
                self.config.source_addresses.iter().copied().find(|address| address.is_ipv6() == ipv6);
            let path = route::resolve_path(first, self.config.interface.as_deref(), source_override)?;
            sources[usize::from(ipv6)] = Some(path.source);
            if self.mode == RunningMode::Connect {
                // The kernel routes connect() calls itself; the path is only reported.
                paths.push((path, "connect"));
                continue;
            }
            let (route, kind) = self.choose_route(&path, (first, first_port), &cookie_key);
            routes[usize::from(ipv6)] = Some(route);
            paths.push((path, kind));
        }
        let submitted = Instant::now();
        let deadline = request.timeout.map(|timeout| self.shared.epoch.elapsed() + timeout);
        let core = JobCore::new(Arc::clone(&request.space), request.settings, cookie_key, sources, deadline);
        let threads = self.controls.len() as u64;
        let lane_count = core.shard_size().div_ceil(MIN_PROBES_PER_LANE).clamp(1, threads);
        // Lanes go to consecutive threads, starting from one that depends on the job, so that
        // many small jobs spread over the threads too.
        let id = self.shared.next_job_id.fetch_add(1, Ordering::Relaxed);
        let first_thread = id % threads;
        let lane_threads: Vec<usize> =
            (0..lane_count).map(|lane_number| ((first_thread + lane_number) % threads) as usize).collect();
        let (results, results_receiver) = if request.stream_results {
            let (sender, receiver) = crossbeam_channel::unbounded();
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        let state = Arc::new(JobState {
            id,
            settings: request.settings,
            matcher: Arc::clone(core.matcher()),
            shard_size: core.shard_size(),
            results,
            cancel: AtomicBool::new(false),
            probes_sent: AtomicU64::new(0),
            round: AtomicU32::new(0),
            first_batch_at: AtomicU64::new(u64::MAX),
            first_round_last_batch_at: AtomicU64::new(0),
            first_round_sent: AtomicU64::new(0),
            lanes_left: AtomicUsize::new(lane_count as usize),
            reason: Mutex::new(None),
            submitted,
            summary: Mutex::new(None),
            finished: Condvar::new(),
            priority: request.priority,
            lane_rate: request.rate.map(|rate| (rate / lane_count).max(1)),
            wakers: if self.mode == RunningMode::Syn {
                lane_threads.iter().map(|&thread| self.controls[thread].clone()).collect()
            } else {
                Vec::new()
            },
            woken: AtomicBool::new(false),
        });
        {
            let mut jobs = self.shared.jobs.write();
            let mut list = Vec::clone(&jobs);
            list.push(Arc::clone(&state));
            *jobs = Arc::new(list);
        }
        if lane_count > 1 {
            tracing::info!(job = state.id, probes = state.shard_size, "split over {lane_count} sender thread(s)");
        } else {
            tracing::debug!(job = state.id, probes = state.shard_size, "split over {lane_count} sender thread(s)");
        }
        for (lane, &thread) in core.into_lanes(lane_count).into_iter().zip(&lane_threads) {
            let new_job = NewJob { core: lane, state: Arc::clone(&state), routes: routes.clone() };
            self.controls[thread].send(Control::Add(Box::new(new_job))).map_err(|_| EngineError::Stopped)?;
        }
        Ok(JobHandle { state, results: results_receiver, paths })
    }

    /// Picks the transmitter and template for a path. The TX ring needs the link-layer
    /// destination, known here for routed IPv4 (the gateway's). When the gateway is not in
    /// the neighbour table, the job's first probe also goes once through the kernel (a raw IP
    /// socket), which makes the kernel resolve the gateway, and the table is read again.
    fn choose_route(&self, path: &Path, first_probe: (IpAddr, u16), cookie_key: &CookieKey) -> (Route, &'static str) {
        let (first, _) = first_probe;
        let ipv6 = first.is_ipv6();
        let raw = |ipv6: bool| {
            (
                Route {
                    template: SynTemplate::for_address(first, LinkLayer::None),
                    transmitter: TransmitterKey::Raw { ipv6 },
                },
                "sendmmsg",
            )
        };
        if self.config.transmit == TransmitChoice::Sendmmsg {
            return raw(ipv6);
        }
        // Loopback always goes through the kernel: an IPv4 packet injected on `lo` by AF_PACKET
        // has no cached route and a loopback source, which the kernel drops as a martian unless
        // route_localnet is set.
        let destination_mac = if path.is_loopback {
            None
        } else {
            match (path.gateway, ipv6) {
                (Some(IpAddr::V4(gateway)), false) => route::ipv4_neighbour(gateway, &path.interface).or_else(|| {
                    warm_up_neighbour(self.warm_up.lock()[0].as_mut(), path, first_probe, cookie_key);
                    (0..50).find_map(|_| {
                        std::thread::sleep(Duration::from_millis(10));
                        route::ipv4_neighbour(gateway, &path.interface)
                    })
                }),
                _ => None,
            }
        };
        match destination_mac {
            Some(destination_mac) => (
                Route {
                    template: SynTemplate::for_address(
                        first,
                        LinkLayer::Ethernet { source_mac: path.source_mac, destination_mac },
                    ),
                    transmitter: TransmitterKey::Ring { interface_index: path.interface_index },
                },
                "tx-ring",
            ),
            None => {
                if self.config.transmit == TransmitChoice::Ring {
                    tracing::warn!(interface = %path.interface, "the TX ring needs a known next hop; using sendmmsg");
                }
                raw(ipv6)
            }
        }
    }
}

/// Sends the job's first probe through the kernel so that it resolves the next hop. It is the
/// same (address, port, cookie) the schedule will send, so it probes nothing the user did not
/// ask for; its reply validates like any other once the job is registered.
fn warm_up_neighbour(
    transmitter: Option<&mut RawIpTransmitter>,
    path: &Path,
    (target, port): (IpAddr, u16),
    cookie_key: &CookieKey,
) {
    let Some(transmitter) = transmitter else {
        return;
    };
    let template = SynTemplate::for_address(target, LinkLayer::None);
    let cookie = cookie_key.cookie(path.source, target, port);
    let fields = SynFields {
        source: path.source,
        destination: target,
        source_port: cookie.source_port,
        destination_port: port,
        sequence: cookie.sequence,
        timestamp_value: 0,
    };
    if let Some(slot) = transmitter.slot()
        && let Ok(len) = template.write(slot, &fields)
    {
        transmitter.commit(len, target);
        let _ = transmitter.flush();
    }
}

/// The first probe of a family: the family's lowest address and the lowest port. Ranges are
/// sorted, so this is the first range of the family, not a walk over hosts.
fn first_probe(space: &TargetSpace, ipv6: bool) -> Option<(IpAddr, u16)> {
    let range = space.hosts().ranges().iter().find(|range| range.is_ipv6 == ipv6)?;
    Some((range.first_address(), space.ports().port_at(0)?))
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The sender's transmitters: a handful at most (raw IPv4, raw IPv6, one ring per interface),
/// so a vector searched linearly is cheaper per probe than hashing the key.
#[derive(Default)]
struct Transmitters(Vec<(TransmitterKey, Box<dyn Transmit>)>);

impl Transmitters {
    fn insert(&mut self, key: TransmitterKey, transmitter: Box<dyn Transmit>) {
        self.0.retain(|(existing, _)| *existing != key);
        self.0.push((key, transmitter));
    }

    fn contains_key(&self, key: &TransmitterKey) -> bool {
        self.0.iter().any(|(existing, _)| existing == key)
    }

    #[inline]
    fn get_mut(&mut self, key: &TransmitterKey) -> Option<&mut Box<dyn Transmit>> {
        self.0.iter_mut().find(|(existing, _)| existing == key).map(|(_, transmitter)| transmitter)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Box<dyn Transmit>> {
        self.0.iter_mut().map(|(_, transmitter)| transmitter)
    }
}

struct ActiveJob {
    lane: Lane,
    routes: [Option<Route>; 2],
}

impl AsMut<Lane> for ActiveJob {
    fn as_mut(&mut self) -> &mut Lane {
        &mut self.lane
    }
}

struct SenderLoop {
    shared: Arc<Shared>,
    control: Receiver<Control>,
    transmitters: Transmitters,
    /// Packet sockets opened at start, one per interface, waiting to carry a TX ring.
    packet_sockets: Vec<(u32, OwnedFd)>,
    batch: u32,
    jobs: Vec<ActiveJob>,
    /// Finished jobs waiting for the receiver to move past them: (job, summary, the receiver's
    /// phase when the job left its list, odd).
    finishing: Vec<(Arc<JobState>, JobSummary, u64)>,
    next_job: usize,
}

impl SenderLoop {
    fn run(mut self) {
        let mut backoff = Duration::from_micros(20);
        while !self.shared.stop.load(Ordering::Acquire) {
            self.take_control_messages();
            let now = self.shared.epoch.elapsed();
            self.retire_finished_jobs(now);
            self.report_finished_jobs();
            if self.jobs.is_empty() {
                // A receiver batch takes microseconds; poll often while one is awaited.
                let wait =
                    if self.finishing.is_empty() { Duration::from_millis(50) } else { Duration::from_micros(100) };
                match self.control.recv_timeout(wait) {
                    Ok(message) => self.handle(message),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                continue;
            }
            let grant = take_tokens(&mut self.jobs, &self.shared.bucket, now, self.batch);
            let tokens = grant.tokens;
            let used = if tokens > 0 { self.fill(now, grant) } else { 0 };
            if tokens > used {
                self.shared.bucket.lock().give_back(tokens - used);
            }
            for job in &mut self.jobs {
                job.lane.publish_progress(now);
            }
            match self.flush_all() {
                true => backoff = Duration::from_micros(20),
                false => {
                    // Backpressure: the kernel's queue is full. Pause and retry; the bucket keeps
                    // at most one burst meanwhile, so this slows the scan instead of losing probes.
                    self.shared.counters.send_backpressure.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(2));
                    continue;
                }
            }
            if used == 0 {
                let now = self.shared.epoch.elapsed();
                let until_token = self.shared.bucket.lock().time_until_token(now);
                let earliest_job = self.jobs.iter().map(|job| job.lane.wake_at).min().unwrap_or(now);
                let pause = until_token.max(earliest_job.saturating_sub(now)).min(Duration::from_millis(5));
                if tokens > 0 || pause > Duration::from_micros(60) {
                    // Nothing to send yet (jobs between rounds or waiting): sleep, but wake for
                    // new jobs at once.
                    if let Ok(message) = self.control.recv_timeout(pause.max(Duration::from_micros(50))) {
                        self.handle(message);
                    }
                } else {
                    std::thread::yield_now();
                }
            }
        }
        for job in &mut self.jobs {
            job.lane.core.cancel();
        }
        let now = self.shared.epoch.elapsed();
        self.retire_finished_jobs(now);
        for (state, summary, _) in self.finishing.drain(..) {
            finish(&state, summary);
        }
    }

    fn take_control_messages(&mut self) {
        while let Ok(message) = self.control.try_recv() {
            self.handle(message);
        }
    }

    fn handle(&mut self, message: Control) {
        match message {
            Control::Wake => {}
            Control::Add(new_job) => {
                let NewJob { core, state, mut routes } = *new_job;
                for route in routes.iter_mut().flatten() {
                    if let TransmitterKey::Ring { interface_index } = route.transmitter
                        && !self.transmitters.contains_key(&route.transmitter)
                    {
                        let opened = match self.packet_sockets.iter().position(|(index, _)| *index == interface_index) {
                            Some(position) => {
                                let (_, socket) = self.packet_sockets.swap_remove(position);
                                RingTransmitter::on_socket(socket, interface_index, 8192)
                            }
                            None => Err(io::Error::other("the interface appeared after the engine started")),
                        };
                        match opened {
                            Ok(ring) => {
                                self.transmitters.insert(route.transmitter, Box::new(ring));
                            }
                            Err(error) => {
                                tracing::warn!(%error, interface_index, "cannot open a TX ring; using sendmmsg");
                                let ipv6 = route.template.is_ipv6();
                                route.transmitter = TransmitterKey::Raw { ipv6 };
                                route.template = if ipv6 {
                                    SynTemplate::ipv6(LinkLayer::None)
                                } else {
                                    SynTemplate::ipv4(LinkLayer::None)
                                };
                            }
                        }
                    }
                }
                let now = self.shared.epoch.elapsed();
                self.jobs.push(ActiveJob { lane: Lane::new(core, state, now), routes });
            }
        }
    }

    /// Fills transmitter batches with up to `tokens` probes, round-robin over jobs. Returns how
    /// many probes were queued.
    fn fill(&mut self, now: Duration, grant: Grant) -> u32 {
        let timestamp = now.as_micros() as u32;
        let mut used = 0;
        while used < grant.tokens {
            let Some((position, probe)) =
                next_due_probe(&mut self.jobs, &mut self.next_job, now, grant.interactive_only)
            else {
                break;
            };
            let job = &mut self.jobs[position];
            let Some(route) = &job.routes[usize::from(probe.address.is_ipv6())] else {
                continue;
            };
            let Some(transmitter) = self.transmitters.get_mut(&route.transmitter) else {
                self.shared.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let Some(slot) = transmitter.slot() else {
                // Batch or ring full: keep the probe and stop filling; the flush frees space.
                job.lane.carried = Some(probe);
                break;
            };
            let fields = SynFields {
                source: probe.source,
                destination: probe.address,
                source_port: probe.cookie.source_port,
                destination_port: probe.port,
                sequence: probe.cookie.sequence,
                timestamp_value: timestamp,
            };
            match route.template.write(slot, &fields) {
                Ok(len) => {
                    transmitter.commit(len, probe.address);
                    used += 1;
                    job.lane.unpublished_sent += 1;
                }
                Err(_) => {
                    self.shared.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        used
    }

    /// Flushes every transmitter; false on backpressure (something is still queued).
    fn flush_all(&mut self) -> bool {
        let mut clear = true;
        for transmitter in self.transmitters.values_mut() {
            if transmitter.pending() == 0 {
                continue;
            }
            match transmitter.flush() {
                Ok(Flush::Done { sent }) => {
                    self.shared.counters.packets_sent.fetch_add(sent as u64, Ordering::Relaxed);
                }
                Ok(Flush::Backpressure { sent }) => {
                    self.shared.counters.packets_sent.fetch_add(sent as u64, Ordering::Relaxed);
                    clear = false;
                }
                Err(error) => {
                    self.shared.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, kind = transmitter.kind(), "send failed");
                }
            }
        }
        clear
    }

    /// Moves jobs that are over (or cancelled) out of the schedule and the receiver's list.
    fn retire_finished_jobs(&mut self, now: Duration) {
        let mut index = 0;
        while index < self.jobs.len() {
            match self.jobs[index].lane.check_over(now) {
                Some(reason) => {
                    let mut lane = self.jobs.swap_remove(index).lane;
                    lane.publish_progress(now);
                    // Only the sender that ends a job's last lane retires the job; it is reported
                    // finished once the receiver is past it: at once when the receiver holds no
                    // list (even phase), else when the batch in progress is over. The load is
                    // SeqCst and after the list was replaced, so a batch that still took the
                    // old list has already made the phase odd (see `ReceiverLoop::run`).
                    if let Some(summary) = lane_finished(&self.shared, &lane.state, reason) {
                        let phase = self.shared.receiver_phase.load(Ordering::SeqCst);
                        if phase.is_multiple_of(2) {
                            finish(&lane.state, summary);
                        } else {
                            self.finishing.push((lane.state, summary, phase));
                        }
                    }
                }
                None => index += 1,
            }
        }
    }

    /// Reports finished jobs once the receiver batch that was running at their removal is over.
    fn report_finished_jobs(&mut self) {
        let phase = self.shared.receiver_phase.load(Ordering::SeqCst);
        self.finishing.retain(|(state, summary, removed_at)| {
            if phase > *removed_at {
                finish(state, *summary);
                false
            } else {
                true
            }
        });
    }
}

/// Records that one lane of a job ended for `reason`. When it was the job's last lane, removes
/// the job from the receiver's list and returns the job's summary (the caller reports it).
pub(crate) fn lane_finished(shared: &Shared, state: &Arc<JobState>, reason: FinishReason) -> Option<JobSummary> {
    let reason = {
        let mut combined = state.reason.lock();
        let reason = combine_reasons(*combined, reason);
        *combined = Some(reason);
        reason
    };
    if state.lanes_left.fetch_sub(1, Ordering::AcqRel) != 1 {
        return None;
    }
    {
        let mut jobs = shared.jobs.write();
        let list: Vec<Arc<JobState>> = jobs.iter().filter(|job| !Arc::ptr_eq(job, state)).cloned().collect();
        *jobs = Arc::new(list);
    }
    let (first, last) =
        (state.first_batch_at.load(Ordering::Relaxed), state.first_round_last_batch_at.load(Ordering::Relaxed));
    Some(JobSummary {
        reason,
        probes_sent: state.probes_sent.load(Ordering::Relaxed),
        duration: state.submitted.elapsed(),
        first_round: SendSpan {
            probes: state.first_round_sent.load(Ordering::Relaxed),
            duration: Duration::from_nanos(last.saturating_sub(first)),
        },
    })
}

/// A job's end reason from its lanes' reasons: the most telling one wins (cancelled, then
/// deadline, then a wait that ran out; "all answered" only if every lane says so).
fn combine_reasons(so_far: Option<FinishReason>, lane: FinishReason) -> FinishReason {
    let rank = |reason: FinishReason| match reason {
        FinishReason::AllAnswered => 0,
        FinishReason::WaitOver => 1,
        FinishReason::DeadlineReached => 2,
        FinishReason::Cancelled => 3,
    };
    match so_far {
        Some(previous) if rank(previous) >= rank(lane) => previous,
        _ => lane,
    }
}

pub(crate) fn finish(state: &JobState, summary: JobSummary) {
    *state.summary.lock() = Some(summary);
    state.finished.notify_all();
}

struct ReceiverLoop {
    shared: Arc<Shared>,
    socket: ReplySocket,
    ports: SourcePortRange,
}

impl ReceiverLoop {
    fn run(mut self) {
        let mut last_drop_read = Instant::now();
        while !self.shared.stop.load(Ordering::Acquire) {
            let counters = &self.shared.counters;
            let received = self.socket.receive();
            // Odd phase: from here until the snapshot is dropped, this batch may hold a job the
            // senders have removed; they wait for the phase to move on before reporting it.
            self.shared.receiver_phase.fetch_add(1, Ordering::SeqCst);
            // The job list and the clock are read after the (blocking) receive: a job submitted
            // while we waited must see its replies, and round-trip times must not be negative.
            let jobs = Arc::clone(&self.shared.jobs.read());
            let now_micros = self.shared.epoch.elapsed().as_micros() as u32;
            match received {
                Ok(_) => {
                    for packet in self.socket.packets() {
                        handle_packet(packet, &jobs, self.ports, counters, now_micros);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "receive failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            drop(jobs);
            self.shared.receiver_phase.fetch_add(1, Ordering::SeqCst);
            if last_drop_read.elapsed() >= Duration::from_millis(100) {
                if let Ok(drops) = self.socket.take_drops() {
                    counters.receive_drops.fetch_add(drops, Ordering::Relaxed);
                }
                last_drop_read = Instant::now();
            }
        }
    }
}

/// Parses, classifies and records one packet.
fn handle_packet(packet: &[u8], jobs: &[Arc<JobState>], ports: SourcePortRange, counters: &Counters, now_micros: u32) {
    let reply = match parse_reply(packet) {
        Ok(reply) => reply,
        Err(ParseError::NotRelevant) => return,
        Err(_) => {
            counters.replies_malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let Some(classified) = classify_reply(&reply, ports) else {
        return;
    };
    let mut bad_cookie = false;
    for job in jobs {
        match job.matcher.offer(&classified) {
            ReplyMatch::NotInJob => {}
            ReplyMatch::BadCookie => bad_cookie = true,
            ReplyMatch::Matched { index, outcome } => {
                if outcome == synwatch_engine::RecordOutcome::Duplicate {
                    counters.replies_duplicate.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let counter = match classified.state {
                    PortState::Open => &counters.replies_open,
                    PortState::Closed => &counters.replies_closed,
                    _ => &counters.replies_filtered,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if job.matcher.table().answered() >= job.shard_size && !job.woken.swap(true, Ordering::AcqRel) {
                    for waker in &job.wakers {
                        let _ = waker.try_send(Control::Wake);
                    }
                }
                if let Some(results) = &job.results {
                    let rtt = classified
                        .timestamp_echo
                        .map(|echo| now_micros.wrapping_sub(echo))
                        .filter(|&micros| micros < 60_000_000);
                    let _ = results.send(ProbeResult {
                        index,
                        address: classified.remote,
                        port: classified.remote_port,
                        state: classified.state,
                        rtt: rtt.map(|micros| Duration::from_micros(u64::from(micros))),
                    });
                }
                return;
            }
        }
    }
    let counter = if bad_cookie { &counters.replies_bad_cookie } else { &counters.replies_unmatched };
    counter.fetch_add(1, Ordering::Relaxed);
}
