//! Issue 5: `/probe`, the scans API and their guards, against real `synwatch serve` processes,
//! the namespace lab (to count the packets that reach a target), a flood from many clients, and
//! a real Prometheus server.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use synwatch_lab::LabConfig;

use crate::helpers::{Prometheus, Scratch, Serve, sample, wait_until};

const TOKEN: &str = "issue-5-bearer-token-0123456789";

fn outcome(serve: &Serve, label: &str) -> f64 {
    serve.value(&format!("synwatch_probe_requests_total{{outcome=\"{label}\"}}")).unwrap_or(0.0)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

/// Every guard gives its status and its outcome label, and a refused target gets no packet:
/// the lab's target side counts the SYNs it receives.
#[test]
fn issue_5_each_guard_gives_its_status_and_outcome_and_refused_targets_get_no_packet() {
    let test = "issue_5_each_guard_gives_its_status_and_outcome_and_refused_targets_get_no_packet";
    let config = LabConfig {
        target_ranges: vec!["198.18.0.0/24".parse::<IpNetwork>().unwrap()],
        listeners: vec!["198.18.0.1:80".parse().unwrap()],
        blackholed: vec!["198.18.0.64/26".parse().unwrap()],
        ..LabConfig::default()
    };
    let Some(lab) = synwatch_lab::lab_or_skip(test, config) else {
        return;
    };
    let scratch = Scratch::new("issue-5-guards");
    std::fs::write(scratch.join("web.yml"), format!("bearer_tokens: [\"{TOKEN}\"]\n")).unwrap();
    std::fs::write(
        scratch.join("synwatch.yaml"),
        "targets:\n  - {name: lab, addresses: [198.18.0.1], ports: \"80\", interval: 1h}\n\
         ondemand:\n  enabled: true\n  allow_targets: [198.18.0.0/25]\n  allow_clients: [127.0.0.0/8, 192.0.2.0/28]\n\
         \x20 trusted_proxies: [127.0.0.1]\n  rate_limit: 1\n  burst: 2\n  global_rate_limit: 1000\n  global_burst: 1000\n\
         \x20 max_concurrent: 1\n  max_probes_per_request: 4096\n\
         modules:\n  slow: {ports: \"1-4\", timeout: 3s, retries: 0, wait: 3s}\n",
    )
    .unwrap();
    let config = scratch.join("synwatch.yaml").display().to_string();
    let web = scratch.join("web.yml").display().to_string();
    let serve = Serve::start_in_lab(&lab, &scratch, &["--config", &config, "--web.config.file", &web]);
    let auth = format!("Bearer {TOKEN}");
    // Every request with credentials goes through the proxy 127.0.0.1 for a client of its own,
    // so that the per-client rate limit is exercised only where the table says so.
    let mut next_client = 0u32;
    let mut request = |path: &str, authorization: Option<&str>, client: Option<&str>| {
        next_client += 1;
        let own = format!("192.0.2.{}", next_client % 14 + 1);
        let client = client.map(str::to_string).unwrap_or(own);
        let mut headers = vec![("X-Forwarded-For", client.as_str())];
        if let Some(authorization) = authorization {
            headers.push(("Authorization", authorization));
        }
        serve.request("GET", path, &headers, "").unwrap()
    };
    // The metrics endpoint is protected too (the health endpoints are not: see the docs), and
    // so are the status page and the exposure history's readings (issue 23).
    for path in ["/metrics", "/", "/api/v1/changes", "/api/v1/endpoints?state=open"] {
        assert_eq!(serve.request("GET", path, &[], "").unwrap().0, 401, "{path}");
    }
    let metrics = |serve: &Serve| {
        let (status, _, body) = serve.request("GET", "/metrics", &[("Authorization", &auth)], "").unwrap();
        assert_eq!(status, 200);
        body
    };
    // Background scan first, so the SYN counter moves only for on-demand probes afterwards.
    wait_until("the background scan", 30, || {
        (sample(&metrics(&serve), "synwatch_scans_total{result=\"success\",target=\"lab\"}") >= Some(1.0)).then_some(())
    });
    let count = |serve: &Serve, label: &str| {
        sample(&metrics(serve), &format!("synwatch_probe_requests_total{{outcome=\"{label}\"}}")).unwrap()
    };
    let syns_before = lab.syns_received().unwrap();
    // (what, path, credentials, client, status, outcome)
    type Row<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, u16, &'a str);
    let table: [Row; 8] = [
        ("no credentials", "/probe?target=198.18.0.1&ports=80", None, None, 401, "unauthorized"),
        (
            "a wrong token",
            "/probe?target=198.18.0.1&ports=80",
            Some("Bearer nope-nope-nope-nope"),
            None,
            401,
            "unauthorized",
        ),
        (
            "a client outside allow_clients",
            "/probe?target=198.18.0.1&ports=80",
            Some(&auth),
            Some("203.0.113.9"),
            403,
            "forbidden",
        ),
        ("no target", "/probe?ports=80", Some(&auth), None, 400, "bad_request"),
        (
            "a target outside allow_targets",
            "/probe?target=198.18.0.128%2F25&ports=80",
            Some(&auth),
            None,
            403,
            "forbidden",
        ),
        ("a target partly outside", "/probe?target=198.18.0.0%2F24&ports=80", Some(&auth), None, 403, "forbidden"),
        ("too many probes", "/probe?target=198.18.0.0%2F25&ports=1-40", Some(&auth), None, 400, "too_large"),
        ("an unknown module", "/probe?target=198.18.0.1&module=nope", Some(&auth), None, 400, "bad_request"),
    ];
    for (what, path, credentials, client, status, label) in table {
        let before = count(&serve, label);
        let (got, headers, body) = request(path, credentials, client);
        assert_eq!(got, status, "{what}: {body}");
        assert!(body.len() > 10, "{what}: the refusal says why: {body:?}");
        if status == 401 {
            assert!(header(&headers, "www-authenticate").is_some(), "{what}: 401 carries a challenge");
        }
        assert_eq!(count(&serve, label), before + 1.0, "{what}: outcome {label} counted once");
    }
    let too_large = request("/probe?target=198.18.0.0%2F25&ports=1-40", Some(&auth), None).2;
    assert!(too_large.contains("128 host(s) x 40 port(s) = 5120 probes") && too_large.contains("4096"), "{too_large}");
    assert_eq!(lab.syns_received().unwrap(), syns_before, "a refused request sent packets");
    // Allowed: one open port; the counter moves, so it would have caught a leak above.
    let before = count(&serve, "ok");
    let (status, _, body) = request("/probe?target=198.18.0.1&ports=80,81", Some(&auth), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(sample(&body, "probe_success"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "probe_ports_open"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "probe_ports_closed"), Some(1.0), "{body}");
    assert_eq!(count(&serve, "ok"), before + 1.0);
    // One SYN per port, and the first canary of a host that answered SYN-ACK (issue 21; it
    // answered RST, so the other two were not needed).
    assert_eq!(lab.syns_received().unwrap(), syns_before + 2 + 1, "the allowed probe sent one SYN per port");
    // Rate limit: client 192.0.2.15 has a burst of 2 at 1/s.
    let before = count(&serve, "rate_limited");
    for _ in 0..2 {
        assert_eq!(request("/probe?target=198.18.0.1&ports=80", Some(&auth), Some("192.0.2.15")).0, 200);
    }
    let (status, headers, body) = request("/probe?target=198.18.0.1&ports=80", Some(&auth), Some("192.0.2.15"));
    assert_eq!(status, 429, "{body}");
    let retry_after: u64 = header(&headers, "retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(count(&serve, "rate_limited"), before + 1.0);
    // Concurrency: max_concurrent 1; a probe of blackholed addresses holds the slot for 3 s.
    let holding = std::thread::scope(|scope| {
        let slow = scope.spawn(|| {
            serve
                .request(
                    "GET",
                    "/probe?target=198.18.0.64%2F30&module=slow",
                    &[("Authorization", &auth), ("X-Forwarded-For", "192.0.2.1")],
                    "",
                )
                .unwrap()
        });
        wait_until("the slow probe to hold the slot", 10, || {
            (sample(&metrics(&serve), "synwatch_ondemand_inflight") == Some(1.0)).then_some(())
        });
        let before = count(&serve, "concurrency");
        let (status, headers, body) = request("/probe?target=198.18.0.1&ports=80", Some(&auth), Some("192.0.2.2"));
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("max_concurrent") && header(&headers, "retry-after").is_some(), "{body}");
        assert_eq!(count(&serve, "concurrency"), before + 1.0);
        slow.join().unwrap()
    });
    assert_eq!(holding.0, 200);
    assert_eq!(sample(&holding.2, "probe_ports_open"), Some(0.0), "{}", holding.2);
    assert_eq!(sample(&holding.2, "probe_ports_filtered"), Some(16.0), "{}", holding.2);
    // On-demand scans never create /metrics series: no series names an address probed above.
    let text = metrics(&serve);
    assert!(!text.contains("198.18.0.64") && !text.contains("ip=\"198.18.0.1\",port=\"81\""), "{text}");
}

/// Off by default: the embedded config answers 404 on both paths, and says why.
#[test]
fn issue_5_on_demand_paths_are_off_unless_enabled() {
    let scratch = Scratch::new("issue-5-off");
    let serve = Serve::start(&scratch, &["--state-dir", &scratch.join("state").display().to_string()]);
    for (method, path) in [("GET", "/probe?target=127.0.0.1&ports=22"), ("POST", "/api/v1/scans")] {
        let (status, _, body) = serve.request(method, path, &[], "{}").unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("ondemand.enabled"), "{body}");
    }
}

/// The deadline holds: a fully filtered range, a module slow enough that the scan cannot end,
/// and a 2 s scrape timeout: the answer comes in under 2 s with probe_success 0 and partial
/// counts.
#[test]
fn issue_5_deadline_holds_on_a_filtered_range() {
    let test = "issue_5_deadline_holds_on_a_filtered_range";
    let config = LabConfig {
        target_ranges: vec!["198.18.1.0/24".parse::<IpNetwork>().unwrap()],
        blackholed: vec!["198.18.1.0/24".parse().unwrap()],
        ..LabConfig::default()
    };
    let Some(lab) = synwatch_lab::lab_or_skip(test, config) else {
        return;
    };
    let scratch = Scratch::new("issue-5-deadline");
    std::fs::write(
        scratch.join("synwatch.yaml"),
        "targets:\n  - {name: loopback, addresses: [127.0.0.1], ports: \"9\", interval: 1h}\n\
         ondemand: {enabled: true, allow_targets: [198.18.0.0/16]}\n\
         modules:\n  crawl: {ports: \"1-4\", rate: 200, retries: 2, wait: 1s, timeout: 30s}\n",
    )
    .unwrap();
    let config = scratch.join("synwatch.yaml").display().to_string();
    let serve = Serve::start_in_lab(&lab, &scratch, &["--config", &config]);
    let started = Instant::now();
    let (status, _, body) = serve
        .request(
            "GET",
            "/probe?target=198.18.1.0%2F24&module=crawl",
            &[("X-Prometheus-Scrape-Timeout-Seconds", "2")],
            "",
        )
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(elapsed < Duration::from_secs(2), "answered after {elapsed:?}");
    assert_eq!(sample(&body, "probe_success"), Some(0.0), "{body}");
    assert_eq!(sample(&body, "probe_timeout_seconds"), Some(1.5), "2 s minus the 0.5 s offset: {body}");
    let scanned = sample(&body, "probe_ports_scanned").unwrap();
    assert_eq!(sample(&body, "probe_ports_requested"), Some(1024.0));
    // 200 probes/s for 1.5 s: partial, and every probe sent went unanswered.
    assert!((100.0..1024.0).contains(&scanned), "{body}");
    assert_eq!(sample(&body, "probe_ports_filtered"), Some(scanned), "{body}");
    assert_eq!(sample(&body, "probe_ports_open"), Some(0.0));
}

/// Issue 20: `/probe` of one silent host, on a network whose other hosts answer in well under a
/// millisecond (the background scan of its /24 taught the engine so), ends after a few minimum
/// timeouts with the ports filtered and `probe_success 1`, not at its deadline; the engine's
/// round-trip histogram counts both kinds of job.
#[test]
fn issue_20_a_probe_of_a_silent_host_ends_on_the_learned_timeout_not_the_deadline() {
    let test = "issue_20_a_probe_of_a_silent_host_ends_on_the_learned_timeout_not_the_deadline";
    let config = LabConfig {
        target_ranges: vec!["198.18.2.0/24".parse::<IpNetwork>().unwrap()],
        listeners: vec!["0.0.0.0:80".parse().unwrap()],
        blackholed: vec!["198.18.2.77/32".parse().unwrap()],
        ..LabConfig::default()
    };
    let Some(lab) = synwatch_lab::lab_or_skip(test, config) else {
        return;
    };
    let scratch = Scratch::new("issue-20-silent-probe");
    std::fs::write(
        scratch.join("synwatch.yaml"),
        "targets:\n  - {name: net, addresses: [198.18.2.0/24], ports: \"80,443\", interval: 1h}\n\
         ondemand: {enabled: true, allow_targets: [198.18.2.0/24], rate_limit: 100}\nmodules: {verified: {verify: connect}}\n",
    )
    .unwrap();
    let config = scratch.join("synwatch.yaml").display().to_string();
    let serve = Serve::start_in_lab(&lab, &scratch, &["--config", &config]);
    wait_until("the background scan", 30, || {
        let (_, _, body) = serve.request("GET", "/metrics", &[], "").ok()?;
        (sample(&body, "synwatch_scans_total{result=\"success\",target=\"net\"}") >= Some(1.0)).then_some(())
    });
    let (_, _, metrics) = serve.request("GET", "/metrics", &[], "").unwrap();
    // 256 hosts × 2 ports answered (less the silent host's two), each a sample.
    let background = sample(&metrics, "synwatch_engine_rtt_seconds_count{kind=\"background\"}").unwrap();
    assert!(background >= 510.0, "{background} background samples");
    let started = Instant::now();
    let (status, _, body) = serve
        .request(
            "GET",
            "/probe?target=198.18.2.77&ports=22,80,443",
            &[("X-Prometheus-Scrape-Timeout-Seconds", "10")],
            "",
        )
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(sample(&body, "probe_success"), Some(1.0), "the scan finished, within its deadline: {body}");
    assert_eq!(sample(&body, "probe_ports_filtered"), Some(3.0), "{body}");
    assert_eq!(sample(&body, "probe_ports_open"), Some(0.0), "{body}");
    // The default module retries once: a round, one 100 ms gap, a round, two 100 ms timeouts of
    // wait. The 9.5 s deadline, or the 1 s initial timeout, would show.
    assert!(elapsed < Duration::from_millis(900), "answered after {elapsed:?}");
    // An answering host's probe is an interactive sample, and so is the answer to its first
    // canary (the host answered SYN-ACK; issue 21; the canary's RST makes the others needless).
    let canaries = "synwatch_replies_received_total{kind=\"canary\"}";
    let canaries_before = sample(&metrics, canaries).unwrap();
    let (status, _, body) = serve.request("GET", "/probe?target=198.18.2.1&ports=80", &[], "").unwrap();
    assert_eq!((status, sample(&body, "probe_ports_open")), (200, Some(1.0)), "{body}");
    let (_, _, metrics) = serve.request("GET", "/metrics", &[], "").unwrap();
    assert_eq!(sample(&metrics, "synwatch_engine_rtt_seconds_count{kind=\"interactive\"}"), Some(2.0), "{metrics}");
    assert_eq!(sample(&metrics, canaries), Some(canaries_before + 1.0), "{metrics}");
    // A module with `verify: connect` (issue 21): the open is verified before the answer, with
    // one more SYN to it and none elsewhere.
    let syns = lab.syns_received().unwrap();
    let (status, _, body) =
        serve.request("GET", "/probe?target=198.18.2.1&ports=80,81&module=verified", &[], "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(sample(&body, "probe_ports_open"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "probe_ports_unverified"), Some(0.0), "{body}");
    assert_eq!(lab.syns_received().unwrap() - syns, 2 + 1 + 1, "two ports, one canary, one handshake");
}

/// A keep-alive HTTP/1.1 client bound to one source address: (status, body) per request.
/// Written here rather than with ureq, which cannot bind a connection's source address, and
/// the flood needs forty distinct clients (127.0.0.x) for the per-client limits.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(source: &str, server: SocketAddr) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&format!("{source}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
        socket.connect_timeout(&server.into(), Duration::from_secs(5)).unwrap();
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client { reader: BufReader::new(stream) }
    }

    fn get(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        write!(self.reader.get_mut(), "GET {path} HTTP/1.1\r\nHost: synwatch\r\n\r\n")?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// 20,000 requests from 40 clients (each its own 127.0.0.x source address) on keep-alive
/// connections: /metrics keeps answering throughout, memory stays bounded, and the rate-limit
/// counters equal what the clients saw.
#[test]
fn issue_5_a_flood_from_many_clients_is_limited_and_counted_exactly() {
    let scratch = Scratch::new("issue-5-flood");
    std::fs::write(
        scratch.join("synwatch.yaml"),
        "targets:\n  - {name: loopback, addresses: [127.0.0.1], ports: \"9\", interval: 1h}\n\
         ondemand:\n  enabled: true\n  allow_targets: [127.0.0.1]\n  rate_limit: 20\n  burst: 5\n\
         \x20 global_rate_limit: 200\n  global_burst: 50\n  max_concurrent: 4\n",
    )
    .unwrap();
    let config = scratch.join("synwatch.yaml").display().to_string();
    let serve = Serve::start(&scratch, &["--config", &config]);
    let pid = serve.child.id();
    let before_kib = resident_kib(pid);
    const CLIENTS: usize = 40;
    const PER_CLIENT: usize = 500;
    let flooding = AtomicBool::new(true);
    let scrapes = AtomicU64::new(0);
    let mut seen: BTreeMap<&'static str, u64> = BTreeMap::new();
    let peak_kib = AtomicU64::new(before_kib);
    std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            while flooding.load(Ordering::Acquire) {
                let (status, body) = crate::helpers::http("GET", serve.address, "/metrics").unwrap();
                assert_eq!(status, 200, "/metrics failed during the flood: {body}");
                scrapes.fetch_add(1, Ordering::Relaxed);
                peak_kib.fetch_max(resident_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let workers: Vec<_> = (0..CLIENTS)
            .map(|number| {
                let address = serve.address;
                scope.spawn(move || {
                    let mut client = Client::connect(&format!("127.0.0.{}", number + 2), address);
                    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
                    for _ in 0..PER_CLIENT {
                        let (status, body) = client.get("/probe?target=127.0.0.1&ports=9").unwrap();
                        let kind = match status {
                            200 => "ok",
                            429 if body.starts_with("rate limit") => "rate_limited",
                            429 => "concurrency",
                            other => panic!("unexpected {other}: {body}"),
                        };
                        *counts.entry(kind).or_default() += 1;
                    }
                    counts
                })
            })
            .collect();
        for worker in workers {
            for (kind, count) in worker.join().unwrap() {
                *seen.entry(kind).or_default() += count;
            }
        }
        flooding.store(false, Ordering::Release);
        watcher.join().unwrap();
    });
    let total: u64 = seen.values().sum();
    assert_eq!(total, (CLIENTS * PER_CLIENT) as u64);
    assert!(scrapes.load(Ordering::Relaxed) >= 2, "/metrics was scraped during the flood");
    for kind in ["ok", "rate_limited", "concurrency"] {
        let counted = outcome(&serve, kind);
        assert_eq!(
            counted,
            *seen.get(kind).unwrap_or(&0) as f64,
            "outcome {kind}: server counted {counted}, clients saw {seen:?}"
        );
    }
    assert!(seen["ok"] > 0 && seen["rate_limited"] > 10_000, "{seen:?}");
    let route = "synwatch_api_requests_total{code=\"429\",route=\"/probe\"}";
    assert_eq!(serve.value(route), Some((seen["rate_limited"] + seen.get("concurrency").unwrap_or(&0)) as f64));
    let peak = peak_kib.load(Ordering::Relaxed);
    assert!(peak < before_kib + 32 * 1024, "resident memory grew from {before_kib} KiB to {peak} KiB");
}

/// A real Prometheus scrapes /probe through the usual relabeling (target in __param_target)
/// and the series arrive.
#[test]
fn issue_5_prometheus_scrapes_probe_through_relabeling() {
    let test = "issue_5_prometheus_scrapes_probe_through_relabeling";
    let scratch = Scratch::new("issue-5-prometheus");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = listener.local_addr().unwrap().port();
    std::fs::write(
        scratch.join("synwatch.yaml"),
        format!(
            "targets:\n  - {{name: loopback, addresses: [127.0.0.1], ports: \"9\", interval: 1h}}\n\
             ondemand: {{enabled: true, allow_targets: [127.0.0.1], rate_limit: 50, burst: 10}}\n\
             modules:\n  here: {{ports: \"{open_port},9\", timeout: 5s}}\n"
        ),
    )
    .unwrap();
    let config = scratch.join("synwatch.yaml").display().to_string();
    let serve = Serve::start(&scratch, &["--config", &config]);
    let scrape = format!(
        "  - job_name: synwatch_probe\n    metrics_path: /probe\n    params: {{module: [here]}}\n\
         \x20   static_configs:\n      - targets: [127.0.0.1]\n    relabel_configs:\n\
         \x20     - {{source_labels: [__address__], target_label: __param_target}}\n\
         \x20     - {{source_labels: [__param_target], target_label: instance}}\n\
         \x20     - {{target_label: __address__, replacement: \"{}\"}}\n",
        serve.address
    );
    let Some(prometheus) = Prometheus::start_with(test, &scratch, &scrape) else {
        return;
    };
    let found = wait_until("probe series in Prometheus", 60, || {
        let series = prometheus.query("probe_ports_open{job=\"synwatch_probe\"}");
        (!series.is_empty()).then_some(series)
    });
    assert_eq!(found[0].0["instance"], "127.0.0.1");
    assert_eq!(found[0].1, 1.0, "one open port");
    let success = prometheus.query("probe_success{job=\"synwatch_probe\"}");
    assert_eq!(success[0].1, 1.0);
    let closed = prometheus.query("probe_ports_closed{job=\"synwatch_probe\"}");
    assert_eq!(closed[0].1, 1.0);
    drop(listener);
}

/// `--web.config.file` with TLS (rustls) and bcrypt basic auth: HTTPS with the right password
/// gets the metrics; no or a wrong password gets 401; plain HTTP on the TLS port gets nothing.
#[test]
fn issue_5_web_config_serves_tls_with_basic_auth() {
    let test = "issue_5_web_config_serves_tls_with_basic_auth";
    if !crate::helpers::program_or_skip(test, "openssl") || !crate::helpers::program_or_skip(test, "curl") {
        return;
    }
    let scratch = Scratch::new("issue-5-tls");
    let (cert, key) = (scratch.join("tls.crt"), scratch.join("tls.key"));
    let generated = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=synwatch-test", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let hash = bcrypt::hash("s3cret pass", 4).unwrap();
    std::fs::write(
        scratch.join("web.yml"),
        format!(
            "tls_server_config: {{cert_file: tls.crt, key_file: tls.key}}\nbasic_auth_users:\n  alice: \"{hash}\"\n"
        ),
    )
    .unwrap();
    let web = scratch.join("web.yml").display().to_string();
    let address: SocketAddr = format!("127.0.0.1:{}", crate::helpers::free_port()).parse().unwrap();
    let mut child = std::process::Command::new(crate::helpers::synwatch())
        .args(["serve", "--listen", &address.to_string(), "--web.config.file", &web])
        .stderr(std::fs::File::create(scratch.join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let curl = |arguments: &[&str]| {
        let output = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--cacert"])
            .arg(&cert)
            .args(arguments)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let url = format!("https://{address}/metrics");
    let code = wait_until("the TLS listener", 30, || {
        let code = curl(&["-u", "alice:s3cret pass", &url]);
        (code != "000").then_some(code)
    });
    assert_eq!(code, "200");
    assert_eq!(curl(&["-u", "alice:wrong", &url]), "401");
    assert_eq!(curl(&["-u", "mallory:s3cret pass", &url]), "401");
    assert_eq!(curl(&[&url]), "401");
    assert_eq!(curl(&[&format!("https://{address}/-/healthy")]), "200", "health stays open");
    assert_eq!(curl(&[&format!("http://{address}/metrics")]), "000", "plain HTTP on the TLS port");
    let _ = child.kill();
    let _ = child.wait();
    // A web config that does not parse stops the start with its position.
    std::fs::write(scratch.join("bad.yml"), "basic_auth_users:\n  alice: not-a-hash\n").unwrap();
    let output = std::process::Command::new(crate::helpers::synwatch())
        .args(["serve", "--listen", "127.0.0.1:0", "--web.config.file"])
        .arg(scratch.join("bad.yml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.yml:2:3") && stderr.contains("bcrypt"), "{stderr}");
}
