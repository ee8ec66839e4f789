//! The two readings of the history: changes (newest first, paged by change id) and endpoints
//! (in key order, paged by the last key), and a target's endpoints for reconciling. Every value
//! of a filter is bound to a numbered parameter, never written into the SQL text.

use std::collections::HashMap;
use std::net::IpAddr;

use rusqlite::OptionalExtension;

use crate::rows::{Change, ChangeKind, Endpoint, Proto, address_bytes, address_from, parse_endpoint_cursor, states};
use crate::store::{HistoryError, HistoryStore};

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

/// Per (ip, proto, port) of a target: its stored state and reason.
pub type EndpointStates = HashMap<(IpAddr, Proto, u16), (String, Option<String>)>;

impl HistoryStore {
    /// Changes matching `query`, newest first.
    pub fn changes(&self, query: &ChangeQuery) -> Result<ChangesPage, HistoryError> {
        self.changes_inner(query).map_err(|error| self.sqlite(error))
    }

    fn changes_inner(&self, query: &ChangeQuery) -> rusqlite::Result<ChangesPage> {
        let mut sql = String::from(
            "SELECT id, scan, time, target, ip, proto, port, old_state, new_state, reason, hostname FROM changes WHERE 1",
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
                    hostname: row.get(10)?,
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
            Some(cursor) => {
                let after = parse_endpoint_cursor(cursor).ok_or_else(|| HistoryError::BadCursor(cursor.clone()))?;
                if query.target.as_ref().is_some_and(|target| *target != after.0) {
                    return Err(HistoryError::BadCursor(cursor.clone()));
                }
                Some(after)
            }
            None => None,
        };
        self.endpoints_inner(query, after).map_err(|error| self.sqlite(error))
    }

    fn endpoints_inner(
        &self,
        query: &EndpointQuery,
        after: Option<(String, IpAddr, Proto, u16)>,
    ) -> rusqlite::Result<EndpointsPage> {
        // A target's endpoints in one state are read through their index, in key order: left
        // to itself, SQLite (without statistics) walks the target's every endpoint in primary
        // key order to skip the sort, which for a state no endpoint has reads them all.
        let index = if query.target.is_some() && query.state.is_some() { "INDEXED BY endpoints_by_state" } else { "" };
        let mut sql = format!(
            "SELECT target, ip, proto, port, state, reason, first_seen, last_seen_open, last_change, times_opened, hostname
             FROM endpoints {index} WHERE 1"
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
        if let Some((after_target, ip, proto, port)) = after {
            let ip = binder.bind(address_bytes(ip).to_vec());
            let (proto, port) = (binder.bind(proto.name().to_string()), binder.bind(i64::from(port)));
            if query.target.is_some() {
                // The target is fixed by the filter (a cursor of another target is refused
                // above): the comparison continues the index's equality prefix, so SQLite
                // seeks to the page instead of walking to it.
                sql += &format!(" AND (ip, proto, port) > ({ip}, {proto}, {port})");
            } else {
                let target = binder.bind(after_target);
                sql += &format!(" AND (target, ip, proto, port) > ({target}, {ip}, {proto}, {port})");
            }
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
                    hostname: row.get(10)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let next_cursor = if endpoints.len() > query.limit {
            endpoints.truncate(query.limit);
            endpoints.last().map(Endpoint::cursor)
        } else {
            None
        };
        // An endpoint open now was last seen open by its target's last scan that saw anything
        // (the writer does not touch an unchanged endpoint, see `store`).
        let mut sightings: HashMap<String, Option<f64>> = HashMap::new();
        for endpoint in &mut endpoints {
            if !states::is_open(&endpoint.state) {
                continue;
            }
            let sighting = match sightings.get(&endpoint.target) {
                Some(sighting) => *sighting,
                None => {
                    let sighting = self
                        .connection
                        .prepare_cached(
                            "SELECT ended FROM scans WHERE target = ?1 AND result != 'failure' ORDER BY id DESC LIMIT 1",
                        )?
                        .query_row([&endpoint.target], |row| row.get::<_, f64>(0))
                        .optional()?;
                    sightings.insert(endpoint.target.clone(), sighting);
                    sighting
                }
            };
            if let Some(sighting) = sighting {
                endpoint.last_seen_open = sighting;
            }
        }
        Ok(EndpointsPage { endpoints, next_cursor })
    }

    /// Every stored endpoint of `target` (those ever open) with its state and reason: what the
    /// history believes of the target now, for reconciling it with the served results.
    pub fn endpoints_of(&self, target: &str) -> Result<EndpointStates, HistoryError> {
        let read = || -> rusqlite::Result<_> {
            let mut statement = self
                .connection
                .prepare_cached("SELECT ip, proto, port, state, reason FROM endpoints WHERE target = ?1")?;
            let rows = statement.query_map([target], |row| {
                Ok((
                    (
                        address_from(&row.get::<_, Vec<u8>>(0)?),
                        Proto::from_name(&row.get::<_, String>(1)?).unwrap_or(Proto::Tcp),
                        row.get::<_, u16>(2)?,
                    ),
                    (row.get::<_, String>(3)?, row.get::<_, Option<String>>(4)?),
                ))
            })?;
            rows.collect::<rusqlite::Result<HashMap<_, _>>>()
        };
        read().map_err(|error| self.sqlite(error))
    }
}

/// The SQL of an `opened` change (as `/metrics` counts them).
const OPENED: &str = "new_state = 'open' AND old_state NOT IN ('open', 'suspect', 'unverified', 'not_scanned')";
/// The SQL of a `closed` change.
const CLOSED: &str = "old_state = 'open' AND new_state NOT IN ('open', 'suspect', 'unverified', 'not_scanned')";

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
