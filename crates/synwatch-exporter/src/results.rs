//! What one target's last completed scan found: its target space and one state per probe,
//! packed four to a byte.
//!
//! This is the exporter's memory between scans. Change detection compares two results of the
//! same space probe by probe; when the config changes a target's addresses or ports, the old
//! results are first projected onto the new space ([`ScanResults::project`]) so that the
//! comparison stays index to index and ports that left the config vanish with their series.
//! A probe whose state is unknown (a port new to the config, not yet scanned) has no series and
//! takes part in no change.
//!
//! Results also name the hosts the engine judged suspect (a SYN proxy or a host that answers
//! SYN-ACK everywhere, see `synwatch_engine::evidence`). A suspect host's SYN-ACKs are counted
//! as `suspect`, not `open`, and take part in no change either way: what is behind a proxy is
//! not known. A host turning suspect is a change of its own ([`Changes::turned_suspect`]).
//! Likewise, with `verify: connect`, an open port whose real handshake failed is `unverified`
//! (with the verdict), not open, and takes part in no change.
//!
//! UDP ports have four states (open, closed, filtered, open|filtered): the two bits of a UDP
//! probe say "filtered or open|filtered" with code 3, and a bit set beside them (one bit per
//! probe, kept only when the space has UDP ports and some UDP probe was ICMP-filtered) says
//! filtered. A UDP port's state changes like a TCP one's: open ↔ anything else. Suspect hosts
//! are about SYN-ACKs: a suspect host's UDP answers stay open.

use std::net::IpAddr;
use std::sync::Arc;

use synwatch_engine::{Port, PortState, Protocol, Suspect, TargetSpace};
use synwatch_io::Verdict;

/// The states of one scan, indexed like its [`TargetSpace`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanResults {
    space: Arc<TargetSpace>,
    packed: Vec<u8>,
    /// Per protocol: TCP, UDP.
    counts: [StateCounts; 2],
    hosts_responding: u64,
    /// Hosts judged suspect, sorted by address.
    suspects: Vec<(IpAddr, Suspect)>,
    /// Open ports of hosts not suspect whose verification failed, sorted.
    unverified: Vec<(IpAddr, Port, Verdict)>,
    /// One bit per probe: a UDP probe whose code 3 means filtered (an ICMP error other than
    /// port unreachable) rather than open|filtered. Empty when no UDP probe was filtered.
    udp_filtered: Vec<u64>,
    /// TCP ports per host (they come first in a port set): a slot at or past it is UDP.
    tcp_ports: u64,
}

/// How many probes are in each state (UDP probes have no `suspect` nor `unverified`; TCP probes
/// no `open_filtered`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Answered with SYN-ACK, by a host not judged suspect.
    pub open: u64,
    /// Answered with SYN-ACK by a suspect host.
    pub suspect: u64,
    /// Answered with SYN-ACK, but the real handshake of `verify: connect` failed.
    pub unverified: u64,
    /// Answered with RST.
    pub closed: u64,
    /// Answered with ICMP unreachable, or (TCP) not at all.
    pub filtered: u64,
    /// UDP: not answered at all (nmap's `open|filtered`).
    pub open_filtered: u64,
    /// Not scanned yet (ports added to the config since the last scan).
    pub unknown: u64,
}

/// The hosts that answered and the open endpoints of one scan, in probe order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Hosts that answered at least one probe with SYN-ACK or RST.
    pub responding: Vec<IpAddr>,
    /// (address, port) answered with SYN-ACK, suspect hosts left out.
    pub open: Vec<(IpAddr, Port)>,
    /// (address, port, reason) answered with SYN-ACK by a suspect host.
    pub suspect: Vec<(IpAddr, Port, Suspect)>,
    /// (address, port, verdict) answered with SYN-ACK, whose verification failed.
    pub unverified: Vec<(IpAddr, Port, Verdict)>,
}

/// What changed between two scans of one target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// Known and not open before, open now.
    pub opened: u64,
    /// Open before, known and not open now.
    pub closed: u64,
    /// Hosts suspect now that were not in the previous results.
    pub turned_suspect: u64,
}

