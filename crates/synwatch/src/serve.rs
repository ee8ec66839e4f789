//! `synwatch serve`: the exporter daemon. It loads the config (a file, or the embedded loopback
//! default), binds the HTTP listener, starts the engine (which opens its sockets and then drops
//! every capability), starts the exporter's scheduler, and only then the HTTP runtime's threads,
//! so that no thread ever holds a capability it does not need.
//!
//! With `--shard i/n` (or `ordinal:NAME/n`, for StatefulSet pods) it scans only block i of n of
//! every target's hosts; replicas with the same config and n split every target between them
//! without talking to each other.
//!
//! Signals: SIGHUP reloads the config (a bad one is rejected and the old one keeps running);
//! SIGTERM and SIGINT stop accepting connections, cancel running scans, save the state and exit
//! (within about 1.5 s).

use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use synwatch_engine::Shard;
use synwatch_exporter::config::ModeSetting;
use synwatch_exporter::{BuildInfo, CONTENT_TYPE, Exporter, ExporterOptions};
use synwatch_http::{ServerSettings, Site};
use synwatch_io::{Engine, EngineConfig, Mode};
use tokio::signal::unix::{SignalKind, signal};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Arguments of `synwatch serve`. Each has an environment variable, for systemd's
/// `EnvironmentFile=` and for containers; a flag wins over its variable.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The YAML config file (default: the embedded config, which scans 127.0.0.1 and ::1 only).
    #[arg(long, env = "SYNWATCH_CONFIG")]
    config: Option<PathBuf>,
    /// Listen on this address and port instead of the config's `listen`.
    #[arg(long, env = "SYNWATCH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Keep the state here instead of the config's `state_dir`.
    #[arg(long, env = "SYNWATCH_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter such as
    /// `info,synwatch_io=debug`).
    #[arg(long, env = "SYNWATCH_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "SYNWATCH_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// TLS and authentication for every endpoint: a YAML file in the Prometheus
    /// exporter-toolkit format (`tls_server_config`, `basic_auth_users`) plus `bearer_tokens`.
    #[arg(long = "web.config.file", env = "SYNWATCH_WEB_CONFIG_FILE")]
    web_config_file: Option<PathBuf>,
    /// Scan only shard i of n of every target (1-based): the target's hosts are split into n
    /// contiguous blocks and this replica scans block i, every port of each of its hosts. Give
    /// `ordinal:NAME/n` to take i from the trailing number of NAME plus one, as a StatefulSet
    /// numbers its pods from 0 (`ordinal:$(POD_NAME)/3` in pod `synwatch-2` is shard 3/3).
    #[arg(long, env = "SYNWATCH_SHARD")]
    shard: Option<String>,
}

/// Parses `--shard`: `i/n` (1-based) or `ordinal:NAME/n` (NAME ends in a 0-based ordinal).
fn parse_shard(text: &str) -> Result<Shard, String> {
    let Some(rest) = text.strip_prefix("ordinal:") else {
        return Shard::parse(text);
    };
    let (name, count) = rest.rsplit_once('/').ok_or_else(|| format!("{text:?} is not of the form ordinal:NAME/n"))?;
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let ordinal: u64 = name[name.len() - digits..]
        .parse()
        .map_err(|_| format!("{name:?} does not end in an ordinal (a pod name such as synwatch-2, or 2)"))?;
    Shard::parse(&format!("{}/{count}", ordinal.saturating_add(1)))
        .map_err(|error| format!("ordinal {ordinal} of {name:?}: {error}"))
}

struct ExporterSite(Arc<Exporter>);

impl Site for ExporterSite {
    fn status_page(&self, query: &str) -> synwatch_http::Reply {
        self.0.status_page(query)
    }

    fn metrics(&self) -> (Vec<u8>, &'static str) {
        let mut output = Vec::with_capacity(64 << 10);
        self.0.render_metrics(&mut output);
        (output, CONTENT_TYPE)
    }

    fn ready(&self) -> Result<(), String> {
        self.0.ready()
    }

    fn ondemand(&self, request: synwatch_http::OnDemandRequest) -> synwatch_http::Reply {
        self.0.ondemand(&request)
    }

    fn ondemand_refused(&self, _operation: &synwatch_http::Operation, kind: synwatch_http::RefusalKind) {
        self.0.ondemand_refused(kind);
    }

    fn observe(&self, route: &'static str, status: u16, seconds: f64) {
        self.0.observe_request(route, status, seconds);
    }

    fn connection_dropped(&self, reason: synwatch_http::DropReason) {
        self.0.observe_connection_dropped(reason.label());
    }

    fn service_discovery(&self, query: &str) -> Option<Result<Vec<u8>, String>> {
        Some(self.0.service_discovery(query))
    }

    fn history(&self, request: synwatch_http::HistoryRequest) -> (synwatch_http::Reply, Option<String>) {
        self.0.history(&request)
    }

    fn reload(&self) -> Result<String, String> {
        match self.0.reload() {
            Ok(report) => {
                let mut summary = format!("{} target(s) added, {} removed", report.added.len(), report.removed.len());
                if !report.needs_restart.is_empty() {
                    summary.push_str(&format!("; needs a restart to apply: {}", report.needs_restart.join(", ")));
                }
                Ok(summary)
            }
            Err(error) => Err(error.to_string()),
        }
    }
}

fn init_logging(level: &str, format: LogFormat) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|error| crate::UsageError(format!("--log-level {level:?}: {error}")))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr);
    let result = match format {
        LogFormat::Text => builder.with_ansi(io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|error| anyhow::anyhow!("cannot set up logging: {error}"))
}

