//! The store: opening (and setting aside what cannot be used), writing one scan in one
//! transaction, and pruning (the readings are in `query`).
//!
//! The database runs in WAL mode with `synchronous = NORMAL`: a commit is one append to the
//! log, a process killed at any moment (SIGKILL included) leaves a database that opens with
//! every committed scan and none of a half-written one, and readers (`synwatch history`, the
//! HTTP API on another connection) never block the writer. A power loss may lose the last
//! commits, never consistency.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};

use crate::rows::{ChangeRow, OpenEndpoint, ScanRow, address_bytes, states};
use crate::schema::{self, MIGRATIONS, MigrateError, SchemaProblem};

/// The database's file name under `state_dir`.
pub const HISTORY_FILE: &str = "history.sqlite";

/// What pruning removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Changes.
    pub changes: u64,
    /// Scans.
    pub scans: u64,
    /// Endpoints not open for longer than the retention.
    pub endpoints: u64,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// SQLite said no: a full disk, a read-only file, a lock held too long, ...
    #[error("{path}: {source}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file is not one this build can use and could not be set aside.
    #[error("{path}: {problem}; setting it aside failed: {error}")]
    Unusable {
        /// The database.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// Why it stayed.
        error: std::io::Error,
    },
    /// A read-only open of a database that does not exist or is not ours.
    #[error("{path}: {problem}")]
    NotReadable {
        /// The database.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A cursor that no page gave.
    #[error("bad cursor {0:?}")]
    BadCursor(String),
}

/// An opened store, and what had to be done to open it.
#[derive(Debug)]
pub struct Opened {
    /// The store.
    pub store: HistoryStore,
    /// A file that could not be used, renamed to this path, and why.
    pub set_aside: Option<(PathBuf, String)>,
    /// The schema version the file had (0: new).
    pub migrated_from: u32,
}

/// The history database.
#[derive(Debug)]
pub struct HistoryStore {
    pub(crate) connection: Connection,
    path: PathBuf,
}

impl HistoryStore {
    /// Opens (or creates) the database at `path` for writing, migrating it to the newest
    /// schema. A file that is not a SQLite database, is corrupt, is another program's or comes
    /// from a newer synwatch is renamed aside (with its `-wal` and `-shm`) as
    /// `<name>.corrupt-<unix time>` and a new database is created: never fatal.
    pub fn open(path: &Path) -> Result<Opened, HistoryError> {
        match Self::open_as_is(path) {
            Ok((store, migrated_from)) => Ok(Opened { store, set_aside: None, migrated_from }),
            Err(OpenError::Unusable(problem)) => {
                let aside = set_aside(path).map_err(|error| HistoryError::Unusable {
                    path: path.to_path_buf(),
                    problem: problem.clone(),
                    error,
                })?;
                let (store, migrated_from) = Self::open_as_is(path).map_err(|error| match error {
                    OpenError::Unusable(problem) => HistoryError::NotReadable { path: path.to_path_buf(), problem },
                    OpenError::Sqlite(source) => HistoryError::Sqlite { path: path.to_path_buf(), source },
                })?;
                Ok(Opened { store, set_aside: Some((aside, problem)), migrated_from })
            }
            Err(OpenError::Sqlite(source)) => Err(HistoryError::Sqlite { path: path.to_path_buf(), source }),
        }
    }

