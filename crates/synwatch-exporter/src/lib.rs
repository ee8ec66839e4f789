//! The exporter side of synwatch: what `synwatch serve` scans, when, what it remembers and what
//! it serves. It does no HTTP and opens no socket: the HTTP crate (`synwatch-http`) serves what
//! it renders, and the engine (`synwatch-io`), started by the binary, scans through the
//! [`Scanner`] trait. On-demand requests arrive and are answered in the HTTP crate's site
//! vocabulary (`synwatch_http::site`: a routed operation in, a typed reply or refusal out); the
//! status codes, headers and content types they become are the HTTP crate's alone.
//!
//! * [`config`]: the strict YAML configuration, with `file:line:column` errors.
//! * [`hostnames`]: reverse DNS names of responding hosts (the resolver is handed in).
//! * [`listeners`]: this host's listening sockets, from /proc, and their policy.
//! * [`schedule`]: when each target is due (no clock, no thread).
//! * [`sd`]: `/sd`, the open endpoints as Prometheus HTTP service discovery.
//! * [`results`]: one target's last results, packed, with change detection.
//! * [`state`]: the state file kept across restarts (atomic writes, corrupt files set aside).
//! * [`exposure`] and `history`: what the exposure history records of a scan (the database is
//!   `synwatch-history`; its writer thread is in `service`); [`history_api`]: its HTTP
//!   readings, `/api/v1/changes` and `/api/v1/endpoints`.
//! * [`metrics`]: the `/metrics` exposition.
//! * [`service`]: the running exporter (scheduler thread, reload, readiness, landing page).
//! * [`ondemand`]: `/probe` and the scans API, and their guards.
//! * [`policy`]: the expected-port policy of targets.
//! * [`query`]: URL query strings.
//! * [`scanner`]: the [`Scanner`] trait the engine is reached through.

pub mod config;
pub mod exposure;
pub(crate) mod history;
pub mod history_api;
pub mod hostnames;
pub mod listeners;
pub mod metrics;
pub mod names;
pub mod ondemand;
pub mod policy;
pub mod query;
pub mod results;
pub mod scanner;
pub mod schedule;
pub mod sd;
pub mod service;
pub mod state;

pub use config::{Config, ConfigError, EMBEDDED_DEFAULT, load, parse};
pub use metrics::{BuildInfo, CONTENT_TYPE};
pub use scanner::{RunningScan, ScanOrder, ScanProgress, Scanner};
pub use service::{Exporter, ExporterOptions, ReloadReport};
