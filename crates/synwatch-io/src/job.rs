//! A job as the engine runs it: the request, the state its owner, its sending threads and the
//! receiver share, the owner's handle, and what a thread is told about a new lane.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use synwatch_engine::{
    EvidenceCounts, FinishReason, JobCore, JobSettings, LaneProgress, Permutation, Port, PortState, Priority,
    ReplyMatcher, StateTable, Suspect, TargetSpace, TimingReport,
};
use synwatch_wire::PayloadTable;

use crate::counters::Counters;
use crate::paths::Route;
use crate::route::Path;

/// One answer, as streamed to a job's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeResult {
    /// Probe index in the job's space.
    pub index: u64,
    /// Target address.
    pub address: IpAddr,
    /// Target port (and its protocol).
    pub port: Port,
    /// Open, closed or filtered.
    pub state: PortState,
    /// Round-trip time, when the reply echoed our timestamp (SYN-ACKs of most hosts).
    pub rtt: Option<Duration>,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSummary {
    /// Why it ended.
    pub reason: FinishReason,
    /// Probes sent, retries included.
    pub probes_sent: u64,
    /// Time from submission to the end.
    pub duration: Duration,
    /// How fast the first round went out: what the job actually sent at (see [`SendSpan`]).
    pub first_round: SendSpan,
    /// The round trips the job measured and the last timeout it used.
    pub timing: TimingReport,
    /// Its canaries in figures.
    pub evidence: EvidenceCounts,
    /// Hosts judged suspect, per reason in [`Suspect::ALL`]'s order.
    pub hosts_suspect: [u64; 2],
}

/// The probes of a job's first round (every probe once) and the time from the first of them
/// to the last, as the sending threads took them from the schedule. Each batch is stamped when
/// its tokens are taken, so the span misses the last batch's own sending time: with batches of
/// `b` probes the rate is high by at most `b` over the round's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendSpan {
    /// Probes sent in the first round.
    pub probes: u64,
    /// From the first batch to the last batch of the round.
    pub duration: Duration,
}

impl SendSpan {
    /// Probes per second, or `None` when the round was a single batch (no span to divide by).
    pub fn rate(&self) -> Option<f64> {
        (self.probes > 0 && !self.duration.is_zero()).then(|| self.probes as f64 / self.duration.as_secs_f64())
    }
}

/// A job to run.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// What to scan.
    pub space: Arc<TargetSpace>,
    /// Retries, waits, seed, shard.
    pub settings: JobSettings,
    /// Give up after this long, whatever is left.
    pub timeout: Option<Duration>,
    /// Stream each answer to [`JobHandle::results`].
    pub stream_results: bool,
    /// Interactive jobs go before background ones.
    pub priority: Priority,
    /// The job's own cap in probes per second, under the engine's global one.
    pub rate: Option<u64>,
    /// The payloads of its UDP probes; `None`: the built-in ones.
    pub payloads: Option<Arc<PayloadTable>>,
}

impl JobRequest {
    /// A background job without its own rate cap, with the built-in UDP payloads.
    pub fn new(space: Arc<TargetSpace>, settings: JobSettings, timeout: Option<Duration>) -> JobRequest {
        JobRequest {
            space,
            settings,
            timeout,
            stream_results: false,
            priority: Priority::Background,
            rate: None,
            payloads: None,
        }
    }
}

/// The hosts a job judged suspect, by address.
pub(crate) type SuspectList = Arc<[(IpAddr, Suspect)]>;

/// A job's shared state: what the owner's handle, the sender (or connect) thread and the
/// receiver thread all see.
pub(crate) struct JobState {
    pub(crate) id: u64,
    pub(crate) settings: JobSettings,
    pub(crate) matcher: Arc<ReplyMatcher>,
    pub(crate) shard_size: u64,
    pub(crate) results: Option<Sender<ProbeResult>>,
    pub(crate) cancel: AtomicBool,
    pub(crate) probes_sent: AtomicU64,
    pub(crate) round: AtomicU32,
    /// When the first batch of probes was taken, in nanoseconds since the engine's epoch
    /// (`u64::MAX` until then), the last batch of the first round, and the first round's probes
    /// published so far: [`JobSummary::first_round`].
    pub(crate) first_batch_at: AtomicU64,
    pub(crate) first_round_last_batch_at: AtomicU64,
    pub(crate) first_round_sent: AtomicU64,
    /// Lanes not yet finished; the thread that finishes the last one retires the job.
    pub(crate) lanes_left: AtomicUsize,
    /// The job's end reason so far, combined over its finished lanes.
    pub(crate) reason: Mutex<Option<FinishReason>>,
    pub(crate) submitted: Instant,
    pub(crate) summary: Mutex<Option<JobSummary>>,
    /// The hosts judged suspect, drawn once when the job is reported finished.
    pub(crate) suspects: Mutex<Option<SuspectList>>,
    pub(crate) finished: Condvar,
    pub(crate) priority: Priority,
    /// Each lane's share of the job's own rate cap.
    pub(crate) lane_rate: Option<u64>,
    /// The control channels of the sender threads holding the job's lanes: the receiver wakes
    /// them when the last probe is answered, so the job ends at once instead of at the
    /// sender's next poll.
    pub(crate) wakers: Vec<Sender<Control>>,
    pub(crate) woken: AtomicBool,
    /// Woken again once the canaries of an answered job are answered too.
    pub(crate) woken_settled: AtomicBool,
    /// connect() attempts of the job still open, over all its lanes.
    pub(crate) attempts_in_flight: AtomicUsize,
}

