//! Issue 4: `synwatch serve` as a process, scanning listeners this test opens on 127.0.0.1
//! (the ground truth), scraped by a real Prometheus server, reloaded, signalled and killed.
//!
//! These tests work with or without CAP_NET_RAW (SYN or connect() mode on loopback). The ones
//! that need Prometheus or promtool skip without them, unless `SYNWATCH_REQUIRE_LAB=1`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use synwatch_exporter::state::StateStore;

use crate::helpers::{Prometheus, Scratch, Serve, free_port, http, program_or_skip, sample, wait_until};

/// Listeners on 127.0.0.1: `open` held open, `closed` bound and released (nothing listens).
struct Truth {
    listeners: Vec<TcpListener>,
    closed: Vec<u16>,
}

impl Truth {
    fn new(open: usize, closed: usize) -> Truth {
        let listeners = (0..open).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        Truth { listeners, closed: (0..closed).map(|_| free_port()).collect() }
    }

    fn open_ports(&self) -> Vec<u16> {
        self.listeners.iter().map(|listener| listener.local_addr().unwrap().port()).collect()
    }

    fn ports_spec(&self) -> String {
        let mut ports: Vec<u16> = self.open_ports().into_iter().chain(self.closed.iter().copied()).collect();
        ports.sort_unstable();
        ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
    }

    /// Expected `synwatch_port_open` per port.
    fn expected(&self) -> BTreeMap<u16, f64> {
        self.open_ports()
            .into_iter()
            .map(|port| (port, 1.0))
            .chain(self.closed.iter().map(|&port| (port, 0.0)))
            .collect()
    }
}

/// Writes `synwatch.yaml` (or, with `extra` lines for the target, `synwatch-extra.yaml`).
fn config_for(scratch: &Scratch, name: &str, ports: &str, extra: &str) -> std::path::PathBuf {
    let path = scratch.join(if extra.is_empty() { "synwatch.yaml" } else { "synwatch-extra.yaml" });
    std::fs::write(
        &path,
        format!(
            "engine: {{max_rate: 20000}}\ndefaults: {{interval: 1s, timeout: 20s, retries: 1, wait: 200ms}}\ntargets:\n  - name: {name}\n    addresses: [127.0.0.1]\n    ports: \"{ports}\"\n    details: true\n{extra}"
        ),
    )
    .unwrap();
    path
}

fn port_open(target: &str, port: u16) -> String {
    format!("synwatch_port_open{{target=\"{target}\",ip=\"127.0.0.1\",port=\"{port}\",proto=\"tcp\"}}")
}

#[test]
fn issue_4_prometheus_scrapes_serve_and_its_series_match_the_ground_truth() {
    let test = "issue_4_prometheus_scrapes_serve_and_its_series_match_the_ground_truth";
    let scratch = Scratch::new("prometheus");
    let truth = Truth::new(3, 2);
    let config = config_for(&scratch, "local", &truth.ports_spec(), "");
    let serve = Serve::start(&scratch, &["--config", config.to_str().unwrap()]);
    let Some(prometheus) = Prometheus::start(test, &scratch, &[serve.address]) else { return };
    let expected = truth.expected();
    let seen = wait_until("Prometheus to hold synwatch_port_open for every port", 90, || {
        let series = prometheus.query("synwatch_port_open{target=\"local\"}");
        let seen: BTreeMap<u16, f64> =
            series.iter().map(|(labels, value)| (labels["port"].as_str().unwrap().parse().unwrap(), *value)).collect();
        (seen == expected).then_some(series)
    });
    for (labels, _) in &seen {
        assert_eq!(labels["ip"], "127.0.0.1");
        assert_eq!(labels["job"], "synwatch");
    }
    let by_state: BTreeMap<String, f64> = prometheus
        .query("synwatch_target_ports{target=\"local\"}")
        .into_iter()
        .map(|(labels, value)| (labels["state"].as_str().unwrap().to_string(), value))
        .collect();
    assert_eq!(by_state.get("open"), Some(&3.0), "{by_state:?}");
    assert_eq!(by_state.values().sum::<f64>(), 5.0, "the states sum to the ports scanned: {by_state:?}");
    let success = prometheus.query("synwatch_target_last_scan_success{target=\"local\"}");
    assert_eq!(success.len(), 1);
    assert_eq!(success[0].1, 1.0);
    let up = prometheus.query("up{job=\"synwatch\"}");
    assert_eq!(up[0].1, 1.0, "{up:?}");
    let mode = prometheus.query("synwatch_scan_mode");
    assert_eq!(mode.len(), 1, "{mode:?}");
    assert!(["syn", "connect"].contains(&mode[0].0["mode"].as_str().unwrap()));
}

