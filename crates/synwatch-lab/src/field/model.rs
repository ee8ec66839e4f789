//! The field lab's model: what a simulated network does with each probe, per range (CIDR), with
//! seeded per-host and per-(host, port) draws. The model is the ground truth: what the
//! responder answers is decided here and nowhere else, and [`FieldModel::truth`] says what a
//! correct scanner reports. It serialises to JSON ([`FieldModel`] and [`ground_truth_json`]),
//! so scorers outside this crate read the same truth.
//!
//! A probe's fate, in order: the most specific range containing the address decides (no range:
//! nothing answers, and the probe is counted as outside the model); the host's kind (silent,
//! unreachable, SYN proxy, tarpit, up) is drawn once per host; for an up host, the (host, port)
//! state is drawn once per pair, unless a scheduled change has set it.
//!
//! TCP and UDP ports are drawn apart ([`Transport`]), each from its own mix: a range's
//! [`PortMix`] for TCP, its [`UdpPortMix`] for UDP. A SYN proxy or tarpit stands in front of
//! TCP only: for UDP its host is an up host. A silent UDP port (dropped, or bound by a service
//! that does not answer) is `open|filtered` in the truth, as nmap names it, since no scanner
//! can tell which.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, serde_as};

use super::draw::{Purpose, normal, unit};

/// A whole simulated network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldModel {
    /// The profile's name (`lan`, `internet`, `hostile`, or a user's).
    pub name: String,
    /// Seed of every draw.
    pub seed: u64,
    /// The ranges; the most specific one containing an address decides for it.
    pub ranges: Vec<RangeModel>,
    /// Loss of probes on their way in.
    pub forward_loss: Loss,
    /// Loss of replies on their way back.
    pub reverse_loss: Loss,
    /// Each simulated ICMP source (a host, or the router) limits its ICMP errors like Linux:
    /// `net.ipv4.icmp_msgs_per_sec` and `icmp_msgs_burst`.
    pub icmp_limit: RateLimit,
    /// The router that answers for unreachable hosts and for ranges behind a filtering router,
    /// IPv4.
    pub router_v4: Ipv4Addr,
    /// The same router's IPv6 address.
    pub router_v6: Ipv6Addr,
    /// Share of replies sent twice, percent.
    pub duplicate_percent: f64,
    /// Replies held back until after any sane wait.
    pub late: LateReplies,
    /// Scheduled state changes of single (host, port)s.
    pub changes: Vec<ScheduledChange>,
    /// Each simulated host limits the ICMP errors it sends to one peer like Linux
    /// (`net.ipv4.icmp_ratelimit` 1,000 ms with a burst of 6, the same for ICMPv6): a scan
    /// that sends a host many probes to closed UDP ports at once sees only some of its port
    /// unreachables. Routers are held only to `icmp_limit`. `None`: no per-peer limit.
    #[serde(default)]
    pub host_icmp_peer_limit: Option<RateLimit>,
}

/// The transport a probe or a port belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// TCP: SYN probes.
    #[default]
    Tcp,
    /// UDP: datagrams.
    Udp,
}

/// One range of the model.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeModel {
    /// The range.
    #[serde_as(as = "DisplayFromStr")]
    pub range: IpNetwork,
    /// Round trip time of each host, drawn once per host.
    pub rtt: RttDistribution,
    /// Extra delay of each reply, uniform in `[0, jitter_ms]`, drawn per packet: reordering
    /// falls out of it.
    pub jitter_ms: f64,
    /// What kinds of host the range holds.
    pub hosts: HostMix,
    /// What the TCP ports of its up hosts do.
    pub ports: PortMix,
    /// What the UDP ports of its hosts do (all but silent and unreachable ones).
    #[serde(default)]
    pub udp: UdpPortMix,
    /// A firewall in front of the range that drops SYNs beyond a rate per source address.
    pub firewall: Option<RateLimit>,
}

