//! Issue 17, part 3: one client cannot lock Prometheus out. Floods of half-sent request heads
//! against a real `synwatch serve` on loopback (from one address, then spread over many), a
//! scrape from another loopback address in the middle of each, and an oversized request head.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::helpers::{Scratch, Serve, sample};

/// A TCP connection to `server` from the loopback address `source`.
fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&format!("{source}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.connect_timeout(&server.into(), Duration::from_secs(5)).unwrap();
    socket.into()
}

/// A scrape of `/metrics` from `source`: the status line and the body.
fn scrape_from(source: &str, server: SocketAddr) -> (String, String) {
    let mut stream = connect_from(source, server);
    // Well under the server's 10 s header timeout: an answer that only comes when a flood's
    // connections time out is a lock-out.
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: synwatch\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(read.is_ok(), "the scrape from {source} got no complete answer ({read:?}): {answer:?}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

/// Opens `count` connections from `source` that each send half a request line and stop.
fn half_heads(source: &str, server: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut stream = connect_from(source, server);
            stream.write_all(b"GET /metr").unwrap();
            stream
        })
        .collect()
}

/// The peak resident set of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap()
}

fn dropped(metrics: &str, reason: &str) -> f64 {
    sample(metrics, &format!("synwatch_http_connections_dropped_total{{reason=\"{reason}\"}}")).unwrap()
}

#[test]
fn issue_17_a_flood_of_unfinished_heads_does_not_lock_out_a_scrape() {
    let scratch = Scratch::new("issue-17-flood");
    let config = scratch.config(
        "synwatch.yaml",
        "defaults: {interval: 1h, timeout: 20s, retries: 0, wait: 100ms}\n\
         targets:\n  - {name: lo, addresses: [127.0.0.1], ports: \"9\"}\n",
    );
    let serve = Serve::start(&scratch, &["--config", &config]);
    let server = serve.address;
    let before = peak_rss_kib(serve.child.id());

    // 400 half-sent heads from one address: that client holds at most its cap of slots.
    let flood = half_heads("127.0.0.1", server, 400);
    let (status, body) = scrape_from("127.0.0.2", server);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains("synwatch_build_info"), "{body}");
    let one_address = dropped(&body, "shed_client_limit");
    assert!(one_address >= 400.0 - 64.0, "the flood's own oldest heads were shed: {one_address}");
    drop(flood);

    // The same flood spread over 20 addresses (30 each, under the per-client cap) fills the
    // server: unfinished heads are shed, oldest first, and the scrape is answered.
    let spread: Vec<TcpStream> = (1..=20).flat_map(|host| half_heads(&format!("127.0.1.{host}"), server, 30)).collect();
    let (status, body) = scrape_from("127.0.0.2", server);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(dropped(&body, "shed_server_full") >= 600.0 - 512.0, "{body}");
    assert_eq!(dropped(&body, "refused_server_full"), 0.0, "nobody was inside a request: nobody is refused");
    let after = peak_rss_kib(serve.child.id());
    eprintln!("issue_17 flood: peak RSS of serve {before} KiB before, {after} KiB after the floods");
    assert!(after < before + 64 * 1024, "memory grew by {} KiB during the flood", after - before);
    drop(spread);
}

#[test]
fn issue_17_an_oversized_request_head_gets_431() {
    let scratch = Scratch::new("issue-17-431");
    let config = scratch
        .config("synwatch.yaml", "targets:\n  - {name: lo, addresses: [127.0.0.1], ports: \"9\", interval: 1h}\n");
    let serve = Serve::start(&scratch, &["--config", &config]);
    let mut stream = TcpStream::connect(serve.address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = b"GET /metrics HTTP/1.1\r\nHost: synwatch\r\nX-Padding: ".to_vec();
    request.resize(request.len() + (2 << 20), b'a');
    request.extend_from_slice(b"\r\n\r\n");
    // The server answers long before the 2 MB are sent and reads the rest while it lingers,
    // so the whole write succeeds and the answer is not lost in a reset.
    stream.write_all(&request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let metrics = serve.metrics();
    assert_eq!(dropped(&metrics, "head_too_large"), 1.0, "{metrics}");
    // A head just under the limit is answered normally.
    let mut stream = TcpStream::connect(serve.address).unwrap();
    let padding = "b".repeat(16 << 10);
    write!(stream, "GET /-/healthy HTTP/1.1\r\nHost: synwatch\r\nX-Padding: {padding}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}
