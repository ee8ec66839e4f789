//! Issue 21: SYN proxies and hosts that answer SYN-ACK on every port, found by canaries and
//! fingerprints against real Linux middleboxes built with nftables in the lab (its `synproxy`
//! statement, and a `dnat` of every port to one listener, the way port-spoofing honeypots
//! work); verification by real handshakes, against a firewall that resets the handshake's last
//! ACK and one that throttles SYNs; and the exporter with a real Prometheus evaluating the
//! shipped alert rules while a host turns into a SYN proxy.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use synwatch_lab::{Lab, LabConfig};

use crate::helpers::{Prometheus, Scratch, Serve, assert_success, net, scan_in_lab, wait_until};

/// Loads nftables rules into the lab's target namespace.
fn nft(lab: &Lab, rules: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", lab.target_namespace(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nft");
    child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "nft failed: {}\n{rules}", String::from_utf8_lossy(&output.stderr));
}

/// A Linux SYN proxy (nftables `synproxy`, as its documentation sets it up) in front of
/// `address`: it answers every SYN itself, with a SYN cookie.
fn syn_proxy(lab: &Lab, address: &str) {
    let status = Command::new("ip")
        .args(["netns", "exec", lab.target_namespace(), "sysctl", "-qw", "net.ipv4.tcp_syncookies=2"])
        .status()
        .unwrap();
    assert!(status.success());
    nft(
        lab,
        &format!(
            "table ip proxy {{\n chain raw {{\n  type filter hook prerouting priority raw; policy accept;\n  \
             ip daddr {address} tcp flags syn notrack\n }}\n chain input {{\n  type filter hook input priority 10; \
             policy accept;\n  ip daddr {address} ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp \
             sack-perm\n  ip daddr {address} ct state invalid drop\n }}\n}}\n"
        ),
    );
}