/// How a range's per-host round trip times are distributed. Every value is in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "distribution", rename_all = "snake_case")]
pub enum RttDistribution {
    /// Every host the same.
    Fixed {
        /// The round trip.
        ms: f64,
    },
    /// Uniform between two values.
    Uniform {
        /// Shortest.
        min_ms: f64,
        /// Longest.
        max_ms: f64,
    },
    /// Log-normal around a median, capped.
    LogNormal {
        /// The median.
        median_ms: f64,
        /// The standard deviation of the logarithm.
        sigma: f64,
        /// No host takes longer.
        max_ms: f64,
    },
}

/// Packet loss in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Loss {
    /// Nothing is lost.
    None,
    /// Each packet independently.
    Random {
        /// Share lost, percent.
        percent: f64,
    },
    /// The two-state Gilbert–Elliott model: a good and a bad state, each with its own loss,
    /// switching per packet with the given probabilities (percent).
    Bursty {
        /// Chance per packet of going from good to bad.
        good_to_bad_percent: f64,
        /// Chance per packet of going from bad to good.
        bad_to_good_percent: f64,
        /// Loss in the good state.
        loss_good_percent: f64,
        /// Loss in the bad state.
        loss_bad_percent: f64,
    },
}

impl Loss {
    /// The long-run share of packets lost, percent.
    pub fn mean_percent(&self) -> f64 {
        match *self {
            Loss::None => 0.0,
            Loss::Random { percent } => percent,
            Loss::Bursty { good_to_bad_percent, bad_to_good_percent, loss_good_percent, loss_bad_percent } => {
                let total = good_to_bad_percent + bad_to_good_percent;
                if total <= 0.0 {
                    return loss_good_percent;
                }
                let bad_share = good_to_bad_percent / total;
                bad_share * loss_bad_percent + (1.0 - bad_share) * loss_good_percent
            }
        }
    }
}

/// A token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Tokens per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: f64,
}

/// Replies that arrive after any sane wait.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LateReplies {
    /// Share of replies held back, percent.
    pub percent: f64,
    /// How long they are held back (instead of the host's round trip), milliseconds.
    pub delay_ms: f64,
}

/// Shares of host kinds in a range, percent; the rest are up.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct HostMix {
    /// Never answer anything (most of an Internet range).
    pub silent: f64,
    /// Down, and the router says so: ICMP host unreachable from the router.
    pub unreachable: f64,
    /// A SYN proxy: SYN-ACK for every port, window 0 and no options, at once.
    pub synproxy: f64,
    /// A tarpit: SYN-ACK for every port after the host's round trip, and nothing after.
    pub tarpit: f64,
}

/// Shares of (host, port) states on up hosts, percent; the rest are closed (RST).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PortMix {
    /// A listening service: SYN-ACK with a real stack's options.
    pub open: f64,
    /// Silently dropped.
    pub filtered: f64,
    /// ICMP administratively prohibited from the host itself.
    pub prohibited_by_host: f64,
    /// ICMP administratively prohibited from the router.
    pub prohibited_by_router: f64,
}

/// Shares of (host, port) states of UDP ports, percent; the rest are closed (ICMP port
/// unreachable from the host, within its ICMP limits).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct UdpPortMix {
    /// A service that answers its protocol's request (the lab's scripted one for the port, see
    /// [`crate::UdpService`]; an echo service on ports without one).
    pub open: f64,
    /// A service bound to the port that answers nothing the scanner sends (`open|filtered`).
    pub open_silent: f64,
    /// Silently dropped by a firewall (`open|filtered` too: no scanner can tell them apart).
    pub filtered: f64,
    /// ICMP administratively prohibited from the host itself (`filtered`).
    pub prohibited_by_host: f64,
    /// ICMP administratively prohibited from the router (`filtered`).
    pub prohibited_by_router: f64,
}

