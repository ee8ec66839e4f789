//! The scan core driven against a simulated network, deterministically: no sockets, no clock.
//!
//! The simulation plays the I/O layer's part with the production [`Scheduler`] (the type the
//! SYN sender and connect() threads of `synwatch-io` drive): it grants tokens from a bucket,
//! sends what `poll_transmit` hands out, offers replies to every job's matcher as the receiver
//! thread does, and sleeps until `poll_timeout` or the next arrival. The network plays
//! per-(host, port) ground truth, latency with jitter that reorders replies, loss, duplicates,
//! late replies and forged replies.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use synwatch_engine::targets::parse_target;
use synwatch_engine::{
    Classified, CookieKey, EvidenceCounts, ExclusionPolicy, FinishReason, HostSet, JobCore, JobSettings, NextStep,
    Permutation, Port, PortSet, PortState, Priority, Probe, Protocol, RecordOutcome, ReplyCookie, ReplyMatch,
    ReplyMatcher, RttMemory, Scheduler, Shard, SourcePortRange, Suspect, SynAckFingerprint, TargetSpace, TimeSetting,
    TimingBounds, TokenBucket, classify_reply, first_probe_of_family,
};
use synwatch_wire::{PayloadHead, QuotedProbe, QuotedTransport, ReplyRepr, TcpReply, UnreachableReply};

const LOCAL_V4: &str = "198.18.255.1";
const LOCAL_V6: &str = "2001:2:0:ffff::1";

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, probability: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < probability
    }
}

/// What a simulated (host, port) does with a SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Listen,
    Refuse,
    Prohibit,
    Blackhole,
}

impl Behaviour {
    fn expected(self) -> PortState {
        match self {
            Behaviour::Listen => PortState::Open,
            Behaviour::Refuse => PortState::Closed,
            Behaviour::Prohibit | Behaviour::Blackhole => PortState::Filtered,
        }
    }
}

/// A host that answers SYN-ACK on more than its services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Middlebox {
    /// A SYN proxy: SYN-ACK for every port, window 0 and no options.
    Proxy,
    /// A tarpit: SYN-ACK for every port, a tiny window and an MSS option.
    Tarpit,
    /// Not a middlebox: a real host listening on every scanned port and refusing the others.
    ManyServices,
}

struct Network {
    rng: Rng,
    /// Hosts that answer as a [`Middlebox`] instead of by [`Network::behaviour`].
    middleboxes: Vec<(IpAddr, Middlebox)>,
    loss: f64,
    duplicate: f64,
    base_latency: Duration,
    jitter: Duration,
    /// IPv4 /24s (by third octet) with their own base latency.
    group_latency: Vec<(u8, Duration)>,
    /// IPv4 /24s (by third octet) that answer nothing at all.
    silent_groups: Vec<u8>,
    /// Replies in flight, by arrival time (ties broken by a sequence number).
    in_flight: BTreeMap<(Duration, u64), ReplyRepr>,
    sequence: u64,
}

fn third_octet(address: IpAddr) -> Option<u8> {
    match address {
        IpAddr::V4(v4) => Some(v4.octets()[2]),
        IpAddr::V6(_) => None,
    }
}

impl Network {
    fn new(seed: u64, loss: f64, duplicate: f64) -> Network {
        Network {
            rng: Rng(seed | 1),
            middleboxes: Vec::new(),
            loss,
            duplicate,
            base_latency: Duration::from_micros(300),
            jitter: Duration::from_millis(20),
            group_latency: Vec::new(),
            silent_groups: Vec::new(),
            in_flight: BTreeMap::new(),
            sequence: 0,
        }
    }

    fn behaviour(address: IpAddr, port: Port) -> Behaviour {
        let port = port.number;
        let last = match address {
            IpAddr::V4(v4) => v4.octets()[3],
            IpAddr::V6(v6) => v6.octets()[15],
        };
        match (last as u16 + port) % 11 {
            0 | 1 => Behaviour::Listen,
            2 => Behaviour::Prohibit,
            3 => Behaviour::Blackhole,
            _ => Behaviour::Refuse,
        }
    }

    fn reply_to(probe: &Probe, timestamp: u32) -> Option<ReplyRepr> {
        let tcp = |flags: u8, sequence: u32, echo: Option<u32>| {
            ReplyRepr::Tcp(TcpReply {
                source: probe.address,
                destination: probe.source,
                source_port: probe.port.number,
                destination_port: probe.cookie.source_port,
                sequence,
                acknowledgement: probe.cookie.sequence.wrapping_add(1),
                flags,
                timestamp_echo: echo,
                window: 64240,
                has_options: true,
                ttl: 64,
            })
        };
        match Network::behaviour(probe.address, probe.port) {
            Behaviour::Listen => Some(tcp(0x12, 12345, Some(timestamp))),
            Behaviour::Refuse => Some(tcp(0x14, 0, None)),
            Behaviour::Prohibit => Some(ReplyRepr::Unreachable(UnreachableReply {
                reporter: probe.address,
                code: 13,
                is_icmpv6: probe.address.is_ipv6(),
                probe: QuotedProbe {
                    transport: QuotedTransport::Tcp,
                    source: probe.source,
                    destination: probe.address,
                    source_port: probe.cookie.source_port,
                    destination_port: probe.port.number,
                    sequence: probe.cookie.sequence,
                    payload: PayloadHead::of(&[]),
                },
            })),
            Behaviour::Blackhole => None,
        }
    }

    fn middlebox_reply(probe: &Probe, kind: Middlebox, timestamp: u32) -> Option<ReplyRepr> {
        let scanned = [22, 80, 443, 8080, 8443].contains(&probe.port.number);
        let (flags, window, has_options) = match kind {
            Middlebox::Proxy => (0x12, 0, false),
            Middlebox::Tarpit => (0x12, 16, true),
            Middlebox::ManyServices if scanned => (0x12, 64240, true),
            Middlebox::ManyServices => (0x14, 0, false),
        };
        Some(ReplyRepr::Tcp(TcpReply {
            source: probe.address,
            destination: probe.source,
            source_port: probe.port.number,
            destination_port: probe.cookie.source_port,
            sequence: 777,
            acknowledgement: probe.cookie.sequence.wrapping_add(1),
            flags,
            timestamp_echo: (kind == Middlebox::ManyServices && flags == 0x12).then_some(timestamp),
            window,
            has_options,
            ttl: 55,
        }))
    }

    /// Sends a probe at `now`; returns whether its reply (if any) will arrive.
    fn send(&mut self, probe: &Probe, now: Duration) -> bool {
        if self.rng.chance(self.loss) {
            return false;
        }
        let group = third_octet(probe.address);
        if group.is_some_and(|group| self.silent_groups.contains(&group)) {
            return false;
        }
        let middlebox = self.middleboxes.iter().find(|(address, _)| *address == probe.address).map(|&(_, kind)| kind);
        let reply = match middlebox {
            Some(kind) => Network::middlebox_reply(probe, kind, now.as_micros() as u32),
            None => Network::reply_to(probe, now.as_micros() as u32),
        };
        let Some(reply) = reply else {
            return false;
        };
        if self.rng.chance(self.loss) {
            return false;
        }
        let latency = self
            .group_latency
            .iter()
            .find(|(octet, _)| Some(*octet) == group)
            .map_or(self.base_latency, |&(_, latency)| latency);
        let copies = if self.rng.chance(self.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let jitter = Duration::from_nanos(self.rng.next() % self.jitter.as_nanos().max(1) as u64);
            self.sequence += 1;
            self.in_flight.insert((now + latency + jitter, self.sequence), reply);
        }
        true
    }

    fn inject(&mut self, at: Duration, reply: ReplyRepr) {
        self.sequence += 1;
        self.in_flight.insert((at, self.sequence), reply);
    }

    fn next_arrival(&self) -> Option<Duration> {
        self.in_flight.keys().next().map(|&(at, _)| at)
    }

    fn arrivals_until(&mut self, now: Duration) -> Vec<ReplyRepr> {
        let later = self.in_flight.split_off(&(now, u64::MAX));
        let arrived = std::mem::replace(&mut self.in_flight, later);
        arrived.into_values().collect()
    }
}

