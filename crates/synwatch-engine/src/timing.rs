//! Round-trip times learned from the network, and the timeouts they give.
//!
//! Every validated reply (SYN-ACK, RST, ICMP unreachable) is a round-trip sample: the time
//! since the probe it answers was sent, read from the probe's own stamp (see
//! [`crate::cookie::ProbeCookie::stamped`]) or, for SYN-ACKs, from the echoed TCP timestamp.
//! Because each send carries its own stamp, a reply to a retry is measured from the retry and
//! a reply to the first send from the first send: TCP's retransmission ambiguity (Karn's
//! problem) does not arise, and every reply can be used.
//!
//! * [`RttEstimate`]: a smoothed round trip and its variation, updated as RFC 6298 (Jacobson
//!   and Karels) does, and the timeout `srtt + 4·rttvar` clamped to [`TimingBounds`]. A sample
//!   is clamped to `[0, max]` before it is used, so a reply claiming 0 or an hour moves an
//!   estimate by at most one bounded step, never past the bounds.
//! * [`GroupKey`]: the network group an estimate is kept for, an IPv4 /24 or an IPv6 /48: the
//!   longest prefixes the Internet's routing carries (operators filter longer ones), so the
//!   addresses of one group share a route and, mostly, a round trip; a longer IPv6 prefix
//!   (/64) would split one site into groups too sparse to learn from.
//! * [`RttTable`]: one job's estimates, per group (bounded) and for the whole job.
//! * [`RttMemory`]: the engine's estimates across jobs (bounded, aged out), so that the next
//!   scan of a network starts from what the last one learned. Nothing is persisted: one
//!   scan's first replies rebuild it.
//!
//! The timeout of a group falls back, when the group has no sample yet, to the group's
//! estimate in the engine's memory, then the job's estimate, then the engine's, then
//! [`TimingBounds::initial`] (1 s, as nmap starts).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use parking_lot::Mutex;

/// The limits of every timeout and wait the engine derives from round trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimingBounds {
    /// The timeout before any sample (nmap's initial timeout: 1 s).
    pub initial: Duration,
    /// The shortest timeout (nmap's default minimum: 100 ms). Also the least a round waits.
    pub min: Duration,
    /// The longest timeout (nmap's default maximum: 10 s); samples are clamped to it.
    pub max: Duration,
    /// An automatic wait for late replies is this many timeouts of the slowest group.
    pub wait_factor: u32,
    /// The longest automatic wait after the last send.
    pub max_wait: Duration,
}

impl TimingBounds {
    /// The defaults: initial 1 s, timeouts within [100 ms, 10 s], a wait of two timeouts, at
    /// most 10 s.
    pub const DEFAULT: TimingBounds = TimingBounds {
        initial: Duration::from_secs(1),
        min: Duration::from_millis(100),
        max: Duration::from_secs(10),
        wait_factor: 2,
        max_wait: Duration::from_secs(10),
    };

    /// Checks that the bounds are usable: `0 < min <= initial <= max`, a factor of at least 1,
    /// a maximum wait of at least `min`.
    pub fn validate(&self) -> Result<(), String> {
        if self.min.is_zero() {
            return Err("the minimum timeout must be above zero".into());
        }
        if self.min > self.max {
            return Err(format!("the minimum timeout {:?} is above the maximum {:?}", self.min, self.max));
        }
        if self.initial < self.min || self.initial > self.max {
            return Err(format!("the initial timeout {:?} is outside [{:?}, {:?}]", self.initial, self.min, self.max));
        }
        if self.wait_factor == 0 || self.wait_factor > 100 {
            return Err(format!("the wait factor {} is outside 1-100", self.wait_factor));
        }
        if self.max_wait < self.min {
            return Err(format!("the maximum wait {:?} is below the minimum timeout {:?}", self.max_wait, self.min));
        }
        Ok(())
    }

    /// `timeout` clamped to `[min, max]`.
    pub fn clamp(&self, timeout: Duration) -> Duration {
        timeout.clamp(self.min, self.max)
    }
}

impl Default for TimingBounds {
    fn default() -> TimingBounds {
        TimingBounds::DEFAULT
    }
}

/// A fixed time, or one the engine derives from the round trips it measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeSetting {
    /// Derived from the measured round trips (the default).
    #[default]
    Auto,
    /// Fixed by the user.
    Fixed(Duration),
}

