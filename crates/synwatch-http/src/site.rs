//! What the server asks of the site it serves, in the site's own terms: the [`Site`] trait and
//! the typed vocabulary of the on-demand routes. No hyper type and no status code appears in
//! the vocabulary; this crate alone routes a method and path to an [`Operation`]
//! ([`route_ondemand`]) and maps a [`Reply`] to a status and headers ([`Reply::status`]).
//!
//! The exporter answers in this vocabulary (it depends on this module's types only), so the
//! binary wires the two without copying a request or an answer field by field.

use std::net::IpAddr;

use bytes::Bytes;

use crate::connections::DropReason;

/// What the server serves.
pub trait Site: Send + Sync + 'static {
    /// The status page at `/` (called on the blocking pool): `query` is its raw query string;
    /// the answer is HTML, or a refusal (an unknown target, a bad parameter).
    fn status_page(&self, query: &str) -> Reply;
    /// The `/metrics` body and its Content-Type.
    fn metrics(&self) -> (Vec<u8>, &'static str);
    /// `Ok` when ready to serve meaningful metrics, else the reason.
    fn ready(&self) -> Result<(), String>;
    /// Reloads the configuration: `Ok` with a summary, or the rejection.
    fn reload(&self) -> Result<String, String>;
    /// Answers `/probe` and `/api/v1/scans...` (called on the blocking pool; may wait for a
    /// scan). The default: they are disabled.
    fn ondemand(&self, _request: OnDemandRequest) -> Reply {
        Reply::Refused(Refusal::new(RefusalKind::Disabled, "on-demand scans are not served here"))
    }
    /// An on-demand request that starts or stops work was refused before reaching
    /// [`Site::ondemand`], for this reason (authentication).
    fn ondemand_refused(&self, _operation: &Operation, _kind: RefusalKind) {}
    /// One request was answered.
    fn observe(&self, _route: &'static str, _status: u16, _seconds: f64) {}
    /// A connection was shed or refused, or its request head was too large.
    fn connection_dropped(&self, _reason: DropReason) {}
    /// `GET /sd?query`: Prometheus HTTP service discovery, the JSON body or why the query is
    /// bad (called on the blocking pool). The default: it does not exist.
    fn service_discovery(&self, _query: &str) -> Option<Result<Vec<u8>, String>> {
        None
    }
    /// `GET /api/v1/changes` and `GET /api/v1/endpoints`: readings of the exposure history
    /// (called on the blocking pool), with the cursor of the next page when there is one. The
    /// default: there is no history here.
    fn history(&self, _request: HistoryRequest) -> (Reply, Option<String>) {
        (Reply::Refused(Refusal::new(RefusalKind::Disabled, "no exposure history is served here")), None)
    }
}

/// Which reading of the exposure history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryResource {
    /// `/api/v1/changes`.
    Changes,
    /// `/api/v1/endpoints`.
    Endpoints,
}

impl HistoryResource {
    /// The resource of a path, if it is one.
    pub fn of_path(path: &str) -> Option<HistoryResource> {
        match path {
            "/api/v1/changes" => Some(HistoryResource::Changes),
            "/api/v1/endpoints" => Some(HistoryResource::Endpoints),
            _ => None,
        }
    }
}

/// A reading of the exposure history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRequest {
    /// What is read.
    pub resource: HistoryResource,
    /// The raw query string (percent-encoded), empty when none.
    pub query: String,
    /// Whether the `Accept` header asks for CSV (`text/csv`) rather than JSON.
    pub accepts_csv: bool,
}

/// An on-demand operation, as routed from the method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `GET /probe`.
    Probe,
    /// `POST /api/v1/scans`.
    SubmitScan,
    /// `GET /api/v1/scans`.
    ListScans,
    /// `GET /api/v1/scans/{id}`.
    ScanStatus {
        /// The scan's id as written in the path.
        id: String,
    },
    /// `POST /api/v1/scans/{id}/cancel`.
    CancelScan {
        /// The scan's id as written in the path.
        id: String,
    },
}

impl Operation {
    /// Whether the operation starts or stops work: those are rate limited and counted in the
    /// request outcomes; reads of the scans API are not.
    pub fn starts_or_stops_work(&self) -> bool {
        matches!(self, Operation::Probe | Operation::SubmitScan | Operation::CancelScan { .. })
    }
}