/// Runs the exporter until SIGTERM or SIGINT.
pub fn run(args: ServeArgs) -> Result<()> {
    init_logging(&args.log_level, args.log_format)?;
    let shard = match &args.shard {
        Some(text) => parse_shard(text).map_err(|error| crate::UsageError(format!("--shard: {error}")))?,
        None => Shard::WHOLE,
    };
    let config = match &args.config {
        Some(path) => synwatch_exporter::load(path)?,
        None => synwatch_exporter::parse(synwatch_exporter::EMBEDDED_DEFAULT, "<embedded>")?,
    };
    let security = match &args.web_config_file {
        Some(path) => synwatch_http::WebSecurity::load(path)?,
        None => synwatch_http::WebSecurity::none(),
    };
    let listen = args.listen.unwrap_or(config.listen);
    let listener =
        std::net::TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen} (set --listen)"))?;
    listener.set_nonblocking(true)?;
    let engine = Engine::start(EngineConfig {
        rate: config.engine.max_rate,
        mode: match config.engine.mode {
            ModeSetting::Auto => Mode::Auto,
            ModeSetting::Syn => Mode::Syn,
            ModeSetting::Connect => Mode::Connect,
        },
        interface: config.engine.interface.clone(),
        source_addresses: config.engine.source_addresses.clone(),
        ..EngineConfig::default()
    })?;
    tracing::info!(
        %listen,
        mode = engine.mode().name(),
        targets = config.targets.len(),
        shard = %format_args!("{}/{}", shard.index + 1, shard.count),
        config = %args.config.as_ref().map_or("<embedded>".to_string(), |path| path.display().to_string()),
        "synwatch serve starting"
    );
    let seed = getrandom::u64().map_err(|error| anyhow::anyhow!("no randomness from the OS: {error}"))?;
    let exporter = Arc::new(Exporter::start(
        config,
        Arc::new(engine),
        ExporterOptions {
            config_path: args.config.clone(),
            state_dir: args.state_dir.clone(),
            build: BuildInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                revision: env!("SYNWATCH_REVISION").to_string(),
            },
            seed,
            tick: Duration::from_millis(50),
            shard,
        },
    ));
    // A module may ask for connect() scans while the engine runs SYN: that engine needs no
    // privilege and starts on first use.
    exporter.set_connect_factory(Box::new(|| {
        Engine::start(EngineConfig { mode: Mode::Connect, ..EngineConfig::default() })
            .map(|engine| Arc::new(engine) as Arc<dyn synwatch_exporter::Scanner>)
            .map_err(|error| error.to_string())
    }));
    // Reverse DNS for resolve_hostnames; the resolver is built when first needed.
    exporter.set_resolver_factory(crate::dns::factory());
    if security.tls.is_some() || security.authenticator.is_some() {
        tracing::info!(tls = security.tls.is_some(), auth = security.authenticator.is_some(), "web config loaded");
    }
    let security = Arc::new(security);
    // The runtime's threads start here, after the engine dropped the capabilities.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("synwatch-http")
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    let site: Arc<dyn Site> = Arc::new(ExporterSite(Arc::clone(&exporter)));
    let signal_exporter = Arc::clone(&exporter);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let shutdown = async move {
            loop {
                tokio::select! {
                    _ = hangup.recv() => {
                        tracing::info!("SIGHUP: reloading the config");
                        let exporter = Arc::clone(&signal_exporter);
                        // A rejected config is logged (with its location) and counted by reload().
                        let _ = tokio::task::spawn_blocking(move || exporter.reload()).await;
                    }
                    _ = terminate.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                    _ = interrupt.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                }
            }
        };
        let settings = ServerSettings { shutdown_grace: Duration::from_millis(300), ..ServerSettings::default() };
        synwatch_http::serve(listener, site, security, settings, shutdown).await;
        Ok::<(), io::Error>(())
    })?;
    exporter.shutdown(Duration::from_millis(700));
    runtime.shutdown_timeout(Duration::from_millis(100));
    tracing::info!("synwatch serve stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_forms_parse_and_bad_ones_say_why() {
        assert_eq!(parse_shard("2/3"), Ok(Shard { index: 1, count: 3 }));
        assert_eq!(parse_shard("ordinal:synwatch-0/3"), Ok(Shard { index: 0, count: 3 }));
        assert_eq!(parse_shard("ordinal:synwatch-12/13"), Ok(Shard { index: 12, count: 13 }));
        assert_eq!(parse_shard("ordinal:2/3"), Ok(Shard { index: 2, count: 3 }));
        for (bad, reason) in [
            ("ordinal:synwatch-3/3", "need 1 <= i <= n"),
            ("ordinal:synwatch/3", "does not end in an ordinal"),
            ("ordinal:synwatch-1", "not of the form"),
            ("0/3", "need 1 <= i <= n"),
            ("3", "not of the form"),
            ("ordinal:synwatch-1/x", "not a shard count"),
        ] {
            let error = parse_shard(bad).unwrap_err();
            assert!(error.contains(reason), "{bad}: {error}");
        }
    }

    #[test]
    fn every_http_drop_reason_has_its_series() {
        let labels: Vec<&str> = synwatch_http::DropReason::ALL.iter().map(|reason| reason.label()).collect();
        assert_eq!(labels, synwatch_exporter::metrics::HTTP_DROP_REASONS);
    }
}
