//! The running exporter against a simulated network: the scheduler, change counting, the
//! details budget, reload and the state kept across restarts, all without sockets.

mod common;

use common::*;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use synwatch_engine::{PortState, Shard, Suspect};
use synwatch_exporter::Exporter;

const WEB: &str = "targets:\n  - name: web\n    addresses: [192.0.2.0/30]\n    ports: \"22,80\"\n    interval: 50ms\n    details: true\n";

#[test]
fn a_port_that_opens_and_closes_moves_its_series_and_counters_exactly_once() {
    let directory = scratch("changes");
    let config = directory.join("synwatch.yaml");
    std::fs::write(&config, WEB).unwrap();
    let network = Arc::new(SimulatedNetwork::default());
    let exporter = start(&network, &config, None);
    let port_open = "synwatch_port_open{target=\"web\",ip=\"192.0.2.1\",port=\"80\",proto=\"tcp\"}";
    let opened = "synwatch_port_state_changes_total{change=\"opened\",target=\"web\"}";
    let closed = "synwatch_port_state_changes_total{change=\"closed\",target=\"web\"}";
    wait_for_scans(&exporter, "web", 1.0);
    let text = render(&exporter);
    assert_eq!(sample(&text, port_open), Some(0.0));
    assert_eq!(series_count(&text, "synwatch_port_open{"), 8, "4 hosts x 2 ports, each with a series");
    assert_eq!(sample(&text, "synwatch_target_ports{target=\"web\",proto=\"tcp\",state=\"closed\"}"), Some(8.0));

    network.set("192.0.2.1", 80, PortState::Open);
    wait_for("the open port", || sample(&render(&exporter), port_open) == Some(1.0));
    wait_for_scans(&exporter, "web", 3.0);
    let text = render(&exporter);
    assert_eq!((sample(&text, opened), sample(&text, closed)), (Some(1.0), Some(0.0)), "counted once");
    assert_eq!(sample(&text, "synwatch_target_ports{target=\"web\",proto=\"tcp\",state=\"open\"}"), Some(1.0));

    network.set("192.0.2.1", 80, PortState::Filtered);
    wait_for("the closed port", || sample(&render(&exporter), port_open) == Some(0.0));
    wait_for_scans(&exporter, "web", 3.0);
    let text = render(&exporter);
    assert_eq!((sample(&text, opened), sample(&text, closed)), (Some(1.0), Some(1.0)), "counted once");
    assert_eq!(sample(&text, "synwatch_target_ports{target=\"web\",proto=\"tcp\",state=\"filtered\"}"), Some(1.0));
    assert_eq!(network.max_running.load(Ordering::SeqCst), 1, "one target never runs twice at once");
    exporter.shutdown(Duration::from_secs(1));
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn a_host_turning_into_a_syn_proxy_counts_no_opened_port_but_one_host_turned_suspect() {
    let directory = scratch("suspect");
    let config = directory.join("synwatch.yaml");
    std::fs::write(&config, WEB).unwrap();
    let state_dir = directory.join("state");
    let network = Arc::new(SimulatedNetwork::default());
    network.set("192.0.2.1", 22, PortState::Open);
    let exporter = start(&network, &config, Some(&state_dir));
    wait_for_scans(&exporter, "web", 1.0);
    // 192.0.2.2 gets a SYN proxy in front of it: SYN-ACK on every port.
    network.set("192.0.2.2", 22, PortState::Open);
    network.set("192.0.2.2", 80, PortState::Open);
    network.suspects.lock().push(("192.0.2.2".parse().unwrap(), Suspect::Synproxy));
    let turned = "synwatch_target_hosts_turned_suspect_total{target=\"web\"}";
    wait_for("the suspect host", || sample(&render(&exporter), turned) == Some(1.0));
    wait_for_scans(&exporter, "web", 2.0);
    let text = render(&exporter);
    assert_eq!(sample(&text, turned), Some(1.0), "counted once, not at every scan");
    assert_eq!(sample(&text, "synwatch_port_state_changes_total{change=\"opened\",target=\"web\"}"), Some(0.0));
    assert_eq!(sample(&text, "synwatch_target_ports{target=\"web\",proto=\"tcp\",state=\"open\"}"), Some(1.0));
    assert_eq!(sample(&text, "synwatch_target_ports{target=\"web\",proto=\"tcp\",state=\"suspect\"}"), Some(2.0));
    assert_eq!(sample(&text, "synwatch_target_hosts_suspect{target=\"web\",reason=\"synproxy\"}"), Some(1.0));
    assert_eq!(sample(&text, "synwatch_target_hosts_suspect{target=\"web\",reason=\"all_open\"}"), Some(0.0));
    assert_eq!(sample(&text, "synwatch_port_open{target=\"web\",ip=\"192.0.2.2\",port=\"80\",proto=\"tcp\"}"), None);
    assert_eq!(
        sample(
            &text,
            "synwatch_port_suspect{target=\"web\",ip=\"192.0.2.2\",port=\"80\",proto=\"tcp\",reason=\"synproxy\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "synwatch_port_open{target=\"web\",ip=\"192.0.2.1\",port=\"22\",proto=\"tcp\"}"),
        Some(1.0)
    );
    // The verdict is kept across a restart: the first scan after it counts nothing new.
    exporter.shutdown(Duration::from_secs(1));
    let exporter = start(&network, &config, Some(&state_dir));
    let text = render(&exporter);
    assert_eq!(sample(&text, "synwatch_target_hosts_suspect{target=\"web\",reason=\"synproxy\"}"), Some(1.0));
    wait_for_scans(&exporter, "web", 2.0);
    let text = render(&exporter);
    assert_eq!(sample(&text, turned), Some(0.0), "a new process, and nothing turned suspect since");
    assert_eq!(sample(&text, "synwatch_port_state_changes_total{change=\"opened\",target=\"web\"}"), Some(0.0));
    exporter.shutdown(Duration::from_secs(1));
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn the_details_budget_caps_series_and_counts_what_it_refused() {
    let directory = scratch("budget");
    let config = directory.join("synwatch.yaml");
    std::fs::write(
        &config,
        "details_budget: 10\ntargets:\n  - {name: a, addresses: [192.0.2.0/30], ports: \"22,80\", interval: 50ms, details: true}\n  \
         - {name: b, addresses: [192.0.2.8/30], ports: \"22,80\", interval: 10s, details: true}\n  \
         - {name: c, addresses: [192.0.2.16/30], ports: \"22\", interval: 1h}\n",
    )
    .unwrap();
    let network = Arc::new(SimulatedNetwork::default());
    let exporter = start(&network, &config, None);
    wait_for("both detail targets scanned", || {
        let text = render(&exporter);
        ["a", "b", "c"].iter().all(|target| {
            sample(&text, &format!("synwatch_target_last_scan_success{{target=\"{target}\"}}")) == Some(1.0)
        })
    });
    let text = render(&exporter);
    assert_eq!(series_count(&text, "synwatch_port_open{target=\"a\""), 8);
    assert_eq!(series_count(&text, "synwatch_port_open{target=\"b\""), 2, "b gets what is left of 10");
    assert_eq!(series_count(&text, "synwatch_port_open{target=\"c\""), 0, "details: false");
    // a (first in the config, scanned every 50 ms) has its 8 series before b's first scan
    // (within its startup jitter of up to 1 s), which is refused 6 of its 8; a's later scans
    // refuse nothing.
    wait_for_scans(&exporter, "a", 3.0);
    let text = render(&exporter);
    assert_eq!(sample(&text, "synwatch_details_series_dropped_total"), Some(6.0));
    exporter.shutdown(Duration::from_secs(1));
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn a_broken_reload_keeps_the_old_config_and_a_good_one_removes_series() {
    let directory = scratch("reload");
    let config = directory.join("synwatch.yaml");
    std::fs::write(&config, WEB).unwrap();
    let network = Arc::new(SimulatedNetwork::default());
    network.set("192.0.2.2", 22, PortState::Open);
    let exporter = start(&network, &config, None);
    wait_for_scans(&exporter, "web", 1.0);

    std::fs::write(&config, WEB.replace("ports:", "portz:")).unwrap();
    let error = exporter.reload().unwrap_err();
    assert_eq!((error.line, error.column), (4, 5), "{error}");
    let text = render(&exporter);
    assert_eq!(sample(&text, "synwatch_config_last_reload_successful"), Some(0.0));
    wait_for_scans(&exporter, "web", 2.0);
    assert_eq!(exporter.config().targets[0].ports.to_string(), "22,80", "the old config keeps running");

    // Port 80 leaves the config, a target is added.
    let good = WEB.replace("\"22,80\"", "\"22\"")
        + "  - {name: db, addresses: [192.0.2.9], ports: \"5432\", interval: 50ms, details: true}\n";
    std::fs::write(&config, good).unwrap();
    let report = exporter.reload().unwrap();
    assert_eq!(report.added, vec!["db".to_string()]);
    let text = render(&exporter);
    assert_eq!(sample(&text, "synwatch_config_last_reload_successful"), Some(1.0));
    assert_eq!(series_count(&text, "synwatch_port_open{target=\"web\""), 4, "port 80's series are gone at once");
    assert!(!text.contains("port=\"80\""));
    assert_eq!(
        sample(&text, "synwatch_port_open{target=\"web\",ip=\"192.0.2.2\",port=\"22\",proto=\"tcp\"}"),
        Some(1.0)
    );
    wait_for_scans(&exporter, "db", 1.0);

    // Removing a target removes all its series.
    std::fs::write(&config, WEB).unwrap();
    assert_eq!(exporter.reload().unwrap().removed, vec!["db".to_string()]);
    let text = render(&exporter);
    assert!(!text.contains("target=\"db\""), "{text}");
    exporter.shutdown(Duration::from_secs(1));
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn a_restart_serves_the_saved_state_at_once_and_counts_no_false_change() {
    let directory = scratch("restart");
    let config = directory.join("synwatch.yaml");
    let state = directory.join("state");
    std::fs::write(&config, WEB.replace("50ms", "200ms")).unwrap();
    let network = Arc::new(SimulatedNetwork::default());
    network.set("192.0.2.3", 22, PortState::Open);
    let exporter = start(&network, &config, Some(&state));
    wait_for_scans(&exporter, "web", 2.0);
    exporter.shutdown(Duration::from_secs(1));
    let before = render(&exporter);
    drop(exporter);

    let scans_before = network.scans.load(Ordering::SeqCst);
    let restarted = start(&network, &config, Some(&state));
    let after = render(&restarted);
    let timestamp = "synwatch_target_last_scan_timestamp_seconds{target=\"web\"}";
    let port = "synwatch_port_open{target=\"web\",ip=\"192.0.2.3\",port=\"22\",proto=\"tcp\"}";
    if network.scans.load(Ordering::SeqCst) == scans_before {
        assert_eq!(sample(&after, timestamp), sample(&before, timestamp), "the old timestamp is served");
    }
    assert_eq!(sample(&after, port), Some(1.0), "the last known state is served before any scan");
    assert_eq!(series_count(&after, "synwatch_port_open{"), 8);
    wait_for_scans(&restarted, "web", 2.0);
    let text = render(&restarted);
    for change in ["opened", "closed"] {
        let series = format!("synwatch_port_state_changes_total{{change=\"{change}\",target=\"web\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{change}");
    }
    restarted.shutdown(Duration::from_secs(1));
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn a_scan_past_its_timeout_fails_and_keeps_the_previous_results() {
    let directory = scratch("timeout");
    let config = directory.join("synwatch.yaml");
    std::fs::write(&config, WEB.replace("    details: true\n", "    details: true\n    timeout: 100ms\n")).unwrap();
    let state_dir = directory.join("state");
    let network = Arc::new(SimulatedNetwork::default());
    network.set("192.0.2.1", 22, PortState::Open);
    let exporter = start(&network, &config, Some(&state_dir));
    wait_for_scans(&exporter, "web", 1.0);
    network.set("192.0.2.1", 22, PortState::Closed);
    network.hang.store(true, Ordering::SeqCst);
    let failure = "synwatch_scans_total{result=\"failure\",target=\"web\"}";
    wait_for("a timed-out scan", || sample(&render(&exporter), failure) >= Some(1.0));
    let text = render(&exporter);
    assert_eq!(sample(&text, "synwatch_target_last_scan_success{target=\"web\"}"), Some(0.0));
    assert_eq!(
        sample(&text, "synwatch_port_open{target=\"web\",ip=\"192.0.2.1\",port=\"22\",proto=\"tcp\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "synwatch_port_state_changes_total{change=\"closed\",target=\"web\"}"), Some(0.0));
    exporter.shutdown(Duration::from_secs(1));
    std::fs::remove_dir_all(&directory).unwrap();
}

fn api(exporter: &Exporter, method: &str, path_and_query: &str, body: &str) -> (u16, serde_json::Value, String) {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    // The HTTP crate's own router and reply mapping, without a socket.
    let (status, body) = match synwatch_http::site::route_ondemand(method, path) {
        Ok(operation) => {
            let reply = exporter.ondemand(&synwatch_http::OnDemandRequest {
                operation,
                query: query.into(),
                peer: "127.0.0.1".parse().unwrap(),
                forwarded_for: Vec::new(),
                scrape_timeout: None,
                body: body.as_bytes().to_vec().into(),
            });
            let (status, _, _, body) = reply.into_parts();
            (status, body)
        }
        Err(synwatch_http::site::NoOperation::WrongMethod { allow }) => (405, format!("use {allow}").into_bytes()),
        Err(synwatch_http::site::NoOperation::NotFound) => (404, b"not found".to_vec()),
    };
    let text = String::from_utf8(body).unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, json, text)
}

/// Issue 5's scans API: submit, dedupe, page the results, cancel, list, forget after retention,
/// and never a /metrics series for what it scanned.
#[test]
fn issue_5_scans_api_submits_dedupes_pages_cancels_and_forgets() {
    let directory = scratch("scans-api");
    let config = directory.join("synwatch.yaml");
    std::fs::write(
        &config,
        "targets:\n  - {name: background, addresses: [203.0.113.1], ports: \"22\", interval: 1h}\n\
         ondemand:\n  enabled: true\n  allow_targets: [192.0.2.0/24]\n  rate_limit: 1000\n  burst: 1000\n\
         \x20 max_concurrent: 4\n  scan_retention: 2\n",
    )
    .unwrap();
    let network = Arc::new(SimulatedNetwork::default());
    network.set("192.0.2.1", 80, PortState::Open);
    network.set("192.0.2.2", 22, PortState::Open);
    let exporter = start(&network, &config, None);
    wait_for_scans(&exporter, "background", 1.0);
    let scans_before = network.scans.load(Ordering::SeqCst);
    let submission = r#"{"targets": ["192.0.2.0/30"], "ports": "22,80", "dedupe_key": "nightly"}"#;
    let (status, first, text) = api(&exporter, "POST", "/api/v1/scans", submission);
    assert_eq!(status, 202, "{text}");
    let id = first["id"].as_str().unwrap().to_string();
    let (status, again, _) = api(&exporter, "POST", "/api/v1/scans", submission);
    assert_eq!((status, again["id"].as_str(), again["deduplicated"].as_bool()), (202, Some(id.as_str()), Some(true)));
    assert_eq!(network.scans.load(Ordering::SeqCst), scans_before + 1, "the duplicate started no scan");
    let path = format!("/api/v1/scans/{id}");
    wait_for("the API scan to end", || api(&exporter, "GET", &path, "").1["state"] == "done");
    let (_, scan, text) = api(&exporter, "GET", &path, "");
    assert_eq!(scan["counts"]["open"], 2, "{text}");
    assert_eq!(scan["counts"]["closed"], 6, "{text}");
    let open: Vec<(String, u64)> = scan["results"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["ip"].as_str().unwrap().to_string(), item["port"].as_u64().unwrap()))
        .collect();
    assert_eq!(open, vec![("192.0.2.1".to_string(), 80), ("192.0.2.2".to_string(), 22)]);
    // Paging over all eight results, three at a time.
    let mut seen = 0;
    let mut offset = Some(0u64);
    while let Some(at) = offset {
        let (_, page, _) = api(&exporter, "GET", &format!("{path}?results=all&limit=3&offset={at}"), "");
        seen += page["results"]["items"].as_array().unwrap().len();
        offset = page["results"]["next_offset"].as_u64();
    }
    assert_eq!(seen, 8);
    // Nothing of it on /metrics.
    let text = render(&exporter);
    assert!(!text.contains("192.0.2."), "an on-demand scan created series:\n{text}");
    // A scan that hangs is listed as running and can be cancelled.
    network.hang.store(true, Ordering::SeqCst);
    let (status, hanging, _) = api(&exporter, "POST", "/api/v1/scans", r#"{"targets": "192.0.2.9", "ports": [22]}"#);
    assert_eq!(status, 202);
    let hanging = hanging["id"].as_str().unwrap().to_string();
    let (_, running, _) = api(&exporter, "GET", "/api/v1/scans?state=running", "");
    assert_eq!(running["scans"][0]["id"].as_str(), Some(hanging.as_str()));
    let (status, cancelled, _) = api(&exporter, "POST", &format!("/api/v1/scans/{hanging}/cancel"), "");
    assert_eq!((status, cancelled["state"].as_str()), (202, Some("cancelling")));
    wait_for("the cancel", || api(&exporter, "GET", &format!("/api/v1/scans/{hanging}"), "").1["state"] == "cancelled");
    network.hang.store(false, Ordering::SeqCst);
    // Retention keeps the two newest ended scans: a third pushes the first out.
    let (_, third, _) = api(&exporter, "POST", "/api/v1/scans", r#"{"targets": "192.0.2.10", "ports": "22"}"#);
    let third = third["id"].as_str().unwrap().to_string();
    wait_for("the third scan", || api(&exporter, "GET", &format!("/api/v1/scans/{third}"), "").1["state"] == "done");
    let (status, _, _) = api(&exporter, "GET", &path, "");
    assert_eq!(status, 404, "the oldest ended scan is forgotten");
    let (_, listed, _) = api(&exporter, "GET", "/api/v1/scans", "");
    assert_eq!(listed["kept"], 2);
    // Bad input: a 4xx with the reason, never a crash.
    for (method, path, body, status, reason) in [
        ("POST", "/api/v1/scans", "{", 400, "request body"),
        ("POST", "/api/v1/scans", r#"{"targets": "192.0.2.1", "ports": "22", "colour": 1}"#, 400, "unknown field"),
        ("POST", "/api/v1/scans", r#"{"targets": "198.51.100.1", "ports": "22"}"#, 403, "allow_targets"),
        ("POST", "/api/v1/scans", r#"{"targets": "192.0.2.1", "ports": "22", "priority": "urgent"}"#, 400, "priority"),
        ("DELETE", "/api/v1/scans", "", 405, "GET, HEAD, POST"),
        ("GET", "/api/v1/scans/ffff", "", 404, "no scan"),
        ("GET", "/api/v1/scans?state=sleeping", "", 400, "state="),
        ("GET", &format!("/api/v1/scans/{third}?limit=99999"), "", 400, "limit"),
    ] {
        let (got, _, text) = api(&exporter, method, path, body);
        assert_eq!(got, status, "{method} {path} {body}: {text}");
        assert!(text.contains(reason), "{method} {path} {body}: {text}");
    }
    exporter.shutdown(Duration::from_millis(200));
}

/// A resolver that knows a table (reverse: fixed; forward: changeable) and counts its
/// reverse lookups.
struct TableResolver {
    names: HashMap<IpAddr, String>,
    lookups: AtomicU64,
    forward: parking_lot::Mutex<HashMap<String, synwatch_exporter::names::ForwardLookup>>,
}

impl TableResolver {
    fn new(names: HashMap<IpAddr, String>) -> TableResolver {
        TableResolver { names, lookups: AtomicU64::new(0), forward: parking_lot::Mutex::new(HashMap::new()) }
    }
}

impl synwatch_exporter::names::ForwardResolver for TableResolver {
    fn forward(&self, names: &[synwatch_engine::HostName]) -> Vec<synwatch_exporter::names::ForwardLookup> {
        let table = self.forward.lock();
        names
            .iter()
            .map(|name| table.get(name.name()).cloned().unwrap_or(synwatch_exporter::names::ForwardLookup::NotFound))
            .collect()
    }
}

impl synwatch_exporter::hostnames::ReverseResolver for TableResolver {
    fn reverse(&self, addresses: &[IpAddr]) -> Vec<(IpAddr, synwatch_exporter::hostnames::ReverseLookup)> {
        use synwatch_exporter::hostnames::ReverseLookup;
        self.lookups.fetch_add(addresses.len() as u64, Ordering::SeqCst);
        addresses
            .iter()
            .map(|address| {
                let answer = match self.names.get(address) {
                    Some(name) => ReverseLookup::Found { name: name.clone(), ttl: Duration::from_secs(3600) },
                    None => ReverseLookup::NotFound,
                };
                (*address, answer)
            })
            .collect()
    }
}

#[test]
fn issue_6_policy_violations_sd_groups_and_host_names_follow_the_scans() {
    let directory = scratch("issue6");
    let config = directory.join("synwatch.yaml");
    let policy = "resolve_hostnames: true\ndetails_budget: 3\ntargets:\n  - name: web\n    addresses: [192.0.2.0/30]\n    \
                  ports: \"22,80,443\"\n    interval: 50ms\n    expect: {open: \"443\", hosts: responding}\n";
    std::fs::write(&config, policy).unwrap();
    let network = Arc::new(SimulatedNetwork::default());
    // .1 serves 443 (expected) and 22 (not allowed); .2 answers RST only (443 missing); .0
    // and .3 are silent, so with `hosts: responding` they owe nothing.
    network.set("192.0.2.1", 443, PortState::Open);
    network.set("192.0.2.1", 22, PortState::Open);
    for port in [22, 80, 443] {
        network.set("192.0.2.0", port, PortState::Filtered);
        network.set("192.0.2.3", port, PortState::Filtered);
    }
    let exporter = start(&network, &config, None);
    let resolver =
        Arc::new(TableResolver::new(HashMap::from([("192.0.2.1".parse().unwrap(), "www.example.org".to_string())])));
    let handed = Arc::clone(&resolver);
    exporter.set_resolver_factory(Box::new(move |_| {
        Ok(Arc::clone(&handed) as Arc<dyn synwatch_exporter::hostnames::Resolver>)
    }));
    wait_for_scans(&exporter, "web", 1.0);
    let host_info = "synwatch_host_info{target=\"web\",ip=\"192.0.2.1\",hostname=\"www.example.org\"}";
    wait_for("the name of .1", || sample(&render(&exporter), host_info) == Some(1.0));
    let text = render(&exporter);
    assert_eq!(sample(&text, "synwatch_target_unexpected_open_ports{target=\"web\"}"), Some(1.0));
    assert_eq!(sample(&text, "synwatch_target_expected_ports_missing{target=\"web\"}"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "synwatch_port_policy_violation{target=\"web\",ip=\"192.0.2.1\",port=\"22\",proto=\"tcp\",kind=\"unexpected_open\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "synwatch_port_policy_violation{target=\"web\",ip=\"192.0.2.2\",port=\"443\",proto=\"tcp\",kind=\"expected_missing\"}"
        ),
        Some(1.0)
    );
    // .2 has no PTR record: its address stands in. Silent hosts have no host_info.
    assert_eq!(sample(&text, "synwatch_host_info{target=\"web\",ip=\"192.0.2.2\",hostname=\"192.0.2.2\"}"), Some(1.0));
    assert_eq!(series_count(&text, "synwatch_host_info{"), 2);
    assert_eq!(sample(&text, "synwatch_target_scan_interval_seconds{target=\"web\"}"), Some(0.05));
    assert_eq!(sample(&text, "synwatch_dns_lookups_total{result=\"found\"}"), Some(1.0));

    let groups: serde_json::Value = serde_json::from_slice(&exporter.service_discovery("").unwrap()).unwrap();
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert!(groups.iter().all(|group| group["labels"]["__meta_synwatch_hostname"] == "www.example.org"));
    let only_443: serde_json::Value = serde_json::from_slice(&exporter.service_discovery("port=443").unwrap()).unwrap();
    assert_eq!(only_443[0]["targets"][0], "192.0.2.1:443");
    assert!(exporter.service_discovery("colour=blue").unwrap_err().contains("unknown parameter"));

    // Many scans later, the cached name was looked up once per host, not once per scan.
    wait_for_scans(&exporter, "web", 5.0);
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 2);

    // The host fixes its ports: the violations go at the next scan.
    network.set("192.0.2.1", 22, PortState::Closed);
    network.set("192.0.2.2", 443, PortState::Open);
    wait_for("no violations", || {
        let text = render(&exporter);
        sample(&text, "synwatch_target_unexpected_open_ports{target=\"web\"}") == Some(0.0)
            && sample(&text, "synwatch_target_expected_ports_missing{target=\"web\"}") == Some(0.0)
    });
    assert_eq!(series_count(&render(&exporter), "synwatch_port_policy_violation{"), 0);

    // A reload that drops the policy and the names removes their series.
    std::fs::write(&config, WEB).unwrap();
    exporter.reload().unwrap();
    let text = render(&exporter);
    assert_eq!(series_count(&text, "synwatch_target_unexpected_open_ports{"), 0);
    assert_eq!(series_count(&text, "synwatch_host_info{"), 0);
    exporter.shutdown(Duration::from_secs(1));
    std::fs::remove_dir_all(&directory).unwrap();
}

/// Every sample of the families named, as `series -> value`.
fn samples(text: &str, prefixes: &[&str]) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| prefixes.iter().any(|prefix| line.starts_with(prefix)))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn issue_8_shards_split_every_target_and_sum_to_the_whole() {
    let directory = scratch("shards");
    let config = directory.join("synwatch.yaml");
    // 13 hosts x 3 ports in two ranges, and a target with fewer hosts than shards.
    let text = "targets:\n  - name: wide\n    addresses: [192.0.2.0/29, 192.0.2.64-192.0.2.68]\n    ports: \"22,80,443\"\n    interval: 50ms\n    details: true\n    expect: {open: \"22\", hosts: responding}\n  - name: pair\n    addresses: [192.0.2.200, 192.0.2.201]\n    ports: \"80\"\n    interval: 50ms\n    details: true\n";
    std::fs::write(&config, text).unwrap();
    let network = Arc::new(SimulatedNetwork::default());
    for (address, port) in
        [("192.0.2.1", 22), ("192.0.2.3", 80), ("192.0.2.3", 443), ("192.0.2.66", 22), ("192.0.2.201", 80)]
    {
        network.set(address, port, PortState::Open);
    }
    for address in ["192.0.2.5", "192.0.2.6", "192.0.2.67"] {
        for port in [22, 80, 443] {
            network.set(address, port, PortState::Filtered);
        }
    }
    let whole = start(&network, &config, None);
    let shards: Vec<Exporter> =
        (0..3).map(|index| start_shard(&network, &config, None, Shard { index, count: 3 })).collect();
    wait_for_scans(&whole, "wide", 1.0);
    wait_for_scans(&whole, "pair", 1.0);
    for shard in &shards {
        wait_for_scans(shard, "wide", 1.0);
    }
    wait_for("the pair target in the shards that have a host of it", || {
        shards.iter().filter(|shard| successes(shard, "pair") >= 1.0).count() == 2
    });
    let whole_text = render(&whole);
    let texts: Vec<String> = shards.iter().map(render).collect();
    for (index, text) in texts.iter().enumerate() {
        let info = format!("synwatch_shard_info{{shard=\"{}\",shards=\"3\"}}", index + 1);
        assert_eq!(sample(text, &info), Some(1.0), "{text}");
        assert_eq!(sample(text, "synwatch_shards"), Some(3.0));
    }
    // Counts sum to the whole: ports by state, responding hosts, policy violations.
    let summed = [
        "synwatch_target_ports{",
        "synwatch_target_hosts_responding{",
        "synwatch_target_unexpected_open_ports{",
        "synwatch_target_expected_ports_missing{",
    ];
    let mut totals: HashMap<String, f64> = HashMap::new();
    for text in &texts {
        for (series, value) in samples(text, &summed) {
            *totals.entry(series).or_default() += value;
        }
    }
    let whole_counts: HashMap<String, f64> = samples(&whole_text, &summed).into_iter().collect();
    assert!(whole_counts.len() >= 8, "{whole_counts:?}");
    assert_eq!(totals, whole_counts, "the shards' counts sum to the unsharded replica's");
    assert_eq!(whole_counts["synwatch_target_hosts_responding{target=\"wide\"}"], 10.0);
    // Per-port and per-violation series: each in exactly one shard, together the whole set.
    let per_port = ["synwatch_port_open{", "synwatch_port_policy_violation{"];
    let mut union: Vec<(String, f64)> = texts.iter().flat_map(|text| samples(text, &per_port)).collect();
    let mut expected = samples(&whole_text, &per_port);
    union.sort_by(|a, b| a.0.cmp(&b.0));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    // 13 x 3 + 2 port series; violations: 8 responding hosts without 22 open, 192.0.2.3's 80 and 443.
    assert_eq!(expected.len(), 13 * 3 + 2 + 8 + 2);
    assert_eq!(union, expected, "the shards' series are disjoint and together the whole");
    // `pair` has 2 hosts: one shard has none of it, never scans it and exports no results.
    let idle: Vec<&String> =
        texts.iter().filter(|text| !text.contains("synwatch_target_ports{target=\"pair\"")).collect();
    assert_eq!(idle.len(), 1);
    assert_eq!(sample(idle[0], "synwatch_scans_total{result=\"success\",target=\"pair\"}"), Some(0.0));
    let scans_before = network.scans.load(Ordering::SeqCst);
    wait_for("more scans", || network.scans.load(Ordering::SeqCst) > scans_before + 20);
    let idle_index = texts.iter().position(|text| !text.contains("synwatch_target_ports{target=\"pair\"")).unwrap();
    assert_eq!(successes(&shards[idle_index], "pair"), 0.0, "an empty shard is never scanned");
    whole.shutdown(Duration::from_secs(1));
    for shard in shards {
        shard.shutdown(Duration::from_secs(1));
    }
    std::fs::remove_dir_all(&directory).unwrap();
}
