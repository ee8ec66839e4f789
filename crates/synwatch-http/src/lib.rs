//! The thin HTTP layer of synwatch on hyper 1 (HTTP/1.1): the listener, TLS, authentication,
//! the routes, content types, limits and graceful shutdown. It holds no scan logic: whatever it
//! serves comes from a [`Site`], which the exporter implements.
//!
//! Routes: `/` (the status page, HTML, [`Site::status_page`]), `/metrics`, `/-/healthy`,
//! `/-/ready` (503 with the reason until the site is ready), `POST /-/reload` (loopback peers
//! only), `/api/v1/changes` and `/api/v1/endpoints` (the exposure history, [`Site::history`],
//! with the next page's cursor in `X-Next-Cursor`), and the on-demand routes
//! `/probe` and `/api/v1/scans...`, which are routed to a typed [`Operation`] here and answered
//! by [`Site::ondemand`] with a typed [`Reply`] (the site decides whether they are enabled, who
//! may call them and what they do; this crate alone turns the reply into a status, headers and
//! a body, see [`site`]). Anything else is answered
//! with a 4xx and a one-line reason: 404 for an unknown path, 405 with `Allow` for a wrong
//! method, 403 for a reload from another host, 401 with a challenge when a web config requires
//! credentials (on every route but `/-/healthy` and `/-/ready`, which carry no data and serve
//! orchestrators' probes), 413 for a body over [`MAX_BODY_BYTES`], 408 for a body that does not arrive
//! within the header timeout; hyper itself answers malformed requests with 400 and a request
//! head over [`MAX_HEAD_BYTES`] with 431 (the socket then lingers, draining what the client
//! still sends, so that the answer reaches it instead of a reset). A client that does not send
//! its headers within `header_read_timeout` is disconnected (as is a TLS handshake that takes
//! longer), and [`connections`] decides who may connect: at most `max_connections` at once and
//! `max_connections_per_client` per client, shedding unfinished request heads and idle
//! keep-alives first instead of refusing newcomers, so one client cannot lock out a scrape.
//!
//! Rendering `/metrics`, reloading and on-demand requests run on tokio's blocking pool: they
//! take milliseconds of CPU, a file read, or wait for a scan, which must not stall the accept
//! loop. Every answered request is reported to [`Site::observe`] with its route and status.

pub mod connections;
pub mod site;
pub mod web_config;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    ACCEPT, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub use connections::DropReason;
pub use site::{
    Body as ReplyBody, HistoryRequest, HistoryResource, OnDemandRequest, Operation, Refusal, RefusalKind, Reply, Site,
};
pub use web_config::{AuthVerdict, Authenticator, WebConfigError, WebSecurity};

use connections::{Admission, ConnectionTable};

/// The header of a history reading's next-page cursor (also in a JSON answer's body).
pub const NEXT_CURSOR: HeaderName = HeaderName::from_static("x-next-cursor");

/// The Content-Type of `/sd` (Prometheus HTTP service discovery).
pub const SD_CONTENT_TYPE: &str = "application/json";

/// Largest request body accepted (the scans API's JSON).
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// Largest request head (request line and headers) accepted; larger ones get 431. It also
/// bounds the read buffer of every connection, and so the server's memory under a flood.
pub const MAX_HEAD_BYTES: usize = 32 << 10;

/// How long a socket whose request was refused (431, 400) keeps reading what the client still
/// sends before it closes, and how much it reads at most.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 << 20;

/// Server limits.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// Time a client has to send its request headers (and its body, and to finish a TLS
    /// handshake).
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections of one client (an IPv4 address or an IPv6 /64) served at once.
    pub max_connections_per_client: usize,
    /// Time open connections get to finish after shutdown starts.
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_connections_per_client: 64,
            shutdown_grace: Duration::from_millis(500),
        }
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

const ENDPOINTS: &str = "endpoints: / /metrics /sd /-/healthy /-/ready POST /-/reload /probe /api/v1/scans /api/v1/changes /api/v1/endpoints";

