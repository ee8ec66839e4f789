//! The receiver thread: reads filtered batches from the reply socket, parses, classifies and
//! offers each reply to the live jobs' [`synwatch_engine::ReplyMatcher`]s, which record it
//! lock-free. A malformed packet is counted and dropped.
//!
//! Architecture invariant: after a job is reported finished, no result for it is produced any
//! more. The sender removes a finished job from the receiver's list and only reports it
//! finished once no receiver batch that could have seen the old list is still being processed
//! (the receiver's phase counter is odd while it holds a list; see `Shared::receiver_phase`).
//! An idle receiver therefore costs a finishing job nothing, which keeps small on-demand probes
//! within a millisecond of their last answer.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use synwatch_engine::{RecordOutcome, ReplyMatch, SourcePortRange, classify_reply};
use synwatch_wire::{ParseError, parse_reply};

use crate::counters::Counters;
use crate::job::{JobState, ProbeResult};
use crate::receive::ReplySocket;
use crate::shared::Shared;

pub(crate) struct ReceiverLoop {
    shared: Arc<Shared>,
    socket: ReplySocket,
    ports: SourcePortRange,
}

impl ReceiverLoop {
    pub(crate) fn new(shared: Arc<Shared>, socket: ReplySocket, ports: SourcePortRange) -> ReceiverLoop {
        ReceiverLoop { shared, socket, ports }
    }

    pub(crate) fn run(mut self) {
        let mut last_drop_read = Instant::now();
        // Round-trip samples of the batch, per job of the snapshot.
        let mut samples: Vec<Vec<(IpAddr, Duration)>> = Vec::new();
        while !self.shared.stop.load(Ordering::Acquire) {
            let counters = &self.shared.counters;
            let received = self.socket.receive();
            // Odd phase: from here until the snapshot is dropped, this batch may hold a job the
            // senders have removed; they wait for the phase to move on before reporting it.
            self.shared.receiver_phase.fetch_add(1, Ordering::SeqCst);
            // The job list and the clock are read after the (blocking) receive: a job submitted
            // while we waited must see its replies, and round-trip times must not be negative.
            let jobs = Arc::clone(&self.shared.jobs.read());
            let now = self.shared.now();
            samples.resize_with(jobs.len(), Vec::new);
            match received {
                Ok(_) => {
                    for packet in self.socket.packets() {
                        handle_packet(packet, &jobs, self.ports, counters, now, &mut samples);
                    }
                    // One lock per job and batch, not per packet.
                    for (job, job_samples) in jobs.iter().zip(samples.iter_mut()) {
                        job.matcher.take_samples(job_samples);
                        job_samples.clear();
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
fn handle_packet(
    packet: &[u8],
    jobs: &[Arc<JobState>],
    ports: SourcePortRange,
    counters: &Counters,
    now: Duration,
    samples: &mut [Vec<(IpAddr, Duration)>],
) {
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
    for (job, job_samples) in jobs.iter().zip(samples.iter_mut()) {
        match job.matcher.offer(&classified, now) {
            ReplyMatch::NotInJob => {}
            ReplyMatch::BadCookie => bad_cookie = true,
            ReplyMatch::Matched { index, outcome, rtt } => {
                if outcome == RecordOutcome::Duplicate {
                    counters.replies_duplicate.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if let Some(rtt) = rtt {
                    counters.observe_rtt(job.priority, rtt);
                    job_samples.push((classified.remote, rtt));
                }
                job.note_first_answer_round(index, classified.remote_port, classified.state);
                // The stream reports the echoed timestamp's round trip only, as before: it is
                // exact to the microsecond, the sequence's stamp to the millisecond.
                let rtt = classified.timestamp_echo.and(rtt);
                job.first_answer(
                    counters,
                    ProbeResult {
                        index,
                        address: classified.remote,
                        // The probed port: a TFTP answer comes from another port than it (only
                        // UDP looks it up, off the path of SYN-ACKs and RSTs).
                        port: if classified.remote_port.is_udp() {
                            job.matcher.space().probe_at(index).map_or(classified.remote_port, |(_, port)| port)
                        } else {
                            classified.remote_port
                        },
                        state: classified.state,
                        rtt,
                    },
                );
                return;
            }
        }
    }
    let counter = if bad_cookie { &counters.replies_bad_cookie } else { &counters.replies_unmatched };
    counter.fetch_add(1, Ordering::Relaxed);
}
