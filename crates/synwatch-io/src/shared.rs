//! What the engine's threads share: the clock's epoch, the global rate cap, the list of live
//! jobs the receiver matches replies against, the receiver's phase, and the counters; and the
//! end of a job over all its lanes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use synwatch_engine::{FinishReason, RttMemory, Scheduler, TimingReport, TokenBucket};

use crate::counters::Counters;
use crate::job::{JobState, JobSummary, SendSpan};

pub(crate) struct Shared {
    pub(crate) epoch: Instant,
    /// The global rate cap, shared by the sender threads.
    pub(crate) bucket: Mutex<TokenBucket>,
    pub(crate) stop: AtomicBool,
    pub(crate) jobs: RwLock<Arc<Vec<Arc<JobState>>>>,
    /// Odd while the receiver processes a batch against a snapshot of `jobs`, even while it
    /// waits for packets (holding no snapshot). Incremented with `SeqCst` around each batch.
    pub(crate) receiver_phase: AtomicU64,
    pub(crate) counters: Counters,
    pub(crate) next_job_id: AtomicU64,
    /// The round trips learned by finished jobs, for the next ones.
    pub(crate) rtt_memory: Arc<RttMemory>,
}

/// What a sending thread keeps with each lane of its scheduler: at least the job's shared state.
pub(crate) trait LaneOwner {
    fn job(&self) -> &JobState;
}

impl Shared {
    /// Ends a thread's batch: gives the unused tokens back to the global bucket (locking it
    /// only then), publishes what each lane sent, and returns how many tokens were used.
    pub(crate) fn end_batch<T: LaneOwner>(&self, scheduler: &mut Scheduler<T>, now: Duration) -> u32 {
        let batch = scheduler.end_batch();
        if batch.unused > 0 {
            self.bucket.lock().give_back(batch.unused);
        }
        scheduler.poll_progress(|owner, progress| owner.job().publish_progress(progress, now));
        batch.used
    }

    pub(crate) fn new(bucket: TokenBucket) -> Shared {
        Shared {
            epoch: Instant::now(),
            bucket: Mutex::new(bucket),
            stop: AtomicBool::new(false),
            jobs: RwLock::new(Arc::new(Vec::new())),
            receiver_phase: AtomicU64::new(0),
            counters: Counters::default(),
            next_job_id: AtomicU64::new(1),
            rtt_memory: Arc::new(RttMemory::new()),
        }
    }

    /// The engine's clock: time since its epoch, as the scheduler counts it.
    pub(crate) fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Adds a job to the receiver's list.
    pub(crate) fn register(&self, state: &Arc<JobState>) {
        let mut jobs = self.jobs.write();
        let mut list = Vec::clone(&jobs);
        list.push(Arc::clone(state));
        *jobs = Arc::new(list);
    }

    /// Records that one lane of a job ended for `reason`. When it was the job's last lane,
    /// removes the job from the receiver's list and returns the job's summary (the caller
    /// reports it, see [`JobState::report_finished`]).
    pub(crate) fn lane_finished(&self, state: &Arc<JobState>, reason: FinishReason) -> Option<JobSummary> {
        let reason = {
            let mut combined = state.reason.lock();
            let reason = combined.map_or(reason, |so_far| so_far.most_telling(reason));
            *combined = Some(reason);
            reason
        };
        if state.lanes_left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return None;
        }
        {
            let mut jobs = self.jobs.write();
            let list: Vec<Arc<JobState>> = jobs.iter().filter(|job| !Arc::ptr_eq(job, state)).cloned().collect();
            *jobs = Arc::new(list);
        }
        let (first, last) =
            (state.first_batch_at.load(Ordering::Relaxed), state.first_round_last_batch_at.load(Ordering::Relaxed));
        Some(JobSummary {
            // Filled in by `JobState::report_finished`, once the receiver is past the job.
            timing: TimingReport::default(),
            evidence: Default::default(),
            hosts_suspect: [0; 2],
            reason,
            probes_sent: state.probes_sent.load(Ordering::Relaxed),
            duration: state.submitted.elapsed(),
            first_round: SendSpan {
                probes: state.first_round_sent.load(Ordering::Relaxed),
                duration: Duration::from_nanos(last.saturating_sub(first)),
            },
        })
    }
}