/// The route label of a path, for metrics: a fixed set, so that clients cannot create series.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/metrics" => "/metrics",
        "/-/healthy" => "/-/healthy",
        "/-/ready" => "/-/ready",
        "/-/reload" => "/-/reload",
        "/probe" => "/probe",
        "/sd" => "/sd",
        "/api/v1/scans" => "/api/v1/scans",
        "/api/v1/changes" => "/api/v1/changes",
        "/api/v1/endpoints" => "/api/v1/endpoints",
        _ if path.starts_with("/api/v1/scans/") && path.ends_with("/cancel") => "/api/v1/scans/{id}/cancel",
        _ if path.starts_with("/api/v1/scans/") => "/api/v1/scans/{id}",
        _ => "other",
    }
}

fn is_ondemand(route: &str) -> bool {
    route == "/probe" || route.starts_with("/api/v1/scans")
}

/// The parts of a request the router looks at.
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path.
    pub path: &'a str,
    /// The query, without `?`.
    pub query: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
}

/// Answers one request. Public so that the routing can be tested without a socket.
pub async fn route(
    site: Arc<dyn Site>,
    security: Arc<WebSecurity>,
    request: Request<Incoming>,
    peer: SocketAddr,
    body_timeout: Duration,
) -> Response<Body> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let route = route_label(path);
    let head =
        RequestHead { method: &parts.method, path, query: parts.uri.query().unwrap_or(""), headers: &parts.headers };
    let response = match authorize(&site, &security, &head, route).await {
        Some(refusal) => refusal,
        None => {
            // Only on-demand routes read a body; the others ignore it.
            let body = if is_ondemand(route) {
                match tokio::time::timeout(body_timeout, Limited::new(body, MAX_BODY_BYTES).collect()).await {
                    Ok(Ok(collected)) => Ok(collected.to_bytes()),
                    Ok(Err(_)) => Err(text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the request body is over {MAX_BODY_BYTES} bytes (or broken)\n"),
                    )),
                    Err(_) => Err(text(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time\n")),
                }
            } else {
                Ok(Bytes::new())
            };
            match body {
                Ok(body) => route_parts(Arc::clone(&site), &head, body, peer).await,
                Err(refusal) => refusal,
            }
        }
    };
    site.observe(route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Checks credentials when the web config asks for them; `Some` is the refusal.
async fn authorize(
    site: &Arc<dyn Site>,
    security: &Arc<WebSecurity>,
    head: &RequestHead<'_>,
    route: &'static str,
) -> Option<Response<Body>> {
    let authenticator = security.authenticator.as_ref()?;
    // Liveness and readiness carry no data and must work for orchestrators without secrets.
    if matches!(route, "/-/healthy" | "/-/ready") {
        return None;
    }
    let verdict = authenticator.check(head.headers.get(AUTHORIZATION).map(HeaderValue::as_bytes)).await;
    let verdict_was_busy = verdict == AuthVerdict::Busy;
    let refusal = match verdict {
        AuthVerdict::Allowed => return None,
        AuthVerdict::Denied(reason) => {
            let mut response = text(StatusCode::UNAUTHORIZED, format!("unauthorized: {reason}\n"));
            let challenge = if authenticator.has_users() {
                "Basic realm=\"synwatch\", charset=\"UTF-8\""
            } else {
                "Bearer realm=\"synwatch\""
            };
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            response
        }
        AuthVerdict::Busy => {
            let mut response =
                text(StatusCode::TOO_MANY_REQUESTS, "too many password checks in progress; retry shortly\n");
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    };
    if let Ok(operation) = site::route_ondemand(head.method.as_str(), head.path)
        && operation.starts_or_stops_work()
    {
        let kind = if verdict_was_busy { RefusalKind::RateLimited } else { RefusalKind::Unauthorized };
        site.ondemand_refused(&operation, kind);
    }
    Some(refusal)
}
/// The response of a site's [`Reply`]: its status, Content-Type, `Retry-After` and body, never
/// cached.
fn reply_response(reply: Reply) -> Response<Body> {
    let (status, content_type, retry_after, body) = reply.into_parts();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = text(status, body);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

async fn route_parts(site: Arc<dyn Site>, head: &RequestHead<'_>, body: Bytes, peer: SocketAddr) -> Response<Body> {
    let (method, path) = (head.method, head.path);
    let read_only = |allowed: &Method| allowed == Method::GET || allowed == Method::HEAD;
    let wrong_method = |allow: &'static str| {
        let mut response =
            text(StatusCode::METHOD_NOT_ALLOWED, format!("method {method} is not allowed on {path}; use {allow}\n"));
        response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
        response
    };
    if is_ondemand(route_label(path)) {
        let operation = match site::route_ondemand(method.as_str(), path) {
            Ok(operation) => operation,
            Err(site::NoOperation::WrongMethod { allow }) => return wrong_method(allow),
            Err(site::NoOperation::NotFound) => {
                return text(StatusCode::NOT_FOUND, format!("not found: {path}; {ENDPOINTS}\n"));
            }
        };
        let header_text = |name: &str| -> Vec<String> {
            head.headers.get_all(name).iter().filter_map(|value| value.to_str().ok()).map(str::to_string).collect()
        };
        let request = OnDemandRequest {
            operation,
            query: head.query.to_string(),
            peer: peer.ip().to_canonical(),
            forwarded_for: header_text("x-forwarded-for"),
            scrape_timeout: header_text("x-prometheus-scrape-timeout-seconds").into_iter().next(),
            body,
        };
        return match tokio::task::spawn_blocking(move || site.ondemand(request)).await {
            Ok(reply) => reply_response(reply),
            Err(error) => {
                tracing::error!(%error, "on-demand request failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, "the request failed; see the log\n")
            }
        };
    }
    if let Some(resource) = site::HistoryResource::of_path(path) {
        if !read_only(method) {
            return wrong_method("GET, HEAD");
        }
        let accepts_csv = head
            .headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| value.split(',').any(|kind| kind.trim().starts_with("text/csv")));
        let request = site::HistoryRequest { resource, query: head.query.to_string(), accepts_csv };
        return match tokio::task::spawn_blocking(move || site.history(request)).await {
            Ok((reply, next_cursor)) => {
                let mut response = reply_response(reply);
                // The cursor is made of hex digits, digits and colons: always a valid header.
                if let Some(cursor) = next_cursor.and_then(|cursor| HeaderValue::from_str(&cursor).ok()) {
                    response.headers_mut().insert(NEXT_CURSOR, cursor);
                }
                response
            }
            Err(error) => {
                tracing::error!(%error, "history request failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, "the request failed; see the log\n")
            }
        };
    }
    match path {
        "/" | "/metrics" | "/sd" | "/-/healthy" | "/-/ready" if !read_only(method) => wrong_method("GET, HEAD"),
        "/" => {
            let query = head.query.to_string();
            match tokio::task::spawn_blocking(move || site.status_page(&query)).await {
                Ok(reply) => reply_response(reply),
                Err(error) => {
                    tracing::error!(%error, "the status page failed");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "the status page failed; see the log\n")
                }
            }
        }
        "/metrics" => {
            let rendered = tokio::task::spawn_blocking(move || site.metrics()).await;
            match rendered {
                Ok((body, content_type)) => {
                    let mut response = text(StatusCode::OK, body);
                    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    response
                }
                Err(error) => {
                    tracing::error!(%error, "rendering /metrics failed");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "rendering the metrics failed; see the log\n")
                }
            }
        }
        "/sd" => {
            let query = head.query.to_string();
            match tokio::task::spawn_blocking(move || site.service_discovery(&query)).await {
                Ok(Some(Ok(body))) => {
                    let mut response = text(StatusCode::OK, body);
                    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(SD_CONTENT_TYPE));
                    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    response
                }
                Ok(Some(Err(reason))) => text(StatusCode::BAD_REQUEST, format!("bad /sd request: {reason}\n")),
                Ok(None) => text(StatusCode::NOT_FOUND, "not found: /sd\n"),
                Err(error) => {
                    tracing::error!(%error, "/sd failed");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "service discovery failed; see the log\n")
                }
            }
        }
        "/-/healthy" => text(StatusCode::OK, "synwatch is healthy.\n"),
        "/-/ready" => match site.ready() {
            Ok(()) => text(StatusCode::OK, "synwatch is ready.\n"),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("synwatch is not ready: {reason}\n")),
        },
        "/-/reload" => {
            if method != Method::POST && method != Method::PUT {
                return wrong_method("POST, PUT");
            }
            if !peer.ip().is_loopback() && !peer.ip().to_canonical().is_loopback() {
                return text(
                    StatusCode::FORBIDDEN,
                    format!("reload is allowed from loopback only, not from {}; or send SIGHUP\n", peer.ip()),
                );
            }
            match tokio::task::spawn_blocking(move || site.reload()).await {
                Ok(Ok(summary)) => text(StatusCode::OK, format!("config reloaded: {summary}\n")),
                Ok(Err(reason)) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reload failed, the previous config keeps running: {reason}\n"),
                ),
                Err(error) => {
                    tracing::error!(%error, "reload task failed");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "reload failed; see the log\n")
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, format!("not found: {path}; {ENDPOINTS}\n")),
    }
}