fn code(state: PortState) -> u8 {
    match state {
        // Code 3 of a UDP probe is filtered or open|filtered, told apart by `udp_filtered`.
        PortState::OpenFiltered => PortState::Filtered as u8,
        state => state as u8,
    }
}

fn state_of(code: u8) -> PortState {
    match code & 3 {
        0 => PortState::Unknown,
        1 => PortState::Open,
        2 => PortState::Closed,
        _ => PortState::Filtered,
    }
}

impl ScanResults {
    /// Results from a state per probe (`state(index)` for every index of the space).
    pub fn from_fn(space: Arc<TargetSpace>, mut state: impl FnMut(u64) -> PortState) -> ScanResults {
        let len = space.len();
        let mut packed = vec![0u8; len.div_ceil(4) as usize];
        let mut udp_filtered = Vec::new();
        let (ports, tcp_ports) = (space.ports().len() as u64, space.ports().count_of(Protocol::Tcp) as u64);
        for index in 0..len {
            let state = state(index);
            packed[(index / 4) as usize] |= code(state) << ((index % 4) * 2);
            if state == PortState::Filtered && index % ports >= tcp_ports {
                if udp_filtered.is_empty() {
                    udp_filtered = vec![0u64; len.div_ceil(64) as usize];
                }
                udp_filtered[(index / 64) as usize] |= 1 << (index % 64);
            }
        }
        let results = ScanResults::from_packed(space, packed).expect("the packed length matches the space");
        results.with_udp_filtered(udp_filtered).expect("the bits match the space")
    }

    /// The same results with these UDP probes filtered rather than open|filtered (one bit per
    /// probe, as persisted; empty for none). `None` when the length does not match the space.
    pub fn with_udp_filtered(mut self, bits: Vec<u64>) -> Option<ScanResults> {
        if !bits.is_empty() && bits.len() as u64 != self.space.len().div_ceil(64) {
            return None;
        }
        self.udp_filtered = if bits.iter().all(|&word| word == 0) { Vec::new() } else { bits };
        self.recount();
        Some(self)
    }

    /// The UDP-filtered bits (see [`ScanResults::with_udp_filtered`]), as persisted.
    pub fn udp_filtered(&self) -> &[u64] {
        &self.udp_filtered
    }

    /// Whether probe `index` is of a UDP port.
    fn is_udp(&self, index: u64) -> bool {
        let ports = self.space.ports().len() as u64;
        ports > 0 && index % ports >= self.tcp_ports
    }

    /// Results from their packed form (as persisted). `None` when the length does not match.
    pub fn from_packed(space: Arc<TargetSpace>, packed: Vec<u8>) -> Option<ScanResults> {
        if packed.len() as u64 != space.len().div_ceil(4) {
            return None;
        }
        let tcp_ports = space.ports().count_of(Protocol::Tcp) as u64;
        let mut results = ScanResults {
            space,
            packed,
            counts: [StateCounts::default(); 2],
            hosts_responding: 0,
            suspects: Vec::new(),
            unverified: Vec::new(),
            udp_filtered: Vec::new(),
            tcp_ports,
        };
        results.recount();
        Some(results)
    }

    /// The same results with these hosts judged suspect (hosts outside the space are left out).
    pub fn with_suspects(mut self, mut suspects: Vec<(IpAddr, Suspect)>) -> ScanResults {
        suspects.retain(|(address, _)| self.space.hosts().index_of(*address).is_some());
        suspects.sort();
        suspects.dedup_by_key(|(address, _)| *address);
        self.suspects = suspects;
        self.recount();
        self
    }

    /// The same results with the verdicts of a verification: the failed ones of open ports
    /// of hosts not suspect are kept (the others are no news).
    pub fn with_verdicts(mut self, verdicts: Vec<(IpAddr, Port, Verdict)>) -> ScanResults {
        let mut unverified: Vec<(IpAddr, Port, Verdict)> = verdicts
            .into_iter()
            .filter(|&(address, port, verdict)| {
                verdict != Verdict::Ok
                    && self.suspect_of(address).is_none()
                    && self.space.index_of(address, port).is_some_and(|index| self.get(index) == PortState::Open)
            })
            .collect();
        unverified.sort();
        unverified.dedup_by_key(|(address, port, _)| (*address, *port));
        self.unverified = unverified;
        self.recount();
        self
    }

