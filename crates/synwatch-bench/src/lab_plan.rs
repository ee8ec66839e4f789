//! The `--lab` plan: which addresses the lab answers for, which (address, port)s listen, which
//! hosts are blackholed, and how much the target side drops. It is computed here, not built
//! (the binary builds it with `synwatch-lab`), so the ground truth recall is measured against is
//! known exactly, and the plan is testable without root.
//!
//! * The hosts of each family are one CIDR block at the start of the benchmarking ranges:
//!   `198.18.0.0/(32 - log2 hosts)` and `2001:2::/(128 - log2 hosts)`. Host counts are powers of
//!   two from 1 to 65,536, so every tool compared takes the same single block as its target.
//! * The filtered share is the last `hosts × share` addresses of each block, blackholed (the
//!   target side drops their packets, so probes time out).
//! * The open share is of all probes: each (host, port) of the hosts left answers a SYN-ACK with
//!   probability `open_percent`, drawn from a seeded hash, so the same seed gives the same lab.
//!   Everything else is closed (the target kernel's RST).
//! * With a field model ([`LabPlan::field`], `--lab-profile`), the field lab's responder plays
//!   the targets instead, and the open ground truth is the model's real services (SYN proxies'
//!   and tarpits' SYN-ACKs are false opens); the shares above are then the model's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnetwork::IpNetwork;
use synwatch_lab::field::{FieldModel, TrueState};

/// The first IPv4 address of the lab's targets.
pub const LAB_V4_START: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// The first IPv6 address of the lab's targets.
pub const LAB_V6_START: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0);
/// The most hosts per family (the lab answers within 198.18.0.0/16 and 2001:2::/64).
pub const MAX_LAB_HOSTS: u32 = 65_536;

/// Which address families the lab's targets have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabFamily {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
    /// Both, `hosts` of each.
    Both,
}

impl LabFamily {
    /// Parses `v4`, `v6` or `both`.
    pub fn parse(text: &str) -> Result<LabFamily, LabPlanError> {
        match text {
            "v4" | "ipv4" => Ok(LabFamily::V4),
            "v6" | "ipv6" => Ok(LabFamily::V6),
            "both" => Ok(LabFamily::Both),
            other => Err(LabPlanError::Family(other.to_string())),
        }
    }

    fn has_v4(self) -> bool {
        self != LabFamily::V6
    }

    fn has_v6(self) -> bool {
        self != LabFamily::V4
    }
}

/// What the lab is to be.
#[derive(Debug, Clone, PartialEq)]
pub struct LabPlan {
    /// Hosts per family: a power of two from 1 to [`MAX_LAB_HOSTS`].
    pub hosts: u32,
    /// Address families.
    pub family: LabFamily,
    /// Ports scanned on every host.
    pub ports: Vec<u16>,
    /// Share of the probes that find an open port, in percent.
    pub open_percent: f64,
    /// Share of the hosts that are blackholed, in percent.
    pub filtered_percent: f64,
    /// Share of the TCP packets reaching the target side that it drops at random, in percent.
    pub loss_percent: u8,
    /// Seed of the open (host, port) draw.
    pub seed: u64,
    /// The field lab's model, when the targets are simulated (`--lab-profile`).
    pub field: Option<Box<FieldModel>>,
}

/// A plan that cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LabPlanError {
    /// Not a power of two, or out of range.
    #[error("--lab-hosts {0}: the lab takes a power of two from 1 to 65536 hosts per family")]
    Hosts(u32),
    /// A share outside 0..=100 (or not a number).
    #[error("{what} {value}: a share is a percentage from 0 to 100")]
    Share {
        /// Which option.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// No port to scan.
    #[error("the lab needs at least one port")]
    NoPorts,
    /// Port 0 or a port listed twice.
    #[error("port {0} cannot be scanned in the lab (port 0, or listed twice)")]
    Port(u16),
    /// Not v4, v6 or both.
    #[error("--lab-family {0:?}: expected v4, v6 or both")]
    Family(String),
}

