//! A sweep's results: what each repetition of each step measured, the per-step medians, each
//! tool's knee, and the three ways they are shown (the table on stdout, `--json`, the plot's
//! series). Figures a tool does not report (masscan has no drop counter) are `None` and shown
//! as `-`.

use serde::Serialize;

use crate::knee::{Knee, StepResult, find_knee};
use crate::plot::{PlotPoint, PlotSeries, human_rate};

/// What one repetition of one step measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Repetition {
    /// Probes sent per second while sending (the first round).
    pub achieved_pps: Option<f64>,
    /// Probes of the first round (every target once); CPU per probe is per these.
    pub probes: u64,
    /// Replies matched to a probe (SYN-ACK, RST, ICMP unreachable).
    pub replies: Option<u64>,
    /// Open ports reported.
    pub open_found: u64,
    /// Of those, the ones the ground truth says are open (all of them outside the lab).
    pub open_true: u64,
    /// Packets the receive path dropped.
    pub receive_drops: Option<u64>,
    /// Sends that failed.
    pub send_errors: Option<u64>,
    /// CPU time (user + system) of the scanner over the step.
    pub cpu_seconds: f64,
    /// Wall time of the step.
    pub wall_seconds: f64,
    /// The program did not exit after its wait and was stopped (SIGINT) at its deadline.
    pub stopped: bool,
}

/// One requested rate of one tool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    /// Requested packets per second.
    pub requested: u64,
    /// Each repetition.
    pub repetitions: Vec<Repetition>,
}

/// One tool's sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolReport {
    /// `synwatch-syn`, `synwatch-connect`, `masscan`, ...
    pub name: String,
    /// Its steps.
    pub steps: Vec<StepReport>,
}

/// The whole sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepReport {
    /// What was scanned (`lab: 65536 hosts × 1 port, 5 % open`, or the user's targets).
    pub targets: String,
    /// Probes per scan (first round).
    pub probes: u64,
    /// Open ports the lab has (none outside the lab: recall is then against the best step).
    pub ground_truth_open: Option<u64>,
    /// The recall threshold of the knee, 0 to 1.
    pub min_recall: f64,
    /// Every tool's steps.
    pub tools: Vec<ToolReport>,
}

/// One step's medians.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepMedians {
    /// Requested packets per second.
    pub requested: u64,
    /// Median achieved packets per second.
    pub achieved_pps: Option<f64>,
    /// Median replies.
    pub replies: Option<f64>,
    /// Median open ports reported.
    pub open_found: f64,
    /// Recall of the median true open ports against the reference, 0 to 1.
    pub recall: f64,
    /// Median receive drops.
    pub receive_drops: Option<f64>,
    /// Median send errors.
    pub send_errors: Option<f64>,
    /// Median CPU time per first-round probe, in microseconds.
    pub cpu_us_per_probe: f64,
    /// Median wall time, seconds.
    pub wall_seconds: f64,
}

/// A step counts as sent at its requested rate when it achieved at least this share of it.
pub const ACHIEVED_SHARE: f64 = 0.9;

/// One tool's summary: medians, knee and recommendation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSummary {
    /// The tool.
    pub name: String,
    /// The knee: the highest requested rate up to which recall held, if any step met it.
    pub knee: Option<u64>,
    /// Whether recall fell off above the knee (false: it never did within the range tried).
    pub bent: bool,
    /// The highest median achieved rate up to the knee, when the knee's step fell short of its
    /// requested rate by more than [`ACHIEVED_SHARE`]: the host or path sends no faster.
    pub ceiling_pps: Option<f64>,
    /// The rate to configure: the knee, or the ceiling rounded down to two significant digits
    /// when the sending topped out below the knee (asking for more would not send faster).
    pub recommended: Option<u64>,
    /// Per-step medians.
    pub steps: Vec<StepMedians>,
}

/// `rate` rounded down to two significant digits (102,700 to 100,000; 33,600 to 33,000).
fn round_down(rate: f64) -> u64 {
    let rate = rate.max(1.0) as u64;
    let mut unit = 1;
    while rate / unit >= 100 {
        unit *= 10;
    }
    (rate / unit * unit).max(1)
}