    /// The open ports whose verification failed, with the verdict, sorted.
    pub fn unverified(&self) -> &[(IpAddr, Port, Verdict)] {
        &self.unverified
    }

    /// The failed verdict of (`address`, `port`), if its verification failed.
    pub fn unverified_of(&self, address: IpAddr, port: Port) -> Option<Verdict> {
        self.unverified
            .binary_search_by_key(&(address, port), |(unverified, unverified_port, _)| (*unverified, *unverified_port))
            .ok()
            .map(|position| self.unverified[position].2)
    }

    /// The hosts judged suspect, sorted by address.
    pub fn suspects(&self) -> &[(IpAddr, Suspect)] {
        &self.suspects
    }

    /// Why `address`'s SYN-ACKs are not trusted, if they are not.
    pub fn suspect_of(&self, address: IpAddr) -> Option<Suspect> {
        self.suspects
            .binary_search_by_key(&address, |(suspect, _)| *suspect)
            .ok()
            .map(|position| self.suspects[position].1)
    }

    /// Suspect hosts per reason, in [`Suspect::ALL`]'s order.
    pub fn hosts_suspect(&self) -> [u64; 2] {
        let mut counts = [0; 2];
        for (_, reason) in &self.suspects {
            counts[reason.index()] += 1;
        }
        counts
    }

    /// Whether probe `index` is a SYN-ACK not counted open: of a suspect host, or unverified.
    fn is_untrusted_open(&self, index: u64) -> bool {
        (!self.suspects.is_empty() || !self.unverified.is_empty())
            && !self.is_udp(index)
            && self.get(index) == PortState::Open
            && self.space.probe_at(index).is_some_and(|(address, port)| {
                self.suspect_of(address).is_some() || self.unverified_of(address, port).is_some()
            })
    }

    fn recount(&mut self) {
        let mut all_counts = [StateCounts::default(); 2];
        let mut hosts_responding = 0;
        let ports = self.space.ports().len() as u64;
        for host in 0..self.space.hosts().len() {
            let mut responded = false;
            let address = self.space.hosts().address_at(host);
            let suspect =
                !self.suspects.is_empty() && address.is_some_and(|address| self.suspect_of(address).is_some());
            for index in host * ports..(host + 1) * ports {
                let udp = index % ports >= self.tcp_ports;
                let counts = &mut all_counts[usize::from(udp)];
                match self.get(index) {
                    PortState::Open if suspect && !udp => {
                        counts.suspect += 1;
                        responded = true;
                    }
                    PortState::Open
                        if !self.unverified.is_empty()
                            && self
                                .space
                                .probe_at(index)
                                .is_some_and(|(address, port)| self.unverified_of(address, port).is_some()) =>
                    {
                        counts.unverified += 1;
                        responded = true;
                    }
                    PortState::Open => {
                        counts.open += 1;
                        responded = true;
                    }
                    PortState::Closed => {
                        counts.closed += 1;
                        responded = true;
                    }
                    PortState::Filtered => counts.filtered += 1,
                    PortState::OpenFiltered => counts.open_filtered += 1,
                    PortState::Unknown => counts.unknown += 1,
                }
            }
            hosts_responding += u64::from(responded);
        }
        self.counts = all_counts;
        self.hosts_responding = hosts_responding;
    }

    /// The space the results are indexed by.
    pub fn space(&self) -> &Arc<TargetSpace> {
        &self.space
    }

    /// The packed states (four per byte, probe `i` in bits `2*(i%4)`), as persisted.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// The state of probe `index` (unknown beyond the end).
    pub fn get(&self, index: u64) -> PortState {
        match self.packed.get((index / 4) as usize) {
            Some(byte) => match state_of(byte >> ((index % 4) * 2)) {
                PortState::Filtered if self.is_udp(index) => {
                    let filtered = self
                        .udp_filtered
                        .get((index / 64) as usize)
                        .is_some_and(|word| word & (1 << (index % 64)) != 0);
                    if filtered { PortState::Filtered } else { PortState::OpenFiltered }
                }
                state => state,
            },
            None => PortState::Unknown,
        }
    }

