//! The guards in front of on-demand scans that need no scan: who the client is (with
//! `X-Forwarded-For` believed only from trusted proxies), whether an address is in an
//! allowlist, and the request rate limits. No clock is read here: time comes in as a
//! [`Duration`] since the owner's epoch, so the limits are tested deterministically.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use synwatch_engine::AddressRange;

/// Whether `address` is in one of `ranges`.
pub fn allowed(ranges: &[AddressRange], address: IpAddr) -> bool {
    let address = address.to_canonical();
    ranges.iter().any(|range| range.contains(address))
}

/// Whether every address of `range` is inside the union of `allowlist`.
pub fn range_allowed(allowlist: &[AddressRange], range: &AddressRange) -> bool {
    // Walk the range from its first address, jumping past each allowlist range that covers the
    // current address; the range is covered when the walk passes its end.
    let mut next = range.first;
    loop {
        let Some(cover) = allowlist
            .iter()
            .filter(|allowed| allowed.is_ipv6 == range.is_ipv6 && allowed.first <= next && next <= allowed.last)
            .map(|allowed| allowed.last)
            .max()
        else {
            return false;
        };
        if cover >= range.last {
            return true;
        }
        next = cover + 1;
    }
}

/// The client of a request: the direct peer, unless the peer is a trusted proxy; then the
/// right-most address of `X-Forwarded-For` that is not itself a trusted proxy (or the
/// left-most, when all are trusted). A malformed entry met on that walk is an error: a
/// trusted proxy sent something we cannot attribute.
pub fn client_address(peer: IpAddr, forwarded_for: &[String], trusted: &[AddressRange]) -> Result<IpAddr, String> {
    let peer = peer.to_canonical();
    if !allowed(trusted, peer) {
        return Ok(peer);
    }
    let hops: Vec<&str> = forwarded_for
        .iter()
        .flat_map(|header| header.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let address: IpAddr = hop
            .parse()
            .map_err(|_| format!("X-Forwarded-For from trusted proxy {peer}: {hop:?} is not an IP address"))?;
        client = address.to_canonical();
        if !allowed(trusted, client) {
            return Ok(client);
        }
    }
    Ok(client)
}

/// A token bucket over `f64` request counts (rates below one per second are common here).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Duration,
}

impl Bucket {
    fn full(burst: f64, now: Duration) -> Bucket {
        Bucket { tokens: burst, last: now }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Duration) {
        if now > self.last {
            self.tokens = (self.tokens + (now - self.last).as_secs_f64() * rate).min(burst);
            self.last = now;
        }
    }

    /// Seconds until one token is there.
    fn wait(&self, rate: f64) -> f64 {
        if self.tokens >= 1.0 { 0.0 } else { (1.0 - self.tokens) / rate }
    }
}

/// Clients remembered at most. When the table is full, clients whose bucket has refilled are
/// forgotten (a full bucket is the same as no entry); if none has, a new client is refused
/// until one does. Memory stays bounded whatever the number of source addresses.
pub const MAX_TRACKED_CLIENTS: usize = 16_384;

/// The limits: a token bucket per client (IPv6 clients by /64, what one host usually holds)
/// and one over all clients. A request takes a token from both or from neither.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    global_rate: f64,
    global_burst: f64,
    global: Bucket,
    clients: HashMap<IpAddr, Bucket>,
    capacity: usize,
}

