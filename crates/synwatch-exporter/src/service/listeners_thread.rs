//! The `synwatch-listeners` thread: this host's own listening sockets, read on an interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::listeners::ListenerTracker;

use super::Inner;

/// The `synwatch-listeners` thread: reads this host's listening sockets every
/// `listeners.interval` while the collector is on (see [`crate::listeners`]).
pub(super) fn listeners_loop(inner: &Inner) {
    let mut tracker = ListenerTracker::default();
    #[cfg(target_os = "linux")]
    let mut source = crate::listeners::ProcSource::default();
    let mut next_reading = Instant::now();
    loop {
        let config = Arc::clone(&inner.config.read());
        let section = &config.listeners;
        if !section.enabled {
            if inner.listeners.write().take().is_some() {
                tracker.clear();
            }
        } else if Instant::now() >= next_reading {
            #[cfg(target_os = "linux")]
            {
                use crate::listeners::ListenerSource as _;
                match source.read(section) {
                    Ok(reading) => {
                        let changes = tracker.update(&reading, section, Instant::now());
                        let metrics = &inner.metrics;
                        for (change, count) in
                            [("new", changes.new), ("down", changes.down), ("recovered", changes.recovered)]
                        {
                            metrics.listener_changes.with_label_values(&[change]).inc_by(count);
                        }
                        metrics.listener_series_dropped.inc_by(changes.dropped);
                        if changes.down > 0 || changes.recovered > 0 {
                            tracing::info!(
                                down = changes.down,
                                recovered = changes.recovered,
                                new = changes.new,
                                "local listeners changed"
                            );
                        }
                        *inner.listeners.write() = Some(Arc::new(tracker.snapshot(&reading, section)));
                    }
                    Err(error) => {
                        inner.metrics.listener_read_errors.inc();
                        tracing::warn!(%error, "cannot read the local listeners");
                    }
                }
            }
            next_reading = Instant::now() + section.interval;
        }
        let mut control = inner.control.lock();
        if control.shutdown {
            return;
        }
        let sleep = next_reading
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(500));
        inner.wake.wait_for(&mut control, sleep);
        if control.shutdown {
            return;
        }
    }
}
