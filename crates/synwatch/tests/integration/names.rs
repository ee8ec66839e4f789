//! Issue 24: targets by name against a real DNS server (dnsmasq, A and AAAA records for lab
//! hosts, changed while `serve` runs), `file_sd` target files whose labels reach a real
//! Prometheus, `/probe` and the scans API refusing a name that resolves partly outside the
//! allowlist with zero packets at either address, and `synwatch scan` with names and file_sd
//! files.

use ipnetwork::IpNetwork;
use synwatch_lab::{Expected, LabConfig};

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::helpers::{
    LabDnsmasq, Prometheus, Scratch, Serve, assert_success, free_port, package_or_skip, parse_jsonl, sample,
    scan_in_lab, synwatch, wait_until,
};

/// A dnsmasq answering only from a hosts file for `synwatch.test` (anything else there is
/// NXDOMAIN; records with TTL 0); the test changes the records while it runs.
struct NameServer {
    server: LabDnsmasq,
    port: u16,
    hosts: std::path::PathBuf,
}

impl NameServer {
    fn start(lab: &synwatch_lab::Lab, scratch: &Scratch, records: &str) -> NameServer {
        let hosts = scratch.join("dns-hosts");
        std::fs::write(&hosts, records).unwrap();
        let arguments = [
            "--local=/synwatch.test/".to_string(),
            "--local-ttl=0".into(),
            format!("--addn-hosts={}", hosts.display()),
        ];
        let server = LabDnsmasq::start(lab, scratch, &arguments);
        NameServer { port: server.port, server, hosts }
    }

    /// Replaces the records (dnsmasq reads its hosts files again on SIGHUP).
    fn set(&self, records: &str) {
        std::fs::write(&self.hosts, records).unwrap();
        self.signal(nix::sys::signal::Signal::SIGHUP);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        self.server.signal(signal);
    }
}

/// The sample of `synwatch_port_open` for a named target's address and port.
fn port_open(serve: &Serve, ip: &str, port: u16) -> Option<f64> {
    serve.value(&format!(
        "synwatch_port_open{{target=\"db\",env=\"lab\",ip=\"{ip}\",hostname=\"db.synwatch.test\",port=\"{port}\",proto=\"tcp\"}}"
    ))
}

