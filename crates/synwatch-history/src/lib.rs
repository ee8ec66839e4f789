//! synwatch's exposure history (issue 23): every change of a (target, ip, proto, port) into or
//! out of `open`, every endpoint ever open with when it was first and last seen, and every scan,
//! in an embedded SQLite database (`rusqlite` with SQLite built in, so the packages need no
//! library) under `state_dir`.
//!
//! * [`schema`]: the tables, what is stored and why only that, and the versioned migrations.
//! * `store`: [`HistoryStore`]: opening (a corrupt, foreign or newer file is set aside, never
//!   fatal), writing one scan in one transaction, pruning, and a read-only open for readers
//!   beside the writer.
//! * `query`: the change and endpoint readings (every value bound, never interpolated).
//! * `rows`: what is written and read, and how an address is stored.
//! * [`parse_time`]: the times the readers take (`24h` ago, or an RFC 3339 instant).
//!
//! The crate knows nothing of the exporter: its callers turn scan results into [`ChangeRow`]s.

mod query;
mod rows;
pub mod schema;
mod store;

pub use query::{ChangeQuery, ChangesPage, EndpointQuery, EndpointStates, EndpointsPage};
pub use rows::{Change, ChangeKind, ChangeRow, Endpoint, OpenEndpoint, Proto, ScanOutcome, ScanRow, states};
pub use store::{HISTORY_FILE, HistoryError, HistoryStore, Opened, Pruned};

/// A time a reader gives: a duration ago (`24h`, `90m`, `7d`) from `now`, or an RFC 3339
/// instant (`2026-12-01T10:00:00Z`); in seconds since the Unix epoch.
pub fn parse_time(text: &str, now: f64) -> Result<f64, String> {
    let text = text.trim();
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now - ago.as_secs_f64());
    }
    match humantime::parse_rfc3339_weak(text) {
        Ok(instant) => Ok(instant.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())),
        Err(_) => Err(format!(
            "{text:?} is neither a duration ago (24h, 90m, 7d) nor an RFC 3339 time (2026-12-01T10:00:00Z)"
        )),
    }
}
