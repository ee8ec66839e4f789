//! The connect() scanner: the engine's fallback when raw sockets are not allowed.
//!
//! One thread runs non-blocking `connect()` calls (socket2) and waits for their outcome with
//! epoll (nix). It drives the same [`Scheduler`] as the SYN sender (permutation, shards, rounds,
//! retries, wait, deadline, cancel, priorities, per-job rates), takes its tokens from the same
//! global bucket and records into the same lock-free state table, so a job's results do not
//! depend on the mode that ran it.
//!
//! * An attempt that connects means open; the socket is closed at once with `SO_LINGER` 0, so
//!   the kernel answers with a RST and no connection lingers in TIME_WAIT on either side.
//! * `ECONNREFUSED` means closed; `EHOSTUNREACH`, `ENETUNREACH` (an ICMP error, or no route) and
//!   `EACCES`/`EPERM` (a local firewall) mean filtered, the reason logged at debug level.
//! * An attempt with no outcome after its timeout (its network group's learned timeout, see
//!   `synwatch_engine::timing`, or a fixed `retry_gap`) is abandoned: the probe stays unknown,
//!   is retried in the next round, and is filtered in the end. A completed attempt's time is a
//!   round-trip sample like a SYN-ACK's.
//! * A job none of whose attempts is open can get no more answers: its learned gap between
//!   rounds and its learned wait end at once (`Scheduler::settle_where`), since a connect()
//!   scan has no late replies to wait for.
//! * A UDP probe is a connected UDP socket carrying the port's payload (the same as raw mode's,
//!   cookie slot included): a datagram back means open, `ECONNREFUSED` (the kernel's report
//!   of an ICMP port unreachable) closed, `EHOSTUNREACH`/`ENETUNREACH`/`EACCES` filtered, and
//!   no answer by the timeout leaves the probe unknown (`open|filtered` in the end). The
//!   kernel only hands a connected socket datagrams from the probed address and port. TFTP is
//!   the exception: its server answers from a new port (RFC 1350 §4), so a udp/69 probe's
//!   socket stays unconnected and takes a datagram from the probed address, whatever its port.
//!   Every UDP probe socket has `IP_RECVERR` (`IPV6_RECVERR`): without it the kernel drops the
//!   ICMP errors it does not deem fatal (net and host unreachable) and reports the others only
//!   on connected sockets.
//! * At most `max_inflight` attempts are open at once. `EMFILE`, `ENFILE`, `ENOBUFS` and
//!   `EADDRNOTAVAIL` (no free descriptor, buffer or local port) keep the probe and pause opening
//!   until an attempt completes: they slow the scan down and never lose a probe.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use synwatch_engine::{Port, PortState, Probe, RecordOutcome, Scheduler};

use crate::job::{Control, JobState, NewJob, ProbeResult};
use crate::shared::{LaneOwner, Shared};

