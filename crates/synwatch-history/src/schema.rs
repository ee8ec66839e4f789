//! The database's schema and its versioned migrations.
//!
//! A synwatch history database carries SQLite's `application_id` [`APPLICATION_ID`] and a
//! `schema_version` table with one row per migration applied. [`migrate`] applies the missing
//! migrations of [`MIGRATIONS`] in order, each in its own transaction with its row, so a crash
//! in the middle leaves the database at the previous version. A database whose version is
//! newer than this build knows is refused ([`SchemaProblem::FromTheFuture`]) rather than
//! written: an older synwatch must not damage a newer one's history.
//!
//! What is stored, and why only that:
//!
//! * `scans`: one row per completed or failed scan of a target (start, end, result, counts).
//! * `changes`: one row per (target, ip, proto, port) whose state went into or out of `open`
//!   (suspect and unverified opens included), with the states on both sides. Changes between
//!   closed, filtered and open|filtered of a port that stays not open are not stored: a /16 ×
//!   1,000 ports behind a flapping firewall would write millions of rows a scan that answer no
//!   exposure question.
//! * `endpoints`: one row per (target, ip, proto, port) that was ever open: first seen, last
//!   seen open, last change, how many times it opened, and its state now. Endpoints never seen
//!   open have no row (65 M rows for a /16 × 1,000 ports, for nothing).
//!
//! Addresses are stored as 16 bytes (IPv4 as IPv4-mapped IPv6), so that they sort by number.
//! A change and an endpoint of a target given by name carry the name its address came from
//! (`hostname`, from version 3; none for addresses written as such).

use rusqlite::{Connection, OptionalExtension};

/// SQLite's `application_id` of a synwatch history database ("SWHS").
pub const APPLICATION_ID: i32 = 0x5357_4853;

/// The migrations, in order: migration `n` (from 1) takes the schema from version `n - 1` to
/// `n`. Never edit one that shipped; add the next.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE scans (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL NOT NULL,
        result TEXT NOT NULL,
        open INTEGER NOT NULL,
        closed INTEGER NOT NULL,
        filtered INTEGER NOT NULL,
        changes INTEGER NOT NULL
    );
    CREATE INDEX scans_by_target ON scans (target, id);
    CREATE TABLE changes (
        id INTEGER PRIMARY KEY,
        scan INTEGER NOT NULL REFERENCES scans (id),
        time REAL NOT NULL,
        target TEXT NOT NULL,
        ip BLOB NOT NULL,
        proto TEXT NOT NULL,
        port INTEGER NOT NULL,
        old_state TEXT NOT NULL,
        new_state TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX changes_by_target ON changes (target, id);
    CREATE INDEX changes_by_ip ON changes (ip, id);
    CREATE INDEX changes_by_time ON changes (time);
    CREATE TABLE endpoints (
        target TEXT NOT NULL,
        ip BLOB NOT NULL,
        proto TEXT NOT NULL,
        port INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        first_seen REAL NOT NULL,
        last_seen_open REAL NOT NULL,
        last_change REAL NOT NULL,
        times_opened INTEGER NOT NULL,
        PRIMARY KEY (target, ip, proto, port)
    ) WITHOUT ROWID;
    CREATE INDEX endpoints_by_first_seen ON endpoints (first_seen);",
    // 2: a target's endpoints in one state, in key order (a WITHOUT ROWID table's index keys
    // end with the primary key), for `state=` readings and their pages; without it a /16's
    // open inventory read every endpoint the target ever had.
    "CREATE INDEX endpoints_by_state ON endpoints (target, state);",
    // 3: the host name an address came from (targets given by DNS name), beside the address.
    "ALTER TABLE changes ADD COLUMN hostname TEXT;
     ALTER TABLE endpoints ADD COLUMN hostname TEXT;",
];

/// Why a database is not taken as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaProblem {
    /// Another program's SQLite database (its `application_id`).
    #[error("not a synwatch history database (application_id {0:#x})")]
    Foreign(i32),
    /// A version newer than this build's.
    #[error("schema version {found} is newer than this synwatch's {known}")]
    FromTheFuture {
        /// In the file.
        found: u32,
        /// The newest this build knows.
        known: u32,
    },
}

/// The schema version of `connection` (0: an empty database).
pub fn version(connection: &Connection) -> rusqlite::Result<u32> {
    let table: Option<String> = connection
        .query_row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'", [], |row| {
            row.get(0)
        })
        .optional()?;
    if table.is_none() {
        return Ok(0);
    }
    connection.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |row| row.get(0))
}

/// Checks that `connection` is a synwatch history database (or an empty one) this build can
/// write, and applies the missing migrations up to `target` (the newest: `MIGRATIONS.len()`).
/// Returns the version it was at.
pub fn migrate(connection: &mut Connection, target: u32) -> Result<u32, MigrateError> {
    let application_id: i32 = connection.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    let tables: u32 = connection.query_row("SELECT COUNT(*) FROM sqlite_master", [], |row| row.get(0))?;
    if application_id != APPLICATION_ID && (application_id != 0 || tables > 0) {
        return Err(MigrateError::Schema(SchemaProblem::Foreign(application_id)));
    }
    let found = version(connection)?;
    let known = MIGRATIONS.len() as u32;
    if found > known {
        return Err(MigrateError::Schema(SchemaProblem::FromTheFuture { found, known }));
    }
    if found == 0 {
        connection.pragma_update(None, "application_id", APPLICATION_ID)?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied REAL NOT NULL)",
        )?;
    }
    for next in found + 1..=target.min(known) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(MIGRATIONS[next as usize - 1])?;
        transaction
            .execute("INSERT INTO schema_version (version, applied) VALUES (?1, unixepoch('subsec'))", [next])?;
        transaction.commit()?;
    }
    Ok(found)
}

/// Why [`migrate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The file is not ours, or newer.
    #[error("{0}")]
    Schema(SchemaProblem),
    /// SQLite said no (a corrupt file, a full disk, ...).
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
}
