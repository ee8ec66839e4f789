//! Running a sweep (`synwatch bench`): the part of the benchmark that does I/O. Each step (a
//! requested rate) runs a whole scan `repetitions` times on one engine per mode and records the
//! achieved rate (the first round's send span, `synwatch_io::SendSpan`), replies, open ports,
//! recall, receive drops, send errors and CPU per probe; the pure part (medians, knee, table,
//! JSON, plot) is the rest of this crate.
//!
//! * [`SweepTargets::Lab`] builds a namespace lab from a [`LabPlan`] and tears it down at the
//!   end; recall is then against its ground truth, and the compared programs run on the same
//!   lab targets at the same rates, each inside the lab's scanner namespace.
//! * [`SweepTargets::Named`] scans only the targets the user named (the caller checks that fast
//!   rates were confirmed).
//!
//! CPU per probe is the process's CPU time over the step (minus the lab's accept thread, which
//! plays the targets' side) over the first round's probes; for the compared programs it is
//! their own CPU time from `wait4`. In the lab both include the kernel work the targets' side
//! does in the sender's softirq context, alike for every tool.

mod cpu;
mod error;
mod external;
mod synwatch_steps;

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use synwatch_engine::targets::parse_target;
use synwatch_engine::{AddressRange, ExclusionPolicy, HostSet, JobSettings, PortSet, TargetSpace};
use synwatch_io::{Mode, TransmitChoice};
use synwatch_lab::{Lab, LabConfig, runner};

pub use error::SweepError;
use error::{Context, failed, usage};

use crate::plot::{human_rate, render_svg};
use crate::{ExternalTool, LabFamily, LabPlan, Repetition, SweepReport};

/// What a sweep scans.
#[derive(Debug, Clone)]
pub enum SweepTargets {
    /// A namespace lab built for the sweep, with its ground truth.
    Lab(LabPlan),
    /// Targets the user named (and owns).
    Named {
        /// Their probes.
        space: Arc<TargetSpace>,
        /// How the report names them.
        description: String,
    },
}

/// A sweep, as the command line asked for it (checked by the caller).
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// What to scan.
    pub targets: SweepTargets,
    /// The requested rates, ascending.
    pub rates: Vec<u64>,
    /// Scans per step.
    pub repetitions: u32,
    /// The recall a rate must keep, as a fraction of the best step or of the ground truth.
    pub min_recall: f64,
    /// synwatch modes to sweep, each once.
    pub modes: Vec<Mode>,
    /// Retries, retry gap and wait of every scan (the seed is drawn per sweep).
    pub settings: JobSettings,
    /// Sender threads (connect threads in connect mode).
    pub sender_threads: usize,
    /// Transmit path.
    pub transmit: TransmitChoice,
    /// Send through this interface (named targets only).
    pub interface: Option<String>,
    /// Programs to compare with (lab only).
    pub compare: Vec<ExternalTool>,
}

/// What a sweep scans, with its ground truth in the lab.
struct Sweep {
    rates: Vec<u64>,
    space: Arc<TargetSpace>,
    settings: JobSettings,
    truth: Option<HashSet<SocketAddr>>,
    description: String,
}

/// The probes of `includes` × `ports`.
pub fn build_space(includes: Vec<AddressRange>, ports: &str) -> Result<Arc<TargetSpace>, SweepError> {
    let ports = PortSet::parse(ports).map_err(|error| usage(format!("--ports {ports:?}: {error}")))?;
    let hosts =
        HostSet::build(includes, Vec::new(), ExclusionPolicy::Default).map_err(|error| usage(error.to_string()))?;
    Ok(Arc::new(TargetSpace::new(hosts, ports).map_err(|error| usage(error.to_string()))?))
}