/// The default in-flight limit for a descriptor limit of `nofile`: three quarters of what is
/// left after a margin of 64 descriptors for everything else, between 8 and 16,384.
pub fn default_max_inflight(nofile: u64) -> usize {
    (nofile.saturating_sub(64) * 3 / 4).clamp(8, 16_384) as usize
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit.
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// What an error of `connect()` (immediate or from `SO_ERROR`) says about the port.
fn classify_error(error: &io::Error) -> Outcome {
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => Outcome::Answer(PortState::Closed, "connection refused"),
        Some(libc::EHOSTUNREACH) => Outcome::Answer(PortState::Filtered, "host unreachable"),
        Some(libc::ENETUNREACH) => Outcome::Answer(PortState::Filtered, "network unreachable"),
        Some(libc::EACCES | libc::EPERM) => Outcome::Answer(PortState::Filtered, "refused by a local firewall"),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::EADDRNOTAVAIL | libc::EAGAIN) => Outcome::Pressure,
        _ => Outcome::NoAnswer,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The port's state is known.
    Answer(PortState, &'static str),
    /// In progress: wait for epoll.
    Pending,
    /// No answer from this attempt (timeout or an unexpected error): the probe stays unknown.
    NoAnswer,
    /// Out of descriptors, buffers or ports: keep the probe and try again later.
    Pressure,
}

struct Attempt {
    socket: Socket,
    state: Arc<JobState>,
    index: u64,
    address: IpAddr,
    port: Port,
    started: Duration,
    generation: u64,
}

/// What the connect() thread keeps with each lane of its scheduler.
struct ConnectJob {
    state: Arc<JobState>,
    /// A fixed timeout for every attempt, or `None`: each attempt's group's learned one.
    attempt_timeout: Option<Duration>,
}

impl LaneOwner for ConnectJob {
    fn job(&self) -> &JobState {
        &self.state
    }
}

/// The connect() thread's state.
pub(crate) struct ConnectLoop {
    shared: Arc<Shared>,
    control: Receiver<Control>,
    epoll: Epoll,
    max_inflight: usize,
    batch: u32,
    scheduler: Scheduler<ConnectJob>,
    slots: Vec<Option<Attempt>>,
    free_slots: Vec<usize>,
    inflight: usize,
    /// (deadline, slot, generation), earliest first; stale entries are skipped.
    timeouts: BinaryHeap<Reverse<(Duration, usize, u64)>>,
    next_generation: u64,
    /// Set by descriptor or port exhaustion; cleared when an attempt completes.
    under_pressure: bool,
}

impl ConnectLoop {
    pub(crate) fn new(
        shared: Arc<Shared>,
        control: Receiver<Control>,
        max_inflight: usize,
        batch: u32,
    ) -> io::Result<ConnectLoop> {
        Ok(ConnectLoop {
            shared,
            control,
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?,
            max_inflight: max_inflight.max(1),
            batch,
            scheduler: Scheduler::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            inflight: 0,
            timeouts: BinaryHeap::new(),
            next_generation: 0,
            under_pressure: false,
        })
    }

    pub(crate) fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 1024];
        while !self.shared.stop.load(Ordering::Acquire) {
            while let Ok(message) = self.control.try_recv() {
                self.handle(message);
            }
            let now = self.shared.now();
            self.expire(now);
            self.retire_finished_jobs(now);
            // Pressure is lifted when an attempt completes; with none in flight (descriptors
            // held elsewhere) it is lifted after one idle wait, so opening is retried.
            if self.inflight == 0 {
                self.under_pressure = false;
            }
            if self.scheduler.is_empty() {
                match self.control.recv_timeout(Duration::from_millis(50)) {
                    Ok(message) => self.handle(message),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                continue;
            }
            let room = self.max_inflight.saturating_sub(self.inflight) as u32;
            let want = if self.under_pressure { 0 } else { room.min(self.batch) };
            let tokens = if want > 0 { self.scheduler.grant(now, want, &mut self.shared.bucket.lock()) } else { 0 };
            if tokens > 0 {
                self.fill(now);
            }
            let used = self.shared.end_batch(&mut self.scheduler, now);
            // Wait for outcomes; not at all if there is more to send right away.
            let wait =
                if used > 0 && used == tokens && !self.under_pressure { Duration::ZERO } else { self.idle_wait(now) };
            let ready = self
                .epoll
                .wait(&mut events, EpollTimeout::from(wait.as_millis().min(u128::from(u16::MAX)) as u16))
                .unwrap_or(0);
            let now = self.shared.now();
            for event in &events[..ready] {
                self.complete(event.data() as usize, now);
            }
        }
        self.scheduler.cancel_all();
        let now = self.shared.now();
        self.retire_finished_jobs(now);
    }

    fn handle(&mut self, message: Control) {
        let Control::Add(new_job) = message else {
            return;
        };
        let NewJob { core, state, .. } = *new_job;
        // A fixed retry gap fixes the attempts' timeout too; otherwise each attempt times out
        // after its group's learned timeout.
        let attempt_timeout = state.settings.retry_gap.fixed().map(|gap| gap.max(Duration::from_millis(100)));
        let (priority, rate) = (state.priority, state.lane_rate);
        self.scheduler.add(core, ConnectJob { state, attempt_timeout }, priority, rate, self.shared.now());
    }

    /// How long to sleep in epoll when nothing can be sent now: until an attempt completes
    /// (epoll wakes for that), the next token when a job has a probe ready, a job's next
    /// round, or an attempt's timeout, at most 5 ms.
    fn idle_wait(&self, now: Duration) -> Duration {
        let mut wait = Duration::from_millis(5);
        if let Some(Reverse((deadline, _, _))) = self.timeouts.peek() {
            wait = wait.min(deadline.saturating_sub(now));
        }
        let can_open = !self.under_pressure && self.inflight < self.max_inflight;
        let bucket = &self.shared.bucket;
        if can_open && let Some(timeout) = self.scheduler.poll_timeout(now, || bucket.lock().time_until_token(now)) {
            wait = wait.min(timeout.saturating_sub(now));
        }
        // epoll counts in whole milliseconds: round up so a short wait is not a busy loop.
        wait.max(Duration::from_millis(1))
    }

    /// Starts attempts for the probes the scheduler hands out for its grant, while descriptors
    /// last.
    fn fill(&mut self, now: Duration) {
        while !self.under_pressure && self.inflight < self.max_inflight {
            let Some((lane, probe)) = self.scheduler.poll_transmit(now) else {
                break;
            };
            let job = self.scheduler.owner(lane);
            let state = Arc::clone(&job.state);
            let timeout = job.attempt_timeout.unwrap_or_else(|| state.matcher.timeout_for(probe.address, now));
            if self.start_attempt(state, &probe, now, timeout) == Outcome::Pressure {
                self.scheduler.defer(lane, probe);
                self.under_pressure = true;
                self.shared.counters.send_backpressure.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }

    fn start_attempt(&mut self, state: Arc<JobState>, probe: &Probe, now: Duration, timeout: Duration) -> Outcome {
        let counters = &self.shared.counters;
        let target = SocketAddr::new(probe.address, probe.port.number);
        let (kind, protocol) =
            if probe.port.is_udp() { (Type::DGRAM, Protocol::UDP) } else { (Type::STREAM, Protocol::TCP) };
        let socket = match Socket::new(Domain::for_address(target), kind.nonblocking().cloexec(), Some(protocol)) {
            Ok(socket) => socket,
            Err(error) => {
                let outcome = classify_error(&error);
                if outcome != Outcome::Pressure {
                    counters.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, "cannot create a socket");
                }
                return if outcome == Outcome::Pressure { Outcome::Pressure } else { Outcome::NoAnswer };
            }
        };
        let outcome = if probe.port.is_udp() {
            send_udp_probe(&socket, target, &state, probe)
        } else {
            // With a zero linger time, closing sends a RST: no TIME_WAIT on either side.
            let _ = socket.set_linger(Some(Duration::ZERO));
            match socket.connect(&SockAddr::from(target)) {
                Ok(()) => Outcome::Answer(PortState::Open, "connected"),
                Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => Outcome::Pending,
                Err(error) => classify_error(&error),
            }
        };
        match outcome {
            Outcome::Pressure => return Outcome::Pressure,
            Outcome::Pending => {}
            Outcome::Answer(port_state, reason) => {
                counters.packets_sent.fetch_add(1, Ordering::Relaxed);
                // Decided at once by the local stack: no round trip to learn from.
                record(&self.shared, &state, probe.index, probe.address, probe.port, port_state, reason, None);
                return outcome;
            }
            Outcome::NoAnswer => {
                counters.packets_sent.fetch_add(1, Ordering::Relaxed);
                return outcome;
            }
        }
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        // A TCP connect() finishes writable; a UDP probe's answer or error makes it readable.
        let events = if probe.port.is_udp() { EpollFlags::EPOLLIN } else { EpollFlags::EPOLLOUT };
        if let Err(error) = self.epoll.add(&socket, EpollEvent::new(events, slot as u64)) {
            self.free_slots.push(slot);
            let error = io::Error::from(error);
            let outcome = classify_error(&error);
            if outcome != Outcome::Pressure {
                counters.send_errors.fetch_add(1, Ordering::Relaxed);
            }
            return if outcome == Outcome::Pressure { Outcome::Pressure } else { Outcome::NoAnswer };
        }
        counters.packets_sent.fetch_add(1, Ordering::Relaxed);
        self.next_generation += 1;
        let generation = self.next_generation;
        self.timeouts.push(Reverse((now + timeout, slot, generation)));
        self.slots[slot] = Some(Attempt {
            socket,
            state,
            index: probe.index,
            address: probe.address,
            port: probe.port,
            started: now,
            generation,
        });
        self.inflight += 1;
        if let Some(attempt) = &self.slots[slot] {
            attempt.state.attempts_in_flight.fetch_add(1, Ordering::AcqRel);
        }
        Outcome::Pending
    }

    /// Takes an attempt out of its slot (closing happens when it is dropped).
    fn take_slot(&mut self, slot: usize) -> Option<Attempt> {
        let attempt = self.slots.get_mut(slot)?.take()?;
        attempt.state.attempts_in_flight.fetch_sub(1, Ordering::AcqRel);
        self.free_slots.push(slot);
        self.inflight -= 1;
        self.under_pressure = false;
        Some(attempt)
    }

    /// An epoll event: the connect finished one way or the other.
    fn complete(&mut self, slot: usize, now: Duration) {
        let Some(attempt) = self.take_slot(slot) else {
            return;
        };
        let outcome = match attempt.socket.take_error() {
            Ok(None) if attempt.port.is_udp() => {
                // Readable without an error: a datagram from the probed address (and port, the
                // kernel checked that unless the socket is unconnected).
                let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 64];
                match attempt.socket.recv_from(&mut buffer) {
                    Ok((_, from)) if from.as_socket().is_some_and(|from| from.ip() == attempt.address) => {
                        Outcome::Answer(PortState::Open, "answered")
                    }
                    Ok(_) => Outcome::NoAnswer,
                    Err(error) => classify_error(&error),
                }
            }
            Ok(None) => Outcome::Answer(PortState::Open, "connected"),
            Ok(Some(error)) | Err(error) => classify_error(&error),
        };
        if let Outcome::Answer(port_state, reason) = outcome {
            let rtt = now.saturating_sub(attempt.started);
            record(
                &self.shared,
                &attempt.state,
                attempt.index,
                attempt.address,
                attempt.port,
                port_state,
                reason,
                Some(rtt),
            );
        }
    }

    /// Abandons attempts whose time is up; their probes stay unknown.
    fn expire(&mut self, now: Duration) {
        while let Some(Reverse((deadline, slot, generation))) = self.timeouts.peek().copied() {
            if deadline > now {
                break;
            }
            self.timeouts.pop();
            if self.slots.get(slot).and_then(Option::as_ref).is_some_and(|attempt| attempt.generation == generation) {
                self.take_slot(slot);
            }
        }
    }

    fn retire_finished_jobs(&mut self, now: Duration) {
        self.scheduler.cancel_where(|job| job.state.cancel.load(Ordering::Acquire));
        // A job with no attempt open can get no more answers: its learned gap or wait is over.
        self.scheduler.settle_where(|job| job.state.attempts_in_flight.load(Ordering::Acquire) == 0, now);
        while let Some(finished) = self.scheduler.poll_finished(now) {
            let state = finished.owner.state;
            // Attempts still open for this job are abandoned (their probes stay unknown).
            for slot in 0..self.slots.len() {
                if self.slots[slot].as_ref().is_some_and(|attempt| Arc::ptr_eq(&attempt.state, &state)) {
                    self.take_slot(slot);
                }
            }
            state.publish_progress(finished.progress, now);
            // Results are recorded on this thread, so once the job is out of the list nothing
            // more can arrive for it and it is reported finished at once.
            if let Some(summary) = self.shared.lane_finished(&state, finished.reason) {
                state.report_finished(summary, now);
            }
        }
    }
}

