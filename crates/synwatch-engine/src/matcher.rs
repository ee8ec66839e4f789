//! What a reply means, and the half of a job the receiver thread shares.
//!
//! * [`classify_reply`] decides what a parsed packet means before knowing its job.
//! * [`ReplyMatcher`] (shared, `Arc`, with the receiver) maps a [`Classified`] reply back to its
//!   probe index, checks the cookie, records the state in the lock-free [`StateTable`], marks
//!   the host up, and keeps the job's round-trip estimates ([`RttTable`]): the samples come in
//!   batches through [`ReplyMatcher::take_samples`], so that the receiver takes no lock per
//!   packet. It also keeps the job's [`EvidenceTable`]: canary answers (probe indices past
//!   the space, see [`ReplyMatcher::canary_index`]) and SYN-ACK fingerprints, from which
//!   [`ReplyMatcher::suspects`] draws each host's verdict at the end.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use synwatch_wire::{PayloadHead, PayloadTable, QuotedTransport, ReplyRepr};

use crate::cookie::{CookieKey, STAMP_BITS, SourcePortRange, stamp_age};
use crate::evidence::{EvidenceTable, HostEvidence, Suspect, SynAckFingerprint, classify_host};
use crate::ports::{Port, Protocol};
use crate::table::{PortState, RecordOutcome, StateTable};
use crate::targets::TargetSpace;
use crate::timing::{
    GroupKey, RttEstimate, RttMemory, RttTable, TimeoutSource, TimingBounds, fallback_timeout, group_timeout,
};

/// A reply reduced to what matching needs, independent of any job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    /// Our address the probe came from.
    pub local: IpAddr,
    /// Our source port.
    pub local_port: u16,
    /// The probed address.
    pub remote: IpAddr,
    /// The probed port (and its protocol).
    pub remote_port: Port,
    /// What in the reply carries the probe's cookie besides the port.
    pub cookie: ReplyCookie,
    /// The state this reply means.
    pub state: PortState,
    /// The echoed TCP timestamp of a SYN-ACK (our send time in microseconds).
    pub timestamp_echo: Option<u32>,
    /// What a SYN-ACK looked like (window, options, TTL).
    pub fingerprint: Option<SynAckFingerprint>,
}

/// Where a reply carries its probe's cookie, besides our port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyCookie {
    /// A TCP probe's sequence number as implied by the reply (ack − 1, or the quoted one).
    Sequence(u32),
    /// A UDP answer: its payload's first bytes, where the protocol echoes the probe's id.
    UdpAnswer(PayloadHead),
    /// An ICMP error quoting a UDP probe: what it quotes of the probe's payload.
    UdpQuote(PayloadHead),
}

/// Decides what a parsed packet means, before knowing which job it belongs to.
///
/// * TCP: SYN-ACK → open; RST with ACK → closed; ICMP/ICMPv6 destination unreachable quoting
///   a TCP segment → filtered (every code: network, host, protocol, port unreachable and the
///   administratively prohibited ones all mean the port cannot be reached).
/// * UDP (nmap's meanings): any datagram from the probed port → open; ICMPv4 port unreachable
///   (code 3) or ICMPv6 port unreachable (code 4) quoting the probe → closed; any other
///   unreachable → filtered. No answer becomes `open|filtered` at the end.
/// * Anything to a port outside our source range, our own outgoing probes, or other TCP
///   segments are not replies: `None`.
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
                remote_port: Port::tcp(tcp.source_port),
                cookie: ReplyCookie::Sequence(tcp.acknowledgement.wrapping_sub(1)),
                state,
                timestamp_echo: if state == PortState::Open { tcp.timestamp_echo } else { None },
                fingerprint: (state == PortState::Open).then_some(SynAckFingerprint {
                    window: tcp.window,
                    has_options: tcp.has_options,
                    ttl: tcp.ttl,
                }),
            })
        }
        ReplyRepr::Udp(udp) => {
            if !ports.contains(udp.destination_port) {
                return None;
            }
            Some(Classified {
                local: udp.destination,
                local_port: udp.destination_port,
                remote: udp.source,
                remote_port: Port::udp(udp.source_port),
                cookie: ReplyCookie::UdpAnswer(udp.head),
                state: PortState::Open,
                timestamp_echo: None,
                fingerprint: None,
            })
        }
        ReplyRepr::Unreachable(icmp) => {
            if !ports.contains(icmp.probe.source_port) {
                return None;
            }
            let (remote_port, cookie, state) = match icmp.probe.transport {
                QuotedTransport::Tcp => (
                    Port::tcp(icmp.probe.destination_port),
                    ReplyCookie::Sequence(icmp.probe.sequence),
                    PortState::Filtered,
                ),
                QuotedTransport::Udp => {
                    let port_unreachable = if icmp.is_icmpv6 { icmp.code == 4 } else { icmp.code == 3 };
                    (
                        Port::udp(icmp.probe.destination_port),
                        ReplyCookie::UdpQuote(icmp.probe.payload),
                        if port_unreachable { PortState::Closed } else { PortState::Filtered },
                    )
                }
            };
            Some(Classified {
                local: icmp.probe.source,
                local_port: icmp.probe.source_port,
                remote: icmp.probe.destination,
                remote_port,
                cookie,
                state,
                timestamp_echo: None,
                fingerprint: None,
            })
        }
    }
}

