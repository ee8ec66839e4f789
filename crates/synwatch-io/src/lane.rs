//! One lane of a job as a sending thread holds it: the schedule (`JobCore`), the job's shared
//! state, a probe carried over from a full batch, the time the lane next has something to do,
//! and progress not yet published. The SYN sender and the connect() threads both drive their
//! lanes through this type, so round-robin, progress publication and the end-of-lane rule are
//! written once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use synwatch_engine::job::FinishReason;
use synwatch_engine::{JobCore, NextStep, Probe};

use crate::engine::JobState;

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
}

impl Lane {
    pub(crate) fn new(core: JobCore, state: Arc<JobState>) -> Lane {
        Lane { core: Box::new(core), state, carried: None, wake_at: Duration::ZERO, unpublished_sent: 0 }
    }

    /// Adds the probes sent since the last call to the job's shared counters.
    pub(crate) fn publish_progress(&mut self) {
        if self.unpublished_sent > 0 {
            self.state.probes_sent.fetch_add(self.unpublished_sent, Ordering::Relaxed);
            self.state.round.fetch_max(self.core.round(), Ordering::Relaxed);
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

/// The next probe due at `now`, round-robin over `lanes` from `cursor`, with its lane's
/// position; `None` when no lane has one (each lane that is waiting records when it wakes).
pub(crate) fn next_due_probe<L: AsMut<Lane>>(
    lanes: &mut [L],
    cursor: &mut usize,
    now: Duration,
) -> Option<(usize, Probe)> {
    let count = lanes.len();
    for _ in 0..count {
        let position = *cursor % count;
        *cursor = cursor.wrapping_add(1);
        let lane = lanes[position].as_mut();
        if lane.wake_at > now {
            continue;
        }
        if let Some(probe) = lane.carried.take() {
            return Some((position, probe));
        }
        match lane.core.next_step(now) {
            NextStep::Send(probe) => return Some((position, probe)),
            NextStep::WaitUntil(time) => lane.wake_at = time,
            NextStep::Done(_) => {}
        }
    }
    None
}
