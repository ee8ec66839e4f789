//! Issue 22: UDP scans in the kernel lab, against scripted services for every built-in
//! payload and a real dnsmasq, with closed ports (the target kernel's own port unreachable),
//! blackholed (open|filtered) and prohibited (filtered) ranges, IPv4 and IPv6, raw and
//! connect() modes, a mixed TCP and UDP scan and a user payload file.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Stdio};

use synwatch_lab::{Expected, Lab, LabConfig, UdpService};

use crate::helpers::{
    Scratch, Serve, assert_success, net, package_or_skip, parse_jsonl_with_proto, scan_in_lab, wait_until,
};

/// Where the real dnsmasq answers (an address of its own on the target side's `lo`).
const DNSMASQ: &str = "198.18.0.3";
const V4_RANGE: &str = "198.18.0.0/28";
/// Not from 2001:2::, which the target's kernel takes for its subnet-router anycast address
/// and answers nothing on.
const V6_RANGE: &str = "2001:2::10/124";
/// Every UDP port the scan probes: the built-in payloads' ports, an echo, a silent service and
/// a port nothing listens on; plus one TCP port.
const PORTS: &str = "tcp/22,udp/53,69,111,123,137,161,389,443,500,1194,1434,1900,5060,5353,5683,11211,7,9,9999";

/// A dnsmasq in the target namespace on 198.18.0.3:53 with no upstream; killed on drop.
struct TargetDnsmasq(Child);