/// The scan's open lines: (address, port) → (suspect reason, verdict).
fn opens(output: &std::process::Output) -> BTreeMap<(IpAddr, u16), (Option<String>, Option<String>)> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["state"] == "open")
        .map(|line| {
            let address: IpAddr = line["ip"].as_str().unwrap().parse().unwrap();
            let port = line["port"].as_u64().unwrap() as u16;
            let text = |key: &str| line.get(key).and_then(|value| value.as_str()).map(str::to_string);
            ((address, port), (text("suspect"), text("verify")))
        })
        .collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn issue_21_real_middleboxes_are_flagged_and_verification_handshakes_only_with_the_opens() {
    let test = "issue_21_real_middleboxes_are_flagged_and_verification_handshakes_only_with_the_opens";
    let listeners: Vec<SocketAddr> = [
        "198.18.21.1:80",
        "198.18.21.1:443",
        "198.18.21.1:8080",
        "198.18.21.2:80",
        "198.18.21.3:80",
        "198.18.21.4:9",
        "198.18.21.5:8443",
        "198.18.21.6:8080",
    ]
    .iter()
    .map(|text| text.parse().unwrap())
    .collect();
    let config = LabConfig { target_ranges: vec![net("198.18.21.0/29")], listeners, ..LabConfig::default() };
    let Some(lab) = synwatch_lab::lab_or_skip(test, config) else { return };
    // .3 sits behind a Linux SYN proxy; .4 answers on every port (all redirected to :9);
    // .5's firewall resets the last ACK of handshakes to 8443; .6's lets one SYN a minute
    // through to 8080.
    syn_proxy(&lab, "198.18.21.3");
    nft(
        &lab,
        "table ip spoof {\n chain prerouting {\n  type nat hook prerouting priority dstnat; policy accept;\n  \
         ip daddr 198.18.21.4 tcp dport != 9 dnat to 198.18.21.4:9\n }\n}\n\
         table ip firewall {\n chain input {\n  type filter hook input priority 10; policy accept;\n  \
         ip daddr 198.18.21.5 tcp dport 8443 tcp flags & (syn | ack) == ack reject with tcp reset\n  \
         ip daddr 198.18.21.6 tcp dport 8080 tcp flags syn limit rate over 1/minute burst 1 packets drop\n }\n}\n",
    );
    // Every SYN that reaches the targets is counted per (address, port), before any other rule.
    nft(
        &lab,
        "table ip count {\n set syns {\n  type ipv4_addr . inet_service\n  flags dynamic\n  counter\n  size 4096\n }\n \
         chain prerouting {\n  type filter hook prerouting priority -400; policy accept;\n  \
         tcp flags & (syn | ack) == syn add @syns { ip daddr . tcp dport }\n }\n}\n",
    );
    let ports = "22,80,443,8080,8443";
    let output = scan_in_lab(&lab, &["198.18.21.0/29", "-p", ports, "--rate", "2000", "--verify", "connect"]);
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let opens = opens(&output);
    let clean =
        |address: &str, port: u16, verdict: &str| ((ip(address), port), (None::<String>, Some(verdict.to_string())));
    let suspect = |address: &str, port: u16, reason: &str| ((ip(address), port), (Some(reason.to_string()), None));
    let mut expected: BTreeMap<_, _> = [
        clean("198.18.21.1", 80, "ok"),
        clean("198.18.21.1", 443, "ok"),
        clean("198.18.21.1", 8080, "ok"),
        clean("198.18.21.2", 80, "ok"),
        clean("198.18.21.5", 8443, "reset"),
        clean("198.18.21.6", 8080, "timeout"),
    ]
    .into_iter()
    .collect();
    for port in [22, 80, 443, 8080, 8443] {
        expected.extend([suspect("198.18.21.3", port, "synproxy"), suspect("198.18.21.4", port, "all_open")]);
    }
    assert_eq!(opens, expected, "{stderr}");
    assert!(stderr.contains("2 hosts suspect (1 all_open, 1 synproxy) with 10 of the 16 opens"), "{stderr}");
    assert!(stderr.contains("6 opens verified by connect()"), "{stderr}");
    assert!(stderr.contains("4 ok, 1 reset, 0 refused, 1 timeout, 0 unreachable"), "{stderr}");
    // Every SYN that reached the targets is accounted for: the scan's probes (one per (host,
    // port), and the canaries, to ports outside the scan, of the hosts that answered SYN-ACK),
    // and one more per open of a host not suspect (its handshake; three for the one that
    // timed out, tried three times). Nothing else was touched.
    // The job's first probe may arrive twice: it is sent once through the kernel to resolve the
    // next hop. Only the all-ports host may have needed a retry (counted in the probes sent):
    // its DNAT folds the probes of one source port onto one connection, and conntrack drops
    // the clash.
    let syns = syns_by_endpoint(&lab);
    let probes_sent: u64 = stderr.split(" probes sent").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    let total: u64 = syns.values().sum();
    let handshakes = 5 + 3;
    assert!(total == probes_sent + handshakes || total == probes_sent + handshakes + 1, "{total}: {syns:?}\n{stderr}");
    let scanned: Vec<u16> = vec![22, 80, 443, 8080, 8443];
    let mut surplus = 0;
    for host in 0..8u8 {
        let address = ip(&format!("198.18.21.{host}"));
        for &port in &scanned {
            let handshakes = match opens.get(&(address, port)).and_then(|(_, verdict)| verdict.as_deref()) {
                Some("timeout") => 3,
                Some(_) => 1,
                None => 0,
            };
            let expected = 1 + handshakes;
            let found = syns.get(&(address, port)).copied().unwrap_or(0);
            assert!(found >= expected, "{address}:{port}: {found} SYNs");
            if host != 4 {
                surplus += found - expected;
            }
        }
        let canaries: u64 =
            syns.iter().filter(|((to, port), _)| *to == address && !scanned.contains(port)).map(|(_, n)| n).sum();
        // The first canary of each host that answered SYN-ACK; the other two only where it
        // answered SYN-ACK as well (the proxy and the all-ports host).
        let expected = match host {
            3 | 4 => 3,
            1 | 2 | 5 | 6 => 1,
            _ => 0,
        };
        assert_eq!(canaries, expected, "canaries of {address}: {syns:?}");
    }
    assert!(surplus <= 1, "{surplus} SYNs beyond the probes, the handshakes and the next-hop one: {syns:?}");
}

