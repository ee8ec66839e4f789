//! Stateless probe cookies.
//!
//! Each probe's source port and initial sequence number come from SipHash-1-3 keyed per job
//! (a fresh random key each run) over `(our address, target address, target port)`. A reply is
//! ours only if its ports and acknowledgement (or the quoted sequence of an ICMP error) match
//! the cookie recomputed from its own addresses, so no per-probe state is needed and replies to
//! another run, another job, or a forger without the key are rejected.

use std::hash::Hasher;
use std::net::IpAddr;

use siphasher::sip::SipHasher13;

/// The range of source ports probes use (inclusive). Replies to other ports are not ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePortRange {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

impl SourcePortRange {
    /// The default range, 40000-59999: above the registered ports, mostly below Linux's
    /// default ephemeral range's busiest end.
    pub const DEFAULT: SourcePortRange = SourcePortRange { first: 40000, last: 59999 };

    /// Number of ports in the range.
    pub fn span(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

/// A probe's cookie: its source port and initial sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeCookie {
    /// The probe's source port.
    pub source_port: u16,
    /// The probe's initial sequence number.
    pub sequence: u32,
}

/// A job's cookie key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieKey {
    key0: u64,
    key1: u64,
    ports: SourcePortRange,
}

impl CookieKey {
    /// A key from 16 random bytes (the I/O layer draws them from the OS for each job).
    pub fn new(key: [u8; 16], ports: SourcePortRange) -> CookieKey {
        let (low, high) = key.split_at(8);
        CookieKey {
            key0: u64::from_le_bytes(low.try_into().expect("8 bytes")),
            key1: u64::from_le_bytes(high.try_into().expect("8 bytes")),
            ports,
        }
    }

    /// The source port range.
    pub fn ports(&self) -> SourcePortRange {
        self.ports
    }

    /// The cookie of the probe from `local` to `remote:remote_port`.
    #[inline]
    pub fn cookie(&self, local: IpAddr, remote: IpAddr, remote_port: u16) -> ProbeCookie {
        let mut hasher = SipHasher13::new_with_keys(self.key0, self.key1);
        write_address(&mut hasher, local);
        write_address(&mut hasher, remote);
        hasher.write_u16(remote_port);
        let hash = hasher.finish();
        let span = u64::from(self.ports.span());
        ProbeCookie {
            source_port: self.ports.first + ((hash & 0xffff_ffff) % span) as u16,
            sequence: (hash >> 32) as u32,
        }
    }
}

#[inline]
fn write_address(hasher: &mut SipHasher13, address: IpAddr) {
    match address {
        IpAddr::V4(v4) => hasher.write(&v4.octets()),
        IpAddr::V6(v6) => hasher.write(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_depend_on_key_and_tuple() {
        let key = CookieKey::new([1; 16], SourcePortRange::DEFAULT);
        let other = CookieKey::new([2; 16], SourcePortRange::DEFAULT);
        let local: IpAddr = "192.0.2.100".parse().unwrap();
        let remote: IpAddr = "192.0.2.1".parse().unwrap();
        let cookie = key.cookie(local, remote, 80);
        assert_eq!(cookie, key.cookie(local, remote, 80));
        assert_ne!(cookie, other.cookie(local, remote, 80));
        assert_ne!(cookie, key.cookie(local, remote, 81));
        assert_ne!(cookie, key.cookie(local, "192.0.2.2".parse().unwrap(), 80));
        assert!(SourcePortRange::DEFAULT.contains(cookie.source_port));
    }

    #[test]
    fn source_ports_cover_the_range() {
        let ports = SourcePortRange { first: 50000, last: 50007 };
        let key = CookieKey::new([9; 16], ports);
        let local: IpAddr = "192.0.2.100".parse().unwrap();
        let seen: std::collections::BTreeSet<u16> =
            (1..2000).map(|port| key.cookie(local, local, port).source_port).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), (50000..=50007).collect::<Vec<_>>());
    }
}