impl JobState {
    /// Adds a lane's progress to the job's counters; `at` is when its batch was taken (since
    /// Notes the round in which probe `index` (of `port`) got its first answer, `state`: a UDP
    /// port unreachable first drawn by a retry is evidence of an ICMP rate limit
    /// ([`synwatch_engine::ReplyMatcher::note_closed_on_retry`]). The job's round is the latest
    /// its lanes published, so an answer to a first-round probe that arrives after the retries
    /// began counts too: late port unreachables are rare, and one alone flags no host.
    pub(crate) fn note_first_answer_round(&self, index: u64, port: Port, state: PortState) {
        if state == PortState::Closed && port.is_udp() && self.round.load(Ordering::Relaxed) > 0 {
            self.matcher.note_closed_on_retry(index);
        }
    }

    /// the engine's epoch), for the first round's send span. Done once per batch, so that
    /// threads do not contend for the counters' cache lines per probe.
    pub(crate) fn publish_progress(&self, progress: LaneProgress, at: Duration) {
        if progress.newly_sent == 0 {
            return;
        }
        self.probes_sent.fetch_add(progress.newly_sent, Ordering::Relaxed);
        self.round.fetch_max(progress.round, Ordering::Relaxed);
        let at = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX - 1);
        self.first_batch_at.fetch_min(at, Ordering::Relaxed);
        if progress.round == 0 {
            self.first_round_sent.fetch_add(progress.newly_sent, Ordering::Relaxed);
            self.first_round_last_batch_at.fetch_max(at, Ordering::Relaxed);
        }
    }

    /// Counts a probe's first answer, already recorded in the job's table, streams it to the
    /// owner when asked, and wakes the job's sender threads when it was the last one missing.
    /// A canary's answer is evidence, not a result: it is counted apart and not streamed.
    pub(crate) fn first_answer(&self, counters: &Counters, result: ProbeResult) {
        let canary = self.matcher.is_canary(result.index);
        let counter = match result.state {
            _ if canary => &counters.replies_canary,
            PortState::Open => &counters.replies_open,
            PortState::Closed => &counters.replies_closed,
            _ => &counters.replies_filtered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Only SYN jobs have sender threads to wake (a connect() thread records its own answers):
        // when the last probe is answered (the canaries of its open hosts are sent at once
        // then), and when the last canary is.
        if !self.wakers.is_empty() && self.matcher.table().answered() >= self.shard_size {
            let settled = self.matcher.evidence().settled();
            if !self.woken.swap(true, Ordering::AcqRel) | (settled && !self.woken_settled.swap(true, Ordering::AcqRel))
            {
                for waker in &self.wakers {
                    let _ = waker.try_send(Control::Wake);
                }
            }
        }
        if canary {
            return;
        }
        if let Some(results) = &self.results {
            let _ = results.send(result);
        }
    }

    /// Reports the job finished to its owner at `now`, once no receiver batch can still be
    /// taking samples into it: the summary gets the job's timing, and the engine's memory what
    /// the job learned.
    pub(crate) fn report_finished(&self, mut summary: JobSummary, now: Duration) {
        summary.timing = self.matcher.timing_report();
        summary.evidence = self.matcher.evidence().counts();
        let suspects = self.draw_suspects();
        for (_, reason) in suspects.iter() {
            summary.hosts_suspect[reason.index()] += 1;
        }
        *self.suspects.lock() = Some(suspects);
        self.matcher.remember(now);
        *self.summary.lock() = Some(summary);
        self.finished.notify_all();
    }
}

impl JobState {
    /// The verdicts of the matcher's evidence, by address.
    fn draw_suspects(&self) -> SuspectList {
        let hosts = self.matcher.space().hosts();
        self.matcher
            .suspects()
            .into_iter()
            .filter_map(|(host, reason)| Some((hosts.address_at(host)?, reason)))
            .collect()
    }
}

