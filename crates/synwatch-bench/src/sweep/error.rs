//! The errors of a sweep: the options ask for something impossible (a usage error, exit code
//! 2), or a step could not run (with what was being done).

use std::fmt::Display;

/// Why a sweep could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SweepError {
    /// The options ask for something the sweep cannot do here (the caller exits with 2).
    #[error("{0}")]
    Usage(String),
    /// A step failed: what was being done, and why.
    #[error("{0}")]
    Failed(String),
}

/// Adds what was being done to an error, as `SweepError::Failed`.
pub(crate) trait Context<T> {
    /// `what: error`.
    fn context(self, what: impl Display) -> Result<T, SweepError>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context(self, what: impl Display) -> Result<T, SweepError> {
        self.map_err(|error| SweepError::Failed(format!("{what}: {error}")))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Display) -> Result<T, SweepError> {
        self.ok_or_else(|| SweepError::Failed(what.to_string()))
    }
}

/// A usage error.
pub(crate) fn usage(message: impl Into<String>) -> SweepError {
    SweepError::Usage(message.into())
}

/// A failure.
pub(crate) fn failed(message: impl Into<String>) -> SweepError {
    SweepError::Failed(message.into())
}
