//! `synwatch check-config FILE`: validates an exporter config and prints it as it would run
//! (defaults applied), or the first error as `file:line:column: what was expected`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// Arguments of `synwatch check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The YAML config file.
    file: PathBuf,
}

/// Validates and prints; an invalid config is an error (exit 1) whose message is the location.
pub fn run(args: CheckConfigArgs) -> Result<()> {
    let config = synwatch_exporter::load(&args.file)?;
    print!("{}", synwatch_exporter::config::render_effective(&config));
    eprintln!("{}: valid, {} target(s)", args.file.display(), config.targets.len());
    Ok(())
}
