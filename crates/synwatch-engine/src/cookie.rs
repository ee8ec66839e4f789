//! Stateless probe cookies.
//!
//! Each probe's source port and initial sequence number come from SipHash-1-3 keyed per job
//! (a fresh random key each run) over `(our address, target address, target port, protocol)`. A reply is
//! ours only if its ports and acknowledgement (or the quoted sequence of an ICMP error) match
//! the cookie recomputed from its own addresses, so no per-probe state is needed and replies to
//! another run, another job, or a forger without the key are rejected.
//!
//! The low [`STAMP_BITS`] bits of the sequence number carry the probe's send time instead (in
//! milliseconds of the engine's clock, modulo 4.096 s; [`ProbeCookie::stamped`]), so every
//! reply, a RST or an ICMP error as much as a SYN-ACK, tells its round trip without per-probe
//! state ([`stamp_age`]). The check then compares the other 20 bits of the sequence and the
//! source port: about 34 bits with the default port range, against masscan's 32.

use std::hash::Hasher;
use std::net::IpAddr;
use std::time::Duration;

use siphasher::sip::SipHasher13;

use crate::ports::{Port, Protocol};

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

/// Bits of the sequence number that carry the send time (see the module doc).
pub const STAMP_BITS: u32 = 12;
const STAMP_MASK: u32 = (1 << STAMP_BITS) - 1;

fn stamp_millis(now: Duration) -> u32 {
    (now.as_millis() as u64 & u64::from(STAMP_MASK)) as u32
}

impl ProbeCookie {
    /// The cookie with the send time `now` in the low bits of its sequence number.
    pub fn stamped(self, now: Duration) -> ProbeCookie {
        ProbeCookie { sequence: (self.sequence & !STAMP_MASK) | stamp_millis(now), ..self }
    }

    /// Whether a reply's implied sequence number is this cookie's, whatever its stamp.
    pub fn matches_sequence(self, sequence: u32) -> bool {
        (self.sequence ^ sequence) & !STAMP_MASK == 0
    }
}

/// How long ago, at `now`, the probe with this (stamped) sequence number was sent: exact to a
/// millisecond for replies within 4.096 s of their probe, aliased beyond.
pub fn stamp_age(sequence: u32, now: Duration) -> Duration {
    let age = stamp_millis(now).wrapping_sub(sequence) & STAMP_MASK;
    Duration::from_millis(u64::from(age))
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

    /// The cookie of the probe from `local` to `remote:remote_port`. A UDP probe's differs from
    /// the TCP one's to the same port; its `sequence` goes into the payload's id field.
    #[inline]
    pub fn cookie(&self, local: IpAddr, remote: IpAddr, remote_port: Port) -> ProbeCookie {
        let mut hasher = SipHasher13::new_with_keys(self.key0, self.key1);
        write_address(&mut hasher, local);
        write_address(&mut hasher, remote);
        hasher.write_u16(remote_port.number);
        if remote_port.protocol == Protocol::Udp {
            hasher.write_u8(17);
        }
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
        let cookie = key.cookie(local, remote, Port::tcp(80));
        assert_eq!(cookie, key.cookie(local, remote, Port::tcp(80)));
        assert_ne!(cookie, other.cookie(local, remote, Port::tcp(80)));
        assert_ne!(cookie, key.cookie(local, remote, Port::tcp(81)));
        assert_ne!(cookie, key.cookie(local, remote, Port::udp(80)));
        assert_ne!(cookie, key.cookie(local, "192.0.2.2".parse().unwrap(), Port::tcp(80)));
        assert!(SourcePortRange::DEFAULT.contains(cookie.source_port));
    }

    #[test]
    fn stamps_carry_the_send_time_and_leave_the_check_alone() {
        let key = CookieKey::new([3; 16], SourcePortRange::DEFAULT);
        let local: IpAddr = "192.0.2.100".parse().unwrap();
        let cookie = key.cookie(local, "192.0.2.1".parse().unwrap(), Port::tcp(443));
        let sent = Duration::from_millis(123_456);
        let stamped = cookie.stamped(sent);
        assert!(cookie.matches_sequence(stamped.sequence));
        assert!(!cookie.matches_sequence(stamped.sequence ^ (1 << STAMP_BITS)));
        assert_eq!(stamp_age(stamped.sequence, sent + Duration::from_millis(37)), Duration::from_millis(37));
        // Across the stamp's wrap (4.096 s) the age is still right.
        let near_wrap = cookie.stamped(Duration::from_millis(4095));
        assert_eq!(stamp_age(near_wrap.sequence, Duration::from_millis(4098)), Duration::from_millis(3));
        assert_eq!(stamp_age(stamped.sequence, sent), Duration::ZERO);
    }

    #[test]
    fn source_ports_cover_the_range() {
        let ports = SourcePortRange { first: 50000, last: 50007 };
        let key = CookieKey::new([9; 16], ports);
        let local: IpAddr = "192.0.2.100".parse().unwrap();
        let seen: std::collections::BTreeSet<u16> =
            (1..2000).map(|port| key.cookie(local, local, Port::tcp(port)).source_port).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), (50000..=50007).collect::<Vec<_>>());
    }
}
