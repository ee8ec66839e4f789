//! One scan job: which probe to send next, and what a reply means.
//!
//! A job is split in two along the thread boundary of the I/O layer:
//!
//! * [`JobCore`] is the schedule, owned and mutated by the sender thread alone. It walks the
//!   job's shard of the permutation in rounds: round 0 sends every probe, each later round (up to
//!   `retries`) starts `retry_gap` after the previous one ended and re-sends only the probes still
//!   unknown in the state table. After the last round it waits `wait` for late replies. It ends as
//!   soon as every probe has an answer, at its deadline, or when cancelled.
//! * [`ReplyMatcher`] is immutable and shared (`Arc`) with the receiver thread: it maps a
//!   [`Classified`] reply back to its probe index, checks the cookie, and records the state in the
//!   lock-free [`StateTable`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use synwatch_wire::ReplyRepr;

use crate::cookie::{CookieKey, ProbeCookie, SourcePortRange};
use crate::permutation::{Permutation, Shard};
use crate::table::{PortState, RecordOutcome, StateTable};
use crate::targets::TargetSpace;

/// The knobs of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSettings {
    /// How many times an unanswered probe is sent again (default 2).
    pub retries: u32,
    /// Time between the end of one round and the start of the next (default 1 s).
    pub retry_gap: Duration,
    /// Time to wait for late replies after the last send (default 1 s).
    pub wait: Duration,
    /// The permutation seed. Shards of one scan must share it.
    pub seed: u64,
    /// Which shard of the permutation this job sends.
    pub shard: Shard,
}

impl Default for JobSettings {
    fn default() -> JobSettings {
        JobSettings {
            retries: 2,
            retry_gap: Duration::from_secs(1),
            wait: Duration::from_secs(1),
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
    /// Target port.
    pub port: u16,
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

/// A reply reduced to what matching needs, independent of any job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    /// Our address the probe came from.
    pub local: IpAddr,
    /// Our source port.
    pub local_port: u16,
    /// The probed address.
    pub remote: IpAddr,
    /// The probed port.
    pub remote_port: u16,
    /// The probe's sequence number as implied by the reply (ack − 1, or the quoted one).
    pub probe_sequence: u32,
    /// The state this reply means.
    pub state: PortState,
    /// The echoed TCP timestamp of a SYN-ACK (our send time in microseconds).
    pub timestamp_echo: Option<u32>,
}

/// Decides what a parsed packet means, before knowing which job it belongs to.
///
/// * SYN-ACK → open; RST with ACK → closed; ICMP/ICMPv6 destination unreachable quoting a TCP
///   segment → filtered (every code: network, host, protocol, port unreachable and the
///   administratively prohibited ones all mean the port cannot be reached).
/// * Anything to a port outside our source range, our own outgoing SYNs, or other TCP segments
///   are not replies: `None`.
pub fn classify_reply(reply: &ReplyRepr, ports: SourcePortRange) -> Option<Classified> {
    match reply {
        ReplyRepr::Tcp(tcp) => {
            if !ports.contains(tcp.destination_port) {
                return None;
            }
            let state = if tcp.is_syn_ack() {
                PortState::Open
            } else if tcp.is_rst() && tcp.flags & synwatch_wire::reply::tcp_flags::ACK != 0 {
                PortState::Closed
            } else {
                return None;
            };
            Some(Classified {
                local: tcp.destination,
                local_port: tcp.destination_port,
                remote: tcp.source,
                remote_port: tcp.source_port,
                probe_sequence: tcp.acknowledgement.wrapping_sub(1),
                state,
                timestamp_echo: if state == PortState::Open { tcp.timestamp_echo } else { None },
            })
        }
        ReplyRepr::Unreachable(icmp) => {
            if !ports.contains(icmp.probe.source_port) {
                return None;
            }
            Some(Classified {
                local: icmp.probe.source,
                local_port: icmp.probe.source_port,
                remote: icmp.probe.destination,
                remote_port: icmp.probe.destination_port,
                probe_sequence: icmp.probe.sequence,
                state: PortState::Filtered,
                timestamp_echo: None,
            })
        }
    }
}

/// The result of offering a classified reply to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMatch {
    /// The (address, port) is not in this job's space, or the local address is not the job's.
    NotInJob,
    /// It is in the space but the cookie does not match: forged, stale, or another job's.
    BadCookie,
    /// A valid reply; `outcome` says whether it was the first answer for `index`.
    Matched {
        /// The probe index.
        index: u64,
        /// First answer or duplicate.
        outcome: RecordOutcome,
    },
}

/// The part of a job shared with the receiver thread.
#[derive(Debug)]
pub struct ReplyMatcher {
    space: Arc<TargetSpace>,
    cookie_key: CookieKey,
    sources: [Option<IpAddr>; 2],
    table: StateTable,
}

impl ReplyMatcher {
    /// The job's target space.
    pub fn space(&self) -> &TargetSpace {
        &self.space
    }

