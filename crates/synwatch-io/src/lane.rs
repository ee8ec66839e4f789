//! One lane of a job as a sending thread holds it: the schedule (`JobCore`), the job's shared
//! state, a probe carried over from a full batch, the time the lane next has something to do,
//! and progress not yet published. The SYN sender and the connect() threads both drive their
//! lanes through this type, so round-robin, priority, the per-job rate cap, progress publication
//! and the end-of-lane rule are written once.
//!
//! Priority is strict: while an [`Priority::Interactive`] lane (an on-demand probe) has a probe
//! due, no background lane gets a token. Interactive jobs are small and bounded by the on-demand
//! guards, so background scans are delayed, never starved for long.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use synwatch_engine::job::FinishReason;
use synwatch_engine::{JobCore, NextStep, Probe, TokenBucket};

use crate::engine::{JobState, Priority};

pub(crate) struct Lane {
    pub(crate) core: Box<JobCore>,
    pub(crate) state: Arc<JobState>,
    /// A probe taken from the schedule that could not go out (no batch slot, no descriptor);
    /// it is sent first next time.
    pub(crate) carried: Option<Probe>,
    /// Nothing to send before this time (between rounds, or waiting for late replies).
    pub(crate) wake_at: Duration,
    /// Probes sent since the last publication to the shared job state (done once per batch,
    /// so that threads do not contend for the counter's cache line per probe).
    pub(crate) unpublished_sent: u64,
    /// The job's own rate cap (its share of it, for a job split over several lanes), on top of
    /// the engine's global one.
    pub(crate) bucket: Option<TokenBucket>,
}

impl Lane {
    pub(crate) fn new(core: JobCore, state: Arc<JobState>, now: Duration) -> Lane {
        let bucket = state.lane_rate.map(|rate| TokenBucket::new(rate, TokenBucket::default_burst(rate, 64), now));
        Lane { core: Box::new(core), state, carried: None, wake_at: Duration::ZERO, unpublished_sent: 0, bucket }
    }

    fn priority(&self) -> Priority {
        self.state.priority
    }

    /// Adds the probes sent since the last call to the job's shared counters; `now` is when
    /// their batch was taken (since the engine's epoch), for the first round's send span.
    pub(crate) fn publish_progress(&mut self, now: Duration) {
        if self.unpublished_sent > 0 {
            let state = &self.state;
            state.probes_sent.fetch_add(self.unpublished_sent, Ordering::Relaxed);
            state.round.fetch_max(self.core.round(), Ordering::Relaxed);
            let at = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX - 1);
            state.first_batch_at.fetch_min(at, Ordering::Relaxed);
            if self.core.round() == 0 {
                state.first_round_sent.fetch_add(self.unpublished_sent, Ordering::Relaxed);
                state.first_round_last_batch_at.fetch_max(at, Ordering::Relaxed);
            }
            self.unpublished_sent = 0;
        }
    }

    /// Whether the lane is over at `now`, applying its owner's cancel. A lane with a carried
    /// probe is not over unless cancelled: a stuck transmitter must not make a job
    /// uncancellable, nor end it with a probe never sent.
    pub(crate) fn check_over(&mut self, now: Duration) -> Option<FinishReason> {
        if self.state.cancel.load(Ordering::Acquire) {
            self.core.cancel();
        }
        let cancelled = self.core.finished() == Some(FinishReason::Cancelled);
        if self.carried.is_some() && !cancelled { None } else { self.core.check_finished(now) }
    }
}

/// Tokens granted by [`take_tokens`], and whom they are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// How many.
    pub(crate) tokens: u32,
    /// Borrowed for interactive lanes (see `TokenBucket::take_interactive`): only they may use
    /// them, so background scans never send on borrowed tokens.
    pub(crate) interactive_only: bool,
}

