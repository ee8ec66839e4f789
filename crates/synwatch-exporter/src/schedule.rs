//! When each target is scanned: the scheduler's decisions, with no clock and no thread.
//!
//! Time is a `Duration` since an epoch the caller picks, passed into every call, so the tests
//! drive it by hand. Each target is in one of three phases: waiting for its due time, queued, or
//! running. A target is queued at most once and never queued while it runs, so no target is
//! ever scanned twice at once and the queue is bounded by the number of targets. The next due
//! time is the start of the previous scan plus the interval plus a jitter of up to 5 % of the
//! interval (at most 30 s), derived from the target's name and run count so that targets with
//! equal intervals drift apart instead of firing together, and reproducible for a given seed.

use std::collections::{BTreeMap, VecDeque};
use std::hash::Hasher;
use std::time::Duration;

use siphasher::sip::SipHasher13;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Queued,
    Running { started: Duration },
}

#[derive(Debug, Clone)]
struct Entry {
    interval: Duration,
    next_due: Duration,
    phase: Phase,
    runs: u64,
}

/// One target as the scheduler needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledTarget {
    /// The target's unique name.
    pub name: String,
    /// Time between the starts of two scans.
    pub interval: Duration,
    /// When a new target is first due (for example from the time of its last scan before a
    /// restart); `None` means soon, after a short jitter.
    pub first_due: Option<Duration>,
}

/// The scheduler state (see the module documentation).
#[derive(Debug, Clone)]
pub struct Schedule {
    entries: BTreeMap<String, Entry>,
    queue: VecDeque<String>,
    seed: u64,
}

impl Schedule {
    /// An empty schedule; `seed` makes the jitter reproducible.
    pub fn new(seed: u64) -> Schedule {
        Schedule { entries: BTreeMap::new(), queue: VecDeque::new(), seed }
    }