#[test]
fn issue_4_promtool_check_metrics_accepts_the_exposition() {
    let test = "issue_4_promtool_check_metrics_accepts_the_exposition";
    if !program_or_skip(test, "promtool") {
        return;
    }
    let scratch = Scratch::new("promtool");
    let truth = Truth::new(1, 1);
    let config = config_for(&scratch, "local", &truth.ports_spec(), "");
    let serve = Serve::start(&scratch, &["--config", config.to_str().unwrap()]);
    serve.wait_for_scans("local", 1.0);
    let metrics = serve.metrics();
    for family in
        ["synwatch_port_open{", "synwatch_target_ports{", "synwatch_scan_duration_seconds_bucket{", "process_"]
    {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    let file = scratch.join("metrics.txt");
    std::fs::write(&file, &metrics).unwrap();
    let output =
        Command::new("sh").arg("-c").arg(format!("promtool check metrics < {}", file.display())).output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
}

#[test]
fn issue_4_a_listener_opened_then_closed_moves_port_open_and_each_counter_once() {
    let scratch = Scratch::new("open-close");
    let truth = Truth::new(1, 1);
    let port = truth.closed[0];
    let config = config_for(&scratch, "local", &truth.ports_spec(), "");
    let serve = Serve::start(&scratch, &["--config", config.to_str().unwrap()]);
    let opened = "synwatch_port_state_changes_total{change=\"opened\",target=\"local\"}";
    let closed = "synwatch_port_state_changes_total{change=\"closed\",target=\"local\"}";
    serve.wait_for_scans("local", 1.0);
    assert_eq!(serve.value(&port_open("local", port)), Some(0.0));

    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    wait_until("the port to be seen open", 60, || (serve.value(&port_open("local", port)) == Some(1.0)).then_some(()));
    serve.wait_for_scans("local", 2.0);
    let metrics = serve.metrics();
    assert_eq!((sample(&metrics, opened), sample(&metrics, closed)), (Some(1.0), Some(0.0)), "{metrics}");
    assert_eq!(sample(&metrics, &port_open("local", port)), Some(1.0));

    drop(listener);
    wait_until("the port to be seen closed", 60, || {
        (serve.value(&port_open("local", port)) == Some(0.0)).then_some(())
    });
    serve.wait_for_scans("local", 2.0);
    let metrics = serve.metrics();
    assert_eq!((sample(&metrics, opened), sample(&metrics, closed)), (Some(1.0), Some(1.0)), "{metrics}");
    // The port that stayed open all along never counted.
    assert_eq!(sample(&metrics, &port_open("local", truth.open_ports()[0])), Some(1.0));
}

#[test]
fn issue_4_a_broken_reload_keeps_the_old_config_serving_and_says_so() {
    let scratch = Scratch::new("reload");
    let truth = Truth::new(1, 1);
    let config = config_for(&scratch, "local", &truth.ports_spec(), "");
    let serve = Serve::start(&scratch, &["--config", config.to_str().unwrap()]);
    serve.wait_for_scans("local", 1.0);

    // SIGHUP with an unknown key at line 2.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace("defaults:", "defaultz:")).unwrap();
    serve.signal(Signal::SIGHUP);
    wait_until("the failed reload to show", 30, || {
        (serve.value("synwatch_config_last_reload_successful") == Some(0.0)).then_some(())
    });
    assert!(serve.log_text().contains("synwatch.yaml:2:1: unknown field `defaultz`"), "{}", serve.log_text());
    // The HTTP endpoint says the same, with the location.
    let (status, body) = http("POST", serve.address, "/-/reload").unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("synwatch.yaml:2:1") && body.contains("previous config keeps running"), "{body}");
    // The old config keeps scanning.
    serve.wait_for_scans("local", 2.0);
    assert!(serve.metrics().contains(&port_open("local", truth.closed[0])));

    // A good config with a renamed target: the old target's series go, the new one's come.
    std::fs::write(&config, good.replace("name: local", "name: renamed")).unwrap();
    let before = serve.value("synwatch_config_last_reload_success_timestamp_seconds").unwrap();
    let (status, body) = http("POST", serve.address, "/-/reload").unwrap();
    assert_eq!((status, body.trim()), (200, "config reloaded: 1 target(s) added, 1 removed"));
    let metrics = serve.metrics();
    assert_eq!(sample(&metrics, "synwatch_config_last_reload_successful"), Some(1.0));
    assert!(sample(&metrics, "synwatch_config_last_reload_success_timestamp_seconds").unwrap() >= before);
    assert!(!metrics.contains("target=\"local\""), "the removed target's series are gone");
    serve.wait_for_scans("renamed", 1.0);
}

