//! The HTTP readings of the exposure history: `GET /api/v1/changes` and `GET /api/v1/endpoints`,
//! their parameters (checked: an unknown parameter, a bad time or port, or a bad cursor is a
//! 400 with the reason), and their answers in JSON or CSV (`Accept: text/csv` or
//! `format=csv`). `synwatch history` renders the same rows with [`change_csv_line`] and
//! [`change_json`].

use std::net::IpAddr;

use serde_json::{Value, json};
use synwatch_history::{
    Change, ChangeKind, ChangeQuery, ChangesPage, Endpoint, EndpointQuery, EndpointsPage, HistoryStore, Proto,
    parse_time, states,
};
use synwatch_http::site::{Body, HistoryRequest, HistoryResource, Refusal, RefusalKind, Reply};

use crate::query::query_pairs;

/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The most rows one page holds; a larger `limit` is cut to it (and the answer says so).
pub const MAX_LIMIT: usize = 1000;

/// How an answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON (the default).
    Json,
    /// CSV with a header line.
    Csv,
}

/// A checked reading: what to ask the store, how to answer, and the limit as asked when it was
/// cut.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// `/api/v1/changes`.
    Changes(ChangeQuery),
    /// `/api/v1/endpoints`.
    Endpoints(EndpointQuery),
}

/// A reading's parameters, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedReading {
    /// What to read.
    pub reading: Reading,
    /// How to answer.
    pub format: Format,
    /// The `limit` asked for, when it was over [`MAX_LIMIT`].
    pub limit_asked: Option<u64>,
}

fn time_parameter(name: &str, value: &str, now: f64) -> Result<f64, String> {
    parse_time(value, now).map_err(|reason| format!("{name}: {reason}"))
}

/// Reads `port=`: `22` or `tcp/22` (TCP), `udp/53`.
pub fn port_parameter(value: &str) -> Result<(Option<Proto>, u16), String> {
    let (proto, number) = match value.split_once('/') {
        Some((proto, number)) => {
            let proto = Proto::from_name(&proto.to_ascii_lowercase())
                .ok_or_else(|| format!("port={value:?}: the protocol is tcp or udp"))?;
            (Some(proto), number)
        }
        None => (None, value),
    };
    match number.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok((proto.or(Some(Proto::Tcp)), port)),
        _ => Err(format!("port={value:?}: expected a port from 1 to 65535, as 22, tcp/22 or udp/53")),
    }
}

/// Checks the parameters of a reading against `now` (seconds since the Unix epoch: the base of
/// `since=24h`).
pub fn parse_reading(request: &HistoryRequest, now: f64) -> Result<ParsedReading, String> {
    let mut format = if request.accepts_csv { Format::Csv } else { Format::Json };
    let mut limit = DEFAULT_LIMIT;
    let mut limit_asked = None;
    let mut changes = ChangeQuery::default();
    let mut endpoints = EndpointQuery::default();
    let is_changes = request.resource == HistoryResource::Changes;
    let mut seen = std::collections::BTreeSet::new();
    for (key, value) in query_pairs(&request.query) {
        if !seen.insert(key.clone()) {
            return Err(format!("{key} is given twice"));
        }
        match (key.as_str(), is_changes) {
            ("format", _) => {
                format = match value.as_str() {
                    "json" => Format::Json,
                    "csv" => Format::Csv,
                    other => return Err(format!("format={other:?}: expected json or csv")),
                }
            }
            ("limit", _) => match value.parse::<u64>() {
                Ok(0) | Err(_) => return Err(format!("limit={value:?}: expected a number of rows from 1")),
                Ok(asked) if asked > MAX_LIMIT as u64 => {
                    limit = MAX_LIMIT;
                    limit_asked = Some(asked);
                }
                Ok(asked) => limit = asked as usize,
            },
            ("target", _) if value.is_empty() => return Err("target= is empty".into()),
            ("target", true) => changes.target = Some(value),
            ("target", false) => endpoints.target = Some(value),
            ("since", true) => changes.since = Some(time_parameter("since", &value, now)?),
            ("until", true) => changes.until = Some(time_parameter("until", &value, now)?),
            ("ip", true) => {
                let address: IpAddr =
                    value.parse().map_err(|_| format!("ip={value:?}: expected an IPv4 or IPv6 address"))?;
                changes.ip = Some(address.to_canonical());
            }
            ("port", true) => changes.port = Some(port_parameter(&value)?),
            ("change", true) => {
                changes.kind = Some(match value.as_str() {
                    "opened" => ChangeKind::Opened,
                    "closed" => ChangeKind::Closed,
                    "other" => ChangeKind::Other,
                    other => return Err(format!("change={other:?}: expected opened, closed or other")),
                })
            }
            ("cursor", true) => {
                let id = value.parse::<i64>().ok().filter(|id| *id > 0);
                changes.before_id = Some(id.ok_or_else(|| format!("cursor={value:?} is not a cursor of this API"))?);
            }
            ("state", false) => {
                let state = states::named(&value).ok_or_else(|| {
                    format!("state={value:?}: expected open, suspect, unverified, closed, filtered, open|filtered or not_scanned")
                })?;
                endpoints.state = Some(state.to_string());
            }
            ("since_first_seen", false) => {
                endpoints.since_first_seen = Some(time_parameter("since_first_seen", &value, now)?)
            }
            ("cursor", false) => endpoints.after = Some(value),
            (other, true) => {
                return Err(format!(
                    "unknown parameter {other:?}; /api/v1/changes takes since, until, target, ip, port, change, limit, cursor and format"
                ));
            }
            (other, false) => {
                return Err(format!(
                    "unknown parameter {other:?}; /api/v1/endpoints takes target, state, since_first_seen, limit, cursor and format"
                ));
            }
        }
    }
    if let (Some(since), Some(until)) = (changes.since, changes.until)
        && since > until
    {
        return Err("since is later than until".into());
    }
    let reading = if is_changes {
        Reading::Changes(ChangeQuery { limit, ..changes })
    } else {
        Reading::Endpoints(EndpointQuery { limit, ..endpoints })
    };
    Ok(ParsedReading { reading, format, limit_asked })
}

