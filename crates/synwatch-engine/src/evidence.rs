//! Evidence that a host's SYN-ACKs are not services, and the verdict drawn from it.
//!
//! SYN proxies, DDoS scrubbers, tarpits and some firewalls answer SYN-ACK on every port. A
//! monitor that reports those as open raises thousands of false "port opened" changes for one
//! such host. While it scans, a job collects two kinds of evidence per host, with no
//! configuration:
//!
//! * **Canaries**: a few ports per host that answered SYN-ACK, drawn from the job's keyed
//!   permutation of the high ports ([`canary_ports`]), so they are the same for every host of a
//!   scan and stable for a seed. A real host almost never listens there; a host that answers
//!   SYN-ACK there answers everywhere. The sender sends them in the job's retry rounds, at the
//!   job's rate, in two steps: the first canary alone, and the others only when it answered
//!   SYN-ACK (a RST there already clears the host, so an ordinary host costs one canary, not
//!   three). A host's canaries are *concluded* when one answered anything but SYN-ACK, or all
//!   answered SYN-ACK. They are counted but never reported as results.
//! * **Fingerprints** of each first SYN-ACK ([`SynAckFingerprint`]): SYN proxies answer with a
//!   zero window or no TCP options at all, which no common operating system does.
//!
//! [`EvidenceTable`] holds both without a lock (bit sets and a two-bit state table), so the
//! receiver records evidence as it records states. [`classify_host`] turns a host's
//! [`HostEvidence`] into a [`Suspect`] reason, or none. Replies that fail the cookie check, or
//! answer canaries that were never sent, never become evidence (the matcher drops them first).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::permutation::Permutation;
use crate::ports::{Port, PortSet};
use crate::table::{PortState, RecordOutcome, StateTable};

/// Canary ports per host by default.
pub const DEFAULT_CANARIES: u32 = 3;

/// The most canary ports per host.
pub const MAX_CANARIES: u32 = 8;

/// The first port canaries are drawn from; they are drawn from here to 65535.
pub const CANARY_FIRST_PORT: u16 = 40_000;

/// High ports that real services use (Windows RPC's first dynamic ports, SAP, Hadoop,
/// BitTorrent, iOS lockdown, Mumble, common "high" test ports): never canaries.
const CANARY_AVOIDED: [u16; 16] = [
    40_000, 44_818, 47_808, 49_152, 49_153, 49_154, 49_155, 49_156, 49_157, 50_000, 50_070, 51_413, 60_000, 62_078,
    64_738, 65_535,
];

/// Why a host's open ports are not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Suspect {
    /// Every canary and (almost) all its scanned ports answered SYN-ACK.
    AllOpen,
    /// Its SYN-ACKs carry a SYN proxy's fingerprint (zero window or no options) and a canary
    /// answered SYN-ACK too.
    Synproxy,
}

impl Suspect {
    /// Every reason, in the order outputs list them.
    pub const ALL: [Suspect; 2] = [Suspect::AllOpen, Suspect::Synproxy];

    /// The reason as outputs write it: `all_open` or `synproxy`.
    pub fn name(self) -> &'static str {
        match self {
            Suspect::AllOpen => "all_open",
            Suspect::Synproxy => "synproxy",
        }
    }

    /// The reason's position in [`Suspect::ALL`] (for counts kept per reason).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The reason for a name written by [`Suspect::name`].
    pub fn from_name(name: &str) -> Option<Suspect> {
        Suspect::ALL.into_iter().find(|reason| reason.name() == name)
    }
}

/// What a SYN-ACK looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynAckFingerprint {
    /// The advertised window.
    pub window: u16,
    /// Whether it carried any TCP option.
    pub has_options: bool,
    /// The TTL or hop limit it arrived with.
    pub ttl: u8,
}

impl SynAckFingerprint {
    /// Whether it looks like a SYN proxy's: a zero window or no options. Every common stack
    /// offers a window and at least an MSS option in its SYN-ACK.
    pub fn looks_proxied(&self) -> bool {
        self.window == 0 || !self.has_options
    }
}

/// Everything known about one host at the end of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostEvidence {
    /// Scanned ports that answered SYN-ACK.
    pub ports_open: u32,
    /// Scanned ports that answered RST.
    pub ports_closed: u32,
    /// Ports scanned on the host.
    pub ports_scanned: u32,
    /// Canary ports the job had (0 when canaries are off or none could be drawn).
    pub canaries: u32,
    /// Whether canaries were sent to this host.
    pub canaries_sent: bool,
    /// Canaries that answered SYN-ACK.
    pub canaries_open: u32,
    /// Canaries that answered RST.
    pub canaries_closed: u32,
    /// Some SYN-ACK of the host looked like a SYN proxy's.
    pub proxied_syn_acks: bool,
    /// Some SYN-ACK of the host looked like an ordinary stack's.
    pub plain_syn_acks: bool,
}

