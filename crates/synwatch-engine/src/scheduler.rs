//! The scheduler of one sending thread: every decision about what goes out next, and when.
//!
//! A [`Scheduler`] holds the lanes a thread sends for (a lane is a [`JobCore`]: a whole job, or
//! one thread's part of a large one) and decides, given the time and the tokens of the global
//! rate cap, which probe goes out next. It owns priorities (interactive lanes first, strictly),
//! the round-robin between lanes of one priority, each job's own rate cap, probes carried over
//! from a full batch, the time each lane next has something to do, the progress not yet
//! published, and the end of each lane. It does no I/O and reads no clock, in the manner of
//! quinn-proto: the I/O layer (the SYN sender and the connect() threads of `synwatch-io`, and
//! the simulated network of this crate's tests) only drives it:
//!
//! 1. [`Scheduler::add`] a lane; [`Scheduler::cancel_where`] the lanes whose owner cancelled.
//! 2. [`Scheduler::poll_finished`] until `None`: lanes that are over, with their last progress.
//! 3. [`Scheduler::grant`] tokens from the global bucket for one batch, then
//!    [`Scheduler::poll_transmit`] until `None`, handing each probe to the network; a probe that
//!    found no room goes back with [`Scheduler::defer`] (sent first next time), one that could
//!    not be sent at all with [`Scheduler::forgo`] (it stays unknown and is retried by the next
//!    round); [`Scheduler::end_batch`] says how many tokens were used and how many go back to
//!    the bucket (the caller locks it only when some do).
//! 4. [`Scheduler::poll_progress`] to publish what was sent, and sleep until
//!    [`Scheduler::poll_timeout`] or an event (a new job, a reply that may end one).
//!
//! The global bucket is passed in (`&mut TokenBucket`) because the sending threads share it;
//! the caller holds its lock for the duration of one call.
//!
//! Priority is strict: while an [`Priority::Interactive`] lane (an on-demand probe) has a probe
//! due, no background lane gets a token, and the grant may borrow ahead of the bucket (see
//! [`TokenBucket::take_interactive`]) for interactive lanes only. Interactive jobs are small and
//! bounded by the on-demand guards, so background scans are delayed, never starved for long.

use std::time::Duration;

use crate::job::{FinishReason, JobCore, NextStep, Probe};
use crate::pacing::TokenBucket;

/// Whose job it is, for the choice of the next probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// A background scan: takes turns with the other background jobs.
    #[default]
    Background,
    /// Somebody waits for the answer (an on-demand probe): sent before any background probe.
    Interactive,
}

/// Which lane of a [`Scheduler`] a probe or a progress report is for: a position, valid until
/// the next [`Scheduler::poll_finished`] that returns a lane.
pub type LaneIndex = usize;

/// Progress of one lane not yet published to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneProgress {
    /// Probes sent since the last report.
    pub newly_sent: u64,
    /// The lane's current round (0 = first pass).
    pub round: u32,
}

/// The tokens of a batch's grant, at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEnd {
    /// Spent on probes handed out.
    pub used: u32,
    /// Not spent: to be given back to the bucket.
    pub unused: u32,
}

/// A lane that is over.
#[derive(Debug)]
pub struct FinishedLane<T> {
    /// The owner data given to [`Scheduler::add`].
    pub owner: T,
    /// Why it ended.
    pub reason: FinishReason,
    /// Progress not yet published (`newly_sent` may be 0).
    pub progress: LaneProgress,
}

struct Lane<T> {
    core: Box<JobCore>,
    owner: T,
    priority: Priority,
    /// A probe taken from the schedule that could not go out (no batch slot, no descriptor);
    /// it is sent first next time, and has had its job's token already.
    carried: Option<Probe>,
    /// Nothing to send before this time (between rounds, waiting for late replies, or out of
    /// the job's own tokens).
    wake_at: Duration,
    /// Whether `wake_at` is the job's own wait (between rounds, or for late replies) rather
    /// than the wait for a token of the lane's own bucket; only the job's wait can end early
    /// ([`JobCore::due_early`]).
    waits_on_job: bool,
    /// Probes handed out since the last progress report.
    unpublished_sent: u64,
    /// The job's own rate cap (its share of it, for a job split over several lanes), on top of
    /// the global one.
    bucket: Option<TokenBucket>,
}

