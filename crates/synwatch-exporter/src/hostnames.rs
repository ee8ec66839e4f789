//! Host names of responding hosts, from reverse DNS (PTR), for `/sd` and `synwatch_host_info`.
//!
//! The lookups themselves are made by a [`ReverseResolver`] handed in by the binary (hickory);
//! this module decides what to look up and remembers the answers. A lookup is asked for after a
//! scan completes (and after a start or reload), on the exporter's `synwatch-dns` thread, never
//! while a request is served: a scrape or a `/sd` request reads the cache and nothing else.
//!
//! The cache keeps, per address, the name found (or that none was) and when to ask again: a
//! found name after its record's TTL clamped to `[min_ttl, max_ttl]`, a failure after
//! `negative_ttl`. An entry due again keeps serving its old name until the new answer arrives, so
//! that a slow or failing name server never makes names flap back to addresses. The cache holds at
//! most `cache_size` addresses; when full, the entries due soonest are evicted first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::config::DnsSection;
use crate::names::ForwardResolver;

/// The answer to one reverse lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReverseLookup {
    /// The first PTR name (without the trailing dot) and its record's TTL.
    Found {
        /// The name.
        name: String,
        /// How long the name server said it may be kept.
        ttl: Duration,
    },
    /// The name server answered that there is no PTR record.
    NotFound,
    /// No answer within `dns.timeout`.
    TimedOut,
    /// Any other failure (network, malformed answer, refused).
    Failed(String),
}

impl ReverseLookup {
    /// The `result` label of `synwatch_dns_lookups_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ReverseLookup::Found { .. } => "found",
            ReverseLookup::NotFound => "not_found",
            ReverseLookup::TimedOut => "timeout",
            ReverseLookup::Failed(_) => "error",
        }
    }
}

/// What makes reverse lookups (implemented by the binary with hickory-resolver).
pub trait ReverseResolver: Send + Sync {
    /// Looks up every address (concurrently, each within the configured timeout) and answers
    /// for each, in any order. Blocks until all are answered.
    fn reverse(&self, addresses: &[IpAddr]) -> Vec<(IpAddr, ReverseLookup)>;
}

/// What makes both kinds of lookups: reverse ones for `resolve_hostnames`, forward ones for the
/// targets given by name.
pub trait Resolver: ReverseResolver + ForwardResolver {}

impl<T: ReverseResolver + ForwardResolver + ?Sized> Resolver for T {}

/// Builds a resolver for a `dns:` section (called again when the section changes).
pub type ResolverFactory = Box<dyn Fn(&DnsSection) -> Result<Arc<dyn Resolver>, String> + Send + Sync>;

#[derive(Debug, Clone)]
struct Entry {
    name: Option<Arc<str>>,
    due: Instant,
}

/// The names known so far (see the module documentation).
#[derive(Debug, Default)]
pub struct HostnameCache {
    entries: RwLock<HashMap<IpAddr, Entry>>,
}

impl HostnameCache {
    /// The name of `address`, if one was found (possibly due for a refresh).
    pub fn name(&self, address: IpAddr) -> Option<Arc<str>> {
        self.entries.read().get(&address).and_then(|entry| entry.name.clone())
    }

    /// Addresses remembered.
    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.read().is_empty()
    }

    /// Of `addresses`, the ones never looked up or due again at `now`.
    pub fn due(&self, addresses: impl IntoIterator<Item = IpAddr>, now: Instant) -> Vec<IpAddr> {
        let entries = self.entries.read();
        addresses.into_iter().filter(|address| entries.get(address).is_none_or(|entry| entry.due <= now)).collect()
    }

    /// Stores an answer received at `now`. A failure keeps a name found earlier (it is served
    /// until a later lookup finds another or none).
    pub fn store(&self, address: IpAddr, lookup: &ReverseLookup, now: Instant, dns: &DnsSection) {
        let mut entries = self.entries.write();
        let previous = entries.get(&address).and_then(|entry| entry.name.clone());
        let entry = match lookup {
            ReverseLookup::Found { name, ttl } => {
                Entry { name: Some(Arc::from(name.as_str())), due: now + (*ttl).clamp(dns.min_ttl, dns.max_ttl) }
            }
            ReverseLookup::NotFound => Entry { name: None, due: now + dns.negative_ttl },
            ReverseLookup::TimedOut | ReverseLookup::Failed(_) => Entry { name: previous, due: now + dns.negative_ttl },
        };
        if !entries.contains_key(&address) && entries.len() >= dns.cache_size {
            evict(&mut entries, dns.cache_size);
        }
        if entries.len() < dns.cache_size || entries.contains_key(&address) {
            entries.insert(address, entry);
        }
    }

    /// Forgets everything (resolution was turned off).
    pub fn clear(&self) {
        self.entries.write().clear();
    }
}

