//! One scan job: which probe to send next, and what a reply means.
//!
//! A job is split in two along the thread boundary of the I/O layer:
//!
//! * [`JobCore`] is the schedule, owned and mutated by the sender thread alone. It walks the
//!   job's shard of the permutation in rounds: round 0 sends every probe, each later round
//!   re-sends only the probes still unknown in the state table. Rounds `1..=retries` re-send
//!   every unknown probe; up to `host_up_retries` more rounds re-send only those of hosts that
//!   answered on some port (an up host's silence is more likely loss than a filter). After the
//!   last round it waits for late replies. It ends as soon as every probe has an answer, at its
//!   deadline, or when cancelled.
//! * Canaries (see [`crate::evidence`]): from round 1 on, when the walk passes the first open
//!   port of a host (the lowest scanned port answered SYN-ACK), it sends that host's canaries
//!   still to send: the first one in rounds `1..=retries + 1`, the others, once it answered
//!   SYN-ACK, up to round `retries + 2` (one round more than the probes' when needed). A job
//!   is not "all answered" until every host that answered SYN-ACK was sent canaries and they
//!   are concluded (one answered RST, or all SYN-ACK); when only canaries never sent remain,
//!   the next round starts at once, since a canary's first send waits for nothing.
//! * [`ReplyMatcher`] (in `matcher.rs`) is the half shared with the receiver thread.
//!
//! The time between rounds and the wait at the end are, by default ([`TimeSetting::Auto`]),
//! learned from those round trips. At the end of each round the core surveys the groups
//! ([`GroupKey`]) that still have unknown probes; the next round starts when the slowest of
//! those groups' timeouts has passed since the round's last send (so every probe is retried no
//! sooner than its group's timeout), and the job's wait ends when `wait_factor` times that
//! timeout has passed since the last send, re-evaluated then in case late replies raised an
//! estimate, and at most `max_wait` after the last send. A fixed `retry_gap` or `wait` replaces
//! the learned time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use synwatch_wire::PayloadTable;

use crate::cookie::{CookieKey, ProbeCookie};
use crate::evidence::{DEFAULT_CANARIES, MAX_CANARIES, canary_ports};
use crate::matcher::ReplyMatcher;
use crate::permutation::{Permutation, Shard};
use crate::ports::Port;
use crate::table::PortState;
use crate::targets::TargetSpace;
use crate::timing::{GroupKey, RttMemory, TimeSetting, TimingBounds};

/// The most extra retries a host that answered can get.
pub const MAX_HOST_UP_RETRIES: u32 = 8;

/// The default [`JobSettings::udp_host_interval`]: a little over Linux's one ICMP error a
/// second per peer (`net.ipv4.icmp_ratelimit`), so that a paced retry always finds a token.
pub const DEFAULT_UDP_HOST_INTERVAL: Duration = Duration::from_millis(1200);

/// The knobs of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSettings {
    /// How many times an unanswered probe is sent again (default 2).
    pub retries: u32,
    /// How many more times an unanswered probe of a host that answered on another port is sent
    /// again (default 2, at most [`MAX_HOST_UP_RETRIES`]).
    pub host_up_retries: u32,
    /// Time between the end of one round and the start of the next (default: learned).
    pub retry_gap: TimeSetting,
    /// Time to wait for late replies after the last send (default: learned).
    pub wait: TimeSetting,
    /// The bounds of the learned times.
    pub timing: TimingBounds,
    /// Canary ports per host that answered SYN-ACK (default 3, at most [`MAX_CANARIES`]; 0
    /// turns canaries off).
    pub canaries: u32,
    /// The least time between two UDP retries to one host that answered (0: none). Hosts
    /// rate-limit their ICMP port unreachable (Linux: six, then one a second per peer), so a
    /// closed port's retry sent sooner would go unanswered and look `open|filtered`. The first
    /// round is never paced, and neither are hosts that answered nothing.
    pub udp_host_interval: Duration,
    /// The permutation seed. Shards of one scan must share it.
    pub seed: u64,
    /// Which shard of the permutation this job sends.
    pub shard: Shard,
}