/// Connects a UDP socket to `target` and sends the port's payload with the probe's cookie.
/// `Pending` when sent; an error the local stack reports at once is the port's answer.
fn send_udp_probe(socket: &Socket, target: SocketAddr, state: &JobState, probe: &Probe) -> Outcome {
    let connected = !answers_from_new_port(probe.port);
    // IP_RECVERR on every UDP probe socket: without it Linux reports only the ICMP errors it
    // deems fatal, and drops net and host unreachable (ICMPv4 codes 0 and 1, which routers send
    // for a dead host), which would leave such a port open|filtered instead of filtered.
    let recv_err = if target.is_ipv6() {
        nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::Ipv6RecvErr, &true)
    } else {
        nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::Ipv4RecvErr, &true)
    };
    let prepared = recv_err
        .map_err(io::Error::from)
        .and_then(|()| if connected { socket.connect(&SockAddr::from(target)) } else { Ok(()) });
    if let Err(error) = prepared {
        return classify_error(&error);
    }
    let payload = state.matcher.payloads().for_port(probe.port.number);
    let mut bytes = [0u8; synwatch_wire::payloads::MAX_UDP_PAYLOAD];
    let bytes = &mut bytes[..payload.bytes.len()];
    bytes.copy_from_slice(&payload.bytes);
    payload.write_cookie(bytes, probe.cookie.sequence);
    let sent = if connected { socket.send(bytes) } else { socket.send_to(bytes, &SockAddr::from(target)) };
    match sent {
        Ok(_) => Outcome::Pending,
        Err(error) => classify_error(&error),
    }
}