/// The built-in payloads, built once for every job that brings none of its own.
fn built_in_payloads() -> Arc<PayloadTable> {
    static BUILT_IN: std::sync::LazyLock<Arc<PayloadTable>> =
        std::sync::LazyLock::new(|| Arc::new(PayloadTable::built_in()));
    Arc::clone(&BUILT_IN)
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
        /// The probe index (past the space's end for a canary: [`ReplyMatcher::is_canary`]).
        index: u64,
        /// First answer or duplicate.
        outcome: RecordOutcome,
        /// The round trip this reply measured, if it carried its send time (every TCP reply
        /// does; a UDP one when its protocol echoes the id the stamp is in): the caller takes
        /// it into the job's estimates with [`ReplyMatcher::take_samples`] when it was the
        /// first answer (in batches, so that the receiver takes no lock per packet).
        rtt: Option<Duration>,
    },
}

/// What a job learned about timing, for its summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimingReport {
    /// The estimate over every sample of the job.
    pub estimate: Option<RttEstimate>,
    /// Groups with samples.
    pub groups_sampled: usize,
    /// The last round or wait timeout the job used, and where it came from.
    pub last_timeout: Option<(Duration, TimeoutSource)>,
}

#[derive(Debug, Default)]
struct MatcherTiming {
    table: RttTable,
    last_timeout: Option<(Duration, TimeoutSource)>,
}

/// The part of a job shared with the receiver thread.
#[derive(Debug)]
pub struct ReplyMatcher {
    space: Arc<TargetSpace>,
    cookie_key: CookieKey,
    sources: [Option<IpAddr>; 2],
    table: StateTable,
    /// One bit per host: it answered (SYN-ACK or RST) on some port.
    hosts_up: Box<[AtomicU64]>,
    /// Two bits per host (empty for a job without UDP ports): it answered port unreachable to a
    /// retry of a UDP probe at least once, and at least twice (see
    /// [`ReplyMatcher::note_closed_on_retry`]).
    closed_on_retry: [Box<[AtomicU64]>; 2],
    bounds: TimingBounds,
    timing: Mutex<MatcherTiming>,
    memory: Arc<RttMemory>,
    evidence: EvidenceTable,
    payloads: Arc<PayloadTable>,
}

/// The low bits of a stamped sequence that carry the send time.
const STAMP_MASK: u32 = (1 << STAMP_BITS) - 1;