impl Default for JobSettings {
    fn default() -> JobSettings {
        JobSettings {
            retries: 2,
            host_up_retries: 2,
            retry_gap: TimeSetting::Auto,
            wait: TimeSetting::Auto,
            timing: TimingBounds::DEFAULT,
            canaries: DEFAULT_CANARIES,
            udp_host_interval: DEFAULT_UDP_HOST_INTERVAL,
            seed: 0,
            shard: Shard::WHOLE,
        }
    }
}

/// Why a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// Every probe of the shard got an answer.
    AllAnswered,
    /// All rounds were sent and the wait for late replies is over.
    WaitOver,
    /// The job's deadline passed first.
    DeadlineReached,
    /// Cancelled by its owner.
    Cancelled,
}

impl FinishReason {
    /// The end reason of a job from the reasons of two of its lanes: the most telling one wins
    /// (cancelled, then deadline, then a wait that ran out; "all answered" only if both say so).
    pub fn most_telling(self, other: FinishReason) -> FinishReason {
        let rank = |reason: FinishReason| match reason {
            FinishReason::AllAnswered => 0,
            FinishReason::WaitOver => 1,
            FinishReason::DeadlineReached => 2,
            FinishReason::Cancelled => 3,
        };
        if rank(other) > rank(self) { other } else { self }
    }
}

/// A probe to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Index in the target space (and the state table).
    pub index: u64,
    /// Target address.
    pub address: IpAddr,
    /// Target port (and its protocol).
    pub port: Port,
    /// Our source address for this family.
    pub source: IpAddr,
    /// Source port and sequence number.
    pub cookie: ProbeCookie,
    /// 0 for the first send, then 1, 2, ... for retries.
    pub round: u32,
}

/// What the sender should do for this job now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Send this probe (it costs one token).
    Send(Probe),
    /// Nothing to send before this time.
    WaitUntil(Duration),
    /// The job is over.
    Done(FinishReason),
}

/// How many groups the survey at a round's end lists; beyond them the fallback timeout
/// stands in for the rest.
const SURVEY_GROUP_CAPACITY: usize = 1 << 16;

/// The groups of a lane's unknown probes at the end of a round, and whether the next round
/// has a probe to send.
#[derive(Debug, Clone, Default)]
struct Survey {
    groups: Vec<GroupKey>,
    /// More groups than [`SURVEY_GROUP_CAPACITY`] had unknown probes.
    overflow: bool,
    next_round_has_probes: bool,
    /// Some host whose first open port this lane walks has a canary without an answer.
    next_round_has_canaries: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Sending,
    /// The next round starts at `next_round_at`; a learned gap is re-evaluated at
    /// `recheck_at`, since the estimates arrive with the replies of the round just sent.
    BetweenRounds {
        next_round_at: Duration,
        recheck_at: Duration,
    },
    /// Waiting for late replies until `until`; a learned wait is re-evaluated at `recheck_at`
    /// and when it runs out (a late reply may have raised an estimate), up to `latest`.
    Waiting {
        until: Duration,
        latest: Duration,
        recheck_at: Duration,
    },
    Finished(FinishReason),
}

/// How far into a job's shard [`first_probe_of_family`] looks for a probe of a family.
const FIRST_PROBE_SEARCH: u64 = 1 << 16;

/// The first probe of the job's shard (in its permutation order) whose address is of the given
/// family, among the shard's first 65,536: the probe the job sends first for that family, so
/// sending it early (to make the kernel resolve a next hop) probes nothing outside the job.
/// `None` when the family is absent or rarer than that.
pub fn first_probe_of_family(space: &TargetSpace, settings: &JobSettings, ipv6: bool) -> Option<(IpAddr, Port)> {
    let len = space.len();
    let permutation = Permutation::new(len, settings.seed);
    let shard = settings.shard;
    (0..shard.size(len).min(FIRST_PROBE_SEARCH))
        .filter_map(|k| space.probe_at(permutation.at(shard.position(k))))
        .find(|(address, _)| address.is_ipv6() == ipv6)
}

