//! A SYN sender thread: it asks its [`Scheduler`] for probes, writes them into its
//! transmitters' batches and flushes them. The scheduler decides everything else (which lane,
//! which probe, when; see `synwatch_engine::scheduler`); this loop owns the transmitters, the
//! clock, the global bucket's lock and the finish protocol with the receiver.
//!
//! Each sender thread owns its transmitters (its own raw sockets and TX rings, so the threads
//! share no socket) and its lanes. It takes tokens from the one global bucket (a mutex taken
//! once per batch). Only the owning thread mutates a lane's schedule.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use synwatch_engine::{Priority, Scheduler};
use synwatch_wire::{LinkLayer, SynFields, SynTemplate, UdpFields, UdpTemplate};

use crate::job::{Control, JobState, JobSummary, NewJob};
use crate::paths::{Route, TransmitterKey};
use crate::shared::{LaneOwner, Shared};
use crate::sockets::Transmitters;
use crate::transmit::{Flush, RingTransmitter};

/// What the sender keeps with each lane of its scheduler.
pub(crate) struct ActiveJob {
    state: Arc<JobState>,
    routes: [Option<Route>; 2],
}

/// What became of a probe handed to [`SenderLoop::fill`].
enum Queued {
    /// In a transmitter's batch.
    Yes,
    /// No room in the batch or ring: it goes back to the scheduler.
    NoRoom,
    /// It cannot be sent (no route or transmitter for its family, an unwritable packet).
    NotSent,
}

impl LaneOwner for ActiveJob {
    fn job(&self) -> &JobState {
        &self.state
    }
}

pub(crate) struct SenderLoop {
    shared: Arc<Shared>,
    control: Receiver<Control>,
    transmitters: Transmitters,
    /// Packet sockets opened at start, one per interface, waiting to carry a TX ring.
    packet_sockets: Vec<(u32, OwnedFd)>,
    batch: u32,
    scheduler: Scheduler<ActiveJob>,
    /// Finished jobs waiting for the receiver to move past them: (job, summary, the receiver's
    /// phase when the job left its list, odd).
    finishing: Vec<(Arc<JobState>, JobSummary, u64)>,
}

impl SenderLoop {
    pub(crate) fn new(
        shared: Arc<Shared>,
        control: Receiver<Control>,
        transmitters: Transmitters,
        packet_sockets: Vec<(u32, OwnedFd)>,
        batch: u32,
    ) -> SenderLoop {
        SenderLoop {
            shared,
            control,
            transmitters,
            packet_sockets,
            batch,
            scheduler: Scheduler::new(),
            finishing: Vec::new(),
        }
    }