fn space(targets: &[&str], ports: &str) -> Arc<TargetSpace> {
    let hosts =
        HostSet::build(targets.iter().map(|t| parse_target(t).unwrap()).collect(), vec![], ExclusionPolicy::Default)
            .unwrap();
    Arc::new(TargetSpace::new(hosts, PortSet::parse(ports).unwrap()).unwrap())
}

fn sources() -> [Option<IpAddr>; 2] {
    [Some(LOCAL_V4.parse().unwrap()), Some(LOCAL_V6.parse().unwrap())]
}

/// The default settings without canaries: the tests of scheduling count every probe of the
/// space, and canaries (tested on their own) would add some.
fn no_canaries() -> JobSettings {
    JobSettings { canaries: 0, ..JobSettings::default() }
}

fn job(space: &Arc<TargetSpace>, settings: JobSettings, key: u8) -> JobCore {
    JobCore::new(Arc::clone(space), settings, CookieKey::new([key; 16], SourcePortRange::DEFAULT), sources(), None)
}

/// What one simulated run observed.
#[derive(Default)]
struct RunLog {
    sends_per_index: Vec<HashMap<u64, u32>>,
    delivered: Vec<HashMap<u64, bool>>,
    finished_at: Vec<Duration>,
    reasons: Vec<Option<FinishReason>>,
    matches: Vec<ReplyMatch>,
    last_send: Duration,
    /// Each job's matcher (its space and state table), for checking results after the run.
    matchers: Vec<Arc<ReplyMatcher>>,
    /// Probes each job's core walks per round.
    lane_sizes: Vec<u64>,
    /// The job of each send, in order, with its time.
    send_order: Vec<(usize, Duration)>,
    /// Sent as each job's owner reported it through `poll_progress` and `poll_finished`.
    published_sent: Vec<u64>,
    /// Each job's send times per probe index.
    send_times: Vec<HashMap<u64, Vec<Duration>>>,
}

/// A job for [`run_jobs`]: its core, priority and own rate cap.
struct SimulatedJob {
    core: JobCore,
    priority: Priority,
    rate: Option<u64>,
}

impl From<JobCore> for SimulatedJob {
    fn from(core: JobCore) -> SimulatedJob {
        SimulatedJob { core, priority: Priority::Background, rate: None }
    }
}

/// Runs background jobs to completion under one token bucket.
fn run(jobs: Vec<JobCore>, network: &mut Network, rate: u64) -> RunLog {
    run_jobs(jobs.into_iter().map(SimulatedJob::from).collect(), network, rate, 64)
}

/// Runs jobs to completion on one production [`Scheduler`], the way a sending thread drives it,
/// with batches of `batch` probes of which only the first `batch - 1` fit (the last is deferred
/// to the next batch, as a full ring defers it).
fn run_jobs(jobs: Vec<SimulatedJob>, network: &mut Network, rate: u64, batch: u32) -> RunLog {
    let count = jobs.len();
    let mut log = RunLog {
        sends_per_index: vec![HashMap::new(); count],
        delivered: vec![HashMap::new(); count],
        finished_at: vec![Duration::ZERO; count],
        reasons: vec![None; count],
        matchers: jobs.iter().map(|job| Arc::clone(job.core.matcher())).collect(),
        lane_sizes: jobs.iter().map(|job| job.core.lane_size()).collect(),
        published_sent: vec![0; count],
        send_times: vec![HashMap::new(); count],
        ..RunLog::default()
    };
    let mut bucket = TokenBucket::new(rate, TokenBucket::default_burst(rate, batch), Duration::ZERO);
    let mut scheduler = Scheduler::new();
    for (number, job) in jobs.into_iter().enumerate() {
        scheduler.add(job.core, number, job.priority, job.rate, Duration::ZERO);
    }
    let mut now = Duration::ZERO;
    while !scheduler.is_empty() {
        assert!(now < Duration::from_secs(60), "simulation did not converge");
        for reply in network.arrivals_until(now) {
            let Some(classified) = classify_reply(&reply, SourcePortRange::DEFAULT) else {
                continue;
            };
            let matched = log
                .matchers
                .iter()
                .map(|matcher| (matcher, matcher.offer(&classified, now)))
                .find(|(_, outcome)| !matches!(outcome, ReplyMatch::NotInJob | ReplyMatch::BadCookie));
            // The receiver's part: first answers' round trips go into the job's estimates.
            if let Some((matcher, ReplyMatch::Matched { outcome: RecordOutcome::First, rtt: Some(rtt), .. })) = matched
            {
                matcher.take_samples(&[(classified.remote, rtt)]);
            }
            log.matches.push(matched.map_or(ReplyMatch::BadCookie, |(_, outcome)| outcome));
        }
        while let Some(finished) = scheduler.poll_finished(now) {
            log.reasons[finished.owner] = Some(finished.reason);
            log.finished_at[finished.owner] = now;
            log.published_sent[finished.owner] += finished.progress.newly_sent;
        }
        if scheduler.grant(now, batch, &mut bucket) > 0 {
            let mut room = batch - 1;
            while let Some((lane, probe)) = scheduler.poll_transmit(now) {
                if room == 0 {
                    scheduler.defer(lane, probe);
                    break;
                }
                room -= 1;
                let number = *scheduler.owner(lane);
                *log.sends_per_index[number].entry(probe.index).or_default() += 1;
                let arrives = network.send(&probe, now);
                *log.delivered[number].entry(probe.index).or_default() |= arrives;
                log.last_send = now;
                log.send_order.push((number, now));
                log.send_times[number].entry(probe.index).or_default().push(now);
            }
        }
        bucket.give_back(scheduler.end_batch().unused);
        scheduler.poll_progress(|&number, progress| log.published_sent[number] += progress.newly_sent);
        // Sleep until the scheduler has something to do or a reply arrives, whichever is first
        // (at least 1 µs, as a real clock moves on).
        let wake = scheduler.poll_timeout(now, || bucket.time_until_token(now));
        let arrival = network.next_arrival();
        let next = [wake, arrival].into_iter().flatten().min().unwrap_or(now);
        now = next.max(now + Duration::from_micros(1));
    }
    for number in 0..count {
        let sent: u32 = log.sends_per_index[number].values().sum();
        assert_eq!(log.published_sent[number], u64::from(sent), "job {number}: progress reports match the sends");
    }
    log
}

fn assert_matches_ground_truth(matcher: &ReplyMatcher, only_delivered: Option<&HashMap<u64, bool>>) {
    let space = matcher.space();
    let table = matcher.table();
    for index in 0..space.len() {
        let (address, port) = space.probe_at(index).unwrap();
        if let Some(delivered) = only_delivered
            && !delivered.get(&index).copied().unwrap_or(false)
        {
            continue;
        }
        let expected = Network::behaviour(address, port).expected();
        assert_eq!(table.get(index).finalized(Protocol::Tcp), expected, "{address}:{port}");
    }
}

#[test]
fn perfect_network_classifies_every_probe_exactly() {
    let space = space(&["198.18.0.0/24", "2001:2::/120"], "22,80,443,8080");
    let jobs = vec![job(&space, JobSettings { retries: 2, ..no_canaries() }, 1)];
    let mut network = Network::new(1, 0.0, 0.0);
    let log = run(jobs, &mut network, 50_000);
    assert_matches_ground_truth(&log.matchers[0], None);
    assert_eq!(log.reasons[0], Some(FinishReason::WaitOver), "blackholed probes keep it waiting");
    // Only the blackholed probes were retried, each exactly `retries` more times and, every host
    // having answered on another port, `host_up_retries` more again.
    for (&index, &sends) in &log.sends_per_index[0] {
        let (address, port) = space.probe_at(index).unwrap();
        let expected = if Network::behaviour(address, port) == Behaviour::Blackhole { 5 } else { 1 };
        assert_eq!(sends, expected, "{address}:{port}");
    }
    assert_eq!(log.sends_per_index[0].len() as u64, space.len());
}

#[test]
fn ends_as_soon_as_everything_answered() {
    let space = space_without_blackholes();
    let settings = JobSettings {
        retries: 2,
        retry_gap: TimeSetting::Fixed(Duration::from_secs(1)),
        wait: TimeSetting::Fixed(Duration::from_secs(5)),
        ..no_canaries()
    };
    let jobs = vec![job(&space, settings, 2)];
    let mut network = Network::new(2, 0.0, 0.0);
    let log = run(jobs, &mut network, 100_000);
    assert_eq!(log.reasons[0], Some(FinishReason::AllAnswered));
    let tail = log.finished_at[0] - log.last_send;
    assert!(tail <= Duration::from_millis(25), "finished {tail:?} after the last send");
    assert!(log.sends_per_index[0].values().all(|&sends| sends == 1));
}

