//! CPU accounting of a sweep (procfs and `getrusage`), and the descriptor limit the lab's
//! listeners need.

use std::time::Duration;

use synwatch_lab::runner::thread_cpu;

use super::error::{Context, SweepError, usage};

/// Raises the soft descriptor limit to the hard one and checks that `needed` fit.
pub(crate) fn ensure_descriptors(needed: u64) -> Result<(), SweepError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    }
    if needed > hard {
        return Err(usage(format!(
            "the lab needs {needed} descriptors for its listeners but the limit is {hard}: lower --lab-open or --lab-hosts, or raise the limit (ulimit -Hn)"
        )));
    }
    Ok(())
}

/// The process's CPU time (user + system).
fn process_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |usage| {
        let time = |value: nix::sys::time::TimeVal| {
            Duration::from_secs(value.tv_sec() as u64) + Duration::from_micros(value.tv_usec() as u64)
        };
        time(usage.user_time()) + time(usage.system_time())
    })
}

/// The CPU time that belongs to the scanner: everything but the lab's accept thread and the
/// field lab's responder, which play the targets' side.
pub(crate) fn scanner_cpu() -> Duration {
    process_cpu().saturating_sub(thread_cpu("lab-accept")).saturating_sub(thread_cpu("field-responder"))
}