impl TimeSetting {
    /// The fixed time, if any.
    pub fn fixed(self) -> Option<Duration> {
        match self {
            TimeSetting::Auto => None,
            TimeSetting::Fixed(time) => Some(time),
        }
    }
}

impl std::fmt::Display for TimeSetting {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeSetting::Auto => formatter.write_str("auto"),
            TimeSetting::Fixed(time) => write!(formatter, "{time:?}"),
        }
    }
}

/// A smoothed round trip and its variation (RFC 6298).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttEstimate {
    /// The smoothed round trip.
    pub srtt: Duration,
    /// Its mean deviation.
    pub rttvar: Duration,
    /// Samples taken into it.
    pub samples: u64,
}

impl RttEstimate {
    /// The estimate after its first sample (RFC 6298 2.2: `srtt = R`, `rttvar = R/2`).
    pub fn first(sample: Duration, bounds: &TimingBounds) -> RttEstimate {
        let sample = sample.min(bounds.max);
        RttEstimate { srtt: sample, rttvar: sample / 2, samples: 1 }
    }

    /// Takes one more sample (RFC 6298 2.3: `rttvar = 3/4 rttvar + 1/4 |srtt - R|`, then
    /// `srtt = 7/8 srtt + 1/8 R`), clamped first to `[0, max]` and to twice the current
    /// timeout. The second clamp keeps a rare straggler (a reply seconds late, behind a
    /// congested middlebox) from multiplying a group's timeout at once, while a real rise of
    /// the round trip still lifts the ceiling with every sample and is followed within a few
    /// dozen (a timeout at least doubles per eight samples at the ceiling).
    pub fn update(&mut self, sample: Duration, bounds: &TimingBounds) {
        let sample = sample.min(bounds.max).min(self.timeout(bounds) * 2);
        let deviation = self.srtt.abs_diff(sample);
        self.rttvar = (self.rttvar * 3 + deviation) / 4;
        self.srtt = (self.srtt * 7 + sample) / 8;
        self.samples = self.samples.saturating_add(1);
    }

    /// The retransmission timeout this estimate gives: `srtt + 4·rttvar` within the bounds.
    pub fn timeout(&self, bounds: &TimingBounds) -> Duration {
        bounds.clamp(self.srtt + self.rttvar * 4)
    }
}

/// Takes `sample` into `estimate`, starting it if there is none.
fn take_sample(estimate: &mut Option<RttEstimate>, sample: Duration, bounds: &TimingBounds) {
    match estimate {
        Some(estimate) => estimate.update(sample, bounds),
        None => *estimate = Some(RttEstimate::first(sample, bounds)),
    }
}

/// The network group of an address: its IPv4 /24 or its IPv6 /48 (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey(u64);

impl GroupKey {
    /// The group `address` belongs to.
    pub fn of(address: IpAddr) -> GroupKey {
        match address {
            // The top bit tells the families apart: a /24 needs 24 bits, a /48 48.
            IpAddr::V4(v4) => GroupKey(u64::from(u32::from(v4) >> 8)),
            IpAddr::V6(v6) => GroupKey((1 << 63) | (u128::from(v6) >> 80) as u64),
        }
    }
}

/// How many groups one job keeps estimates for; replies from further groups still feed the
/// job's own estimate. 65,536 groups are an IPv4 /8 and hold about 3 MiB.
pub const JOB_GROUP_CAPACITY: usize = 1 << 16;

/// One job's round-trip estimates: per group, and over the whole job.
#[derive(Debug, Clone, Default)]
pub struct RttTable {
    groups: HashMap<GroupKey, RttEstimate>,
    job: Option<RttEstimate>,
}

impl RttTable {
    /// Takes a sample from a validated reply of `remote`.
    pub fn record(&mut self, remote: IpAddr, sample: Duration, bounds: &TimingBounds) {
        take_sample(&mut self.job, sample, bounds);
        let key = GroupKey::of(remote);
        if let Some(estimate) = self.groups.get_mut(&key) {
            estimate.update(sample, bounds);
        } else if self.groups.len() < JOB_GROUP_CAPACITY {
            self.groups.insert(key, RttEstimate::first(sample, bounds));
        }
    }

