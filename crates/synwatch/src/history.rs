//! `synwatch history`: reads the exposure history database directly, read-only (safe while
//! `serve` writes it), and prints changes (newest first) or, with `--endpoints`, the endpoints
//! ever open, as text, JSON lines or CSV.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use synwatch_exporter::history_api::{self, rfc3339};
use synwatch_history::{ChangeKind, ChangeQuery, EndpointQuery, HISTORY_FILE, HistoryStore, Proto, parse_time, states};

use crate::UsageError;

/// Where the packaged unit keeps its state (`--state-dir ${STATE_DIRECTORY}`).
const PACKAGED_STATE_DIR: &str = "/var/lib/synwatch";

/// Rows read per query while printing everything asked for.
const PAGE: usize = 1000;

/// Arguments of `synwatch history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The state directory that holds history.sqlite (default: the config's state_dir with
    /// --config, else /var/lib/synwatch, the packaged unit's).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Take state_dir from this exporter config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the endpoints ever open (with first seen and open since) instead of the changes.
    #[arg(long)]
    endpoints: bool,
    /// Changes at or after this time: a duration ago (24h, 7d) or an RFC 3339 time; with
    /// --endpoints, endpoints first seen at or after it.
    #[arg(long)]
    since: Option<String>,
    /// Changes at or before this time (as --since).
    #[arg(long)]
    until: Option<String>,
    /// Only this target.
    #[arg(long)]
    target: Option<String>,
    /// Only changes of this address.
    #[arg(long)]
    ip: Option<std::net::IpAddr>,
    /// Only changes of this port: 22, tcp/22 or udp/53.
    #[arg(long)]
    port: Option<String>,
    /// Only changes of this kind.
    #[arg(long, value_enum)]
    change: Option<ChangeArg>,
    /// Only endpoints in this state now (with --endpoints): open, suspect, unverified, closed,
    /// filtered or open|filtered.
    #[arg(long)]
    state: Option<String>,
    /// At most this many rows (default: all).
    #[arg(long)]
    limit: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: FormatArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ChangeArg {
    Opened,
    Closed,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    Text,
    Jsonl,
    Csv,
}

fn usage(message: String) -> anyhow::Error {
    UsageError(message).into()
}