/// The sender-side schedule of one job.
#[derive(Debug)]
pub struct JobCore {
    matcher: Arc<ReplyMatcher>,
    permutation: Permutation,
    settings: JobSettings,
    /// Probes in the job's whole shard: "everything answered" is measured against this.
    shard_size: u64,
    /// The part of the shard this core walks: the shard itself, or one lane of it.
    lane: Shard,
    /// Probes in `lane`.
    lane_size: u64,
    round: u32,
    next_in_round: u64,
    phase: Phase,
    deadline: Option<Duration>,
    probes_sent: u64,
    /// When the lane last sent a probe.
    last_send: Duration,
    /// The survey of the last round's end.
    survey: Survey,
    /// The host whose canaries are being sent, and the next slot to look at.
    canary_cursor: Option<(u64, usize)>,
    /// UDP retries held back by the per-host pacing: (when, probe index), earliest first.
    paced: BinaryHeap<Reverse<(Duration, u64)>>,
    /// Per paced host: when its next UDP retry may go (cleared at each round's end).
    host_next_udp: HashMap<u64, Duration>,
}

impl JobCore {
    /// A job over `space`, sending from `source_v4` / `source_v6` (needed for each family the
    /// space has), keyed by `cookie_key`, ending at `deadline` at the latest, with a memory of
    /// its own (see [`JobCore::with_memory`]).
    pub fn new(
        space: Arc<TargetSpace>,
        settings: JobSettings,
        cookie_key: CookieKey,
        sources: [Option<IpAddr>; 2],
        deadline: Option<Duration>,
    ) -> JobCore {
        JobCore::with_memory(space, settings, cookie_key, sources, deadline, Arc::new(RttMemory::new()))
    }

    /// [`JobCore::new`], with timeouts falling back on (and, at the end, teaching) the engine's
    /// `memory` of round trips.
    pub fn with_memory(
        space: Arc<TargetSpace>,
        settings: JobSettings,
        cookie_key: CookieKey,
        sources: [Option<IpAddr>; 2],
        deadline: Option<Duration>,
        memory: Arc<RttMemory>,
    ) -> JobCore {
        let len = space.len();
        let permutation = Permutation::new(len, settings.seed);
        let shard_size = settings.shard.size(len);
        let settings = JobSettings {
            host_up_retries: settings.host_up_retries.min(MAX_HOST_UP_RETRIES),
            canaries: settings.canaries.min(MAX_CANARIES),
            ..settings
        };
        let canaries = canary_ports(settings.seed, space.ports(), settings.canaries);
        let matcher = Arc::new(ReplyMatcher::new(space, cookie_key, sources, settings.timing, memory, canaries));
        JobCore {
            matcher,
            permutation,
            settings,
            shard_size,
            lane: settings.shard,
            lane_size: shard_size,
            round: 0,
            next_in_round: 0,
            phase: Phase::Sending,
            deadline,
            probes_sent: 0,
            last_send: Duration::ZERO,
            survey: Survey::default(),
            canary_cursor: None,
            paced: BinaryHeap::new(),
            host_next_udp: HashMap::new(),
        }
    }

    /// Splits this (not yet started) job into `count` lanes for `count` sender threads. Lane `t`
    /// walks shard positions `t, t + count, t + 2·count, ...` of the job's shard, so the lanes
    /// are disjoint and together send exactly the job's shard. They share the matcher and its
    /// table: each lane's retry rounds skip probes answered to any lane, and every lane ends
    /// with `AllAnswered` as soon as the whole shard is answered. Each lane keeps its own round
    /// timing, so a slow lane does not hold back the retries of a fast one.
    pub fn into_lanes(self, count: u64) -> Vec<JobCore> {
        let count = count.max(1);
        let shard = self.settings.shard;
        let total = self.permutation.len();
        (0..count)
            .map(|lane_index| {
                let lane = Shard { index: shard.index + shard.count * lane_index, count: shard.count * count };
                JobCore {
                    matcher: Arc::clone(&self.matcher),
                    permutation: self.permutation.clone(),
                    lane,
                    lane_size: lane.size(total),
                    survey: Survey::default(),
                    paced: BinaryHeap::new(),
                    host_next_udp: HashMap::new(),
                    ..self
                }
            })
            .collect()
    }