impl<T> Lane<T> {
    /// Whether the lane is over at `now`. A lane with a carried probe is not over unless
    /// cancelled: a stuck transmitter must not make a job uncancellable, nor end it with a
    /// probe never sent.
    fn check_over(&mut self, now: Duration) -> Option<FinishReason> {
        let cancelled = self.core.finished() == Some(FinishReason::Cancelled);
        if self.carried.is_some() && !cancelled { None } else { self.core.check_finished(now) }
    }

    /// Whether the lane has something to do at `now`: its wait is over, or its job's gap
    /// between rounds ended early because every probe sent was answered (the canaries of the
    /// hosts that answered go out at once; the next re-evaluation of a learned gap would be
    /// tens of milliseconds away).
    fn is_due(&self, now: Duration) -> bool {
        self.wake_at <= now || (self.waits_on_job && self.core.due_early())
    }

    fn take_progress(&mut self) -> LaneProgress {
        let progress = LaneProgress { newly_sent: self.unpublished_sent, round: self.core.round() };
        self.unpublished_sent = 0;
        progress
    }
}

/// Tokens granted for the batch in progress.
#[derive(Debug, Clone, Copy, Default)]
struct Grant {
    granted: u32,
    remaining: u32,
    /// Borrowed for interactive lanes: only they may use them, so background scans never send
    /// on borrowed tokens.
    interactive_only: bool,
}

/// The lanes of one sending thread and every decision about them (see the module doc). `T` is
/// what the I/O layer keeps with each lane (its shared job state, its routes).
pub struct Scheduler<T> {
    lanes: Vec<Lane<T>>,
    /// Where the round-robin resumes.
    cursor: usize,
    grant: Grant,
}

impl<T> Default for Scheduler<T> {
    fn default() -> Scheduler<T> {
        Scheduler { lanes: Vec::new(), cursor: 0, grant: Grant::default() }
    }
}

impl<T> std::fmt::Debug for Scheduler<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Scheduler").field("lanes", &self.lanes.len()).finish()
    }
}

impl<T> Scheduler<T> {
    /// An empty scheduler.
    pub fn new() -> Scheduler<T> {
        Scheduler::default()
    }

    /// Adds a lane with its owner data, its priority and its own rate cap in probes per second
    /// (its share of the job's cap).
    pub fn add(&mut self, core: JobCore, owner: T, priority: Priority, rate: Option<u64>, now: Duration) {
        let bucket = rate.map(|rate| TokenBucket::new(rate, TokenBucket::default_burst(rate, 64), now));
        self.lanes.push(Lane {
            core: Box::new(core),
            owner,
            priority,
            carried: None,
            wake_at: Duration::ZERO,
            waits_on_job: false,
            unpublished_sent: 0,
            bucket,
        });
    }

    /// Lanes held.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Whether no lane is held.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// The owner data of a lane.
    pub fn owner(&self, lane: LaneIndex) -> &T {
        &self.lanes[lane].owner
    }

    /// The owner data of every lane.
    pub fn owners(&self) -> impl Iterator<Item = &T> {
        self.lanes.iter().map(|lane| &lane.owner)
    }

    /// Cancels the lanes whose owner data says so; they end at the next
    /// [`Scheduler::poll_finished`].
    pub fn cancel_where(&mut self, mut cancelled: impl FnMut(&T) -> bool) {
        for lane in &mut self.lanes {
            if cancelled(&lane.owner) {
                lane.core.cancel();
            }
        }
    }

    /// Tells the lanes whose owner data says so that no answer to their probes can still
    /// arrive ([`JobCore::settle`]); those with something to do now wake at `now`.
    pub fn settle_where(&mut self, mut settled: impl FnMut(&T) -> bool, now: Duration) {
        for lane in &mut self.lanes {
            if settled(&lane.owner) && lane.core.settle(now) {
                lane.wake_at = now;
            }
        }
    }

    /// Cancels every lane (the engine is stopping).
    pub fn cancel_all(&mut self) {
        self.cancel_where(|_| true);
    }

    /// Removes and returns one lane that is over at `now` (every probe answered, its wait or its
    /// deadline passed, or cancelled), or `None` when no lane is.
    pub fn poll_finished(&mut self, now: Duration) -> Option<FinishedLane<T>> {
        let position = self.lanes.iter_mut().position(|lane| lane.check_over(now).is_some())?;
        let mut lane = self.lanes.swap_remove(position);
        let reason = lane.core.finished().expect("check_over returned a reason");
        let progress = lane.take_progress();
        Some(FinishedLane { owner: lane.owner, reason, progress })
    }

