//! Target hosts and the `host × port` index space.
//!
//! Addresses are kept as sorted, merged, disjoint inclusive ranges per family, with a prefix sum
//! of their sizes, so that `index → (ip, port)` and `(ip, port) → index` are both O(log ranges).
//! A built-in list of addresses that must never be probed (see [`BUILT_IN_EXCLUSIONS`]) is
//! subtracted unless the caller explicitly allows it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use crate::permutation::Shard;
use crate::ports::{Port, PortSet};

/// Addresses excluded from every scan unless [`ExclusionPolicy::AllowReserved`] is given:
/// "this network", multicast, the reserved class E block with the limited broadcast address,
/// and IPv6 multicast.
pub const BUILT_IN_EXCLUSIONS: [&str; 4] = ["0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4", "ff00::/8"];

/// The largest number of probes one scan may have (2^40, about a trillion). Beyond it the
/// input is almost certainly a mistake such as an IPv6 /64.
pub const MAX_PROBES: u64 = 1 << 40;

/// Why a target specification was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// An item is not an address, CIDR or range.
    #[error("{input:?} is not an address, CIDR or range: {reason}")]
    Invalid {
        /// The offending item.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// Nothing is left to scan.
    #[error("no target addresses left{}", if *.excluded_by_default > 0 { format!(" ({} removed by the built-in exclusions of reserved and multicast ranges; allow them explicitly if you mean it)", .excluded_by_default) } else { String::new() })]
    Empty {
        /// How many addresses the built-in exclusions removed.
        excluded_by_default: u128,
    },
    /// The scan would have more than [`MAX_PROBES`] probes.
    #[error("the scan has {probes} probes, more than the limit of {limit}")]
    TooLarge {
        /// Probes requested (saturating).
        probes: u128,
        /// The limit.
        limit: u64,
    },
}

/// Whether the built-in exclusions apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExclusionPolicy {
    /// Subtract [`BUILT_IN_EXCLUSIONS`] (the default).
    #[default]
    Default,
    /// Scan reserved and multicast ranges too, when explicitly asked.
    AllowReserved,
}

/// An inclusive range of addresses of one family, as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressRange {
    /// Whether the range is IPv6 (sorts after IPv4).
    pub is_ipv6: bool,
    /// First address.
    pub first: u128,
    /// Last address (inclusive).
    pub last: u128,
}

/// `a`, `a/prefix` when the range is exactly one CIDR block, `a-b` otherwise.
impl std::fmt::Display for AddressRange {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first = integer_to_address(self.is_ipv6, self.first);
        if self.first == self.last {
            return write!(formatter, "{first}");
        }
        let bits = if self.is_ipv6 { 128 } else { 32 };
        let count = self.last.wrapping_sub(self.first).wrapping_add(1);
        let whole_space = self.first == 0 && self.last == if self.is_ipv6 { u128::MAX } else { u128::from(u32::MAX) };
        if whole_space {
            return write!(formatter, "{first}/0");
        }
        if count.is_power_of_two() && self.first.is_multiple_of(count) {
            return write!(formatter, "{first}/{}", bits - count.trailing_zeros());
        }
        write!(formatter, "{first}-{}", integer_to_address(self.is_ipv6, self.last))
    }
}

impl AddressRange {
    /// A range of one address.
    pub fn single(address: IpAddr) -> AddressRange {
        let (is_ipv6, value) = address_to_integer(address);
        AddressRange { is_ipv6, first: value, last: value }
    }

    /// The range covered by a CIDR.
    pub fn from_network(network: IpNetwork) -> AddressRange {
        AddressRange::between(network.network(), network.broadcast_or_last())
    }

    fn between(first: IpAddr, last: IpAddr) -> AddressRange {
        let (is_ipv6, first) = address_to_integer(first);
        let (_, last) = address_to_integer(last);
        AddressRange { is_ipv6, first, last }
    }

    /// The first address of the range.
    pub fn first_address(&self) -> IpAddr {
        integer_to_address(self.is_ipv6, self.first)
    }

    /// Number of addresses.
    pub fn len(&self) -> u128 {
        self.last - self.first + 1
    }