    /// Probes this core itself walks per round (the shard, or its lane of it).
    pub fn lane_size(&self) -> u64 {
        self.lane_size
    }

    /// The shared half, for the receiver.
    pub fn matcher(&self) -> &Arc<ReplyMatcher> {
        &self.matcher
    }

    /// This job with `payloads` for its UDP probes instead of the built-in ones. Call it on a
    /// new job, before [`JobCore::into_lanes`]: a job whose matcher is already shared keeps
    /// its payloads (and a debug build stops).
    pub fn with_payloads(mut self, payloads: Arc<PayloadTable>) -> JobCore {
        match Arc::get_mut(&mut self.matcher) {
            Some(matcher) => matcher.set_payloads(payloads),
            None => debug_assert!(false, "with_payloads on a job whose matcher is shared"),
        }
        self
    }

    /// Probes in this job's shard (what "done" is measured against).
    pub fn shard_size(&self) -> u64 {
        self.shard_size
    }

    /// Probes sent so far, retries included.
    pub fn probes_sent(&self) -> u64 {
        self.probes_sent
    }

    /// The current round (0 = first pass).
    pub fn round(&self) -> u32 {
        self.round
    }

    /// Probes of the shard still without an answer.
    pub fn outstanding(&self) -> u64 {
        self.shard_size.saturating_sub(self.matcher.table().answered())
    }

    /// Whether the job has work before the time its last [`JobCore::next_step`] said to wait
    /// until: it is between rounds, every probe sent is answered, and only canaries never sent
    /// are left (their first send waits for nothing). The scheduler asks this of waiting lanes,
    /// so that the last answer, which the I/O layer wakes the sender for, sends them at once.
    pub fn due_early(&self) -> bool {
        matches!(self.phase, Phase::BetweenRounds { .. })
            && self.outstanding() == 0
            && !self.matcher.evidence().sent_unanswered()
    }

    /// Why the job ended, if it has.
    pub fn finished(&self) -> Option<FinishReason> {
        match self.phase {
            Phase::Finished(reason) => Some(reason),
            _ => None,
        }
    }

    /// Cancels the job; the next [`JobCore::next_step`] returns `Done(Cancelled)`.
    pub fn cancel(&mut self) {
        if self.finished().is_none() {
            self.phase = Phase::Finished(FinishReason::Cancelled);
        }
    }

    /// Checks, without taking a probe, whether the job is over at `now`: everything answered,
    /// deadline passed, or the wait after the last round over. The sender calls this for jobs
    /// it is not currently sending for, so a finished job is noticed promptly.
    pub fn check_finished(&mut self, now: Duration) -> Option<FinishReason> {
        if let Phase::Finished(reason) = self.phase {
            return Some(reason);
        }
        let reason = if self.outstanding() == 0 && self.matcher.evidence().settled() {
            FinishReason::AllAnswered
        } else if self.deadline.is_some_and(|deadline| now >= deadline) {
            FinishReason::DeadlineReached
        } else if self.wait_over(now) {
            FinishReason::WaitOver
        } else {
            return None;
        };
        self.phase = Phase::Finished(reason);
        Some(reason)
    }