/// A (host, port) switched to a state at a time since the responder started.
#[serde_as]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScheduledChange {
    /// When, milliseconds after the responder started.
    pub at_ms: u64,
    /// The host.
    #[serde_as(as = "DisplayFromStr")]
    pub address: IpAddr,
    /// The port.
    pub port: u16,
    /// The port's transport (TCP when not given).
    #[serde(default)]
    pub transport: Transport,
    /// Its state from then on.
    pub state: PortBehaviour,
}

/// The kind of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostKind {
    /// Answers per port.
    Up,
    /// Never answers.
    Silent,
    /// The router answers ICMP host unreachable for it.
    Unreachable,
    /// A SYN proxy in front of it answers SYN-ACK for every port.
    Synproxy,
    /// A tarpit: SYN-ACK for every port.
    Tarpit,
}

/// What one (host, port) does with a SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortBehaviour {
    /// SYN-ACK from a listening service.
    Open,
    /// RST.
    Closed,
    /// Nothing.
    Filtered,
    /// ICMP administratively prohibited from the host.
    ProhibitedByHost,
    /// ICMP administratively prohibited from the router.
    ProhibitedByRouter,
    /// ICMP host unreachable from the router (the whole host).
    HostUnreachable,
    /// SYN-ACK from a SYN proxy (window 0, no options, at once).
    SynproxySynAck,
    /// SYN-ACK from a tarpit.
    TarpitSynAck,
    /// A UDP service's answer to its protocol's request.
    UdpAnswer,
    /// A UDP service bound to the port that answers nothing.
    UdpSilent,
    /// ICMP port unreachable from the host (a closed UDP port).
    PortUnreachable,
}

/// What a correct scanner reports for a (host, port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrueState {
    /// A real listening service.
    Open,
    /// Closed (RST).
    Closed,
    /// Filtered (silence or an ICMP error).
    Filtered,
    /// A SYN-ACK that is not a service: a SYN proxy or tarpit. Reporting it open is a false
    /// open.
    Suspect,
    /// A UDP port that answers nothing, neither datagram nor ICMP: a correct scanner reports
    /// `open|filtered`.
    OpenFiltered,
}

impl PortBehaviour {
    /// The state a correct scanner reports for a port of `transport` that behaves so.
    pub fn truth(self, transport: Transport) -> TrueState {
        match self {
            PortBehaviour::Open | PortBehaviour::UdpAnswer => TrueState::Open,
            PortBehaviour::Closed | PortBehaviour::PortUnreachable => TrueState::Closed,
            PortBehaviour::SynproxySynAck | PortBehaviour::TarpitSynAck => TrueState::Suspect,
            PortBehaviour::UdpSilent => TrueState::OpenFiltered,
            PortBehaviour::Filtered if transport == Transport::Udp => TrueState::OpenFiltered,
            PortBehaviour::Filtered
            | PortBehaviour::ProhibitedByHost
            | PortBehaviour::ProhibitedByRouter
            | PortBehaviour::HostUnreachable => TrueState::Filtered,
        }
    }

    /// Whether a scanner sees a SYN-ACK.
    pub fn answers_syn_ack(self) -> bool {
        matches!(self, PortBehaviour::Open | PortBehaviour::SynproxySynAck | PortBehaviour::TarpitSynAck)
    }
}

/// Why a model is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A share outside 0..=100, or shares adding up to more than 100.
    #[error("range {range}: {what} adds up to {total}%, outside 0..=100")]
    Shares {
        /// The range.
        range: String,
        /// Which mix.
        what: &'static str,
        /// The sum.
        total: f64,
    },
    /// A range outside the benchmarking ranges, or overlapping the lab link.
    #[error("range {0}: the field lab simulates only 198.18.0.0/16 and 2001:2::/64 (not the lab link)")]
    Range(String),
    /// A negative, non-finite or inverted time or rate.
    #[error("{0}: times, rates and percentages must be finite and not negative")]
    Value(String),
}

