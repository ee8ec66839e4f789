//! The field lab's core: the simulated network as a state machine with no I/O and no clock
//! (the quinn-proto shape). The responder thread hands it every arriving frame with the time
//! since it started ([`Simulator::handle_frame`]), asks for the replies that are due
//! ([`Simulator::poll_transmit`]) and sleeps until [`Simulator::poll_timeout`]. Tests drive the
//! same type with frames they build and times they choose.
//!
//! The decisions for a SYN, in order: counted (per (host, port) too, when asked); outside every
//! range, nothing more; lost on the way in; dropped by the range's firewall (SYNs beyond its
//! rate from one source); the model's behaviour for (host, port) at that time; an ICMP reply
//! past its source's rate limit is not sent; lost on the way back; held late; duplicated. ACKs
//! and RSTs of the scanner (a raw scan's kernel RST, a connect() scan's handshake and close)
//! are taken without an answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use super::draw::{Purpose, hash, unit};
use super::limits::{Bucket, LossChain};
use super::model::{FieldModel, ModelError, PortBehaviour};
use super::packets::{Reply, ReplyKind, Segment, parse_segment};
use super::wheel::TimerWheel;

/// The timer wheel's tick.
pub const TICK: Duration = Duration::from_micros(100);

/// What the simulator has seen and done (all counts since it started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FieldCounters {
    /// Frames handed in.
    pub frames: u64,
    /// SYNs (probes and connection attempts) to any address.
    pub syns: u64,
    /// SYNs to addresses outside every range of the model.
    pub outside: u64,
    /// Other TCP segments to simulated addresses (ACKs, RSTs), taken without an answer.
    pub taken_quietly: u64,
    /// Frames that are not IPv4 or IPv6 TCP (address resolution, the kernel's own traffic).
    pub not_tcp: u64,
    /// SYNs lost on the way in.
    pub lost_forward: u64,
    /// SYNs the firewall dropped.
    pub dropped_by_firewall: u64,
    /// SYNs to filtered (host, port)s: no answer by design.
    pub unanswered: u64,
    /// ICMP errors not sent because their source's rate limit was spent.
    pub icmp_rate_limited: u64,
    /// Replies lost on the way back.
    pub lost_reverse: u64,
    /// Replies held late.
    pub late: u64,
    /// Extra copies of replies.
    pub duplicated: u64,
    /// Replies refused because the timer wheel was full.
    pub wheel_full: u64,
    /// Replies handed out by `poll_transmit` (copies included).
    pub replies: u64,
}

/// How the simulator keeps its books.
#[derive(Debug, Clone, Copy)]
pub struct SimulatorOptions {
    /// Count SYNs per (host, port) (tests assert on them; benchmarks turn it off).
    pub count_per_port: bool,
    /// Slots of the timer wheel, one per [`TICK`].
    pub wheel_slots: usize,
    /// Replies held at most.
    pub wheel_capacity: usize,
}

impl Default for SimulatorOptions {
    fn default() -> SimulatorOptions {
        // 65,536 ticks of 100 µs: 6.5 s before a reply is parked at the horizon; a million
        // replies is 200,000 probes/s for the longest round trip of the profiles, five times over.
        SimulatorOptions { count_per_port: true, wheel_slots: 65_536, wheel_capacity: 1_000_000 }
    }
}

/// The simulated network.
#[derive(Debug)]
pub struct Simulator {
    model: FieldModel,
    options: SimulatorOptions,
    counters: FieldCounters,
    syns_per_port: HashMap<(IpAddr, u16), u32>,
    wheel: TimerWheel<Reply>,
    icmp_buckets: HashMap<IpAddr, Bucket>,
    firewall_buckets: HashMap<(IpAddr, IpAddr), Bucket>,
    forward_chain: LossChain,
    reverse_chain: LossChain,
    /// Numbers the per-packet draws.
    packets: u64,
}

fn ticks(time: Duration) -> u64 {
    (time.as_nanos() / TICK.as_nanos()) as u64
}

impl Simulator {
    /// A simulator of `model` (checked first).
    pub fn new(model: FieldModel, options: SimulatorOptions) -> Result<Simulator, ModelError> {
        model.validate()?;
        Ok(Simulator {
            model,
            options,
            counters: FieldCounters::default(),
            syns_per_port: HashMap::new(),
            wheel: TimerWheel::new(options.wheel_slots, options.wheel_capacity),
            icmp_buckets: HashMap::new(),
            firewall_buckets: HashMap::new(),
            forward_chain: LossChain::default(),
            reverse_chain: LossChain::default(),
            packets: 0,
        })
    }

    /// The model.
    pub fn model(&self) -> &FieldModel {
        &self.model
    }

    /// The counters.
    pub fn counters(&self) -> FieldCounters {
        self.counters
    }

    /// SYNs to (address, port) so far (0 when per-port counting is off).
    pub fn syns_to(&self, address: IpAddr, port: u16) -> u32 {
        self.syns_per_port.get(&(address, port)).copied().unwrap_or(0)
    }

    /// SYNs per (host, port) so far.
    pub fn syns_per_port(&self) -> &HashMap<(IpAddr, u16), u32> {
        &self.syns_per_port
    }

    /// Replies waiting for their time.
    pub fn held(&self) -> usize {
        self.wheel.len()
    }

    fn draw(&mut self, purpose: Purpose, address: IpAddr) -> f64 {
        unit(self.model.seed, purpose, address, self.packets)
    }