    /// Always false: a range holds at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `address` lies in the range.
    pub fn contains(&self, address: IpAddr) -> bool {
        let (is_ipv6, value) = address_to_integer(address);
        is_ipv6 == self.is_ipv6 && self.first <= value && value <= self.last
    }
}

trait LastAddress {
    fn broadcast_or_last(&self) -> IpAddr;
}

impl LastAddress for IpNetwork {
    fn broadcast_or_last(&self) -> IpAddr {
        match self {
            IpNetwork::V4(network) => IpAddr::V4(network.broadcast()),
            IpNetwork::V6(network) => {
                let host_bits = 128 - u32::from(network.prefix());
                let mask = if host_bits == 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
                IpAddr::V6(Ipv6Addr::from(u128::from(network.network()) | mask))
            }
        }
    }
}

fn address_to_integer(address: IpAddr) -> (bool, u128) {
    match address {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (true, u128::from(v6)),
    }
}

fn integer_to_address(is_ipv6: bool, value: u128) -> IpAddr {
    if is_ipv6 { IpAddr::V6(Ipv6Addr::from(value)) } else { IpAddr::V4(Ipv4Addr::from(value as u32)) }
}

/// Parses one target item: an address, a CIDR (`192.0.2.0/24`), or a range
/// (`192.0.2.10-192.0.2.20`). A CIDR with host bits set is accepted and means its network.
pub fn parse_target(item: &str) -> Result<AddressRange, TargetError> {
    let item = item.trim();
    let invalid = |reason: &str| TargetError::Invalid { input: item.to_string(), reason: reason.to_string() };
    if let Some((first, last)) = item.split_once('-') {
        let first: IpAddr = first.trim().parse().map_err(|_| invalid("the range start is not an address"))?;
        let last: IpAddr = last.trim().parse().map_err(|_| invalid("the range end is not an address"))?;
        if first.is_ipv6() != last.is_ipv6() {
            return Err(invalid("the range mixes IPv4 and IPv6"));
        }
        let range = AddressRange::between(first, last);
        if range.first > range.last {
            return Err(invalid("the range end is before its start"));
        }
        return Ok(range);
    }
    if item.contains('/') {
        let network: IpNetwork = item.parse().map_err(|error| invalid(&format!("{error}")))?;
        let network =
            IpNetwork::new(network.network(), network.prefix()).map_err(|error| invalid(&format!("{error}")))?;
        return Ok(AddressRange::from_network(network));
    }
    let address: IpAddr = item.parse().map_err(|_| invalid("expected an address, a CIDR or first-last"))?;
    Ok(AddressRange::single(address))
}

/// Parses a target list in the `@file` format: one item per line or separated by commas or
/// spaces, `#` starts a comment. Errors name the 1-based line.
pub fn parse_target_list(text: &str) -> Result<Vec<AddressRange>, (usize, TargetError)> {
    let mut ranges = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for item in line.split(|c: char| c == ',' || c.is_whitespace()).filter(|item| !item.is_empty()) {
            ranges.push(parse_target(item).map_err(|error| (line_index + 1, error))?);
        }
    }
    Ok(ranges)
}

/// Sorts and merges overlapping or adjacent ranges.
fn normalize(mut ranges: Vec<AddressRange>) -> Vec<AddressRange> {
    ranges.sort_unstable();
    let mut merged: Vec<AddressRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if last.is_ipv6 == range.is_ipv6 && range.first <= last.last.saturating_add(1) => {
                last.last = last.last.max(range.last);
            }
            _ => merged.push(range),
        }
    }
    merged
}

/// Subtracts normalized `exclusions` from normalized `ranges`.
fn subtract(ranges: Vec<AddressRange>, exclusions: &[AddressRange]) -> Vec<AddressRange> {
    let mut result = Vec::with_capacity(ranges.len());
    for range in ranges {
        let mut pieces = vec![range];
        for exclusion in exclusions.iter().filter(|e| e.is_ipv6 == range.is_ipv6) {
            let mut next = Vec::with_capacity(pieces.len() + 1);
            for piece in pieces {
                if exclusion.last < piece.first || exclusion.first > piece.last {
                    next.push(piece);
                    continue;
                }
                if exclusion.first > piece.first {
                    next.push(AddressRange { last: exclusion.first - 1, ..piece });
                }
                if exclusion.last < piece.last {
                    next.push(AddressRange { first: exclusion.last + 1, ..piece });
                }
            }
            pieces = next;
        }
        result.extend(pieces);
    }
    result
}