impl TargetDnsmasq {
    fn start(lab: &Lab, scratch: &Scratch) -> TargetDnsmasq {
        let namespace = lab.target_namespace();
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", namespace, "ip", "addr", "add", &format!("{DNSMASQ}/32"), "dev", "lo"])
            .status()
            .unwrap();
        assert!(status.success(), "adding {DNSMASQ} to the target's lo");
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", namespace, "dnsmasq"])
            .args(crate::helpers::DNSMASQ_ALONE)
            .args([
                &format!("--listen-address={DNSMASQ}"),
                "--port=53",
                "--pid-file=",
                "--user=root",
                "--log-queries",
                "--log-facility=-",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(scratch.join("dnsmasq.log")).unwrap())
            .spawn()
            .expect("starting dnsmasq");
        let log = scratch.join("dnsmasq.log");
        wait_until("dnsmasq to start", 10, || {
            std::fs::read_to_string(&log).ok().filter(|text| text.contains("started")).map(|_| ())
        });
        TargetDnsmasq(child)
    }
}

impl Drop for TargetDnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lab(test: &str) -> Option<Lab> {
    let v4_services: Vec<(SocketAddr, UdpService)> = UdpService::PROTOCOLS
        .iter()
        .map(|&service| (SocketAddr::new("198.18.0.1".parse().unwrap(), service.default_port()), service))
        .chain([
            ("198.18.0.2:7".parse().unwrap(), UdpService::Echo),
            ("198.18.0.2:9".parse().unwrap(), UdpService::Silent),
            // A blackholed address has a service too: its probes never reach it.
            ("198.18.0.9:53".parse().unwrap(), UdpService::Dns),
        ])
        .collect();
    let v6_services = [UdpService::Dns, UdpService::Ntp, UdpService::Snmp, UdpService::Quic, UdpService::Tftp]
        .into_iter()
        .map(|service| (SocketAddr::new("2001:2::11".parse().unwrap(), service.default_port()), service));
    let config = LabConfig {
        target_ranges: vec![net(V4_RANGE), net(V6_RANGE)],
        listeners: vec!["198.18.0.1:22".parse().unwrap(), "[2001:2::11]:22".parse().unwrap()],
        udp_services: v4_services.into_iter().chain(v6_services).collect(),
        blackholed: vec![net("198.18.0.8/29")],
        prohibited: vec![net("2001:2::18/125")],
        // Host unreachable (what a router answers for a host that is down), which Linux hands
        // a UDP socket only with IP_RECVERR: connect() mode must still see it.
        unreachable: vec![net("198.18.0.6/31"), net("2001:2::16/127")],
        // IPv6 next-hop resolution takes about a second after the link comes up: probes sent
        // meanwhile would be dropped by the scanner's kernel.
        static_neighbour: true,
        ..LabConfig::default()
    };
    synwatch_lab::lab_or_skip(test, config)
}

/// The lab's truth for every probe of the scan, the real dnsmasq included.
fn truth(lab: &Lab) -> BTreeSet<(IpAddr, &'static str, u16, Expected)> {
    let ports = synwatch_engine::PortSet::parse(PORTS).unwrap();
    let mut truth = BTreeSet::new();
    for range in [net(V4_RANGE), net(V6_RANGE)] {
        for address in range.iter() {
            for port in ports.ports() {
                let expected = if port.is_tcp() {
                    ("tcp", lab.expected(address, port.number))
                } else if address.to_string() == DNSMASQ && port.number == 53 {
                    ("udp", Expected::Open)
                } else {
                    ("udp", lab.expected_udp(address, port.number))
                };
                truth.insert((address, expected.0, port.number, expected.1));
            }
        }
    }
    truth
}

fn assert_matches_truth(
    mode: &str,
    found: &BTreeSet<(IpAddr, &'static str, u16, Expected)>,
    truth: &BTreeSet<(IpAddr, &'static str, u16, Expected)>,
) {
    let wrong: Vec<_> = found.symmetric_difference(truth).take(12).collect();
    assert!(wrong.is_empty(), "{mode}: differences from the ground truth (first 12): {wrong:?}");
}

#[test]
fn issue_22_udp_results_equal_the_ground_truth_in_raw_and_connect_mode() {
    let test = "issue_22_udp_results_equal_the_ground_truth_in_raw_and_connect_mode";
    if !package_or_skip(test, "dnsmasq", "dnsmasq-base") {
        return;
    }
    let Some(lab) = lab(test) else { return };
    let scratch = Scratch::new(test);
    let _dnsmasq = TargetDnsmasq::start(&lab, &scratch);
    let truth = truth(&lab);
    // Every state is in the truth, so the comparison covers each of them.
    for (proto, state) in [
        ("udp", Expected::Open),
        ("udp", Expected::Closed),
        ("udp", Expected::Filtered),
        ("udp", Expected::OpenFiltered),
        ("tcp", Expected::Open),
        ("tcp", Expected::Closed),
        ("tcp", Expected::Filtered),
    ] {
        assert!(truth.iter().any(|(_, p, _, s)| *p == proto && *s == state), "no {proto} {state:?} in the truth");
    }
    let opens = |found: &BTreeSet<(IpAddr, &str, u16, Expected)>| {
        found.iter().filter(|(_, proto, _, state)| *proto == "udp" && *state == Expected::Open).count()
    };
    assert_eq!(opens(&truth), 16 + 1 + 1 + 5, "every scripted protocol, the echo, dnsmasq and the IPv6 five");
    for mode in ["syn", "connect"] {
        let answered_before = lab.udp_services().unwrap().answered();
        let output = scan_in_lab(
            &lab,
            &[V4_RANGE, V6_RANGE, "-p", PORTS, "--mode", mode, "--rate", "2000", "--retries", "1", "--wait", "1s"],
        );
        assert_success(&output);
        let found = parse_jsonl_with_proto(&output);
        assert_matches_truth(mode, &found, &truth);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("{} open, ", opens(&truth))), "{mode}: {stderr}");
        // Each scripted service answered (no open came from anywhere else).
        assert!(lab.udp_services().unwrap().answered() - answered_before >= 22, "{mode}");
    }
}

#[test]
fn issue_22_a_user_payload_file_replaces_the_built_in_one_and_a_bad_one_is_refused_with_its_place() {
    let test = "issue_22_a_user_payload_file_replaces_the_built_in_one_and_a_bad_one_is_refused_with_its_place";
    let Some(lab) = lab(test) else { return };
    let scratch = Scratch::new(test);
    // A DNS server does not answer this (not a query), and the echo answers anything.
    let payloads = scratch.config(
        "payloads.txt",
        "# mine\nudp/53 hex 0000 8180 0001 0000 0000 0000  # a response, not a query\n7 text \"hello\\r\\n\"\n",
    );
    let output = scan_in_lab(
        &lab,
        &["198.18.0.1-198.18.0.2", "-p", "udp/7,53,123", "--udp-payloads", &payloads, "--wait", "1s"],
    );
    assert_success(&output);
    let found = parse_jsonl_with_proto(&output);
    let state = |address: &str, port: u16| {
        found
            .iter()
            .find(|(ip, proto, number, _)| ip.to_string() == address && *proto == "udp" && *number == port)
            .map(|(_, _, _, state)| *state)
    };
    assert_eq!(state("198.18.0.1", 53), Some(Expected::OpenFiltered), "the DNS server ignores a non-query");
    assert_eq!(state("198.18.0.1", 123), Some(Expected::Open), "the built-in NTP payload is kept");
    assert_eq!(state("198.18.0.2", 7), Some(Expected::Open));
    let bad = scratch.config("bad.txt", "udp/53 hex 00\n\n  7 text \"unterminated\n");
    let output = scan_in_lab(&lab, &["198.18.0.1", "-p", "udp/53", "--udp-payloads", &bad]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("{bad}:3:10: text must be in double quotes")), "{stderr}");
}

