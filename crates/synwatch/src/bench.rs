//! `synwatch bench`: the command line of the rate sweep. It parses and checks the options
//! into [`synwatch_bench::SweepOptions`]; the sweep itself (the engine, the lab, the compared
//! programs, the knee, the table, JSON and plot) is `synwatch_bench`.
//!
//! Outside the lab only the targets the user names are scanned, never a default, and rates
//! above [`CONSERVATIVE_RATE`] need `--confirm-targets`.

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use synwatch_bench::plot::human_rate;
use synwatch_bench::sweep::build_space;
use synwatch_bench::{ExternalTool, LabFamily, LabPlan, Outputs, SweepError, SweepOptions, SweepTargets};
use synwatch_bench::{parse_ramp, parse_rates};
use synwatch_engine::{JobSettings, PortSet, Shard, TimeSetting};
use synwatch_io::{Mode, TransmitChoice};

use crate::UsageError;
use crate::scan::{parse_mode, parse_transmit, read_targets};

/// Rates above this need `--confirm-targets` outside the lab: about what one `connect()` thread
/// does, and far below what trips rate limits on a typical host or firewall.
pub const CONSERVATIVE_RATE: u64 = 10_000;

/// The ramp swept when neither `--rates` nor `--ramp` is given.
const DEFAULT_RAMP: &str = "10k..1M";

/// Options of `synwatch bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Targets to sweep against (addresses, CIDRs, ranges, @FILE), only ones you own; not with
    /// --lab.
    #[arg(value_name = "TARGET")]
    targets: Vec<String>,
    /// Build a namespace lab and sweep against it (needs root, iproute2, nftables and ethtool).
    #[arg(long)]
    lab: bool,
    /// Lab hosts per address family: a power of two up to 65536.
    #[arg(long, default_value_t = 65_536, requires = "lab")]
    lab_hosts: u32,
    /// Lab address families: v4, v6 or both.
    #[arg(long, default_value = "v4", value_parser = parse_family, requires = "lab")]
    lab_family: LabFamily,
    /// Simulate a network instead of the lab's kernel targets: lan, internet or hostile (the
    /// field lab: round trips, loss, ICMP limits, firewalls, SYN proxies and tarpits).
    #[arg(long, value_parser = parse_profile, requires = "lab")]
    lab_profile: Option<String>,
    /// Share of the lab's probes that find an open port, percent (default 5; with a profile,
    /// of the up hosts' ports, default the profile's).
    #[arg(long, requires = "lab")]
    lab_open: Option<f64>,
    /// Share of the lab's hosts that drop every packet (filtered), percent (default 0; with a
    /// profile, the silent hosts, default the profile's).
    #[arg(long, requires = "lab")]
    lab_filtered: Option<f64>,
    /// Share of TCP packets the lab's targets drop at random, percent (default 0; with a
    /// profile, random loss each way instead of the profile's).
    #[arg(long, requires = "lab")]
    lab_loss: Option<u8>,
    /// With a profile: every host's round trip, fixed (for example 50ms).
    #[arg(long, value_parser = crate::durations::parse_cli_duration, requires = "lab_profile")]
    lab_rtt: Option<Duration>,
    /// With a profile: every reply's extra delay is uniform up to this.
    #[arg(long, value_parser = crate::durations::parse_cli_duration, requires = "lab_profile")]
    lab_jitter: Option<Duration>,
    /// Seed of the lab's open ports.
    #[arg(long, default_value_t = 1, requires = "lab")]
    lab_seed: u64,
    /// Ports (default in the lab: 80).
    #[arg(short, long)]
    ports: Option<String>,
    /// Rates to try, for example 10k,50k,100k,500k.
    #[arg(long, conflicts_with = "ramp")]
    rates: Option<String>,
    /// A geometric ramp FROM..TO (default 10k..1M).
    #[arg(long)]
    ramp: Option<String>,
    /// Steps of the ramp.
    #[arg(long, default_value_t = 6)]
    steps: usize,
    /// Scans per step; the step's figures are the medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repetitions: u32,
    /// Recall (percent of the best step, or of the lab's ground truth) a rate must keep.
    #[arg(long, default_value_t = 99.9)]
    min_recall: f64,
    /// synwatch modes to sweep: auto, syn, connect (comma-separated).
    #[arg(long, default_value = "auto", value_delimiter = ',', value_parser = parse_mode)]
    mode: Vec<Mode>,
    /// Re-sends of unanswered probes. The default, none, shows where packets start to get lost;
    /// retries hide that (and recover it: try your config's retries to see how much).
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Extra re-sends for the unanswered probes of hosts that answered on another port (none by
    /// default, for the same reason as --retries).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=8))]
    host_up_retries: u32,
    /// Pause between rounds when retrying: auto (learned) or a duration.
    #[arg(long, default_value = "auto", value_parser = crate::durations::parse_time_setting)]
    retry_gap: TimeSetting,
    /// Wait for late replies after the last probe of each scan: a duration (the compared
    /// programs get the same cooldown), or auto (learned; they get 1 s).
    #[arg(long, default_value = "1s", value_parser = crate::durations::parse_time_setting)]
    wait: TimeSetting,
    /// Sender threads (connect threads in connect mode).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    sender_threads: u32,
    /// Transmit path: auto, sendmmsg, or ring.
    #[arg(long, default_value = "auto", value_parser = parse_transmit)]
    transmit: TransmitChoice,
    /// Send through this interface (not with --lab).
    #[arg(long)]
    interface: Option<String>,
    /// Also run these programs on the lab's targets: masscan, zmap, nmap (lab only).
    #[arg(long, requires = "lab")]
    compare: Option<String>,
    /// Write the results as JSON to this file (`-`: stdout, and the table goes to stderr).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the sweep to this file, .svg or .png.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Scan the named targets at rates above 10k/s: you own them and the path can take it.
    #[arg(long)]
    confirm_targets: bool,
}