    /// Takes up to `want` tokens from the global `bucket` for the next batch: borrowing when an
    /// interactive lane has a probe due, plainly otherwise. Returns how many were granted.
    /// Tokens of an earlier grant not ended are given back first.
    pub fn grant(&mut self, now: Duration, want: u32, bucket: &mut TokenBucket) -> u32 {
        let earlier = self.end_batch();
        if earlier.unused > 0 {
            bucket.give_back(earlier.unused);
        }
        let interactive_due = self.lanes.iter().any(|lane| lane.priority == Priority::Interactive && lane.is_due(now));
        let granted = if interactive_due { bucket.take_interactive(now, want) } else { bucket.take(now, want) };
        self.grant = Grant { granted, remaining: granted, interactive_only: interactive_due };
        granted
    }

    /// Ends the batch: how many tokens of the grant were used, and how many the caller gives
    /// back to the bucket ([`TokenBucket::give_back`]).
    pub fn end_batch(&mut self) -> BatchEnd {
        let Grant { granted, remaining, .. } = std::mem::take(&mut self.grant);
        BatchEnd { used: granted - remaining, unused: remaining }
    }

    /// Tokens of the current grant not yet used.
    pub fn tokens_left(&self) -> u32 {
        self.grant.remaining
    }

    /// The next probe to send at `now`, and its lane, spending one granted token; `None` when
    /// the grant is spent or no lane has a probe due (each waiting lane then records when it
    /// wakes). Interactive lanes come first; within a priority the lanes take turns.
    pub fn poll_transmit(&mut self, now: Duration) -> Option<(LaneIndex, Probe)> {
        if self.grant.remaining == 0 {
            return None;
        }
        let interactive = self.lanes.iter().any(|lane| lane.priority == Priority::Interactive);
        let found = match interactive {
            true => self.next_due_probe(now, Some(Priority::Interactive)),
            false => None,
        };
        let found = match found {
            Some(found) => Some(found),
            None if self.grant.interactive_only => None,
            None => self.next_due_probe(now, None),
        }?;
        self.grant.remaining -= 1;
        self.lanes[found.0].unpublished_sent += 1;
        Some(found)
    }

    /// Takes back a probe from [`Scheduler::poll_transmit`] that found no room (a full batch or
    /// ring, no free descriptor): it goes out first when its lane is next served, and its token
    /// returns to the grant. The caller stops filling the batch.
    pub fn defer(&mut self, lane: LaneIndex, probe: Probe) {
        let lane = &mut self.lanes[lane];
        lane.carried = Some(probe);
        lane.unpublished_sent -= 1;
        self.grant.remaining += 1;
    }

    /// Takes back a probe from [`Scheduler::poll_transmit`] that could not be sent at all (no
    /// route for its family, the packet could not be written): it is not counted as sent, its
    /// token returns to the grant, and the probe stays unknown for the next round to retry.
    pub fn forgo(&mut self, lane: LaneIndex) {
        self.lanes[lane].unpublished_sent -= 1;
        self.grant.remaining += 1;
    }

    /// Reports, for each lane that sent something since the last report, what it sent.
    pub fn poll_progress(&mut self, mut report: impl FnMut(&T, LaneProgress)) {
        for lane in &mut self.lanes {
            if lane.unpublished_sent > 0 {
                let progress = lane.take_progress();
                report(&lane.owner, progress);
            }
        }
    }

    /// When the scheduler next has something to do: when the first waiting lane wakes, or, if
    /// a lane has a probe due now, when the global bucket has a token (`time_until_token`, asked
    /// only then, so the caller locks the shared bucket only then). `None` without lanes. A lane
    /// that ends because every probe was answered has no timeout: the I/O layer wakes the
    /// thread when the last answer arrives.
    pub fn poll_timeout(&self, now: Duration, time_until_token: impl FnOnce() -> Duration) -> Option<Duration> {
        let earliest = self.lanes.iter().map(|lane| if lane.is_due(now) { now } else { lane.wake_at }).min()?;
        if earliest > now { Some(earliest) } else { Some(now + time_until_token()) }
    }