    /// Decides what to do at `now`. A returned probe is counted as sent, so call this only when
    /// a token is in hand; use [`JobCore::check_finished`] to poll.
    pub fn next_step(&mut self, now: Duration) -> NextStep {
        if let Some(reason) = self.check_finished(now) {
            return NextStep::Done(reason);
        }
        loop {
            match self.phase {
                Phase::Sending => {
                    if let Some(probe) = self.next_probe_of_round(now) {
                        self.probes_sent += 1;
                        self.last_send = now;
                        return NextStep::Send(probe);
                    }
                    // The walk is over; paced UDP retries still belong to this round.
                    if let Some(&Reverse((due, _))) = self.paced.peek() {
                        return NextStep::WaitUntil(self.capped_by_deadline(due));
                    }
                    self.host_next_udp.clear();
                    self.phase = self.after_round(now);
                }
                Phase::BetweenRounds { mut next_round_at, mut recheck_at } => {
                    if self.outstanding() == 0 && !self.matcher.evidence().sent_unanswered() && now < next_round_at {
                        // Only canaries never sent are left: their first send waits for nothing.
                        next_round_at = now;
                    } else if now >= recheck_at && now < next_round_at {
                        next_round_at = self.last_send + self.learned_timeout(now);
                        recheck_at = now + self.recheck_interval();
                        self.phase = Phase::BetweenRounds { next_round_at, recheck_at };
                    }
                    if now < next_round_at {
                        return NextStep::WaitUntil(self.capped_by_deadline(next_round_at.min(recheck_at)));
                    }
                    self.round += 1;
                    self.next_in_round = 0;
                    self.phase = Phase::Sending;
                }
                Phase::Waiting { .. } => {
                    if !self.wait_over(now) {
                        let Phase::Waiting { until, recheck_at, .. } = self.phase else {
                            unreachable!("still waiting")
                        };
                        return NextStep::WaitUntil(self.capped_by_deadline(until.min(recheck_at)));
                    }
                    self.phase = Phase::Finished(FinishReason::WaitOver);
                }
                Phase::Finished(reason) => return NextStep::Done(reason),
            }
        }
    }

    fn capped_by_deadline(&self, time: Duration) -> Duration {
        self.deadline.map_or(time, |deadline| time.min(deadline))
    }

    /// Tells the lane, at `now`, that no answer to any probe it has sent can still arrive (the
    /// connect() threads know it: every attempt completed or timed out). A learned gap then
    /// ends at once, and so does a learned wait; fixed ones are kept. Returns whether the lane
    /// has something to do now.
    pub fn settle(&mut self, now: Duration) -> bool {
        match self.phase {
            Phase::BetweenRounds { next_round_at, .. }
                if self.settings.retry_gap == TimeSetting::Auto && now < next_round_at =>
            {
                self.phase = Phase::BetweenRounds { next_round_at: now, recheck_at: now };
                true
            }
            Phase::Waiting { .. } if self.settings.wait == TimeSetting::Auto => {
                self.phase = Phase::Waiting { until: now, latest: now, recheck_at: now };
                true
            }
            _ => false,
        }
    }

    /// The last round: `retries`, plus `host_up_retries` for the probes of up hosts.
    fn last_round(&self) -> u32 {
        self.settings.retries + self.settings.host_up_retries
    }

    /// The last round that sends canaries: the first canary has the rounds `1..=retries + 1`
    /// ([`JobCore::first_canary_round_allows`]), the others (sent once the first answered
    /// SYN-ACK, usually from round 2) one round more.
    fn last_canary_round(&self) -> u32 {
        self.settings.retries + 2
    }

    /// Whether round `round` may send a host's first canary.
    fn first_canary_round_allows(&self, round: u32) -> bool {
        round <= self.settings.retries + 1
    }

    /// Whether probe `index` is the first open port of its host: the one whose walk sends the
    /// host's canaries.
    fn is_first_open_of_host(&self, index: u64) -> bool {
        let table = self.matcher.table();
        if self.matcher.evidence().canary_ports().is_empty() || table.get(index) != PortState::Open {
            return false;
        }
        let ports = self.matcher.space().ports().len() as u64;
        // Canaries check SYN-ACKs: a UDP answer sends none (TCP ports come first).
        if !self.matcher.space().ports().port_at((index % ports) as usize).is_some_and(Port::is_tcp) {
            return false;
        }
        let first = index - index % ports;
        (first..index).all(|lower| table.get(lower) != PortState::Open)
    }

    /// Whether the host of probe `index` has canaries for round `round` to send (it is not
    /// concluded, and its first canary answered SYN-ACK or may still be sent), and whether it
    /// was sent canaries before.
    fn canaries_unanswered(&self, index: u64, round: u32) -> Option<bool> {
        let host = index / self.matcher.space().ports().len() as u64;
        let evidence = self.matcher.evidence();
        let first_answered_open = evidence.canary_state(host, 0) == PortState::Open;
        (!evidence.concluded(host) && (first_answered_open || self.first_canary_round_allows(round)))
            .then(|| evidence.canaried(host))
    }

