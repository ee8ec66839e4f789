//! The exporter side of synwatch: what `synwatch serve` scans, when, and what it serves. It owns
//! the configuration today; the scheduler, the state kept across restarts and the metrics come
//! next (issue 4). It does no HTTP and opens no socket: the HTTP crate serves what it renders and
//! the engine (`synwatch-io`) scans.
//!
//! * [`config`]: the strict YAML configuration, with `file:line:column` errors.

pub mod config;

pub use config::{Config, ConfigError, EMBEDDED_DEFAULT, load, parse};
