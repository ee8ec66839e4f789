//! The lock-free per-job state table.
//!
//! Two bits per probe, packed 32 to an `AtomicU64`: unknown, open, closed, filtered (a UDP
//! probe's unknown is reported as open|filtered at the end). The
//! receiver thread records answers with a compare-and-swap that only succeeds from unknown, so
//! the first valid answer wins, a duplicate is counted and never reported twice, and readers
//! (the sender deciding what to retry, progress, the exporter) never take a lock. A /16 × 100
//! ports table is 1.6 MiB.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::ports::Protocol;

/// The state of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum PortState {
    /// No answer yet. Reported as filtered once the job is over.
    Unknown = 0,
    /// SYN-ACK received.
    Open = 1,
    /// RST received.
    Closed = 2,
    /// ICMP unreachable received, or (at the end) no answer at all to a TCP probe.
    Filtered = 3,
    /// No answer at all to a UDP probe, after its retries (nmap's `open|filtered`): the service
    /// may be there and silent, or a firewall may drop the probe. Never in the table: only
    /// [`PortState::finalized`] gives it.
    OpenFiltered = 4,
}

impl PortState {
    fn from_bits(bits: u64) -> PortState {
        match bits & 3 {
            0 => PortState::Unknown,
            1 => PortState::Open,
            2 => PortState::Closed,
            _ => PortState::Filtered,
        }
    }

    /// The name used in output and metrics (`unknown` is reported as `filtered` at the end).
    pub fn name(self) -> &'static str {
        match self {
            PortState::Unknown => "unknown",
            PortState::Open => "open",
            PortState::Closed => "closed",
            PortState::Filtered => "filtered",
            PortState::OpenFiltered => "open|filtered",
        }
    }

    /// The state as finally reported for a probe of `protocol`: no answer is `filtered` for
    /// TCP and `open|filtered` for UDP.
    pub fn finalized(self, protocol: Protocol) -> PortState {
        match (self, protocol) {
            (PortState::Unknown, Protocol::Tcp) => PortState::Filtered,
            (PortState::Unknown, Protocol::Udp) => PortState::OpenFiltered,
            (state, _) => state,
        }
    }
}

/// What [`StateTable::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// This was the first answer for the probe; it is now recorded.
    First,
    /// The probe already had an answer; this one was counted as a duplicate and ignored.
    Duplicate,
}

/// Per-probe states of one job.
#[derive(Debug)]
pub struct StateTable {
    words: Box<[AtomicU64]>,
    len: u64,
    counts: [AtomicU64; 4],
    duplicates: AtomicU64,
}

impl StateTable {
    /// A table of `len` probes, all unknown.
    pub fn new(len: u64) -> StateTable {
        let words = (0..len.div_ceil(32)).map(|_| AtomicU64::new(0)).collect();
        StateTable { words, len, counts: Default::default(), duplicates: AtomicU64::new(0) }
    }

    /// Number of probes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the table has no probes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The state of probe `index` (unknown when out of range).
    #[inline]
    pub fn get(&self, index: u64) -> PortState {
        if index >= self.len {
            return PortState::Unknown;
        }
        let word = self.words[(index / 32) as usize].load(Ordering::Acquire);
        PortState::from_bits(word >> ((index % 32) * 2))
    }

    /// Records `state` (not unknown) for probe `index` if it has no answer yet.
    #[inline]
    pub fn record(&self, index: u64, state: PortState) -> RecordOutcome {
        debug_assert!(!matches!(state, PortState::Unknown | PortState::OpenFiltered));
        // Only the four two-bit states are stored: `OpenFiltered` is a final report, not an
        // answer, and writing its value would spill into the next probe's bits.
        if index >= self.len || matches!(state, PortState::Unknown | PortState::OpenFiltered) {
            return RecordOutcome::Duplicate;
        }
        let shift = (index % 32) * 2;
        let word = &self.words[(index / 32) as usize];
        let mut current = word.load(Ordering::Acquire);
        loop {
            if (current >> shift) & 3 != 0 {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                return RecordOutcome::Duplicate;
            }
            let new = current | ((state as u64) << shift);
            match word.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.counts[state as usize].fetch_add(1, Ordering::Relaxed);
                    return RecordOutcome::First;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// How many probes are in `state` (unknown: not yet answered).
    pub fn count(&self, state: PortState) -> u64 {
        match state {
            PortState::Unknown => self.len - self.answered(),
            _ => self.counts[state as usize].load(Ordering::Relaxed),
        }
    }

    /// How many probes have an answer.
    pub fn answered(&self) -> u64 {
        self.counts[1..].iter().map(|count| count.load(Ordering::Relaxed)).sum()
    }

    /// How many duplicate answers were ignored.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_answer_wins_and_duplicates_are_counted() {
        let table = StateTable::new(100);
        assert_eq!(table.get(37), PortState::Unknown);
        assert_eq!(table.record(37, PortState::Open), RecordOutcome::First);
        assert_eq!(table.record(37, PortState::Closed), RecordOutcome::Duplicate);
        assert_eq!(table.record(38, PortState::Filtered), RecordOutcome::First);
        assert_eq!(table.get(37), PortState::Open);
        assert_eq!(table.get(38), PortState::Filtered);
        assert_eq!(table.get(36), PortState::Unknown);
        assert_eq!(table.count(PortState::Open), 1);
        assert_eq!(table.count(PortState::Unknown), 98);
        assert_eq!(table.duplicates(), 1);
        assert_eq!(table.record(100, PortState::Open), RecordOutcome::Duplicate);
    }

    #[test]
    fn concurrent_writers_record_each_probe_once() {
        let table = Arc::new(StateTable::new(10_000));
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let table = Arc::clone(&table);
                std::thread::spawn(move || {
                    let state = [PortState::Open, PortState::Closed, PortState::Filtered, PortState::Open][thread];
                    (0..10_000).filter(|&index| table.record(index, state) == RecordOutcome::First).count()
                })
            })
            .collect();
        let firsts: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(firsts, 10_000);
        assert_eq!(table.answered(), 10_000);
        assert_eq!(table.duplicates(), 30_000);
        assert!((0..10_000).all(|index| table.get(index) != PortState::Unknown));
    }
}
