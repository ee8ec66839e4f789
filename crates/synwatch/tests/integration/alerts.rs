//! Issue 6: the shipped alert rules and Grafana dashboard. promtool checks the rules and runs
//! their unit tests (each alert has a firing case), and every synwatch metric the rules and the
//! dashboard query is one a running `synwatch serve` exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{Scratch, Serve, package_or_skip};

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging")
}

fn rules() -> serde_json::Value {
    serde_saphyr::from_str(&std::fs::read_to_string(packaging().join("prometheus/synwatch.rules.yml")).unwrap())
        .unwrap()
}

fn alert_names(rules: &serde_json::Value) -> Vec<(String, String)> {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .map(|rule| (rule["alert"].as_str().unwrap().to_string(), rule["expr"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn issue_6_alert_rules_pass_promtool_and_every_alert_has_a_firing_unit_test() {
    let test = "issue_6_alert_rules_pass_promtool_and_every_alert_has_a_firing_unit_test";
    let alerts = alert_names(&rules());
    let wanted = [
        "SynwatchExporterDown",
        "SynwatchScanFailing",
        "SynwatchScanStale",
        "SynwatchPortOpened",
        "SynwatchUnexpectedOpenPort",
        "SynwatchExpectedPortMissing",
        "SynwatchListenerDown",
        "SynwatchListenerPolicyViolation",
        "SynwatchReceiveDrops",
    ];
    for name in wanted {
        assert!(alerts.iter().any(|(alert, _)| alert == name), "the rules have no {name}");
    }
    let unit_tests: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(packaging().join("prometheus/synwatch.rules.test.yml")).unwrap(),
    )
    .unwrap();
    let firing: BTreeSet<&str> = unit_tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|case| case["alert_rule_test"].as_array().unwrap())
        .filter(|check| check["exp_alerts"].as_array().is_some_and(|alerts| !alerts.is_empty()))
        .map(|check| check["alertname"].as_str().unwrap())
        .collect();
    for (alert, _) in &alerts {
        assert!(firing.contains(alert.as_str()), "no unit test makes {alert} fire");
    }
    if !package_or_skip(test, "promtool", "prometheus") {
        return;
    }
    for arguments in [["check", "rules", "synwatch.rules.yml"], ["test", "rules", "synwatch.rules.test.yml"]] {
        let output =
            Command::new("promtool").args(arguments).current_dir(packaging().join("prometheus")).output().unwrap();
        assert!(
            output.status.success(),
            "promtool {arguments:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The `synwatch_*` names in a PromQL expression.
fn metric_names(expression: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expression;
    while let Some(start) = rest.find("synwatch_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        // Label values such as target="synwatch_x" are not metrics; none are used here.
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn issue_6_rules_and_dashboard_query_only_metrics_that_synwatch_exports() {
    let scratch = Scratch::new("issue6-names");
    let config = scratch.join("synwatch.yaml");
    // Every optional family on: names, listeners, a policy. Loopback only (names of loopback
    // addresses are answered by the resolver itself, without a query).
    std::fs::write(
        &config,
        "resolve_hostnames: true\nlisteners: {enabled: true, interval: 1s}\ntargets:\n  - name: lo\n    addresses: [127.0.0.1]\n    \
         ports: \"1\"\n    interval: 1h\n    details: true\n    expect: {closed: \"1\"}\n",
    )
    .unwrap();
    let serve = Serve::start(&scratch, &["--config", config.to_str().unwrap()]);
    crate::helpers::wait_until("the first scan and listener reading", 30, || {
        let metrics = serve.metrics();
        (metrics.contains("synwatch_target_last_scan_success{") && metrics.contains("synwatch_listeners_forbidden "))
            .then_some(())
    });
    let exported: BTreeSet<String> = serve
        .metrics()
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .flat_map(|line| {
            let mut parts = line.split(' ');
            let name = parts.next().unwrap().to_string();
            let kind = parts.next().unwrap_or("");
            let mut names = vec![name.clone()];
            if kind == "histogram" {
                names.extend(["_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}")));
            }
            names
        })
        .collect();
    let mut used = BTreeSet::new();
    for (_, expression) in alert_names(&rules()) {
        used.extend(metric_names(&expression));
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(packaging().join("grafana/synwatch-dashboard.json")).unwrap())
            .expect("the dashboard is valid JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            used.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(definition) = variable["definition"].as_str() {
            used.extend(metric_names(definition));
        }
    }
    assert!(used.len() >= 20, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|name| !exported.contains(*name)).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
}