/// Whether the service of `port` answers from another port (TFTP: RFC 1350 §4).
fn answers_from_new_port(port: Port) -> bool {
    port == Port::udp(69)
}

/// Records an outcome in the job's table and streams it.
#[allow(clippy::too_many_arguments)]
fn record(
    shared: &Shared,
    state: &JobState,
    index: u64,
    address: IpAddr,
    port: Port,
    port_state: PortState,
    reason: &'static str,
    rtt: Option<Duration>,
) {
    let counters = &shared.counters;
    if state.matcher.record(index, address, port_state, rtt) == RecordOutcome::Duplicate {
        counters.replies_duplicate.fetch_add(1, Ordering::Relaxed);
        return;
    }
    state.note_first_answer_round(index, port, port_state);
    if port_state == PortState::Filtered {
        tracing::debug!(%address, %port, reason, "filtered");
    }
    if let Some(rtt) = rtt {
        counters.observe_rtt(state.priority, rtt);
    }
    state.first_answer(counters, ProbeResult { index, address, port, state: port_state, rtt });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_classify_as_the_issue_says() {
        let state = |errno| match classify_error(&io::Error::from_raw_os_error(errno)) {
            Outcome::Answer(state, _) => Some(state),
            _ => None,
        };
        assert_eq!(state(libc::ECONNREFUSED), Some(PortState::Closed));
        for errno in [libc::EHOSTUNREACH, libc::ENETUNREACH, libc::EACCES, libc::EPERM] {
            assert_eq!(state(errno), Some(PortState::Filtered), "errno {errno}");
        }
        assert_eq!(state(libc::ETIMEDOUT), None);
        for errno in [libc::EMFILE, libc::ENFILE, libc::EADDRNOTAVAIL] {
            assert_eq!(classify_error(&io::Error::from_raw_os_error(errno)), Outcome::Pressure);
        }
    }

    #[test]
    fn the_in_flight_limit_leaves_a_margin() {
        assert_eq!(default_max_inflight(256), 144);
        assert_eq!(default_max_inflight(1024), 720);
        assert_eq!(default_max_inflight(10), 8);
        assert_eq!(default_max_inflight(1 << 20), 16_384);
    }
}
