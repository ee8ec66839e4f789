//! The scan engine's core. It does no I/O and reads no clock.
//!
//! Everything that decides *what* to send and *what a reply means* lives here, driven by a
//! small I/O layer (`synwatch-io`) that owns the sockets and the clock and passes the current
//! time in as a [`std::time::Duration`] since its own epoch. That makes every decision
//! testable deterministically against a simulated network (see `tests/simulated_network.rs`).
//!
//! * [`ports`] and [`targets`]: what to scan, and the index space `host × port`.
//! * [`permutation`]: a keyed full-cycle permutation of that space, with shards.
//! * [`cookie`]: the keyed SipHash that gives each probe its source port and sequence number,
//!   so replies are validated without per-probe state.
//! * [`pacing`]: the token bucket.
//! * [`table`]: the lock-free per-job state table.
//! * [`timing`]: round-trip estimates per network group, job and engine, and the timeouts
//!   they give.
//! * [`evidence`]: canary ports and SYN-ACK fingerprints, and the verdict on a host that
//!   answers SYN-ACK everywhere (SYN proxies, tarpits).
//! * [`job`]: one scan job's schedule (rounds, retries, learned or fixed waits).
//! * [`matcher`]: reply classification and the job's half shared with the receiver (cookie
//!   check, state table, hosts seen up, round-trip samples).
//! * [`scheduler`]: a sending thread's lanes and every decision about them (priorities, rate
//!   caps, round-robin, deferred probes, timeouts, the end of a lane), which the I/O threads and
//!   the simulated network of the tests drive alike.

pub mod cookie;
pub mod evidence;
pub mod job;
pub mod matcher;
pub mod names;
pub mod pacing;
pub mod permutation;
pub mod ports;
pub mod scheduler;
pub mod table;
pub mod targets;
pub mod timing;

pub use cookie::{CookieKey, ProbeCookie, STAMP_BITS, SourcePortRange, stamp_age};
pub use evidence::{
    DEFAULT_CANARIES, EvidenceCounts, EvidenceTable, HostEvidence, MAX_CANARIES, Suspect, SynAckFingerprint,
    canary_ports, classify_host,
};
pub use job::{
    DEFAULT_UDP_HOST_INTERVAL, FinishReason, JobCore, JobSettings, MAX_HOST_UP_RETRIES, NextStep, Probe,
    first_probe_of_family,
};
pub use matcher::{Classified, ReplyCookie, ReplyMatch, ReplyMatcher, TimingReport, classify_reply};
pub use names::{AddressFamily, HostName, TargetItem, parse_target_item, parse_target_item_list};
pub use pacing::TokenBucket;
pub use permutation::{Permutation, Shard};
pub use ports::{Port, PortError, PortSet, Protocol};
pub use scheduler::{BatchEnd, FinishedLane, LaneIndex, LaneProgress, Priority, Scheduler};
pub use table::{PortState, RecordOutcome, StateTable};
pub use targets::{AddressRange, ExclusionPolicy, HostSet, TargetError, TargetSpace};
pub use timing::{GroupKey, RttEstimate, RttMemory, RttTable, TimeSetting, TimeoutSource, TimingBounds};