impl FieldModel {
    /// Checks every range, share and value.
    pub fn validate(&self) -> Result<(), ModelError> {
        let allowed_v4: IpNetwork = "198.18.0.0/16".parse().expect("a valid CIDR");
        let allowed_v6: IpNetwork = "2001:2::/64".parse().expect("a valid CIDR");
        let finite = |what: &str, value: f64| {
            if value.is_finite() && value >= 0.0 { Ok(()) } else { Err(ModelError::Value(format!("{what} {value}"))) }
        };
        for range in &self.ranges {
            let allowed = if range.range.is_ipv4() { allowed_v4 } else { allowed_v6 };
            let inside = allowed.contains(range.range.network()) && range.range.prefix() >= allowed.prefix();
            if !inside {
                return Err(ModelError::Range(range.range.to_string()));
            }
            let name = range.range.to_string();
            let hosts = [range.hosts.silent, range.hosts.unreachable, range.hosts.synproxy, range.hosts.tarpit];
            let ports = [
                range.ports.open,
                range.ports.filtered,
                range.ports.prohibited_by_host,
                range.ports.prohibited_by_router,
            ];
            let udp = [
                range.udp.open,
                range.udp.open_silent,
                range.udp.filtered,
                range.udp.prohibited_by_host,
                range.udp.prohibited_by_router,
            ];
            for (what, shares) in
                [("the host mix", &hosts[..]), ("the port mix", &ports[..]), ("the UDP port mix", &udp[..])]
            {
                let total: f64 = shares.iter().sum();
                if shares.iter().any(|share| !share.is_finite() || *share < 0.0) || total > 100.0 {
                    return Err(ModelError::Shares { range: name.clone(), what, total });
                }
            }
            finite(&format!("range {name} jitter_ms"), range.jitter_ms)?;
            match range.rtt {
                RttDistribution::Fixed { ms } => finite("rtt ms", ms)?,
                RttDistribution::Uniform { min_ms, max_ms } => {
                    finite("rtt min_ms", min_ms)?;
                    finite("rtt max_ms", max_ms - min_ms)?;
                }
                RttDistribution::LogNormal { median_ms, sigma, max_ms } => {
                    for (what, value) in [("median_ms", median_ms), ("sigma", sigma), ("max_ms", max_ms)] {
                        finite(&format!("rtt {what}"), value)?;
                    }
                }
            }
            if let Some(limit) = range.firewall {
                finite("firewall per_second", limit.per_second)?;
                finite("firewall burst", limit.burst)?;
            }
        }
        if let Some(limit) = self.host_icmp_peer_limit {
            finite("host_icmp_peer_limit per_second", limit.per_second)?;
            finite("host_icmp_peer_limit burst", limit.burst)?;
        }
        for (what, value) in [
            ("icmp_limit per_second", self.icmp_limit.per_second),
            ("icmp_limit burst", self.icmp_limit.burst),
            ("duplicate_percent", self.duplicate_percent),
            ("late percent", self.late.percent),
            ("late delay_ms", self.late.delay_ms),
        ] {
            finite(what, value)?;
        }
        for loss in [self.forward_loss, self.reverse_loss] {
            if let Loss::Random { percent } = loss {
                finite("loss percent", percent)?;
            }
            if let Loss::Bursty { good_to_bad_percent, bad_to_good_percent, loss_good_percent, loss_bad_percent } = loss
            {
                for value in [good_to_bad_percent, bad_to_good_percent, loss_good_percent, loss_bad_percent] {
                    finite("bursty loss percent", value)?;
                }
            }
        }
        Ok(())
    }

    /// The most specific range containing `address`.
    pub fn range_of(&self, address: IpAddr) -> Option<&RangeModel> {
        self.ranges.iter().filter(|range| range.range.contains(address)).max_by_key(|range| range.range.prefix())
    }