/// The recommendation from the knee and the achieved rates (see [`ToolSummary`]).
fn recommend(knee: Option<u64>, steps: &[StepMedians]) -> (Option<f64>, Option<u64>) {
    let Some(knee) = knee else { return (None, None) };
    let achieved_at_knee = steps.iter().find(|step| step.requested == knee).and_then(|step| step.achieved_pps);
    match achieved_at_knee {
        Some(achieved) if achieved < ACHIEVED_SHARE * knee as f64 => {
            let ceiling = steps
                .iter()
                .filter(|step| step.requested <= knee)
                .filter_map(|step| step.achieved_pps)
                .fold(0.0, f64::max);
            (Some(ceiling), Some(round_down(ceiling).min(knee)))
        }
        _ => (None, Some(knee)),
    }
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.filter(|value| value.is_finite()).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[middle] } else { (values[middle - 1] + values[middle]) / 2.0 })
}

/// The median of a figure only when every repetition has it.
fn median_of_known(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Option<Vec<f64>> = values.collect();
    values.and_then(|values| median(values.into_iter()))
}

impl ToolReport {
    /// The knee of this tool's steps.
    pub fn knee(&self, ground_truth_open: Option<u64>, min_recall: f64) -> Knee {
        let steps: Vec<StepResult> = self
            .steps
            .iter()
            .map(|step| StepResult {
                requested: step.requested,
                found: step.repetitions.iter().map(|repetition| repetition.open_true).collect(),
            })
            .collect();
        find_knee(&steps, ground_truth_open, min_recall)
    }
}

impl SweepReport {
    /// Medians and knee of every tool.
    pub fn summaries(&self) -> Vec<ToolSummary> {
        self.tools
            .iter()
            .map(|tool| {
                let knee = tool.knee(self.ground_truth_open, self.min_recall);
                let mut steps: Vec<&StepReport> = tool.steps.iter().collect();
                steps.sort_by_key(|step| step.requested);
                let medians: Vec<StepMedians> = steps
                    .iter()
                    .map(|step| {
                        let repetitions = &step.repetitions;
                        let recall = knee
                            .steps
                            .iter()
                            .find(|judged| judged.requested == step.requested)
                            .map_or(0.0, |judged| judged.recall);
                        StepMedians {
                            requested: step.requested,
                            achieved_pps: median_of_known(repetitions.iter().map(|r| r.achieved_pps)),
                            replies: median_of_known(repetitions.iter().map(|r| r.replies.map(|v| v as f64))),
                            open_found: median(repetitions.iter().map(|r| r.open_found as f64)).unwrap_or(0.0),
                            recall,
                            receive_drops: median_of_known(
                                repetitions.iter().map(|r| r.receive_drops.map(|v| v as f64)),
                            ),
                            send_errors: median_of_known(repetitions.iter().map(|r| r.send_errors.map(|v| v as f64))),
                            cpu_us_per_probe: median(
                                repetitions.iter().map(|r| r.cpu_seconds * 1e6 / r.probes.max(1) as f64),
                            )
                            .unwrap_or(0.0),
                            wall_seconds: median(repetitions.iter().map(|r| r.wall_seconds)).unwrap_or(0.0),
                        }
                    })
                    .collect();
                let (ceiling_pps, recommended) = recommend(knee.rate, &medians);
                ToolSummary {
                    name: tool.name.clone(),
                    knee: knee.rate,
                    bent: knee.bent,
                    ceiling_pps,
                    recommended,
                    steps: medians,
                }
            })
            .collect()
    }