/// Hosts of the simulation that answer on each of the chosen ports (no blackholed
/// combination), so a job over them can finish as soon as everything answered.
fn space_without_blackholes() -> Arc<TargetSpace> {
    let ports = [80u16, 81, 82];
    let hosts: Vec<String> = (0..=255u16)
        .filter(|last| ports.iter().all(|port| (last + port) % 11 != 3))
        .map(|last| format!("198.18.2.{last}"))
        .collect();
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    space(&refs, "80,81,82")
}

#[test]
fn with_loss_duplicates_and_reordering_every_delivered_answer_is_right() {
    let space = space(&["198.18.0.0/22"], "22,80,443");
    let jobs = vec![job(&space, JobSettings { retries: 2, ..no_canaries() }, 3)];
    let mut network = Network::new(3, 0.05, 0.1);
    let log = run(jobs, &mut network, 200_000);
    assert_matches_ground_truth(&log.matchers[0], Some(&log.delivered[0]));
    let open_truth = (0..space.len())
        .filter(|&i| {
            let (address, port) = space.probe_at(i).unwrap();
            Network::behaviour(address, port) == Behaviour::Listen
        })
        .count() as u64;
    let open_found = log.matchers[0].table().count(PortState::Open);
    let open_lost_every_time = (0..space.len())
        .filter(|&i| {
            let (address, port) = space.probe_at(i).unwrap();
            Network::behaviour(address, port) == Behaviour::Listen
                && !log.delivered[0].get(&i).copied().unwrap_or(false)
        })
        .count() as u64;
    assert_eq!(open_found + open_lost_every_time, open_truth);
    assert!(log.matchers[0].table().duplicates() > 0, "duplicates were injected");
    // With 5 % loss each way and three attempts, about one in a thousand is lost every time.
    assert!(open_lost_every_time * 100 < open_truth, "{open_lost_every_time} of {open_truth} lost");
}

#[test]
fn forged_stale_and_foreign_replies_are_rejected() {
    let space = space(&["198.18.3.0/28"], "80");
    let jobs = vec![job(
        &space,
        JobSettings { retries: 0, wait: TimeSetting::Fixed(Duration::from_millis(200)), ..no_canaries() },
        4,
    )];
    let mut network = Network::new(4, 1.0, 0.0); // every real probe is lost
    // A reply from a previous run (another key), a forged guess, and one for an address
    // outside the job.
    let stale_key = CookieKey::new([99; 16], SourcePortRange::DEFAULT);
    let local: IpAddr = LOCAL_V4.parse().unwrap();
    let target: IpAddr = "198.18.3.5".parse().unwrap();
    let stale = stale_key.cookie(local, target, Port::tcp(80));
    let forged = |destination_port: u16, acknowledgement: u32, source: IpAddr| {
        ReplyRepr::Tcp(TcpReply {
            source,
            destination: local,
            source_port: 80,
            destination_port,
            sequence: 1,
            acknowledgement,
            flags: 0x12,
            timestamp_echo: None,
            window: 64240,
            has_options: true,
            ttl: 64,
        })
    };
    network.inject(Duration::from_millis(1), forged(stale.source_port, stale.sequence.wrapping_add(1), target));
    network.inject(Duration::from_millis(2), forged(40000, 1, target));
    network.inject(Duration::from_millis(3), forged(40000, 1, "198.18.4.1".parse().unwrap()));
    let log = run(jobs, &mut network, 10_000);
    assert_eq!(log.matchers[0].table().answered(), 0);
    assert_eq!(log.matches, vec![ReplyMatch::BadCookie; 3]);
    assert_eq!(log.matchers[0].timing_report().estimate, None, "a forged reply never touches an estimate");
}

#[test]
fn late_replies_within_the_wait_are_counted() {
    let space = space(&["198.18.4.0/26"], "80,443");
    let settings = JobSettings { retries: 0, wait: TimeSetting::Fixed(Duration::from_millis(500)), ..no_canaries() };
    let jobs = vec![job(&space, settings, 5)];
    let mut network = Network::new(5, 0.0, 0.0);
    network.base_latency = Duration::from_millis(300);
    network.jitter = Duration::from_millis(150);
    let log = run(jobs, &mut network, 100_000);
    assert_matches_ground_truth(&log.matchers[0], None);
}

#[test]
fn several_jobs_on_one_bucket_each_get_exactly_their_own_results() {
    // Two jobs overlap on 198.18.5.0/26 port 80; a third is IPv6. Each has its own key.
    let first = space(&["198.18.5.0/25"], "80");
    let second = space(&["198.18.5.0/26"], "80,443");
    let third = space(&["2001:2::/122"], "22,80");
    let settings = JobSettings { retries: 1, wait: TimeSetting::Fixed(Duration::from_millis(300)), ..no_canaries() };
    let jobs = vec![job(&first, settings, 6), job(&second, settings, 7), job(&third, settings, 8)];
    let mut network = Network::new(6, 0.0, 0.0);
    let log = run(jobs, &mut network, 100_000);
    for matcher in &log.matchers {
        assert_matches_ground_truth(matcher, None);
        let table = matcher.table();
        assert_eq!(table.duplicates(), 0, "a reply was recorded in the wrong job");
    }
}

#[test]
fn shards_together_probe_everything_once() {
    let space = space(&["198.18.6.0/24"], "22,80");
    let mut total = HashMap::new();
    for index in 0..3 {
        let settings = JobSettings {
            retries: 0,
            host_up_retries: 0,
            seed: 77,
            shard: Shard { index, count: 3 },
            wait: TimeSetting::Fixed(Duration::from_millis(50)),
            ..no_canaries()
        };
        let jobs = vec![job(&space, settings, 9)];
        let mut network = Network::new(9, 0.0, 0.0);
        let log = run(jobs, &mut network, 100_000);
        for (probe, sends) in &log.sends_per_index[0] {
            *total.entry(*probe).or_insert(0) += sends;
        }
    }
    assert_eq!(total.len() as u64, space.len());
    assert!(total.values().all(|&sends| sends == 1));
}

#[test]
fn cancel_and_deadline_end_a_job() {
    let space = space(&["198.18.7.0/24"], "80");
    let mut cancelled = job(&space, no_canaries(), 10);
    assert!(matches!(cancelled.next_step(Duration::ZERO), NextStep::Send(_)));
    cancelled.cancel();
    assert_eq!(cancelled.next_step(Duration::ZERO), NextStep::Done(FinishReason::Cancelled));
    let key = CookieKey::new([11; 16], SourcePortRange::DEFAULT);
    let mut bounded = JobCore::new(Arc::clone(&space), no_canaries(), key, sources(), Some(Duration::from_secs(2)));
    while let NextStep::Send(_) = bounded.next_step(Duration::from_secs(1)) {}
    // Nothing answers: the lane re-evaluates its learned gap now and then, and ends at the
    // deadline.
    let mut now = Duration::from_secs(1);
    loop {
        match bounded.next_step(now) {
            NextStep::WaitUntil(wake) => {
                assert!(wake > now && wake <= Duration::from_secs(2), "{wake:?}");
                now = wake;
            }
            NextStep::Done(reason) => {
                assert_eq!((reason, now), (FinishReason::DeadlineReached, Duration::from_secs(2)));
                break;
            }
            NextStep::Send(probe) => panic!("the retry is due after the 1 s initial timeout, not {probe:?}"),
        }
    }
}

