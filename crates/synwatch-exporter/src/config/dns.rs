//! `dns:`: the name servers and caching of reverse lookups and of the targets given by name.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_with::serde_as;

use super::values::{AnyDuration, Bounded, Nameserver, PositiveDuration};

/// `dns:`: how the reverse (PTR) lookups of `resolve_hostnames` are made and cached.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSection {
    /// Name servers as `address` or `address:port` (empty: the system's, from /etc/resolv.conf).
    #[serde_as(as = "Vec<Nameserver>")]
    pub nameservers: Vec<SocketAddr>,
    /// One lookup's deadline.
    #[serde_as(as = "PositiveDuration")]
    pub timeout: Duration,
    /// A found name is kept at least this long, whatever its record's TTL.
    #[serde_as(as = "AnyDuration")]
    pub min_ttl: Duration,
    /// A found name is looked up again after this long at most.
    #[serde_as(as = "PositiveDuration")]
    pub max_ttl: Duration,
    /// A failed lookup (no PTR record, time-out, error) is retried after this long.
    #[serde_as(as = "PositiveDuration")]
    pub negative_ttl: Duration,
    /// Addresses remembered at most.
    #[serde_as(as = "Bounded<1, 10_000_000>")]
    pub cache_size: usize,
    /// Lookups in flight at once.
    #[serde_as(as = "Bounded<1, 1024>")]
    pub concurrency: usize,
}

impl Default for DnsSection {
    fn default() -> DnsSection {
        DnsSection {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(300),
            cache_size: 65_536,
            concurrency: 32,
        }
    }
}
