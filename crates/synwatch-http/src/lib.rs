//! The thin HTTP layer of synwatch on hyper 1 (HTTP/1.1): the listener, the routes, content
//! types, limits and graceful shutdown. It holds no scan logic: whatever it serves comes from a
//! [`Site`], which the exporter implements.
//!
//! Routes: `/` (landing page, HTML), `/metrics`, `/-/healthy`, `/-/ready` (503 with the reason
//! until the site is ready), `POST /-/reload` (loopback peers only). Anything else is answered
//! with a 4xx and a one-line reason: 404 for an unknown path, 405 with `Allow` for a wrong
//! method, 403 for a reload from another host; hyper itself answers malformed requests with
//! 400 and oversized headers with 431. A client that does not send its headers within
//! `header_read_timeout` is disconnected, so a slow client cannot hold a connection forever, and
//! at most `max_connections` connections are served at once (more are closed at accept).
//!
//! Rendering `/metrics` and reloading run on tokio's blocking pool: they take milliseconds of CPU
//! or a file read, which must not stall the accept loop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What the server serves.
pub trait Site: Send + Sync + 'static {
    /// The landing page, HTML.
    fn landing_page(&self) -> String;
    /// The `/metrics` body and its Content-Type.
    fn metrics(&self) -> (Vec<u8>, &'static str);
    /// `Ok` when ready to serve meaningful metrics, else the reason.
    fn ready(&self) -> Result<(), String>;
    /// Reloads the configuration: `Ok` with a summary, or the rejection.
    fn reload(&self) -> Result<String, String>;
}

/// Server limits.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// Time a client has to send its request headers.
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time open connections get to finish after shutdown starts.
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 256,
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

const ENDPOINTS: &str = "endpoints: / /metrics /-/healthy /-/ready POST /-/reload";

/// Answers one request. Public so that the routing can be tested without a socket.
pub async fn route(site: Arc<dyn Site>, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    route_parts(site, request.method(), request.uri().path(), peer).await
}

async fn route_parts(site: Arc<dyn Site>, method: &Method, path: &str, peer: SocketAddr) -> Response<Body> {
    let read_only = |allowed: &Method| allowed == Method::GET || allowed == Method::HEAD;
    let wrong_method = |allow: &'static str| {
        let mut response =
            text(StatusCode::METHOD_NOT_ALLOWED, format!("method {method} is not allowed on {path}; use {allow}\n"));
        response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
        response
    };
    match path {
        "/" | "/metrics" | "/-/healthy" | "/-/ready" if !read_only(method) => wrong_method("GET, HEAD"),
        "/" => {
            let mut response = text(StatusCode::OK, site.landing_page());
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            response
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

/// Serves `site` on `listener` until `shutdown` resolves, then stops accepting, gives open
/// connections `shutdown_grace` to finish and returns.
pub async fn serve(
    listener: TcpListener,
    site: Arc<dyn Site>,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(settings.header_read_timeout).keep_alive(true);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
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
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!(%peer, limit = settings.max_connections, "too many connections; closing a new one");
                    continue;
                };
                let site = Arc::clone(&site);
                let service = hyper::service::service_fn(move |request| {
                    let site = Arc::clone(&site);
                    async move { Ok::<_, Infallible>(route(site, request, peer).await) }
                });
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::debug!("connections still open at the end of the shutdown grace; dropping them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct TestSite {
        reloads: AtomicUsize,
        not_ready: bool,
    }

    impl Site for TestSite {
        fn landing_page(&self) -> String {
            "<html>landing</html>".into()
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
        let response = route_parts(site, &method, path, peer.parse().unwrap()).await;
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
            let server = tokio::spawn(serve(listener, Arc::new(TestSite::default()), settings, async {
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