#[test]
fn classification_of_each_reply_kind() {
    let ports = SourcePortRange::DEFAULT;
    let local: IpAddr = LOCAL_V4.parse().unwrap();
    let remote: IpAddr = "198.18.0.9".parse().unwrap();
    let tcp = |flags: u8, destination_port: u16| {
        ReplyRepr::Tcp(TcpReply {
            source: remote,
            destination: local,
            source_port: 80,
            destination_port,
            sequence: 5,
            acknowledgement: 101,
            flags,
            timestamp_echo: Some(7),
            window: 64240,
            has_options: true,
            ttl: 64,
        })
    };
    let open = classify_reply(&tcp(0x12, 40000), ports).unwrap();
    assert_eq!((open.state, open.cookie, open.timestamp_echo), (PortState::Open, ReplyCookie::Sequence(100), Some(7)));
    let closed = classify_reply(&tcp(0x14, 40000), ports).unwrap();
    assert_eq!((closed.state, closed.timestamp_echo), (PortState::Closed, None));
    assert_eq!(classify_reply(&tcp(0x04, 40000), ports), None, "RST without ACK cannot answer a SYN");
    assert_eq!(classify_reply(&tcp(0x02, 40000), ports), None, "a SYN is not a reply");
    assert_eq!(classify_reply(&tcp(0x10, 40000), ports), None, "a bare ACK is not a reply");
    assert_eq!(classify_reply(&tcp(0x12, 22), ports), None, "not our source port");
    let icmp = ReplyRepr::Unreachable(UnreachableReply {
        reporter: "198.18.255.2".parse().unwrap(),
        code: 13,
        is_icmpv6: false,
        probe: QuotedProbe {
            transport: QuotedTransport::Tcp,
            source: local,
            destination: remote,
            source_port: 40001,
            destination_port: 443,
            sequence: 9,
            payload: PayloadHead::of(&[]),
        },
    });
    let filtered: Classified = classify_reply(&icmp, ports).unwrap();
    assert_eq!(
        (filtered.state, filtered.remote, filtered.remote_port, filtered.cookie),
        (PortState::Filtered, remote, Port::tcp(443), ReplyCookie::Sequence(9))
    );
}

/// The shard's probe indices, in permutation order.
fn shard_indices(space: &TargetSpace, seed: u64, shard: Shard) -> Vec<u64> {
    let permutation = Permutation::new(space.len(), seed);
    (0..shard.size(space.len())).map(|k| permutation.at(shard.position(k))).collect()
}

#[test]
fn lanes_split_a_shard_into_disjoint_parts_that_share_one_table() {
    let space = space(&["198.18.8.0/23", "2001:2::8:0/120"], "22,80,443");
    let shard = Shard { index: 1, count: 3 };
    let settings = JobSettings { retries: 2, seed: 5, shard, ..no_canaries() };
    let lanes = job(&space, settings, 12).into_lanes(3);
    assert_eq!(lanes.len(), 3);
    let mut network = Network::new(12, 0.0, 0.0);
    let log = run(lanes, &mut network, 100_000);
    // Every probe of the shard went out exactly once, from exactly one lane, and nothing else.
    let mut sent_by = HashMap::new();
    for (lane, sends) in log.sends_per_index.iter().enumerate() {
        assert_eq!(sends.len() as u64, log.lane_sizes[lane]);
        for (&index, &count) in sends {
            // On a loss-free network only the blackholed probes stay unanswered and are retried.
            let (address, port) = space.probe_at(index).unwrap();
            // A host counts as up only if this shard probed one of its answering ports.
            let host_up_rounds = if log.matchers[0].host_up(index) { 2 } else { 0 };
            let rounds = if Network::behaviour(address, port) == Behaviour::Blackhole { 3 + host_up_rounds } else { 1 };
            assert_eq!(count, rounds, "probe {index} sent {count} times");
            assert!(sent_by.insert(index, lane).is_none(), "probe {index} sent by two lanes");
        }
    }
    let mut expected = shard_indices(&space, 5, shard);
    let mut sent: Vec<u64> = sent_by.keys().copied().collect();
    expected.sort_unstable();
    sent.sort_unstable();
    assert_eq!(sent, expected);
    // One table: it holds the answers to every lane's probes.
    assert!(log.reasons.iter().all(|reason| *reason == Some(FinishReason::WaitOver)), "{:?}", log.reasons);
    let table = log.matchers[0].table();
    let blackholed = expected
        .iter()
        .filter(|&&index| {
            let (address, port) = space.probe_at(index).unwrap();
            Network::behaviour(address, port) == Behaviour::Blackhole
        })
        .count() as u64;
    assert!(blackholed > 0);
    assert_eq!(table.answered(), expected.len() as u64 - blackholed);
    for &index in &expected {
        let (address, port) = space.probe_at(index).unwrap();
        assert_eq!(table.get(index).finalized(Protocol::Tcp), Network::behaviour(address, port).expected());
    }
}

#[test]
fn lanes_retry_only_their_own_unanswered_probes() {
    let space = space(&["198.18.10.0/22"], "80,443");
    let settings = JobSettings { retries: 2, seed: 6, ..no_canaries() };
    let lanes = job(&space, settings, 13).into_lanes(2);
    let mut network = Network::new(13, 0.2, 0.0);
    let log = run(lanes, &mut network, 200_000);
    for lane in 0..2 {
        for (&index, &count) in &log.sends_per_index[lane] {
            assert!(!log.sends_per_index[1 - lane].contains_key(&index), "probe {index} sent by both lanes");
            assert!(count <= 5, "probe {index} sent {count} times with 2 retries and 2 host-up retries");
        }
    }
    let retried = log.sends_per_index.iter().flat_map(|sends| sends.values()).filter(|&&count| count > 1).count();
    assert!(retried > 0, "20 % loss must cause retries");
    for (lane, delivered) in log.delivered.iter().enumerate() {
        assert_matches_ground_truth(&log.matchers[lane], Some(delivered));
    }
}

#[test]
fn lanes_of_a_fully_answering_job_all_end_when_the_last_answer_arrives() {
    let space = space_without_blackholes();
    let settings = JobSettings { retries: 2, seed: 7, ..no_canaries() };
    let lanes = job(&space, settings, 14).into_lanes(2);
    let mut network = Network::new(14, 0.0, 0.0);
    let log = run(lanes, &mut network, 100_000);
    assert!(log.reasons.iter().all(|reason| *reason == Some(FinishReason::AllAnswered)), "{:?}", log.reasons);
    assert_eq!(log.finished_at[0], log.finished_at[1]);
    assert!(log.finished_at[0] < log.last_send + Duration::from_millis(100), "no waiting once all answered");
}

#[test]
fn an_interactive_job_overtakes_a_background_scan_and_both_are_exact() {
    let background = space(&["198.18.12.0/22"], "22,80,443");
    let interactive = space(&["198.18.13.0/28"], "80,443");
    let settings = JobSettings { retries: 1, wait: TimeSetting::Fixed(Duration::from_millis(300)), ..no_canaries() };
    let jobs = vec![
        SimulatedJob { core: job(&background, settings, 15), priority: Priority::Background, rate: None },
        SimulatedJob { core: job(&interactive, settings, 16), priority: Priority::Interactive, rate: None },
    ];
    let mut network = Network::new(15, 0.0, 0.0);
    let log = run_jobs(jobs, &mut network, 50_000, 64);
    // The interactive job's first round (32 probes) goes out before any background probe.
    let first: Vec<usize> = log.send_order.iter().take(32).map(|&(job, _)| job).collect();
    assert_eq!(first, vec![1; 32]);
    assert_eq!(log.send_order[32].0, 0);
    for matcher in &log.matchers {
        assert_matches_ground_truth(matcher, None);
    }
    assert!(log.finished_at[1] < log.finished_at[0], "the small interactive job ends first");
}

#[test]
fn a_job_rate_cap_paces_it_under_a_faster_global_cap() {
    let space = space_without_blackholes();
    let settings = JobSettings { retries: 0, wait: TimeSetting::Fixed(Duration::from_millis(100)), ..no_canaries() };
    let probes = space.len();
    let jobs =
        vec![SimulatedJob { core: job(&space, settings, 17), priority: Priority::Background, rate: Some(2_000) }];
    let mut network = Network::new(17, 0.0, 0.0);
    let log = run_jobs(jobs, &mut network, 1_000_000, 64);
    assert_matches_ground_truth(&log.matchers[0], None);
    // The job's bucket starts empty and holds 2 ms of tokens: at 2,000/s the probes take
    // probes / 2000 seconds, although the global cap would allow 1,000,000/s.
    let expected = Duration::from_secs_f64(probes as f64 / 2_000.0);
    let took = log.last_send;
    assert!(took >= expected.mul_f64(0.98) && took <= expected.mul_f64(1.02), "{took:?} for {probes} probes");
}