    /// The table printed on stdout: one row per tool and step (medians), then each tool's knee.
    pub fn table(&self) -> String {
        let summaries = self.summaries();
        let optional = |value: Option<f64>, digits: usize| value.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        let mut rows = vec![
            [
                "tool",
                "requested/s",
                "achieved/s",
                "replies",
                "open",
                "recall %",
                "rx drops",
                "send errors",
                "CPU µs/probe",
                "wall s",
            ]
            .map(str::to_string),
        ];
        for summary in &summaries {
            for step in &summary.steps {
                rows.push([
                    summary.name.clone(),
                    human_rate(step.requested as f64),
                    step.achieved_pps.map_or("-".into(), human_rate),
                    optional(step.replies, 0),
                    format!("{:.0}", step.open_found),
                    format!("{:.2}", step.recall * 100.0),
                    optional(step.receive_drops, 0),
                    optional(step.send_errors, 0),
                    format!("{:.2}", step.cpu_us_per_probe),
                    format!("{:.2}", step.wall_seconds),
                ]);
            }
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|column| rows.iter().map(|row| row[column].chars().count()).max().unwrap_or(0))
            .collect();
        let mut text = String::new();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(
                    |(column, (cell, width))| {
                        if column == 0 { format!("{cell:<width$}") } else { format!("{cell:>width$}") }
                    },
                )
                .collect();
            text += cells.join("  ").trim_end();
            text.push('\n');
        }
        let reference = match self.ground_truth_open {
            Some(open) => format!("the lab's {open} open ports"),
            None => "each tool's best step".to_string(),
        };
        text += &format!(
            "\nrecall is against {reference}; the knee is the highest rate up to which every step keeps at least {}% of it\n",
            trim_percent(self.min_recall * 100.0)
        );
        for summary in &summaries {
            let setting = if summary.name.starts_with("synwatch") { "engine.max_rate" } else { "rate" };
            let name = &summary.name;
            text += &match (summary.knee, summary.bent, summary.ceiling_pps, summary.recommended) {
                (Some(knee), bent, Some(ceiling), Some(recommended)) => format!(
                    "{name}: recall held up to {}/s{}, but sending topped out at {}/s achieved: recommended {setting}: {recommended}\n",
                    human_rate(knee as f64),
                    if bent { " (the knee)" } else { " (every rate tried)" },
                    human_rate(ceiling),
                ),
                (Some(knee), true, _, _) => {
                    format!("{name}: knee at {}/s: recommended {setting}: {knee}\n", human_rate(knee as f64))
                }
                (Some(knee), false, _, _) => format!(
                    "{name}: no knee up to {}/s (recall held at every rate tried; try higher rates): {setting}: {knee} is safe\n",
                    human_rate(knee as f64)
                ),
                (None, ..) => format!(
                    "{name}: recall is below the threshold even at the lowest rate: try lower rates, retries, or look for loss on the path\n"
                ),
            };
        }
        text
    }

    /// The `--json` document: the sweep as measured plus the summaries.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "targets": self.targets,
            "probes": self.probes,
            "ground_truth_open": self.ground_truth_open,
            "min_recall": self.min_recall,
            "tools": self.tools,
            "summaries": self.summaries(),
        })
    }

    /// The plot's series: per tool, the median achieved rate and recall of each step, and the
    /// knee when recall did fall off above it.
    pub fn plot_series(&self) -> Vec<PlotSeries> {
        self.summaries()
            .into_iter()
            .map(|summary| PlotSeries {
                points: summary
                    .steps
                    .iter()
                    .map(|step| PlotPoint {
                        requested: step.requested,
                        achieved: step.achieved_pps.unwrap_or(0.0),
                        recall: step.recall,
                    })
                    .collect(),
                knee: summary.knee.filter(|_| summary.bent),
                name: summary.name,
            })
            .collect()
    }
}

