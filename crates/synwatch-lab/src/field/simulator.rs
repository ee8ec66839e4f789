//! The field lab's core: the simulated network as a state machine with no I/O and no clock
//! (the quinn-proto shape). The responder thread hands it every arriving frame with the time
//! since it started ([`Simulator::handle_frame`]), asks for the replies that are due
//! ([`Simulator::poll_transmit`]) and sleeps until [`Simulator::poll_timeout`]. Tests drive the
//! same type with frames they build and times they choose.
//!
//! The decisions for a SYN or a UDP datagram, in order: counted (per (host, port) too, when
//! asked); outside every range, nothing more; lost on the way in; dropped by the range's
//! firewall (probes beyond its rate from one source); the model's behaviour for (host, port) at
//! that time; for an open UDP port, whether its service answers what was sent (the lab's
//! scripted service for the port, [`crate::UdpService`], or an echo); an ICMP reply from a host
//! past its per-peer limit, or from any source past its overall limit, is not sent; lost on the
//! way back; held late; duplicated. ACKs and RSTs of the scanner (a raw scan's kernel RST, a
//! connect() scan's handshake and close) are taken without an answer.
//!
//! A UDP answer's bytes are kept beside the timer wheel, keyed by a number the reply carries,
//! so the wheel holds small plain replies whatever the answer's size.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use super::draw::{Purpose, hash, unit};
use super::limits::{Bucket, LossChain};
use super::model::{FieldModel, ModelError, PortBehaviour, Transport};
use super::packets::{Reply, ReplyKind, Segment, parse_probe};
use super::wheel::TimerWheel;
use crate::UdpService;

/// The timer wheel's tick.
pub const TICK: Duration = Duration::from_micros(100);