/// Serves `site` on `listener` (with the TLS and authentication of `security`) until `shutdown`
/// resolves, then stops accepting, gives open connections `shutdown_grace` to finish and
/// returns.
pub async fn serve(
    listener: TcpListener,
    site: Arc<dyn Site>,
    security: Arc<WebSecurity>,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES);
    let graceful = Arc::new(GracefulShutdown::new());
    let table = Arc::new(ConnectionTable::new(settings.max_connections, settings.max_connections_per_client));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors and the like: wait a little instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (id, shed) = match table.admit(peer.ip(), Instant::now()) {
                    Admission::Admitted { id, shed, displaced } => {
                        for reason in displaced {
                            site.connection_dropped(reason);
                        }
                        (id, shed)
                    }
                    Admission::Refused(reason) => {
                        tracing::debug!(%peer, reason = reason.label(), "connection refused");
                        site.connection_dropped(reason);
                        refuse(stream, reason, &settings);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = Connection {
                    site: Arc::clone(&site),
                    security: Arc::clone(&security),
                    http: http.clone(),
                    graceful: Arc::clone(&graceful),
                    table: Arc::clone(&table),
                    id,
                    peer,
                    timeout: settings.header_read_timeout,
                };
                tokio::spawn(connection.run(stream, shed));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let graceful = Arc::try_unwrap(graceful);
    if let Ok(graceful) = graceful {
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(settings.shutdown_grace) => {
                tracing::debug!("connections still open at the end of the shutdown grace; dropping them");
            }
        }
    } else {
        // A connection task still holds the watcher (a TLS handshake in progress): give the
        // connections the grace period and go.
        tokio::time::sleep(settings.shutdown_grace.min(Duration::from_millis(100))).await;
    }
}