#[test]
fn issue_4_sigterm_saves_the_state_and_a_restart_serves_it_without_false_changes() {
    let scratch = Scratch::new("restart");
    let truth = Truth::new(2, 1);
    let state_dir = scratch.join("state");
    let config = config_for(&scratch, "local", &truth.ports_spec(), "");
    let arguments = ["--config", config.to_str().unwrap(), "--state-dir", state_dir.to_str().unwrap()];
    let mut serve = Serve::start(&scratch, &arguments);
    serve.wait_for_scans("local", 1.0);
    let open_port = truth.open_ports()[0];
    assert_eq!(serve.value(&port_open("local", open_port)), Some(1.0));

    let stopping = Instant::now();
    serve.signal(Signal::SIGTERM);
    let status = wait_until("synwatch serve to exit after SIGTERM", 10, || serve.child.try_wait().unwrap());
    let took = stopping.elapsed();
    assert!(status.success(), "{status}: {}", serve.log_text());
    assert!(took < Duration::from_secs(2), "SIGTERM to exit took {took:?}");
    assert!(serve.log_text().contains("state saved"), "{}", serve.log_text());
    let saved = StateStore::new(&state_dir).load();
    assert!(saved.set_aside.is_none());
    let timestamp = saved.records["local"].last_attempt.unwrap().timestamp;

    // Restarted with a long interval, so what it serves comes from the state file.
    let slow = config_for(&scratch, "local", &truth.ports_spec(), "    interval: 1h\n");
    let restarted =
        Serve::start(&scratch, &["--config", slow.to_str().unwrap(), "--state-dir", state_dir.to_str().unwrap()]);
    let metrics = restarted.metrics();
    assert_eq!(sample(&metrics, &port_open("local", open_port)), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "synwatch_target_last_scan_timestamp_seconds{target=\"local\"}"), Some(timestamp));
    assert_eq!(sample(&metrics, "synwatch_scans_total{result=\"success\",target=\"local\"}"), Some(0.0));
    drop(restarted);
    // And with a short one: the next scans compare with the restored state; nothing changed.
    let restarted = Serve::start(&scratch, &arguments);
    restarted.wait_for_scans("local", 2.0);
    let metrics = restarted.metrics();
    for change in ["opened", "closed"] {
        let series = format!("synwatch_port_state_changes_total{{change=\"{change}\",target=\"local\"}}");
        assert_eq!(sample(&metrics, &series), Some(0.0), "{change}: {metrics}");
    }
}