    /// The kind of host at `address` (`None` outside every range).
    pub fn host_kind(&self, address: IpAddr) -> Option<HostKind> {
        let range = self.range_of(address)?;
        let draw = unit(self.seed, Purpose::HostKind, address, 0) * 100.0;
        let mix = range.hosts;
        let kinds = [
            (mix.silent, HostKind::Silent),
            (mix.unreachable, HostKind::Unreachable),
            (mix.synproxy, HostKind::Synproxy),
            (mix.tarpit, HostKind::Tarpit),
        ];
        Some(pick(draw, &kinds, HostKind::Up))
    }

    /// The host's round trip (without the per-packet jitter).
    pub fn host_rtt(&self, address: IpAddr) -> Option<Duration> {
        let range = self.range_of(address)?;
        let ms = match range.rtt {
            RttDistribution::Fixed { ms } => ms,
            RttDistribution::Uniform { min_ms, max_ms } => {
                min_ms + (max_ms - min_ms) * unit(self.seed, Purpose::HostRtt, address, 0)
            }
            RttDistribution::LogNormal { median_ms, sigma, max_ms } => {
                let z = normal(self.seed, Purpose::HostRtt, Purpose::HostRttSecond, address, 0);
                (median_ms * (sigma * z).exp()).min(max_ms)
            }
        };
        Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
    }

    /// The state a scheduled change has set (address, port) to by `at`.
    fn scheduled(&self, transport: Transport, address: IpAddr, port: u16, at: Duration) -> Option<PortBehaviour> {
        self.changes
            .iter()
            .filter(|change| {
                change.transport == transport
                    && change.address == address
                    && change.port == port
                    && Duration::from_millis(change.at_ms) <= at
            })
            .max_by_key(|change| change.at_ms)
            .map(|change| change.state)
    }

    /// What (address, port) does with a SYN at `at` (time since the responder started); `None`
    /// outside every range.
    pub fn behaviour(&self, address: IpAddr, port: u16, at: Duration) -> Option<PortBehaviour> {
        let range = self.range_of(address)?;
        if let Some(state) = self.scheduled(Transport::Tcp, address, port, at) {
            return Some(state);
        }
        let behaviour = match self.host_kind(address)? {
            HostKind::Silent => PortBehaviour::Filtered,
            HostKind::Unreachable => PortBehaviour::HostUnreachable,
            HostKind::Synproxy => PortBehaviour::SynproxySynAck,
            HostKind::Tarpit => PortBehaviour::TarpitSynAck,
            HostKind::Up => {
                let mix = range.ports;
                pick(
                    unit(self.seed, Purpose::PortState, address, u64::from(port)) * 100.0,
                    &[
                        (mix.open, PortBehaviour::Open),
                        (mix.filtered, PortBehaviour::Filtered),
                        (mix.prohibited_by_host, PortBehaviour::ProhibitedByHost),
                        (mix.prohibited_by_router, PortBehaviour::ProhibitedByRouter),
                    ],
                    PortBehaviour::Closed,
                )
            }
        };
        Some(behaviour)
    }

    /// What UDP (address, port) does with a datagram at `at`; `None` outside every range.
    pub fn udp_behaviour(&self, address: IpAddr, port: u16, at: Duration) -> Option<PortBehaviour> {
        let range = self.range_of(address)?;
        if let Some(state) = self.scheduled(Transport::Udp, address, port, at) {
            return Some(state);
        }
        let behaviour = match self.host_kind(address)? {
            HostKind::Silent => PortBehaviour::Filtered,
            HostKind::Unreachable => PortBehaviour::HostUnreachable,
            // SYN proxies and tarpits stand in front of TCP only.
            HostKind::Up | HostKind::Synproxy | HostKind::Tarpit => {
                let mix = range.udp;
                pick(
                    unit(self.seed, Purpose::UdpPortState, address, u64::from(port)) * 100.0,
                    &[
                        (mix.open, PortBehaviour::UdpAnswer),
                        (mix.open_silent, PortBehaviour::UdpSilent),
                        (mix.filtered, PortBehaviour::Filtered),
                        (mix.prohibited_by_host, PortBehaviour::ProhibitedByHost),
                        (mix.prohibited_by_router, PortBehaviour::ProhibitedByRouter),
                    ],
                    PortBehaviour::PortUnreachable,
                )
            }
        };
        Some(behaviour)
    }