/// The verdict on a host: `None` when its opens can be trusted.
///
/// * [`Suspect::Synproxy`]: every SYN-ACK fingerprinted looked proxied, and a canary answered
///   SYN-ACK.
/// * [`Suspect::AllOpen`]: every canary answered SYN-ACK, and so did at least nine in ten of
///   its scanned ports. Each probe has all its retries, so loss alone rarely spares a
///   middlebox; a port that stayed silent or answered RST counts against the verdict.
///
/// A host with many real services keeps its closed canaries, and so stays clean; a host whose
/// canaries were all lost has no evidence against it, and stays clean too. Asking for every
/// canary and (almost) every port is what keeps clean a host that happens to listen on the
/// canary ports: in the field lab's `internet` profile, where any port of a host is open with
/// 8 % chance, two hosts of a /16 answer all three canaries, and none also every scanned port.
pub fn classify_host(evidence: &HostEvidence) -> Option<Suspect> {
    if evidence.ports_open == 0 {
        return None;
    }
    if evidence.proxied_syn_acks && !evidence.plain_syn_acks && evidence.canaries_open >= 1 {
        return Some(Suspect::Synproxy);
    }
    let scanned = u64::from(evidence.ports_scanned.max(evidence.ports_open));
    (evidence.canaries > 0
        && evidence.canaries_open == evidence.canaries
        && u64::from(evidence.ports_open) * 10 >= scanned * 9)
        .then_some(Suspect::AllOpen)
}

/// The job's canary ports: `count` ports from 40000–65535, in the order of a permutation keyed
/// by `seed`, skipping scanned ports and [`CANARY_AVOIDED`]. Fewer when the scan covers nearly
/// all of them.
pub fn canary_ports(seed: u64, scanned: &PortSet, count: u32) -> Vec<u16> {
    let range = u64::from(u16::MAX - CANARY_FIRST_PORT) + 1;
    let permutation = Permutation::new(range, seed ^ 0x6361_6e61_7279_2121);
    let wanted = count.min(MAX_CANARIES) as usize;
    let mut ports = Vec::with_capacity(wanted);
    for position in 0..range {
        if ports.len() == wanted {
            break;
        }
        let port = CANARY_FIRST_PORT + permutation.at(position) as u16;
        if !scanned.contains(Port::tcp(port)) && !CANARY_AVOIDED.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

/// A lock-free bit per host.
#[derive(Debug)]
struct HostBits(Box<[AtomicU64]>);

impl HostBits {
    fn new(hosts: u64) -> HostBits {
        HostBits((0..hosts.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    /// Sets the bit of `host`; returns whether it was newly set.
    fn set(&self, host: u64) -> bool {
        let bit = 1 << (host % 64);
        self.0.get((host / 64) as usize).is_some_and(|word| word.fetch_or(bit, Ordering::Relaxed) & bit == 0)
    }

    fn get(&self, host: u64) -> bool {
        self.0.get((host / 64) as usize).is_some_and(|word| word.load(Ordering::Relaxed) & (1 << (host % 64)) != 0)
    }

    /// The hosts whose bit is set, in order.
    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().enumerate().flat_map(|(word_index, word)| {
            let mut bits = word.load(Ordering::Relaxed);
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let bit = u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    word_index as u64 * 64 + bit
                })
            })
        })
    }
}

/// The canary and fingerprint evidence of a job, shared by its sender and receiver threads.
#[derive(Debug)]
pub struct EvidenceTable {
    canary_ports: Box<[u16]>,
    /// Two bits per (host, canary): `host * canaries + slot`.
    canaries: StateTable,
    /// Hosts with a scanned port answered SYN-ACK.
    open: HostBits,
    /// Hosts canaries were sent to.
    canaried: HostBits,
    /// The (host, canary) pairs sent at least once: `host * canaries + slot`.
    sent: HostBits,
    /// Hosts whose canaries are concluded (see the module doc).
    concluded: HostBits,
    proxied: HostBits,
    plain: HostBits,
    hosts_open: AtomicU64,
    hosts_canaried: AtomicU64,
    hosts_concluded: AtomicU64,
    /// Distinct (host, canary) pairs sent.
    canaries_sent: AtomicU64,
    canary_probes_sent: AtomicU64,
}