    /// Whether any lane has a probe due at `now`.
    pub fn has_due(&self, now: Duration) -> bool {
        self.lanes.iter().any(|lane| lane.is_due(now))
    }

    fn next_due_probe(&mut self, now: Duration, only: Option<Priority>) -> Option<(LaneIndex, Probe)> {
        let count = self.lanes.len();
        for _ in 0..count {
            let position = self.cursor % count;
            self.cursor = self.cursor.wrapping_add(1);
            let lane = &mut self.lanes[position];
            if !lane.is_due(now) || only.is_some_and(|priority| lane.priority != priority) {
                continue;
            }
            if let Some(probe) = lane.carried.take() {
                return Some((position, probe));
            }
            if let Some(bucket) = &mut lane.bucket
                && bucket.take(now, 1) == 0
            {
                lane.wake_at = now + bucket.time_until_token(now);
                lane.waits_on_job = false;
                continue;
            }
            match lane.core.next_step(now) {
                NextStep::Send(probe) => {
                    // A lane due early (its wait not over) is sending now: it stays due.
                    lane.wake_at = lane.wake_at.min(now);
                    return Some((position, probe));
                }
                NextStep::WaitUntil(time) => {
                    lane.wake_at = time;
                    lane.waits_on_job = true;
                }
                NextStep::Done(_) => {}
            }
            if let Some(bucket) = &mut lane.bucket {
                bucket.give_back(1);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::parse_target;
    use crate::{CookieKey, ExclusionPolicy, HostSet, JobSettings, PortSet, SourcePortRange, TargetSpace};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    /// A lane over 198.18.0.0/28 × `ports`.
    fn core(ports: &str) -> JobCore {
        let hosts =
            HostSet::build(vec![parse_target("198.18.0.0/28").unwrap()], Vec::new(), ExclusionPolicy::Default).unwrap();
        let space = Arc::new(TargetSpace::new(hosts, PortSet::parse(ports).unwrap()).unwrap());
        let settings = JobSettings { retries: 0, ..JobSettings::default() };
        let source = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 255, 1)));
        JobCore::new(space, settings, CookieKey::new([7; 16], SourcePortRange::DEFAULT), [source, None], None)
    }

    /// One second in: an unlimited bucket is full by then.
    const SECOND: Duration = Duration::from_secs(1);

    fn unlimited() -> TokenBucket {
        TokenBucket::new(1_000_000_000, 1_000_000, Duration::ZERO)
    }

