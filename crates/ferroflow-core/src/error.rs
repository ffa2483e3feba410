//! Typed errors. Each says whose problem it is ([`ErrorDomain`]) and whether retrying can help
//! ([`RetryHint`]), so callers can decide between fixing input, retrying, and reporting a bug.

use std::path::PathBuf;

use thiserror::Error;

/// Whose problem an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDomain {
    /// Bad configuration or input: the user must change something.
    User,
    /// A system outside the engine failed (disk, network, broker, database).
    External,
    /// A bug or broken invariant inside the engine.
    Internal,
}

/// Whether retrying the failed operation can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    /// Retrying will fail the same way.
    NoRetry,
    /// The failure may be transient: retry with backoff.
    WithBackoff,
}

/// Invalid job configuration, detected when the job is built, before any record flows.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A duration that must be positive was zero or negative.
    #[error("{name} must be greater than zero, got {value_ms} ms")]
    NotPositive {
        /// The setting's name.
        name: &'static str,
        /// The value that was given, in milliseconds.
        value_ms: i64,
    },
    /// A duration that must not be negative was negative.
    #[error("{name} must not be negative, got {value_ms} ms")]
    Negative {
        /// The setting's name.
        name: &'static str,
        /// The value that was given, in milliseconds.
        value_ms: i64,
    },
    /// Two settings contradict each other.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// Always [`ErrorDomain::User`].
    pub fn domain(&self) -> ErrorDomain {
        ErrorDomain::User
    }
}

/// Converts a configured duration in milliseconds into a checked positive value.
pub(crate) fn positive_ms(name: &'static str, value_ms: i64) -> Result<i64, ConfigError> {
    if value_ms <= 0 { Err(ConfigError::NotPositive { name, value_ms }) } else { Ok(value_ms) }
}

/// Converts a configured duration in milliseconds into a checked non-negative value.
pub(crate) fn non_negative_ms(name: &'static str, value_ms: i64) -> Result<i64, ConfigError> {
    if value_ms < 0 { Err(ConfigError::Negative { name, value_ms }) } else { Ok(value_ms) }
}

/// Converts a [`std::time::Duration`] to milliseconds, saturating at `i64::MAX`.
pub(crate) fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A state backend failed.
#[derive(Debug, Error)]
pub enum StateError {
    /// Reading or writing local files failed.
    #[error("state I/O error at {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored state could not be decoded: it is corrupt or was written by an incompatible version.
    #[error("state is corrupt or incompatible ({what}); restore from an earlier snapshot or migrate it")]
    Corrupt {
        /// What failed to decode.
        what: String,
    },
    /// The storage engine reported an error.
    #[error("state backend error: {0}")]
    Backend(String),
}

impl StateError {
    /// Corruption is the caller's to handle (pick another snapshot); I/O may be transient.
    pub fn domain(&self) -> ErrorDomain {
        match self {
            StateError::Io { .. } | StateError::Backend(_) => ErrorDomain::External,
            StateError::Corrupt { .. } => ErrorDomain::User,
        }
    }

    /// I/O errors may succeed on retry; corruption never does.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            StateError::Io { .. } | StateError::Backend(_) => RetryHint::WithBackoff,
            StateError::Corrupt { .. } => RetryHint::NoRetry,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StateError::Io { path: path.into(), source }
    }
}

/// A source could not deliver records.
#[derive(Debug, Error)]
pub enum SourceError {
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An external system (broker, network) failed.
    #[error("source failed: {message}")]
    External {
        /// What failed, for the operator.
        message: String,
        /// Whether retrying may help.
        retry: RetryHint,
    },
}

impl SourceError {
    /// Source failures come from outside the engine.
    pub fn domain(&self) -> ErrorDomain {
        ErrorDomain::External
    }
}

/// A sink could not accept output.
#[derive(Debug, Error)]
pub enum SinkError {
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Output could not be encoded.
    #[error("cannot encode output: {0}")]
    Encode(String),
    /// The downstream system failed.
    #[error("sink failed: {message}")]
    External {
        /// What failed, for the operator.
        message: String,
        /// Whether retrying may help.
        retry: RetryHint,
    },
}

impl SinkError {
    /// Encoding errors are bugs or bad data; the rest come from outside the engine.
    pub fn domain(&self) -> ErrorDomain {
        match self {
            SinkError::Encode(_) => ErrorDomain::Internal,
            _ => ErrorDomain::External,
        }
    }
}

/// Why a job stopped with an error.
#[derive(Debug, Error)]
pub enum JobError {
    /// The job's configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The state backend failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Taking or restoring a checkpoint failed.
    #[cfg(feature = "checkpoints")]
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// A task of the runner stopped unexpectedly (panicked or was cancelled).
    #[error("runner task `{task}` stopped unexpectedly: {detail}")]
    Task {
        /// Which task.
        task: &'static str,
        /// What happened.
        detail: String,
    },
}

impl JobError {
    /// The domain of the underlying error.
    pub fn domain(&self) -> ErrorDomain {
        match self {
            JobError::Config(e) => e.domain(),
            JobError::Source(e) => e.domain(),
            JobError::Sink(e) => e.domain(),
            JobError::State(e) => e.domain(),
            #[cfg(feature = "checkpoints")]
            JobError::Checkpoint(e) => e.domain(),
            JobError::Task { .. } => ErrorDomain::Internal,
        }
    }
}
