//! Issue 6: service discovery (`/sd`) with host names from a real DNS server (dnsmasq) read by
//! a real Prometheus server, the local listeners collector against this test's own sockets in
//! /proc, and the expected-port policy in the namespace lab.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};

use ipnetwork::IpNetwork;
use synwatch_lab::{Expected, LabConfig};

use crate::helpers::{LabDnsmasq, Prometheus, Scratch, Serve, free_port, package_or_skip, sample, wait_until};

/// A dnsmasq serving only the given PTR records (address, name).
fn ptr_server(lab: &synwatch_lab::Lab, scratch: &Scratch, records: &[(&str, &str)]) -> LabDnsmasq {
    let records: Vec<String> = records
        .iter()
        .map(|(address, name)| {
            let [a, b, c, d] = address.parse::<std::net::Ipv4Addr>().unwrap().octets();
            format!("--ptr-record={d}.{c}.{b}.{a}.in-addr.arpa,{name}")
        })
        .collect();
    LabDnsmasq::start(lab, scratch, &records)
}

fn sd(serve: &Serve, query: &str) -> (u16, Option<String>, serde_json::Value) {
    let (status, headers, body) = serve.request("GET", &format!("/sd{query}"), &[], "").unwrap();
    let content_type = headers.iter().find(|(name, _)| name == "content-type").map(|(_, value)| value.clone());
    let value = if status == 200 { serde_json::from_str(&body).unwrap() } else { serde_json::Value::String(body) };
    (status, content_type, value)
}