/// The SYNs counted per (address, port) by the `count` table.
fn syns_by_endpoint(lab: &Lab) -> BTreeMap<(IpAddr, u16), u64> {
    let output = Command::new("ip")
        .args(["netns", "exec", lab.target_namespace(), "nft", "-j", "list", "set", "ip", "count", "syns"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listing: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut syns = BTreeMap::new();
    for item in listing["nftables"].as_array().unwrap() {
        let Some(elements) = item["set"]["elem"].as_array() else { continue };
        for element in elements {
            let element = &element["elem"];
            let concat = element["val"]["concat"].as_array().unwrap();
            let address: IpAddr = concat[0].as_str().unwrap().parse().unwrap();
            let port = concat[1].as_u64().unwrap() as u16;
            syns.insert((address, port), element["counter"]["packets"].as_u64().unwrap());
        }
    }
    syns
}

#[test]
fn issue_21_a_host_turning_into_a_syn_proxy_fires_the_suspect_alert_and_no_port_opened_alert() {
    let test = "issue_21_a_host_turning_into_a_syn_proxy_fires_the_suspect_alert_and_no_port_opened_alert";
    let listeners = vec!["198.18.22.1:80".parse().unwrap(), "198.18.22.2:80".parse().unwrap()];
    let config = LabConfig { target_ranges: vec![net("198.18.22.0/30")], listeners, ..LabConfig::default() };
    let Some(lab) = synwatch_lab::lab_or_skip(test, config) else { return };
    let scratch = Scratch::new("issue21-alerts");
    let config = scratch.join("synwatch.yaml");
    std::fs::write(
        &config,
        "targets:\n  - name: lab\n    addresses: [198.18.22.0/30]\n    ports: \"80,443,8080\"\n    interval: 1s\n    \
         details: true\n    verify: connect\n",
    )
    .unwrap();
    let serve = Serve::start_in_lab(&lab, &scratch, &["--config", config.to_str().unwrap()]);
    serve.wait_for_scans("lab", 2.0);
    assert_eq!(serve.value("synwatch_target_ports{target=\"lab\",proto=\"tcp\",state=\"open\"}"), Some(2.0));
    assert_eq!(
        serve.value("synwatch_verifications_total{target=\"lab\",verdict=\"ok\"}").map(|ok| ok >= 4.0),
        Some(true)
    );
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/prometheus/synwatch.rules.yml");
    let scrape = format!(
        "  - job_name: synwatch\n    static_configs:\n      - targets: [\"{}\"]\nrule_files: [\"{}\"]\n",
        serve.address,
        rules.canonicalize().unwrap().display()
    );
    let Some(prometheus) = Prometheus::start_in(test, &scratch, &scrape, Some(&lab)) else { return };
    wait_until("Prometheus to scrape synwatch", 60, || {
        (!prometheus.query("synwatch_target_ports{state=\"open\"}").is_empty()).then_some(())
    });
    // 198.18.22.2 gets a SYN proxy in front of it: SYN-ACK on 443 and 8080 too.
    syn_proxy(&lab, "198.18.22.2");
    wait_until("the host to turn suspect", 60, || {
        (serve.value("synwatch_target_hosts_turned_suspect_total{target=\"lab\"}") == Some(1.0)).then_some(())
    });
    let firing = wait_until("SynwatchHostTurnedSuspect to fire in Prometheus", 60, || {
        let alerts = prometheus.query("ALERTS{alertname=\"SynwatchHostTurnedSuspect\",alertstate=\"firing\"}");
        (!alerts.is_empty()).then_some(alerts)
    });
    assert_eq!(firing[0].0["target"], "lab", "{firing:?}");
    serve.wait_for_scans("lab", 2.0);
    let metrics = serve.metrics();
    assert_eq!(
        crate::helpers::sample(&metrics, "synwatch_target_hosts_suspect{target=\"lab\",reason=\"synproxy\"}"),
        Some(1.0)
    );
    assert_eq!(
        crate::helpers::sample(&metrics, "synwatch_target_ports{target=\"lab\",proto=\"tcp\",state=\"open\"}"),
        Some(1.0)
    );
    assert_eq!(
        crate::helpers::sample(&metrics, "synwatch_target_ports{target=\"lab\",proto=\"tcp\",state=\"suspect\"}"),
        Some(3.0)
    );
    assert_eq!(
        crate::helpers::sample(&metrics, "synwatch_port_state_changes_total{change=\"opened\",target=\"lab\"}"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        crate::helpers::sample(
            &metrics,
            "synwatch_port_open{target=\"lab\",ip=\"198.18.22.2\",port=\"443\",proto=\"tcp\"}"
        ),
        None
    );
    // No port-opened alert, neither pending nor firing, ever.
    assert!(prometheus.query("ALERTS{alertname=\"SynwatchPortOpened\"}").is_empty());
    assert!(prometheus.query("max_over_time(ALERTS{alertname=\"SynwatchPortOpened\"}[10m])").is_empty());
    // The proxied host is not offered for discovery, unless asked for.
    let (status, _, body) = serve.request("GET", "/sd", &[], "").unwrap();
    assert_eq!(status, 200);
    assert!(!body.contains("198.18.22.2"), "{body}");
    let (_, _, body) = serve.request("GET", "/sd?suspect=include", &[], "").unwrap();
    assert!(body.contains("\"__meta_synwatch_suspect\":\"synproxy\""), "{body}");
}
