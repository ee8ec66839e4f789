//! The reverse DNS resolver of `resolve_hostnames`: hickory-resolver behind the exporter's
//! [`ReverseResolver`] trait.
//!
//! The exporter calls [`HickoryReverse::reverse`] from its `synwatch-dns` thread with a chunk of
//! addresses; the lookups of a chunk run concurrently on this resolver's own single-threaded
//! tokio runtime (so that DNS never competes with the HTTP runtime's threads), each cut off
//! after `dns.timeout`. Name servers are the configured ones (UDP, falling back to TCP for
//! truncated answers) or, when none are configured, the system's from /etc/resolv.conf.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use synwatch_exporter::config::DnsSection;
use synwatch_exporter::hostnames::{ReverseLookup, ReverseResolver};

/// hickory-resolver with the settings of one `dns:` section.
pub struct HickoryReverse {
    resolver: TokioResolver,
    runtime: tokio::runtime::Runtime,
    timeout: std::time::Duration,
}

impl std::fmt::Debug for HickoryReverse {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("HickoryReverse").field("timeout", &self.timeout).finish()
    }
}

impl HickoryReverse {
    /// Builds the resolver for `dns`.
    pub fn new(dns: &DnsSection) -> Result<HickoryReverse, String> {
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
        Ok(HickoryReverse { resolver, runtime, timeout: dns.timeout })
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

impl ReverseResolver for HickoryReverse {
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

/// The exporter's resolver factory.
pub fn factory() -> synwatch_exporter::hostnames::ResolverFactory {
    Box::new(|dns: &DnsSection| HickoryReverse::new(dns).map(|resolver| Arc::new(resolver) as Arc<dyn ReverseResolver>))
}
