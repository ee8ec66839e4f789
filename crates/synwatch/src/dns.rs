//! The DNS resolver of the exporter and of `synwatch scan`: hickory-resolver behind the
//! exporter's [`ReverseResolver`] (PTR lookups of `resolve_hostnames`) and [`ForwardResolver`]
//! (the addresses of targets given by name) traits.
//!
//! The exporter calls [`HickoryResolver::reverse`] from its `synwatch-dns` thread with a chunk
//! of addresses, and [`HickoryResolver::forward`] from a scan's `synwatch-resolve` thread or a
//! request with a target's names; the lookups of a call run concurrently on this resolver's own
//! single-threaded tokio runtime (so that DNS never competes with the HTTP runtime's threads),
//! each cut off after `dns.timeout`. Name servers are the configured ones (UDP, falling back to
//! TCP for truncated answers) or, when none are configured, the system's from /etc/resolv.conf;
//! /etc/hosts is read either way (so `localhost` resolves as the system resolves it).
//!
//! A forward lookup asks for A and AAAA records as the name's family says (`ipv4:` only A,
//! `ipv6:` only AAAA), both at once; a name is not found only when every query says so
//! (NXDOMAIN or no records), and a time-out of one query is a time-out of the name.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Hosts, Name, ResolveError, TokioResolver};
use synwatch_engine::{AddressFamily, HostName};
use synwatch_exporter::config::DnsSection;
use synwatch_exporter::hostnames::{Resolver, ReverseLookup, ReverseResolver};
use synwatch_exporter::names::{ForwardLookup, ForwardResolver};

/// hickory-resolver with the settings of one `dns:` section.
pub struct HickoryResolver {
    resolver: TokioResolver,
    runtime: tokio::runtime::Runtime,
    timeout: std::time::Duration,
    /// Forward lookups in flight at once (`dns.concurrency`): a target file may name 100,000
    /// hosts, and they must not reach the name server all at once.
    concurrency: usize,
}

impl std::fmt::Debug for HickoryResolver {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("HickoryResolver").field("timeout", &self.timeout).finish()
    }
}