fn trim_percent(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repetition(achieved: f64, open_true: u64) -> Repetition {
        Repetition {
            achieved_pps: Some(achieved),
            probes: 1_000,
            replies: Some(1_000),
            open_found: open_true,
            open_true,
            receive_drops: Some(0),
            send_errors: Some(0),
            cpu_seconds: 0.002,
            wall_seconds: 1.5,
            stopped: false,
        }
    }

    fn report() -> SweepReport {
        let synwatch = ToolReport {
            name: "synwatch-syn".into(),
            steps: vec![
                StepReport {
                    requested: 100_000,
                    repetitions: vec![repetition(99_000.0, 50), repetition(98_000.0, 50), repetition(97_000.0, 50)],
                },
                StepReport {
                    requested: 10_000,
                    repetitions: vec![repetition(9_990.0, 50), repetition(9_980.0, 50), repetition(10_010.0, 50)],
                },
                StepReport {
                    requested: 1_000_000,
                    repetitions: vec![repetition(700_000.0, 40), repetition(720_000.0, 41), repetition(650_000.0, 30)],
                },
            ],
        };
        let masscan = ToolReport {
            name: "masscan".into(),
            steps: vec![StepReport {
                requested: 10_000,
                repetitions: vec![Repetition {
                    replies: None,
                    receive_drops: None,
                    send_errors: None,
                    ..repetition(10_000.0, 49)
                }],
            }],
        };
        SweepReport {
            targets: "lab".into(),
            probes: 1_000,
            ground_truth_open: Some(50),
            min_recall: 0.999,
            tools: vec![synwatch, masscan],
        }
    }

    fn json_recommended(report: &SweepReport) -> Option<u64> {
        report.json()["summaries"][0]["recommended"].as_u64()
    }

    #[test]
    fn summaries_take_medians_sort_steps_and_find_each_knee() {
        let summaries = report().summaries();
        let synwatch = &summaries[0];
        assert_eq!(synwatch.steps.iter().map(|step| step.requested).collect::<Vec<_>>(), [10_000, 100_000, 1_000_000]);
        assert_eq!(synwatch.steps[1].achieved_pps, Some(98_000.0));
        assert_eq!(synwatch.steps[2].open_found, 40.0);
        assert!((synwatch.steps[2].recall - 0.8).abs() < 1e-9);
        assert!((synwatch.steps[0].cpu_us_per_probe - 2.0).abs() < 1e-9);
        assert_eq!((synwatch.knee, synwatch.bent), (Some(100_000), true));
        let masscan = &summaries[1];
        assert_eq!((masscan.knee, masscan.steps[0].replies, masscan.steps[0].receive_drops), (None, None, None));
        assert!((masscan.steps[0].recall - 0.98).abs() < 1e-9);
    }

    #[test]
    fn the_table_json_and_plot_carry_the_same_figures() {
        let report = report();
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("tool") && lines[0].contains("recall %"), "{table}");
        assert!(lines[3].starts_with("synwatch-syn") && lines[3].contains("700k") && lines[3].contains("80.00"));
        assert!(lines[4].starts_with("masscan") && lines[4].contains(" - "), "{}", lines[4]);
        assert!(table.contains("against the lab's 50 open ports") && table.contains("99.9%"), "{table}");
        assert!(table.contains("synwatch-syn: knee at 100k/s: recommended engine.max_rate: 100000"), "{table}");
        assert_eq!(json_recommended(&report), Some(100_000));
        assert!(table.contains("masscan: recall is below the threshold even at the lowest rate"), "{table}");
        let json = report.json();
        assert_eq!(json["summaries"][0]["knee"], 100_000);
        assert_eq!(json["tools"][0]["steps"][2]["repetitions"][1]["open_true"], 41);
        assert_eq!(json["tools"][1]["steps"][0]["repetitions"][0]["replies"], serde_json::Value::Null);
        let series = report.plot_series();
        assert_eq!(series[0].knee, Some(100_000));
        assert_eq!(series[0].points[2].achieved, 700_000.0);
        assert_eq!(series[1].knee, None);
    }

    #[test]
    fn a_sender_that_tops_out_below_the_knee_is_recommended_its_ceiling() {
        // Recall holds everywhere, but above 100k/s the host sends no faster (as in the lab,
        // where the targets' kernel shares the scanner's cores).
        let steps = [(10_000u64, 10_000.0), (100_000, 97_000.0), (400_000, 108_600.0), (2_000_000, 85_000.0)]
            .iter()
            .map(|&(requested, achieved)| StepReport { requested, repetitions: vec![repetition(achieved, 50)] })
            .collect();
        let report = SweepReport {
            targets: "lab".into(),
            probes: 1_000,
            ground_truth_open: Some(50),
            min_recall: 0.999,
            tools: vec![ToolReport { name: "synwatch-syn".into(), steps }],
        };
        let summary = &report.summaries()[0];
        assert_eq!((summary.knee, summary.bent), (Some(2_000_000), false));
        assert_eq!((summary.ceiling_pps, summary.recommended), (Some(108_600.0), Some(100_000)));
        let table = report.table();
        assert!(
            table.contains("recall held up to 2M/s (every rate tried), but sending topped out at 108.6k/s achieved: recommended engine.max_rate: 100000"),
            "{table}"
        );
        assert_eq!((round_down(33_600.0), round_down(9_870.0), round_down(42.0)), (33_000, 9_800, 42));
    }

    #[test]
    fn a_curve_that_never_bends_says_to_try_higher_rates() {
        let mut report = report();
        report.tools.truncate(1);
        report.tools[0].steps.truncate(2);
        let table = report.table();
        assert!(table.contains("no knee up to 100k/s"), "{table}");
        assert_eq!(report.plot_series()[0].knee, None, "no knee line where the curve never bent");
    }
}