    /// Takes one arriving frame at `now` (time since the responder started).
    pub fn handle_frame(&mut self, now: Duration, frame: &[u8]) {
        self.counters.frames += 1;
        let Some(segment) = parse_segment(frame) else {
            self.counters.not_tcp += 1;
            return;
        };
        if segment.is_syn() {
            self.handle_syn(now, segment);
        } else if self.model.range_of(segment.destination).is_some() {
            self.counters.taken_quietly += 1;
        }
    }

    fn handle_syn(&mut self, now: Duration, probe: Segment) {
        self.packets += 1;
        self.counters.syns += 1;
        let (address, port) = (probe.destination, probe.destination_port);
        if self.options.count_per_port {
            *self.syns_per_port.entry((address, port)).or_insert(0) += 1;
        }
        let Some(range) = self.model.range_of(address) else {
            self.counters.outside += 1;
            return;
        };
        let (jitter_ms, firewall, network) = (range.jitter_ms, range.firewall, range.range.network());
        let (move_draw, loss_draw) =
            (self.draw(Purpose::ForwardLossState, address), self.draw(Purpose::ForwardLoss, address));
        let forward = self.model.forward_loss;
        if self.forward_chain.lose(&forward, move_draw, loss_draw) {
            self.counters.lost_forward += 1;
            return;
        }
        if let Some(limit) = firewall {
            let bucket =
                self.firewall_buckets.entry((network, probe.source)).or_insert_with(|| Bucket::full(limit, now));
            if !bucket.take(limit, now) {
                self.counters.dropped_by_firewall += 1;
                return;
            }
        }
        let behaviour = self.model.behaviour(address, port, now).expect("the address is in a range");
        let rtt = self.model.host_rtt(address).expect("the address is in a range");
        let jitter = Duration::from_secs_f64(jitter_ms / 1000.0 * self.draw(Purpose::Jitter, address));
        let host_ttl = 64 - (hash(self.model.seed, Purpose::HostRtt, address, 1) % 16) as u8 - 4;
        let router = self.model.router_for(address);
        let (kind, icmp_source, delay, ttl) = match behaviour {
            PortBehaviour::Open => (ReplyKind::StackSynAck, address, rtt + jitter, host_ttl),
            PortBehaviour::Closed => (ReplyKind::Rst, address, rtt + jitter, host_ttl),
            PortBehaviour::Filtered => {
                self.counters.unanswered += 1;
                return;
            }
            PortBehaviour::ProhibitedByHost => (ReplyKind::Prohibited, address, rtt + jitter, host_ttl),
            // The router is half way.
            PortBehaviour::ProhibitedByRouter => (ReplyKind::Prohibited, router, rtt / 2 + jitter, 62),
            PortBehaviour::HostUnreachable => (ReplyKind::HostUnreachable, router, rtt / 2 + jitter, 62),
            // A SYN proxy sits in front of the host and answers itself, with no jitter from the
            // host's own stack.
            PortBehaviour::SynproxySynAck => (ReplyKind::ProxySynAck, address, rtt / 2, 60),
            PortBehaviour::TarpitSynAck => (ReplyKind::TarpitSynAck, address, rtt + jitter, host_ttl),
        };
        if matches!(kind, ReplyKind::Prohibited | ReplyKind::HostUnreachable) {
            let limit = self.model.icmp_limit;
            let bucket = self.icmp_buckets.entry(icmp_source).or_insert_with(|| Bucket::full(limit, now));
            if !bucket.take(limit, now) {
                self.counters.icmp_rate_limited += 1;
                return;
            }
        }
        let (move_draw, loss_draw) =
            (self.draw(Purpose::ReverseLossState, address), self.draw(Purpose::ReverseLoss, address));
        let reverse = self.model.reverse_loss;
        if self.reverse_chain.lose(&reverse, move_draw, loss_draw) {
            self.counters.lost_reverse += 1;
            return;
        }
        let late = self.model.late;
        let delay = if self.draw(Purpose::Late, address) * 100.0 < late.percent {
            self.counters.late += 1;
            Duration::from_secs_f64(late.delay_ms / 1000.0)
        } else {
            delay
        };
        let initial_sequence =
            hash(self.model.seed, Purpose::InitialSequence, address, u64::from(port) << 32 | u64::from(probe.sequence))
                as u32;
        let reply = Reply { kind, probe, icmp_source, initial_sequence, ttl };
        // Rounded up: a reply never comes sooner than its delay.
        let due = ticks(now + delay) + 1;
        if self.wheel.insert(due, reply).is_err() {
            self.counters.wheel_full += 1;
            return;
        }
        if self.draw(Purpose::Duplicate, address) * 100.0 < self.model.duplicate_percent {
            if self.wheel.insert(due + 10, reply).is_err() {
                self.counters.wheel_full += 1;
            } else {
                self.counters.duplicated += 1;
            }
        }
    }

    /// Hands every reply due at `now` to `send`, in the order they fall due.
    pub fn poll_transmit(&mut self, now: Duration, mut send: impl FnMut(&Reply)) {
        let counters = &mut self.counters;
        self.wheel.expire(ticks(now), |reply| {
            counters.replies += 1;
            send(&reply);
        });
    }

    /// When the next reply falls due (looking at most 100 ms ahead: beyond, `now + 100 ms`), or
    /// `None` with nothing held.
    pub fn poll_timeout(&self, now: Duration) -> Option<Duration> {
        if self.wheel.is_empty() {
            return None;
        }
        let horizon = ticks(now) + 1000;
        let due = self.wheel.next_due_within(horizon).unwrap_or(horizon);
        Some(Duration::from_nanos(due * TICK.as_nanos() as u64))
    }
}