/// A refused request: seconds until a retry can pass (at least 1, for `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl RateLimiter {
    /// A limiter with full buckets at `now`.
    pub fn new(rate: f64, burst: u32, global_rate: f64, global_burst: u32, now: Duration) -> RateLimiter {
        RateLimiter {
            rate,
            burst: f64::from(burst),
            global_rate,
            global_burst: f64::from(global_burst),
            global: Bucket::full(f64::from(global_burst), now),
            clients: HashMap::new(),
            capacity: MAX_TRACKED_CLIENTS,
        }
    }

    /// Changes the limits (a reload); tokens in hand are kept up to the new bursts.
    pub fn configure(&mut self, rate: f64, burst: u32, global_rate: f64, global_burst: u32) {
        self.rate = rate;
        self.burst = f64::from(burst);
        self.global_rate = global_rate;
        self.global_burst = f64::from(global_burst);
        self.global.tokens = self.global.tokens.min(self.global_burst);
        for bucket in self.clients.values_mut() {
            bucket.tokens = bucket.tokens.min(self.burst);
        }
    }

    /// Clients tracked now.
    pub fn tracked_clients(&self) -> usize {
        self.clients.len()
    }

    fn key(client: IpAddr) -> IpAddr {
        match client.to_canonical() {
            IpAddr::V6(address) => {
                let prefix = u128::from(address) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
            v4 => v4,
        }
    }

    /// Takes one request's tokens for `client` at `now`, or says when to retry.
    pub fn check(&mut self, client: IpAddr, now: Duration) -> Result<(), RetryAfter> {
        let key = RateLimiter::key(client);
        let (rate, burst) = (self.rate, self.burst);
        if !self.clients.contains_key(&key) && self.clients.len() >= self.capacity {
            self.clients.retain(|_, bucket| {
                bucket.refill(rate, burst, now);
                bucket.tokens < burst
            });
            if self.clients.len() >= self.capacity {
                return Err(RetryAfter(1));
            }
        }
        let client_bucket = self.clients.entry(key).or_insert_with(|| Bucket::full(burst, now));
        client_bucket.refill(rate, burst, now);
        self.global.refill(self.global_rate, self.global_burst, now);
        let wait = client_bucket.wait(rate).max(self.global.wait(self.global_rate));
        if wait > 0.0 {
            return Err(RetryAfter((wait.ceil() as u64).max(1)));
        }
        client_bucket.tokens -= 1.0;
        self.global.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synwatch_engine::targets::parse_target;

    fn ranges(items: &[&str]) -> Vec<AddressRange> {
        items.iter().map(|item| parse_target(item).unwrap()).collect()
    }

    #[test]
    fn a_range_is_allowed_only_when_covered_whole() {
        let allowlist = ranges(&["198.18.0.0/25", "198.18.0.128/25", "2001:2::/48"]);
        assert!(range_allowed(&allowlist, &parse_target("198.18.0.0/24").unwrap()), "two halves cover the /24");
        assert!(range_allowed(&allowlist, &parse_target("198.18.0.7").unwrap()));
        assert!(!range_allowed(&allowlist, &parse_target("198.18.0.0/23").unwrap()));
        assert!(!range_allowed(&allowlist, &parse_target("198.18.0.250-198.18.1.3").unwrap()));
        assert!(range_allowed(&allowlist, &parse_target("2001:2::/64").unwrap()));
        assert!(!range_allowed(&allowlist, &parse_target("::ffff:198.18.0.1").unwrap()), "families do not mix");
        assert!(!range_allowed(&[], &parse_target("198.18.0.1").unwrap()));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = ranges(&["127.0.0.1", "198.18.9.0/24"]);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "192.0.2.9".parse().unwrap();
        let header = |value: &str| vec![value.to_string()];
        // An untrusted peer's header is ignored.
        assert_eq!(client_address(stranger, &header("198.18.0.5"), &trusted), Ok(stranger));
        // From a trusted peer: the right-most untrusted hop, skipping trusted proxies.
        assert_eq!(
            client_address(peer, &header("203.0.113.1, 192.0.2.44, 198.18.9.3"), &trusted),
            Ok("192.0.2.44".parse().unwrap())
        );
        // Several headers are one list, in order.
        assert_eq!(
            client_address(peer, &["192.0.2.1".into(), "192.0.2.2".into()], &trusted),
            Ok("192.0.2.2".parse().unwrap())
        );
        // No header: the proxy itself is the client.
        assert_eq!(client_address(peer, &[], &trusted), Ok(peer));
        // A forged left-most entry does not matter; a malformed right-most one is an error.
        assert_eq!(client_address(peer, &header("garbage, 192.0.2.3"), &trusted), Ok("192.0.2.3".parse().unwrap()));
        assert!(client_address(peer, &header("192.0.2.3, garbage"), &trusted).is_err());
        // IPv4-mapped peers count as IPv4.
        assert_eq!(
            client_address("::ffff:127.0.0.1".parse().unwrap(), &header("192.0.2.8"), &trusted),
            Ok("192.0.2.8".parse().unwrap())
        );
    }

    #[test]
    fn the_limiter_holds_per_client_and_global_rates() {
        let second = Duration::from_secs(1);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap(), "192.0.2.3".parse().unwrap());
        let mut limiter = RateLimiter::new(1.0, 2, 2.0, 3, Duration::ZERO);
        assert!(limiter.check(a, Duration::ZERO).is_ok());
        assert!(limiter.check(a, Duration::ZERO).is_ok());
        assert_eq!(limiter.check(a, Duration::ZERO), Err(RetryAfter(1)), "a's burst of 2 is spent");
        assert!(limiter.check(b, Duration::ZERO).is_ok(), "b has its own bucket");
        assert_eq!(limiter.check(c, Duration::ZERO), Err(RetryAfter(1)), "the global burst of 3 is spent");
        assert!(limiter.check(c, second / 2).is_ok(), "global refills at 2/s");
        assert!(limiter.check(a, second).is_ok(), "a refills at 1/s");
        // A refused request takes no token: a long wait gives back a full burst, no more.
        let mut limiter = RateLimiter::new(0.1, 1, 100.0, 100, Duration::ZERO);
        assert!(limiter.check(a, Duration::ZERO).is_ok());
        assert_eq!(limiter.check(a, Duration::ZERO), Err(RetryAfter(10)));
        assert!(limiter.check(a, 10 * second).is_ok());
    }

    #[test]
    fn the_client_table_stays_bounded_under_many_sources() {
        let mut limiter = RateLimiter::new(1.0, 1, 1e9, 1_000_000_000, Duration::ZERO);
        limiter.capacity = 100;
        for host in 0..100u32 {
            assert!(limiter.check(IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0200 + host)), Duration::ZERO).is_ok());
        }
        // Full of fresh clients: a new one is refused, never added.
        assert!(limiter.check("198.18.0.1".parse().unwrap(), Duration::ZERO).is_err());
        assert_eq!(limiter.tracked_clients(), 100);
        // Once their buckets refilled they are forgotten and new clients get in.
        assert!(limiter.check("198.18.0.1".parse().unwrap(), Duration::from_secs(2)).is_ok());
        assert_eq!(limiter.tracked_clients(), 1);
        // IPv6 clients share a bucket per /64.
        assert!(limiter.check("2001:db8::1".parse().unwrap(), Duration::from_secs(2)).is_ok());
        assert!(limiter.check("2001:db8::2".parse().unwrap(), Duration::from_secs(2)).is_err());
    }
}