fn progress(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

fn report_repetition(name: &str, rate: u64, number: u32, of: u32, repetition: &Repetition, truth: Option<usize>) {
    let recall = match truth {
        Some(truth) if truth > 0 => {
            format!(" ({:.2} % of {truth})", repetition.open_true as f64 * 100.0 / truth as f64)
        }
        _ => String::new(),
    };
    progress(&format!(
        "{name} {}/s {number}/{of}: {} achieved, {} open{recall}, {:.2} s",
        human_rate(rate as f64),
        repetition.achieved_pps.map_or("-".into(), |rate| format!("{}/s", human_rate(rate))),
        repetition.open_found,
        repetition.wall_seconds
    ));
}

/// Set by SIGINT or SIGTERM: the sweep stops, reports what it measured, and tears down its lab.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Whether SIGINT or SIGTERM arrived since the sweep started.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Ctrl-C and SIGTERM stop the sweep between (or inside) repetitions instead of killing the
/// process, so the results so far are written and the lab is torn down.
fn catch_interrupts() -> Result<(), SweepError> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(SigHandler::Handler(on_interrupt), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.context("installing the interrupt handler")?;
    }
    Ok(())
}

fn lab_description(plan: &LabPlan, open: usize) -> String {
    if let Some(model) = &plan.field {
        return format!(
            "field lab `{}` (seed {}): {} hosts × {} port(s) ({} probes), {open} really open",
            model.name,
            model.seed,
            plan.hosts * plan.target_ranges().len() as u32,
            plan.ports.len(),
            plan.probes()
        );
    }
    let families = match plan.family {
        LabFamily::V4 => "IPv4",
        LabFamily::V6 => "IPv6",
        LabFamily::Both => "IPv4 and IPv6",
    };
    format!(
        "lab: {} {families} hosts × {} port(s) ({} probes), {open} open, {} % of hosts filtered, {} % loss",
        plan.hosts,
        plan.ports.len(),
        plan.probes(),
        plan.filtered_percent,
        plan.loss_percent
    )
}

/// Runs the sweep and returns its report (what was measured before an interrupt, if one came).
pub fn run(options: &SweepOptions) -> Result<SweepReport, SweepError> {
    catch_interrupts()?;
    let mut modes: Vec<Mode> = Vec::new();
    for &mode in &options.modes {
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    // Connect mode last: a SYN engine outside the lab drops the process's capabilities.
    modes.sort_by_key(|mode| *mode == Mode::Connect);
    let seed = getrandom::u64().context("no randomness from the OS")?;
    let settings = JobSettings { seed, ..options.settings };
    let mut tools = Vec::new();
    let report = match &options.targets {
        SweepTargets::Lab(plan) => {
            if !options.compare.is_empty() && plan.family != LabFamily::V4 {
                return Err(usage("--compare runs on an IPv4 lab (zmap 2 scans IPv4 only): use --lab-family v4"));
            }
            if let Err(reason) = synwatch_lab::lab_available() {
                return Err(failed(format!("--lab needs root, iproute2, nftables and ethtool: {reason}")));
            }
            let open = plan.open_endpoints();
            if plan.field.is_none() {
                cpu::ensure_descriptors(open.len() as u64 + 256)?;
            }
            let includes: Vec<AddressRange> = plan
                .target_ranges()
                .iter()
                .map(|range| parse_target(&range.to_string()).expect("the plan's ranges parse"))
                .collect();
            let port_list: Vec<String> = plan.ports.iter().map(u16::to_string).collect();
            let space = build_space(includes, &port_list.join(","))?;
            let description = lab_description(plan, open.len());
            progress(&format!("building the {description}"));
            let config = match &plan.field {
                // The simulated targets: nothing listens in the target namespace, and the
                // responder keeps no per-port books (a /16 × many ports would be millions).
                Some(model) => LabConfig {
                    field: Some(model.as_ref().clone()),
                    field_options: synwatch_lab::field::SimulatorOptions {
                        count_per_port: false,
                        ..synwatch_lab::field::SimulatorOptions::default()
                    },
                    static_neighbour: true,
                    ..LabConfig::default()
                },
                None => LabConfig {
                    target_ranges: plan.target_ranges(),
                    listeners: open.clone(),
                    blackholed: plan.filtered_ranges(),
                    loss_percent: plan.loss_percent,
                    static_neighbour: true,
                    ..LabConfig::default()
                },
            };
            let lab = Lab::build(config).context("building the lab")?;
            let truth: HashSet<SocketAddr> = open.into_iter().collect();
            let sweep = Sweep { rates: options.rates.clone(), space, settings, truth: Some(truth), description };
            for &mode in modes.iter().take_while(|_| !interrupted()) {
                tools.push(lab.in_scanner(|| synwatch_steps::sweep_synwatch(options, &sweep, mode, true))?);
            }
            let scratch = std::env::temp_dir().join(format!("synwatch-bench-{}", std::process::id()));
            fs::create_dir_all(&scratch).context(format!("creating {}", scratch.display()))?;
            for &tool in options.compare.iter().take_while(|_| !interrupted()) {
                if !runner::program_installed(tool.name()) {
                    progress(&format!("{} is not installed (Debian package {0}): left out", tool.name()));
                    continue;
                }
                let truth = sweep.truth.as_ref().expect("the lab has ground truth");
                match external::sweep_tool(options, &lab, plan, truth, tool, &scratch, &options.rates) {
                    Ok(report) => tools.push(report),
                    Err(error) => progress(&format!("{} failed, left out: {error}", tool.name())),
                }
            }
            let _ = fs::remove_dir_all(&scratch);
            drop(lab);
            SweepReport {
                targets: sweep.description,
                probes: sweep.space.len(),
                ground_truth_open: sweep.truth.as_ref().map(|truth| truth.len() as u64),
                min_recall: options.min_recall,
                tools,
            }
        }
        SweepTargets::Named { space, description } => {
            let sweep = Sweep {
                rates: options.rates.clone(),
                space: Arc::clone(space),
                settings,
                truth: None,
                description: description.clone(),
            };
            for &mode in modes.iter().take_while(|_| !interrupted()) {
                tools.push(synwatch_steps::sweep_synwatch(options, &sweep, mode, false)?);
            }
            SweepReport {
                targets: sweep.description,
                probes: sweep.space.len(),
                ground_truth_open: None,
                min_recall: options.min_recall,
                tools,
            }
        }
    };
    if interrupted() {
        progress("interrupted: the results so far follow; the lab is torn down");
    }
    Ok(report)
}

/// Where the report goes: the table always (to stdout, or stderr when the JSON goes to
/// stdout), the JSON and the plot when asked.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// The JSON report's file (`-`: stdout).
    pub json: Option<PathBuf>,
    /// The plot's file, `.svg` or `.png`.
    pub plot: Option<PathBuf>,
}