/// What the simulator has seen and done (all counts since it started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FieldCounters {
    /// Frames handed in.
    pub frames: u64,
    /// SYNs (probes and connection attempts) to any address.
    pub syns: u64,
    /// UDP datagrams (probes) to any address.
    pub datagrams: u64,
    /// SYNs and datagrams to addresses outside every range of the model.
    pub outside: u64,
    /// Other TCP segments to simulated addresses (ACKs, RSTs), taken without an answer.
    pub taken_quietly: u64,
    /// Frames that are neither IPv4 nor IPv6 TCP or UDP (address resolution, the kernel's own
    /// traffic).
    pub not_tcp_or_udp: u64,
    /// Probes lost on the way in.
    pub lost_forward: u64,
    /// Probes the firewall dropped.
    pub dropped_by_firewall: u64,
    /// Probes to filtered or silent (host, port)s: no answer by design.
    pub unanswered: u64,
    /// Datagrams to open UDP ports whose service does not answer what they carried.
    pub not_understood: u64,
    /// ICMP errors not sent because their host's limit towards the scanner was spent.
    pub icmp_peer_rate_limited: u64,
    /// ICMP errors not sent because their source's overall rate limit was spent.
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
    datagrams_per_port: HashMap<(IpAddr, u16), u32>,
    wheel: TimerWheel<Reply>,
    /// The bytes of the UDP answers the wheel holds, by [`Reply::answer`].
    answers: HashMap<u32, Vec<u8>>,
    next_answer: u32,
    icmp_buckets: HashMap<IpAddr, Bucket>,
    /// Per (host, peer): the hosts' per-peer ICMP limit.
    icmp_peer_buckets: HashMap<(IpAddr, IpAddr), Bucket>,
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
            datagrams_per_port: HashMap::new(),
            wheel: TimerWheel::new(options.wheel_slots, options.wheel_capacity),
            answers: HashMap::new(),
            next_answer: 1,
            icmp_buckets: HashMap::new(),
            icmp_peer_buckets: HashMap::new(),
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

    /// UDP datagrams to (address, port) so far (0 when per-port counting is off).
    pub fn datagrams_to(&self, address: IpAddr, port: u16) -> u32 {
        self.datagrams_per_port.get(&(address, port)).copied().unwrap_or(0)
    }

    /// UDP datagrams per (host, port) so far.
    pub fn datagrams_per_port(&self) -> &HashMap<(IpAddr, u16), u32> {
        &self.datagrams_per_port
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
        self.handle_captured_frame(now, frame, frame.len());
    }

    /// Takes one arriving frame of `wire_len` bytes at `now`, of which `frame` holds the first
    /// (the receive ring keeps a few hundred bytes of each). A UDP datagram cut short reaches
    /// its service with the missing tail as zeros: of the built-in probes only QUIC's is that
    /// long, and its tail is padding, which is zeros.
    pub fn handle_captured_frame(&mut self, now: Duration, frame: &[u8], wire_len: usize) {
        self.counters.frames += 1;
        let Some(probe) = parse_probe(frame, wire_len) else {
            self.counters.not_tcp_or_udp += 1;
            return;
        };
        let segment = probe.segment;
        if segment.transport == Transport::Udp {
            // Copied only when the frame was cut, to give the service its zero tail.
            let mut payload = std::borrow::Cow::Borrowed(probe.payload);
            if probe.payload_len > payload.len() {
                payload.to_mut().resize(probe.payload_len, 0);
            }
            self.handle_probe(now, segment, &payload);
        } else if segment.is_syn() {
            self.handle_probe(now, segment, &[]);
        } else if self.model.range_of(segment.destination).is_some() {
            self.counters.taken_quietly += 1;
        }
    }

    /// Stores a UDP answer's bytes; returns its number.
    fn store_answer(&mut self, bytes: Vec<u8>) -> u32 {
        let number = self.next_answer;
        self.next_answer = self.next_answer.checked_add(1).unwrap_or(1);
        self.answers.insert(number, bytes);
        number
    }

    fn handle_probe(&mut self, now: Duration, probe: Segment, payload: &[u8]) {
        self.packets += 1;
        let transport = probe.transport;
        let (address, port) = (probe.destination, probe.destination_port);
        match transport {
            Transport::Tcp => self.counters.syns += 1,
            Transport::Udp => self.counters.datagrams += 1,
        }
        if self.options.count_per_port {
            let counts = match transport {
                Transport::Tcp => &mut self.syns_per_port,
                Transport::Udp => &mut self.datagrams_per_port,
            };
            *counts.entry((address, port)).or_insert(0) += 1;
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
        let behaviour = self.model.behaviour_of(transport, address, port, now).expect("the address is in a range");
        let rtt = self.model.host_rtt(address).expect("the address is in a range");
        let jitter = Duration::from_secs_f64(jitter_ms / 1000.0 * self.draw(Purpose::Jitter, address));
        let host_ttl = 64 - (hash(self.model.seed, Purpose::HostRtt, address, 1) % 16) as u8 - 4;
        let router = self.model.router_for(address);
        let mut answer_bytes = None;
        let (kind, icmp_source, delay, ttl) = match behaviour {
            PortBehaviour::Open => (ReplyKind::StackSynAck, address, rtt + jitter, host_ttl),
            PortBehaviour::Closed => (ReplyKind::Rst, address, rtt + jitter, host_ttl),
            PortBehaviour::UdpAnswer => {
                let service = UdpService::for_port(port).unwrap_or(UdpService::Echo);
                let Some(answer) = service.answer(payload) else {
                    self.counters.not_understood += 1;
                    return;
                };
                let answer_port = if service.answers_from_new_port() {
                    32_768 + (hash(self.model.seed, Purpose::UdpAnswerPort, address, self.packets) % 28_232) as u16
                } else {
                    port
                };
                answer_bytes = Some((answer, answer_port));
                (ReplyKind::UdpAnswer, address, rtt + jitter, host_ttl)
            }
            PortBehaviour::PortUnreachable => (ReplyKind::PortUnreachable, address, rtt + jitter, host_ttl),
            PortBehaviour::UdpSilent | PortBehaviour::Filtered => {
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
        let is_icmp = matches!(kind, ReplyKind::Prohibited | ReplyKind::HostUnreachable | ReplyKind::PortUnreachable);
        // A host's own errors first meet its limit towards this peer, then every source's
        // overall one (recent Linux checks them in this order).
        if let (true, Some(limit)) = (is_icmp && icmp_source == address, self.model.host_icmp_peer_limit) {
            let bucket =
                self.icmp_peer_buckets.entry((icmp_source, probe.source)).or_insert_with(|| Bucket::full(limit, now));
            if !bucket.take(limit, now) {
                self.counters.icmp_peer_rate_limited += 1;
                return;
            }
        }
        if is_icmp {
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
        let duplicate = self.draw(Purpose::Duplicate, address) * 100.0 < self.model.duplicate_percent;
        let (answer_port, mut answers) = match answer_bytes {
            None => (0, [0, 0]),
            Some((bytes, answer_port)) => {
                let copy = if duplicate { self.store_answer(bytes.clone()) } else { 0 };
                (answer_port, [self.store_answer(bytes), copy])
            }
        };
        let reply = Reply { kind, probe, icmp_source, initial_sequence, ttl, answer_port, answer: answers[0] };
        // Rounded up: a reply never comes sooner than its delay.
        let due = ticks(now + delay) + 1;
        if self.wheel.insert(due, reply).is_err() {
            self.counters.wheel_full += 1;
        } else {
            answers[0] = 0;
            if duplicate {
                if self.wheel.insert(due + 10, Reply { answer: answers[1], ..reply }).is_err() {
                    self.counters.wheel_full += 1;
                } else {
                    answers[1] = 0;
                    self.counters.duplicated += 1;
                }
            }
        }
        // The bytes of an answer the wheel refused.
        for number in answers {
            self.answers.remove(&number);
        }
    }

    /// Hands every reply due at `now` to `send`, in the order they fall due, with a UDP
    /// answer's bytes (empty for every other reply).
    pub fn poll_transmit(&mut self, now: Duration, mut send: impl FnMut(&Reply, &[u8])) {
        let (counters, answers) = (&mut self.counters, &mut self.answers);
        self.wheel.expire(ticks(now), |reply| {
            counters.replies += 1;
            let bytes = if reply.answer == 0 { None } else { answers.remove(&reply.answer) };
            send(&reply, bytes.as_deref().unwrap_or(&[]));
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