    fn drain(scheduler: &mut Scheduler<&'static str>, now: Duration, bucket: &mut TokenBucket) -> Vec<&'static str> {
        let mut order = Vec::new();
        loop {
            scheduler.grant(now, 64, bucket);
            let before = order.len();
            while let Some((lane, _)) = scheduler.poll_transmit(now) {
                order.push(*scheduler.owner(lane));
            }
            bucket.give_back(scheduler.end_batch().unused);
            if order.len() == before {
                return order;
            }
        }
    }

    #[test]
    fn interactive_lanes_are_served_before_background_lanes() {
        let mut scheduler = Scheduler::new();
        scheduler.add(core("80,443"), "background-a", Priority::Background, None, SECOND);
        scheduler.add(core("22"), "interactive", Priority::Interactive, None, SECOND);
        scheduler.add(core("25"), "background-b", Priority::Background, None, SECOND);
        let order = drain(&mut scheduler, SECOND, &mut unlimited());
        // The interactive lane's 16 probes go first, then the background lanes take turns.
        assert_eq!(order.len(), 16 + 32 + 16);
        assert!(order[..16].iter().all(|&owner| owner == "interactive"), "{order:?}");
        assert!(order[16..].iter().all(|&owner| owner != "interactive"));
        assert!(order[16..20].contains(&"background-a") && order[16..20].contains(&"background-b"), "{order:?}");
    }

    #[test]
    fn a_job_rate_cap_holds_its_lane_back_and_sets_its_wake_time() {
        let mut scheduler = Scheduler::new();
        scheduler.add(core("1-100"), "capped", Priority::Interactive, Some(1000), Duration::ZERO);
        let mut bucket = unlimited();
        let mut sent = 0;
        let mut now = Duration::ZERO;
        // 100 ms of a sender polling every 100 µs: a 1000/s cap lets about 100 probes through.
        while now < Duration::from_millis(100) {
            sent += drain(&mut scheduler, now, &mut bucket).len();
            let timeout = scheduler.poll_timeout(now, || bucket.time_until_token(now)).unwrap();
            assert!(timeout > now, "a lane out of tokens says when it has one again");
            now += Duration::from_micros(100);
        }
        assert!((95..=101).contains(&sent), "{sent} probes in 100 ms at 1000/s");
    }

    #[test]
    fn borrowed_tokens_go_to_interactive_lanes_only() {
        let rate = 10_000;
        let mut bucket = TokenBucket::new(rate, TokenBucket::default_burst(rate, 256), Duration::ZERO);
        let mut scheduler = Scheduler::new();
        scheduler.add(core("1-1000"), "background", Priority::Background, None, Duration::ZERO);
        let now = Duration::from_millis(1);
        // Background alone: the plain bucket (2 ms of traffic at most).
        let granted = scheduler.grant(now, 256, &mut bucket);
        assert!(granted <= 20, "{granted}");
        let end = scheduler.end_batch();
        assert_eq!(end.used, 0);
        bucket.give_back(end.unused);
        // An on-demand probe arrives (16 hosts × 10 ports): it borrows a batch at once, for
        // itself only.
        scheduler.add(core("1-10"), "interactive", Priority::Interactive, None, now);
        assert_eq!(scheduler.grant(now, 256, &mut bucket), 256);
        let mut sent = Vec::new();
        while let Some((lane, _)) = scheduler.poll_transmit(now) {
            sent.push(*scheduler.owner(lane));
        }
        assert_eq!(sent.len(), 160, "the interactive lane's 160 probes, no background one: {sent:?}");
        assert!(sent.iter().all(|&owner| owner == "interactive"));
        assert_eq!(scheduler.end_batch(), BatchEnd { used: 160, unused: 96 });
        bucket.give_back(96);
        assert!(scheduler.poll_finished(now).is_none(), "the interactive lane waits for its replies");
        scheduler.cancel_where(|owner| *owner == "interactive");
        let finished = scheduler.poll_finished(now).unwrap();
        assert_eq!((finished.owner, finished.reason), ("interactive", FinishReason::Cancelled));
        assert_eq!(finished.progress, LaneProgress { newly_sent: 160, round: 0 });
        // The debt (160 probes less the tokens earned before) holds background back for about
        // 14 ms at 10,000/s.
        assert_eq!(scheduler.grant(now + Duration::from_millis(8), 256, &mut bucket), 0);
        assert!(scheduler.grant(now + Duration::from_millis(20), 256, &mut bucket) > 0);
        assert!(scheduler.poll_transmit(now + Duration::from_millis(20)).is_some());
    }

    #[test]
    fn a_deferred_probe_goes_out_first_and_a_forgone_one_is_not_counted() {
        let mut scheduler = Scheduler::new();
        scheduler.add(core("80"), "job", Priority::Background, None, SECOND);
        let mut bucket = unlimited();
        scheduler.grant(SECOND, 4, &mut bucket);
        let (lane, first) = scheduler.poll_transmit(SECOND).unwrap();
        scheduler.defer(lane, first);
        assert_eq!(scheduler.tokens_left(), 4, "a deferred probe gives its token back");
        assert_eq!(scheduler.poll_transmit(SECOND).unwrap().1, first, "it goes out first next time");
        let (lane, _) = scheduler.poll_transmit(SECOND).unwrap();
        scheduler.forgo(lane);
        assert_eq!(scheduler.end_batch(), BatchEnd { used: 1, unused: 3 });
        let mut reported = Vec::new();
        scheduler.poll_progress(|owner, progress| reported.push((*owner, progress)));
        assert_eq!(reported, vec![("job", LaneProgress { newly_sent: 1, round: 0 })]);
        // A carried probe keeps a lane alive until it is sent, unless the lane is cancelled.
        scheduler.grant(SECOND, 1, &mut bucket);
        let (lane, probe) = scheduler.poll_transmit(SECOND).unwrap();
        scheduler.defer(lane, probe);
        assert!(scheduler.poll_finished(Duration::from_secs(3600)).is_none());
        scheduler.cancel_all();
        assert_eq!(scheduler.poll_finished(Duration::from_secs(3600)).unwrap().reason, FinishReason::Cancelled);
        assert!(scheduler.is_empty());
    }
}
