//! The `synwatch` command: a thin front over the engine crates.
//!
//! * `synwatch serve`: the exporter daemon (see [`serve`]).
//! * The reverse DNS resolver of `resolve_hostnames` (see [`dns`]).
//! * `synwatch scan`: a one-shot scan with results on stdout (see [`scan`]).
//! * `synwatch bench`: sweeps packet rates and recommends `max_rate` (see [`bench`]).
//! * `synwatch doctor`: what the host allows and which mode a scan would use (see [`doctor`]).
//! * `synwatch check-config`: validates an exporter config (see [`check_config`]).
//! * `synwatch history`: prints the exposure history `serve` keeps (see [`history`]).
//!
//! Exit codes: 0 success, 1 runtime error (for example no permission for raw sockets),
//! 2 bad usage (clap's own errors and our validation of its values).

mod bench;
mod check_config;
mod dns;
mod doctor;
mod durations;
mod history;
mod output;
mod scan;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Raw-socket TCP SYN scanner with a Prometheus exporter front-end.
#[derive(Debug, Parser)]
#[command(name = "synwatch", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the exporter: scan the configured targets on schedule and serve /metrics.
    Serve(Box<serve::ServeArgs>),
    /// Scan targets once and print open / closed / filtered ports.
    Scan(Box<scan::ScanArgs>),
    /// Sweep packet rates against named targets or a lab built here, find the knee (the
    /// highest rate that keeps recall) and recommend it as max_rate.
    Bench(Box<bench::BenchArgs>),
    /// Show capabilities, sockets, paths and limits, the mode a scan would run in, and what to change.
    Doctor(doctor::DoctorArgs),
    /// Validate an exporter config file and print it as it would run.
    CheckConfig(check_config::CheckConfigArgs),
    /// Print the exposure history: port changes (newest first) or the endpoints ever open,
    /// read from the database `serve` keeps in its state directory (read-only, safe while it runs).
    History(Box<history::HistoryArgs>),
}

/// An error in the user's input (exit 2) rather than at run time (exit 1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Scan(args) => scan::run(*args),
        Command::Bench(args) => bench::run(*args),
        Command::Doctor(args) => doctor::run(args),
        Command::CheckConfig(args) => check_config::run(args),
        Command::History(args) => history::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<UsageError>() => {
            eprintln!("synwatch: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("synwatch: {error:#}");
            ExitCode::from(1)
        }
    }
}
