//! Engine-wide counters, all monotonic, and their plain copy for metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use synwatch_engine::Priority;

/// The upper bounds (seconds) of the round-trip histogram's buckets, `+Inf` aside.
pub const RTT_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A histogram of round trips measured from validated replies: per bucket (not cumulative),
/// the count beyond the last bucket, and the sum in microseconds.
#[derive(Debug, Default)]
pub struct RttHistogram {
    buckets: [AtomicU64; RTT_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A plain copy of an [`RttHistogram`]: cumulative counts per bucket of [`RTT_BUCKETS`] and
/// `+Inf` last, and the sum in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RttHistogramSnapshot {
    /// Cumulative counts, `+Inf` last.
    pub cumulative: [u64; RTT_BUCKETS.len() + 1],
    /// The sum of the samples in seconds.
    pub sum_seconds: f64,
}

impl RttHistogram {
    fn observe(&self, rtt: Duration) {
        let seconds = rtt.as_secs_f64();
        let bucket = RTT_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(RTT_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(rtt.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RttHistogramSnapshot {
        let mut snapshot = RttHistogramSnapshot::default();
        let mut total = 0;
        for (bucket, count) in self.buckets.iter().enumerate() {
            total += count.load(Ordering::Relaxed);
            snapshot.cumulative[bucket] = total;
        }
        snapshot.sum_seconds = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        snapshot
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
    /// First valid answers to canary probes (evidence, not results).
    pub replies_canary: AtomicU64,
    /// Packets that passed the kernel filter but failed to parse (counted and dropped).
    pub replies_malformed: AtomicU64,
    /// Replies to a job's target whose cookie did not match (forged, stale, another run).
    pub replies_bad_cookie: AtomicU64,
    /// Replies that belong to no live job (late after the job ended, or not ours).
    pub replies_unmatched: AtomicU64,
    /// Packets the kernel dropped on the reply socket for lack of buffer space.
    pub receive_drops: AtomicU64,
    /// Round trips of the first answers: background jobs' and interactive jobs'.
    pub rtt: [RttHistogram; 2],
}

/// A plain copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[allow(missing_docs)]
pub struct CounterSnapshot {
    pub packets_sent: u64,
    pub send_errors: u64,
    pub send_backpressure: u64,
    pub replies_open: u64,
    pub replies_closed: u64,
    pub replies_filtered: u64,
    pub replies_duplicate: u64,
    pub replies_canary: u64,
    pub replies_malformed: u64,
    pub replies_bad_cookie: u64,
    pub replies_unmatched: u64,
    pub receive_drops: u64,
    /// Round trips of background (`[0]`) and interactive (`[1]`) jobs.
    pub rtt: [RttHistogramSnapshot; 2],
}

impl Counters {
    /// Counts one measured round trip of a job of `priority`.
    pub fn observe_rtt(&self, priority: Priority, rtt: Duration) {
        self.rtt[usize::from(priority == Priority::Interactive)].observe(rtt);
    }

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
            replies_canary: read(&self.replies_canary),
            replies_malformed: read(&self.replies_malformed),
            replies_bad_cookie: read(&self.replies_bad_cookie),
            replies_unmatched: read(&self.replies_unmatched),
            receive_drops: read(&self.receive_drops),
            rtt: [self.rtt[0].snapshot(), self.rtt[1].snapshot()],
        }
    }
}
