//! Capabilities: what the process holds, and dropping all of it once the sockets are open.
//!
//! Linux capabilities are per thread, and a new thread starts with a copy of its creator's. The
//! engine therefore opens every privileged socket first, then calls [`drop_all`] on the thread
//! that will create all the others, then starts its threads: they begin with nothing. Threads
//! that already existed keep their capabilities, which is why [`drop_all`] reports how many
//! there were.

use std::fs;

use caps::{CapSet, Capability};

/// What went wrong while dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// A capability set could not be cleared.
    #[error("cannot clear the {set} capability set: {reason}")]
    Clear {
        /// Which set.
        set: &'static str,
        /// The error the kernel gave.
        reason: String,
    },
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivileges(std::io::Error),
    /// The sets were cleared but the kernel still reports capabilities.
    #[error("capabilities remain after dropping them: effective {effective:#x}, permitted {permitted:#x}")]
    Remaining {
        /// The effective set as a bit mask.
        effective: u64,
        /// The permitted set as a bit mask.
        permitted: u64,
    },
}

/// The capability sets of the calling thread, as bit masks (bit `n` is capability `n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapabilitySets {
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
    /// Bounding set.
    pub bounding: u64,
}

impl CapabilitySets {
    /// Reads the calling thread's sets from `/proc/thread-self/status`.
    pub fn of_this_thread() -> Option<CapabilitySets> {
        CapabilitySets::parse_status(&fs::read_to_string("/proc/thread-self/status").ok()?)
    }

    /// Parses the `Cap*` lines of a `/proc/<pid>/status` or `/proc/<pid>/task/<tid>/status` file.
    pub fn parse_status(status: &str) -> Option<CapabilitySets> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| u64::from_str_radix(value.trim(), 16).ok())
        };
        Some(CapabilitySets {
            effective: field("CapEff:")?,
            permitted: field("CapPrm:")?,
            inheritable: field("CapInh:")?,
            ambient: field("CapAmb:").unwrap_or(0),
            bounding: field("CapBnd:")?,
        })
    }

    /// Whether `CAP_NET_RAW` is effective.
    pub fn has_net_raw(&self) -> bool {
        self.effective & Capability::CAP_NET_RAW.bitmask() != 0
    }

    /// The names of the capabilities in a mask, lower-case, comma-separated ("none" if empty).
    pub fn names(mask: u64) -> String {
        let mut names: Vec<String> = caps::all()
            .into_iter()
            .filter(|capability| mask & capability.bitmask() != 0)
            .map(|capability| capability.to_string().to_lowercase())
            .collect();
        if names.is_empty() {
            return "none".to_string();
        }
        if names.len() == caps::all().len() {
            return "all".to_string();
        }
        names.sort();
        names.join(",")
    }
}

/// Sets `no_new_privs` and clears every capability set of the calling thread: bounding (when
/// allowed), ambient, inheritable, effective and permitted. Returns how many other threads the
/// process already had (they keep their capabilities).
pub fn drop_all() -> Result<usize, PrivilegeError> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) only sets a flag on this thread.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivileges(std::io::Error::last_os_error()));
    }
    // Shrinking the bounding set needs CAP_SETPCAP; without it the set stays, which is harmless
    // once permitted is empty and no_new_privs is set.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        let _ = caps::clear(None, CapSet::Bounding);
    }
    for (set, name) in [
        (CapSet::Ambient, "ambient"),
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        // The ambient set does not exist on kernels before 4.3; nothing to clear there.
        if matches!(set, CapSet::Ambient) && caps::runtime::ambient_set_supported().is_err() {
            continue;
        }
        caps::clear(None, set).map_err(|error| PrivilegeError::Clear { set: name, reason: error.to_string() })?;
    }
    if let Some(sets) = CapabilitySets::of_this_thread()
        && (sets.effective != 0 || sets.permitted != 0)
    {
        return Err(PrivilegeError::Remaining { effective: sets.effective, permitted: sets.permitted });
    }
    Ok(thread_count().saturating_sub(1))
}

/// Threads of this process.
pub fn thread_count() -> usize {
    fs::read_dir("/proc/self/task").map(|entries| entries.count()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse_into_masks() {
        let status = "Name:\tsynwatch\nCapInh:\t0000000000000000\nCapPrm:\t0000000000002000\n\
                      CapEff:\t0000000000002000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";
        let sets = CapabilitySets::parse_status(status).unwrap();
        assert_eq!(sets.effective, 1 << 13);
        assert!(sets.has_net_raw());
        assert_eq!(sets.bounding, 0x1ff_ffff_ffff);
        assert_eq!(CapabilitySets::names(sets.permitted), "cap_net_raw");
        assert_eq!(CapabilitySets::names(0), "none");
        assert_eq!(CapabilitySets::parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn dropping_on_a_fresh_thread_leaves_it_with_nothing() {
        // A thread of its own: capabilities are per thread, so the test harness keeps its own.
        let sets = std::thread::spawn(|| {
            drop_all().expect("dropping never needs a privilege");
            let child = std::thread::spawn(CapabilitySets::of_this_thread).join().unwrap();
            (CapabilitySets::of_this_thread(), child)
        })
        .join()
        .unwrap();
        for sets in [sets.0, sets.1] {
            let sets = sets.expect("/proc is mounted");
            assert_eq!((sets.effective, sets.permitted, sets.inheritable, sets.ambient), (0, 0, 0, 0));
        }
    }
}
