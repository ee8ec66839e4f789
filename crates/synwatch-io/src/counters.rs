//! Engine-wide counters, all monotonic, and their plain copy for metrics.

use std::sync::atomic::{AtomicU64, Ordering};

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
