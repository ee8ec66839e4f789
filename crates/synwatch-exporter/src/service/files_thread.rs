//! The `synwatch-files` thread: watches the target files of the config (`targets_files:`) and
//! reloads the config when they change, exactly as SIGHUP does (a bad file is rejected with its
//! line and column, counted in `synwatch_config_reload_successful`, and the old targets keep
//! running).
//!
//! It watches the directories of the patterns with inotify (through `notify`), which tells of
//! most changes at once (edits, renames, Kubernetes' symlink swaps of a ConfigMap); events are
//! gathered for [`DEBOUNCE`] so that an editor's write-and-rename is one reload. Every
//! `targets_files_refresh` it reads the files again whatever inotify said (a directory created
//! after the start, a network file system). Either way it reloads only when the files'
//! fingerprint differs from the one the running config was read with, and tries a rejected
//! set of files only once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use super::Inner;

/// How long changes are gathered before the files are read.
pub(super) const DEBOUNCE: Duration = Duration::from_millis(200);

/// Whether an inotify event may have changed a file. `notify` also reports opens and reads
/// (its inotify mask has `IN_OPEN` and `IN_CLOSE_NOWRITE`), and this thread's own reading of
/// the files is such an event: taken for a change, it would read the files again and again.
fn changes_files(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The loop of the `synwatch-files` thread.
pub(super) fn files_loop(inner: &Inner) {
    let (events, received) = std::sync::mpsc::channel::<()>();
    let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.as_ref().map_or(true, changes_files) {
            let _ = events.send(());
        }
    }) {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(%error, "cannot watch the target files with inotify; they are read every targets_files_refresh");
            None
        }
    };
    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    let mut last_read = Instant::now();
    let mut changed_at: Option<Instant> = None;
    let mut rejected: Option<u64> = None;
    loop {
        if inner.shutting_down() {
            return;
        }
        let config = Arc::clone(&inner.config.read());
        if let Some(watcher) = watcher.as_mut() {
            let wanted: BTreeSet<PathBuf> = config
                .target_file_patterns
                .iter()
                .filter_map(|pattern| pattern.parent().map(Path::to_path_buf))
                .collect();
            for gone in watched.difference(&wanted).cloned().collect::<Vec<_>>() {
                let _ = watcher.unwatch(&gone);
                watched.remove(&gone);
            }
            for directory in wanted.difference(&watched).cloned().collect::<Vec<_>>() {
                // A directory that does not exist yet is watched once it does (the periodic
                // read notices its files meanwhile).
                if watcher.watch(&directory, RecursiveMode::NonRecursive).is_ok() {
                    watched.insert(directory);
                    // A file written between the config's reading and this watch sent no
                    // event: the files are read once now.
                    changed_at.get_or_insert_with(Instant::now);
                }
            }
        }
        match received.recv_timeout(Duration::from_millis(100)) {
            Ok(()) => {
                while received.try_recv().is_ok() {}
                changed_at.get_or_insert_with(Instant::now);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => watcher = None,
        }
        if config.target_file_patterns.is_empty() {
            changed_at = None;
            continue;
        }
        let settled = changed_at.is_some_and(|at| at.elapsed() >= DEBOUNCE);
        if !settled && last_read.elapsed() < config.targets_files_refresh {
            continue;
        }
        changed_at = None;
        last_read = Instant::now();
        let now = crate::config::target_files_fingerprint(&config.target_file_patterns);
        if now == config.target_files_fingerprint || rejected == Some(now) {
            continue;
        }
        tracing::info!("the target files changed: reloading the config");
        match inner.reload() {
            Ok(_) => rejected = None,
            // Logged with its file, line and column by the reload.
            Err(_) => rejected = Some(now),
        }
    }
}