    pub(crate) fn run(mut self) {
        let mut backoff = Duration::from_micros(20);
        while !self.shared.stop.load(Ordering::Acquire) {
            self.take_control_messages();
            let now = self.shared.now();
            self.retire_finished_jobs(now);
            self.report_finished_jobs();
            if self.scheduler.is_empty() {
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
            let tokens = self.scheduler.grant(now, self.batch, &mut self.shared.bucket.lock());
            if tokens > 0 {
                self.fill(now);
            }
            let used = self.shared.end_batch(&mut self.scheduler, now);
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
                let now = self.shared.now();
                let bucket = &self.shared.bucket;
                let timeout = self.scheduler.poll_timeout(now, || bucket.lock().time_until_token(now)).unwrap_or(now);
                let pause = timeout.saturating_sub(now).min(Duration::from_millis(5));
                if tokens > 0 || pause > Duration::from_micros(60) {
                    // Nothing to send yet (jobs between rounds or waiting): sleep, but wake for
                    // new jobs, and for a job whose last answer arrived, at once.
                    if let Ok(message) = self.control.recv_timeout(pause.max(Duration::from_micros(50))) {
                        self.handle(message);
                    }
                } else {
                    std::thread::yield_now();
                }
            }
        }
        self.scheduler.cancel_all();
        let now = self.shared.now();
        self.retire_finished_jobs(now);
        for (state, summary, _) in self.finishing.drain(..) {
            state.report_finished(summary, now);
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
                    self.open_ring_for(route);
                }
                let (priority, rate): (Priority, _) = (state.priority, state.lane_rate);
                self.scheduler.add(core, ActiveJob { state, routes }, priority, rate, self.shared.now());
            }
        }
    }

    /// Sets up the TX ring a route needs on this thread, the first time; a ring that cannot be
    /// set up turns the route into raw IP and `sendmmsg`.
    fn open_ring_for(&mut self, route: &mut Route) {
        let TransmitterKey::Ring { interface_index } = route.transmitter else {
            return;
        };
        if self.transmitters.contains_key(&route.transmitter) {
            return;
        }
        let opened = match self.packet_sockets.iter().position(|(index, _)| *index == interface_index) {
            Some(position) => {
                let (_, socket) = self.packet_sockets.swap_remove(position);
                RingTransmitter::on_socket(socket, interface_index, 8192)
            }
            None => Err(io::Error::other("the interface appeared after the engine started")),
        };
        match opened {
            Ok(ring) => self.transmitters.insert(route.transmitter, Box::new(ring)),
            Err(error) => {
                tracing::warn!(%error, interface_index, "cannot open a TX ring; using sendmmsg");
                let ipv6 = route.template.is_ipv6();
                route.transmitter = TransmitterKey::Raw { ipv6 };
                route.template =
                    if ipv6 { SynTemplate::ipv6(LinkLayer::None) } else { SynTemplate::ipv4(LinkLayer::None) };
                route.udp_template = UdpTemplate::build(ipv6, LinkLayer::None);
            }
        }
    }

    /// Fills transmitter batches with the probes the scheduler hands out for its grant.
    fn fill(&mut self, now: Duration) {
        let timestamp = now.as_micros() as u32;
        while let Some((lane, probe)) = self.scheduler.poll_transmit(now) {
            let owner = self.scheduler.owner(lane);
            let route = &owner.routes[usize::from(probe.address.is_ipv6())];
            let queued = match route {
                None => Queued::NotSent,
                Some(route) => match self.transmitters.get_mut(&route.transmitter) {
                    None => {
                        self.shared.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                        Queued::NotSent
                    }
                    // Batch or ring full: keep the probe and stop filling; the flush frees space.
                    Some(transmitter) => match transmitter.slot() {
                        None => Queued::NoRoom,
                        Some(slot) => {
                            let written = if probe.port.is_udp() {
                                let fields = UdpFields {
                                    source: probe.source,
                                    destination: probe.address,
                                    source_port: probe.cookie.source_port,
                                    destination_port: probe.port.number,
                                    cookie: probe.cookie.sequence,
                                };
                                let payload = owner.state.matcher.payloads().for_port(probe.port.number);
                                route.udp_template.write(slot, &fields, payload)
                            } else {
                                let fields = SynFields {
                                    source: probe.source,
                                    destination: probe.address,
                                    source_port: probe.cookie.source_port,
                                    destination_port: probe.port.number,
                                    sequence: probe.cookie.sequence,
                                    timestamp_value: timestamp,
                                };
                                route.template.write(slot, &fields)
                            };
                            match written {
                                Ok(len) => {
                                    transmitter.commit(len, probe.address);
                                    Queued::Yes
                                }
                                Err(_) => {
                                    self.shared.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                                    Queued::NotSent
                                }
                            }
                        }
                    },
                },
            };
            match queued {
                Queued::Yes => {}
                Queued::NotSent => self.scheduler.forgo(lane),
                Queued::NoRoom => {
                    self.scheduler.defer(lane, probe);
                    break;
                }
            }
        }
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

    /// Moves lanes that are over (or cancelled) out of the scheduler and, with a job's last
    /// lane, the job out of the receiver's list.
    fn retire_finished_jobs(&mut self, now: Duration) {
        self.scheduler.cancel_where(|job| job.state.cancel.load(Ordering::Acquire));
        while let Some(finished) = self.scheduler.poll_finished(now) {
            let state = finished.owner.state;
            state.publish_progress(finished.progress, now);
            // Only the sender that ends a job's last lane retires the job; it is reported
            // finished once the receiver is past it: at once when the receiver holds no list
            // (even phase), else when the batch in progress is over. The load is SeqCst and
            // after the list was replaced, so a batch that still took the old list has already
            // made the phase odd (see `ReceiverLoop::run`).
            if let Some(summary) = self.shared.lane_finished(&state, finished.reason) {
                let phase = self.shared.receiver_phase.load(Ordering::SeqCst);
                if phase.is_multiple_of(2) {
                    state.report_finished(summary, now);
                } else {
                    self.finishing.push((state, summary, phase));
                }
            }
        }
    }

    /// Reports finished jobs once the receiver batch that was running at their removal is over.
    fn report_finished_jobs(&mut self) {
        let phase = self.shared.receiver_phase.load(Ordering::SeqCst);
        let now = self.shared.now();
        self.finishing.retain(|(state, summary, removed_at)| {
            if phase > *removed_at {
                state.report_finished(*summary, now);
                false
            } else {
                true
            }
        });
    }
}