/// Takes up to `want` tokens from the engine's bucket for the next sends: borrowing when an
/// interactive lane (an on-demand probe) has a probe due, plainly otherwise.
pub(crate) fn take_tokens<L: AsMut<Lane>>(
    lanes: &mut [L],
    bucket: &parking_lot::Mutex<TokenBucket>,
    now: Duration,
    want: u32,
) -> Grant {
    let interactive_due = lanes.iter_mut().any(|lane| {
        let lane = lane.as_mut();
        lane.priority() == Priority::Interactive && lane.wake_at <= now
    });
    let mut bucket = bucket.lock();
    if interactive_due {
        Grant { tokens: bucket.take_interactive(now, want), interactive_only: true }
    } else {
        Grant { tokens: bucket.take(now, want), interactive_only: false }
    }
}

/// The next probe due at `now` with its lane's position, or `None` when no lane has one (each
/// lane that is waiting records when it wakes). Interactive lanes come first; within a priority
/// the lanes take turns, round-robin from `cursor`. With `interactive_only`, background lanes
/// are passed over.
pub(crate) fn next_due_probe<L: AsMut<Lane>>(
    lanes: &mut [L],
    cursor: &mut usize,
    now: Duration,
    interactive_only: bool,
) -> Option<(usize, Probe)> {
    let interactive = lanes.iter_mut().any(|lane| lane.as_mut().priority() == Priority::Interactive);
    if interactive && let Some(found) = next_due_probe_of(lanes, cursor, now, Some(Priority::Interactive)) {
        return Some(found);
    }
    if interactive_only {
        return None;
    }
    next_due_probe_of(lanes, cursor, now, None)
}