    /// Whether round `round` sends probe `index` (round 0 sends every probe).
    fn sends_in_round(&self, round: u32, index: u64) -> bool {
        round == 0
            || (self.matcher.table().get(index) == PortState::Unknown
                && (round <= self.settings.retries || self.matcher.host_up(index)))
    }

    /// The slowest timeout, at `now`, of the groups the last survey found unknown probes in.
    fn learned_timeout(&self, now: Duration) -> Duration {
        self.matcher.slowest_timeout(&self.survey.groups, self.survey.overflow, now).0
    }

    /// How often a learned gap or wait is re-evaluated: half the minimum timeout.
    fn recheck_interval(&self) -> Duration {
        self.settings.timing.min / 2
    }

    /// The phase after the sends of a round: the gap before the next round, or the wait.
    fn after_round(&mut self, now: Duration) -> Phase {
        let next_round = self.round + 1;
        self.survey = self.survey(next_round);
        let probes_next = next_round <= self.last_round() && self.survey.next_round_has_probes;
        let canaries_next = next_round <= self.last_canary_round() && self.survey.next_round_has_canaries;
        if probes_next || canaries_next {
            return match self.settings.retry_gap {
                TimeSetting::Fixed(gap) => Phase::BetweenRounds { next_round_at: now + gap, recheck_at: Duration::MAX },
                TimeSetting::Auto => Phase::BetweenRounds {
                    next_round_at: self.last_send + self.learned_timeout(now),
                    recheck_at: now + self.recheck_interval(),
                },
            };
        }
        match self.settings.wait {
            TimeSetting::Fixed(wait) => {
                Phase::Waiting { until: now + wait, latest: now + wait, recheck_at: Duration::MAX }
            }
            TimeSetting::Auto if self.survey.groups.is_empty() && !self.survey.overflow => {
                // Nothing of this lane is unknown: no reply to wait for.
                Phase::Waiting { until: now, latest: now, recheck_at: now }
            }
            TimeSetting::Auto => {
                let latest = self.last_send + self.settings.timing.max_wait;
                let until = (self.last_send + self.learned_timeout(now) * self.settings.timing.wait_factor).min(latest);
                Phase::Waiting { until, latest, recheck_at: now + self.recheck_interval() }
            }
        }
    }

    /// Whether the wait for late replies is over at `now`. A learned wait is re-evaluated
    /// every [`JobCore::recheck_interval`] and when it runs out.
    fn wait_over(&mut self, now: Duration) -> bool {
        let Phase::Waiting { until, latest, recheck_at } = self.phase else {
            return false;
        };
        if self.settings.wait.fixed().is_some() {
            return now >= until;
        }
        if now >= latest {
            return true;
        }
        if now < until && now < recheck_at {
            return false;
        }
        let renewed = (self.last_send + self.learned_timeout(now) * self.settings.timing.wait_factor).min(latest);
        if renewed <= now {
            return true;
        }
        self.phase = Phase::Waiting { until: renewed, latest, recheck_at: now + self.recheck_interval() };
        false
    }

    /// The groups with unknown probes in the lane, and whether round `next_round` has a probe.
    fn survey(&self, next_round: u32) -> Survey {
        let mut groups = HashSet::new();
        let mut survey = Survey::default();
        for position_in_lane in 0..self.lane_size {
            let index = self.permutation.at(self.lane.position(position_in_lane));
            if self.is_first_open_of_host(index)
                && let Some(sent_before) = self.canaries_unanswered(index, next_round)
            {
                survey.next_round_has_canaries = true;
                // Canaries sent and unanswered are waited for like the host's own probes.
                if sent_before
                    && let Some((address, _)) = self.matcher.space().probe_at(index)
                    && groups.len() < SURVEY_GROUP_CAPACITY
                {
                    groups.insert(GroupKey::of(address));
                }
            }
            if self.matcher.table().get(index) != PortState::Unknown {
                continue;
            }
            if !survey.next_round_has_probes && self.sends_in_round(next_round, index) {
                survey.next_round_has_probes = true;
            }
            let Some((address, _)) = self.matcher.space().probe_at(index) else {
                continue;
            };
            if groups.len() < SURVEY_GROUP_CAPACITY {
                groups.insert(GroupKey::of(address));
            } else if !groups.contains(&GroupKey::of(address)) {
                survey.overflow = true;
            }
        }
        survey.groups = groups.into_iter().collect();
        survey
    }