/// Issue 22: `engine.udp_payloads` in `serve`: the file's payloads are what its scans send
/// (`/probe` here), a bad file is refused at its own line and column by `check-config` and by a
/// reload, which keeps the old payloads running, and a fixed file is taken by the next reload.
#[test]
fn issue_22_serve_takes_the_udp_payload_file_and_a_bad_one_is_refused_keeping_the_old_one() {
    let test = "issue_22_serve_takes_the_udp_payload_file_and_a_bad_one_is_refused_keeping_the_old_one";
    let Some(lab) = lab(test) else { return };
    let scratch = Scratch::new("issue22-serve-payloads");
    // A DNS response, not a query: the DNS server at .1 ignores it.
    let payloads = scratch.config("payloads.txt", "udp/53 hex 0000 8180 0001 0000 0000 0000\n");
    let config = scratch.config(
        "synwatch.yaml",
        "engine:\n  udp_payloads: payloads.txt\nondemand:\n  enabled: true\n  allow_targets: [198.18.0.0/28]\n  \
         allow_clients: [127.0.0.0/8]\n",
    );
    let serve = Serve::start_in_lab(&lab, &scratch, &["--config", &config]);
    let probe = |serve: &Serve| {
        let (status, _, body) = serve.request("GET", "/probe?target=198.18.0.1&ports=udp%2F53,123", &[], "").unwrap();
        assert_eq!(status, 200, "{body}");
        let value = |name: &str| crate::helpers::sample(&body, name).unwrap_or(-1.0);
        (value("probe_ports_open"), value("probe_ports_open_filtered"))
    };
    // udp/53 carries the file's payload (no answer); udp/123 keeps the built-in NTP one.
    assert_eq!(probe(&serve), (1.0, 1.0), "the file's payload for udp/53 draws no answer");
    let bad = "udp/53 hex 00\n\n  7 text \"unterminated\n";
    std::fs::write(&payloads, bad).unwrap();
    let checked =
        std::process::Command::new(crate::helpers::synwatch()).args(["check-config", &config]).output().unwrap();
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{payloads}:3:10: text must be in double quotes")), "{stderr}");
    let (status, _, body) = serve.request("POST", "/-/reload", &[], "").unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("payloads.txt:3:10") && body.contains("previous config keeps running"), "{body}");
    assert_eq!(probe(&serve), (1.0, 1.0), "the old payloads keep running");
    // Without a payload for udp/53 the built-in DNS query is sent again, and answered.
    std::fs::write(&payloads, "# nothing of mine\n").unwrap();
    let (status, _, body) = serve.request("POST", "/-/reload", &[], "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(probe(&serve), (2.0, 0.0), "the built-in DNS payload is back");
}

