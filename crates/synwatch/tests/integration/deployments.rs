//! Issue 17, part 1: exporters without background targets, as operators deploy them: a
//! probe-only exporter driven by `/probe` (blackbox_exporter style) and a listeners-only one
//! watching this host's own sockets. Both run as real `synwatch serve` processes on loopback.

use std::net::TcpListener;
use std::process::Command;

use crate::helpers::{Scratch, Serve, free_port, sample, synwatch, wait_until};

/// A probe-only exporter starts, says on `/` what it does, serves `/metrics` and an empty
/// `/sd`, and answers `/probe` with the real state of loopback ports.
#[test]
fn issue_17_a_probe_only_exporter_serves_probe_metrics_and_sd_without_targets() {
    let scratch = Scratch::new("issue-17-probe-only");
    // No `targets:` key at all, as a blackbox_exporter user would write it.
    let config = scratch.config(
        "probe-only.yaml",
        "ondemand:\n  enabled: true\n  allow_targets: [127.0.0.0/8]\n  allow_clients: [127.0.0.0/8]\n\
         modules:\n  quick: {retries: 0, wait: 200ms}\n",
    );
    let checked = Command::new(synwatch()).arg("check-config").arg(&config).output().unwrap();
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    assert!(printed.contains("targets: []") && printed.contains("enabled: true"), "{printed}");

    let serve = Serve::start(&scratch, &["--config", &config]);
    let (status, _, page) = serve.request("GET", "/", &[], "").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("No background targets") && page.contains("/probe"), "{page}");
    let metrics = serve.metrics();
    assert!(!metrics.contains("synwatch_target_ports{"), "no target series without targets:\n{metrics}");
    assert_eq!(sample(&metrics, "synwatch_config_last_reload_successful"), Some(1.0), "{metrics}");
    let (status, _, discovered) = serve.request("GET", "/sd", &[], "").unwrap();
    assert_eq!(status, 200, "{discovered}");
    let groups: serde_json::Value = serde_json::from_str(&discovered).unwrap();
    assert_eq!(groups, serde_json::json!([]), "no endpoints without targets");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = free_port();
    let path = format!("/probe?target=127.0.0.1&ports={open},{closed}&module=quick&details=1");
    let (status, _, answer) = serve.request("GET", &path, &[], "").unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(sample(&answer, "probe_success"), Some(1.0), "{answer}");
    let open_series = format!("probe_port_open{{ip=\"127.0.0.1\",port=\"{open}\",proto=\"tcp\"}}");
    let closed_series = format!("probe_port_open{{ip=\"127.0.0.1\",port=\"{closed}\",proto=\"tcp\"}}");
    assert_eq!(sample(&answer, &open_series), Some(1.0), "{answer}");
    assert_eq!(sample(&answer, &closed_series), Some(0.0), "{answer}");
    // A refused target is still refused (the allowlist guards a probe-only exporter too).
    let (status, _, refusal) = serve.request("GET", "/probe?target=192.0.2.1&ports=22", &[], "").unwrap();
    assert_eq!(status, 403, "{refusal}");
}

/// A listeners-only exporter scans nothing and reports this host's listening sockets.
#[test]
fn issue_17_a_listeners_only_exporter_reports_local_sockets_without_targets() {
    let scratch = Scratch::new("issue-17-listeners-only");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = scratch.config(
        "listeners-only.yaml",
        &format!("targets: []\nlisteners:\n  enabled: true\n  interval: 200ms\n  include_ports: \"{port}\"\n"),
    );
    let serve = Serve::start(&scratch, &["--config", &config]);
    let prefix = format!("synwatch_listener_up{{protocol=\"tcp\",address=\"127.0.0.1\",port=\"{port}\",process=\"");
    let line = wait_until("the test's own listener in synwatch_listener_up", 30, || {
        serve.metrics().lines().find(|line| line.starts_with(&prefix)).map(str::to_string)
    });
    assert!(line.ends_with(" 1"), "{line}");
    assert!(!serve.metrics().contains("synwatch_scans_total{"), "a listeners-only exporter scans nothing");
    let (status, _, page) = serve.request("GET", "/", &[], "").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("listening sockets"), "{page}");
}

/// A config with no targets and nothing else to do is refused with the reason, at the
/// `targets:` key when there is one.
#[test]
fn issue_17_a_config_that_would_do_nothing_is_refused_with_the_reason() {
    let scratch = Scratch::new("issue-17-idle");
    let config = scratch.config("idle.yaml", "listen: 127.0.0.1:10045\ntargets: []\n");
    let checked = Command::new(synwatch()).arg("check-config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(!checked.status.success());
    assert!(stderr.contains("idle.yaml:2:1") && stderr.contains("would do nothing"), "{stderr}");
}
