//! The rate-tuning benchmark of synwatch (`synwatch bench`), its pure part: what rates to try
//! ([`rates`]), where the answers start to get lost ([`knee`]) and the picture of it
//! ([`plot`]). It does no I/O and reads no
//! clock; the binary runs the steps and hands their figures in.

pub mod knee;
pub mod plot;
pub mod rates;

pub use knee::{Knee, StepRecall, StepResult, find_knee};
pub use rates::{RateError, parse_ramp, parse_rate, parse_rates};
