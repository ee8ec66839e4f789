//! The named profiles: `lan`, `internet` and `hostile`, each a seeded [`FieldModel`] over
//! 198.18.0.0/16 and 2001:2::/64 (the part of 198.18.0.0/15 and 2001:2::/48 not taken by the
//! lab link).
//!
//! * `lan`: 0.2 ms, no loss, every host up, 5 % of ports open and the rest closed (TCP and UDP
//!   alike): a scanner must be exact here.
//! * `internet`: log-normal round trips around 80 ms (up to 300 ms), 5 ms jitter, 1 % loss each
//!   way, 70 % of hosts silent, 2 % unreachable (the router's ICMP), 0.5 % SYN proxies, 0.3 %
//!   tarpits; on up hosts 8 % of TCP ports open, 15 % filtered, 3 % prohibited by the host, 2 %
//!   by the router, the rest closed; of UDP ports 4 % answer, 3 % are bound but silent, 15 %
//!   filtered, 3 % prohibited by the host, 2 % by the router, the rest closed.
//! * `hostile`: log-normal around 150 ms (up to 400 ms), 20 ms jitter, bursty loss (about 5 %
//!   each way), a firewall dropping probes beyond 5,000/s per source (burst 500), 60 % silent,
//!   2 % tarpits, 1 % SYN proxies, 1 % duplicated replies and 2 % late replies (5 s); of UDP
//!   ports 4 % answer, 4 % bound but silent, 25 % filtered, 3 % and 3 % prohibited.
//!
//! In every profile ICMP is limited like Linux: each source 1,000/s with a burst of 50
//! (`icmp_msgs_per_sec`, `icmp_msgs_burst`), and each host towards one peer 1/s with a burst of
//! 6 (`icmp_ratelimit`), which is what makes closed UDP ports slow to scan.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::model::{
    FieldModel, HostMix, LateReplies, Loss, PortMix, RangeModel, RateLimit, RttDistribution, UdpPortMix,
};

/// The profiles' names.
pub const PROFILES: [&str; 3] = ["lan", "internet", "hostile"];

/// The IPv4 range every profile covers.
pub const FIELD_V4: &str = "198.18.0.0/16";
/// The IPv6 range every profile covers.
pub const FIELD_V6: &str = "2001:2::/64";

/// The router of every profile (inside the benchmarking ranges, outside the simulated /16s).
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 254, 1);
/// The router's IPv6 address.
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0xfffe, 0, 0, 0, 1);

/// Linux's default ICMP error limit (`icmp_msgs_per_sec` 1,000, `icmp_msgs_burst` 50).
pub const LINUX_ICMP_LIMIT: RateLimit = RateLimit { per_second: 1000.0, burst: 50.0 };

/// Linux's default per-peer ICMP error limit: `icmp_ratelimit` 1,000 ms (one a second) with the
/// inet peer's burst of 6 (`XRLIM_BURST_FACTOR`).
pub const LINUX_ICMP_PEER_LIMIT: RateLimit = RateLimit { per_second: 1.0, burst: 6.0 };

fn both_families(range: impl Fn(IpNetwork) -> RangeModel) -> Vec<RangeModel> {
    [FIELD_V4, FIELD_V6].iter().map(|text| range(text.parse().expect("a valid CIDR"))).collect()
}