/// An on-demand request: the operation and what the site needs of the request.
#[derive(Debug, Clone)]
pub struct OnDemandRequest {
    /// What is asked.
    pub operation: Operation,
    /// The raw query string (percent-encoded), empty when none.
    pub query: String,
    /// The direct peer.
    pub peer: IpAddr,
    /// Every `X-Forwarded-For` header value, in order.
    pub forwarded_for: Vec<String>,
    /// `X-Prometheus-Scrape-Timeout-Seconds`, when sent.
    pub scrape_timeout: Option<String>,
    /// The request body (at most [`crate::MAX_BODY_BYTES`]).
    pub body: Bytes,
}

/// Why the router found no operation for a method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoOperation {
    /// No such route.
    NotFound,
    /// The route exists; these methods are allowed on it.
    WrongMethod {
        /// The `Allow` header.
        allow: &'static str,
    },
}

/// Routes a method and path of the on-demand routes (`/probe`, `/api/v1/scans...`).
pub fn route_ondemand(method: &str, path: &str) -> Result<Operation, NoOperation> {
    let read = matches!(method, "GET" | "HEAD");
    let post = method == "POST";
    let wrong = |allow| Err(NoOperation::WrongMethod { allow });
    match path {
        "/probe" if read => Ok(Operation::Probe),
        "/probe" => wrong("GET, HEAD"),
        "/api/v1/scans" if post => Ok(Operation::SubmitScan),
        "/api/v1/scans" if read => Ok(Operation::ListScans),
        "/api/v1/scans" => wrong("GET, HEAD, POST"),
        _ => {
            let Some(rest) = path.strip_prefix("/api/v1/scans/").filter(|rest| !rest.is_empty()) else {
                return Err(NoOperation::NotFound);
            };
            match rest.strip_suffix("/cancel") {
                Some(id) if post => Ok(Operation::CancelScan { id: id.to_string() }),
                Some(_) => wrong("POST"),
                None if read => Ok(Operation::ScanStatus { id: rest.to_string() }),
                None => wrong("GET, HEAD"),
            }
        }
    }
}

/// The site's answer to an on-demand request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The operation was done (200), with this body.
    Done(Body),
    /// The operation was accepted and goes on in the background (202).
    Accepted(Body),
    /// The request was refused.
    Refused(Refusal),
}

/// A body and what it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Plain text.
    Text(String),
    /// JSON.
    Json(serde_json::Value),
    /// Prometheus text exposition (`/probe`).
    Metrics(String),
    /// CSV with a header line (the exposure history's readings).
    Csv(String),
    /// An HTML page (the status page).
    Html(String),
}

impl Body {
    /// The Content-Type of the body.
    pub fn content_type(&self) -> &'static str {
        match self {
            Body::Text(_) => "text/plain; charset=utf-8",
            Body::Json(_) => "application/json",
            Body::Metrics(_) => "text/plain; version=0.0.4; charset=utf-8",
            Body::Csv(_) => "text/csv; charset=utf-8",
            Body::Html(_) => "text/html; charset=utf-8",
        }
    }

    /// The body's bytes (JSON pretty-printed, text ending in a newline).
    pub fn into_bytes(self) -> Vec<u8> {
        let mut bytes = match self {
            Body::Text(text) | Body::Metrics(text) | Body::Csv(text) | Body::Html(text) => text.into_bytes(),
            Body::Json(value) => serde_json::to_vec_pretty(&value).unwrap_or_default(),
        };
        if bytes.last() != Some(&b'\n') {
            bytes.push(b'\n');
        }
        bytes
    }
}

/// A refusal: its kind, the one-line reason, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why, as a kind.
    pub kind: RefusalKind,
    /// Why, for a person.
    pub reason: String,
    /// Seconds after which a retry may succeed.
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// A refusal without a retry time.
    pub fn new(kind: RefusalKind, reason: impl Into<String>) -> Refusal {
        Refusal { kind, reason: reason.into(), retry_after: None }
    }

    /// The same, retryable after `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Refusal {
        self.retry_after = Some(seconds);
        self
    }
}

/// The kinds of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// On-demand scans are disabled (404).
    Disabled,
    /// No such scan (404).
    NotFound,
    /// Bad parameters or body (400).
    BadRequest,
    /// More probes than allowed per request (400).
    TooLarge,
    /// No or wrong credentials (401).
    Unauthorized,
    /// The client or a target is not allowed (403).
    Forbidden,
    /// Over the request rate limit (429).
    RateLimited,
    /// Too many on-demand scans running (429).
    Concurrency,
    /// The scan could not start (500).
    Failed,
}