impl HickoryResolver {
    /// Builds the resolver for `dns`.
    pub fn new(dns: &DnsSection) -> Result<HickoryResolver, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start the DNS runtime: {error}"))?;
        let mut builder = if dns.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|error| format!("cannot read /etc/resolv.conf: {error}"))?
        } else {
            let mut config = ResolverConfig::new();
            for server in &dns.nameservers {
                config.add_name_server(NameServerConfig::new(*server, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*server, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        let options = builder.options_mut();
        options.timeout = dns.timeout;
        options.attempts = 1;
        // The exporter keeps its own cache, with its own TTL bounds; hickory's is kept small.
        options.cache_size = 64;
        let resolver = {
            // The resolver binds its sockets lazily on the runtime it is used on.
            let _entered = runtime.enter();
            builder.build()
        };
        Ok(HickoryResolver { resolver, runtime, timeout: dns.timeout, concurrency: dns.concurrency.max(1) })
    }
}

fn classify(result: Result<hickory_resolver::lookup::ReverseLookup, ResolveError>) -> ReverseLookup {
    match result {
        Ok(lookup) => {
            let ttl = lookup.as_lookup().valid_until().saturating_duration_since(Instant::now());
            match lookup.iter().next() {
                Some(name) => {
                    let text = name.to_utf8();
                    ReverseLookup::Found { name: text.trim_end_matches('.').to_string(), ttl }
                }
                None => ReverseLookup::NotFound,
            }
        }
        Err(error) if error.is_no_records_found() || error.is_nx_domain() => ReverseLookup::NotFound,
        Err(error) => {
            let text = error.to_string();
            if text.contains("timed out") || text.contains("timeout") {
                ReverseLookup::TimedOut
            } else {
                ReverseLookup::Failed(text)
            }
        }
    }
}

impl ReverseResolver for HickoryResolver {
    fn reverse(&self, addresses: &[IpAddr]) -> Vec<(IpAddr, ReverseLookup)> {
        self.runtime.block_on(async {
            let mut lookups = tokio::task::JoinSet::new();
            for &address in addresses {
                let resolver = self.resolver.clone();
                let timeout = self.timeout;
                lookups.spawn(async move {
                    // hickory's own timeout covers each attempt; this one covers the whole lookup.
                    let answer = match tokio::time::timeout(timeout, resolver.reverse_lookup(address)).await {
                        Ok(result) => classify(result),
                        Err(_) => ReverseLookup::TimedOut,
                    };
                    (address, answer)
                });
            }
            let mut answers = Vec::with_capacity(addresses.len());
            while let Some(joined) = lookups.join_next().await {
                if let Ok(answer) = joined {
                    answers.push(answer);
                }
            }
            answers
        })
    }
}

/// What one query (A or AAAA) of a forward lookup found.
enum QueryAnswer {
    Addresses(Vec<IpAddr>),
    NotFound,
    TimedOut,
    Failed(String),
}

fn query_answer<L>(result: Result<L, ResolveError>, addresses: impl FnOnce(L) -> Vec<IpAddr>) -> QueryAnswer {
    match result {
        Ok(lookup) => QueryAnswer::Addresses(addresses(lookup)),
        Err(error) if error.is_no_records_found() || error.is_nx_domain() => QueryAnswer::NotFound,
        Err(error) => {
            let text = error.to_string();
            if text.contains("timed out") || text.contains("timeout") {
                QueryAnswer::TimedOut
            } else {
                QueryAnswer::Failed(text)
            }
        }
    }
}

/// Combines the answers of a name's queries (see the module documentation).
fn combine(answers: Vec<QueryAnswer>) -> ForwardLookup {
    let mut found = Vec::new();
    let mut any_found = false;
    let mut failure = None;
    for answer in answers {
        match answer {
            QueryAnswer::Addresses(addresses) => {
                any_found = true;
                found.extend(addresses);
            }
            QueryAnswer::NotFound => {}
            QueryAnswer::TimedOut => failure = Some(ForwardLookup::TimedOut),
            QueryAnswer::Failed(text) => {
                if failure.is_none() {
                    failure = Some(ForwardLookup::Failed(text));
                }
            }
        }
    }
    match failure {
        // One query's failure fails the name: its other family might have answered more.
        Some(failure) => failure,
        None if any_found && !found.is_empty() => ForwardLookup::Found(found),
        None => ForwardLookup::NotFound,
    }
}

/// The addresses /etc/hosts gives `name` in its family, if it lists it.
fn from_hosts(hosts: &Hosts, name: &HostName) -> Option<Vec<IpAddr>> {
    let fqdn = Name::from_ascii(name.name()).ok()?;
    let mut found = Vec::new();
    for (record_type, wanted) in [
        (RecordType::A, name.family() != AddressFamily::Ipv6),
        (RecordType::AAAA, name.family() != AddressFamily::Ipv4),
    ] {
        if !wanted {
            continue;
        }
        if let Some(lookup) = hosts.lookup_static_host(&Query::query(fqdn.clone(), record_type)) {
            found.extend(lookup.iter().filter_map(|record| record.ip_addr()));
        }
    }
    (!found.is_empty()).then_some(found)
}

impl ForwardResolver for HickoryResolver {
    fn forward(&self, names: &[HostName]) -> Vec<ForwardLookup> {
        // /etc/hosts first, as the system's `files dns` order has it, read again at every
        // call so that an edit counts at the next scan.
        let hosts = Hosts::from_system().unwrap_or_default();
        self.runtime.block_on(async {
            let mut lookups = tokio::task::JoinSet::new();
            let permits = Arc::new(tokio::sync::Semaphore::new(self.concurrency));
            let mut answers = vec![ForwardLookup::Failed("no answer".into()); names.len()];
            for (index, name) in names.iter().enumerate() {
                if let Some(found) = from_hosts(&hosts, name) {
                    answers[index] = ForwardLookup::Found(found);
                    continue;
                }
                let resolver = self.resolver.clone();
                let timeout = self.timeout;
                // A fully qualified query: the search domains of resolv.conf are not tried
                // (the name the user wrote is the one scanned), except for a single label
                // such as `localhost`, which /etc/hosts answers.
                let query =
                    if name.name().contains('.') { format!("{}.", name.name()) } else { name.name().to_string() };
                let family = name.family();
                let permits = Arc::clone(&permits);
                lookups.spawn(async move {
                    // The timeout runs from the lookup's start, not from its wait for a turn.
                    let Ok(_permit) = permits.acquire_owned().await else {
                        return (index, ForwardLookup::Failed("the lookups were stopped".into()));
                    };
                    let v4 = async {
                        if family == AddressFamily::Ipv6 {
                            return None;
                        }
                        let result = resolver.ipv4_lookup(query.as_str()).await;
                        Some(query_answer(result, |lookup| lookup.iter().map(|record| IpAddr::V4(record.0)).collect()))
                    };
                    let v6 = async {
                        if family == AddressFamily::Ipv4 {
                            return None;
                        }
                        let result = resolver.ipv6_lookup(query.as_str()).await;
                        Some(query_answer(result, |lookup| lookup.iter().map(|record| IpAddr::V6(record.0)).collect()))
                    };
                    // hickory's own timeout covers each attempt; this one covers the whole lookup.
                    match tokio::time::timeout(timeout, async { tokio::join!(v4, v6) }).await {
                        Ok((v4, v6)) => (index, combine(v4.into_iter().chain(v6).collect())),
                        Err(_) => (index, ForwardLookup::TimedOut),
                    }
                });
            }
            while let Some(joined) = lookups.join_next().await {
                if let Ok((index, answer)) = joined {
                    answers[index] = answer;
                }
            }
            answers
        })
    }
}

/// The exporter's resolver factory.
pub fn factory() -> synwatch_exporter::hostnames::ResolverFactory {
    Box::new(|dns: &DnsSection| HickoryResolver::new(dns).map(|resolver| Arc::new(resolver) as Arc<dyn Resolver>))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// A name server on 127.0.0.1 that answers every query NXDOMAIN after `delay`, and counts the
    /// most queries it held unanswered at once. (A few header bytes: nothing here needs a DNS
    /// library, and the test must see the queries as they arrive.)
    fn slow_nxdomain_server(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicBool>) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        let address = socket.local_addr().unwrap();
        let peak = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak_seen, stopping) = (Arc::clone(&peak), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut held: Vec<(Instant, Vec<u8>, SocketAddr)> = Vec::new();
            let mut buffer = [0u8; 512];
            while !stopping.load(Ordering::Relaxed) {
                if let Ok((length, from)) = socket.recv_from(&mut buffer)
                    && length >= 12
                {
                    held.push((Instant::now() + delay, buffer[..length].to_vec(), from));
                    peak_seen.fetch_max(held.len(), Ordering::Relaxed);
                }
                let now = Instant::now();
                held.retain_mut(|(due, query, from)| {
                    if *due > now {
                        return true;
                    }
                    // The query itself, as a response (QR, RD, RA) with RCODE 3: NXDOMAIN.
                    query[2] = 0x81;
                    query[3] = 0x83;
                    let _ = socket.send_to(query, *from);
                    false
                });
            }
        });
        (address, peak, stop)
    }

    #[test]
    fn forward_lookups_are_bounded_by_dns_concurrency() {
        let (server, peak, stop) = slow_nxdomain_server(Duration::from_millis(50));
        let dns = DnsSection {
            nameservers: vec![server],
            timeout: Duration::from_secs(2),
            concurrency: 3,
            ..DnsSection::default()
        };
        let resolver = HickoryResolver::new(&dns).unwrap();
        let names: Vec<HostName> = (0..12)
            .map(|index| HostName::parse(&format!("host-{index}.synwatch.test"), AddressFamily::Ipv4).unwrap())
            .collect();
        let answers = resolver.forward(&names);
        stop.store(true, Ordering::Relaxed);
        assert!(answers.iter().all(|answer| *answer == ForwardLookup::NotFound), "{answers:?}");
        // Three names at a time, one A query each (hickory may send a query over TCP too).
        let peak = peak.load(Ordering::Relaxed);
        assert!((1..=3).contains(&peak), "{peak} queries held at once");
    }
}