    /// Probes per state, both protocols together.
    pub fn counts(&self) -> StateCounts {
        let [tcp, udp] = self.counts;
        StateCounts {
            open: tcp.open + udp.open,
            suspect: tcp.suspect + udp.suspect,
            unverified: tcp.unverified + udp.unverified,
            closed: tcp.closed + udp.closed,
            filtered: tcp.filtered + udp.filtered,
            open_filtered: tcp.open_filtered + udp.open_filtered,
            unknown: tcp.unknown + udp.unknown,
        }
    }

    /// Probes per state of one protocol.
    pub fn counts_of(&self, protocol: Protocol) -> StateCounts {
        self.counts[usize::from(protocol == Protocol::Udp)]
    }

    /// Hosts that answered at least one probe with SYN-ACK or RST.
    pub fn hosts_responding(&self) -> u64 {
        self.hosts_responding
    }

    /// The same knowledge expressed over `space`: a probe keeps its state when its (address,
    /// port) was in the old space, and is unknown otherwise.
    pub fn project(&self, space: Arc<TargetSpace>) -> ScanResults {
        if *space == *self.space {
            return ScanResults { space, ..self.clone() };
        }
        let old = Arc::clone(&self.space);
        ScanResults::from_fn(Arc::clone(&space), |index| {
            let Some((address, port)) = space.probe_at(index) else {
                return PortState::Unknown;
            };
            old.index_of(address, port).map_or(PortState::Unknown, |old_index| self.get(old_index))
        })
        .with_suspects(self.suspects.clone())
        .with_verdicts(self.unverified.clone())
    }

    /// Changes from `previous` (which must be over the same space, see [`ScanResults::project`])
    /// to these results. Probes unknown on either side, and SYN-ACKs of suspect hosts on either
    /// side, do not count.
    pub fn changes_since(&self, previous: &ScanResults) -> Changes {
        if *previous.space != *self.space {
            return self.changes_since(&previous.project(Arc::clone(&self.space)));
        }
        let mut changes = Changes {
            turned_suspect: self.suspects.iter().filter(|(address, _)| previous.suspect_of(*address).is_none()).count()
                as u64,
            ..Changes::default()
        };
        // Whole bytes whose four states did not change are skipped without decoding.
        for (byte_index, (&now, &before)) in self.packed.iter().zip(&previous.packed).enumerate() {
            if now == before {
                continue;
            }
            for slot in 0..4 {
                let index = byte_index as u64 * 4 + slot;
                let (before, now) = (previous.get(index), self.get(index));
                if before == PortState::Unknown
                    || now == PortState::Unknown
                    || previous.is_untrusted_open(index)
                    || self.is_untrusted_open(index)
                {
                    continue;
                }
                match (before == PortState::Open, now == PortState::Open) {
                    (false, true) => changes.opened += 1,
                    (true, false) => changes.closed += 1,
                    _ => {}
                }
            }
        }
        changes
    }

    /// Whether host `host` (an index of the space's hosts) answered at least one probe with
    /// SYN-ACK or RST.
    pub fn host_responded(&self, host: u64) -> bool {
        let ports = self.space.ports().len() as u64;
        (host * ports..(host + 1) * ports).any(|index| matches!(self.get(index), PortState::Open | PortState::Closed))
    }