impl RefusalKind {
    /// The HTTP status of the refusal.
    pub fn status(self) -> u16 {
        match self {
            RefusalKind::Disabled | RefusalKind::NotFound => 404,
            RefusalKind::BadRequest | RefusalKind::TooLarge => 400,
            RefusalKind::Unauthorized => 401,
            RefusalKind::Forbidden => 403,
            RefusalKind::RateLimited | RefusalKind::Concurrency => 429,
            RefusalKind::Failed => 500,
        }
    }
}

impl Reply {
    /// The HTTP status of the reply.
    pub fn status(&self) -> u16 {
        match self {
            Reply::Done(_) => 200,
            Reply::Accepted(_) => 202,
            Reply::Refused(refusal) => refusal.kind.status(),
        }
    }

    /// Status, Content-Type, `Retry-After` and body: everything the server sends.
    pub fn into_parts(self) -> (u16, &'static str, Option<u64>, Vec<u8>) {
        let status = self.status();
        match self {
            Reply::Done(body) | Reply::Accepted(body) => (status, body.content_type(), None, body.into_bytes()),
            Reply::Refused(refusal) => {
                let body = Body::Text(refusal.reason);
                (status, body.content_type(), refusal.retry_after, body.into_bytes())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_demand_routes_and_their_methods() {
        assert_eq!(route_ondemand("GET", "/probe"), Ok(Operation::Probe));
        assert_eq!(route_ondemand("HEAD", "/probe"), Ok(Operation::Probe));
        assert_eq!(route_ondemand("POST", "/probe"), Err(NoOperation::WrongMethod { allow: "GET, HEAD" }));
        assert_eq!(route_ondemand("POST", "/api/v1/scans"), Ok(Operation::SubmitScan));
        assert_eq!(route_ondemand("GET", "/api/v1/scans"), Ok(Operation::ListScans));
        assert_eq!(
            route_ondemand("DELETE", "/api/v1/scans"),
            Err(NoOperation::WrongMethod { allow: "GET, HEAD, POST" })
        );
        assert_eq!(route_ondemand("GET", "/api/v1/scans/ab12"), Ok(Operation::ScanStatus { id: "ab12".into() }));
        assert_eq!(route_ondemand("POST", "/api/v1/scans/ab12"), Err(NoOperation::WrongMethod { allow: "GET, HEAD" }));
        assert_eq!(
            route_ondemand("POST", "/api/v1/scans/ab12/cancel"),
            Ok(Operation::CancelScan { id: "ab12".into() })
        );
        assert_eq!(route_ondemand("GET", "/api/v1/scans/ab12/cancel"), Err(NoOperation::WrongMethod { allow: "POST" }));
        assert_eq!(route_ondemand("GET", "/api/v1/scans/"), Err(NoOperation::NotFound));
        assert_eq!(route_ondemand("GET", "/api/v2/scans"), Err(NoOperation::NotFound));
        let work: Vec<bool> = [Operation::Probe, Operation::SubmitScan, Operation::ListScans]
            .iter()
            .map(Operation::starts_or_stops_work)
            .collect();
        assert_eq!(work, [true, true, false]);
    }

    #[test]
    fn replies_map_to_statuses_types_and_retry_times() {
        let (status, content_type, retry, body) = Reply::Done(Body::Metrics("probe_success 1".into())).into_parts();
        assert_eq!((status, content_type, retry), (200, "text/plain; version=0.0.4; charset=utf-8", None));
        assert_eq!(body, b"probe_success 1\n");
        let (status, content_type, _, body) = Reply::Accepted(Body::Json(serde_json::json!({"id": "7"}))).into_parts();
        assert_eq!((status, content_type), (202, "application/json"));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"], "7");
        let refusal = Refusal::new(RefusalKind::Concurrency, "2 running").retry_after(1);
        let (status, content_type, retry, body) = Reply::Refused(refusal).into_parts();
        assert_eq!(
            (status, content_type, retry, body),
            (429, "text/plain; charset=utf-8", Some(1), b"2 running\n".to_vec())
        );
        let statuses: Vec<u16> = [
            RefusalKind::Disabled,
            RefusalKind::NotFound,
            RefusalKind::BadRequest,
            RefusalKind::TooLarge,
            RefusalKind::Unauthorized,
            RefusalKind::Forbidden,
            RefusalKind::RateLimited,
            RefusalKind::Concurrency,
            RefusalKind::Failed,
        ]
        .into_iter()
        .map(RefusalKind::status)
        .collect();
        assert_eq!(statuses, [404, 404, 400, 400, 401, 403, 429, 429, 500]);
    }
}
