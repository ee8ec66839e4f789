//! The landing page: the targets, their last scan, and links to the other routes.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::Config;
use crate::results::ScanResults;

use super::targets::TargetTable;

/// The landing page (HTML): targets, their last scan, links.
pub(crate) fn landing_page(config: &Config, table: &TargetTable) -> String {
    let mut page = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>synwatch</title></head><body>\n<h1>synwatch</h1>\n\
         <p><a href=\"/metrics\">/metrics</a> · <a href=\"/sd\">/sd</a> · <a href=\"/-/healthy\">/-/healthy</a> · <a href=\"/-/ready\">/-/ready</a></p>\n\
         <table border=\"1\" cellpadding=\"4\"><tr><th>target</th><th>addresses</th><th>ports</th><th>interval</th>\
         <th>last scan</th><th>result</th><th>open</th><th>closed</th><th>filtered</th></tr>\n",
    );
    for entry in table.entries() {
        let (target, record) = (&entry.target, entry.record.as_ref());
        let addresses: Vec<String> = target.addresses.iter().map(ToString::to_string).collect();
        let (when, result) = match record.as_ref().and_then(|record| record.last_attempt) {
            Some(attempt) => (
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs_f64(attempt.timestamp.max(0.0)),
                )
                .to_string(),
                if attempt.success { "ok" } else { "failed" },
            ),
            None => ("not yet".to_string(), "-"),
        };
        let counts = record.as_ref().and_then(|record| record.results.as_ref()).map(ScanResults::counts);
        let count = |value: Option<u64>| value.map_or("-".to_string(), |value| value.to_string());
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{when}</td><td>{result}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(&target.name),
            html_escape(&addresses.join(", ")),
            html_escape(&target.ports.to_string()),
            humantime::format_duration(target.settings.interval),
            count(counts.map(|counts| counts.open)),
            count(counts.map(|counts| counts.closed)),
            count(counts.map(|counts| counts.filtered)),
        );
    }
    page.push_str("</table>\n");
    if config.targets.is_empty() {
        // A probe-only or listeners-only exporter: say what it does instead of an empty table.
        let mut roles = Vec::new();
        if config.ondemand.enabled {
            roles.push("answers <a href=\"/probe\">/probe</a> and the scans API on request");
        }
        if config.listeners.enabled {
            roles.push("watches this host's own listening sockets");
        }
        let _ = writeln!(page, "<p>No background targets: this exporter {}.</p>", roles.join(" and "));
    }
    page.push_str("</body></html>\n");
    page
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