    /// The responding hosts and the open endpoints, in one pass over the results (done once
    /// per scan, so that scrapes and `/sd` requests do not walk the whole space).
    pub fn endpoints(&self) -> Endpoints {
        let mut endpoints = Endpoints::default();
        let ports = self.space.ports().ports();
        for host in 0..self.space.hosts().len() {
            let Some(address) = self.space.hosts().address_at(host) else { break };
            let mut responded = false;
            let suspect = self.suspect_of(address);
            for (slot, &port) in ports.iter().enumerate() {
                match self.get(host * ports.len() as u64 + slot as u64) {
                    PortState::Open => {
                        responded = true;
                        // Suspicion is about SYN-ACKs: a UDP answer is the service's own.
                        let suspect = suspect.filter(|_| port.is_tcp());
                        match (suspect, self.unverified_of(address, port)) {
                            (Some(reason), _) => endpoints.suspect.push((address, port, reason)),
                            (None, Some(verdict)) => endpoints.unverified.push((address, port, verdict)),
                            (None, None) => endpoints.open.push((address, port)),
                        }
                    }
                    PortState::Closed => responded = true,
                    PortState::Filtered | PortState::OpenFiltered | PortState::Unknown => {}
                }
            }
            if responded {
                endpoints.responding.push(address);
            }
        }
        endpoints
    }