/// Issue 22: a UDP target in `serve`: per-protocol series, a UDP port opening between two scans
/// is one opened change and fires SynwatchPortOpened in a real Prometheus, and an `expect:`
/// policy over UDP ports.
#[test]
fn issue_22_serve_scans_a_udp_target_and_a_udp_port_opening_fires_the_opened_alert() {
    let test = "issue_22_serve_scans_a_udp_target_and_a_udp_port_opening_fires_the_opened_alert";
    let config = LabConfig {
        target_ranges: vec![net("198.18.30.0/30")],
        listeners: vec!["198.18.30.1:22".parse().unwrap()],
        udp_services: vec![
            ("198.18.30.1:53".parse().unwrap(), UdpService::Dns),
            ("198.18.30.2:123".parse().unwrap(), UdpService::Ntp),
        ],
        prohibited: vec![net("198.18.30.3/32")],
        static_neighbour: true,
        ..LabConfig::default()
    };
    let Some(lab) = synwatch_lab::lab_or_skip(test, config) else { return };
    let scratch = Scratch::new("issue22-serve");
    let config = scratch.join("synwatch.yaml");
    std::fs::write(
        &config,
        "targets:\n  - name: mixed\n    addresses: [198.18.30.0/30]\n    ports: [22, \"udp/53,123\"]\n    interval: 1s\n    \
         details: true\n    expect:\n      open: \"udp/53\"\n      hosts: responding\n\
         ondemand:\n  enabled: true\n  allow_targets: [198.18.30.0/30]\n  allow_clients: [127.0.0.0/8]\n",
    )
    .unwrap();
    let serve = Serve::start_in_lab(&lab, &scratch, &["--config", config.to_str().unwrap()]);
    serve.wait_for_scans("mixed", 2.0);
    let metrics = serve.metrics();
    let value = |series: &str| crate::helpers::sample(&metrics, series);
    // Hosts .0-.3 × (tcp/22, udp/53, udp/123); .3 is prohibited (ICMP admin-prohibited).
    assert_eq!(value("synwatch_target_ports{target=\"mixed\",proto=\"tcp\",state=\"open\"}"), Some(1.0), "{metrics}");
    assert_eq!(value("synwatch_target_ports{target=\"mixed\",proto=\"udp\",state=\"open\"}"), Some(2.0), "{metrics}");
    assert_eq!(value("synwatch_target_ports{target=\"mixed\",proto=\"udp\",state=\"closed\"}"), Some(4.0));
    assert_eq!(value("synwatch_target_ports{target=\"mixed\",proto=\"udp\",state=\"filtered\"}"), Some(2.0));
    assert_eq!(value("synwatch_target_ports{target=\"mixed\",proto=\"udp\",state=\"open|filtered\"}"), Some(0.0));
    assert_eq!(
        value("synwatch_port_open{target=\"mixed\",ip=\"198.18.30.1\",port=\"53\",proto=\"udp\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(value("synwatch_port_open{target=\"mixed\",ip=\"198.18.30.2\",port=\"53\",proto=\"udp\"}"), Some(0.0));
    assert_eq!(value("synwatch_port_open{target=\"mixed\",ip=\"198.18.30.1\",port=\"22\",proto=\"tcp\"}"), Some(1.0));
    // The policy: udp/53 only. .2's NTP is unexpected; .2 answered but lacks udp/53; 22/tcp on
    // .1 is unexpected too.
    let violation = |ip: &str, port: u16, proto: &str, kind: &str| {
        value(&format!(
            "synwatch_port_policy_violation{{target=\"mixed\",ip=\"{ip}\",port=\"{port}\",proto=\"{proto}\",kind=\"{kind}\"}}"
        ))
    };
    assert_eq!(violation("198.18.30.2", 123, "udp", "unexpected_open"), Some(1.0), "{metrics}");
    assert_eq!(violation("198.18.30.2", 53, "udp", "expected_missing"), Some(1.0), "{metrics}");
    assert_eq!(violation("198.18.30.1", 22, "tcp", "unexpected_open"), Some(1.0), "{metrics}");
    // /sd offers the TCP opens, and UDP ones only when asked for by port.
    let (_, _, body) = serve.request("GET", "/sd", &[], "").unwrap();
    assert!(body.contains("198.18.30.1:22") && !body.contains(":53"), "{body}");
    let (status, _, body) = serve.request("GET", "/sd?port=udp/53", &[], "").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"198.18.30.1:53\"") && body.contains("\"__meta_synwatch_proto\":\"udp\""), "{body}");
    // /probe takes UDP ports too.
    let (status, _, body) = serve.request("GET", "/probe?target=198.18.30.0%2F30&ports=udp%2F53,123", &[], "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(crate::helpers::sample(&body, "probe_ports_open"), Some(2.0), "{body}");
    assert_eq!(crate::helpers::sample(&body, "probe_ports_closed"), Some(4.0), "{body}");
    assert_eq!(crate::helpers::sample(&body, "probe_ports_filtered"), Some(2.0), "{body}");
    assert_eq!(crate::helpers::sample(&body, "probe_ports_open_filtered"), Some(0.0), "{body}");
    // A real Prometheus with the shipped rules: a UDP port that opens is an opened change.
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/prometheus/synwatch.rules.yml");
    let scrape = format!(
        "  - job_name: synwatch\n    static_configs:\n      - targets: [\"{}\"]\nrule_files: [\"{}\"]\n",
        serve.address,
        rules.canonicalize().unwrap().display()
    );
    let Some(prometheus) = crate::helpers::Prometheus::start_in(test, &scratch, &scrape, Some(&lab)) else { return };
    wait_until("Prometheus to scrape synwatch", 60, || {
        (!prometheus.query("synwatch_target_ports{proto=\"udp\",state=\"open\"}").is_empty()).then_some(())
    });
    let opened_before = serve.value("synwatch_port_state_changes_total{change=\"opened\",target=\"mixed\"}").unwrap();
    let _new_dns = synwatch_lab::run_in_namespace(lab.target_namespace(), || {
        synwatch_lab::UdpServices::start(&[("198.18.30.2:53".parse().unwrap(), UdpService::Dns)])
    })
    .unwrap()
    .unwrap();
    wait_until("the UDP port to open", 60, || {
        let now = serve.value("synwatch_port_state_changes_total{change=\"opened\",target=\"mixed\"}")?;
        (now == opened_before + 1.0).then_some(())
    });
    let firing = wait_until("SynwatchPortOpened to fire in Prometheus", 90, || {
        let alerts = prometheus.query("ALERTS{alertname=\"SynwatchPortOpened\",alertstate=\"firing\"}");
        (!alerts.is_empty()).then_some(alerts)
    });
    assert_eq!(firing[0].0["target"], "mixed", "{firing:?}");
    serve.wait_for_scans("mixed", 2.0);
    let metrics = serve.metrics();
    assert_eq!(
        crate::helpers::sample(
            &metrics,
            "synwatch_port_open{target=\"mixed\",ip=\"198.18.30.2\",port=\"53\",proto=\"udp\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    // Exactly one change: nothing flaps.
    assert_eq!(
        crate::helpers::sample(&metrics, "synwatch_port_state_changes_total{change=\"opened\",target=\"mixed\"}"),
        Some(opened_before + 1.0)
    );
}

/// Issue 22: a target that rate-limits its ICMP port unreachable (the target kernel's own
/// defaults: six to a peer, then one a second). Without pacing most of its closed UDP ports
/// look open|filtered, and the summary says they may be closed; with the default per-host
/// pacing of UDP retries every one is found closed, and the summary says the retries, not the
/// first sends, found them (the limit's signature).
#[test]
fn issue_22_closed_udp_ports_of_an_icmp_rate_limited_host_are_found_closed_with_pacing() {
    let test = "issue_22_closed_udp_ports_of_an_icmp_rate_limited_host_are_found_closed_with_pacing";
    let config = LabConfig {
        target_ranges: vec![net("198.18.31.1/32")],
        kernel_icmp_limits: true,
        static_neighbour: true,
        ..LabConfig::default()
    };
    let Some(lab) = synwatch_lab::lab_or_skip(test, config) else { return };
    let closed = |output: &std::process::Output| {
        parse_jsonl_with_proto(output).iter().filter(|(_, _, _, state)| *state == Expected::Closed).count()
    };
    let started = std::time::Instant::now();
    let unpaced = scan_in_lab(&lab, &["198.18.31.1", "-p", "udp/1000-1029", "--udp-host-interval", "0"]);
    eprintln!("unpaced: {} of 30 closed in {:.1} s", closed(&unpaced), started.elapsed().as_secs_f64());
    assert_success(&unpaced);
    let stderr = String::from_utf8_lossy(&unpaced.stderr);
    assert!(closed(&unpaced) < 30, "the kernel limit did not show: {stderr}");
    assert!(stderr.contains("rate-limited") && stderr.contains("may be closed"), "{stderr}");
    // Let the target's token bucket refill before the paced scan.
    std::thread::sleep(std::time::Duration::from_secs(7));
    let started = std::time::Instant::now();
    let paced = scan_in_lab(&lab, &["198.18.31.1", "-p", "udp/1000-1029"]);
    eprintln!("paced: {} of 30 closed in {:.1} s", closed(&paced), started.elapsed().as_secs_f64());
    assert_success(&paced);
    let stderr = String::from_utf8_lossy(&paced.stderr);
    assert_eq!(closed(&paced), 30, "{stderr}");
    // The limit shows in the summary: the retries, not the first sends, drew most closed ports.
    assert!(stderr.contains("1 hosts answered port unreachable to retries"), "{stderr}");
    assert!(stderr.contains("looks rate-limited (retries paced per host found those ports closed)"), "{stderr}");
    assert!(!stderr.contains("may be closed"), "{stderr}");
}
