//! The rate-tuning benchmark of synwatch (`synwatch bench`). Its pure part does no I/O and reads
//! no clock: what rates to try ([`rates`]), the `--lab` plan and its ground truth
//! ([`lab_plan`]), every scanner the benchmarks compare with ([`tools`]: their command lines and
//! output readers, also used by `lab_bench`), where the answers start to get lost ([`knee`]),
//! and the results as a table, JSON and a plot ([`report`], [`plot`]). [`sweep`] runs the steps
//! (the engine, the lab, the compared programs, CPU accounting from procfs) and hands their
//! figures to the pure part; the binary only parses the command line into [`SweepOptions`].

pub mod knee;
pub mod lab_plan;
pub mod plot;
pub mod rates;
pub mod report;
pub mod sweep;
pub mod tools;

pub use knee::{Knee, StepRecall, StepResult, find_knee};
pub use lab_plan::{LabFamily, LabPlan, LabPlanError};
pub use rates::{RateError, parse_ramp, parse_rate, parse_rates};
pub use report::{Repetition, StepReport, SweepReport, ToolReport};
pub use sweep::{Outputs, SweepError, SweepOptions, SweepTargets};
pub use tools::{ExternalTool, ToolError};