fn parse_profile(text: &str) -> Result<String, String> {
    if synwatch_lab::field::profiles::PROFILES.contains(&text) {
        Ok(text.to_string())
    } else {
        Err(format!("expected one of {}", synwatch_lab::field::profiles::PROFILES.join(", ")))
    }
}

fn parse_family(text: &str) -> Result<LabFamily, String> {
    LabFamily::parse(text).map_err(|error| error.to_string())
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// A sweep's usage errors are the command's (exit code 2).
fn from_sweep(error: SweepError) -> anyhow::Error {
    match error {
        SweepError::Usage(message) => usage(message),
        SweepError::Failed(message) => anyhow::anyhow!(message),
    }
}

fn rates(args: &BenchArgs) -> Result<Vec<u64>> {
    let rates = match (&args.rates, &args.ramp) {
        (Some(list), _) => parse_rates(list).map_err(|error| usage(format!("--rates: {error}")))?,
        (None, ramp) => parse_ramp(ramp.as_deref().unwrap_or(DEFAULT_RAMP), args.steps)
            .map_err(|error| usage(format!("--ramp: {error}")))?,
    };
    Ok(rates)
}

fn check_arguments(args: &BenchArgs, rates: &[u64]) -> Result<()> {
    if !(0.0..=100.0).contains(&args.min_recall) || args.min_recall == 0.0 {
        return Err(usage(format!("--min-recall {}: a percentage above 0 and at most 100", args.min_recall)));
    }
    if let Some(plot) = &args.plot
        && !matches!(plot.extension().and_then(|extension| extension.to_str()), Some("svg" | "png"))
    {
        return Err(usage(format!("--plot {}: the file must end in .svg or .png", plot.display())));
    }
    if args.lab {
        if !args.targets.is_empty() {
            return Err(usage("--lab scans the lab's own targets; name no targets with it"));
        }
        if args.interface.is_some() {
            return Err(usage("--interface is chosen by the lab; leave it out with --lab"));
        }
        return Ok(());
    }
    if args.targets.is_empty() {
        return Err(usage(
            "name the targets to sweep (only hosts you own), or use --lab to build a lab on this machine",
        ));
    }
    let fastest = rates.iter().copied().max().unwrap_or(0);
    if fastest > CONSERVATIVE_RATE && !args.confirm_targets {
        return Err(usage(format!(
            "rates up to {}/s against the named targets: above {}/s this needs --confirm-targets (you own the targets, and the network between may carry that rate)",
            human_rate(fastest as f64),
            human_rate(CONSERVATIVE_RATE as f64)
        )));
    }
    Ok(())
}

fn lab_plan(args: &BenchArgs) -> Result<LabPlan> {
    let ports =
        PortSet::parse(args.ports.as_deref().unwrap_or("80")).map_err(|error| usage(format!("--ports: {error}")))?;
    if !ports.is_tcp_only() {
        return Err(usage("--ports: the lab benchmark measures TCP SYN rates; udp/ ports are not benchmarked yet"));
    }
    let field = args.lab_profile.as_deref().map(|name| {
        let mut model = synwatch_lab::field::profile(name, args.lab_seed).expect("checked by the parser");
        let knobs = synwatch_lab::field::profiles::Knobs {
            rtt: args.lab_rtt,
            jitter: args.lab_jitter,
            loss_percent: args.lab_loss.map(f64::from),
            open_percent: args.lab_open,
            silent_percent: args.lab_filtered,
        };
        knobs.apply(&mut model);
        Box::new(model)
    });
    if let Some(model) = &field {
        model.validate().map_err(|error| usage(format!("--lab-profile: {error}")))?;
    }
    let plan = LabPlan {
        hosts: args.lab_hosts,
        family: args.lab_family,
        ports: ports.tcp_numbers().collect(),
        // With a profile these shares are the model's (applied above).
        open_percent: if field.is_some() { 0.0 } else { args.lab_open.unwrap_or(5.0) },
        filtered_percent: if field.is_some() { 0.0 } else { args.lab_filtered.unwrap_or(0.0) },
        loss_percent: if field.is_some() { 0 } else { args.lab_loss.unwrap_or(0) },
        seed: args.lab_seed,
        field,
    };
    plan.validate().map_err(|error| usage(error.to_string()))?;
    Ok(plan)
}

/// The checked options of a sweep, and where its report goes.
fn options(args: &BenchArgs) -> Result<(SweepOptions, Outputs)> {
    let rates = rates(args)?;
    check_arguments(args, &rates)?;
    let compare = match &args.compare {
        Some(list) => ExternalTool::parse_list(list).map_err(|error| usage(error.to_string()))?,
        None => Vec::new(),
    };
    let targets = if args.lab {
        SweepTargets::Lab(lab_plan(args)?)
    } else {
        let includes = read_targets(&args.targets, "target")?;
        let ports = args.ports.as_deref().ok_or_else(|| usage("--ports is needed with named targets"))?;
        let space = build_space(includes, ports).map_err(from_sweep)?;
        SweepTargets::Named { space, description: format!("{} × ports {ports}", args.targets.join(" ")) }
    };
    let options = SweepOptions {
        targets,
        rates,
        repetitions: args.repetitions,
        min_recall: args.min_recall / 100.0,
        modes: args.mode.clone(),
        settings: JobSettings {
            retries: args.retries,
            host_up_retries: args.host_up_retries,
            retry_gap: args.retry_gap,
            wait: args.wait,
            seed: 0,
            shard: Shard::WHOLE,
            ..JobSettings::default()
        },
        sender_threads: args.sender_threads as usize,
        transmit: args.transmit,
        interface: args.interface.clone(),
        compare,
    };
    Ok((options, Outputs { json: args.json.clone(), plot: args.plot.clone() }))
}

/// Runs `synwatch bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    crate::scan::init_logging(false);
    let (options, outputs) = options(&args)?;
    let report = synwatch_bench::sweep::run(&options).map_err(from_sweep)?;
    if io::stdout().is_terminal() {
        println!();
    }
    synwatch_bench::sweep::write_outputs(&outputs, &report).map_err(from_sweep)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(arguments: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(arguments.iter().copied())).map(|cli| cli.bench)
    }

    fn refusal(arguments: &[&str]) -> String {
        let args = parse(arguments).expect("clap accepts it");
        let rates = rates(&args);
        let error = rates.and_then(|rates| check_arguments(&args, &rates).and_then(|()| lab_plan(&args).map(|_| ())));
        let error = error.expect_err("refused");
        assert!(error.is::<UsageError>(), "a usage error: {error}");
        error.to_string()
    }

    #[test]
    fn outside_the_lab_only_named_targets_and_fast_rates_need_confirmation() {
        assert!(refusal(&["--rates", "5k"]).contains("name the targets"));
        let fast = refusal(&["127.0.0.1", "-p", "80", "--rates", "5k,50k"]);
        assert!(fast.contains("--confirm-targets") && fast.contains("50k/s"), "{fast}");
        let args = parse(&["127.0.0.1", "-p", "80", "--rates", "5k,10k"]).unwrap();
        assert!(check_arguments(&args, &rates(&args).unwrap()).is_ok(), "10k/s is within the conservative default");
        let args = parse(&["127.0.0.1", "-p", "80", "--rates", "5k,50k", "--confirm-targets"]).unwrap();
        assert!(check_arguments(&args, &rates(&args).unwrap()).is_ok());
        // The default ramp goes to 1M/s.
        assert!(refusal(&["127.0.0.1", "-p", "80"]).contains("1M/s"));
        // Lab-only options need --lab.
        assert!(parse(&["127.0.0.1", "--compare", "masscan"]).is_err());
        assert!(parse(&["127.0.0.1", "--lab-hosts", "256"]).is_err());
    }

    #[test]
    fn bad_lab_rate_and_output_options_are_refused_with_the_reason() {
        assert!(refusal(&["--lab", "127.0.0.1"]).contains("name no targets"));
        assert!(refusal(&["--lab", "--lab-hosts", "1000"]).contains("power of two"));
        assert!(refusal(&["--lab", "--lab-open", "150"]).contains("--lab-open 150"));
        assert!(refusal(&["--lab", "--rates", "10k,0"]).contains("--rates"));
        assert!(refusal(&["--lab", "--ramp", "1M..10k"]).contains("--ramp"));
        assert!(refusal(&["--lab", "--min-recall", "0"]).contains("--min-recall"));
        assert!(refusal(&["--lab", "--plot", "out.jpg"]).contains(".svg or .png"));
        assert!(parse(&["--lab", "--rates", "10k", "--ramp", "1k..2k"]).is_err(), "--rates and --ramp conflict");
        let args = parse(&["--lab", "--lab-hosts", "256", "--ports", "22,80", "--lab-family", "both"]).unwrap();
        let plan = lab_plan(&args).unwrap();
        assert_eq!((plan.hosts, plan.ports.clone(), plan.probes()), (256, vec![22, 80], 1024));
        assert_eq!(rates(&args).unwrap().len(), 6, "the default ramp");
    }
}