    /// A fraction in [0, 1) from the seed, the name and a counter.
    fn fraction(&self, name: &str, counter: u64) -> f64 {
        let mut hasher = SipHasher13::new_with_keys(self.seed, 0x7379_6e77_6174_6368);
        hasher.write(name.as_bytes());
        hasher.write_u64(counter);
        (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn jitter(&self, name: &str, interval: Duration, counter: u64) -> Duration {
        let span = (interval / 20).min(Duration::from_secs(30));
        span.mul_f64(self.fraction(name, counter))
    }

    /// Replaces the set of targets at `now`. Known targets keep their phase (a running scan goes
    /// on); a shorter interval brings their next due time forward. Removed targets leave the
    /// queue; the names of removed targets that were running are returned, for the caller to
    /// cancel.
    pub fn set_targets(&mut self, targets: &[ScheduledTarget], now: Duration) -> Vec<String> {
        let mut cancelled = Vec::new();
        self.entries.retain(|name, entry| {
            let keep = targets.iter().any(|target| &target.name == name);
            if !keep && matches!(entry.phase, Phase::Running { .. }) {
                cancelled.push(name.clone());
            }
            keep
        });
        self.queue.retain(|name| targets.iter().any(|target| &target.name == name));
        for target in targets {
            let startup_jitter =
                (target.interval / 10).min(Duration::from_secs(5)).mul_f64(self.fraction(&target.name, 0));
            match self.entries.get_mut(&target.name) {
                Some(entry) => {
                    if target.interval < entry.interval {
                        let earlier = entry.next_due.saturating_sub(entry.interval - target.interval);
                        entry.next_due = earlier.max(now);
                    }
                    entry.interval = target.interval;
                }
                None => {
                    let next_due = target.first_due.unwrap_or(now + startup_jitter);
                    self.entries.insert(
                        target.name.clone(),
                        Entry { interval: target.interval, next_due, phase: Phase::Waiting, runs: 0 },
                    );
                }
            }
        }
        cancelled
    }

    /// Queues every waiting target that is due at `now`, earliest first.
    pub fn poll(&mut self, now: Duration) {
        let mut due: Vec<(Duration, String)> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.phase == Phase::Waiting && entry.next_due <= now)
            .map(|(name, entry)| (entry.next_due, name.clone()))
            .collect();
        due.sort();
        for (_, name) in due {
            if let Some(entry) = self.entries.get_mut(&name) {
                entry.phase = Phase::Queued;
                self.queue.push_back(name);
            }
        }
    }

    /// Takes the next queued target and marks it running from `now`.
    pub fn start_next(&mut self, now: Duration) -> Option<String> {
        let name = self.queue.pop_front()?;
        let entry = self.entries.get_mut(&name).expect("queued targets have entries");
        entry.phase = Phase::Running { started: now };
        Some(name)
    }

    /// Records the end of a target's scan at `now` and sets its next due time.
    pub fn finished(&mut self, name: &str, now: Duration) {
        let Some(entry) = self.entries.get(name) else {
            return;
        };
        let Phase::Running { started } = entry.phase else {
            return;
        };
        let jitter = self.jitter(name, entry.interval, entry.runs + 1);
        let entry = self.entries.get_mut(name).expect("checked above");
        entry.runs += 1;
        // A scan longer than its interval is followed by the next one at once, never by two.
        entry.next_due = (started + entry.interval + jitter).max(now);
        entry.phase = Phase::Waiting;
    }

    /// Targets queued and not yet started.
    pub fn queue_length(&self) -> usize {
        self.queue.len()
    }

    /// Whether the target is running.
    pub fn is_running(&self, name: &str) -> bool {
        self.entries.get(name).is_some_and(|entry| matches!(entry.phase, Phase::Running { .. }))
    }

    /// The next due time of a waiting target.
    pub fn next_due_of(&self, name: &str) -> Option<Duration> {
        self.entries.get(name).filter(|entry| entry.phase == Phase::Waiting).map(|entry| entry.next_due)
    }

    /// The earliest due time of a waiting target.
    pub fn next_due(&self) -> Option<Duration> {
        self.entries.values().filter(|entry| entry.phase == Phase::Waiting).map(|entry| entry.next_due).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, seconds: u64) -> ScheduledTarget {
        ScheduledTarget { name: name.into(), interval: Duration::from_secs(seconds), first_due: None }
    }

    const S: Duration = Duration::from_secs(1);

    /// Runs the schedule for `seconds` with scans lasting `scan` and at most `slots` at once;
    /// returns the start times per target.
    fn simulate(
        schedule: &mut Schedule,
        seconds: u64,
        scan: Duration,
        slots: usize,
    ) -> BTreeMap<String, Vec<Duration>> {
        let mut starts: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        let mut running: Vec<(String, Duration)> = Vec::new();
        let step = Duration::from_millis(100);
        let mut now = Duration::ZERO;
        while now < S * seconds as u32 {
            running.retain(|(name, ends)| {
                if *ends <= now {
                    schedule.finished(name, now);
                    false
                } else {
                    true
                }
            });
            schedule.poll(now);
            while running.len() < slots {
                let Some(name) = schedule.start_next(now) else { break };
                assert!(!running.iter().any(|(other, _)| *other == name), "{name} runs twice at once");
                starts.entry(name.clone()).or_default().push(now);
                running.push((name, now + scan));
            }
            now += step;
        }
        starts
    }

    #[test]
    fn each_target_runs_once_per_interval_with_bounded_jitter() {
        let mut schedule = Schedule::new(7);
        schedule.set_targets(&[target("a", 60), target("b", 60), target("c", 10)], Duration::ZERO);
        let starts = simulate(&mut schedule, 600, S, 4);
        for (name, interval) in [("a", 60u32), ("b", 60), ("c", 10)] {
            let times = &starts[name];
            // Each gap is the interval plus at most 5 % jitter (plus the 100 ms simulation step),
            // so 600 s hold between 600 / (1.05 interval) and 600 / interval scans.
            let fewest = (600.0 / (f64::from(interval) * 1.05 + 0.1)).floor() as usize;
            assert!(times.len() >= fewest && times.len() <= (600 / interval) as usize, "{name}: {times:?}");
            for pair in times.windows(2) {
                let gap = pair[1] - pair[0];
                let longest = (S * interval).mul_f64(1.05) + Duration::from_millis(100);
                assert!(gap >= S * interval && gap <= longest, "{name}: gap {gap:?}");
            }
        }
        assert_ne!(starts["a"], starts["b"], "equal intervals do not fire together");
    }

    #[test]
    fn a_slow_scan_is_followed_by_one_scan_not_by_a_backlog() {
        let mut schedule = Schedule::new(1);
        schedule.set_targets(&[target("slow", 5)], Duration::ZERO);
        let starts = simulate(&mut schedule, 100, S * 12, 4);
        // Each scan lasts 12 s with a 5 s interval: back to back, never overlapping.
        assert_eq!(starts["slow"].len(), 9, "{:?}", starts["slow"]);
    }

    #[test]
    fn the_queue_holds_each_target_once_when_slots_are_full() {
        let mut schedule = Schedule::new(3);
        let targets: Vec<_> = (0..10).map(|i| target(&format!("t{i}"), 1)).collect();
        schedule.set_targets(&targets, Duration::ZERO);
        schedule.poll(S * 5);
        assert_eq!(schedule.queue_length(), 10);
        let first = schedule.start_next(S * 5).unwrap();
        schedule.poll(S * 50);
        assert_eq!(schedule.queue_length(), 9, "queued and running targets are not queued again");
        assert!(schedule.is_running(&first));
    }

    #[test]
    fn removed_running_targets_are_returned_for_cancelling() {
        let mut schedule = Schedule::new(3);
        schedule.set_targets(&[target("a", 10), target("b", 10), target("c", 10)], Duration::ZERO);
        schedule.poll(S * 2);
        let first = schedule.start_next(S * 2).unwrap();
        let keep: Vec<_> = ["a", "b", "c"].iter().filter(|name| **name != first).map(|name| target(name, 10)).collect();
        let cancelled = schedule.set_targets(&keep[..1], S * 3);
        assert_eq!(cancelled, vec![first.clone()]);
        assert_eq!(schedule.queue_length(), 1);
        schedule.finished(&first, S * 4);
        assert!(!schedule.is_running(&first));
    }

    #[test]
    fn restored_targets_wait_for_their_interval_and_shorter_intervals_apply_at_once() {
        let mut schedule = Schedule::new(5);
        let restored = ScheduledTarget { first_due: Some(S * 40), ..target("r", 60) };
        schedule.set_targets(&[restored.clone(), target("n", 600)], Duration::ZERO);
        schedule.poll(S * 39);
        assert_eq!(schedule.queue_length(), 1, "only the new target is due early");
        assert_eq!(schedule.start_next(S * 39).as_deref(), Some("n"));
        schedule.finished("n", S * 40);
        assert_eq!(schedule.next_due(), Some(S * 40), "the restored target is next");
        schedule.set_targets(&[restored, target("n", 60)], S * 40);
        let due = schedule.next_due_of("n").unwrap();
        assert!(due >= S * 99 && due < S * 130, "39 s + 600 s + jitter, brought forward by 540 s: {due:?}");
    }
}