    /// What `transport` (address, port) does at `at`; `None` outside every range.
    pub fn behaviour_of(
        &self,
        transport: Transport,
        address: IpAddr,
        port: u16,
        at: Duration,
    ) -> Option<PortBehaviour> {
        match transport {
            Transport::Tcp => self.behaviour(address, port, at),
            Transport::Udp => self.udp_behaviour(address, port, at),
        }
    }

    /// What a correct scanner reports for TCP (address, port) at `at`; outside every range
    /// nothing answers, so filtered.
    pub fn truth(&self, address: IpAddr, port: u16, at: Duration) -> TrueState {
        self.behaviour(address, port, at).map_or(TrueState::Filtered, |behaviour| behaviour.truth(Transport::Tcp))
    }

    /// What a correct scanner reports for UDP (address, port) at `at`; outside every range
    /// nothing answers, so `open|filtered`.
    pub fn udp_truth(&self, address: IpAddr, port: u16, at: Duration) -> TrueState {
        self.udp_behaviour(address, port, at)
            .map_or(TrueState::OpenFiltered, |behaviour| behaviour.truth(Transport::Udp))
    }

    /// The router's address in `address`'s family.
    pub fn router_for(&self, address: IpAddr) -> IpAddr {
        match address {
            IpAddr::V4(_) => IpAddr::V4(self.router_v4),
            IpAddr::V6(_) => IpAddr::V6(self.router_v6),
        }
    }
}

/// The choice whose share (percent) `draw` (in [0, 100)) falls in, the shares laid end to end
/// in order; `rest` past them all.
fn pick<T: Copy>(draw: f64, shares: &[(f64, T)], rest: T) -> T {
    let mut bound = 0.0;
    for &(share, choice) in shares {
        bound += share;
        if draw < bound {
            return choice;
        }
    }
    rest
}

/// One line of the ground truth file.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruthEntry {
    /// The address.
    #[serde_as(as = "DisplayFromStr")]
    pub ip: IpAddr,
    /// The port.
    pub port: u16,
    /// The port's transport.
    pub proto: Transport,
    /// What a correct scanner reports.
    pub state: TrueState,
    /// What the network does with the probe.
    pub behaviour: PortBehaviour,
}

/// The ground truth of `targets` × `ports` at `at` as JSON lines: the model itself on the first
/// line (`{"model": ...}`), then one [`TruthEntry`] per (address, transport, port) that is not
/// silently dropped (silent hosts are most of an Internet range; what is not listed is
/// filtered over TCP and `open|filtered` over UDP).
pub fn ground_truth_json(
    model: &FieldModel,
    targets: &[IpNetwork],
    ports: &[(Transport, u16)],
    at: Duration,
    mut out: impl std::io::Write,
) -> std::io::Result<u64> {
    serde_json::to_writer(&mut out, &serde_json::json!({ "model": model, "at_ms": at.as_millis() as u64 }))?;
    out.write_all(b"\n")?;
    let mut written = 0;
    for target in targets {
        for address in target.iter() {
            for &(proto, port) in ports {
                let Some(behaviour) = model.behaviour_of(proto, address, port, at) else { continue };
                if behaviour == PortBehaviour::Filtered {
                    continue;
                }
                let entry = TruthEntry { ip: address, port, proto, state: behaviour.truth(proto), behaviour };
                serde_json::to_writer(&mut out, &entry)?;
                out.write_all(b"\n")?;
                written += 1;
            }
        }
    }
    Ok(written)
}