/// Open endpoints found in the lab are served at `/sd` with names from a real DNS server
/// (dnsmasq), and a real Prometheus server discovers them through `http_sd_configs`. (In the lab
/// because hickory names every loopback address `localhost` without asking, per RFC 6761.)
#[test]
fn issue_6_sd_serves_open_endpoints_named_by_real_ptr_records_and_prometheus_discovers_them() {
    let test = "issue_6_sd_serves_open_endpoints_named_by_real_ptr_records_and_prometheus_discovers_them";
    if !package_or_skip(test, "dnsmasq", "dnsmasq-base") {
        return;
    }
    // Two services; 198.18.4.4 has none (it answers RST and has no PTR record).
    let config = LabConfig {
        target_ranges: vec!["198.18.4.0/29".parse::<IpNetwork>().unwrap()],
        listeners: vec!["198.18.4.2:8080".parse().unwrap(), "198.18.4.3:8080".parse().unwrap()],
        blackholed: vec![
            "198.18.4.0/31".parse().unwrap(),
            "198.18.4.5/32".parse().unwrap(),
            "198.18.4.6/31".parse().unwrap(),
        ],
        ..LabConfig::default()
    };
    let Some(lab) = synwatch_lab::lab_or_skip(test, config) else {
        return;
    };
    let scratch = Scratch::new("issue6-sd");
    let dns =
        ptr_server(&lab, &scratch, &[("198.18.4.2", "alpha.synwatch.test"), ("198.18.4.3", "beta.synwatch.test")]);
    let config = scratch.join("synwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "resolve_hostnames: true\ndns: {{nameservers: [\"127.0.0.1:{}\"], timeout: 2s}}\ntargets:\n  - name: lab\n    \
             addresses: [198.18.4.0/29]\n    ports: \"8080,9090\"\n    interval: 2s\n    retries: 0\n    wait: 300ms\n",
            dns.port
        ),
    )
    .unwrap();
    let serve = Serve::start_in_lab(&lab, &scratch, &["--config", config.to_str().unwrap()]);
    let named = wait_until("both endpoints with their names at /sd", 30, || {
        let (status, _, groups) = sd(&serve, "");
        let groups = groups.as_array()?.clone();
        let names: BTreeSet<String> = groups
            .iter()
            .filter_map(|group| group["labels"]["__meta_synwatch_hostname"].as_str().map(str::to_string))
            .collect();
        (status == 200
            && names == BTreeSet::from(["alpha.synwatch.test".to_string(), "beta.synwatch.test".to_string()]))
        .then_some(groups)
    });
    assert_eq!(named.len(), 2, "{named:?}");
    let alpha = named.iter().find(|group| group["labels"]["__meta_synwatch_ip"] == "198.18.4.2").unwrap();
    assert_eq!(alpha["targets"][0], "198.18.4.2:8080");
    assert_eq!(alpha["labels"]["__meta_synwatch_target"], "lab");
    assert_eq!(alpha["labels"]["__meta_synwatch_port"], "8080");
    let (_, content_type, _) = sd(&serve, "");
    assert_eq!(content_type.as_deref(), Some("application/json"));
    // Filters; nothing matching is `[]`; a malformed filter is a 400 with its reason.
    let (status, _, only_closed) = sd(&serve, "?port=9090");
    assert_eq!((status, only_closed), (200, serde_json::json!([])));
    let (status, _, by_target) = sd(&serve, "?target=lab&port=8080,9090");
    assert_eq!((status, by_target.as_array().unwrap().len()), (200, 2));
    let (status, _, unknown) = sd(&serve, "?target=gone");
    assert_eq!((status, unknown), (200, serde_json::json!([])));
    let (status, _, reason) = sd(&serve, "?port=http");
    assert_eq!(status, 400, "{reason}");
    assert!(reason.as_str().unwrap().contains("port="), "{reason}");
    // /metrics joins the names on: one host_info per responding host; no PTR → the address.
    let metrics = serve.metrics();
    assert_eq!(
        sample(&metrics, "synwatch_host_info{target=\"lab\",ip=\"198.18.4.2\",hostname=\"alpha.synwatch.test\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "synwatch_host_info{target=\"lab\",ip=\"198.18.4.4\",hostname=\"198.18.4.4\"}"),
        Some(1.0)
    );
    assert_eq!(metrics.lines().filter(|line| line.starts_with("synwatch_host_info{")).count(), 3, "{metrics}");
    assert_eq!(sample(&metrics, "synwatch_dns_lookups_total{result=\"found\"}"), Some(2.0));
    assert_eq!(sample(&metrics, "synwatch_dns_lookups_total{result=\"not_found\"}"), Some(1.0));
    // The lookups are made after scans, not per request, and cached: more scans, scrapes and
    // /sd requests add none.
    serve.wait_for_scans("lab", 2.0);
    for _ in 0..5 {
        let _ = sd(&serve, "");
        let _ = serve.metrics();
    }
    assert_eq!(serve.value("synwatch_dns_lookups_total{result=\"found\"}"), Some(2.0));

    // A real Prometheus discovers the endpoints and keeps the name as a label.
    let scrape_configs = format!(
        "  - job_name: discovered\n    http_sd_configs:\n      - url: http://{}/sd?port=8080\n        refresh_interval: 1s\n    \
         relabel_configs:\n      - source_labels: [__meta_synwatch_hostname]\n        target_label: hostname\n",
        serve.address
    );
    let Some(prometheus) = Prometheus::start_in(test, &scratch, &scrape_configs, Some(&lab)) else {
        return;
    };
    let discovered = wait_until("Prometheus to list the discovered targets", 60, || {
        let (status, body) = prometheus.get("/api/v1/targets").ok()?;
        let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
        let active = answer["data"]["activeTargets"].as_array()?.clone();
        (status == 200 && active.len() == 2).then_some(active)
    });
    let hostnames: BTreeSet<&str> =
        discovered.iter().filter_map(|target| target["labels"]["hostname"].as_str()).collect();
    assert_eq!(hostnames, BTreeSet::from(["alpha.synwatch.test", "beta.synwatch.test"]), "{discovered:?}");
    let instances: BTreeSet<&str> =
        discovered.iter().filter_map(|target| target["labels"]["instance"].as_str()).collect();
    assert_eq!(instances, BTreeSet::from(["198.18.4.2:8080", "198.18.4.3:8080"]));
    assert_eq!(discovered[0]["discoveredLabels"]["__meta_synwatch_target"], "lab");
}

/// A UDP port outside the ephemeral range (where bound UDP sockets are clients' source ports).
fn udp_port_outside_ephemeral() -> (UdpSocket, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    for port in (1025..low).rev().step_by(7) {
        if let Ok(socket) = UdpSocket::bind(("127.0.0.1", port)) {
            return (socket, port);
        }
    }
    panic!("no free UDP port below {low}");
}

/// The value of the one `synwatch_listener_up` series of (protocol, 127.0.0.1, port), whatever
/// its process, with that process.
fn listener_up(metrics: &str, protocol: &str, port: u16) -> Option<(String, f64)> {
    let prefix =
        format!("synwatch_listener_up{{protocol=\"{protocol}\",address=\"127.0.0.1\",port=\"{port}\",process=\"");
    metrics.lines().find_map(|line| {
        let (process, value) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
        Some((process.to_string(), value.parse().ok()?))
    })
}

/// Sockets of real processes appear in `synwatch_listener_up`, with the owner's name where it
/// is visible; a closed one stays at 0 (counted down), comes back (counted recovered); the
/// listener policy follows. The TCP listener is a second `synwatch serve` (it holds no
/// capability once started, so the collector, which holds none either, may read its /proc
/// entries whoever runs the test); the UDP socket is this test's own.
#[test]
fn issue_6_local_listeners_appear_go_down_and_recover_with_their_process() {
    let scratch = Scratch::new("issue6-listeners");
    let quiet = scratch.join("quiet.yaml");
    std::fs::write(
        &quiet,
        "engine: {mode: connect}\ntargets:\n  - {name: lo, addresses: [127.0.0.1], ports: \"1\", interval: 1h}\n",
    )
    .unwrap();
    let service_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let service = Serve::start_at(&scratch, service_address, &["--config", quiet.to_str().unwrap()]);
    let port = service_address.port();
    let (udp, udp_port) = udp_port_outside_ephemeral();
    let unwatched = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = scratch.join("synwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  enabled: true\n  interval: 200ms\n  forget_after: 1h\n  include_ports: \"{port},{udp_port}\"\n  \
             expect_listening: [{port}]\n  forbid_listening: [\"udp/{udp_port}\"]\ntargets:\n  - name: lo\n    addresses: [127.0.0.1]\n    \
             ports: \"1\"\n    interval: 1h\n"
        ),
    )
    .unwrap();
    let collector = Serve::start(&scratch, &["--config", config.to_str().unwrap()]);
    let change =
        |kind: &str| collector.value(&format!("synwatch_listener_changes_total{{change=\"{kind}\"}}")).unwrap_or(0.0);
    let (tcp, udp_up) = wait_until("the listeners to appear", 30, || {
        let metrics = collector.metrics();
        let tcp = listener_up(&metrics, "tcp", port)?;
        let udp = listener_up(&metrics, "udp", udp_port)?;
        (tcp.1 == 1.0 && udp.1 == 1.0).then_some((tcp, udp))
    });
    assert_eq!(tcp.0, "synwatch", "the owner of the TCP listener is named");
    // This test's own socket is named when its /proc entries are readable (not as root with
    // capabilities the collector lacks).
    let own = std::fs::read_to_string("/proc/self/comm").unwrap().trim_end().to_string();
    assert!(udp_up.0 == own || udp_up.0.is_empty(), "{udp_up:?}");
    let metrics = collector.metrics();
    // Only the included ports are exported: the other listener of this process is not.
    let unwatched_port = unwatched.local_addr().unwrap().port();
    assert!(!metrics.contains(&format!("port=\"{unwatched_port}\"")), "{metrics}");
    assert_eq!(sample(&metrics, "synwatch_listeners_expected_missing"), Some(0.0));
    assert_eq!(sample(&metrics, "synwatch_listeners_forbidden"), Some(1.0));
    assert_eq!(
        sample(
            &metrics,
            &format!(
                "synwatch_listener_policy_violation{{protocol=\"udp\",port=\"{udp_port}\",kind=\"forbidden_listening\"}}"
            )
        ),
        Some(1.0)
    );
    assert_eq!(change("new"), 2.0);

    drop(service);
    drop(udp);
    wait_until("the listeners to go down", 30, || {
        let metrics = collector.metrics();
        (listener_up(&metrics, "tcp", port)?.1 == 0.0 && listener_up(&metrics, "udp", udp_port)?.1 == 0.0).then_some(())
    });
    let metrics = collector.metrics();
    assert_eq!(sample(&metrics, "synwatch_listener_changes_total{change=\"down\"}"), Some(2.0));
    assert_eq!(sample(&metrics, "synwatch_listeners_expected_missing"), Some(1.0));
    assert_eq!(sample(&metrics, "synwatch_listeners_forbidden"), Some(0.0));
    assert_eq!(
        sample(
            &metrics,
            &format!(
                "synwatch_listener_policy_violation{{protocol=\"tcp\",port=\"{port}\",kind=\"expected_missing\"}}"
            )
        ),
        Some(1.0)
    );
    // Still there at 0 (not gone) several readings later.
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(listener_up(&collector.metrics(), "tcp", port).map(|(_, value)| value), Some(0.0));

    let _service = Serve::start_at(&scratch, service_address, &["--config", quiet.to_str().unwrap()]);
    wait_until("the listener to recover", 30, || {
        (listener_up(&collector.metrics(), "tcp", port)?.1 == 1.0).then_some(())
    });
    assert_eq!(change("recovered"), 1.0);
    assert_eq!(change("new"), 2.0, "a recovered listener is not new");
    assert_eq!(collector.value("synwatch_listeners_expected_missing"), Some(0.0));
    assert_eq!(collector.value("synwatch_listener_read_errors_total"), Some(0.0));
}

/// In the lab: the policy's counts and violation series match the lab's ground truth, and
/// follow a service that goes away.
#[test]
fn issue_6_policy_violations_in_the_lab_match_the_ground_truth() {
    let test = "issue_6_policy_violations_in_the_lab_match_the_ground_truth";
    let range: IpNetwork = "198.18.3.0/28".parse().unwrap();
    let config = LabConfig {
        target_ranges: vec![range],
        listeners: ["198.18.3.1:22", "198.18.3.1:443", "198.18.3.2:22", "198.18.3.2:3306", "198.18.3.3:443"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect(),
        // Half the range is silent: with `hosts: responding` it owes no ports.
        blackholed: vec!["198.18.3.8/29".parse().unwrap()],
        ..LabConfig::default()
    };
    let Some(mut lab) = synwatch_lab::lab_or_skip(test, config) else {
        return;
    };
    let scratch = Scratch::new("issue6-policy");
    let config = scratch.join("synwatch.yaml");
    std::fs::write(
        &config,
        "targets:\n  - name: lab\n    addresses: [198.18.3.0/28]\n    ports: \"22,443,3306\"\n    interval: 1s\n    \
         retries: 1\n    wait: 300ms\n    expect: {open: \"22,443\", hosts: responding}\n",
    )
    .unwrap();
    let serve = Serve::start_in_lab(&lab, &scratch, &["--config", config.to_str().unwrap()]);
    let expected_violations = |lab: &synwatch_lab::Lab| {
        let truth = lab.ground_truth(&[range], &[22, 443, 3306]);
        let responding: BTreeSet<IpAddr> = truth
            .iter()
            .filter(|(_, _, state)| matches!(state, Expected::Open | Expected::Closed))
            .map(|(address, _, _)| *address)
            .collect();
        let mut violations = BTreeSet::new();
        for (address, port, state) in &truth {
            let expected_open = [22, 443].contains(port);
            if *state == Expected::Open && !expected_open {
                violations.insert((*address, *port, "unexpected_open"));
            }
            if *state != Expected::Open && expected_open && responding.contains(address) {
                violations.insert((*address, *port, "expected_missing"));
            }
        }
        violations
    };
    let exported = |serve: &Serve| -> BTreeSet<(IpAddr, u16, String)> {
        serve
            .metrics()
            .lines()
            .filter_map(|line| line.strip_prefix("synwatch_port_policy_violation{target=\"lab\",ip=\""))
            .filter_map(|rest| {
                let (address, rest) = rest.split_once("\",port=\"")?;
                let (port, rest) = rest.split_once("\",proto=\"tcp\",kind=\"")?;
                let (kind, _) = rest.split_once('"')?;
                Some((address.parse().ok()?, port.parse().ok()?, kind.to_string()))
            })
            .collect()
    };
    let as_owned = |set: BTreeSet<(IpAddr, u16, &str)>| -> BTreeSet<(IpAddr, u16, String)> {
        set.into_iter().map(|(address, port, kind)| (address, port, kind.to_string())).collect()
    };
    let want = as_owned(expected_violations(&lab));
    // .2:3306 unexpected; .2 misses 443, .3 misses 22; .0 and .4-.7 answer RST and miss both.
    assert_eq!(want.len(), 1 + 2 + 2 * 5, "{want:?}");
    wait_until("the policy of the first scan", 60, || (exported(&serve) == want).then_some(()));
    let count = |serve: &Serve, name: &str| serve.value(&format!("{name}{{target=\"lab\"}}"));
    assert_eq!(count(&serve, "synwatch_target_unexpected_open_ports"), Some(1.0));
    assert_eq!(count(&serve, "synwatch_target_expected_ports_missing"), Some(12.0));

    // The HTTPS service of .1 goes away: one more violation at the next scan.
    assert!(lab.close_listener("198.18.3.1:443".parse::<SocketAddr>().unwrap()));
    let want = as_owned(expected_violations(&lab));
    assert!(want.contains(&("198.18.3.1".parse().unwrap(), 443, "expected_missing".to_string())));
    wait_until("the missing service to be reported", 60, || (exported(&serve) == want).then_some(()));
    assert_eq!(count(&serve, "synwatch_target_expected_ports_missing"), Some(13.0));
}