#[test]
fn probes_deferred_by_full_batches_are_sent_once_and_never_lost() {
    let space = space(&["198.18.14.0/24", "2001:2::14:0/124"], "22,80");
    let settings = JobSettings { retries: 2, ..no_canaries() };
    let jobs = vec![job(&space, settings, 18).into(), job(&space, settings, 19).into()];
    let mut network = Network::new(18, 0.0, 0.0);
    // Batches of 4 of which 3 fit: every batch defers a probe to the next.
    let log = run_jobs(jobs, &mut network, 100_000, 4);
    for (number, matcher) in log.matchers.iter().enumerate() {
        assert_matches_ground_truth(matcher, None);
        assert_eq!(log.sends_per_index[number].len() as u64, space.len());
        for (&index, &sends) in &log.sends_per_index[number] {
            let (address, port) = space.probe_at(index).unwrap();
            let expected = if Network::behaviour(address, port) == Behaviour::Blackhole { 5 } else { 1 };
            assert_eq!(sends, expected, "{address}:{port} of job {number}");
        }
    }
}

#[test]
fn the_first_probe_of_a_family_is_the_one_the_shard_sends_first() {
    let mixed = space(&["198.18.20.0/24", "2001:2::20:0/124"], "22,80");
    for index in 0..3 {
        let shard = Shard { index, count: 3 };
        let settings = JobSettings { seed: 5, shard, retries: 0, ..no_canaries() };
        let mut core = job(&mixed, settings, 20);
        let mut first_sent = [None, None];
        while let NextStep::Send(probe) = core.next_step(Duration::ZERO) {
            first_sent[usize::from(probe.address.is_ipv6())].get_or_insert((probe.address, probe.port));
        }
        for ipv6 in [false, true] {
            let found = first_probe_of_family(&mixed, &settings, ipv6);
            assert_eq!(found, first_sent[usize::from(ipv6)], "shard {index}, IPv6 {ipv6}");
            assert!(found.is_some_and(|(address, _)| address.is_ipv6() == ipv6));
        }
    }
    let v4_only = space(&["198.18.21.0/28"], "80");
    assert_eq!(first_probe_of_family(&v4_only, &no_canaries(), true), None);
}

/// Whether probe `index` of `space` is truly open in the simulation.
fn truly_open(space: &TargetSpace, index: u64) -> bool {
    let (address, port) = space.probe_at(index).unwrap();
    Network::behaviour(address, port) == Behaviour::Listen
}

#[test]
fn retries_and_the_end_follow_the_measured_round_trip() {
    // 150 ms each way and back, 2 ms of jitter: the timeout is about 150 ms, not the 1 s a
    // fixed gap used.
    let space = space(&["198.18.30.0/24"], "22,80,443");
    let settings = JobSettings { retries: 1, host_up_retries: 0, ..no_canaries() };
    let mut network = Network::new(30, 0.0, 0.0);
    network.base_latency = Duration::from_millis(150);
    network.jitter = Duration::from_millis(2);
    let log = run(vec![job(&space, settings, 30)], &mut network, 100_000);
    assert_matches_ground_truth(&log.matchers[0], None);
    let report = log.matchers[0].timing_report();
    let estimate = report.estimate.expect("every answer is a sample");
    assert!(estimate.srtt.abs_diff(Duration::from_millis(151)) < Duration::from_millis(3), "{estimate:?}");
    let (timeout, source) = report.last_timeout.unwrap();
    assert_eq!(source.name(), "group");
    assert!(timeout > Duration::from_millis(150) && timeout < Duration::from_millis(200), "{timeout:?}");
    // Each blackholed probe was retried once, no sooner than the timeout after the round's
    // last send (so after its own send) and well before the old fixed second.
    let first_round_end = log.send_times[0].values().map(|times| times[0]).max().unwrap();
    let mut retried = 0;
    for times in log.send_times[0].values().filter(|times| times.len() == 2) {
        let gap = times[1] - times[0];
        assert!(times[1] >= first_round_end + Duration::from_millis(150), "{times:?}");
        assert!(gap < Duration::from_millis(400), "retried after {gap:?}");
        retried += 1;
    }
    assert!(retried > 0);
    // The end: two timeouts after the last send, not a fixed wait.
    assert_eq!(log.reasons[0], Some(FinishReason::WaitOver));
    let tail = log.finished_at[0] - log.last_send;
    assert!(tail >= Duration::from_millis(300) && tail < Duration::from_millis(420), "waited {tail:?}");
}

#[test]
fn a_silent_group_takes_the_jobs_estimate_and_a_slow_group_is_waited_for() {
    // 198.18.31.0/24 answers in 5 ms, 198.18.32.0/24 in 200 ms, 198.18.33.0/24 never. The slow
    // group's first answers arrive after the retry round went out on the fast group's timeout,
    // but before the wait that timeout gives is over: the wait, re-evaluated, grows to the slow
    // group's. (A group slower than the whole wait the others give is lost: docs/TUNING.md.)
    let space = space(&["198.18.31.0/24", "198.18.32.0/24", "198.18.33.0/24"], "80,443");
    let settings = JobSettings { retries: 1, host_up_retries: 0, ..no_canaries() };
    let mut network = Network::new(31, 0.0, 0.0);
    network.base_latency = Duration::from_millis(5);
    network.jitter = Duration::from_millis(1);
    network.group_latency = vec![(32, Duration::from_millis(200))];
    network.silent_groups = vec![33];
    let log = run(vec![job(&space, settings, 31)], &mut network, 200_000);
    // Every answer of the slow group was waited for.
    for index in 0..space.len() {
        let (address, port) = space.probe_at(index).unwrap();
        let expected = if third_octet(address) == Some(33) {
            PortState::Filtered
        } else {
            Network::behaviour(address, port).expected()
        };
        assert_eq!(log.matchers[0].table().get(index).finalized(Protocol::Tcp), expected, "{address}:{port}");
    }
    // The silent group was retried on the job's estimate (the fast group's answers came first),
    // not at the initial second.
    let silent_retries: Vec<Duration> = log.send_times[0]
        .iter()
        .filter(|(index, _)| third_octet(space.probe_at(**index).unwrap().0) == Some(33))
        .map(|(_, times)| {
            assert_eq!(times.len(), 2, "one retry");
            times[1] - times[0]
        })
        .collect();
    assert!(silent_retries.iter().all(|gap| *gap < Duration::from_millis(300)), "{silent_retries:?}");
    // The end: twice the slow group's timeout after the last send.
    let (timeout, _) = log.matchers[0].timing_report().last_timeout.unwrap();
    assert!(timeout >= Duration::from_millis(200), "{timeout:?}");
    let tail = log.finished_at[0] - log.last_send;
    assert!(tail >= Duration::from_millis(400) && tail < Duration::from_millis(1900), "waited {tail:?}");
}

#[test]
fn the_next_job_starts_from_what_the_last_one_learned() {
    let memory = Arc::new(RttMemory::new());
    let key = |byte| CookieKey::new([byte; 16], SourcePortRange::DEFAULT);
    // A first job learns that 198.18.34.0/24 answers in 2 ms.
    let learning = space(&["198.18.34.0/25"], "80");
    let settings = JobSettings { retries: 2, host_up_retries: 0, ..no_canaries() };
    let first = JobCore::with_memory(Arc::clone(&learning), settings, key(32), sources(), None, Arc::clone(&memory));
    let mut network = Network::new(32, 0.0, 0.0);
    network.base_latency = Duration::from_millis(2);
    network.jitter = Duration::from_millis(1);
    let log = run(vec![first], &mut network, 100_000);
    log.matchers[0].remember(log.finished_at[0]);
    assert!(!memory.is_empty());
    // A probe of one silent host there: with the memory its two retries and the end take
    // 4 minimum timeouts (0.4 s); without, 4 initial seconds.
    let silent = space(&["198.18.34.200"], "1-4");
    let run_silent = |memory: Arc<RttMemory>| {
        let core = JobCore::with_memory(Arc::clone(&silent), settings, key(33), sources(), None, memory);
        let mut network = Network::new(33, 0.0, 0.0);
        network.silent_groups = vec![34];
        let log = run(vec![core], &mut network, 100_000);
        assert_eq!(log.matchers[0].table().answered(), 0);
        log.finished_at[0]
    };
    let remembered = run_silent(Arc::clone(&memory));
    let fresh = run_silent(Arc::new(RttMemory::new()));
    assert!(remembered < Duration::from_millis(450), "with the memory: {remembered:?}");
    assert!(fresh >= Duration::from_secs(4), "without: {fresh:?}");
}