fn total(ranges: &[AddressRange]) -> u128 {
    ranges.iter().map(AddressRange::len).fold(0u128, u128::saturating_add)
}

/// A set of hosts: disjoint sorted ranges with a prefix sum of their sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSet {
    ranges: Vec<AddressRange>,
    /// `starts[i]` is the host index of `ranges[i].first`.
    starts: Vec<u64>,
    len: u64,
    excluded_by_default: u128,
}

impl HostSet {
    /// Builds the set `includes − exclusions − built-in exclusions (unless allowed)`.
    pub fn build(
        includes: Vec<AddressRange>,
        exclusions: Vec<AddressRange>,
        policy: ExclusionPolicy,
    ) -> Result<HostSet, TargetError> {
        let includes = normalize(includes);
        let user_excluded = subtract(includes, &normalize(exclusions));
        let before_default = total(&user_excluded);
        let ranges = match policy {
            ExclusionPolicy::AllowReserved => user_excluded,
            ExclusionPolicy::Default => {
                let built_in = BUILT_IN_EXCLUSIONS
                    .iter()
                    .map(|cidr| parse_target(cidr).expect("built-in exclusions are valid"))
                    .collect();
                subtract(user_excluded, &normalize(built_in))
            }
        };
        let size = total(&ranges);
        let excluded_by_default = before_default - size;
        if size == 0 {
            return Err(TargetError::Empty { excluded_by_default });
        }
        if size > u128::from(MAX_PROBES) {
            return Err(TargetError::TooLarge { probes: size, limit: MAX_PROBES });
        }
        let mut starts = Vec::with_capacity(ranges.len());
        let mut next = 0u64;
        for range in &ranges {
            starts.push(next);
            next += range.len() as u64;
        }
        Ok(HostSet { ranges, starts, len: next, excluded_by_default })
    }

    /// Number of hosts.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never true: an empty set is an error at build time.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many addresses the built-in exclusions removed.
    pub fn excluded_by_default(&self) -> u128 {
        self.excluded_by_default
    }

    /// The disjoint ranges, IPv4 first.
    pub fn ranges(&self) -> &[AddressRange] {
        &self.ranges
    }

    /// The host at `index`, in O(log ranges).
    pub fn address_at(&self, index: u64) -> Option<IpAddr> {
        if index >= self.len {
            return None;
        }
        let position = self.starts.partition_point(|&start| start <= index) - 1;
        let range = &self.ranges[position];
        Some(integer_to_address(range.is_ipv6, range.first + u128::from(index - self.starts[position])))
    }

    /// The index of `address`, in O(log ranges).
    pub fn index_of(&self, address: IpAddr) -> Option<u64> {
        let (is_ipv6, value) = address_to_integer(address);
        let position = self.ranges.partition_point(|range| (range.is_ipv6, range.first) <= (is_ipv6, value));
        let range = self.ranges.get(position.checked_sub(1)?)?;
        if range.is_ipv6 != is_ipv6 || value > range.last {
            return None;
        }
        Some(self.starts[position - 1] + (value - range.first) as u64)
    }

    /// Whether any host is IPv4 / IPv6.
    pub fn families(&self) -> (bool, bool) {
        (self.ranges.iter().any(|r| !r.is_ipv6), self.ranges.iter().any(|r| r.is_ipv6))
    }

