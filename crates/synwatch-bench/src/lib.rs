//! The rate-tuning benchmark of synwatch (`synwatch bench`), its pure part: what rates to try
//! ([`rates`]), the `--lab` plan and its ground truth ([`lab_plan`]), the scanners compared with
//! ([`tools`]: their command lines and output readers), where the answers start to get lost
//! ([`knee`]), and the results as a table, JSON and a plot ([`report`], [`plot`]). It does no
//! I/O and reads no clock; the binary runs the steps and hands their figures in.

pub mod knee;
pub mod lab_plan;
pub mod plot;
pub mod rates;
pub mod report;
pub mod tools;

pub use knee::{Knee, StepRecall, StepResult, find_knee};
pub use lab_plan::{LabFamily, LabPlan, LabPlanError};
pub use rates::{RateError, parse_ramp, parse_rate, parse_rates};
pub use report::{Repetition, StepReport, SweepReport, ToolReport};
pub use tools::{ExternalTool, ToolError};
