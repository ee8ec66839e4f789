//! The `synwatch-dns` thread: reverse lookups of the hosts that answered a scan.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::Inner;

/// The `synwatch-dns` thread: looks up the addresses the scheduler hands over, with the
/// resolver the binary's factory builds for the current `dns:` section (rebuilt when it
/// changes), in chunks of `dns.concurrency`, and stores the answers in the cache.
pub(super) fn dns_loop(inner: &Inner, queue: &Receiver<Vec<IpAddr>>) {
    let mut factory_missing_logged = false;
    let mut failure_logged: Option<String> = None;
    loop {
        let batch = match queue.recv_timeout(Duration::from_millis(250)) {
            Ok(batch) => batch,
            Err(RecvTimeoutError::Timeout) => {
                if inner.shutting_down() {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let config = Arc::clone(&inner.config.read());
        if !config.resolve_hostnames {
            continue;
        }
        if inner.resolver_factory.lock().is_none() {
            // The binary hands the factory in just after the start; a batch sent before that is
            // asked for again by `set_resolver_factory`.
            if !factory_missing_logged && inner.epoch.elapsed() > Duration::from_secs(5) {
                tracing::warn!("resolve_hostnames is on but this exporter has no resolver; names stay addresses");
                factory_missing_logged = true;
            }
            continue;
        }
        let active = match inner.resolver(&config.dns) {
            Ok(active) => active,
            Err(error) => {
                if failure_logged.as_ref() != Some(&error) {
                    tracing::error!(%error, "cannot set up the DNS resolver; names stay addresses");
                    failure_logged = Some(error);
                }
                continue;
            }
        };
        let due = inner.hostnames.due(batch, Instant::now());
        for chunk in due.chunks(config.dns.concurrency.max(1)) {
            if inner.shutting_down() {
                return;
            }
            for (address, lookup) in active.reverse(chunk) {
                inner.metrics.dns_lookups.with_label_values(&[lookup.label()]).inc();
                if let crate::hostnames::ReverseLookup::Failed(error) = &lookup {
                    tracing::debug!(%address, %error, "reverse lookup failed");
                }
                inner.hostnames.store(address, &lookup, Instant::now(), &config.dns);
            }
            inner.metrics.dns_cache_entries.set(inner.hostnames.len() as i64);
        }
    }
}
