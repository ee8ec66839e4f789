//! The config parser: the embedded default, a full example, and a table of bad configs, each
//! rejected at the right line and column with a message naming what was expected.

use std::time::Duration;

use synwatch_engine::TimeSetting;
use synwatch_exporter::config::{ModeSetting, parse, render_effective};
use synwatch_exporter::{EMBEDDED_DEFAULT, load};

const GOOD: &str = "\
listen: 127.0.0.1:10046
state_dir: /var/lib/synwatch
engine: {mode: connect, max_rate: 20000}
defaults: {interval: 5m, timeout: 2m, retries: 2, wait: 2s}
details_budget: 500
targets:
  - name: dmz
    addresses: [192.0.2.0/28, \"2001:db8::10\", 192.0.2.100-192.0.2.110]
    ports: \"22,80,443,8000-8100\"
    interval: 1m
    details: true
  - name: web.v6
    addresses: [\"2001:db8::/126\"]
    ports: [22, 443, \"8080-8081\"]
    retries: 0
    wait: 0s
  - name: learned
    addresses: [192.0.2.200]
    ports: \"22\"
    retry_gap: 250ms
";

#[test]
fn a_full_config_is_read_with_defaults_applied() {
    let config = parse(GOOD, "good.yaml").unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:10046");
    assert_eq!(config.engine.mode, ModeSetting::Connect);
    assert_eq!(config.engine.max_rate, 20_000);
    assert_eq!(config.details_budget, 500);
    assert_eq!(config.targets.len(), 3);
    let dmz = &config.targets[0];
    assert_eq!(dmz.settings.interval, Duration::from_secs(60));
    assert_eq!(dmz.settings.timeout, Duration::from_secs(120));
    assert_eq!(dmz.settings.wait, TimeSetting::Fixed(Duration::from_secs(2)));
    assert_eq!(dmz.settings.retry_gap, TimeSetting::Auto, "the learned gap is the default");
    assert!(dmz.details);
    assert_eq!(dmz.ports.len(), 3 + 101);
    assert_eq!(dmz.addresses.iter().map(|range| range.len()).sum::<u128>(), 16 + 1 + 11);
    let web = &config.targets[1];
    assert_eq!(web.settings.interval, Duration::from_secs(300));
    assert_eq!((web.settings.retries, web.settings.wait), (0, TimeSetting::Fixed(Duration::ZERO)));
    let learned = &config.targets[2];
    assert_eq!(learned.settings.retry_gap, TimeSetting::Fixed(Duration::from_millis(250)));
    assert_eq!(learned.settings.wait, TimeSetting::Fixed(Duration::from_secs(2)), "defaults.wait applies");
    let embedded = parse(EMBEDDED_DEFAULT, "embedded").unwrap();
    assert_eq!((embedded.defaults.wait, embedded.defaults.retry_gap), (TimeSetting::Auto, TimeSetting::Auto));
    assert_eq!(web.ports.to_string(), "22,443,8080-8081");
    assert!(!web.details);
    // The effective config reads back as the same config.
    let rendered = render_effective(&config);
    assert!(rendered.contains("192.0.2.0/28"), "{rendered}");
    assert!(rendered.contains("192.0.2.100-192.0.2.110"), "{rendered}");
}

#[test]
fn issue_21_canaries_and_verify_fall_back_on_defaults() {
    let text = "defaults: {canaries: 0, verify: connect}\ntargets:\n  - {name: a, addresses: [192.0.2.1], ports: \"22\"}\n  \
                - {name: b, addresses: [192.0.2.2], ports: \"22\", canaries: 5, verify: none}\n\
                modules:\n  checked: {verify: connect, canaries: 2}\n";
    let config = parse(text, "issue21.yaml").unwrap();
    let (a, b) = (&config.targets[0].settings, &config.targets[1].settings);
    assert_eq!((a.canaries, a.verify.connect()), (0, true));
    assert_eq!((b.canaries, b.verify.connect()), (5, false));
    let module = &config.modules["checked"];
    assert_eq!((module.canaries, module.verify.connect()), (2, true));
    let plain = parse("targets: [{name: a, addresses: [192.0.2.1], ports: \"22\"}]\n", "plain.yaml").unwrap();
    assert_eq!((plain.targets[0].settings.canaries, plain.targets[0].settings.verify.connect()), (3, false));
}

#[test]
fn issue_22_udp_host_interval_falls_back_on_defaults_and_udp_payloads_are_loaded_at_their_place() {
    let text = "defaults: {udp_host_interval: 2s}\ntargets:\n  - {name: a, addresses: [192.0.2.1], ports: \"udp/53\"}\n  \
                - {name: b, addresses: [192.0.2.2], ports: \"udp/53\", udp_host_interval: 0s}\n\
                modules:\n  slow: {udp_host_interval: 3s}\n";
    let config = parse(text, "issue22.yaml").unwrap();
    assert_eq!(config.targets[0].settings.udp_host_interval, Duration::from_secs(2));
    assert_eq!(config.targets[1].settings.udp_host_interval, Duration::ZERO);
    assert_eq!(config.modules["slow"].udp_host_interval, Duration::from_secs(3));
    let plain = parse("targets: [{name: a, addresses: [192.0.2.1], ports: \"22\"}]\n", "plain.yaml").unwrap();
    assert_eq!(plain.targets[0].settings.udp_host_interval, Duration::from_millis(1200));
    // engine.udp_payloads is read by load(), relative to the config's directory.
    let directory = std::env::temp_dir().join(format!("synwatch-issue22-config-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let config_path = directory.join("synwatch.yaml");
    std::fs::write(
        &config_path,
        "engine: {udp_payloads: payloads.txt}\ntargets: [{name: a, addresses: [192.0.2.1], ports: \"udp/9999\"}]\n",
    )
    .unwrap();
    std::fs::write(directory.join("payloads.txt"), "# mine\nudp/9999 text \"ping\"\n").unwrap();
    let config = load(&config_path).unwrap();
    assert_eq!(config.udp_payloads.for_port(9999).bytes, b"ping");
    assert_ne!(config.udp_payloads.for_port(53).bytes, b"", "the built-in payloads stay under the file's");
    std::fs::write(directory.join("payloads.txt"), "# mine\nudp/9999 hex 0\n").unwrap();
    let error = load(&config_path).unwrap_err();
    let missing = directory.join("missing.txt");
    std::fs::write(
        &config_path,
        format!(
            "engine: {{udp_payloads: {}}}\ntargets: [{{name: a, addresses: [192.0.2.1], ports: \"22\"}}]\n",
            missing.display()
        ),
    )
    .unwrap();
    let missing_error = load(&config_path).unwrap_err();
    let _ = std::fs::remove_dir_all(&directory);
    assert_eq!((error.origin.ends_with("payloads.txt"), error.line, error.column), (true, 2, 14), "{error}");
    assert!(missing_error.origin.ends_with("missing.txt") && missing_error.message.contains("engine.udp_payloads"));
}

#[test]
fn issue_6_names_listeners_and_expected_ports_are_read() {
    use synwatch_exporter::config::{ExpectHosts, Protocol};
    let text = "\
resolve_hostnames: true
dns: {nameservers: [\"192.0.2.53\", \"[2001:db8::53]:5353\"], timeout: 500ms, negative_ttl: 1m}
listeners:
  enabled: true
  include_ports: \"1-1023,9100\"
  exclude_processes: [chronyd]
  interval: 5s
  expect_listening: [22, \"udp/53\"]
  forbid_listening: [\"tcp/23\", \"tcp/6000-6010\"]
targets:
  - name: web
    addresses: [192.0.2.0/29]
    ports: \"22,80,443,3306\"
    expect: {open: \"80,443\", closed: \"3306\", hosts: responding}
";
    let config = parse(text, "names.yaml").unwrap();
    assert!(config.resolve_hostnames);
    assert_eq!(config.dns.nameservers[0].to_string(), "192.0.2.53:53");
    assert_eq!(config.dns.nameservers[1].to_string(), "[2001:db8::53]:5353");
    assert_eq!(config.dns.timeout, Duration::from_millis(500));
    assert_eq!(config.dns.max_ttl, Duration::from_secs(3600));
    let listeners = &config.listeners;
    assert!(listeners.enabled);
    assert_eq!(listeners.interval, Duration::from_secs(5));
    assert_eq!(listeners.exclude_processes, vec!["chronyd".to_string()]);
    assert_eq!(listeners.expect_listening[0].protocol, Protocol::Tcp);
    assert_eq!(listeners.expect_listening[1].to_string(), "udp/53");
    assert_eq!(listeners.forbid_listening[1].ports.len(), 11);
    let expect = config.targets[0].expect.as_ref().unwrap();
    assert_eq!(expect.open.as_ref().unwrap().to_string(), "80,443");
    assert_eq!(expect.hosts, ExpectHosts::Responding);
    let rendered = render_effective(&config);
    assert!(rendered.contains("udp/53") && rendered.contains("resolve_hostnames: true"), "{rendered}");
    // Off by default.
    let plain = parse(EMBEDDED_DEFAULT, "<embedded>").unwrap();
    assert!(!plain.resolve_hostnames && !plain.listeners.enabled && plain.targets[0].expect.is_none());
}

#[test]
fn the_embedded_default_scans_loopback_only() {
    let config = parse(EMBEDDED_DEFAULT, "<embedded>").unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:10045");
    for target in &config.targets {
        for range in &target.addresses {
            let first = range.first_address();
            assert!(first.is_loopback() && range.len() == 1, "{range} is not loopback");
        }
        assert_eq!(target.settings.interval, Duration::from_secs(60));
    }
}

#[test]
fn shipped_configs_parse() {
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "yaml") {
            let config = load(&path).unwrap_or_else(|error| panic!("{error}"));
            for target in &config.targets {
                assert!(target.addresses.iter().all(|range| range.first_address().is_loopback()), "{path:?}");
            }
            seen += 1;
        }
    }
    assert!(seen > 0, "no config in {directory}");
}

/// (config, line, column, a word the message must contain).
const BAD: &[(&str, usize, usize, &str)] = &[
    ("", 1, 1, "empty"),
    ("targets: []\n", 1, 1, "would do nothing"),
    ("listen: 127.0.0.1:10045\n", 1, 1, "neither ondemand.enabled nor listeners.enabled"),
    ("listen: 127.0.0.1:10045\ntargets: []\nondemand: {enabled: false}\n", 2, 1, "no targets"),
    ("listen: 127.0.0.1:10045\ncolour: blue\n", 2, 1, "unknown field `colour`"),
    ("listen: localhost\n", 1, 9, "address and port"),
    ("engine: {mode: fast}\n", 1, 16, "unknown variant `fast`"),
    ("engine: {max_rate: 0}\n", 1, 20, "max_rate: 0: expected 1 to 100000000"),
    ("engine: {max_rate: -5}\n", 1, 20, "max_rate"),
    ("engine: {rate: 5}\n", 1, 10, "unknown field `rate`"),
    ("defaults: {interval: 0s}\n", 1, 22, "above zero"),
    ("defaults: {interval: 5}\n", 1, 22, "needs a unit, such as 5s or 5m"),
    ("defaults: {interval: soon}\n", 1, 22, "soon"),
    ("defaults: {retries: 11}\n", 1, 21, "retries: 11: expected 0 to 10"),
    // Issue 21: canaries and verification.
    ("defaults: {canaries: 9}\n", 1, 22, "canaries: 9: expected 0 to 8"),
    ("defaults: {verify: tcp}\n", 1, 20, "unknown variant `tcp`, expected one of none, connect"),
    ("modules:\n  web: {canaries: -1}\n", 2, 19, "modules.web.canaries"),
    ("defaults: {wait: 1x}\n", 1, 18, "1x"),
    ("targets:\n  - name: a\n    addresses: [192.0.2.0/33]\n    ports: \"22\"\n", 3, 17, "192.0.2.0/33"),
    ("targets:\n  - name: a\n    addresses: [not..an.address]\n    ports: \"22\"\n", 3, 17, "empty label"),
    ("targets:\n  - name: a\n    addresses: [192.0.2.300]\n    ports: \"22\"\n", 3, 17, "not an address"),
    (
        "targets:\n  - name: a\n    addresses: [ipv5:db.example.org]\n    ports: \"22\"\n",
        3,
        17,
        "unknown family prefix",
    ),
    (
        "targets:\n  - name: a\n    addresses: [db.example.org]\n    family: ipv5\n    ports: \"22\"\n",
        4,
        13,
        "expected any, ipv4 or ipv6",
    ),
    ("targets:\n  - name: a\n    addresses: [db.example.org]\n", 2, 11, "no ports"),
    (
        "targets:\n  - name: a\n    addresses: [db.example.org]\n    ports: \"22\"\n    labels: {ip: x}\n",
        5,
        13,
        "sets itself",
    ),
    (
        "targets:\n  - name: a\n    addresses: [db.example.org]\n    ports: \"22\"\n    labels: {\"0x\": x}\n",
        5,
        13,
        "label name",
    ),
    (
        "targets:\n  - name: a\n    addresses: [db.example.org]\n    ports: \"22\"\n    labels: {__x: x}\n",
        5,
        13,
        "reserved by Prometheus",
    ),
    ("targets:\n  - name: a\n    addresses: []\n    ports: \"22\"\n", 3, 16, "at least one address"),
    ("targets:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: \"70000\"\n", 4, 12, "70000"),
    ("targets:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: [22, 70000]\n", 4, 17, "port 70000"),
    ("targets:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: [0]\n", 4, 13, "port 0"),
    ("targets:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: \"80-22\"\n", 4, 12, "80-22"),
    ("targets:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: \"22,,80\"\n", 4, 12, "empty item"),
    (
        "targets:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: \"22\"\n  - name: a\n    addresses: [192.0.2.2]\n    ports: \"22\"\n",
        5,
        11,
        "duplicate target name",
    ),
    ("targets:\n  - name: \"bad name\"\n    addresses: [192.0.2.1]\n    ports: \"22\"\n", 2, 11, "bad name"),
    ("targets:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: \"22\"\n    interval: 0m\n", 5, 15, "above zero"),
    ("targets:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: \"22\"\n    details: yes\n", 5, 14, "bool"),
    (
        "targets:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: \"22\"\n    schedule: 1m\n",
        5,
        5,
        "unknown field `schedule`",
    ),
    ("targets:\n  - name: a\n    ports: \"22\"\n", 2, 11, "at least one address"),
    ("targets:\n  - addresses: [192.0.2.1]\n    ports: \"22\"\n", 2, 5, "missing field `name`"),
    ("details_budget: many\n", 1, 17, "details_budget"),
    ("engine: {max_concurrent_scans: 0}\n", 1, 32, "max_concurrent_scans: 0: expected 1 to 64"),
    // Issue 5: the on-demand section and modules.
    (
        "ondemand: {enabled: true}\ntargets: [{name: a, addresses: [192.0.2.1], ports: \"22\"}]\n",
        1,
        1,
        "allow_targets is empty",
    ),
    ("ondemand: {allow_targets: [example.com]}\n", 1, 28, "address"),
    ("ondemand: {rate_limit: 0}\n", 1, 24, "above 0"),
    ("ondemand: {burst: -1}\n", 1, 19, "burst"),
    ("ondemand: {max_probes_per_request: 0}\n", 1, 36, "max_probes_per_request: 0: expected 1"),
    ("ondemand: {timeout_offset: soon}\n", 1, 28, "duration"),
    ("ondemand: {open: true}\n", 1, 12, "unknown field `open`"),
    ("modules:\n  web: {ports: \"0\"}\n", 2, 16, "ports"),
    ("modules:\n  web: {port: 80}\n", 2, 9, "unknown field `port`"),
    ("modules:\n  \"a b\": {ports: \"80\"}\n", 2, 3, "target name"),
    ("targets:\n  - name: m\n    addresses: [\"ff02::1\"]\n    ports: \"22\"\n", 2, 11, "built-in exclusions"),
    // An unclosed flow sequence points at its bracket (serde_yaml pointed at the end of the text).
    ("targets: [\n", 1, 10, "unclosed bracket"),
    // Issue 6: names, listeners, expected ports.
    ("resolve_hostnames: sometimes\n", 1, 20, "bool"),
    ("dns: {nameservers: [ns1.example.org]}\n", 1, 21, "name server address"),
    ("dns: {timeout: 0s}\n", 1, 16, "above zero"),
    ("dns: {cache_size: 0}\n", 1, 19, "expected 1 to"),
    ("dns: {min_ttl: 2h, max_ttl: 1h}\ntargets: [{name: a, addresses: [192.0.2.1], ports: \"22\"}]\n", 1, 1, "min_ttl"),
    ("listeners: {enabled: true, interval: 0s}\n", 1, 38, "above zero"),
    ("listeners: {include_ports: \"22-\"}\n", 1, 28, "ports"),
    ("listeners: {include_processes: [\"a-very-long-process-name\"]}\n", 1, 33, "15 bytes"),
    ("listeners: {expect_listening: [\"sctp/22\"]}\n", 1, 32, "unknown protocol"),
    ("listeners: {forbid_listening: [70000]}\n", 1, 32, "port 70000"),
    (
        "listeners: {expect_listening: [22], forbid_listening: [\"tcp/20-30\"]}\ntargets: [{name: a, addresses: [192.0.2.1], ports: \"22\"}]\n",
        1,
        1,
        "tcp/22 is in both",
    ),
    ("listeners: {watch: true}\n", 1, 13, "unknown field `watch`"),
    // Issue 23: the exposure history.
    ("history: {retention: 0s}\n", 1, 22, "above zero"),
    ("history: {max_changes: 5}\n", 1, 24, "expected 1000 to"),
    ("history: {prune_interval: often}\n", 1, 27, "duration"),
    ("history: {keep: 1d}\n", 1, 11, "unknown field `keep`"),
    (
        "targets:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: \"22\"\n    expect: {open: \"80\"}\n",
        2,
        11,
        "does not scan",
    ),
    (
        "targets:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: \"22,80\"\n    expect: {open: \"22\", closed: \"22\"}\n",
        2,
        11,
        "both expect.open and expect.closed",
    ),
    ("targets:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: \"22\"\n    expect: {}\n", 2, 11, "needs `open`"),
    (
        "targets:\n  - name: a\n    addresses: [192.0.2.1]\n    ports: \"22\"\n    expect: {hosts: some, open: \"22\"}\n",
        5,
        21,
        "unknown variant `some`",
    ),
];

#[test]
fn every_bad_config_is_rejected_at_its_line_and_column() {
    assert!(BAD.len() >= 20);
    let mut wrong = Vec::new();
    for (number, &(text, line, column, needle)) in BAD.iter().enumerate() {
        match parse(text, "bad.yaml") {
            Ok(_) => wrong.push(format!("#{number} accepted: {text:?}")),
            Err(error) => {
                let shown = error.to_string();
                if (error.line, error.column) != (line, column) || !shown.contains(needle) {
                    wrong.push(format!("#{number} {text:?}: got {shown:?}, want {line}:{column} with {needle:?}"));
                }
                assert!(shown.starts_with(&format!("bad.yaml:{}:{}: ", error.line, error.column)));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