/// Writes the report.
pub fn write_outputs(outputs: &Outputs, report: &SweepReport) -> Result<(), SweepError> {
    let table = report.table();
    let json = || serde_json::to_string_pretty(&report.json()).context("rendering the JSON report");
    match &outputs.json {
        Some(path) if path.as_os_str() == "-" => {
            eprint!("{table}");
            println!("{}", json()?);
        }
        Some(path) => {
            print!("{table}");
            fs::write(path, json()? + "\n").context(format!("writing {}", path.display()))?;
        }
        None => print!("{table}"),
    }
    if let Some(path) = &outputs.plot {
        let title = format!("synwatch bench: {}", report.targets);
        let svg = render_svg(&title, &report.plot_series()).context("drawing the plot")?;
        let bytes = if path.extension().is_some_and(|extension| extension == "png") {
            svg_to_png(&svg)?
        } else {
            svg.into_bytes()
        };
        fs::write(path, bytes).context(format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Renders the plot's SVG to PNG with resvg, with the system's fonts for the text.
fn svg_to_png(svg: &str) -> Result<Vec<u8>, SweepError> {
    let mut options = resvg::usvg::Options::default();
    options.fontdb_mut().load_system_fonts();
    if options.fontdb.is_empty() {
        return Err(failed(
            "a PNG plot needs a font for its text and this system has none (Debian: fonts-dejavu-core); write an .svg instead",
        ));
    }
    // fontdb maps `sans-serif` to Arial, which Debian does not ship: map it to a sans face the
    // system has (DejaVu Sans from fonts-dejavu-core), else text would fall back with a warning.
    let sans = options.fontdb.faces().find_map(|face| {
        face.families
            .iter()
            .map(|(family, _)| family.clone())
            .find(|family| family.contains("Sans") && !family.contains("Mono"))
    });
    if let Some(sans) = sans {
        options.fontdb_mut().set_sans_serif_family(sans);
    }
    let tree = resvg::usvg::Tree::from_str(svg, &options).context("reading the plot's SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).context("the plot has no size")?;
    resvg::render(&tree, resvg::tiny_skia::Transform::identity(), &mut pixmap.as_mut());
    pixmap.encode_png().context("encoding the PNG")
}
