//! The store: opening (and setting aside what cannot be used), writing one scan in one
//! transaction, pruning, and the two queries.
//!
//! The database runs in WAL mode with `synchronous = NORMAL`: a commit is one append to the
//! log, a process killed at any moment (SIGKILL included) leaves a database that opens with
//! every committed scan and none of a half-written one, and readers (`synwatch history`, the
//! HTTP API on another connection) never block the writer. A power loss may lose the last
//! commits, never consistency.

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};

use crate::schema::{self, MIGRATIONS, MigrateError, SchemaProblem};

/// The database's file name under `state_dir`.
pub const HISTORY_FILE: &str = "history.sqlite";

/// A port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn from_name(name: &str) -> Option<Proto> {
        match name {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// The state names an endpoint can have in the history; the first three are opens.
pub mod states {
    /// Open, trusted.
    pub const OPEN: &str = "open";
    /// Open, but its host was judged suspect (a SYN proxy, every port open); `reason` says why.
    pub const SUSPECT: &str = "suspect";
    /// Open, but the verifying handshake failed; `reason` has the verdict.
    pub const UNVERIFIED: &str = "unverified";
    /// Closed.
    pub const CLOSED: &str = "closed";
    /// Filtered.
    pub const FILTERED: &str = "filtered";
    /// UDP, no answer.
    pub const OPEN_FILTERED: &str = "open|filtered";

    /// Whether `state` is one of the opens (trusted or not).
    pub fn is_open(state: &str) -> bool {
        matches!(state, OPEN | SUSPECT | UNVERIFIED)
    }
}

/// One scan as it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanRow {
    /// The target's name.
    pub target: String,
    /// Start, in seconds since the Unix epoch.
    pub started: f64,
    /// End, in seconds since the Unix epoch; the time of its changes.
    pub ended: f64,
    /// Whether it completed.
    pub success: bool,
    /// Probes open (trusted), closed and filtered (the rest) at its end.
    pub open: u64,
    /// Closed.
    pub closed: u64,
    /// Filtered and open|filtered.
    pub filtered: u64,
}

/// One change as it is written: an endpoint of the scan's target whose state went into or out
/// of an open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    /// The address.
    pub ip: IpAddr,
    /// The protocol.
    pub proto: Proto,
    /// The port.
    pub port: u16,
    /// The state before ([`states`]).
    pub old_state: &'static str,
    /// The state now.
    pub new_state: &'static str,
    /// Why the new state is suspect or unverified (the suspect reason, the verdict).
    pub reason: Option<String>,
}

/// An endpoint open (trusted or not) at the end of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenEndpoint {
    /// The address.
    pub ip: IpAddr,
    /// The protocol.
    pub proto: Proto,
    /// The port.
    pub port: u16,
    /// [`states::OPEN`], [`states::SUSPECT`] or [`states::UNVERIFIED`].
    pub state: &'static str,
    /// Why, for the last two.
    pub reason: Option<String>,
}

/// A stored change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Its id: increasing, the paging cursor.
    pub id: i64,
    /// The scan it came from.
    pub scan: i64,
    /// When (the scan's end), in seconds since the Unix epoch.
    pub time: f64,
    /// The target.
    pub target: String,
    /// The address.
    pub ip: IpAddr,
    /// The protocol.
    pub proto: Proto,
    /// The port.
    pub port: u16,
    /// The state before.
    pub old_state: String,
    /// The state after.
    pub new_state: String,
    /// The suspect reason or verification verdict of the new state.
    pub reason: Option<String>,
}

impl Change {
    /// What kind of change it is.
    pub fn kind(&self) -> ChangeKind {
        ChangeKind::of(&self.old_state, &self.new_state)
    }
}

/// What a change did, as the `opened` and `closed` changes of `/metrics` count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Now open (trusted), not before.
    Opened,
    /// Open (trusted) before, now closed, filtered or open|filtered.
    Closed,
    /// Between a trusted and an untrusted open, or between untrusted opens and not open.
    Other,
}