    /// The hosts of `shard`: the `shard.index`-th of `shard.count` contiguous blocks of host
    /// indices, `[len·i/n, len·(i+1)/n)`, so the blocks are disjoint, cover the set, and differ
    /// in size by one host at most. `None` when the block is empty (fewer hosts than shards, or
    /// an index not below the count).
    ///
    /// This is how `synwatch serve --shard` splits a target between replicas: every port of a
    /// host stays with one replica, so per-host figures (responding hosts, `expect:` policies
    /// with `hosts: responding`, host names) are exact in each replica and sum across them.
    pub fn shard(&self, shard: Shard) -> Option<HostSet> {
        if shard.index >= shard.count {
            return None;
        }
        let (index, count) = (u128::from(shard.index), u128::from(shard.count));
        let total = u128::from(self.len);
        let start = (total * index / count) as u64;
        let end = (total * (index + 1) / count) as u64;
        if start >= end {
            return None;
        }
        let mut ranges = Vec::new();
        let mut starts = Vec::new();
        for (range, &range_start) in self.ranges.iter().zip(&self.starts) {
            let range_end = range_start + range.len() as u64;
            let (from, to) = (start.max(range_start), end.min(range_end));
            if from >= to {
                continue;
            }
            starts.push(from - start);
            ranges.push(AddressRange {
                is_ipv6: range.is_ipv6,
                first: range.first + u128::from(from - range_start),
                last: range.first + u128::from(to - range_start) - 1,
            });
        }
        Some(HostSet { ranges, starts, len: end - start, excluded_by_default: self.excluded_by_default })
    }
}

/// The probe index space `hosts × ports`: probe `i` is host `i / ports`, port `i % ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpace {
    hosts: HostSet,
    ports: PortSet,
}

impl TargetSpace {
    /// Combines hosts and ports. Fails when the product is too large or the ports are empty.
    pub fn new(hosts: HostSet, ports: PortSet) -> Result<TargetSpace, TargetError> {
        let probes = u128::from(hosts.len()) * ports.len() as u128;
        if probes == 0 {
            return Err(TargetError::Empty { excluded_by_default: 0 });
        }
        if probes > u128::from(MAX_PROBES) {
            return Err(TargetError::TooLarge { probes, limit: MAX_PROBES });
        }
        Ok(TargetSpace { hosts, ports })
    }

    /// Number of probes (one per host and port).
    pub fn len(&self) -> u64 {
        self.hosts.len() * self.ports.len() as u64
    }

    /// Never true (see [`TargetSpace::new`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hosts.
    pub fn hosts(&self) -> &HostSet {
        &self.hosts
    }

    /// The ports.
    pub fn ports(&self) -> &PortSet {
        &self.ports
    }

    /// The (address, port) of probe `index`.
    pub fn probe_at(&self, index: u64) -> Option<(IpAddr, Port)> {
        let port_count = self.ports.len() as u64;
        let address = self.hosts.address_at(index / port_count)?;
        let port = self.ports.port_at((index % port_count) as usize)?;
        Some((address, port))
    }

    /// The index of the probe to (`address`, `port`).
    pub fn index_of(&self, address: IpAddr, port: Port) -> Option<u64> {
        let host = self.hosts.index_of(address)?;
        let port = self.ports.index_of(port)? as u64;
        Some(host * self.ports.len() as u64 + port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str], exclusions: &[&str]) -> Result<HostSet, TargetError> {
        HostSet::build(
            items.iter().map(|item| parse_target(item).unwrap()).collect(),
            exclusions.iter().map(|item| parse_target(item).unwrap()).collect(),
            ExclusionPolicy::Default,
        )
    }

    #[test]
    fn parses_addresses_cidrs_and_ranges() {
        assert_eq!(parse_target("192.0.2.0/30").unwrap().len(), 4);
        assert_eq!(parse_target("192.0.2.7/30").unwrap().first, u128::from(u32::from(Ipv4Addr::new(192, 0, 2, 4))));
        assert_eq!(parse_target("192.0.2.10-192.0.2.19").unwrap().len(), 10);
        assert_eq!(parse_target("2001:db8::/120").unwrap().len(), 256);
        assert_eq!(parse_target(" 2001:db8::1 ").unwrap().len(), 1);
        assert!(parse_target("192.0.2.19-192.0.2.10").is_err());
        assert!(parse_target("192.0.2.1-2001:db8::1").is_err());
        assert!(parse_target("192.0.2.0/33").is_err());
        assert!(parse_target("example").is_err());
    }