/// Makes room for about a tenth of `capacity`: the entries due soonest go first (evicting in
/// bulk keeps a full cache from paying a scan per insertion).
fn evict(entries: &mut HashMap<IpAddr, Entry>, capacity: usize) {
    let keep = capacity - (capacity / 10).max(1);
    if entries.len() <= keep {
        return;
    }
    let mut dues: Vec<Instant> = entries.values().map(|entry| entry.due).collect();
    let cut = entries.len() - keep;
    let (_, threshold, _) = dues.select_nth_unstable(cut - 1);
    let threshold = *threshold;
    let mut removed = 0;
    entries.retain(|_, entry| {
        if removed < cut && entry.due <= threshold {
            removed += 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(cache_size: usize) -> DnsSection {
        DnsSection {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(30),
            cache_size,
            ..DnsSection::default()
        }
    }

    fn address(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_name_is_kept_for_its_clamped_ttl_and_served_while_due_again() {
        let cache = HostnameCache::default();
        let (start, dns) = (Instant::now(), dns(100));
        assert_eq!(cache.due([address(1), address(2)], start), vec![address(1), address(2)]);
        let found = ReverseLookup::Found { name: "web-1.example.org".into(), ttl: Duration::from_secs(5) };
        cache.store(address(1), &found, start, &dns);
        cache.store(address(2), &ReverseLookup::NotFound, start, &dns);
        assert_eq!(cache.name(address(1)).as_deref(), Some("web-1.example.org"));
        assert_eq!(cache.name(address(2)), None);
        // A 5 s TTL is raised to min_ttl (60 s); the negative answer is asked again after 30 s.
        assert!(cache.due([address(1), address(2)], start + Duration::from_secs(20)).is_empty());
        assert_eq!(cache.due([address(1), address(2)], start + Duration::from_secs(31)), vec![address(2)]);
        assert_eq!(cache.due([address(1)], start + Duration::from_secs(61)), vec![address(1)]);
        // A long TTL is capped at max_ttl.
        let long = ReverseLookup::Found { name: "web-1.example.org".into(), ttl: Duration::from_secs(86_400) };
        cache.store(address(1), &long, start, &dns);
        assert_eq!(cache.due([address(1)], start + Duration::from_secs(601)), vec![address(1)]);
        // Due again, the old name is still served; a time-out keeps it; NXDOMAIN drops it.
        assert_eq!(cache.name(address(1)).as_deref(), Some("web-1.example.org"));
        cache.store(address(1), &ReverseLookup::TimedOut, start + Duration::from_secs(601), &dns);
        assert_eq!(cache.name(address(1)).as_deref(), Some("web-1.example.org"));
        assert!(cache.due([address(1)], start + Duration::from_secs(620)).is_empty());
        cache.store(address(1), &ReverseLookup::NotFound, start + Duration::from_secs(700), &dns);
        assert_eq!(cache.name(address(1)), None);
    }

    #[test]
    fn a_full_cache_evicts_the_entries_due_soonest() {
        let cache = HostnameCache::default();
        let (start, dns) = (Instant::now(), dns(20));
        for last in 0..20u8 {
            let lookup =
                ReverseLookup::Found { name: format!("h{last}"), ttl: Duration::from_secs(60 + u64::from(last)) };
            cache.store(address(last), &lookup, start, &dns);
        }
        assert_eq!(cache.len(), 20);
        cache.store(
            address(200),
            &ReverseLookup::Found { name: "new".into(), ttl: Duration::from_secs(600) },
            start,
            &dns,
        );
        assert!(cache.len() <= 20);
        assert_eq!(cache.name(address(200)).as_deref(), Some("new"));
        // The two due soonest (h0, h1) went; the one due last stays.
        assert_eq!(cache.name(address(0)), None);
        assert_eq!(cache.name(address(1)), None);
        assert_eq!(cache.name(address(19)).as_deref(), Some("h19"));
        cache.clear();
        assert!(cache.is_empty());
    }
}