impl ChangeKind {
    /// The kind of a change from `old` to `new`.
    pub fn of(old: &str, new: &str) -> ChangeKind {
        match (old == states::OPEN, new == states::OPEN) {
            (false, true) => ChangeKind::Opened,
            (true, false) if !states::is_open(new) => ChangeKind::Closed,
            _ => ChangeKind::Other,
        }
    }

    /// `opened`, `closed` or `other`.
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Opened => "opened",
            ChangeKind::Closed => "closed",
            ChangeKind::Other => "other",
        }
    }
}

/// A stored endpoint: one that was ever open.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The target.
    pub target: String,
    /// The address.
    pub ip: IpAddr,
    /// The protocol.
    pub proto: Proto,
    /// The port.
    pub port: u16,
    /// Its state now.
    pub state: String,
    /// The suspect reason or verdict of its state.
    pub reason: Option<String>,
    /// When it was first seen open.
    pub first_seen: f64,
    /// When it was last seen open (trusted).
    pub last_seen_open: f64,
    /// Its last change (or its first sighting).
    pub last_change: f64,
    /// How many times it was seen opening (its first sighting included).
    pub times_opened: u64,
}

impl Endpoint {
    /// The paging cursor that continues after this endpoint.
    pub fn cursor(&self) -> String {
        format!("{}/{}/{}/{}", hex(self.target.as_bytes()), self.ip, self.proto.name(), self.port)
    }
}

/// Which changes to read, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeQuery {
    /// At or after (seconds since the Unix epoch).
    pub since: Option<f64>,
    /// At or before.
    pub until: Option<f64>,
    /// Of this target.
    pub target: Option<String>,
    /// Of this address.
    pub ip: Option<IpAddr>,
    /// Of this port (and protocol, when given).
    pub port: Option<(Option<Proto>, u16)>,
    /// Of this kind.
    pub kind: Option<ChangeKind>,
    /// At most this many.
    pub limit: usize,
    /// Older than the change with this id (the previous page's `next_cursor`).
    pub before_id: Option<i64>,
}

/// A page of changes.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangesPage {
    /// Newest first.
    pub changes: Vec<Change>,
    /// The cursor of the next (older) page, when there may be one.
    pub next_cursor: Option<i64>,
}

/// Which endpoints to read, in (target, ip, proto, port) order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointQuery {
    /// Of this target.
    pub target: Option<String>,
    /// In this state (`open`: trusted opens).
    pub state: Option<String>,
    /// First seen at or after.
    pub since_first_seen: Option<f64>,
    /// At most this many.
    pub limit: usize,
    /// After the endpoint of this cursor ([`Endpoint::cursor`]).
    pub after: Option<String>,
}

