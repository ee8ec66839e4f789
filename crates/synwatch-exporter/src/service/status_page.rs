//! The status page at `/`: server-rendered HTML with a little CSS, no script, every value
//! escaped. The front page shows the engine's health, every target with its last scan and
//! counts, and the latest changes; `/?target=NAME` shows one target: its last scan, its open
//! endpoints with "open since", and its changes.

use std::fmt::Write as _;
use std::sync::Arc;

use synwatch_history::{Change, ChangeQuery, Endpoint, EndpointQuery, states};
use synwatch_http::site::{Body, Refusal, RefusalKind, Reply};
use synwatch_io::CounterSnapshot;

use super::Inner;
use super::targets::{TargetEntry, TargetTable};
use crate::config::Config;
use crate::history_api::rfc3339;
use crate::results::ScanResults;

/// Changes on the front page.
pub(crate) const FRONT_PAGE_CHANGES: usize = 20;
/// Changes and endpoints on a target's page.
pub(crate) const TARGET_PAGE_ROWS: usize = 200;

/// What the history gave the page.
pub(crate) enum HistoryView {
    /// There is no history (the reason, for the reader).
    Absent(&'static str),
    /// Reading it failed.
    Failed(String),
    /// The latest changes, and (on a target's page) its endpoints open now.
    Read { changes: Vec<Change>, open: Option<Vec<Endpoint>> },
}

/// Everything the page shows.
pub(crate) struct StatusInputs<'a> {
    pub(crate) config: &'a Config,
    pub(crate) table: &'a TargetTable,
    pub(crate) mode: &'static str,
    pub(crate) counters: CounterSnapshot,
    pub(crate) history: HistoryView,
    /// The target of `/?target=NAME`.
    pub(crate) selected: Option<&'a TargetEntry>,
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1 a{color:inherit;text-decoration:none}nav a{margin-right:1em}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#eee}td.number{text-align:right;font-variant-numeric:tabular-nums}\
.opened{color:#a40000;font-weight:bold}.closed{color:#2e6b00}.other{color:#666}.note{color:#666}";

/// The page.
pub(crate) fn render(inputs: &StatusInputs<'_>) -> String {
    let title = match inputs.selected {
        Some(entry) => format!("synwatch: {}", escape(&entry.target.name)),
        None => "synwatch".to_string(),
    };
    let mut page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title><style>{STYLE}</style></head><body>\n<header><h1><a href=\"/\">synwatch</a></h1>\n\
         <nav><a href=\"/metrics\">/metrics</a><a href=\"/sd\">/sd</a><a href=\"/api/v1/changes\">/api/v1/changes</a>\
         <a href=\"/api/v1/endpoints\">/api/v1/endpoints</a><a href=\"/-/healthy\">/-/healthy</a><a href=\"/-/ready\">/-/ready</a></nav></header>\n"
    );
    match inputs.selected {
        Some(entry) => target_view(&mut page, inputs, entry),
        None => front_page(&mut page, inputs),
    }
    page.push_str("</body></html>\n");
    page
}

/// The status page for `query` (`target=NAME` or nothing).
pub(super) fn answer(inner: &Inner, query: &str) -> Reply {
    let mut selected = None;
    for (key, value) in crate::query::query_pairs(query) {
        match key.as_str() {
            "target" => selected = Some(value),
            other => {
                let reason = format!("unknown parameter {other:?}; the status page takes target=NAME");
                return Reply::Refused(Refusal::new(RefusalKind::BadRequest, reason));
            }
        }
    }
    let config = Arc::clone(&inner.config.read());
    let table = inner.targets();
    let entry = match &selected {
        Some(name) => match table.get(name) {
            Some(entry) => Some(entry),
            None => {
                let reason = format!("no target named {name:?}");
                return Reply::Refused(Refusal::new(RefusalKind::NotFound, reason));
            }
        },
        None => None,
    };
    let history = inner.read_history(|store| {
        let limit = if entry.is_some() { TARGET_PAGE_ROWS } else { FRONT_PAGE_CHANGES };
        let target = selected.clone();
        let changes = store.changes(&ChangeQuery { target: target.clone(), limit, ..Default::default() })?;
        let open = match target {
            Some(target) => {
                let mut open = Vec::new();
                for state in [states::OPEN, states::SUSPECT, states::UNVERIFIED] {
                    let query = EndpointQuery {
                        target: Some(target.clone()),
                        state: Some(state.to_string()),
                        limit: TARGET_PAGE_ROWS,
                        ..Default::default()
                    };
                    open.extend(store.endpoints(&query)?.endpoints);
                }
                open.truncate(TARGET_PAGE_ROWS);
                Some(open)
            }
            None => None,
        };
        Ok(HistoryView::Read { changes: changes.changes, open })
    });
    let history = match history {
        None => HistoryView::Absent("it needs state_dir (and history.enabled)"),
        Some(Ok(view)) => view,
        Some(Err(error)) => HistoryView::Failed(error.to_string()),
    };
    let inputs = StatusInputs {
        config: &config,
        table: &table,
        mode: inner.scanner.mode_name(),
        counters: inner.scanner.counters(),
        history,
        selected: entry,
    };
    Reply::Done(Body::Html(render(&inputs)))
}

fn front_page(page: &mut String, inputs: &StatusInputs<'_>) {
    engine_section(page, inputs);
    page.push_str("<section id=\"targets\"><h2>Targets</h2>\n");
    if inputs.table.entries().is_empty() {
        // A probe-only or listeners-only exporter: say what it does instead of an empty table.
        let mut roles = Vec::new();
        if inputs.config.ondemand.enabled {
            roles.push("answers <a href=\"/probe\">/probe</a> and the scans API on request");
        }
        if inputs.config.listeners.enabled {
            roles.push("watches this host's own listening sockets");
        }
        let _ = writeln!(page, "<p>No background targets: this exporter {}.</p>", roles.join(" and "));
    } else {
        targets_table(page, inputs.table.entries());
    }
    page.push_str("</section>\n<section id=\"changes\"><h2>Latest changes</h2>\n");
    changes_section(page, &inputs.history, true);
    page.push_str("</section>\n");
}

fn engine_section(page: &mut String, inputs: &StatusInputs<'_>) {
    let counters = &inputs.counters;
    let rows: [(&str, String); 9] = [
        ("mode", inputs.mode.to_string()),
        ("rate cap (probes/s)", inputs.config.engine.max_rate.to_string()),
        ("packets sent", counters.packets_sent.to_string()),
        (
            "replies open / closed / filtered",
            format!("{} / {} / {}", counters.replies_open, counters.replies_closed, counters.replies_filtered),
        ),
        ("replies malformed", counters.replies_malformed.to_string()),
        ("replies with a bad cookie", counters.replies_bad_cookie.to_string()),
        ("receive drops", counters.receive_drops.to_string()),
        ("send errors", counters.send_errors.to_string()),
        ("send back-pressure", counters.send_backpressure.to_string()),
    ];
    page.push_str("<section id=\"engine\"><h2>Engine</h2>\n<table id=\"engine-table\">\n");
    for (name, value) in rows {
        let _ = writeln!(page, "<tr><th>{}</th><td class=\"number\">{}</td></tr>", escape(name), escape(&value));
    }
    page.push_str("</table></section>\n");
}

fn targets_table(page: &mut String, entries: &[TargetEntry]) {
    page.push_str(
        "<table id=\"targets-table\"><tr><th>target</th><th>addresses</th><th>ports</th><th>interval</th><th>last scan</th>\
         <th>result</th><th>open</th><th>suspect</th><th>unverified</th><th>closed</th><th>filtered</th><th>open|filtered</th>\
         <th>hosts answering</th></tr>\n",
    );
    for entry in entries {
        let target = &entry.target;
        let addresses: Vec<String> = target.addresses.iter().map(ToString::to_string).collect();
        let (when, result) = match entry.record.as_ref().and_then(|record| record.last_attempt) {
            Some(attempt) => (rfc3339(attempt.timestamp), if attempt.success { "ok" } else { "failed" }),
            None => ("not yet".to_string(), "-"),
        };
        let results = entry.record.as_ref().and_then(|record| record.results.as_ref());
        let counts = results.map(ScanResults::counts);
        let count = |value: Option<u64>| value.map_or("-".to_string(), |value| value.to_string());
        let _ = writeln!(
            page,
            "<tr><td><a href=\"/?target={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{when}</td><td>{result}</td>\
             <td class=\"number\">{}</td><td class=\"number\">{}</td><td class=\"number\">{}</td><td class=\"number\">{}</td>\
             <td class=\"number\">{}</td><td class=\"number\">{}</td><td class=\"number\">{}</td></tr>",
            url_component(&target.name),
            escape(&target.name),
            escape(&addresses.join(", ")),
            escape(&target.ports.to_string()),
            humantime::format_duration(target.settings.interval),
            count(counts.map(|counts| counts.open)),
            count(counts.map(|counts| counts.suspect)),
            count(counts.map(|counts| counts.unverified)),
            count(counts.map(|counts| counts.closed)),
            count(counts.map(|counts| counts.filtered)),
            count(counts.map(|counts| counts.open_filtered)),
            count(results.map(ScanResults::hosts_responding)),
        );
    }
    page.push_str("</table>\n");
}

fn changes_section(page: &mut String, history: &HistoryView, with_target: bool) {
    let changes = match history {
        HistoryView::Absent(reason) => {
            let _ = writeln!(page, "<p class=\"note\">No exposure history: {}.</p>", escape(reason));
            return;
        }
        HistoryView::Failed(error) => {
            let _ = writeln!(page, "<p class=\"note\">The exposure history could not be read: {}.</p>", escape(error));
            return;
        }
        HistoryView::Read { changes, .. } => changes,
    };
    if changes.is_empty() {
        page.push_str("<p class=\"note\">No change recorded yet.</p>\n");
        return;
    }
    page.push_str("<table id=\"changes-table\"><tr><th>time</th>");
    if with_target {
        page.push_str("<th>target</th>");
    }
    page.push_str("<th>address</th><th>port</th><th>from</th><th>to</th><th>change</th></tr>\n");
    for change in changes {
        let kind = change.kind().name();
        let _ = write!(page, "<tr class=\"{kind}\"><td>{}</td>", rfc3339(change.time));
        if with_target {
            let _ = write!(
                page,
                "<td><a href=\"/?target={}\">{}</a></td>",
                url_component(&change.target),
                escape(&change.target)
            );
        }
        let to = match &change.reason {
            Some(reason) => format!("{} ({})", change.new_state, reason),
            None => change.new_state.clone(),
        };
        let _ = writeln!(
            page,
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{kind}</td></tr>",
            escape(&change.ip.to_string()),
            port_text(change.proto, change.port),
            escape(&change.old_state),
            escape(&to),
        );
    }
    page.push_str("</table>\n");
}

fn target_view(page: &mut String, inputs: &StatusInputs<'_>, entry: &TargetEntry) {
    let _ = writeln!(page, "<h2>Target {}</h2>", escape(&entry.target.name));
    targets_table(page, std::slice::from_ref(entry));
    page.push_str("<section id=\"endpoints\"><h3>Open endpoints</h3>\n");
    match &inputs.history {
        HistoryView::Read { open: Some(open), .. } => {
            if open.is_empty() {
                page.push_str("<p class=\"note\">No endpoint open.</p>\n");
            } else {
                page.push_str(
                    "<table id=\"endpoints-table\"><tr><th>address</th><th>port</th><th>state</th><th>open since</th>\
                     <th>first seen</th><th>times opened</th></tr>\n",
                );
                for endpoint in open {
                    let state = match &endpoint.reason {
                        Some(reason) => format!("{} ({})", endpoint.state, reason),
                        None => endpoint.state.clone(),
                    };
                    let since =
                        if states::is_open(&endpoint.state) { rfc3339(endpoint.last_change) } else { "-".into() };
                    let _ = writeln!(
                        page,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{since}</td><td>{}</td><td class=\"number\">{}</td></tr>",
                        escape(&endpoint.ip.to_string()),
                        port_text(endpoint.proto, endpoint.port),
                        escape(&state),
                        rfc3339(endpoint.first_seen),
                        endpoint.times_opened,
                    );
                }
                page.push_str("</table>\n");
                if open.len() >= TARGET_PAGE_ROWS {
                    let _ = writeln!(
                        page,
                        "<p class=\"note\">The first {TARGET_PAGE_ROWS}; all of them: <a href=\"/api/v1/endpoints?target={}\">/api/v1/endpoints</a>.</p>",
                        url_component(&entry.target.name)
                    );
                }
            }
        }
        _ => {
            // Without a history the served results still say what is open, not since when.
            let open = entry.derived.as_ref().map(|derived| derived.endpoints.open.clone()).unwrap_or_default();
            if open.is_empty() {
                page.push_str("<p class=\"note\">No endpoint open.</p>\n");
            } else {
                page.push_str("<table id=\"endpoints-table\"><tr><th>address</th><th>port</th><th>state</th></tr>\n");
                for (address, port) in open.iter().take(TARGET_PAGE_ROWS) {
                    let _ = writeln!(
                        page,
                        "<tr><td>{}</td><td>{}</td><td>open</td></tr>",
                        escape(&address.to_string()),
                        escape(&port.to_string())
                    );
                }
                page.push_str("</table>\n");
            }
        }
    }
    page.push_str("</section>\n<section id=\"changes\"><h3>Changes</h3>\n");
    changes_section(page, &inputs.history, false);
    page.push_str("</section>\n");
}

fn port_text(proto: synwatch_history::Proto, port: u16) -> String {
    match proto {
        synwatch_history::Proto::Tcp => port.to_string(),
        synwatch_history::Proto::Udp => format!("udp/{port}"),
    }
}

/// Text made safe for HTML element content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// A query value, percent-encoded.
fn url_component(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_for_html_and_urls() {
        assert_eq!(
            escape("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
        assert_eq!(url_component("a b&c"), "a+b%26c");
    }
}