/// A well-mixed 64-bit hash of `value` (the SplitMix64 finaliser). Written out because it is
/// five lines and only picks which lab ports listen; nothing depends on it being secret.
fn mix(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// The CIDR blocks that exactly cover `count` addresses starting at `start` (an address as a
/// number, `bits` wide). Each block is the largest one aligned at the current address that
/// still fits.
fn blocks(start: u128, count: u128, bits: u32) -> Vec<(u128, u8)> {
    let mut result = Vec::new();
    let (mut address, mut left) = (start, count);
    while left > 0 {
        let alignment = if address == 0 { bits } else { address.trailing_zeros().min(bits) };
        let mut size_bits = alignment;
        while size_bits > 0 && (1u128 << size_bits) > left {
            size_bits -= 1;
        }
        result.push((address, (bits - size_bits) as u8));
        address += 1u128 << size_bits;
        left -= 1u128 << size_bits;
    }
    result
}

impl LabPlan {
    /// Checks the plan; every other method assumes a valid plan.
    pub fn validate(&self) -> Result<(), LabPlanError> {
        if !self.hosts.is_power_of_two() || self.hosts > MAX_LAB_HOSTS {
            return Err(LabPlanError::Hosts(self.hosts));
        }
        for (what, value) in [("--lab-open", self.open_percent), ("--lab-filtered", self.filtered_percent)] {
            if !(0.0..=100.0).contains(&value) {
                return Err(LabPlanError::Share { what, value: value.to_string() });
            }
        }
        if self.loss_percent > 100 {
            return Err(LabPlanError::Share { what: "--lab-loss", value: self.loss_percent.to_string() });
        }
        if self.ports.is_empty() {
            return Err(LabPlanError::NoPorts);
        }
        let mut seen = std::collections::BTreeSet::new();
        for &port in &self.ports {
            if port == 0 || !seen.insert(port) {
                return Err(LabPlanError::Port(port));
            }
        }
        Ok(())
    }

    fn prefix_bits(&self) -> u8 {
        self.hosts.trailing_zeros() as u8
    }

    /// The scanned block of each family (IPv4 first).
    pub fn target_ranges(&self) -> Vec<IpNetwork> {
        let bits = self.prefix_bits();
        let mut ranges = Vec::new();
        if self.family.has_v4() {
            ranges.push(IpNetwork::new(IpAddr::V4(LAB_V4_START), 32 - bits).expect("valid prefix"));
        }
        if self.family.has_v6() {
            ranges.push(IpNetwork::new(IpAddr::V6(LAB_V6_START), 128 - bits).expect("valid prefix"));
        }
        ranges
    }

    /// Blackholed hosts per family.
    pub fn filtered_hosts(&self) -> u32 {
        (f64::from(self.hosts) * self.filtered_percent / 100.0).round() as u32
    }

    /// Probes per scan (hosts × families × ports).
    pub fn probes(&self) -> u64 {
        u64::from(self.hosts) * self.target_ranges().len() as u64 * self.ports.len() as u64
    }

    /// The blackholed blocks: the last [`filtered_hosts`](Self::filtered_hosts) of each family.
    pub fn filtered_ranges(&self) -> Vec<IpNetwork> {
        let filtered = u128::from(self.filtered_hosts());
        let first_filtered = u128::from(self.hosts) - filtered;
        let mut ranges = Vec::new();
        if self.family.has_v4() {
            let start = u128::from(u32::from(LAB_V4_START)) + first_filtered;
            for (address, prefix) in blocks(start, filtered, 32) {
                let address = Ipv4Addr::from(address as u32);
                ranges.push(IpNetwork::new(IpAddr::V4(address), prefix).expect("valid block"));
            }
        }
        if self.family.has_v6() {
            let start = u128::from(LAB_V6_START) + first_filtered;
            for (address, prefix) in blocks(start, filtered, 128) {
                ranges.push(IpNetwork::new(IpAddr::V6(Ipv6Addr::from(address)), prefix).expect("valid block"));
            }
        }
        ranges
    }

    /// The listening (address, port)s: the lab's open ground truth.
    pub fn open_endpoints(&self) -> Vec<SocketAddr> {
        if let Some(model) = &self.field {
            let mut open = Vec::new();
            for range in self.target_ranges() {
                for address in range.iter() {
                    for &port in &self.ports {
                        if model.truth(address, port, std::time::Duration::ZERO) == TrueState::Open {
                            open.push(SocketAddr::new(address, port));
                        }
                    }
                }
            }
            return open;
        }
        let threshold = (self.open_percent * 10_000.0).round() as u64;
        let answering = self.hosts - self.filtered_hosts();
        let mut open = Vec::new();
        for (family, start) in [(0u64, u128::from(u32::from(LAB_V4_START))), (1, u128::from(LAB_V6_START))] {
            if (family == 0 && !self.family.has_v4()) || (family == 1 && !self.family.has_v6()) {
                continue;
            }
            for host in 0..answering {
                for &port in &self.ports {
                    let draw = mix(self.seed ^ mix(family << 48 | u64::from(host) << 16 | u64::from(port)));
                    if draw % 1_000_000 < threshold {
                        let address = if family == 0 {
                            IpAddr::V4(Ipv4Addr::from((start + u128::from(host)) as u32))
                        } else {
                            IpAddr::V6(Ipv6Addr::from(start + u128::from(host)))
                        };
                        open.push(SocketAddr::new(address, port));
                    }
                }
            }
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(hosts: u32, family: LabFamily) -> LabPlan {
        LabPlan {
            hosts,
            family,
            ports: vec![80, 443],
            open_percent: 10.0,
            filtered_percent: 25.0,
            loss_percent: 0,
            seed: 7,
            field: None,
        }
    }

    fn net(text: &str) -> IpNetwork {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_cover_exactly_the_filtered_tail() {
        let plan = LabPlan { filtered_percent: 31.25, ..plan(16, LabFamily::Both) };
        assert_eq!(plan.filtered_hosts(), 5);
        // The last five of 198.18.0.0/28: .11, then .12/30.
        assert_eq!(
            plan.filtered_ranges(),
            [net("198.18.0.11/32"), net("198.18.0.12/30"), net("2001:2::b/128"), net("2001:2::c/126")]
        );
        assert_eq!(plan.target_ranges(), [net("198.18.0.0/28"), net("2001:2::/124")]);
        assert_eq!(plan.probes(), 16 * 2 * 2);
        let whole = LabPlan { filtered_percent: 100.0, ..plan.clone() };
        assert_eq!(whole.filtered_ranges(), [net("198.18.0.0/28"), net("2001:2::/124")]);
        assert!(whole.open_endpoints().is_empty(), "nothing answers in a fully blackholed lab");
        let none = LabPlan { filtered_percent: 0.0, ..plan };
        assert!(none.filtered_ranges().is_empty());
        assert_eq!(blocks(0, 65_536, 32), [(0, 16)]);
        assert_eq!(blocks(3, 6, 32), [(3, 32), (4, 30), (8, 32)]);
    }

    #[test]
    fn the_open_draw_is_seeded_and_has_about_the_asked_share_outside_the_filtered_hosts() {
        let plan = plan(4096, LabFamily::V4);
        let open = plan.open_endpoints();
        assert_eq!(open, plan.open_endpoints(), "the same seed gives the same lab");
        let other = LabPlan { seed: 8, ..plan.clone() }.open_endpoints();
        assert_ne!(open, other);
        // 10 % of 3,072 answering hosts × 2 ports = 614.4.
        assert!((560..=670).contains(&open.len()), "{}", open.len());
        let filtered = plan.filtered_ranges();
        assert!(open.iter().all(|endpoint| !filtered.iter().any(|range| range.contains(endpoint.ip()))));
        assert!(open.iter().all(|endpoint| plan.target_ranges()[0].contains(endpoint.ip())));
        assert!(
            open.iter().any(|endpoint| endpoint.port() == 80) && open.iter().any(|endpoint| endpoint.port() == 443)
        );
        let all = LabPlan { open_percent: 100.0, filtered_percent: 0.0, ..plan.clone() };
        assert_eq!(all.open_endpoints().len(), 4096 * 2);
        let v6 = LabPlan { family: LabFamily::V6, ..plan };
        assert!(v6.open_endpoints().iter().all(|endpoint| endpoint.is_ipv6()));
    }

    #[test]
    fn bad_plans_say_what_is_wrong() {
        assert_eq!(plan(1000, LabFamily::V4).validate(), Err(LabPlanError::Hosts(1000)));
        assert_eq!(plan(131_072, LabFamily::V4).validate(), Err(LabPlanError::Hosts(131_072)));
        assert_eq!(plan(0, LabFamily::V4).validate(), Err(LabPlanError::Hosts(0)));
        assert!(plan(1, LabFamily::V4).validate().is_ok());
        assert!(plan(65_536, LabFamily::Both).validate().is_ok());
        let share = LabPlan { open_percent: 100.5, ..plan(16, LabFamily::V4) };
        assert_eq!(share.validate(), Err(LabPlanError::Share { what: "--lab-open", value: "100.5".into() }));
        let nan = LabPlan { filtered_percent: f64::NAN, ..plan(16, LabFamily::V4) };
        assert!(matches!(nan.validate(), Err(LabPlanError::Share { what: "--lab-filtered", .. })));
        let loss = LabPlan { loss_percent: 101, ..plan(16, LabFamily::V4) };
        assert!(matches!(loss.validate(), Err(LabPlanError::Share { what: "--lab-loss", .. })));
        assert_eq!(LabPlan { ports: vec![], ..plan(16, LabFamily::V4) }.validate(), Err(LabPlanError::NoPorts));
        assert_eq!(LabPlan { ports: vec![80, 80], ..plan(16, LabFamily::V4) }.validate(), Err(LabPlanError::Port(80)));
        assert_eq!(LabPlan { ports: vec![0], ..plan(16, LabFamily::V4) }.validate(), Err(LabPlanError::Port(0)));
        assert_eq!(LabFamily::parse("both"), Ok(LabFamily::Both));
        assert_eq!(LabFamily::parse("v5"), Err(LabPlanError::Family("v5".into())));
    }
}