fn next_due_probe_of<L: AsMut<Lane>>(
    lanes: &mut [L],
    cursor: &mut usize,
    now: Duration,
    only: Option<Priority>,
) -> Option<(usize, Probe)> {
    let count = lanes.len();
    for _ in 0..count {
        let position = *cursor % count;
        *cursor = cursor.wrapping_add(1);
        let lane = lanes[position].as_mut();
        if lane.wake_at > now || only.is_some_and(|priority| lane.priority() != priority) {
            continue;
        }
        // A carried probe already had its tokens.
        if let Some(probe) = lane.carried.take() {
            return Some((position, probe));
        }
        if let Some(bucket) = &mut lane.bucket
            && bucket.take(now, 1) == 0
        {
            lane.wake_at = now + bucket.time_until_token(now);
            continue;
        }
        match lane.core.next_step(now) {
            NextStep::Send(probe) => return Some((position, probe)),
            NextStep::WaitUntil(time) => lane.wake_at = time,
            NextStep::Done(_) => {}
        }
        if let Some(bucket) = &mut lane.bucket {
            bucket.give_back(1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::{Condvar, Mutex};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
    use std::time::Instant;
    use synwatch_engine::targets::parse_target;
    use synwatch_engine::{CookieKey, ExclusionPolicy, HostSet, JobSettings, PortSet, SourcePortRange, TargetSpace};

    /// A lane over 198.18.0.0/28 × `ports` with its own job state.
    fn lane(ports: &str, priority: Priority, rate: Option<u64>) -> Lane {
        let hosts =
            HostSet::build(vec![parse_target("198.18.0.0/28").unwrap()], Vec::new(), ExclusionPolicy::Default).unwrap();
        let space = Arc::new(TargetSpace::new(hosts, PortSet::parse(ports).unwrap()).unwrap());
        let settings = JobSettings { retries: 0, ..JobSettings::default() };
        let source = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 255, 1)));
        let core =
            JobCore::new(space, settings, CookieKey::new([7; 16], SourcePortRange::DEFAULT), [source, None], None);
        let state = Arc::new(JobState {
            id: 1,
            settings,
            matcher: Arc::clone(core.matcher()),
            shard_size: core.shard_size(),
            results: None,
            cancel: AtomicBool::new(false),
            probes_sent: AtomicU64::new(0),
            round: AtomicU32::new(0),
            first_batch_at: AtomicU64::new(u64::MAX),
            first_round_last_batch_at: AtomicU64::new(0),
            first_round_sent: AtomicU64::new(0),
            lanes_left: AtomicUsize::new(1),
            reason: Mutex::new(None),
            submitted: Instant::now(),
            summary: Mutex::new(None),
            finished: Condvar::new(),
            priority,
            lane_rate: rate,
            wakers: Vec::new(),
            woken: AtomicBool::new(false),
        });
        Lane::new(core, state, Duration::ZERO)
    }

    struct Held(Lane);

    impl AsMut<Lane> for Held {
        fn as_mut(&mut self) -> &mut Lane {
            &mut self.0
        }
    }

    #[test]
    fn interactive_lanes_are_served_before_background_lanes() {
        let mut lanes = vec![
            Held(lane("80,443", Priority::Background, None)),
            Held(lane("22", Priority::Interactive, None)),
            Held(lane("25", Priority::Background, None)),
        ];
        let mut cursor = 0;
        let order: Vec<usize> = std::iter::from_fn(|| next_due_probe(&mut lanes, &mut cursor, Duration::ZERO, false))
            .map(|(position, _)| position)
            .collect();
        // The interactive lane's 16 probes go first, then the background lanes take turns.
        assert_eq!(order.len(), 16 + 32 + 16);
        assert!(order[..16].iter().all(|&position| position == 1), "{order:?}");
        assert!(order[16..].iter().all(|&position| position != 1));
        assert!(order[16..20].contains(&0) && order[16..20].contains(&2), "background lanes alternate: {order:?}");
    }

    #[test]
    fn a_job_rate_cap_holds_its_lane_back_and_sets_its_wake_time() {
        let mut lanes = vec![Held(lane("1-100", Priority::Interactive, Some(1000)))];
        let mut cursor = 0;
        let mut sent = 0u64;
        let mut now = Duration::ZERO;
        // 100 ms of a sender polling every 100 µs: a 1000/s cap lets about 100 probes through.
        while now < Duration::from_millis(100) {
            while next_due_probe(&mut lanes, &mut cursor, now, false).is_some() {
                sent += 1;
            }
            assert!(lanes[0].0.wake_at > now, "a lane out of tokens says when it has one again");
            now += Duration::from_micros(100);
        }
        assert!((95..=101).contains(&sent), "{sent} probes in 100 ms at 1000/s");
    }

    #[test]
    fn borrowed_tokens_go_to_interactive_lanes_only() {
        let rate = 10_000;
        let bucket = Mutex::new(TokenBucket::new(rate, TokenBucket::default_burst(rate, 256), Duration::ZERO));
        let mut lanes = vec![Held(lane("1-1000", Priority::Background, None))];
        let now = Duration::from_millis(1);
        // Background alone: the plain bucket (2 ms of traffic at most).
        let grant = take_tokens(&mut lanes, &bucket, now, 256);
        assert!(!grant.interactive_only && grant.tokens <= 20, "{grant:?}");
        // An on-demand probe arrives (16 hosts × 10 ports): it borrows a batch at once, for
        // itself only.
        lanes.push(Held(lane("1-10", Priority::Interactive, None)));
        let grant = take_tokens(&mut lanes, &bucket, now, 256);
        assert!(grant.interactive_only && grant.tokens == 256, "{grant:?}");
        let mut cursor = 0;
        let sent: Vec<usize> =
            std::iter::from_fn(|| next_due_probe(&mut lanes, &mut cursor, now, grant.interactive_only))
                .take(grant.tokens as usize)
                .map(|(position, _)| position)
                .collect();
        assert_eq!(sent.len(), 160, "the interactive lane's 160 probes, no background one: {sent:?}");
        assert!(sent.iter().all(|&position| position == 1));
        bucket.lock().give_back(grant.tokens - 160);
        // The debt (160 probes less the tokens earned before) holds background back for about
        // 14 ms at 10,000/s.
        let grant = take_tokens(&mut lanes, &bucket, now + Duration::from_millis(8), 256);
        assert_eq!(grant, Grant { tokens: 0, interactive_only: false });
        let grant = take_tokens(&mut lanes, &bucket, now + Duration::from_millis(20), 256);
        assert!(grant.tokens > 0 && !grant.interactive_only, "{grant:?}");
    }
}