    /// Every known probe as (index, address, port, state), in index order.
    pub fn known(&self) -> impl Iterator<Item = (u64, IpAddr, Port, PortState)> + '_ {
        (0..self.space.len()).filter_map(move |index| {
            let state = self.get(index);
            if state == PortState::Unknown {
                return None;
            }
            let (address, port) = self.space.probe_at(index)?;
            Some((index, address, port, state))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synwatch_engine::Port;
    use synwatch_engine::targets::parse_target;
    use synwatch_engine::{ExclusionPolicy, HostSet, PortSet};

    fn space(addresses: &[&str], ports: &str) -> Arc<TargetSpace> {
        let hosts = HostSet::build(
            addresses.iter().map(|address| parse_target(address).unwrap()).collect(),
            Vec::new(),
            ExclusionPolicy::Default,
        )
        .unwrap();
        Arc::new(TargetSpace::new(hosts, PortSet::parse(ports).unwrap()).unwrap())
    }

    fn results(space: &Arc<TargetSpace>, open: &[(&str, u16)]) -> ScanResults {
        ScanResults::from_fn(Arc::clone(space), |index| {
            let (address, port) = space.probe_at(index).unwrap();
            if open.iter().any(|(a, p)| a.parse::<IpAddr>().unwrap() == address && *p == port.number) {
                PortState::Open
            } else if port.number == 81 {
                PortState::Filtered
            } else {
                PortState::Closed
            }
        })
    }

    #[test]
    fn counts_and_hosts_responding_follow_the_states() {
        let space = space(&["192.0.2.0/30"], "80,81,443");
        let scan = results(&space, &[("192.0.2.1", 80), ("192.0.2.1", 443), ("192.0.2.3", 443)]);
        assert_eq!(
            scan.counts(),
            StateCounts { open: 3, suspect: 0, unverified: 0, closed: 5, filtered: 4, open_filtered: 0, unknown: 0 }
        );
        assert_eq!(scan.hosts_responding(), 4);
        let endpoints = scan.endpoints();
        assert_eq!(endpoints.responding.len(), 4);
        assert_eq!(endpoints.open.len(), 3);
        assert_eq!(endpoints.open[0], ("192.0.2.1".parse().unwrap(), Port::tcp(80)));
        let silent = ScanResults::from_fn(Arc::clone(&space), |_| PortState::Filtered);
        assert_eq!(silent.hosts_responding(), 0);
        assert_eq!(silent.endpoints(), Endpoints::default());
        assert_eq!(silent.counts().filtered, 12);
    }

    #[test]
    fn changes_count_each_open_and_close_once() {
        let space = space(&["192.0.2.0/30"], "80,81,443");
        let before = results(&space, &[("192.0.2.1", 80), ("192.0.2.2", 443)]);
        let after = results(&space, &[("192.0.2.1", 80), ("192.0.2.3", 443), ("192.0.2.0", 80)]);
        assert_eq!(after.changes_since(&before), Changes { opened: 2, closed: 1, turned_suspect: 0 });
        assert_eq!(after.changes_since(&after), Changes::default());
    }

    #[test]
    fn a_host_turning_suspect_is_its_own_change_and_its_ports_count_no_open_and_no_close() {
        let whole = space(&["192.0.2.0/30"], "80,81,443");
        let kept = space(&["192.0.2.2"], "80");
        let space = &whole;
        let before = results(space, &[("192.0.2.1", 80), ("192.0.2.2", 443)]);
        // 192.0.2.2 turns into a SYN proxy: SYN-ACK on 80 and 443 (81 stays filtered).
        let proxied = results(space, &[("192.0.2.1", 80), ("192.0.2.2", 80), ("192.0.2.2", 443)]);
        let after = proxied.clone().with_suspects(vec![("192.0.2.2".parse().unwrap(), Suspect::Synproxy)]);
        assert_eq!(
            after.counts(),
            StateCounts { open: 1, suspect: 2, unverified: 0, closed: 5, filtered: 4, open_filtered: 0, unknown: 0 }
        );
        assert_eq!(after.hosts_suspect(), [0, 1]);
        assert_eq!(after.changes_since(&before), Changes { opened: 0, closed: 0, turned_suspect: 1 });
        // Without the verdict, its new SYN-ACK would have been an "opened" change.
        assert_eq!(proxied.changes_since(&before).opened, 1);
        // Staying suspect is no new change; the proxy leaving is none either (nothing was known).
        assert_eq!(after.changes_since(&after), Changes::default());
        assert_eq!(before.changes_since(&after), Changes::default());
        let endpoints = after.endpoints();
        assert_eq!(endpoints.open, [("192.0.2.1".parse().unwrap(), Port::tcp(80))]);
        assert_eq!(endpoints.suspect.len(), 2);
        assert_eq!(endpoints.responding.len(), 4);
        // The verdict survives projection onto a space that keeps the host, and a foreign host
        // is left out.
        let projected = after.project(kept);
        assert_eq!(projected.suspects().len(), 1);
        let foreign = proxied.with_suspects(vec![("198.51.100.1".parse().unwrap(), Suspect::AllOpen)]);
        assert!(foreign.suspects().is_empty());
    }

    #[test]
    fn a_port_failing_verification_is_unverified_not_open_and_counts_no_change() {
        let space = space(&["192.0.2.0/30"], "80,81,443");
        let before = results(&space, &[("192.0.2.1", 80)]);
        let found = results(&space, &[("192.0.2.1", 80), ("192.0.2.1", 443), ("192.0.2.2", 443)]);
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let after = found.with_verdicts(vec![
            (ip("192.0.2.1"), Port::tcp(80), Verdict::Ok),
            (ip("192.0.2.1"), Port::tcp(443), Verdict::Reset),
            (ip("192.0.2.2"), Port::tcp(443), Verdict::Ok),
            // Not open in the results: never kept.
            (ip("192.0.2.3"), Port::tcp(443), Verdict::Refused),
        ]);
        assert_eq!(after.unverified(), [(ip("192.0.2.1"), Port::tcp(443), Verdict::Reset)]);
        assert_eq!((after.counts().open, after.counts().unverified), (2, 1));
        assert_eq!(after.changes_since(&before), Changes { opened: 1, closed: 0, turned_suspect: 0 });
        let endpoints = after.endpoints();
        assert_eq!(endpoints.open.len(), 2);
        assert_eq!(endpoints.unverified, [(ip("192.0.2.1"), Port::tcp(443), Verdict::Reset)]);
        assert_eq!(after.project(Arc::clone(&space)).unverified().len(), 1);
    }

    #[test]
    fn udp_probes_keep_four_states_and_change_like_tcp_ones() {
        let space = space(&["192.0.2.0/30"], "22,udp/53,161");
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        // Per host: tcp/22, udp/53, udp/161.
        let states = [
            [PortState::Open, PortState::Open, PortState::Filtered],
            [PortState::Closed, PortState::OpenFiltered, PortState::Closed],
            [PortState::Filtered, PortState::Filtered, PortState::OpenFiltered],
            [PortState::Open, PortState::Open, PortState::Open],
        ];
        let before =
            ScanResults::from_fn(Arc::clone(&space), |index| states[(index / 3) as usize][(index % 3) as usize]);
        for (index, expected) in states.iter().flatten().enumerate() {
            assert_eq!(before.get(index as u64), *expected, "probe {index}");
        }
        let udp = before.counts_of(Protocol::Udp);
        assert_eq!((udp.open, udp.closed, udp.filtered, udp.open_filtered), (3, 1, 2, 2));
        let tcp = before.counts_of(Protocol::Tcp);
        assert_eq!((tcp.open, tcp.closed, tcp.filtered, tcp.open_filtered), (2, 1, 1, 0));
        assert_eq!(before.counts().open, 5);
        // A suspect host's SYN-ACKs are suspect; its UDP answers stay open.
        let suspect = before.clone().with_suspects(vec![(ip("192.0.2.3"), Suspect::AllOpen)]);
        assert_eq!(suspect.counts_of(Protocol::Tcp).suspect, 1);
        assert_eq!(suspect.counts_of(Protocol::Udp).open, 3);
        let endpoints = suspect.endpoints();
        assert!(endpoints.open.contains(&(ip("192.0.2.3"), Port::udp(53))));
        assert!(endpoints.suspect.iter().all(|(_, port, _)| port.is_tcp()));
        // open → open|filtered closes, open|filtered → open opens; filtered ↔ open|filtered
        // is no change.
        let mut after_states = states;
        after_states[0][1] = PortState::OpenFiltered;
        after_states[1][1] = PortState::Open;
        after_states[2][1] = PortState::OpenFiltered;
        let after =
            ScanResults::from_fn(Arc::clone(&space), |index| after_states[(index / 3) as usize][(index % 3) as usize]);
        assert_eq!(after.changes_since(&before), Changes { opened: 1, closed: 1, turned_suspect: 0 });
        // Projection and the bits' own form keep filtered apart from open|filtered.
        let projected = before.project(super::tests::space(&["192.0.2.2"], "udp/53,161"));
        assert_eq!(projected.get(0), PortState::Filtered);
        assert_eq!(projected.get(1), PortState::OpenFiltered);
        let reloaded = ScanResults::from_packed(Arc::clone(&space), before.packed().to_vec())
            .unwrap()
            .with_udp_filtered(before.udp_filtered().to_vec())
            .unwrap();
        assert_eq!(reloaded, before);
        assert!(
            ScanResults::from_packed(Arc::clone(&space), before.packed().to_vec())
                .unwrap()
                .with_udp_filtered(vec![1, 2, 3])
                .is_none()
        );
    }

    #[test]
    fn projection_keeps_shared_probes_and_forgets_the_rest() {
        let old_space = space(&["192.0.2.0/30"], "80,443");
        let old = results(&old_space, &[("192.0.2.1", 80), ("192.0.2.1", 443)]);
        let new_space = space(&["192.0.2.1", "192.0.2.9"], "80,8080");
        let projected = old.project(Arc::clone(&new_space));
        assert_eq!(
            projected.get(new_space.index_of("192.0.2.1".parse().unwrap(), Port::tcp(80)).unwrap()),
            PortState::Open
        );
        assert_eq!(
            projected.get(new_space.index_of("192.0.2.1".parse().unwrap(), Port::tcp(8080)).unwrap()),
            PortState::Unknown
        );
        assert_eq!(
            projected.get(new_space.index_of("192.0.2.9".parse().unwrap(), Port::tcp(80)).unwrap()),
            PortState::Unknown
        );
        assert_eq!(
            projected.counts(),
            StateCounts { open: 1, suspect: 0, unverified: 0, closed: 0, filtered: 0, open_filtered: 0, unknown: 3 }
        );
        // A new port found open on its first scan is not a change: nothing was known before.
        let next = results(&new_space, &[("192.0.2.1", 8080)]);
        assert_eq!(next.changes_since(&old), Changes { opened: 0, closed: 1, turned_suspect: 0 });
    }

    #[test]
    fn packed_form_round_trips_and_rejects_a_wrong_length() {
        let space = space(&["192.0.2.0/29"], "22,80,443");
        let scan = results(&space, &[("192.0.2.5", 22)]);
        let again = ScanResults::from_packed(Arc::clone(&space), scan.packed().to_vec()).unwrap();
        assert_eq!(again, scan);
        assert!(ScanResults::from_packed(Arc::clone(&space), vec![0; 3]).is_none());
        assert_eq!(scan.known().count(), 24);
    }
}