    /// The job's state table.
    pub fn table(&self) -> &StateTable {
        &self.table
    }

    /// The cookie key.
    pub fn cookie_key(&self) -> &CookieKey {
        &self.cookie_key
    }

    /// Our source address for a family, if the job has targets of that family.
    pub fn source_for(&self, ipv6: bool) -> Option<IpAddr> {
        self.sources[usize::from(ipv6)]
    }

    /// Validates `reply` against this job and records it.
    #[inline]
    pub fn offer(&self, reply: &Classified) -> ReplyMatch {
        if self.source_for(reply.remote.is_ipv6()) != Some(reply.local) {
            return ReplyMatch::NotInJob;
        }
        let Some(index) = self.space.index_of(reply.remote, reply.remote_port) else {
            return ReplyMatch::NotInJob;
        };
        let expected = self.cookie_key.cookie(reply.local, reply.remote, reply.remote_port);
        if expected.source_port != reply.local_port || expected.sequence != reply.probe_sequence {
            return ReplyMatch::BadCookie;
        }
        ReplyMatch::Matched { index, outcome: self.table.record(index, reply.state) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Sending,
    BetweenRounds { next_round_at: Duration },
    Waiting { until: Duration },
    Finished(FinishReason),
}

/// How far into a job's shard [`first_probe_of_family`] looks for a probe of a family.
const FIRST_PROBE_SEARCH: u64 = 1 << 16;

/// The first probe of the job's shard (in its permutation order) whose address is of the given
/// family, among the shard's first 65,536: the probe the job sends first for that family, so
/// sending it early (to make the kernel resolve a next hop) probes nothing outside the job.
/// `None` when the family is absent or rarer than that.
pub fn first_probe_of_family(space: &TargetSpace, settings: &JobSettings, ipv6: bool) -> Option<(IpAddr, u16)> {
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
}

impl JobCore {
    /// A job over `space`, sending from `source_v4` / `source_v6` (needed for each family the
    /// space has), keyed by `cookie_key`, ending at `deadline` at the latest.
    pub fn new(
        space: Arc<TargetSpace>,
        settings: JobSettings,
        cookie_key: CookieKey,
        sources: [Option<IpAddr>; 2],
        deadline: Option<Duration>,
    ) -> JobCore {
        let len = space.len();
        let permutation = Permutation::new(len, settings.seed);
        let shard_size = settings.shard.size(len);
        let table = StateTable::new(len);
        let matcher = Arc::new(ReplyMatcher { space, cookie_key, sources, table });
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
        self.shard_size.saturating_sub(self.matcher.table.answered())
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
        let reason = if self.outstanding() == 0 {
            FinishReason::AllAnswered
        } else if self.deadline.is_some_and(|deadline| now >= deadline) {
            FinishReason::DeadlineReached
        } else if matches!(self.phase, Phase::Waiting { until } if now >= until) {
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
                    if let Some(probe) = self.next_probe_of_round() {
                        self.probes_sent += 1;
                        return NextStep::Send(probe);
                    }
                    self.phase = if self.round < self.settings.retries {
                        Phase::BetweenRounds { next_round_at: now + self.settings.retry_gap }
                    } else {
                        Phase::Waiting { until: now + self.settings.wait }
                    };
                }
                Phase::BetweenRounds { next_round_at } => {
                    if now < next_round_at {
                        return NextStep::WaitUntil(self.capped_by_deadline(next_round_at));
                    }
                    self.round += 1;
                    self.next_in_round = 0;
                    self.phase = Phase::Sending;
                }
                Phase::Waiting { until } => {
                    if now < until {
                        return NextStep::WaitUntil(self.capped_by_deadline(until));
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

    /// The next probe of the current round, skipping (in retry rounds) answered ones.
    fn next_probe_of_round(&mut self) -> Option<Probe> {
        let table = &self.matcher.table;
        while self.next_in_round < self.lane_size {
            let position = self.lane.position(self.next_in_round);
            self.next_in_round += 1;
            let index = self.permutation.at(position);
            if self.round > 0 && table.get(index) != PortState::Unknown {
                continue;
            }
            let (address, port) = self.matcher.space.probe_at(index)?;
            let source = self.matcher.source_for(address.is_ipv6())?;
            let cookie = self.matcher.cookie_key.cookie(source, address, port);
            return Some(Probe { index, address, port, source, cookie, round: self.round });
        }
        None
    }
}