/// Opens found and probes sent over a /22 × 4 ports at `loss` each way, per seed. Every host
/// with an open port answers on another of these ports too (a RST), as real hosts mostly do:
/// a host whose only answering port is the lost one is never seen up, and gets no extra round.
fn recall_under_loss(loss: f64, host_up_retries: u32, seed: u64) -> (u64, u64, u64) {
    let space = space(&["198.18.40.0/22"], "22,80,443,8080");
    let settings = JobSettings { retries: 2, host_up_retries, ..no_canaries() };
    let mut network = Network::new(seed, loss, 0.0);
    network.jitter = Duration::from_millis(5);
    let log = run(vec![job(&space, settings, seed as u8)], &mut network, 200_000);
    assert_matches_ground_truth(&log.matchers[0], Some(&log.delivered[0]));
    let truth = (0..space.len()).filter(|&index| truly_open(&space, index)).count() as u64;
    let found = log.matchers[0].table().count(PortState::Open);
    let sent = log.sends_per_index[0].values().map(|&sends| u64::from(sends)).sum();
    (found, truth, sent)
}

#[test]
fn host_up_retries_find_every_open_port_at_five_percent_loss() {
    let mut costs = Vec::new();
    for seed in [41, 43, 45, 47, 49] {
        let (found, truth, sent) = recall_under_loss(0.05, 2, seed);
        assert_eq!(found, truth, "seed {seed}: an open port missed at 5 % loss");
        let (found_without, _, sent_without) = recall_under_loss(0.05, 0, seed);
        assert!(found_without <= found && sent_without < sent, "seed {seed}");
        costs.push((truth - found_without, sent - sent_without));
    }
    // At 10 % loss each way some opens may still be missed; the extra rounds find more.
    let mut costs_at_ten = Vec::new();
    for seed in [41, 43, 45, 47, 49] {
        let (found, truth, sent) = recall_under_loss(0.10, 2, seed);
        let (found_without, _, sent_without) = recall_under_loss(0.10, 0, seed);
        assert!(found_without <= found && sent_without < sent, "seed {seed}");
        costs_at_ten.push((truth - found_without, truth - found, sent_without, sent));
    }
    // What the extra rounds buy and cost (docs/BENCHMARKS.md quotes these lines).
    eprintln!("5 % loss, per seed (missed without, extra probes with): {costs:?}");
    eprintln!("10 % loss, per seed (missed without, missed with, probes without, with): {costs_at_ten:?}");
}

#[test]
fn a_forged_reply_flood_with_absurd_stamps_leaves_the_estimates_alone() {
    // Real answers in 20 ms, and 10,000 forged SYN-ACKs (wrong cookies) claiming to be hours
    // old or from the future.
    let space = space(&["198.18.50.0/26"], "80");
    let settings = JobSettings { retries: 0, host_up_retries: 0, ..no_canaries() };
    let mut network = Network::new(50, 0.0, 0.0);
    network.base_latency = Duration::from_millis(20);
    network.jitter = Duration::from_millis(1);
    let local: IpAddr = LOCAL_V4.parse().unwrap();
    for forged in 0..10_000u32 {
        network.inject(
            Duration::from_micros(u64::from(forged) * 3),
            ReplyRepr::Tcp(TcpReply {
                source: format!("198.18.50.{}", forged % 64).parse().unwrap(),
                destination: local,
                source_port: 80,
                destination_port: 40000 + (forged % 20000) as u16,
                sequence: forged,
                acknowledgement: forged.wrapping_mul(2_654_435_761),
                flags: 0x12,
                timestamp_echo: Some(forged.wrapping_mul(40_503)),
                window: 64240,
                has_options: true,
                ttl: 64,
            }),
        );
    }
    let log = run(vec![job(&space, settings, 50)], &mut network, 100_000);
    assert_matches_ground_truth(&log.matchers[0], None);
    let bad = log.matches.iter().filter(|matched| **matched == ReplyMatch::BadCookie).count();
    assert!(bad >= 9_990, "{bad} forged replies rejected");
    let estimate = log.matchers[0].timing_report().estimate.unwrap();
    assert_eq!(estimate.samples, log.matchers[0].table().answered());
    assert!(estimate.srtt.abs_diff(Duration::from_millis(20)) < Duration::from_millis(2), "{estimate:?}");
    assert!(TimingBounds::DEFAULT.validate().is_ok());
}

#[test]
fn a_settled_lane_ends_its_learned_gap_and_wait_at_once_and_keeps_fixed_ones() {
    // No reply at all: the learned gap would be the initial second; a connect() thread that
    // knows every attempt is over settles the lane instead.
    let space = space(&["198.18.51.0/30"], "80");
    let settings = JobSettings { retries: 1, host_up_retries: 0, ..no_canaries() };
    let mut core = job(&space, settings, 51);
    let now = Duration::from_millis(10);
    while let NextStep::Send(_) = core.next_step(now) {}
    assert_eq!(core.next_step(now), NextStep::WaitUntil(now + Duration::from_millis(50)), "a recheck, not 1 s");
    let settled = now + Duration::from_millis(20);
    assert!(core.settle(settled));
    assert!(matches!(core.next_step(settled), NextStep::Send(probe) if probe.round == 1), "the retry round starts");
    while let NextStep::Send(_) = core.next_step(settled) {}
    assert!(matches!(core.next_step(settled), NextStep::WaitUntil(_)));
    assert!(core.settle(settled));
    assert_eq!(core.next_step(settled), NextStep::Done(FinishReason::WaitOver));
    // Fixed times are the user's: settling changes nothing.
    let fixed = JobSettings {
        retry_gap: TimeSetting::Fixed(Duration::from_secs(1)),
        wait: TimeSetting::Fixed(Duration::from_secs(1)),
        ..settings
    };
    let mut core = job(&space, fixed, 52);
    while let NextStep::Send(_) = core.next_step(now) {}
    assert!(!core.settle(now));
    assert_eq!(core.next_step(now), NextStep::WaitUntil(now + Duration::from_secs(1)));
}