/// A named target's results equal the ground truth of the addresses its name has at each scan;
/// a changed record moves the scan; NXDOMAIN and a silent name server are counted by reason and
/// keep the results; the target labels of a `file_sd` file reach a real Prometheus.
#[test]
fn issue_24_named_targets_follow_a_real_name_server_and_file_sd_labels_reach_prometheus() {
    let test = "issue_24_named_targets_follow_a_real_name_server_and_file_sd_labels_reach_prometheus";
    if !package_or_skip(test, "dnsmasq", "dnsmasq-base") {
        return;
    }
    let config = LabConfig {
        target_ranges: vec!["198.18.8.0/29".parse::<IpNetwork>().unwrap(), "2001:2::8:0/125".parse().unwrap()],
        listeners: vec![
            "198.18.8.2:8080".parse().unwrap(),
            "[2001:2::8:2]:8080".parse().unwrap(),
            "198.18.8.5:8080".parse().unwrap(),
            "198.18.8.5:9090".parse().unwrap(),
            "198.18.8.6:22".parse().unwrap(),
        ],
        ..LabConfig::default()
    };
    let Some(lab) = synwatch_lab::lab_or_skip(test, config) else {
        return;
    };
    let scratch = Scratch::new("issue24-names");
    let dns = NameServer::start(&lab, &scratch, "198.18.8.2 db.synwatch.test\n2001:2::8:2 db.synwatch.test\n");
    std::fs::create_dir_all(scratch.join("targets")).unwrap();
    std::fs::write(
        scratch.join("targets/ssh.yml"),
        "- targets: [\"198.18.8.6:22\"]\n  labels: {team: platform, env: lab}\n",
    )
    .unwrap();
    let config = scratch.join("synwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "dns: {{nameservers: [\"127.0.0.1:{}\"], timeout: 1s}}\ntargets_files: [targets/*.yml]\n\
             defaults: {{interval: 1s, retries: 0, wait: 300ms}}\ntargets:\n  - name: db\n    \
             addresses: [db.synwatch.test]\n    ports: \"8080,9090\"\n    details: true\n    labels: {{env: lab}}\n",
            dns.port
        ),
    )
    .unwrap();
    let state = scratch.join("state");
    let serve = Serve::start_in_lab(
        &lab,
        &scratch,
        &["--config", config.to_str().unwrap(), "--state-dir", state.to_str().unwrap()],
    );
    wait_until("the name's two addresses scanned", 30, || {
        (port_open(&serve, "2001:2::8:2", 8080) == Some(1.0)).then_some(())
    });
    // Every probe of the scan agrees with the lab's truth for the name's addresses, and no
    // other address was scanned.
    let metrics = serve.metrics();
    for (ip, port) in [("198.18.8.2", 8080), ("198.18.8.2", 9090), ("2001:2::8:2", 8080), ("2001:2::8:2", 9090)] {
        let open = lab.expected(ip.parse().unwrap(), port) == Expected::Open;
        assert_eq!(port_open(&serve, ip, port), Some(f64::from(u8::from(open))), "{ip}:{port}\n{metrics}");
    }
    let db_series = metrics.lines().filter(|line| line.starts_with("synwatch_port_open{target=\"db\"")).count();
    assert_eq!(db_series, 4, "{metrics}");
    // `synwatch scan` with the same name server: the same truth, each line named.
    let nameserver = format!("127.0.0.1:{}", dns.port);
    let output = scan_in_lab(&lab, &["db.synwatch.test", "-p", "8080,9090", "--nameserver", &nameserver]);
    assert_success(&output);
    let expected: BTreeSet<(IpAddr, u16, Expected)> =
        [("198.18.8.2", 8080), ("198.18.8.2", 9090), ("2001:2::8:2", 8080), ("2001:2::8:2", 9090)]
            .iter()
            .map(|(ip, port)| (ip.parse().unwrap(), *port, lab.expected(ip.parse().unwrap(), *port)))
            .collect();
    assert_eq!(parse_jsonl(&output), expected);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.lines().all(|line| line.contains("\"name\":\"db.synwatch.test\"")), "{stdout}");
    let output = scan_in_lab(&lab, &["gone.synwatch.test", "-p", "8080", "--nameserver", &nameserver]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("did not resolve (not_found)"), "{stderr}");

    // The A record moves to .5 (the AAAA record goes): the next scans are there.
    dns.set("198.18.8.5 db.synwatch.test\n");
    wait_until("the scan at the new address", 30, || {
        (port_open(&serve, "198.18.8.5", 9090) == Some(1.0)).then_some(())
    });
    let metrics = serve.metrics();
    assert_eq!(port_open(&serve, "198.18.8.2", 8080), None, "{metrics}");
    assert_eq!(sample(&metrics, "synwatch_target_address_changes_total{target=\"db\"}"), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "synwatch_port_state_changes_total{change=\"closed\",target=\"db\"}"), Some(0.0));
    assert!(serve.log_text().contains("a name's addresses changed"), "the move is logged");
    // The exposure history keeps the name beside the address.
    let endpoint = wait_until("the history's endpoint at the new address", 30, || {
        let (status, _, body) = serve.request("GET", "/api/v1/endpoints?target=db&state=open", &[], "").ok()?;
        let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
        let found = answer["endpoints"].as_array()?.iter().find(|endpoint| endpoint["ip"] == "198.18.8.5")?.clone();
        (status == 200).then_some(found)
    });
    assert_eq!(endpoint["hostname"], "db.synwatch.test", "{endpoint}");

    // NXDOMAIN: counted, the results stay, nothing closes.
    dns.set("198.18.8.6 other.synwatch.test\n");
    let not_found = "synwatch_target_resolve_failures_total{reason=\"not_found\",target=\"db\"}";
    wait_until("NXDOMAIN counted", 30, || (serve.value(not_found) >= Some(2.0)).then_some(()));
    assert_eq!(port_open(&serve, "198.18.8.5", 9090), Some(1.0), "the previous results stay");
    assert_eq!(serve.value("synwatch_target_last_scan_success{target=\"db\",env=\"lab\"}"), Some(0.0));
    assert!(serve.value("synwatch_scans_total{result=\"resolve_failed\",target=\"db\"}") >= Some(2.0));
    // A name server that does not answer: a time-out, the same way.
    dns.set("198.18.8.5 db.synwatch.test\n");
    std::thread::sleep(std::time::Duration::from_millis(300));
    dns.signal(nix::sys::signal::Signal::SIGSTOP);
    let timeout = "synwatch_target_resolve_failures_total{reason=\"timeout\",target=\"db\"}";
    wait_until("the time-out counted", 30, || (serve.value(timeout) >= Some(1.0)).then_some(()));
    assert_eq!(port_open(&serve, "198.18.8.5", 9090), Some(1.0));
    assert_eq!(serve.value("synwatch_port_state_changes_total{change=\"closed\",target=\"db\"}"), Some(0.0));
    dns.signal(nix::sys::signal::Signal::SIGCONT);

    // The file's target, with its labels, in /metrics and in a real Prometheus scrape; the
    // named target's hostname label too.
    let ssh = "synwatch_target_ports{target=\"ssh\",env=\"lab\",team=\"platform\",proto=\"tcp\",state=\"open\"}";
    wait_until("the file's target", 30, || (serve.value(ssh) == Some(1.0)).then_some(()));
    let scrape = format!("  - job_name: synwatch\n    static_configs:\n      - targets: [\"{}\"]\n", serve.address);
    let Some(prometheus) = Prometheus::start_in(test, &scratch, &scrape, Some(&lab)) else {
        return;
    };
    let found = wait_until("Prometheus to scrape the file's labels", 60, || {
        let found = prometheus.query("synwatch_target_ports{team=\"platform\",state=\"open\"}");
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(found[0].0["target"], "ssh");
    assert_eq!(found[0].0["env"], "lab");
    assert_eq!(found[0].1, 1.0);
    let named = wait_until("Prometheus to scrape the hostname label", 60, || {
        let named = prometheus.query("synwatch_port_open{hostname=\"db.synwatch.test\",port=\"9090\"}");
        (!named.is_empty()).then_some(named)
    });
    assert_eq!(named[0].0["ip"], "198.18.8.5");
}

/// `/probe` and the scans API resolve a name once and check every address: a name inside the
/// allowlist is scanned; one with an address outside is refused whole, with no SYN at either
/// address.
#[test]
fn issue_24_a_name_resolving_partly_outside_the_allowlist_is_refused_with_zero_packets() {
    let test = "issue_24_a_name_resolving_partly_outside_the_allowlist_is_refused_with_zero_packets";
    if !package_or_skip(test, "dnsmasq", "dnsmasq-base") {
        return;
    }
    let config = LabConfig {
        target_ranges: vec!["198.18.9.0/29".parse::<IpNetwork>().unwrap(), "198.18.10.0/29".parse().unwrap()],
        listeners: vec!["198.18.9.2:8080".parse().unwrap(), "198.18.9.3:8080".parse().unwrap()],
        ..LabConfig::default()
    };
    let Some(lab) = synwatch_lab::lab_or_skip(test, config) else {
        return;
    };
    let scratch = Scratch::new("issue24-probe");
    let dns = NameServer::start(
        &lab,
        &scratch,
        "198.18.9.2 inside.synwatch.test\n198.18.9.3 split.synwatch.test\n198.18.10.3 split.synwatch.test\n",
    );
    let config = scratch.join("synwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "dns: {{nameservers: [\"127.0.0.1:{}\"], timeout: 1s}}\nondemand: {{enabled: true, allow_targets: [198.18.9.0/29], \
             rate_limit: 100, burst: 100}}\n",
            dns.port
        ),
    )
    .unwrap();
    let serve = Serve::start_in_lab(&lab, &scratch, &["--config", config.to_str().unwrap()]);
    let syns_before = lab.syns_received().unwrap();
    for (method, path, body) in [
        ("GET", "/probe?target=split.synwatch.test&ports=8080", ""),
        ("GET", "/probe?target=198.18.9.2,split.synwatch.test&ports=8080", ""),
        ("POST", "/api/v1/scans", r#"{"targets": ["split.synwatch.test"], "ports": "8080"}"#),
    ] {
        let (status, _, answer) = serve.request(method, path, &[], body).unwrap();
        assert_eq!(status, 403, "{path} {body}: {answer}");
        assert!(answer.contains("198.18.10.3") && answer.contains("nothing was scanned"), "{answer}");
    }
    let (status, _, answer) = serve.request("GET", "/probe?target=gone.synwatch.test&ports=8080", &[], "").unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("did not resolve (not_found)"), "{answer}");
    assert_eq!(lab.syns_received().unwrap(), syns_before, "a refused request sent packets");
    // Inside: answered, over exactly the address checked (one SYN per port plus the canaries
    // of a host that answered SYN-ACK).
    let (status, _, answer) =
        serve.request("GET", "/probe?target=inside.synwatch.test&ports=8080,8081", &[], "").unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(sample(&answer, "probe_success"), Some(1.0), "{answer}");
    assert_eq!(sample(&answer, "probe_ports_open"), Some(1.0), "{answer}");
    // The counter sees the allowed probe's SYNs (two ports, the first canary, and the first
    // probe to a fresh route, which the kernel sends once more while it resolves the next
    // hop), so it would have seen any SYN of the refused requests above.
    let sent = lab.syns_received().unwrap() - syns_before;
    assert!((3..=4).contains(&sent), "{sent} SYNs for the allowed probe");
    let (status, _, answer) = serve
        .request("POST", "/api/v1/scans", &[], r#"{"targets": ["inside.synwatch.test"], "ports": "8080"}"#)
        .unwrap();
    assert_eq!(status, 202, "{answer}");
}

/// `synwatch scan` takes a name from /etc/hosts (no DNS query leaves the machine) and a
/// Prometheus file_sd file, whose host:port entries add their ports.
#[test]
fn issue_24_scan_takes_names_and_file_sd_files() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let output = std::process::Command::new(synwatch())
        .args(["scan", "localhost", "-p", &port.to_string(), "--mode", "connect", "--format", "jsonl", "--no-progress"])
        .output()
        .unwrap();
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // /etc/hosts may give localhost ::1 too; the listener is on 127.0.0.1 only.
    let line: serde_json::Value = stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|line| line["ip"] == "127.0.0.1")
        .unwrap_or_default();
    assert_eq!(line["port"].as_u64(), Some(u64::from(port)), "{stdout}");
    assert_eq!((line["name"].as_str(), line["state"].as_str()), (Some("localhost"), Some("open")), "{stdout}");
    // CSV carries the name in its last column.
    let output = std::process::Command::new(synwatch())
        .args(["scan", "localhost", "-p", &port.to_string(), "--mode", "connect", "--format", "csv", "--no-progress"])
        .output()
        .unwrap();
    assert_success(&output);
    let csv = String::from_utf8_lossy(&output.stdout);
    assert!(csv.starts_with("ip,port,proto,state,rtt_us,suspect,verify,name\n"), "{csv}");
    assert!(csv.lines().any(|line| line.starts_with("127.0.0.1,") && line.ends_with(",localhost")), "{csv}");
    // A file_sd file: the entry's own port is scanned beside -p's.
    let scratch = Scratch::new("issue24-scan");
    let file = scratch.join("targets.json");
    std::fs::write(&file, format!(r#"[{{"targets": ["127.0.0.1:{port}"], "labels": {{"env": "lab"}}}}]"#)).unwrap();
    let closed = free_port();
    let output = std::process::Command::new(synwatch())
        .args(["scan", &format!("@{}", file.display()), "-p", &closed.to_string(), "--mode", "connect"])
        .args(["--format", "jsonl", "--states", "all", "--no-progress"])
        .output()
        .unwrap();
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let states: Vec<(u64, String)> = stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .map(|line| (line["port"].as_u64().unwrap(), line["state"].as_str().unwrap().to_string()))
        .collect();
    assert!(states.contains(&(u64::from(port), "open".to_string())), "{stdout}");
    assert!(states.contains(&(u64::from(closed), "closed".to_string())), "{stdout}");
    // A bad entry is refused at its line and column; a name that is no name says why.
    std::fs::write(&file, "- targets: [\"127.0.0.1:0\"]\n").unwrap();
    let output = std::process::Command::new(synwatch())
        .args(["scan", &format!("@{}", file.display()), "-p", "22", "--mode", "connect", "--no-progress"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("targets.json:1:13") && stderr.contains("port"), "{stderr}");
    let output = std::process::Command::new(synwatch())
        .args(["scan", "db..synwatch.test", "-p", "22", "--no-progress"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("empty label"), "{stderr}");
    drop(listener);
}