impl ReplyMatcher {
    /// The matcher of a job over `space` (built by [`crate::JobCore::with_memory`]).
    pub(crate) fn new(
        space: Arc<TargetSpace>,
        cookie_key: CookieKey,
        sources: [Option<IpAddr>; 2],
        bounds: TimingBounds,
        memory: Arc<RttMemory>,
        canary_ports: Vec<u16>,
    ) -> ReplyMatcher {
        let table = StateTable::new(space.len());
        let evidence = EvidenceTable::new(space.hosts().len(), canary_ports);
        let hosts_up = (0..space.hosts().len().div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        let udp_words =
            if space.ports().count_of(crate::Protocol::Udp) > 0 { space.hosts().len().div_ceil(64) } else { 0 };
        let closed_on_retry = [0, 1].map(|_| (0..udp_words).map(|_| AtomicU64::new(0)).collect());
        ReplyMatcher {
            space,
            cookie_key,
            sources,
            table,
            hosts_up,
            closed_on_retry,
            bounds,
            timing: Mutex::new(MatcherTiming::default()),
            memory,
            evidence,
            payloads: built_in_payloads(),
        }
    }

    /// The payloads the job's UDP probes carry.
    pub fn payloads(&self) -> &PayloadTable {
        &self.payloads
    }

    /// Replaces the job's payloads (before it starts: see [`crate::JobCore::with_payloads`]).
    pub(crate) fn set_payloads(&mut self, payloads: Arc<PayloadTable>) {
        self.payloads = payloads;
    }

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

    /// Validates `reply`, received at `now` (the engine's clock), against this job and records
    /// its state and its host as up; returns its round trip for [`ReplyMatcher::take_samples`].
    /// A reply that fails the cookie check touches nothing.
    #[inline]
    pub fn offer(&self, reply: &Classified, now: Duration) -> ReplyMatch {
        if self.source_for(reply.remote.is_ipv6()) != Some(reply.local) {
            return ReplyMatch::NotInJob;
        }
        let remote_port = self.probed_port(reply);
        let index = match self.space.index_of(reply.remote, remote_port) {
            Some(index) => index,
            None => match self.canary_index_of(reply.remote, remote_port) {
                Some(index) => index,
                None => return ReplyMatch::NotInJob,
            },
        };
        let expected = self.cookie_key.cookie(reply.local, reply.remote, remote_port);
        if expected.source_port != reply.local_port {
            return ReplyMatch::BadCookie;
        }
        let rtt = match reply.cookie {
            ReplyCookie::Sequence(sequence) => {
                if !expected.matches_sequence(sequence) {
                    return ReplyMatch::BadCookie;
                }
                // The echoed timestamp counts microseconds; the sequence's stamp milliseconds.
                Some(
                    reply
                        .timestamp_echo
                        .map(|echo| (now.as_micros() as u32).wrapping_sub(echo))
                        .filter(|&micros| micros < 60_000_000)
                        .map_or_else(|| stamp_age(sequence, now), |micros| Duration::from_micros(u64::from(micros))),
                )
            }
            ReplyCookie::UdpAnswer(head) | ReplyCookie::UdpQuote(head) => {
                let payload = self.payloads.for_port(remote_port.number);
                let bits = match reply.cookie {
                    ReplyCookie::UdpAnswer(_) => payload.echoed_cookie(head.as_slice()),
                    _ => payload.quoted_cookie(head.as_slice()),
                };
                match bits {
                    // No id in this protocol (or not quoted): the port is the whole check.
                    None => None,
                    Some(bits) => {
                        // The stamp bits are the send time, not part of the check.
                        let checked = bits.mask & !STAMP_MASK;
                        if bits.mask == 0 || (bits.value ^ expected.sequence) & checked != 0 {
                            return ReplyMatch::BadCookie;
                        }
                        (bits.mask & STAMP_MASK == STAMP_MASK).then(|| stamp_age(bits.value, now))
                    }
                }
            }
        };
        let Some(outcome) = self.record_with_fingerprint(index, reply.remote, reply.state, None, reply.fingerprint)
        else {
            // A canary answer for a host that was never sent canaries: not evidence.
            return ReplyMatch::BadCookie;
        };
        ReplyMatch::Matched { index, outcome, rtt }
    }

    /// The port a reply answers for: its source port, except for TFTP, whose server answers a
    /// read request from a new port (RFC 1350 §4, the transfer's own): a TFTP packet (DATA,
    /// ERROR or OACK) to our port from a port the job did not probe answers the host's udp/69,
    /// when the job probed it (the cookie in our port then checks it like any answer).
    fn probed_port(&self, reply: &Classified) -> Port {
        const TFTP: Port = Port::udp(69);
        if let ReplyCookie::UdpAnswer(head) = reply.cookie
            && matches!(head.as_slice(), [0, 3 | 5 | 6, ..])
            && !self.space.ports().contains(reply.remote_port)
            && self.space.ports().contains(TFTP)
        {
            return TFTP;
        }
        reply.remote_port
    }

    /// Takes round-trip samples (remote address, round trip) of first answers into the job's
    /// estimates, under one lock.
    pub fn take_samples(&self, samples: &[(IpAddr, Duration)]) {
        if samples.is_empty() {
            return;
        }
        let mut timing = self.timing.lock();
        for &(remote, rtt) in samples {
            timing.table.record(remote, rtt, &self.bounds);
        }
    }

    /// Records an answer for probe `index` of `remote` (a connect() attempt's, or a validated
    /// reply's): its state, its host as up (open or closed), and its round trip if given, when
    /// it is the first answer.
    /// A canary's answer (index past the space) counts as a duplicate when the host was never
    /// sent canaries.
    pub fn record(&self, index: u64, remote: IpAddr, state: PortState, rtt: Option<Duration>) -> RecordOutcome {
        self.record_with_fingerprint(index, remote, state, rtt, None).unwrap_or(RecordOutcome::Duplicate)
    }

    fn record_with_fingerprint(
        &self,
        index: u64,
        remote: IpAddr,
        state: PortState,
        rtt: Option<Duration>,
        fingerprint: Option<SynAckFingerprint>,
    ) -> Option<RecordOutcome> {
        let ports = self.space.ports().len() as u64;
        let (host, outcome) = match self.canary_of(index) {
            Some((host, slot)) => (host, self.evidence.record_canary(host, slot, state, fingerprint)?),
            None => {
                let outcome = self.table.record(index, state);
                // Evidence is about SYN-ACKs: a UDP answer is a service's own.
                let is_tcp = self.space.ports().port_at((index % ports) as usize).is_some_and(Port::is_tcp);
                if outcome == RecordOutcome::First && state == PortState::Open && is_tcp {
                    self.evidence.note_open(index / ports, fingerprint);
                }
                (index / ports, outcome)
            }
        };
        if outcome == RecordOutcome::First {
            if matches!(state, PortState::Open | PortState::Closed)
                && let Some(word) = self.hosts_up.get((host / 64) as usize)
            {
                word.fetch_or(1 << (host % 64), Ordering::Relaxed);
            }
            if let Some(rtt) = rtt {
                self.timing.lock().table.record(remote, rtt, &self.bounds);
            }
        }
        Some(outcome)
    }

    /// The job's canary and fingerprint evidence.
    pub fn evidence(&self) -> &EvidenceTable {
        &self.evidence
    }

    /// The probe index of canary `slot` of `host`: past the space, `len + host × canaries +
    /// slot`.
    pub fn canary_index(&self, host: u64, slot: usize) -> u64 {
        self.space.len() + host * self.evidence.canary_ports().len() as u64 + slot as u64
    }

    /// Whether `index` is a canary's (see [`ReplyMatcher::canary_index`]).
    pub fn is_canary(&self, index: u64) -> bool {
        index >= self.space.len()
    }

    /// The (host, slot) of a canary index.
    fn canary_of(&self, index: u64) -> Option<(u64, usize)> {
        let per_host = self.evidence.canary_ports().len() as u64;
        let offset = index.checked_sub(self.space.len())?;
        (per_host > 0 && offset / per_host < self.space.hosts().len())
            .then(|| (offset / per_host, (offset % per_host) as usize))
    }

    fn canary_index_of(&self, remote: IpAddr, port: Port) -> Option<u64> {
        if !port.is_tcp() {
            return None;
        }
        let slot = self.evidence.canary_slot(port.number)?;
        let host = self.space.hosts().index_of(remote)?;
        Some(self.canary_index(host, slot))
    }

    /// Everything known about `host` (its index in the space's hosts), over its TCP ports.
    pub fn host_evidence(&self, host: u64) -> HostEvidence {
        let ports = self.space.ports().len() as u64;
        // TCP ports come first in a port set.
        let tcp_ports = self.space.ports().count_of(Protocol::Tcp) as u64;
        let mut evidence = self.evidence.host_evidence(host);
        evidence.ports_scanned = tcp_ports as u32;
        for index in host * ports..host * ports + tcp_ports {
            match self.table.get(index) {
                PortState::Open => evidence.ports_open += 1,
                PortState::Closed => evidence.ports_closed += 1,
                _ => {}
            }
        }
        evidence
    }

    /// The hosts whose opens are not trusted, with the reason, in host order: the verdict of
    /// [`classify_host`] on every host that answered SYN-ACK.
    pub fn suspects(&self) -> Vec<(u64, Suspect)> {
        self.evidence
            .open_hosts()
            .filter_map(|host| classify_host(&self.host_evidence(host)).map(|reason| (host, reason)))
            .collect()
    }

    /// Notes that the UDP probe `index` was first answered port unreachable in a retry round:
    /// its first send drew nothing. A host doing so on two or more ports is most likely
    /// limiting its ICMP errors (Linux: six to a peer, then one a second), which paced retries
    /// get through; loss alone rarely hits two closed ports of one host. The I/O layer, which
    /// knows the job's round, calls it after recording the answer.
    pub fn note_closed_on_retry(&self, index: u64) {
        let host = index / self.space.ports().len() as u64;
        let (word, bit) = ((host / 64) as usize, 1u64 << (host % 64));
        let [once, twice] = &self.closed_on_retry;
        if let Some(word_once) = once.get(word)
            && word_once.fetch_or(bit, Ordering::Relaxed) & bit != 0
            && let Some(word_twice) = twice.get(word)
        {
            word_twice.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// The hosts (by index) that answered port unreachable to retries on two or more UDP ports
    /// they had left unanswered at first: their ICMP errors look rate-limited.
    pub fn hosts_closed_on_retries(&self) -> Vec<u64> {
        let [_, twice] = &self.closed_on_retry;
        let mut hosts = Vec::new();
        for (word_index, word) in twice.iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 {
                hosts.push(word_index as u64 * 64 + u64::from(bits.trailing_zeros()));
                bits &= bits - 1;
            }
        }
        hosts
    }

    /// Whether the host of probe `index` answered on some port.
    pub fn host_up(&self, index: u64) -> bool {
        let host = index / self.space.ports().len() as u64;
        self.hosts_up
            .get((host / 64) as usize)
            .is_some_and(|word| word.load(Ordering::Relaxed) & (1 << (host % 64)) != 0)
    }

    /// The retry timeout of `address`'s group at `now` (see [`group_timeout`]).
    pub fn timeout_for(&self, address: IpAddr, now: Duration) -> Duration {
        let timing = self.timing.lock();
        group_timeout(&timing.table, &self.memory, GroupKey::of(address), &self.bounds, now).0
    }

    /// The slowest timeout of `groups` at `now` (with the fallback's when `others`: groups
    /// beyond the survey's capacity), recorded as the job's last timeout.
    pub(crate) fn slowest_timeout(
        &self,
        groups: &[GroupKey],
        others: bool,
        now: Duration,
    ) -> (Duration, TimeoutSource) {
        let mut timing = self.timing.lock();
        let table = &timing.table;
        let mut slowest = if others || groups.is_empty() {
            fallback_timeout(table, &self.memory, &self.bounds, now)
        } else {
            (Duration::ZERO, TimeoutSource::Group)
        };
        for &key in groups {
            let candidate = group_timeout(table, &self.memory, key, &self.bounds, now);
            if candidate.0 > slowest.0 {
                slowest = candidate;
            }
        }
        timing.last_timeout = Some(slowest);
        slowest
    }

    /// What the job learned about timing so far.
    pub fn timing_report(&self) -> TimingReport {
        let timing = self.timing.lock();
        TimingReport {
            estimate: timing.table.job(),
            groups_sampled: timing.table.groups_sampled(),
            last_timeout: timing.last_timeout,
        }
    }

    /// Hands what the job learned to the engine's memory (at the job's end).
    pub fn remember(&self, now: Duration) {
        let timing = self.timing.lock();
        self.memory.absorb(&timing.table, now);
    }
}