    /// The estimate of one group, if it has samples.
    pub fn group(&self, key: GroupKey) -> Option<RttEstimate> {
        self.groups.get(&key).copied()
    }

    /// The estimate over every sample of the job.
    pub fn job(&self) -> Option<RttEstimate> {
        self.job
    }

    /// Groups with samples.
    pub fn groups_sampled(&self) -> usize {
        self.groups.len()
    }
}

/// How long the engine remembers a group's estimate after it was last measured.
pub const MEMORY_MAX_AGE: Duration = Duration::from_secs(3600);

/// How many groups the engine remembers (about 4 MiB); the oldest go first beyond it.
pub const MEMORY_CAPACITY: usize = 1 << 16;

#[derive(Debug, Default)]
struct MemoryInner {
    groups: HashMap<GroupKey, (RttEstimate, Duration)>,
    overall: Option<(RttEstimate, Duration)>,
}

/// The engine's round-trip estimates across jobs: each group's latest, and the latest job's
/// overall estimate, with the (engine clock) time they were learned. Bounded by
/// [`MEMORY_CAPACITY`] and [`MEMORY_MAX_AGE`].
#[derive(Debug, Default)]
pub struct RttMemory {
    inner: Mutex<MemoryInner>,
}

impl RttMemory {
    /// An empty memory.
    pub fn new() -> RttMemory {
        RttMemory::default()
    }

    /// Keeps what a finished job learned (its estimates replace older ones: the network may
    /// have changed since), at `now`.
    pub fn absorb(&self, table: &RttTable, now: Duration) {
        let mut inner = self.inner.lock();
        if let Some(job) = table.job {
            inner.overall = Some((job, now));
        }
        for (&key, &estimate) in &table.groups {
            inner.groups.insert(key, (estimate, now));
        }
        if inner.groups.len() > MEMORY_CAPACITY {
            inner.groups.retain(|_, (_, learned)| now.saturating_sub(*learned) < MEMORY_MAX_AGE);
        }
        if inner.groups.len() > MEMORY_CAPACITY {
            // Still full of fresh entries: keep the newest half.
            let mut times: Vec<Duration> = inner.groups.values().map(|(_, learned)| *learned).collect();
            times.sort_unstable();
            let cutoff = times[times.len() / 2];
            inner.groups.retain(|_, (_, learned)| *learned > cutoff);
        }
    }

    /// A group's remembered estimate, unless it is older than [`MEMORY_MAX_AGE`].
    pub fn group(&self, key: GroupKey, now: Duration) -> Option<RttEstimate> {
        let inner = self.inner.lock();
        let (estimate, learned) = inner.groups.get(&key)?;
        (now.saturating_sub(*learned) < MEMORY_MAX_AGE).then_some(*estimate)
    }

    /// The latest job's overall estimate, unless it is older than [`MEMORY_MAX_AGE`].
    pub fn overall(&self, now: Duration) -> Option<RttEstimate> {
        let inner = self.inner.lock();
        let (estimate, learned) = inner.overall?;
        (now.saturating_sub(learned) < MEMORY_MAX_AGE).then_some(estimate)
    }

    /// Groups remembered (aged ones included until the next prune).
    pub fn len(&self) -> usize {
        self.inner.lock().groups.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.inner.lock().overall.is_none()
    }
}

/// The timeout of a group: its own estimate in `table`, else its estimate in `memory`, else
/// the job's, else the engine's, else [`TimingBounds::initial`]; with where it came from.
pub fn group_timeout(
    table: &RttTable,
    memory: &RttMemory,
    key: GroupKey,
    bounds: &TimingBounds,
    now: Duration,
) -> (Duration, TimeoutSource) {
    if let Some(estimate) = table.group(key) {
        return (estimate.timeout(bounds), TimeoutSource::Group);
    }
    if let Some(estimate) = memory.group(key, now) {
        return (estimate.timeout(bounds), TimeoutSource::RememberedGroup);
    }
    fallback_timeout(table, memory, bounds, now)
}

/// The timeout of a group nothing is known of: the job's estimate, else the engine's, else
/// [`TimingBounds::initial`].
pub fn fallback_timeout(
    table: &RttTable,
    memory: &RttMemory,
    bounds: &TimingBounds,
    now: Duration,
) -> (Duration, TimeoutSource) {
    if let Some(estimate) = table.job() {
        return (estimate.timeout(bounds), TimeoutSource::Job);
    }
    if let Some(estimate) = memory.overall(now) {
        return (estimate.timeout(bounds), TimeoutSource::Engine);
    }
    (bounds.initial, TimeoutSource::Initial)
}