/// Answers a refused connection with a one-line 503 if its socket takes it at once, and closes
/// it. Best effort: a flood's sockets are not worth waiting for.
fn refuse(stream: tokio::net::TcpStream, reason: DropReason, settings: &ServerSettings) {
    let limit = match reason {
        DropReason::RefusedClientLimit => {
            format!("{} connections from your address", settings.max_connections_per_client)
        }
        _ => format!("{} connections", settings.max_connections),
    };
    let body = format!("too many connections: the limit of {limit} is reached, all busy; retry shortly\n");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// One accepted connection, plain or TLS.
struct Connection {
    site: Arc<dyn Site>,
    security: Arc<WebSecurity>,
    http: hyper::server::conn::http1::Builder,
    graceful: Arc<GracefulShutdown>,
    table: Arc<ConnectionTable>,
    id: u64,
    peer: SocketAddr,
    timeout: Duration,
}

impl Connection {
    /// Serves the connection until it ends or the table sheds it, then lingers after a 431
    /// or 400 and leaves the table.
    async fn run(self, stream: tokio::net::TcpStream, shed: Arc<Notify>) {
        let (table, id, peer, site) = (Arc::clone(&self.table), self.id, self.peer, Arc::clone(&self.site));
        // hyper gets a shared handle of the socket and this function keeps one: after hyper
        // answers a bad request head and drops its handle, closing with unread input would
        // send a reset that destroys the answer in flight; this handle drains first.
        let socket = Arc::new(stream);
        let stream = SharedStream(Arc::clone(&socket));
        let tls = self.security.tls.clone();
        let served = async {
            match tls {
                None => self.serve(stream).await,
                Some(acceptor) => match tokio::time::timeout(self.timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => self.serve(tls_stream).await,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        None
                    }
                },
            }
        };
        let ending = tokio::select! {
            ending = served => ending,
            () = shed.notified() => {
                tracing::debug!(%peer, "connection shed to make room");
                None
            }
        };
        table.closed(id);
        if let Some(error) = ending {
            if error.is_parse_too_large() {
                site.connection_dropped(DropReason::HeadTooLarge);
            }
            linger(&socket).await;
        }
    }

    /// Serves HTTP on the stream; `Some` with the parse error when hyper answered a bad
    /// request head (the socket should linger).
    async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, stream: S) -> Option<hyper::Error> {
        let Connection { site, security, http, graceful, table, id, peer, timeout } = self;
        let service = hyper::service::service_fn(move |request| {
            let (site, security, table) = (Arc::clone(&site), Arc::clone(&security), Arc::clone(&table));
            async move {
                table.request_started(id);
                let response = route(site, security, request, peer, timeout).await;
                table.request_finished(id, Instant::now());
                Ok::<_, Infallible>(response)
            }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        drop(graceful);
        match connection.await {
            Ok(()) => None,
            Err(error) if error.is_parse() || error.is_parse_too_large() => {
                tracing::debug!(%peer, %error, "bad request head answered");
                Some(error)
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "connection ended with an error");
                None
            }
        }
    }
}