fn v4(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The hosts a job judged suspect, by address.
fn suspects_of(matcher: &ReplyMatcher) -> Vec<(IpAddr, Suspect)> {
    let hosts = matcher.space().hosts();
    matcher.suspects().into_iter().map(|(host, reason)| (hosts.address_at(host).unwrap(), reason)).collect()
}

fn middlebox_network(seed: u64, loss: f64, duplicate: f64) -> Network {
    let mut network = Network::new(seed, loss, duplicate);
    network.middleboxes = vec![
        (v4("198.18.60.10"), Middlebox::Proxy),
        (v4("198.18.60.20"), Middlebox::Tarpit),
        (v4("198.18.60.30"), Middlebox::ManyServices),
    ];
    network
}

#[test]
fn canaries_flag_syn_proxies_and_tarpits_and_a_host_with_many_services_stays_clean() {
    let space = space(&["198.18.60.0/26"], "22,80,443,8080,8443");
    let log = run(vec![job(&space, JobSettings::default(), 60)], &mut middlebox_network(60, 0.0, 0.0), 50_000);
    let matcher = &log.matchers[0];
    assert_eq!(
        suspects_of(matcher),
        [(v4("198.18.60.10"), Suspect::Synproxy), (v4("198.18.60.20"), Suspect::AllOpen)],
        "the proxy by its fingerprint, the tarpit by its canaries; the host with five services is clean"
    );
    let evidence = matcher.evidence();
    assert_eq!(evidence.canary_ports().len(), 3);
    assert!(evidence.canary_ports().iter().all(|&port| port >= 40_000 && !space.ports().contains(Port::tcp(port))));
    // Exactly the hosts that answered SYN-ACK got canaries, once each (no loss).
    let hosts_open = (0..space.hosts().len()).filter(|&host| evidence.host_open(host)).count() as u64;
    assert!(hosts_open > 3);
    for host in 0..space.hosts().len() {
        assert_eq!(evidence.canaried(host), evidence.host_open(host), "host {host}");
    }
    let counts = evidence.counts();
    assert_eq!(counts.hosts_canaried, hosts_open);
    // The first canary went out once if answered (no loss here), and in each of the rounds
    // 1..=3 (retries + 1) if not. The others only if it answered SYN-ACK: then each once if
    // answered, and in rounds 2..=4 (one more) if not, unless another one's RST concluded the
    // host first (it was sent once, beside that one, in round 2).
    let mut hosts_with_second_step = 0;
    for host in (0..space.hosts().len()).filter(|&host| evidence.host_open(host)) {
        let sends = |slot: usize| log.sends_per_index[0].get(&matcher.canary_index(host, slot)).copied().unwrap_or(0);
        let state = |slot: usize| evidence.canary_state(host, slot);
        assert_eq!(sends(0), if state(0) == PortState::Unknown { 3 } else { 1 }, "host {host} canary 0");
        let closed_by_another = (1..3).any(|slot| !matches!(state(slot), PortState::Open | PortState::Unknown));
        for slot in 1..3 {
            let expected = match (state(0), state(slot)) {
                (PortState::Open, PortState::Unknown) if closed_by_another => 1,
                (PortState::Open, PortState::Unknown) => 3,
                (PortState::Open, _) => 1,
                _ => 0,
            };
            assert_eq!(sends(slot), expected, "host {host} canary {slot}");
        }
        hosts_with_second_step += u32::from(state(0) == PortState::Open);
        assert!(
            evidence.concluded(host)
                || state(0) == PortState::Unknown
                || state(1) == PortState::Unknown
                || state(2) == PortState::Unknown,
            "host {host}"
        );
    }
    assert!(hosts_with_second_step >= 2, "the proxy and the tarpit answered their first canary");
    for middlebox in ["198.18.60.10", "198.18.60.20"] {
        let host = space.hosts().index_of(v4(middlebox)).unwrap();
        assert_eq!(matcher.host_evidence(host).canaries_open, 3, "{middlebox}");
    }
    // This network's ordinary hosts listen on about 2 ports in 11, canaries included: some
    // canaries of theirs answered SYN-ACK, and none of them was judged suspect for it.
    assert!(counts.canaries_open > 6);
    // The host with five services refused its first canary (so the other two were not sent),
    // and its opens are all there.
    let many = matcher.host_evidence(space.hosts().index_of(v4("198.18.60.30")).unwrap());
    assert_eq!((many.ports_open, many.canaries_open, many.canaries_closed), (5, 0, 1));
    // Canaries are sent, but never become results: the table holds the space's probes only, and
    // every canary send was a probe past the space's end.
    let canary_sends: u32 =
        log.sends_per_index[0].iter().filter(|(index, _)| **index >= space.len()).map(|(_, n)| n).sum();
    assert_eq!(u64::from(canary_sends), counts.canary_probes_sent);
    // The table's opens are exactly the scanned ports that answer SYN-ACK: no canary answer
    // landed in it (the proxy's and the tarpit's would add six).
    let syn_acks = (0..space.len())
        .filter(|&index| {
            let (address, port) = space.probe_at(index).unwrap();
            match middlebox_network(60, 0.0, 0.0).middleboxes.iter().find(|(host, _)| *host == address) {
                Some(_) => true,
                None => Network::behaviour(address, port) == Behaviour::Listen,
            }
        })
        .count() as u64;
    assert_eq!(matcher.table().count(PortState::Open), syn_acks);
}

#[test]
fn canaries_survive_loss_and_duplicates_and_an_answered_job_still_ends_at_once() {
    let wide = space(&["198.18.60.0/26"], "22,80,443,8080,8443");
    let log = run(vec![job(&wide, JobSettings::default(), 61)], &mut middlebox_network(61, 0.2, 0.3), 50_000);
    assert_eq!(
        suspects_of(&log.matchers[0]),
        [(v4("198.18.60.10"), Suspect::Synproxy), (v4("198.18.60.20"), Suspect::AllOpen)]
    );
    // Only middleboxes and a host with services: every probe and canary is answered, and the
    // job ends as soon as the last canary is, not after a wait.
    let small = space(&["198.18.60.10", "198.18.60.20", "198.18.60.30"], "22,80,443,8080,8443");
    let log = run(vec![job(&small, JobSettings::default(), 62)], &mut middlebox_network(62, 0.0, 0.0), 50_000);
    assert_eq!(log.reasons[0], Some(FinishReason::AllAnswered));
    // The host with services refused its first canary: the other two were not sent.
    assert_eq!(log.matchers[0].evidence().counts().canaries_closed, 1);
    assert_eq!(log.matchers[0].evidence().counts().canary_probes_sent, 3 + 3 + 1);
    assert!(log.finished_at[0] < Duration::from_millis(100), "ended at {:?}", log.finished_at[0]);
    // On a LAN (0.3 ms, no jitter) the canaries go out as soon as the last probe is answered,
    // not when the lane's learned gap is next re-evaluated (half the minimum timeout, 50 ms: a
    // one-host /probe took 51 ms instead of 1 ms that way).
    let mut lan = middlebox_network(63, 0.0, 0.0);
    lan.jitter = Duration::ZERO;
    let log = run(vec![job(&small, JobSettings::default(), 63)], &mut lan, 50_000);
    assert_eq!(log.reasons[0], Some(FinishReason::AllAnswered));
    assert_eq!(log.matchers[0].evidence().counts().canaries_closed, 1);
    assert!(log.finished_at[0] < Duration::from_millis(3), "ended at {:?}", log.finished_at[0]);
}

#[test]
fn a_reply_storm_from_a_middlebox_is_counted_and_dropped_and_never_becomes_evidence() {
    let space = space(&["198.18.61.0/28"], "22,80");
    let key = CookieKey::new([63; 16], SourcePortRange::DEFAULT);
    let core = JobCore::new(Arc::clone(&space), JobSettings::default(), key, sources(), None);
    let matcher = Arc::clone(core.matcher());
    let local = v4(LOCAL_V4);
    let canary = matcher.evidence().canary_ports()[0];
    let syn_ack = |remote: IpAddr, port: u16, sequence: u32, local_port: u16| Classified {
        local,
        local_port,
        remote,
        remote_port: Port::tcp(port),
        cookie: ReplyCookie::Sequence(sequence),
        state: PortState::Open,
        timestamp_echo: None,
        fingerprint: Some(SynAckFingerprint { window: 0, has_options: false, ttl: 60 }),
    };
    let now = Duration::from_millis(5);
    for round in 0..10_000u32 {
        let remote = v4(&format!("198.18.61.{}", round % 16));
        let good = key.cookie(local, remote, Port::tcp(canary));
        // A canary's valid cookie, but canaries were never sent to this host: not evidence.
        let forged = syn_ack(remote, canary, good.sequence, good.source_port);
        assert_eq!(matcher.offer(&forged, now), ReplyMatch::BadCookie);
        // Wrong cookies, and ports never probed.
        let wrong = syn_ack(remote, canary, good.sequence ^ 0x8000_0000, good.source_port);
        assert_eq!(matcher.offer(&wrong, now), ReplyMatch::BadCookie);
        let unprobed = syn_ack(remote, 1 + (round % 30_000) as u16 + 1000, good.sequence, good.source_port);
        assert_eq!(matcher.offer(&unprobed, now), ReplyMatch::NotInJob);
    }
    assert!(matcher.suspects().is_empty());
    assert_eq!(matcher.evidence().counts(), EvidenceCounts { canary_ports: 3, ..EvidenceCounts::default() });
    // A valid SYN-ACK then its copies: the first counts, the storm of duplicates does not.
    let remote = v4("198.18.61.3");
    let real = key.cookie(local, remote, Port::tcp(22));
    let reply = syn_ack(remote, 22, real.sequence, real.source_port);
    assert!(matches!(matcher.offer(&reply, now), ReplyMatch::Matched { outcome: RecordOutcome::First, .. }));
    for _ in 0..1000 {
        assert!(matches!(matcher.offer(&reply, now), ReplyMatch::Matched { outcome: RecordOutcome::Duplicate, .. }));
    }
    assert_eq!(matcher.table().count(PortState::Open), 1);
    assert!(matcher.suspects().is_empty(), "one proxied SYN-ACK without a canary is no verdict");
}

/// Issue 22: UDP retries to a host that answered (and so may rate-limit its ICMP errors) are
/// paced per host; the first round, and hosts that answered nothing, are not.
#[test]
fn udp_retries_to_an_answering_host_are_paced_and_the_first_round_is_not() {
    let space = space(&["198.18.40.1", "198.18.40.2"], "22,udp/1-4");
    let settings = JobSettings {
        retries: 1,
        host_up_retries: 0,
        retry_gap: TimeSetting::Fixed(Duration::from_millis(100)),
        wait: TimeSetting::Fixed(Duration::from_millis(100)),
        udp_host_interval: Duration::from_secs(1),
        ..no_canaries()
    };
    let mut core = job(&space, settings, 7);
    let mut now = Duration::ZERO;
    let mut first_round = Vec::new();
    while let NextStep::Send(probe) = core.next_step(now) {
        first_round.push(probe);
    }
    assert_eq!(first_round.len(), 10, "the first round is never paced");
    // 198.18.40.1 answers port unreachable on one UDP port and RST on tcp/22; 198.18.40.2
    // answers nothing.
    let answering = v4("198.18.40.1");
    let answered: Vec<&Probe> = first_round.iter().filter(|probe| probe.address == answering).take(5).collect();
    let udp = answered.iter().find(|probe| probe.port.is_udp()).unwrap();
    let tcp = answered.iter().find(|probe| probe.port.is_tcp()).unwrap();
    core.matcher().record(udp.index, answering, PortState::Closed, None);
    core.matcher().record(tcp.index, answering, PortState::Closed, None);
    let mut retries: Vec<(IpAddr, Port, Duration)> = Vec::new();
    loop {
        match core.next_step(now) {
            NextStep::Send(probe) => retries.push((probe.address, probe.port, now)),
            NextStep::WaitUntil(time) => now = time,
            NextStep::Done(_) => break,
        }
        assert!(now < Duration::from_secs(30), "the job never ends");
    }
    let at = |address: IpAddr, udp: bool| -> Vec<Duration> {
        retries.iter().filter(|(a, port, _)| *a == address && port.is_udp() == udp).map(|(_, _, time)| *time).collect()
    };
    let retry_round = Duration::from_millis(100);
    // The silent host: its five retries at once (tcp/22 included).
    assert_eq!(at(v4("198.18.40.2"), true), vec![retry_round; 4]);
    assert_eq!(at(v4("198.18.40.2"), false), vec![retry_round]);
    // The answering host: its three unanswered UDP ports one second apart, nothing else.
    let mut paced = at(answering, true);
    paced.sort();
    assert_eq!(paced, [retry_round, retry_round + Duration::from_secs(1), retry_round + Duration::from_secs(2)]);
    assert!(at(answering, false).is_empty(), "tcp/22 was answered");
    assert_eq!(core.matcher().table().get(udp.index), PortState::Closed);
}

/// Issue 22: a host is taken for ICMP rate-limited once two of its UDP ports answered port
/// unreachable to retries only; one such port (a lost first answer) is not enough, and a job
/// without UDP ports keeps no such books.
#[test]
fn hosts_answering_port_unreachable_to_retries_on_two_ports_are_taken_for_rate_limited() {
    let range = space(&["198.18.42.0/24"], "22,udp/1-3");
    let core = job(&range, no_canaries(), 3);
    let matcher = core.matcher();
    let index = |address: &str, port: Port| range.index_of(v4(address), port).unwrap();
    assert!(matcher.hosts_closed_on_retries().is_empty());
    matcher.note_closed_on_retry(index("198.18.42.1", Port::udp(1)));
    matcher.note_closed_on_retry(index("198.18.42.2", Port::udp(1)));
    assert!(matcher.hosts_closed_on_retries().is_empty(), "one port is no verdict");
    matcher.note_closed_on_retry(index("198.18.42.2", Port::udp(3)));
    // .70 is past the first 64-bit word of the bitmap.
    matcher.note_closed_on_retry(index("198.18.42.70", Port::udp(2)));
    matcher.note_closed_on_retry(index("198.18.42.70", Port::udp(1)));
    let host = |address: &str| index(address, Port::udp(1)) / 4;
    assert!(host("198.18.42.70") >= 64);
    assert_eq!(matcher.hosts_closed_on_retries(), vec![host("198.18.42.2"), host("198.18.42.70")]);
    let tcp_only = space(&["198.18.42.1"], "22,80");
    let core = job(&tcp_only, no_canaries(), 3);
    core.matcher().note_closed_on_retry(0);
    core.matcher().note_closed_on_retry(1);
    assert!(core.matcher().hosts_closed_on_retries().is_empty(), "no UDP port, no books");
}

/// Issue 22: a UDP answer counts only to the cookie port, from a probed port, with the DNS id
/// the probe carried; an ICMP error quoting the probe counts when the quoted id is right or
/// not quoted at all (RFC 792 asks for eight bytes only).
#[test]
fn udp_answers_and_quotes_are_checked_by_port_and_echoed_id() {
    let space = space(&["198.18.41.1"], "udp/53,123");
    let core = job(&space, no_canaries(), 9);
    let matcher = core.matcher();
    let (local, remote) = (v4(LOCAL_V4), v4("198.18.41.1"));
    let cookie = matcher.cookie_key().cookie(local, remote, Port::udp(53)).stamped(Duration::from_millis(700));
    let dns_answer = |id: u16| {
        let mut answer = vec![0u8; 12];
        answer[..2].copy_from_slice(&id.to_be_bytes());
        answer[2] = 0x81;
        answer
    };
    let udp = |from_port: u16, to_port: u16, cookie: ReplyCookie, state: PortState| Classified {
        local,
        local_port: to_port,
        remote,
        remote_port: Port::udp(from_port),
        cookie,
        state,
        timestamp_echo: None,
        fingerprint: None,
    };
    let now = Duration::from_millis(720);
    let answer = |id: u16| ReplyCookie::UdpAnswer(PayloadHead::of(&dns_answer(id)));
    let good_id = cookie.sequence as u16;
    // A wrong id (the cookie bits above the stamp), the wrong cookie port, an unprobed port.
    let wrong_id = good_id ^ 0x1000;
    assert_eq!(
        matcher.offer(&udp(53, cookie.source_port, answer(wrong_id), PortState::Open), now),
        ReplyMatch::BadCookie
    );
    let wrong_port = cookie.source_port.wrapping_add(1);
    assert_eq!(matcher.offer(&udp(53, wrong_port, answer(good_id), PortState::Open), now), ReplyMatch::BadCookie);
    assert_eq!(
        matcher.offer(&udp(54, cookie.source_port, answer(good_id), PortState::Open), now),
        ReplyMatch::NotInJob
    );
    assert_eq!(matcher.table().answered(), 0, "nothing forged was recorded");
    // The real answer: recorded, with the round trip its id's stamp carries.
    match matcher.offer(&udp(53, cookie.source_port, answer(good_id), PortState::Open), now) {
        ReplyMatch::Matched { outcome: RecordOutcome::First, rtt, .. } => {
            assert_eq!(rtt, Some(Duration::from_millis(20)));
        }
        other => panic!("{other:?}"),
    }
    // NTP (no answer yet): an ICMP error quoting the probe with another origin is refused; one
    // quoting only the UDP header counts (port unreachable: closed), without a round trip.
    let ntp = matcher.cookie_key().cookie(local, remote, Port::udp(123));
    let mut quoted = vec![0u8; 48];
    quoted[40..44].copy_from_slice(&(!ntp.sequence).to_be_bytes());
    let quote = ReplyCookie::UdpQuote(PayloadHead::of(&quoted));
    assert_eq!(matcher.offer(&udp(123, ntp.source_port, quote, PortState::Closed), now), ReplyMatch::BadCookie);
    let header_only = ReplyCookie::UdpQuote(PayloadHead::of(&[]));
    assert!(matches!(
        matcher.offer(&udp(123, ntp.source_port, header_only, PortState::Closed), now),
        ReplyMatch::Matched { outcome: RecordOutcome::First, rtt: None, .. }
    ));
    let index = space.index_of(remote, Port::udp(123)).unwrap();
    assert_eq!(matcher.table().get(index), PortState::Closed);
}