/// A job's evidence in figures, for its summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EvidenceCounts {
    /// Canary ports per host.
    pub canary_ports: u32,
    /// Hosts canaries were sent to.
    pub hosts_canaried: u64,
    /// Canary probes sent, retries included.
    pub canary_probes_sent: u64,
    /// Canaries that answered SYN-ACK.
    pub canaries_open: u64,
    /// Canaries that answered RST.
    pub canaries_closed: u64,
}

impl EvidenceTable {
    /// The evidence table of a job over `hosts` hosts with these canary ports.
    pub fn new(hosts: u64, canary_ports: Vec<u16>) -> EvidenceTable {
        let per_host = canary_ports.len() as u64;
        EvidenceTable {
            canaries: StateTable::new(hosts.saturating_mul(per_host)),
            canary_ports: canary_ports.into_boxed_slice(),
            open: HostBits::new(hosts),
            canaried: HostBits::new(hosts),
            sent: HostBits::new(hosts.saturating_mul(per_host)),
            concluded: HostBits::new(hosts),
            proxied: HostBits::new(hosts),
            plain: HostBits::new(hosts),
            hosts_open: AtomicU64::new(0),
            hosts_canaried: AtomicU64::new(0),
            hosts_concluded: AtomicU64::new(0),
            canaries_sent: AtomicU64::new(0),
            canary_probes_sent: AtomicU64::new(0),
        }
    }

    /// The canary ports, the same for every host of the job.
    pub fn canary_ports(&self) -> &[u16] {
        &self.canary_ports
    }

    /// The slot of `port` among the canary ports.
    pub fn canary_slot(&self, port: u16) -> Option<usize> {
        self.canary_ports.iter().position(|&canary| canary == port)
    }

    /// The state of canary `slot` of `host`.
    pub fn canary_state(&self, host: u64, slot: usize) -> PortState {
        self.canaries.get(host * self.canary_ports.len() as u64 + slot as u64)
    }

    /// Whether canaries were sent to `host`.
    pub fn canaried(&self, host: u64) -> bool {
        self.canaried.get(host)
    }

    /// Whether `host` answered SYN-ACK on a scanned port.
    pub fn host_open(&self, host: u64) -> bool {
        self.open.get(host)
    }

    /// Whether `host`'s canaries are concluded: one answered anything but SYN-ACK, or every
    /// one answered SYN-ACK. A concluded host is sent no more canaries.
    pub fn concluded(&self, host: u64) -> bool {
        self.concluded.get(host)
    }

