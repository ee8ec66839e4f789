//! `history:`: the exposure history (`history.sqlite` in `state_dir`): whether it is kept, how
//! long and how much of it, and how often it is pruned.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_with::serde_as;

use super::values::{Bounded, PositiveDuration};

/// `history:`: the exposure history database, kept in `state_dir` (without a `state_dir` there
/// is no history, as there is no state file).
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistorySection {
    /// Keep the history (on by default wherever `state_dir` is set).
    pub enabled: bool,
    /// Changes and scans older than this are pruned; an endpoint open now is never pruned.
    #[serde_as(as = "PositiveDuration")]
    pub retention: Duration,
    /// At most this many changes are kept; past it the oldest go first.
    #[serde_as(as = "Bounded<1000, 1_000_000_000>")]
    pub max_changes: u64,
    /// How often pruning runs (it runs once at start, too).
    #[serde_as(as = "PositiveDuration")]
    pub prune_interval: Duration,
}

impl Default for HistorySection {
    fn default() -> HistorySection {
        HistorySection {
            enabled: true,
            retention: Duration::from_secs(90 * 86_400),
            max_changes: 10_000_000,
            prune_interval: Duration::from_secs(3600),
        }
    }
}