/// A TCP stream that hyper reads and writes while [`Connection::run`] keeps a handle of the
/// same socket for [`linger`]. tokio's owned halves cannot do this: dropping the write half
/// shuts the socket down, and they give no handle back once hyper has dropped them.
struct SharedStream(Arc<tokio::net::TcpStream>);

impl AsyncRead for SharedStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(context))?;
            match self.0.try_read(buffer.initialize_unfilled()) {
                Ok(count) => {
                    buffer.advance(count);
                    return std::task::Poll::Ready(Ok(()));
                }
                // The readiness was stale; `poll_read_ready` registers the waker again.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return std::task::Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(context))?;
            match self.0.try_write(data) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return std::task::Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(shutdown_write(&self.0))
    }
}

fn shutdown_write(stream: &tokio::net::TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)
}

/// Shuts down writing (the answer hyper wrote goes out, then a FIN) and reads what the client
/// still sends, for at most [`LINGER_TIME`] and [`LINGER_BYTES`], before the socket closes.
async fn linger(socket: &tokio::net::TcpStream) {
    let _ = shutdown_write(socket);
    let drain = async {
        let mut buffer = vec![0u8; 16 << 10];
        let mut read = 0;
        while read < LINGER_BYTES {
            if socket.readable().await.is_err() {
                break;
            }
            match socket.try_read(&mut buffer) {
                Ok(0) => break,
                Ok(count) => read += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct TestSite {
        reloads: AtomicUsize,
        not_ready: bool,
    }

    impl Site for TestSite {
        fn status_page(&self, _query: &str) -> Reply {
            Reply::Done(site::Body::Html("<html>landing</html>".into()))
        }
        fn metrics(&self) -> (Vec<u8>, &'static str) {
            (b"up 1\n".to_vec(), "text/plain; version=0.0.4")
        }
        fn ready(&self) -> Result<(), String> {
            if self.not_ready { Err("the engine is starting".into()) } else { Ok(()) }
        }
        fn reload(&self) -> Result<String, String> {
            self.reloads.fetch_add(1, Ordering::SeqCst);
            Err("a.yaml:3:7: unknown field".into())
        }
    }

    async fn call(
        site: &Arc<TestSite>,
        method: Method,
        path: &str,
        peer: &str,
    ) -> (StatusCode, String, Response<Body>) {
        let site: Arc<dyn Site> = site.clone();
        let headers = HeaderMap::new();
        let head = RequestHead { method: &method, path, query: "", headers: &headers };
        let response = route_parts(site, &head, Bytes::new(), peer.parse().unwrap()).await;
        let status = response.status();
        let body = response.body().clone().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned(), response)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn routes_answer_with_the_right_status_type_and_reason() {
        runtime().block_on(async {
            let site = Arc::new(TestSite::default());
            let local = "127.0.0.1:40000";
            let (status, body, response) = call(&site, Method::GET, "/metrics", local).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "up 1\n"));
            assert_eq!(response.headers()[CONTENT_TYPE], "text/plain; version=0.0.4");
            let (status, _, response) = call(&site, Method::GET, "/", local).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(response.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
            let (status, body, _) = call(&site, Method::GET, "/nope", local).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            // The on-demand routes belong to the site; the test site has none.
            let (status, body404, _) = call(&site, Method::GET, "/probe", local).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{body404}");
            assert!(body.contains("/nope") && body.contains("/metrics"), "{body}");
            let (status, body, response) = call(&site, Method::POST, "/metrics", local).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
            assert_eq!(response.headers()[ALLOW], "GET, HEAD");
            let (status, _, response) = call(&site, Method::GET, "/-/reload", local).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(response.headers()[ALLOW], "POST, PUT");
            assert_eq!(site.reloads.load(Ordering::SeqCst), 0);
        });
    }

    #[test]
    fn reload_is_loopback_only_and_reports_a_rejected_config() {
        runtime().block_on(async {
            let site = Arc::new(TestSite::default());
            let (status, body, _) = call(&site, Method::POST, "/-/reload", "192.0.2.7:5000").await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            assert_eq!(site.reloads.load(Ordering::SeqCst), 0, "a refused reload does not run");
            let (status, body, _) = call(&site, Method::POST, "/-/reload", "[::ffff:127.0.0.1]:5000").await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(body.contains("a.yaml:3:7") && body.contains("previous config keeps running"), "{body}");
            let (status, _, _) = call(&site, Method::POST, "/-/reload", "[::1]:5000").await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(site.reloads.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn readiness_carries_the_reason() {
        runtime().block_on(async {
            let site = Arc::new(TestSite { not_ready: true, ..TestSite::default() });
            let (status, body, _) = call(&site, Method::GET, "/-/ready", "127.0.0.1:1").await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(body.contains("the engine is starting"), "{body}");
            let (status, _, _) = call(&site, Method::GET, "/-/healthy", "127.0.0.1:1").await;
            assert_eq!(status, StatusCode::OK);
        });
    }

    #[test]
    fn a_real_connection_gets_answers_and_a_slow_client_is_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        runtime().block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let settings =
                ServerSettings { header_read_timeout: Duration::from_millis(300), ..ServerSettings::default() };
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let security = Arc::new(WebSecurity::none());
            let server = tokio::spawn(serve(listener, Arc::new(TestSite::default()), security, settings, async {
                let _ = stopped.await;
            }));
            let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
            client.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
            let mut answer = String::new();
            client.read_to_string(&mut answer).await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.ends_with("up 1\n"), "{answer}");
            let mut garbage = tokio::net::TcpStream::connect(address).await.unwrap();
            garbage.write_all(b"\x16\x03\x01 not http\r\n\r\n").await.unwrap();
            let mut answer = String::new();
            garbage.read_to_string(&mut answer).await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 400"), "a malformed request gets a 400: {answer:?}");
            // A client that never finishes its headers is disconnected after the timeout.
            let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
            slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
            assert!(read.is_ok(), "the slow client was not disconnected");
            stop.send(()).unwrap();
            tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
        });
    }
}