    fn open_as_is(path: &Path) -> Result<(HistoryStore, u32), OpenError> {
        let mut connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(5))?;
        // The first statement reads the header: a file that is not a database fails here.
        let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenError::Sqlite(rusqlite::Error::InvalidQuery));
        }
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        let migrated_from = match schema::migrate(&mut connection, MIGRATIONS.len() as u32) {
            Ok(version) => version,
            Err(MigrateError::Schema(problem)) => return Err(OpenError::Unusable(problem.to_string())),
            Err(MigrateError::Sqlite(error)) => return Err(error.into()),
        };
        Ok((HistoryStore { connection, path: path.to_path_buf() }, migrated_from))
    }

    /// Opens an existing database read-only (for `synwatch history` while `serve` writes it).
    pub fn open_read_only(path: &Path) -> Result<HistoryStore, HistoryError> {
        let sqlite = |source| HistoryError::Sqlite { path: path.to_path_buf(), source };
        if !path.exists() {
            return Err(HistoryError::NotReadable { path: path.to_path_buf(), problem: "no such file".into() });
        }
        let connection =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(sqlite)?;
        connection.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
        let application_id: i32 =
            connection.query_row("PRAGMA application_id", [], |row| row.get(0)).map_err(sqlite)?;
        if application_id != schema::APPLICATION_ID {
            let problem = SchemaProblem::Foreign(application_id).to_string();
            return Err(HistoryError::NotReadable { path: path.to_path_buf(), problem });
        }
        let version = schema::version(&connection).map_err(sqlite)?;
        if version > MIGRATIONS.len() as u32 {
            let problem = SchemaProblem::FromTheFuture { found: version, known: MIGRATIONS.len() as u32 }.to_string();
            return Err(HistoryError::NotReadable { path: path.to_path_buf(), problem });
        }
        Ok(HistoryStore { connection, path: path.to_path_buf() })
    }

    /// The database's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn sqlite(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError::Sqlite { path: self.path.clone(), source }
    }

    /// Writes one scan of `scan.target`: its row, its `changes` (at `scan.ended`) and the
    /// endpoints open at its end, in one transaction. Returns the scan's id.
    pub fn record_scan(
        &mut self,
        scan: &ScanRow,
        changes: &[ChangeRow],
        open_now: &[OpenEndpoint],
    ) -> Result<i64, HistoryError> {
        self.record_scan_inner(scan, changes, open_now).map_err(|error| self.sqlite(error))
    }

    fn record_scan_inner(
        &mut self,
        scan: &ScanRow,
        changes: &[ChangeRow],
        open_now: &[OpenEndpoint],
    ) -> rusqlite::Result<i64> {
        let transaction = self.connection.transaction()?;
        transaction.execute(
            "INSERT INTO scans (target, started, ended, result, open, closed, filtered, changes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                scan.target,
                scan.started,
                scan.ended,
                scan.result.name(),
                scan.open as i64,
                scan.closed as i64,
                scan.filtered as i64,
                changes.len() as i64
            ],
        )?;
        let scan_id = transaction.last_insert_rowid();
        {
            // The target's scan before this one that saw its endpoints (a failed one saw none):
            // the last time an endpoint that closes now was seen open.
            let previous_sighting: Option<f64> = transaction
                .query_row(
                    "SELECT ended FROM scans WHERE target = ?1 AND id < ?2 AND result != 'failure'
                     ORDER BY id DESC LIMIT 1",
                    params![scan.target, scan_id],
                    |row| row.get(0),
                )
                .optional()?;
            let mut insert_change = transaction.prepare_cached(
                "INSERT INTO changes (scan, time, target, ip, proto, port, old_state, new_state, reason, hostname)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            // A change into an open creates the endpoint or updates it; a change out of one
            // updates it and records when it was last seen open (or, for a history newer than
            // the endpoint, records it from now).
            let mut upsert_endpoint = transaction.prepare_cached(
                "INSERT INTO endpoints (target, ip, proto, port, state, reason, first_seen, last_seen_open, last_change, times_opened, hostname)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?9, ?7, ?8, ?11)
                 ON CONFLICT (target, ip, proto, port) DO UPDATE SET
                   state = excluded.state, reason = excluded.reason, last_change = excluded.last_change,
                   hostname = excluded.hostname,
                   times_opened = times_opened + excluded.times_opened,
                   last_seen_open = CASE WHEN ?10 THEN last_seen_open ELSE excluded.last_seen_open END",
            )?;
            for change in changes {
                let ip = address_bytes(change.ip);
                insert_change.execute(params![
                    scan_id,
                    scan.ended,
                    scan.target,
                    ip,
                    change.proto.name(),
                    change.port,
                    change.old_state,
                    change.new_state,
                    change.reason,
                    change.hostname
                ])?;
                let opened = i64::from(change.new_state == states::OPEN && !states::is_open(change.old_state));
                let now_open = states::is_open(change.new_state);
                let last_seen_open = if now_open { scan.ended } else { previous_sighting.unwrap_or(scan.ended) };
                upsert_endpoint.execute(params![
                    scan.target,
                    ip,
                    change.proto.name(),
                    change.port,
                    change.new_state,
                    change.reason,
                    scan.ended,
                    opened,
                    last_seen_open,
                    now_open,
                    change.hostname
                ])?;
            }
            // Every open at the end of the scan: first sightings are written (a first scan has
            // no changes); an endpoint already held in the same state is not written at all,
            // since an open endpoint's "last seen open" is its target's last scan (see
            // `query`), so a scan of a /16 with 40,000 opens and no change writes no row.
            let mut seen_open = transaction.prepare_cached(
                "INSERT INTO endpoints (target, ip, proto, port, state, reason, first_seen, last_seen_open, last_change, times_opened, hostname)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?7, ?8, ?9)
                 ON CONFLICT (target, ip, proto, port) DO UPDATE SET state = excluded.state, reason = excluded.reason,
                   hostname = excluded.hostname
                 WHERE state IS NOT excluded.state OR reason IS NOT excluded.reason OR hostname IS NOT excluded.hostname",
            )?;
            for endpoint in open_now {
                seen_open.execute(params![
                    scan.target,
                    address_bytes(endpoint.ip),
                    endpoint.proto.name(),
                    endpoint.port,
                    endpoint.state,
                    endpoint.reason,
                    scan.ended,
                    i64::from(endpoint.state == states::OPEN),
                    endpoint.hostname
                ])?;
            }
        }
        transaction.commit()?;
        Ok(scan_id)
    }

    /// Removes changes older than `retention` before `now` and, past that, the oldest beyond
    /// `max_changes`; scans older than the retention; endpoints not open whose last change is
    /// older than the retention. Open endpoints are never pruned.
    pub fn prune(&mut self, now: f64, retention: Duration, max_changes: u64) -> Result<Pruned, HistoryError> {
        self.prune_inner(now, retention, max_changes).map_err(|error| self.sqlite(error))
    }

    fn prune_inner(&mut self, now: f64, retention: Duration, max_changes: u64) -> rusqlite::Result<Pruned> {
        let cutoff = now - retention.as_secs_f64();
        let transaction = self.connection.transaction()?;
        let mut changes = transaction.execute("DELETE FROM changes WHERE time < ?1", [cutoff])? as u64;
        let beyond: Option<i64> = transaction
            .query_row("SELECT id FROM changes ORDER BY id DESC LIMIT 1 OFFSET ?1", [max_changes as i64], |row| {
                row.get(0)
            })
            .optional()?;
        if let Some(last_dropped) = beyond {
            changes += transaction.execute("DELETE FROM changes WHERE id <= ?1", [last_dropped])? as u64;
        }
        let scans = transaction.execute("DELETE FROM scans WHERE ended < ?1", [cutoff])? as u64;
        let endpoints = transaction.execute(
            "DELETE FROM endpoints WHERE state NOT IN ('open', 'suspect', 'unverified') AND last_change < ?1",
            [cutoff],
        )? as u64;
        transaction.commit()?;
        Ok(Pruned { changes, scans, endpoints })
    }

    /// The database's size on disk: its pages and its write-ahead log.
    pub fn size_bytes(&self) -> u64 {
        let file = |suffix: &str| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(suffix);
            std::fs::metadata(PathBuf::from(name)).map_or(0, |metadata| metadata.len())
        };
        file("") + file("-wal")
    }

    /// The number of stored changes.
    pub fn change_count(&self) -> Result<u64, HistoryError> {
        self.connection
            .query_row("SELECT COUNT(*) FROM changes", [], |row| row.get::<_, i64>(0))
            .map(|count| count as u64)
            .map_err(|error| self.sqlite(error))
    }
}

enum OpenError {
    /// Not ours, corrupt, or newer: to be set aside.
    Unusable(String),
    /// Anything else (permissions, a full disk): reported as it is.
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for OpenError {
    fn from(error: rusqlite::Error) -> OpenError {
        match error.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => OpenError::Unusable(error.to_string()),
            _ => OpenError::Sqlite(error),
        }
    }
}

/// Renames `path` (and its `-wal` and `-shm`) to `<path>.corrupt-<unix time>`; returns the new
/// path of the database.
fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let aside = with(&format!(".corrupt-{seconds}"));
    std::fs::rename(path, &aside)?;
    for suffix in ["-wal", "-shm"] {
        let companion = with(suffix);
        if companion.exists() {
            let mut name = aside.as_os_str().to_owned();
            name.push(suffix);
            std::fs::rename(&companion, PathBuf::from(name))?;
        }
    }
    Ok(aside)
}