/// A page of endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointsPage {
    /// In order.
    pub endpoints: Vec<Endpoint>,
    /// The cursor of the next page, when there may be one.
    pub next_cursor: Option<String>,
}

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
    connection: Connection,
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

    fn sqlite(&self, source: rusqlite::Error) -> HistoryError {
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
            "INSERT INTO scans (target, started, ended, success, open, closed, filtered, changes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                scan.target,
                scan.started,
                scan.ended,
                scan.success,
                scan.open as i64,
                scan.closed as i64,
                scan.filtered as i64,
                changes.len() as i64
            ],
        )?;
        let scan_id = transaction.last_insert_rowid();
        {
            let mut insert_change = transaction.prepare_cached(
                "INSERT INTO changes (scan, time, target, ip, proto, port, old_state, new_state, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            // A change into an open creates the endpoint or updates it; a change out of one
            // updates it (or, for a history newer than the endpoint, records it from now).
            let mut upsert_endpoint = transaction.prepare_cached(
                "INSERT INTO endpoints (target, ip, proto, port, state, reason, first_seen, last_seen_open, last_change, times_opened)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?7, ?8)
                 ON CONFLICT (target, ip, proto, port) DO UPDATE SET
                   state = excluded.state, reason = excluded.reason, last_change = excluded.last_change,
                   times_opened = times_opened + excluded.times_opened",
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
                    change.reason
                ])?;
                let opened = i64::from(change.new_state == states::OPEN);
                upsert_endpoint.execute(params![
                    scan.target,
                    ip,
                    change.proto.name(),
                    change.port,
                    change.new_state,
                    change.reason,
                    scan.ended,
                    opened
                ])?;
            }
            // Every open at the end of the scan: first sightings (a first scan has no changes),
            // and the last time each was seen open.
            let mut seen_open = transaction.prepare_cached(
                "INSERT INTO endpoints (target, ip, proto, port, state, reason, first_seen, last_seen_open, last_change, times_opened)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?7, ?8)
                 ON CONFLICT (target, ip, proto, port) DO UPDATE SET
                   state = excluded.state, reason = excluded.reason,
                   last_seen_open = CASE WHEN excluded.state = 'open' THEN excluded.last_seen_open ELSE last_seen_open END",
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
                    i64::from(endpoint.state == states::OPEN)
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

    /// Changes matching `query`, newest first.
    pub fn changes(&self, query: &ChangeQuery) -> Result<ChangesPage, HistoryError> {
        self.changes_inner(query).map_err(|error| self.sqlite(error))
    }

    fn changes_inner(&self, query: &ChangeQuery) -> rusqlite::Result<ChangesPage> {
        let mut sql = String::from(
            "SELECT id, scan, time, target, ip, proto, port, old_state, new_state, reason FROM changes WHERE 1",
        );
        let mut binder = Binder::default();
        if let Some(since) = query.since {
            sql += &format!(" AND time >= {}", binder.bind(since));
        }
        if let Some(until) = query.until {
            sql += &format!(" AND time <= {}", binder.bind(until));
        }
        if let Some(target) = &query.target {
            sql += &format!(" AND target = {}", binder.bind(target.clone()));
        }
        if let Some(ip) = query.ip {
            sql += &format!(" AND ip = {}", binder.bind(address_bytes(ip).to_vec()));
        }
        if let Some((proto, port)) = query.port {
            sql += &format!(" AND port = {}", binder.bind(i64::from(port)));
            if let Some(proto) = proto {
                sql += &format!(" AND proto = {}", binder.bind(proto.name().to_string()));
            }
        }
        match query.kind {
            Some(ChangeKind::Opened) => sql += &format!(" AND {OPENED}"),
            Some(ChangeKind::Closed) => sql += &format!(" AND {CLOSED}"),
            Some(ChangeKind::Other) => sql += &format!(" AND NOT ({OPENED}) AND NOT ({CLOSED})"),
            None => {}
        }
        if let Some(before) = query.before_id {
            sql += &format!(" AND id < {}", binder.bind(before));
        }
        // One more than asked: whether there is a next page.
        sql += &format!(" ORDER BY id DESC LIMIT {}", binder.bind(query.limit as i64 + 1));
        let mut statement = self.connection.prepare(&sql)?;
        let mut changes = statement
            .query_map(rusqlite::params_from_iter(binder.values), |row| {
                Ok(Change {
                    id: row.get(0)?,
                    scan: row.get(1)?,
                    time: row.get(2)?,
                    target: row.get(3)?,
                    ip: address_from(&row.get::<_, Vec<u8>>(4)?),
                    proto: Proto::from_name(&row.get::<_, String>(5)?).unwrap_or(Proto::Tcp),
                    port: row.get(6)?,
                    old_state: row.get(7)?,
                    new_state: row.get(8)?,
                    reason: row.get(9)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let next_cursor = if changes.len() > query.limit {
            changes.truncate(query.limit);
            changes.last().map(|change| change.id)
        } else {
            None
        };
        Ok(ChangesPage { changes, next_cursor })
    }

    /// Endpoints matching `query`, in (target, ip, proto, port) order.
    pub fn endpoints(&self, query: &EndpointQuery) -> Result<EndpointsPage, HistoryError> {
        let after = match &query.after {
            Some(cursor) => Some(parse_endpoint_cursor(cursor).ok_or_else(|| HistoryError::BadCursor(cursor.clone()))?),
            None => None,
        };
        self.endpoints_inner(query, after).map_err(|error| self.sqlite(error))
    }

    fn endpoints_inner(
        &self,
        query: &EndpointQuery,
        after: Option<(String, IpAddr, Proto, u16)>,
    ) -> rusqlite::Result<EndpointsPage> {
        let mut sql = String::from(
            "SELECT target, ip, proto, port, state, reason, first_seen, last_seen_open, last_change, times_opened
             FROM endpoints WHERE 1",
        );
        let mut binder = Binder::default();
        if let Some(target) = &query.target {
            sql += &format!(" AND target = {}", binder.bind(target.clone()));
        }
        if let Some(state) = &query.state {
            sql += &format!(" AND state = {}", binder.bind(state.clone()));
        }
        if let Some(since) = query.since_first_seen {
            sql += &format!(" AND first_seen >= {}", binder.bind(since));
        }
        if let Some((target, ip, proto, port)) = after {
            let (target, ip) = (binder.bind(target), binder.bind(address_bytes(ip).to_vec()));
            let (proto, port) = (binder.bind(proto.name().to_string()), binder.bind(i64::from(port)));
            sql += &format!(" AND (target, ip, proto, port) > ({target}, {ip}, {proto}, {port})");
        }
        sql += &format!(" ORDER BY target, ip, proto, port LIMIT {}", binder.bind(query.limit as i64 + 1));
        let mut statement = self.connection.prepare(&sql)?;
        let mut endpoints = statement
            .query_map(rusqlite::params_from_iter(binder.values), |row| {
                Ok(Endpoint {
                    target: row.get(0)?,
                    ip: address_from(&row.get::<_, Vec<u8>>(1)?),
                    proto: Proto::from_name(&row.get::<_, String>(2)?).unwrap_or(Proto::Tcp),
                    port: row.get(3)?,
                    state: row.get(4)?,
                    reason: row.get(5)?,
                    first_seen: row.get(6)?,
                    last_seen_open: row.get(7)?,
                    last_change: row.get(8)?,
                    times_opened: row.get::<_, i64>(9)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let next_cursor = if endpoints.len() > query.limit {
            endpoints.truncate(query.limit);
            endpoints.last().map(Endpoint::cursor)
        } else {
            None
        };
        Ok(EndpointsPage { endpoints, next_cursor })
    }
}

/// The SQL of an `opened` change (as `/metrics` counts them).
const OPENED: &str = "new_state = 'open' AND old_state != 'open'";
/// The SQL of a `closed` change.
const CLOSED: &str = "old_state = 'open' AND new_state NOT IN ('open', 'suspect', 'unverified')";

/// Values bound to a query's numbered parameters: every value is bound, none is written into
/// the SQL text.
#[derive(Default)]
struct Binder {
    values: Vec<rusqlite::types::Value>,
}

impl Binder {
    /// Binds `value` and returns its placeholder (`?N`).
    fn bind(&mut self, value: impl Into<rusqlite::types::Value>) -> String {
        self.values.push(value.into());
        format!("?{}", self.values.len())
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

/// An address as 16 bytes: IPv4 as IPv4-mapped IPv6, so that addresses sort by number.
fn address_bytes(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn address_from(bytes: &[u8]) -> IpAddr {
    let octets: [u8; 16] = bytes.try_into().unwrap_or([0; 16]);
    let v6 = Ipv6Addr::from(octets);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Reads an [`Endpoint::cursor`].
fn parse_endpoint_cursor(cursor: &str) -> Option<(String, IpAddr, Proto, u16)> {
    let mut parts = cursor.split('/');
    let target_hex = parts.next()?;
    if target_hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..target_hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(target_hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let target = String::from_utf8(bytes).ok()?;
    let ip = parts.next()?.parse().ok()?;
    let proto = Proto::from_name(parts.next()?)?;
    let port = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((target, ip, proto, port))
}