    /// The canary slots of `host` to send now, in order: the first alone while it has no
    /// answer, then every unanswered other one once it answered SYN-ACK; none once concluded.
    pub fn slots_to_send(&self, host: u64) -> impl Iterator<Item = usize> + '_ {
        let first_open = self.canary_state(host, 0) == PortState::Open;
        let concluded = self.concluded(host);
        (0..self.canary_ports.len()).filter(move |&slot| {
            !concluded && (slot == 0 || first_open) && self.canary_state(host, slot) == PortState::Unknown
        })
    }

    /// Counts canary `slot` of `host` going out (the sender calls it per canary probe).
    pub fn note_canary_sent(&self, host: u64, slot: usize) {
        self.canary_probes_sent.fetch_add(1, Ordering::Relaxed);
        if self.canaried.set(host) {
            self.hosts_canaried.fetch_add(1, Ordering::Relaxed);
        }
        if self.sent.set(host * self.canary_ports.len() as u64 + slot as u64) {
            self.canaries_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a validated first SYN-ACK of a scanned port of `host`, with its fingerprint when
    /// the reply was a raw packet (connect() answers have none).
    pub fn note_open(&self, host: u64, fingerprint: Option<SynAckFingerprint>) {
        if self.open.set(host) {
            self.hosts_open.fetch_add(1, Ordering::Relaxed);
        }
        self.note_fingerprint(host, fingerprint);
    }

    fn note_fingerprint(&self, host: u64, fingerprint: Option<SynAckFingerprint>) {
        match fingerprint {
            Some(fingerprint) if fingerprint.looks_proxied() => self.proxied.set(host),
            Some(_) => self.plain.set(host),
            None => false,
        };
    }

    /// Records a validated answer to canary `slot` of `host`. An answer to a canary that was
    /// never sent is refused (`None`): it cannot be evidence.
    pub fn record_canary(
        &self,
        host: u64,
        slot: usize,
        state: PortState,
        fingerprint: Option<SynAckFingerprint>,
    ) -> Option<RecordOutcome> {
        let per_host = self.canary_ports.len() as u64;
        if slot >= self.canary_ports.len() || !self.sent.get(host * per_host + slot as u64) {
            return None;
        }
        let outcome = self.canaries.record(host * per_host + slot as u64, state);
        if outcome == RecordOutcome::First {
            if state == PortState::Open {
                self.note_fingerprint(host, fingerprint);
            }
            let all_open = (0..self.canary_ports.len()).all(|slot| self.canary_state(host, slot) == PortState::Open);
            if (state != PortState::Open || all_open) && self.concluded.set(host) {
                self.hosts_concluded.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(outcome)
    }

    /// Whether every host that answered SYN-ACK has been sent canaries and each one's canaries
    /// are concluded: then canaries do not keep an otherwise answered job going.
    pub fn settled(&self) -> bool {
        let canaried = self.hosts_canaried.load(Ordering::Relaxed);
        self.canary_ports.is_empty()
            || (self.hosts_open.load(Ordering::Relaxed) == canaried
                && self.hosts_concluded.load(Ordering::Relaxed) == canaried)
    }

    /// Whether some canary that was sent has no answer yet.
    pub fn sent_unanswered(&self) -> bool {
        self.canaries.answered() < self.canaries_sent.load(Ordering::Relaxed)
    }

    /// The canary part of `host`'s evidence, and its fingerprints (the caller adds the scanned
    /// ports' counts).
    pub fn host_evidence(&self, host: u64) -> HostEvidence {
        let mut evidence = HostEvidence {
            canaries: self.canary_ports.len() as u32,
            canaries_sent: self.canaried.get(host),
            proxied_syn_acks: self.proxied.get(host),
            plain_syn_acks: self.plain.get(host),
            ..HostEvidence::default()
        };
        for slot in 0..self.canary_ports.len() {
            match self.canary_state(host, slot) {
                PortState::Open => evidence.canaries_open += 1,
                PortState::Closed => evidence.canaries_closed += 1,
                _ => {}
            }
        }
        evidence
    }

    /// The hosts that answered SYN-ACK on a scanned port, in order.
    pub fn open_hosts(&self) -> impl Iterator<Item = u64> + '_ {
        self.open.iter()
    }

    /// The job's evidence in figures.
    pub fn counts(&self) -> EvidenceCounts {
        EvidenceCounts {
            canary_ports: self.canary_ports.len() as u32,
            hosts_canaried: self.hosts_canaried.load(Ordering::Relaxed),
            canary_probes_sent: self.canary_probes_sent.load(Ordering::Relaxed),
            canaries_open: self.canaries.count(PortState::Open),
            canaries_closed: self.canaries.count(PortState::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host with three scanned ports (or as many as it answered on), three canaries sent.
    fn host(ports_open: u32, ports_closed: u32, canaries_open: u32, canaries_closed: u32) -> HostEvidence {
        HostEvidence {
            ports_open,
            ports_closed,
            ports_scanned: (ports_open + ports_closed).max(3),
            canaries: 3,
            canaries_sent: true,
            canaries_open,
            canaries_closed,
            plain_syn_acks: ports_open > 0,
            ..HostEvidence::default()
        }
    }

    #[test]
    fn every_canary_and_port_open_is_all_open() {
        assert_eq!(classify_host(&host(3, 0, 3, 0)), Some(Suspect::AllOpen));
        // Two canaries of three are not enough (the third filtered, or lost every try); a
        // closed canary clears the host.
        assert_eq!(classify_host(&host(3, 0, 2, 0)), None);
        assert_eq!(classify_host(&host(3, 0, 1, 0)), None);
        assert_eq!(classify_host(&host(3, 0, 2, 1)), None);
        // A scanned port silent or closed: of three, that is more than a tenth.
        assert_eq!(classify_host(&host(2, 0, 3, 0)), None);
        assert_eq!(classify_host(&host(2, 1, 3, 0)), None);
        // Of a hundred, nine in ten is enough.
        assert_eq!(classify_host(&host(8, 2, 3, 0)), None);
        assert_eq!(classify_host(&host(90, 10, 3, 0)), Some(Suspect::AllOpen));
        let lossy = HostEvidence { ports_scanned: 100, ..host(91, 0, 3, 0) };
        assert_eq!(classify_host(&lossy), Some(Suspect::AllOpen), "nine silent ports of a hundred");
    }

    #[test]
    fn a_host_with_many_services_and_closed_canaries_stays_clean() {
        assert_eq!(classify_host(&host(1000, 0, 0, 3)), None);
        // Canaries all lost or filtered: no evidence either way.
        assert_eq!(classify_host(&host(1000, 0, 0, 0)), None);
        // No open port: nothing to suspect.
        assert_eq!(classify_host(&host(0, 5, 3, 0)), None);
    }

    #[test]
    fn proxied_fingerprints_with_an_open_canary_are_a_synproxy() {
        let proxied = HostEvidence { proxied_syn_acks: true, plain_syn_acks: false, ..host(3, 0, 1, 2) };
        assert_eq!(classify_host(&proxied), Some(Suspect::Synproxy));
        // The fingerprint outranks "all open".
        let both = HostEvidence { proxied_syn_acks: true, plain_syn_acks: false, ..host(3, 0, 3, 0) };
        assert_eq!(classify_host(&both), Some(Suspect::Synproxy));
        // A small stack without options on its one service, canaries closed: clean.
        let embedded = HostEvidence { proxied_syn_acks: true, plain_syn_acks: false, ..host(1, 2, 0, 3) };
        assert_eq!(classify_host(&embedded), None);
        // Mixed fingerprints (a proxy in front of some ports only) fall back on the canaries.
        let mixed = HostEvidence { proxied_syn_acks: true, plain_syn_acks: true, ..host(3, 0, 1, 2) };
        assert_eq!(classify_host(&mixed), None);
        assert!(SynAckFingerprint { window: 0, has_options: true, ttl: 64 }.looks_proxied());
        assert!(SynAckFingerprint { window: 29200, has_options: false, ttl: 64 }.looks_proxied());
        assert!(!SynAckFingerprint { window: 16, has_options: true, ttl: 64 }.looks_proxied());
    }

    #[test]
    fn canary_ports_are_high_unscanned_stable_per_seed_and_differ_between_seeds() {
        let scanned = PortSet::parse("22,80,443,40000-45000").unwrap();
        let ports = canary_ports(7, &scanned, 3);
        assert_eq!(ports.len(), 3);
        assert_eq!(ports, canary_ports(7, &scanned, 3));
        assert_ne!(ports, canary_ports(8, &scanned, 3));
        for port in &ports {
            assert!(*port > 45_000 && !CANARY_AVOIDED.contains(port));
        }
        assert_eq!(canary_ports(7, &scanned, 99).len(), MAX_CANARIES as usize);
        assert!(canary_ports(7, &PortSet::parse("1-65535").unwrap(), 3).is_empty());
        assert!(canary_ports(7, &scanned, 0).is_empty());
    }

    #[test]
    fn the_first_canary_goes_alone_and_a_rst_concludes_the_host() {
        let table = EvidenceTable::new(2, vec![41_000, 42_000, 43_000]);
        // Nothing sent: nothing recorded, however valid the reply looks.
        assert_eq!(table.record_canary(0, 0, PortState::Open, None), None);
        assert_eq!(table.slots_to_send(0).collect::<Vec<_>>(), [0]);
        table.note_canary_sent(0, 0);
        assert!(table.sent_unanswered() && !table.settled());
        // The first canary refused: host 0 is concluded, the other two are never sent.
        assert_eq!(table.record_canary(0, 0, PortState::Closed, None), Some(RecordOutcome::First));
        assert!(table.concluded(0) && table.slots_to_send(0).next().is_none());
        assert!(!table.sent_unanswered());
        // Host 1's first canary answers SYN-ACK: the other two go, and it is concluded once both
        // answered SYN-ACK too; an answer to a slot never sent is refused.
        table.note_canary_sent(1, 0);
        assert_eq!(table.record_canary(1, 1, PortState::Open, None), None, "slot 1 was not sent");
        table.record_canary(1, 0, PortState::Open, None);
        assert_eq!(table.slots_to_send(1).collect::<Vec<_>>(), [1, 2]);
        table.note_canary_sent(1, 1);
        table.note_canary_sent(1, 2);
        table.record_canary(1, 1, PortState::Open, None);
        assert!(!table.concluded(1) && table.sent_unanswered());
        table.record_canary(1, 2, PortState::Open, None);
        assert!(table.concluded(1) && !table.sent_unanswered());
        let counts = table.counts();
        assert_eq!((counts.hosts_canaried, counts.canary_probes_sent, counts.canaries_open), (2, 4, 3));
    }

    #[test]
    fn suspect_names_round_trip() {
        for (position, reason) in Suspect::ALL.into_iter().enumerate() {
            assert_eq!(Suspect::from_name(reason.name()), Some(reason));
            assert_eq!(reason.index(), position);
        }
        assert_eq!(Suspect::from_name("open"), None);
    }
}