/// An RFC 3339 time of seconds since the Unix epoch.
pub fn rfc3339(seconds: f64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(seconds.max(0.0));
    humantime::format_rfc3339_seconds(time).to_string()
}

/// One change as JSON.
pub fn change_json(change: &Change) -> Value {
    json!({
        "id": change.id,
        "time": rfc3339(change.time),
        "target": change.target,
        "ip": change.ip.to_string(),
        "proto": change.proto.name(),
        "port": change.port,
        "from": change.old_state,
        "to": change.new_state,
        "change": change.kind().name(),
        "reason": change.reason,
        "hostname": change.hostname,
        "scan": change.scan,
    })
}

/// The CSV header of changes.
pub const CHANGES_CSV_HEADER: &str = "id,time,target,ip,proto,port,from,to,change,reason,scan,hostname";

/// One change as a CSV line (no newline).
pub fn change_csv_line(change: &Change) -> String {
    [
        change.id.to_string(),
        rfc3339(change.time),
        csv_field(&change.target),
        change.ip.to_string(),
        change.proto.name().to_string(),
        change.port.to_string(),
        csv_field(&change.old_state),
        csv_field(&change.new_state),
        change.kind().name().to_string(),
        csv_field(change.reason.as_deref().unwrap_or("")),
        change.scan.to_string(),
        csv_field(change.hostname.as_deref().unwrap_or("")),
    ]
    .join(",")
}

/// When an endpoint has been open: its last change, if it is open now.
fn open_since(endpoint: &Endpoint) -> Option<f64> {
    states::is_open(&endpoint.state).then_some(endpoint.last_change)
}

/// One endpoint as JSON.
pub fn endpoint_json(endpoint: &Endpoint) -> Value {
    json!({
        "target": endpoint.target,
        "ip": endpoint.ip.to_string(),
        "proto": endpoint.proto.name(),
        "port": endpoint.port,
        "state": endpoint.state,
        "reason": endpoint.reason,
        "hostname": endpoint.hostname,
        "first_seen": rfc3339(endpoint.first_seen),
        "last_seen_open": rfc3339(endpoint.last_seen_open),
        "last_change": rfc3339(endpoint.last_change),
        "open_since": open_since(endpoint).map(rfc3339),
        "times_opened": endpoint.times_opened,
    })
}

/// The CSV header of endpoints.
pub const ENDPOINTS_CSV_HEADER: &str =
    "target,ip,proto,port,state,reason,first_seen,last_seen_open,last_change,open_since,times_opened,hostname";

/// One endpoint as a CSV line (no newline).
pub fn endpoint_csv_line(endpoint: &Endpoint) -> String {
    [
        csv_field(&endpoint.target),
        endpoint.ip.to_string(),
        endpoint.proto.name().to_string(),
        endpoint.port.to_string(),
        csv_field(&endpoint.state),
        csv_field(endpoint.reason.as_deref().unwrap_or("")),
        rfc3339(endpoint.first_seen),
        rfc3339(endpoint.last_seen_open),
        rfc3339(endpoint.last_change),
        open_since(endpoint).map(rfc3339).unwrap_or_default(),
        endpoint.times_opened.to_string(),
        csv_field(endpoint.hostname.as_deref().unwrap_or("")),
    ]
    .join(",")
}

