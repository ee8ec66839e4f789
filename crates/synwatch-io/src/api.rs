//! The engine's public face: [`Engine::start`] opens the sockets (the only step that needs
//! `CAP_NET_RAW`), drops the privileges and starts the threads; [`Engine::submit`] resolves the
//! path of each address family of a job, builds its [`JobCore`], splits it into lanes (one per
//! sender thread for large jobs, see [`JobCore::into_lanes`]) and hands each lane to a sending
//! thread; it returns a [`JobHandle`].

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};
use synwatch_engine::{CookieKey, JobCore, Port, TargetSpace, TokenBucket, first_probe_of_family};

use crate::config::{EngineConfig, EngineError, Mode, RunningMode};
use crate::connect::{self, ConnectLoop};
use crate::counters::CounterSnapshot;
use crate::job::{Control, JobHandle, JobRequest, JobState, NewJob};
use crate::paths::PathChooser;
use crate::privileges;
use crate::receiver::ReceiverLoop;
use crate::route;
use crate::sender::SenderLoop;
use crate::shared::Shared;
use crate::sockets::RawSockets;

/// A job is split into at most one lane per this many probes (and at most one per sender).
const MIN_PROBES_PER_LANE: u64 = 4096;

/// The running engine. Dropping it stops both threads and cancels all jobs.
pub struct Engine {
    shared: Arc<Shared>,
    config: EngineConfig,
    mode: RunningMode,
    max_inflight: usize,
    /// One control channel per sender thread (or the one connect() thread).
    controls: Vec<Sender<Control>>,
    /// Chooses each job's transmitters (in SYN mode).
    paths: PathChooser,
    threads: Vec<JoinHandle<()>>,
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
        let shared = Arc::new(Shared::new(TokenBucket::new(
            config.rate,
            TokenBucket::default_burst(config.rate, config.batch as u32),
            Duration::ZERO,
        )));
        let mut controls = Vec::new();
        let mut threads = Vec::new();
        let warm_up = match raw_sockets {
            Some(RawSockets { reply_socket, per_thread, warm_up }) => {
                for (number, (transmitters, packet_sockets)) in per_thread.into_iter().enumerate() {
                    let (control, control_receiver) = crossbeam_channel::unbounded();
                    let sender = SenderLoop::new(
                        Arc::clone(&shared),
                        control_receiver,
                        transmitters,
                        packet_sockets,
                        config.batch as u32,
                    );
                    controls.push(control);
                    threads.push(
                        std::thread::Builder::new()
                            .name(format!("synwatch-send-{number}"))
                            .spawn(move || sender.run())?,
                    );
                }
                let receiver = ReceiverLoop::new(Arc::clone(&shared), reply_socket, config.source_ports);
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
        let paths = PathChooser::new(config.transmit, warm_up);
        Ok(Engine { shared, config, mode, max_inflight, controls, paths, threads })
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
        let now = self.shared.now();
        self.shared.bucket.lock().set_rate(rate, TokenBucket::default_burst(rate, self.config.batch as u32), now);
    }

    /// Verifies open endpoints with a real handshake each, on the calling thread, under the
    /// engine's rate cap (see [`crate::verify`]). Only the endpoints given are touched.
    pub fn verify(
        &self,
        endpoints: &[(std::net::IpAddr, u16)],
        options: crate::verify::VerifyOptions,
    ) -> std::io::Result<Vec<crate::verify::Verification>> {
        crate::verify::verify_endpoints(&self.shared, endpoints, options)
    }

    /// A handle that verifies like [`Engine::verify`] from another thread.
    pub fn verifier(&self) -> crate::verify::Verifier {
        crate::verify::Verifier { shared: Arc::clone(&self.shared) }
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
        let mut resolved = Vec::new();
        for (ipv6, present) in [(false, has_v4), (true, has_v6)] {
            if !present {
                continue;
            }
            let (first, _) = lowest_probe(&request.space, ipv6).expect("the family is present");
            let source_override =
                self.config.source_addresses.iter().copied().find(|address| address.is_ipv6() == ipv6);
            let path = route::resolve_path(first, self.config.interface.as_deref(), source_override)?;
            sources[usize::from(ipv6)] = Some(path.source);
            resolved.push((ipv6, first, path));
        }
        let submitted = Instant::now();
        let deadline = request.timeout.map(|timeout| self.shared.now() + timeout);
        let core = JobCore::with_memory(
            Arc::clone(&request.space),
            request.settings,
            cookie_key,
            sources,
            deadline,
            Arc::clone(&self.shared.rtt_memory),
        );
        let core = match &request.payloads {
            Some(payloads) => core.with_payloads(Arc::clone(payloads)),
            None => core,
        };
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
            suspects: Mutex::new(None),
            finished: Condvar::new(),
            priority: request.priority,
            lane_rate: request.rate.map(|rate| (rate / lane_count).max(1)),
            wakers: if self.mode == RunningMode::Syn {
                lane_threads.iter().map(|&thread| self.controls[thread].clone()).collect()
            } else {
                Vec::new()
            },
            woken: AtomicBool::new(false),
            woken_settled: AtomicBool::new(false),
            attempts_in_flight: AtomicUsize::new(0),
        });
        // The job is registered before its routes are chosen: choosing one may send the job's
        // first probe through the kernel (to resolve the next hop), and its reply must find the
        // job, or a target that answers a port only once (a rate-limiting firewall) is lost.
        self.shared.register(&state);
        let mut routes = [None, None];
        let mut paths = Vec::new();
        for (ipv6, first, path) in resolved {
            if self.mode == RunningMode::Connect {
                // The kernel routes connect() calls itself; the path is only reported.
                paths.push((path, "connect"));
                continue;
            }
            // The job's own first probe of the family, should the next hop need resolving.
            let own_first = first_probe_of_family(&request.space, &request.settings, ipv6);
            let (route, kind) = self.paths.choose(&path, first, own_first, core.matcher().cookie_key());
            routes[usize::from(ipv6)] = Some(route);
            paths.push((path, kind));
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
        Ok(JobHandle::new(state, results_receiver, paths))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The lowest probe of a family: the family's lowest address and the lowest port (the path is
/// resolved for it). Ranges are sorted, so this is the first range of the family, not a walk
/// over hosts.
fn lowest_probe(space: &TargetSpace, ipv6: bool) -> Option<(IpAddr, Port)> {
    let range = space.hosts().ranges().iter().find(|range| range.is_ipv6 == ipv6)?;
    Some((range.first_address(), space.ports().port_at(0)?))
}