/// The owner's side of a job.
pub struct JobHandle {
    state: Arc<JobState>,
    results: Option<Receiver<ProbeResult>>,
    paths: Vec<(Path, &'static str)>,
}

impl JobHandle {
    pub(crate) fn new(
        state: Arc<JobState>,
        results: Option<Receiver<ProbeResult>>,
        paths: Vec<(Path, &'static str)>,
    ) -> JobHandle {
        JobHandle { state, results, paths }
    }
}

impl std::fmt::Debug for JobHandle {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("JobHandle").field("id", &self.state.id).finish()
    }
}

/// A job's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Probes sent, retries included.
    pub sent: u64,
    /// Probes answered.
    pub answered: u64,
    /// Probes in the job's shard.
    pub total: u64,
    /// Current round (0 = first pass).
    pub round: u32,
}

impl JobHandle {
    /// The job's engine-wide id.
    pub fn id(&self) -> u64 {
        self.state.id
    }

    /// The paths the job's probes take, with the transmitter used for each.
    pub fn paths(&self) -> &[(Path, &'static str)] {
        &self.paths
    }

    /// Asks the engine to stop the job; it ends with [`FinishReason::Cancelled`].
    pub fn cancel(&self) {
        self.state.cancel.store(true, Ordering::Release);
    }

    /// The job's summary once it has ended.
    pub fn summary(&self) -> Option<JobSummary> {
        *self.state.summary.lock()
    }

    /// Waits for the end of the job.
    pub fn wait(&self) -> JobSummary {
        let mut summary = self.state.summary.lock();
        loop {
            if let Some(summary) = *summary {
                return summary;
            }
            self.state.finished.wait(&mut summary);
        }
    }

    /// Waits at most `timeout` for the end of the job.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<JobSummary> {
        let mut summary = self.state.summary.lock();
        if summary.is_none() {
            self.state.finished.wait_for(&mut summary, timeout);
        }
        *summary
    }

    /// Progress so far.
    pub fn progress(&self) -> Progress {
        Progress {
            sent: self.state.probes_sent.load(Ordering::Relaxed),
            answered: self.state.matcher.table().answered(),
            total: self.state.shard_size,
            round: self.state.round.load(Ordering::Relaxed),
        }
    }

    /// The stream of answers (when requested). It carries each probe's first answer once;
    /// probes that never answered are not in it (they are unknown in the table, reported
    /// filtered). Once [`JobHandle::wait`] returned, everything is in the channel.
    pub fn results(&self) -> Option<&Receiver<ProbeResult>> {
        self.results.as_ref()
    }

    /// The indices of the job's shard that have no answer (after the end: the filtered ones
    /// that never replied), in index order for a whole scan and permutation order for a shard.
    pub fn unanswered(&self) -> Box<dyn Iterator<Item = u64> + '_> {
        let table = self.table();
        let len = self.space().len();
        let shard = self.state.settings.shard;
        if shard.count == 1 {
            return Box::new((0..len).filter(move |&index| table.get(index) == PortState::Unknown));
        }
        let permutation = Permutation::new(len, self.state.settings.seed);
        Box::new(
            (0..shard.size(len))
                .map(move |k| permutation.at(shard.position(k)))
                .filter(move |&index| table.get(index) == PortState::Unknown),
        )
    }

    /// The hosts whose open ports are not trusted, with the reason, in host order (see
    /// [`synwatch_engine::classify_host`]): drawn once when the job ended; before that, from
    /// the evidence so far.
    pub fn suspects(&self) -> Vec<(IpAddr, Suspect)> {
        match &*self.state.suspects.lock() {
            Some(suspects) => suspects.to_vec(),
            None => self.state.draw_suspects().to_vec(),
        }
    }

    /// The job's state table.
    pub fn table(&self) -> &StateTable {
        self.state.matcher.table()
    }

    /// The hosts (indices into the job's host set) that answered port unreachable to retries on
    /// two or more UDP ports: their ICMP errors look rate-limited.
    pub fn hosts_closed_on_retries(&self) -> Vec<u64> {
        self.state.matcher.hosts_closed_on_retries()
    }

    /// The job's target space.
    pub fn space(&self) -> &TargetSpace {
        self.state.matcher.space()
    }
}

/// A lane of a job for a sending thread, with the routes of the job's families.
pub(crate) struct NewJob {
    pub(crate) core: JobCore,
    pub(crate) state: Arc<JobState>,
    pub(crate) routes: [Option<Route>; 2],
}

/// A message to a sending thread.
pub(crate) enum Control {
    /// A lane to send.
    Add(Box<NewJob>),
    /// A job of this thread may have ended; look now.
    Wake,
}