/// A CSV field, quoted as RFC 4180 says when it holds a comma, a quote or a line break. Written
/// here rather than with the `csv` crate: the readings write a few known columns and this is
/// the whole of the rule.
pub fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// Answers a reading from `store`, the cursor of the next page beside it.
pub fn answer(store: &HistoryStore, parsed: &ParsedReading) -> (Reply, Option<String>) {
    let cut = parsed
        .limit_asked
        .map(|asked| format!("limit {asked} is over the most one page holds; {MAX_LIMIT} rows at most were returned"));
    let failed = |error: synwatch_history::HistoryError| {
        let kind = if matches!(error, synwatch_history::HistoryError::BadCursor(_)) {
            RefusalKind::BadRequest
        } else {
            tracing::error!(%error, "reading the exposure history failed");
            RefusalKind::Failed
        };
        (Reply::Refused(Refusal::new(kind, error.to_string())), None)
    };
    match &parsed.reading {
        Reading::Changes(query) => match store.changes(query) {
            Ok(ChangesPage { changes, next_cursor }) => {
                let next_cursor = next_cursor.map(|id| id.to_string());
                let body = match parsed.format {
                    Format::Csv => Body::Csv(csv_lines(CHANGES_CSV_HEADER, changes.iter().map(change_csv_line))),
                    Format::Json => Body::Json(json!({
                        "changes": changes.iter().map(change_json).collect::<Vec<_>>(),
                        "next_cursor": next_cursor,
                        "limit": query.limit,
                        "note": cut,
                    })),
                };
                (Reply::Done(body), next_cursor)
            }
            Err(error) => failed(error),
        },
        Reading::Endpoints(query) => match store.endpoints(query) {
            Ok(EndpointsPage { endpoints, next_cursor }) => {
                let body = match parsed.format {
                    Format::Csv => Body::Csv(csv_lines(ENDPOINTS_CSV_HEADER, endpoints.iter().map(endpoint_csv_line))),
                    Format::Json => Body::Json(json!({
                        "endpoints": endpoints.iter().map(endpoint_json).collect::<Vec<_>>(),
                        "next_cursor": next_cursor,
                        "limit": query.limit,
                        "note": cut,
                    })),
                };
                (Reply::Done(body), next_cursor)
            }
            Err(error) => failed(error),
        },
    }
}

fn csv_lines(header: &str, lines: impl Iterator<Item = String>) -> String {
    let mut text = String::from(header);
    text.push('\n');
    for line in lines {
        text += &line;
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(resource: HistoryResource, query: &str) -> HistoryRequest {
        HistoryRequest { resource, query: query.into(), accepts_csv: false }
    }

    #[test]
    fn change_parameters_are_checked_and_typed() {
        let now = 1_800_000_000.0;
        let parsed = parse_reading(
            &request(
                HistoryResource::Changes,
                "since=24h&target=web&ip=192.0.2.1&port=udp/53&change=opened&limit=5000",
            ),
            now,
        )
        .unwrap();
        let Reading::Changes(query) = parsed.reading else { panic!("not changes") };
        assert_eq!(query.since, Some(now - 86_400.0));
        assert_eq!(query.target.as_deref(), Some("web"));
        assert_eq!(query.port, Some((Some(Proto::Udp), 53)));
        assert_eq!(query.kind, Some(ChangeKind::Opened));
        assert_eq!((query.limit, parsed.limit_asked), (MAX_LIMIT, Some(5000)));
        assert_eq!(parsed.format, Format::Json);
        for (query, expected) in [
            ("since=yesterday", "since: \"yesterday\""),
            ("bogus=1", "unknown parameter \"bogus\""),
            ("port=70000", "port=\"70000\""),
            ("port=sctp/5", "tcp or udp"),
            ("change=maybe", "opened, closed or other"),
            ("limit=0", "limit=\"0\""),
            ("cursor=abc", "not a cursor"),
            ("ip=1.2.3", "IPv4 or IPv6"),
            ("since=1h&until=2h", "since is later than until"),
            ("target=a&target=b", "given twice"),
            ("state=open", "unknown parameter \"state\""),
        ] {
            let error = parse_reading(&request(HistoryResource::Changes, query), now).unwrap_err();
            assert!(error.contains(expected), "{query}: {error}");
        }
        let error = parse_reading(&request(HistoryResource::Endpoints, "state=ajar"), now).unwrap_err();
        assert!(error.contains("state=\"ajar\""), "{error}");
        let parsed =
            parse_reading(&request(HistoryResource::Endpoints, "state=open%7Cfiltered&format=csv"), now).unwrap();
        assert_eq!(parsed.format, Format::Csv);
        let Reading::Endpoints(query) = parsed.reading else { panic!("not endpoints") };
        assert_eq!(query.state.as_deref(), Some("open|filtered"));
    }

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field("web"), "web");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