/// The profile called `name`, with `seed`.
pub fn profile(name: &str, seed: u64) -> Option<FieldModel> {
    let base = |name: &str, ranges| FieldModel {
        name: name.to_string(),
        seed,
        ranges,
        forward_loss: Loss::None,
        reverse_loss: Loss::None,
        icmp_limit: LINUX_ICMP_LIMIT,
        router_v4: ROUTER_V4,
        router_v6: ROUTER_V6,
        duplicate_percent: 0.0,
        late: LateReplies { percent: 0.0, delay_ms: 5000.0 },
        changes: Vec::new(),
        host_icmp_peer_limit: Some(LINUX_ICMP_PEER_LIMIT),
    };
    let model = match name {
        "lan" => base(
            "lan",
            both_families(|range| RangeModel {
                range,
                rtt: RttDistribution::Fixed { ms: 0.2 },
                jitter_ms: 0.0,
                hosts: HostMix::default(),
                ports: PortMix { open: 5.0, ..PortMix::default() },
                udp: UdpPortMix { open: 5.0, ..UdpPortMix::default() },
                firewall: None,
            }),
        ),
        "internet" => FieldModel {
            forward_loss: Loss::Random { percent: 1.0 },
            reverse_loss: Loss::Random { percent: 1.0 },
            ..base(
                "internet",
                both_families(|range| RangeModel {
                    range,
                    rtt: RttDistribution::LogNormal { median_ms: 80.0, sigma: 0.5, max_ms: 300.0 },
                    jitter_ms: 5.0,
                    hosts: HostMix { silent: 70.0, unreachable: 2.0, synproxy: 0.5, tarpit: 0.3 },
                    ports: PortMix { open: 8.0, filtered: 15.0, prohibited_by_host: 3.0, prohibited_by_router: 2.0 },
                    udp: UdpPortMix {
                        open: 4.0,
                        open_silent: 3.0,
                        filtered: 15.0,
                        prohibited_by_host: 3.0,
                        prohibited_by_router: 2.0,
                    },
                    firewall: None,
                }),
            )
        },
        "hostile" => {
            // About 6 % of packets fall in the bad state, which loses 75 % of them: ~5 % mean.
            let bursty = Loss::Bursty {
                good_to_bad_percent: 2.0,
                bad_to_good_percent: 30.0,
                loss_good_percent: 0.3,
                loss_bad_percent: 75.0,
            };
            FieldModel {
                forward_loss: bursty,
                reverse_loss: bursty,
                duplicate_percent: 1.0,
                late: LateReplies { percent: 2.0, delay_ms: 5000.0 },
                ..base(
                    "hostile",
                    both_families(|range| RangeModel {
                        range,
                        rtt: RttDistribution::LogNormal { median_ms: 150.0, sigma: 0.6, max_ms: 400.0 },
                        jitter_ms: 20.0,
                        hosts: HostMix { silent: 60.0, unreachable: 3.0, synproxy: 1.0, tarpit: 2.0 },
                        ports: PortMix {
                            open: 8.0,
                            filtered: 20.0,
                            prohibited_by_host: 3.0,
                            prohibited_by_router: 3.0,
                        },
                        udp: UdpPortMix {
                            open: 4.0,
                            open_silent: 4.0,
                            filtered: 25.0,
                            prohibited_by_host: 3.0,
                            prohibited_by_router: 3.0,
                        },
                        firewall: Some(RateLimit { per_second: 5000.0, burst: 500.0 }),
                    }),
                )
            }
        }
        _ => return None,
    };
    Some(model)
}

/// Overrides of a profile's knobs (`synwatch bench --lab-rtt` and friends); `None` keeps the
/// profile's value.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Knobs {
    /// Every host's round trip, fixed.
    pub rtt: Option<std::time::Duration>,
    /// Every range's jitter.
    pub jitter: Option<std::time::Duration>,
    /// Random loss each way, percent (replaces bursty loss).
    pub loss_percent: Option<f64>,
    /// Share of open ports on up hosts, percent.
    pub open_percent: Option<f64>,
    /// Share of silent hosts, percent.
    pub silent_percent: Option<f64>,
}

impl Knobs {
    /// Applies the overrides to `model`.
    pub fn apply(&self, model: &mut FieldModel) {
        for range in &mut model.ranges {
            if let Some(rtt) = self.rtt {
                range.rtt = RttDistribution::Fixed { ms: rtt.as_secs_f64() * 1000.0 };
            }
            if let Some(jitter) = self.jitter {
                range.jitter_ms = jitter.as_secs_f64() * 1000.0;
            }
            if let Some(open) = self.open_percent {
                range.ports.open = open;
            }
            if let Some(silent) = self.silent_percent {
                range.hosts.silent = silent;
            }
        }
        if let Some(percent) = self.loss_percent {
            model.forward_loss = Loss::Random { percent };
            model.reverse_loss = Loss::Random { percent };
        }
    }
}