#[test]
fn issue_4_sigkill_during_state_writes_leaves_a_file_that_loads() {
    let scratch = Scratch::new("sigkill");
    let state_dir = scratch.join("state");
    // Eight targets over 2,000 ports each, rescanned back to back: the state file (about 4 KB
    // of hex per target) is rewritten many times a second, so kills land during writes.
    let mut text = String::from(
        "engine: {max_rate: 200000, max_concurrent_scans: 8}\ndefaults: {interval: 10ms, timeout: 20s, retries: 0, wait: 10ms}\ntargets:\n",
    );
    for index in 0..8 {
        text.push_str(&format!(
            "  - {{name: t{index}, addresses: [127.0.0.1], ports: \"{}-{}\"}}\n",
            40000 + index * 2000,
            41999 + index * 2000
        ));
    }
    let config = scratch.join("synwatch.yaml");
    std::fs::write(&config, text).unwrap();
    let arguments = ["--config", config.to_str().unwrap(), "--state-dir", state_dir.to_str().unwrap()];
    let mut temporary_seen = 0;
    for round in 0..12u64 {
        let mut serve = Serve::start(&scratch, &arguments);
        assert!(!serve.log_text().contains("unusable"), "round {round}: {}", serve.log_text());
        serve.wait_for_scans("t0", 1.0);
        // The scan counter moves just before the state is saved: wait until a saved file holds
        // t0 (in round 0 there is none yet), so that demanding t0 after the kill is fair.
        wait_until("t0 in the state file", 30, || {
            StateStore::new(&state_dir).load().records.contains_key("t0").then_some(())
        });
        std::thread::sleep(Duration::from_millis(round * 37 % 200));
        serve.signal(Signal::SIGKILL);
        let _ = serve.child.wait();
        temporary_seen += usize::from(state_dir.join(".state.json.tmp").exists());
        let loaded = StateStore::new(&state_dir).load();
        assert!(loaded.set_aside.is_none(), "round {round}: {:?}", loaded.set_aside);
        assert!(loaded.records.contains_key("t0"), "round {round}");
        assert!(loaded.records["t0"].results.is_some());
    }
    eprintln!(
        "12 SIGKILLs, {temporary_seen} of them left a partial temporary file behind; the state loaded every time"
    );
}

#[test]
fn issue_4_the_embedded_default_serves_with_the_environment_overrides() {
    let scratch = Scratch::new("embedded");
    let address = format!("127.0.0.1:{}", free_port());
    let log = scratch.join("serve.log");
    let child = Command::new(crate::helpers::synwatch())
        .arg("serve")
        .env("SYNWATCH_LISTEN", &address)
        .env("SYNWATCH_LOG_FORMAT", "json")
        .env_remove("SYNWATCH_CONFIG")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut serve = Serve { child, address: address.parse().unwrap(), log, namespace: None };
    serve.wait_ready();
    let (status, page) = http("GET", serve.address, "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("\">loopback</a></td>") && page.contains("127.0.0.1, ::1"), "{page}");
    let metrics = serve.metrics();
    assert!(metrics.contains("synwatch_build_info{revision="), "{metrics}");
    assert_eq!(sample(&metrics, "synwatch_config_last_reload_successful"), Some(1.0));
    let (status, body) = http("GET", serve.address, "/nothing-here").unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("/nothing-here"), "{body}");
    let (status, body) = http("DELETE", serve.address, "/metrics").unwrap();
    assert_eq!(status, 405, "{body}");
    let log = serve.log_text();
    let first = log.lines().next().unwrap_or_default();
    assert!(serde_json::from_str::<serde_json::Value>(first).is_ok(), "not JSON: {first}");
    serve.signal(Signal::SIGINT);
    let status = wait_until("exit after SIGINT", 10, || serve.child.try_wait().unwrap());
    assert!(status.success());
}

#[test]
fn issue_4_no_thread_of_serve_holds_a_capability_once_it_runs() {
    let scratch = Scratch::new("capabilities");
    let serve = Serve::start(&scratch, &[]);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", serve.child.id())).unwrap();
    let mut threads = Vec::new();
    for task in tasks {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status.lines().find_map(|line| line.strip_prefix(name)).map(str::trim).unwrap_or_default().to_string()
        };
        threads.push((field("Name:"), field("CapEff:"), field("CapPrm:")));
    }
    // The main thread, the engine's, the scheduler and the HTTP runtime's workers.
    assert!(threads.len() >= 4, "{threads:?}");
    assert!(threads.iter().any(|(name, _, _)| name.starts_with("synwatch-http")), "{threads:?}");
    for (name, effective, permitted) in &threads {
        assert_eq!((effective.as_str(), permitted.as_str()), ("0000000000000000", "0000000000000000"), "{name}");
    }
}

#[test]
fn issue_4_serve_refuses_a_bad_config_with_its_location() {
    let scratch = Scratch::new("bad-config");
    let config = scratch.join("bad.yaml");
    std::fs::write(&config, "targets:\n  - name: a\n    addresses: [127.0.0.1]\n    ports: \"22,70000\"\n").unwrap();
    let output = Command::new(crate::helpers::synwatch())
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.yaml:4:12:") && stderr.contains("70000"), "{stderr}");
}