    #[test]
    fn merges_excludes_and_indexes_both_ways() {
        let hosts = set(&["192.0.2.0/28", "192.0.2.8/29", "2001:db8::/126"], &["192.0.2.4-192.0.2.5"]).unwrap();
        assert_eq!(hosts.len(), 14 + 4);
        for index in 0..hosts.len() {
            let address = hosts.address_at(index).unwrap();
            assert_eq!(hosts.index_of(address), Some(index), "{address}");
        }
        assert_eq!(hosts.index_of("192.0.2.4".parse().unwrap()), None);
        assert_eq!(hosts.index_of("192.0.2.16".parse().unwrap()), None);
        assert_eq!(hosts.index_of("2001:db8::4".parse().unwrap()), None);
        assert_eq!(hosts.address_at(hosts.len()), None);
    }

    #[test]
    fn shards_split_hosts_into_disjoint_covering_blocks() {
        let hosts = set(&["192.0.2.0/28", "192.0.2.100-192.0.2.102", "2001:db8::/125"], &["192.0.2.4"]).unwrap();
        assert_eq!(hosts.len(), 15 + 3 + 8);
        for count in 1..=30u64 {
            let mut seen = Vec::new();
            let mut sizes = Vec::new();
            for index in 0..count {
                let Some(part) = hosts.shard(Shard { index, count }) else {
                    sizes.push(0);
                    continue;
                };
                sizes.push(part.len());
                for position in 0..part.len() {
                    let address = part.address_at(position).unwrap();
                    assert_eq!(part.index_of(address), Some(position), "{address} in shard {index}/{count}");
                    seen.push(hosts.index_of(address).expect("a shard's host is a host of the set"));
                }
            }
            let expected: Vec<u64> = (0..hosts.len()).collect();
            assert_eq!(seen, expected, "the shards of {count} are disjoint, in order and cover the set");
            let (small, large) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(large - small <= 1, "shard sizes {sizes:?} differ by more than one");
        }
        assert_eq!(hosts.shard(Shard::WHOLE), Some(hosts.clone()));
        assert_eq!(hosts.shard(Shard { index: 3, count: 3 }), None, "an index not below the count");
    }

    #[test]
    fn built_in_exclusions_apply_unless_allowed() {
        let hosts = set(&["223.255.255.254-224.0.0.1"], &[]).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts.excluded_by_default(), 2);
        assert!(matches!(
            set(&["255.255.255.255", "ff02::1"], &[]),
            Err(TargetError::Empty { excluded_by_default: 2 })
        ));
        assert!(matches!(set(&["0.0.0.0/8"], &[]), Err(TargetError::Empty { .. })));
        let allowed = HostSet::build(vec![parse_target("224.0.0.1").unwrap()], vec![], ExclusionPolicy::AllowReserved);
        assert_eq!(allowed.unwrap().len(), 1);
    }

    #[test]
    fn target_space_round_trips_and_rejects_huge_scans() {
        let space =
            TargetSpace::new(set(&["192.0.2.0/30"], &[]).unwrap(), PortSet::parse("22,80,443").unwrap()).unwrap();
        assert_eq!(space.len(), 12);
        for index in 0..space.len() {
            let (address, port) = space.probe_at(index).unwrap();
            assert_eq!(space.index_of(address, port), Some(index));
        }
        assert!(matches!(set(&["2001:db8::/64"], &[]), Err(TargetError::TooLarge { .. })));
        let big = set(&["2001:db8::/90"], &[]).unwrap();
        assert!(TargetSpace::new(big, PortSet::parse("1-65535").unwrap()).is_err());
    }

    #[test]
    fn target_lists_report_the_failing_line() {
        let text = "# comment\n192.0.2.1, 192.0.2.2\n\n192.0.2.0/24 # inline\nnot-an-ip\n";
        assert_eq!(parse_target_list(text).unwrap_err().0, 5);
        assert_eq!(parse_target_list("192.0.2.1 192.0.2.2\n").unwrap().len(), 2);
    }
}