/// Prints what was asked for.
pub fn run(args: HistoryArgs) -> Result<()> {
    let state_dir = match (&args.state_dir, &args.config) {
        (Some(directory), _) => directory.clone(),
        (None, Some(config)) => synwatch_exporter::load(config)?
            .state_dir
            .ok_or_else(|| usage(format!("{} sets no state_dir: give --state-dir", config.display())))?,
        (None, None) => PathBuf::from(PACKAGED_STATE_DIR),
    };
    let path = state_dir.join(HISTORY_FILE);
    let store = HistoryStore::open_read_only(&path).context("cannot read the exposure history")?;
    let now = synwatch_exporter::state::unix_seconds(SystemTime::now());
    let time = |name: &str, value: &Option<String>| -> Result<Option<f64>> {
        value
            .as_deref()
            .map(|text| parse_time(text, now).map_err(|reason| usage(format!("--{name}: {reason}"))))
            .transpose()
    };
    let limit = args.limit.unwrap_or(usize::MAX);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.endpoints {
        if args.until.is_some() || args.ip.is_some() || args.port.is_some() || args.change.is_some() {
            return Err(usage("--until, --ip, --port and --change read changes, not --endpoints".into()));
        }
        let state = match &args.state {
            Some(state) => Some(
                states::named(state)
                    .ok_or_else(|| {
                        usage(format!(
                            "--state {state:?}: expected open, suspect, unverified, closed, filtered, open|filtered or not_scanned"
                        ))
                    })?
                    .to_string(),
            ),
            None => None,
        };
        let mut query = EndpointQuery {
            target: args.target.clone(),
            state,
            since_first_seen: time("since", &args.since)?,
            limit: PAGE,
            after: None,
        };
        print_header(
            &mut out,
            args.format,
            history_api::ENDPOINTS_CSV_HEADER,
            "TARGET IP PORT STATE FIRST-SEEN OPEN-SINCE OPENED",
        )?;
        let mut printed = 0;
        loop {
            query.limit = PAGE.min(limit - printed);
            let page = store.endpoints(&query)?;
            for endpoint in &page.endpoints {
                match args.format {
                    FormatArg::Csv => writeln!(out, "{}", history_api::endpoint_csv_line(endpoint))?,
                    FormatArg::Jsonl => writeln!(out, "{}", history_api::endpoint_json(endpoint))?,
                    FormatArg::Text => writeln!(
                        out,
                        "{} {}{} {} {}{} {} {} {}",
                        endpoint.target,
                        endpoint.ip,
                        endpoint.hostname.as_deref().map(|name| format!(" ({name})")).unwrap_or_default(),
                        port_text(endpoint.proto, endpoint.port),
                        endpoint.state,
                        endpoint.reason.as_deref().map(|reason| format!(" ({reason})")).unwrap_or_default(),
                        rfc3339(endpoint.first_seen),
                        if states::is_open(&endpoint.state) { rfc3339(endpoint.last_change) } else { "-".into() },
                        endpoint.times_opened,
                    )?,
                }
            }
            printed += page.endpoints.len();
            match page.next_cursor {
                Some(cursor) if printed < limit => query.after = Some(cursor),
                _ => break,
            }
        }
        if args.format == FormatArg::Text && printed == 0 {
            writeln!(out, "(no endpoints)")?;
        }
    } else {
        if args.state.is_some() {
            return Err(usage("--state is for --endpoints".into()));
        }
        let port = match args.port.as_deref() {
            Some(text) => Some(history_api::port_parameter(text).map_err(|reason| usage(format!("--{reason}")))?),
            None => None,
        };
        let mut query = ChangeQuery {
            since: time("since", &args.since)?,
            until: time("until", &args.until)?,
            target: args.target.clone(),
            ip: args.ip.map(|address| address.to_canonical()),
            port,
            kind: args.change.map(|change| match change {
                ChangeArg::Opened => ChangeKind::Opened,
                ChangeArg::Closed => ChangeKind::Closed,
                ChangeArg::Other => ChangeKind::Other,
            }),
            limit: PAGE,
            before_id: None,
        };
        print_header(&mut out, args.format, history_api::CHANGES_CSV_HEADER, "TIME TARGET IP PORT FROM TO CHANGE")?;
        let mut printed = 0;
        loop {
            query.limit = PAGE.min(limit - printed);
            let page = store.changes(&query)?;
            for change in &page.changes {
                match args.format {
                    FormatArg::Csv => writeln!(out, "{}", history_api::change_csv_line(change))?,
                    FormatArg::Jsonl => writeln!(out, "{}", history_api::change_json(change))?,
                    FormatArg::Text => writeln!(
                        out,
                        "{} {} {}{} {} {} {}{} {}",
                        rfc3339(change.time),
                        change.target,
                        change.ip,
                        change.hostname.as_deref().map(|name| format!(" ({name})")).unwrap_or_default(),
                        port_text(change.proto, change.port),
                        change.old_state,
                        change.new_state,
                        change.reason.as_deref().map(|reason| format!(" ({reason})")).unwrap_or_default(),
                        change.kind().name(),
                    )?,
                }
            }
            printed += page.changes.len();
            match page.next_cursor {
                Some(cursor) if printed < limit => query.before_id = Some(cursor),
                _ => break,
            }
        }
        if args.format == FormatArg::Text && printed == 0 {
            writeln!(out, "(no changes)")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn print_header(out: &mut impl Write, format: FormatArg, csv: &str, text: &str) -> std::io::Result<()> {
    match format {
        FormatArg::Csv => writeln!(out, "{csv}"),
        FormatArg::Text => writeln!(out, "{text}"),
        FormatArg::Jsonl => Ok(()),
    }
}

/// `22` for TCP (as everywhere else), `udp/53` for UDP.
fn port_text(proto: Proto, port: u16) -> String {
    match proto {
        Proto::Tcp => port.to_string(),
        Proto::Udp => format!("udp/{port}"),
    }
}