    /// The next probe of the current round, skipping (in retry rounds) answered ones and, in
    /// the host-up rounds, those of hosts that never answered. The probe is stamped with `now`.
    fn next_probe_of_round(&mut self, now: Duration) -> Option<Probe> {
        loop {
            if let Some(canary) = self.next_canary(now) {
                return Some(canary);
            }
            if let Some(&Reverse((due, index))) = self.paced.peek()
                && due <= now
            {
                self.paced.pop();
                // Answered meanwhile (to another lane's probe, or late): nothing to send.
                if self.matcher.table().get(index) != PortState::Unknown {
                    continue;
                }
                return self.probe_at(index, now);
            }
            if self.next_in_round >= self.lane_size {
                return None;
            }
            let position = self.lane.position(self.next_in_round);
            self.next_in_round += 1;
            let index = self.permutation.at(position);
            if (1..=self.last_canary_round()).contains(&self.round) && self.is_first_open_of_host(index) {
                self.canary_cursor = Some((index / self.matcher.space().ports().len() as u64, 0));
            }
            if self.round > self.last_round() || !self.sends_in_round(self.round, index) {
                continue;
            }
            if let Some(slot) = self.udp_pace_slot(index, now)
                && slot > now
            {
                self.paced.push(Reverse((slot, index)));
                continue;
            }
            return self.probe_at(index, now);
        }
    }

    /// The probe `index`, stamped with `now`, in the current round.
    fn probe_at(&mut self, index: u64, now: Duration) -> Option<Probe> {
        let (address, port) = self.matcher.space().probe_at(index)?;
        let source = self.matcher.source_for(address.is_ipv6())?;
        let cookie = self.matcher.cookie_key().cookie(source, address, port).stamped(now);
        Some(Probe { index, address, port, source, cookie, round: self.round })
    }

    /// For a UDP retry to a host that answered, the time its slot of the per-host pacing
    /// begins (taking the slot); `None` for every other probe. Each lane keeps its own books,
    /// so a host's interval is multiplied by the job's lanes.
    fn udp_pace_slot(&mut self, index: u64, now: Duration) -> Option<Duration> {
        let interval = self.settings.udp_host_interval;
        if self.round == 0 || interval.is_zero() || !self.matcher.host_up(index) {
            return None;
        }
        let ports = self.matcher.space().ports().len() as u64;
        let port = self.matcher.space().ports().port_at((index % ports) as usize)?;
        if !port.is_udp() {
            return None;
        }
        let lanes = (self.lane.count / self.settings.shard.count.max(1)).max(1);
        let next = self.host_next_udp.entry(index / ports).or_insert(now);
        let slot = (*next).max(now);
        *next = slot + interval * lanes as u32;
        Some(slot)
    }

    /// The next unanswered canary of the host under the canary cursor.
    fn next_canary(&mut self, now: Duration) -> Option<Probe> {
        let (host, first_slot) = self.canary_cursor.take()?;
        let evidence = self.matcher.evidence();
        let first_allowed = self.first_canary_round_allows(self.round);
        if let Some(slot) = evidence.slots_to_send(host).find(|&slot| slot >= first_slot && (slot > 0 || first_allowed))
        {
            let port = Port::tcp(evidence.canary_ports()[slot]);
            let address = self.matcher.space().hosts().address_at(host)?;
            let source = self.matcher.source_for(address.is_ipv6())?;
            self.canary_cursor = Some((host, slot + 1));
            evidence.note_canary_sent(host, slot);
            let cookie = self.matcher.cookie_key().cookie(source, address, port).stamped(now);
            let index = self.matcher.canary_index(host, slot);
            return Some(Probe { index, address, port, source, cookie, round: self.round });
        }
        None
    }
}