/// Where a timeout came from, for the summary and `-v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimeoutSource {
    /// The group's own samples in this job.
    Group,
    /// The group's estimate from an earlier job.
    RememberedGroup,
    /// The job's samples over all groups.
    Job,
    /// The engine's latest job's estimate.
    Engine,
    /// No sample anywhere: the initial timeout.
    Initial,
    /// Fixed by the user.
    Fixed,
}

impl TimeoutSource {
    /// A short name for output.
    pub fn name(self) -> &'static str {
        match self {
            TimeoutSource::Group => "group",
            TimeoutSource::RememberedGroup => "remembered",
            TimeoutSource::Job => "job",
            TimeoutSource::Engine => "engine",
            TimeoutSource::Initial => "initial",
            TimeoutSource::Fixed => "fixed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: TimingBounds = TimingBounds::DEFAULT;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn the_estimate_follows_rfc_6298() {
        let mut estimate = RttEstimate::first(ms(100), &BOUNDS);
        assert_eq!((estimate.srtt, estimate.rttvar), (ms(100), ms(50)));
        assert_eq!(estimate.timeout(&BOUNDS), ms(300));
        estimate.update(ms(200), &BOUNDS);
        // rttvar = 3/4·50 + 1/4·100 = 62.5; srtt = 7/8·100 + 1/8·200 = 112.5.
        assert_eq!(estimate.rttvar, Duration::from_micros(62_500));
        assert_eq!(estimate.srtt, Duration::from_micros(112_500));
        assert_eq!(estimate.samples, 2);
        // Steady samples shrink the variation toward zero and the timeout toward the minimum.
        for _ in 0..200 {
            estimate.update(ms(20), &BOUNDS);
        }
        assert!(estimate.srtt.abs_diff(ms(20)) < ms(1), "{estimate:?}");
        assert_eq!(estimate.timeout(&BOUNDS), BOUNDS.min);
    }

    #[test]
    fn a_zero_or_absurd_sample_moves_an_estimate_one_bounded_step() {
        let mut estimate = RttEstimate::first(ms(50), &BOUNDS);
        for _ in 0..30 {
            estimate.update(ms(50), &BOUNDS);
        }
        let before = estimate;
        assert_eq!(before.timeout(&BOUNDS), BOUNDS.min);
        estimate.update(Duration::from_secs(3600), &BOUNDS);
        // Clamped to twice the 100 ms timeout: srtt moves by at most (200 ms - 50 ms) / 8.
        assert!(estimate.srtt <= before.srtt + (ms(200) - ms(50)) / 8 + ms(1), "{estimate:?}");
        assert!(estimate.timeout(&BOUNDS) <= ms(300), "{estimate:?}");
        let mut estimate = before;
        estimate.update(Duration::ZERO, &BOUNDS);
        assert!(estimate.srtt >= before.srtt * 7 / 8);
        assert!(estimate.timeout(&BOUNDS) >= BOUNDS.min);
        let first = RttEstimate::first(Duration::from_secs(86_400), &BOUNDS);
        assert_eq!(first.timeout(&BOUNDS), BOUNDS.max);
    }

    #[test]
    fn a_real_rise_of_the_round_trip_is_followed_and_a_straggler_is_not() {
        let mut estimate = RttEstimate::first(ms(100), &BOUNDS);
        for _ in 0..40 {
            estimate.update(ms(100), &BOUNDS);
        }
        let steady = estimate.timeout(&BOUNDS);
        // One reply 5 s late: the timeout grows, but by a bounded step, not to seconds.
        estimate.update(ms(5000), &BOUNDS);
        assert!(estimate.timeout(&BOUNDS) < steady * 3, "{estimate:?}");
        for _ in 0..20 {
            estimate.update(ms(100), &BOUNDS);
        }
        assert!(estimate.timeout(&BOUNDS) < steady + ms(20), "it decays back: {estimate:?}");
        // The path's round trip moves to 2 s for good: followed within a few dozen samples.
        let mut samples = 0;
        while estimate.srtt < ms(1900) {
            estimate.update(ms(2000), &BOUNDS);
            samples += 1;
            assert!(samples < 80, "{estimate:?}");
        }
        assert!(estimate.timeout(&BOUNDS) >= ms(2000));
    }

    #[test]
    fn groups_are_ipv4_slash_24s_and_ipv6_slash_48s() {
        let key = |text: &str| GroupKey::of(text.parse().unwrap());
        assert_eq!(key("198.18.7.1"), key("198.18.7.254"));
        assert_ne!(key("198.18.7.1"), key("198.18.8.1"));
        assert_eq!(key("2001:2:0:1::1"), key("2001:2:0:ffff::9"));
        assert_ne!(key("2001:2:0::1"), key("2001:2:1::1"));
        // The families never collide: ::c612:701 holds 198.18.7.1's bits.
        assert_ne!(key("198.18.7.1"), key("::c612:701"));
    }

    #[test]
    fn timeouts_fall_back_from_group_to_memory_to_job_to_engine_to_initial() {
        let memory = RttMemory::new();
        let mut table = RttTable::default();
        let here: IpAddr = "198.18.1.1".parse().unwrap();
        let elsewhere: IpAddr = "198.18.2.1".parse().unwrap();
        let now = Duration::from_secs(10);
        assert_eq!(
            group_timeout(&table, &memory, GroupKey::of(here), &BOUNDS, now),
            (ms(1000), TimeoutSource::Initial)
        );
        let mut earlier = RttTable::default();
        earlier.record(elsewhere, ms(400), &BOUNDS);
        memory.absorb(&earlier, now);
        assert_eq!(group_timeout(&table, &memory, GroupKey::of(here), &BOUNDS, now).1, TimeoutSource::Engine);
        assert_eq!(
            group_timeout(&table, &memory, GroupKey::of(elsewhere), &BOUNDS, now),
            (ms(1200), TimeoutSource::RememberedGroup)
        );
        table.record(here, ms(30), &BOUNDS);
        assert_eq!(group_timeout(&table, &memory, GroupKey::of(here), &BOUNDS, now), (ms(100), TimeoutSource::Group));
        // The group's own memory is preferred to this job's other groups.
        assert_eq!(
            group_timeout(&table, &memory, GroupKey::of(elsewhere), &BOUNDS, now).1,
            TimeoutSource::RememberedGroup
        );
        let unknown = GroupKey::of("198.18.3.1".parse().unwrap());
        assert_eq!(group_timeout(&table, &memory, unknown, &BOUNDS, now).1, TimeoutSource::Job);
        // An hour later the memory has aged out.
        let later = now + MEMORY_MAX_AGE;
        assert_eq!(
            group_timeout(&RttTable::default(), &memory, GroupKey::of(elsewhere), &BOUNDS, later).1,
            TimeoutSource::Initial
        );
    }

    #[test]
    fn the_memory_stays_bounded() {
        let memory = RttMemory::new();
        let mut now = Duration::ZERO;
        for chunk in 0..3u32 {
            let mut table = RttTable::default();
            for group in 0..(MEMORY_CAPACITY as u32 / 2 + 1) {
                let address = IpAddr::V4(((chunk * (MEMORY_CAPACITY as u32) + group) << 8).into());
                table.record(address, ms(10), &BOUNDS);
            }
            now += Duration::from_secs(1);
            memory.absorb(&table, now);
            assert!(memory.len() <= MEMORY_CAPACITY, "{}", memory.len());
        }
        // The newest job's groups are all kept.
        let newest = IpAddr::V4(((2 * (MEMORY_CAPACITY as u32) + 5) << 8).into());
        assert!(memory.group(GroupKey::of(newest), now).is_some());
    }

    #[test]
    fn bounds_are_validated() {
        assert!(BOUNDS.validate().is_ok());
        assert!(TimingBounds { min: Duration::ZERO, ..BOUNDS }.validate().is_err());
        assert!(TimingBounds { min: ms(20_000), ..BOUNDS }.validate().is_err());
        assert!(TimingBounds { initial: ms(50), ..BOUNDS }.validate().is_err());
        assert!(TimingBounds { wait_factor: 0, ..BOUNDS }.validate().is_err());
        assert!(TimingBounds { max_wait: ms(10), ..BOUNDS }.validate().is_err());
    }
}
