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

    /// Always [`RetryHint::NoRetry`]: the configuration must change first.
    pub fn retry_hint(&self) -> RetryHint {
        RetryHint::NoRetry
    }
}

/// An error of a connector (a Kafka client, a ClickHouse sink, a user's own source or sink),
/// carried through the engine whole: the caller can still ask whose problem it is and whether to
/// retry, and get the connector's own type back with `connector_error::<T>()` on
/// [`SourceError`], [`SinkError`] or [`JobError`].
///
/// # Examples
/// ```
/// use ferroflow_core::error::ConnectorError;
/// use ferroflow_core::{ErrorDomain, JobError, RetryHint, SinkError};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("access denied for {user}")]
/// struct Denied { user: String }
///
/// impl ConnectorError for Denied {
///     fn domain(&self) -> ErrorDomain { ErrorDomain::User }
///     fn retry_hint(&self) -> RetryHint { RetryHint::NoRetry }
/// }
///
/// let job = JobError::Sink(SinkError::connector(Denied { user: "bob".into() }));
/// assert_eq!(job.retry_hint(), RetryHint::NoRetry);
/// assert_eq!(job.connector_error::<Denied>().map(|d| d.user.as_str()), Some("bob"));
/// assert_eq!(job.to_string(), "access denied for bob");
/// ```
pub trait ConnectorError: std::error::Error + Send + Sync + 'static {
    /// Whose problem the error is.
    fn domain(&self) -> ErrorDomain;
    /// Whether retrying can help.
    fn retry_hint(&self) -> RetryHint;
}

/// A connector's error in a box, as [`SourceError::Connector`] and [`SinkError::Connector`] carry
/// it: it displays as the connector's error and has the same source.
#[derive(Debug)]
pub struct BoxedConnectorError(Box<dyn ConnectorError>);

impl BoxedConnectorError {
    /// The connector's error.
    pub fn get(&self) -> &dyn ConnectorError {
        self.0.as_ref()
    }

    /// The connector's error, if it is a `T`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        let e: &(dyn std::error::Error + 'static) = self.0.as_ref();
        e.downcast_ref::<T>()
    }
}

impl std::fmt::Display for BoxedConnectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for BoxedConnectorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
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
    /// The state backend refused an operation (a broken invariant of its use, an unsupported call).
    #[error("state backend error: {0}")]
    Backend(String),
    /// RocksDB reported an error.
    #[cfg(feature = "rocksdb")]
    #[error("RocksDB error: {0}")]
    RocksDb(#[source] rocksdb::Error),
}

impl StateError {
    /// Corruption is the caller's to handle (pick another snapshot); I/O may be transient.
    pub fn domain(&self) -> ErrorDomain {
        match self {
            StateError::Io { .. } | StateError::Backend(_) => ErrorDomain::External,
            #[cfg(feature = "rocksdb")]
            StateError::RocksDb(_) => ErrorDomain::External,
            StateError::Corrupt { .. } => ErrorDomain::User,
        }
    }

    /// I/O errors may succeed on retry; corruption never does.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            StateError::Io { .. } | StateError::Backend(_) => RetryHint::WithBackoff,
            #[cfg(feature = "rocksdb")]
            StateError::RocksDb(_) => RetryHint::WithBackoff,
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
    /// An external system (broker, network) failed; for sources without an error type of their own.
    #[error("source failed: {message}")]
    External {
        /// What failed, for the operator.
        message: String,
        /// Whether retrying may help.
        retry: RetryHint,
    },
    /// A connector's own error (e.g. the Kafka source's), kept whole.
    #[error(transparent)]
    Connector(BoxedConnectorError),
}

impl SourceError {
    /// Wraps a connector's own error.
    pub fn connector(e: impl ConnectorError) -> Self {
        SourceError::Connector(BoxedConnectorError(Box::new(e)))
    }

    /// Source failures come from outside the engine, unless the connector says otherwise.
    pub fn domain(&self) -> ErrorDomain {
        match self {
            SourceError::Connector(e) => e.get().domain(),
            SourceError::Io { .. } | SourceError::External { .. } => ErrorDomain::External,
        }
    }

    /// Whether retrying may help.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            SourceError::Io { .. } => RetryHint::WithBackoff,
            SourceError::External { retry, .. } => *retry,
            SourceError::Connector(e) => e.get().retry_hint(),
        }
    }

    /// The connector's own error, if it is a `T`.
    pub fn connector_error<T: std::error::Error + 'static>(&self) -> Option<&T> {
        match self {
            SourceError::Connector(e) => e.downcast_ref(),
            _ => None,
        }
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
    /// The downstream system failed; for sinks without an error type of their own.
    #[error("sink failed: {message}")]
    External {
        /// What failed, for the operator.
        message: String,
        /// Whether retrying may help.
        retry: RetryHint,
    },
    /// A connector's own error (e.g. the ClickHouse sink's), kept whole.
    #[error(transparent)]
    Connector(BoxedConnectorError),
}

impl SinkError {
    /// Wraps a connector's own error.
    pub fn connector(e: impl ConnectorError) -> Self {
        SinkError::Connector(BoxedConnectorError(Box::new(e)))
    }

    /// Encoding errors are bugs or bad data; the rest come from outside the engine, unless the
    /// connector says otherwise.
    pub fn domain(&self) -> ErrorDomain {
        match self {
            SinkError::Encode(_) => ErrorDomain::Internal,
            SinkError::Connector(e) => e.get().domain(),
            SinkError::Io { .. } | SinkError::External { .. } => ErrorDomain::External,
        }
    }

    /// Whether retrying may help.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            SinkError::Io { .. } => RetryHint::WithBackoff,
            SinkError::Encode(_) => RetryHint::NoRetry,
            SinkError::External { retry, .. } => *retry,
            SinkError::Connector(e) => e.get().retry_hint(),
        }
    }

    /// The connector's own error, if it is a `T`.
    pub fn connector_error<T: std::error::Error + 'static>(&self) -> Option<&T> {
        match self {
            SinkError::Connector(e) => e.downcast_ref(),
            _ => None,
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
    Checkpoint(#[from] CheckpointError),
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

    /// Whether running the job again may succeed without a change.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            JobError::Config(e) => e.retry_hint(),
            JobError::Source(e) => e.retry_hint(),
            JobError::Sink(e) => e.retry_hint(),
            JobError::State(e) => e.retry_hint(),
            #[cfg(feature = "checkpoints")]
            JobError::Checkpoint(e) => e.retry_hint(),
            JobError::Task { .. } => RetryHint::NoRetry,
        }
    }

    /// The source's or sink's connector error, if it is a `T` (e.g. the ClickHouse sink's
    /// `ClickHouseError`, to tell an authentication failure from a timeout).
    pub fn connector_error<T: std::error::Error + 'static>(&self) -> Option<&T> {
        match self {
            JobError::Source(e) => e.connector_error(),
            JobError::Sink(e) => e.connector_error(),
            _ => None,
        }
    }
}

/// A checkpoint could not be written, read or restored.
#[cfg(feature = "checkpoints")]
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The object store failed.
    #[error("checkpoint storage error at {location}: {source}")]
    Storage {
        /// Object or prefix involved.
        location: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// The state backend failed while snapshotting or restoring.
    #[error(transparent)]
    State(#[from] StateError),
    /// The store URL or options are invalid.
    #[error("invalid checkpoint configuration: {0}")]
    Config(String),
    /// A manifest or file failed validation.
    #[error("checkpoint {id} is unusable: {reason}")]
    Invalid {
        /// Checkpoint id or savepoint name.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// State was written in a format this build cannot read and no migration was supplied.
    #[error(
        "state format version {found} of {id} is incompatible with this build (expects {expected}); \
         supply a migration with CheckpointConfig::migration or start from another savepoint"
    )]
    IncompatibleFormat {
        /// Checkpoint id or savepoint name.
        id: String,
        /// The version in the manifest.
        found: u32,
        /// The version this job expects.
        expected: u32,
    },
    /// Checkpoints exist but none could be restored, and starting empty was not allowed.
    #[error(
        "{found} checkpoint(s) exist under {location} but none could be restored; refusing to start \
         empty (set allow_empty_start to override, or restore a savepoint)"
    )]
    NoUsableCheckpoint {
        /// Where the checkpoints are.
        location: String,
        /// How many manifests were found.
        found: usize,
    },
    /// The checkpoint holds state of operators that the job does not have: their state would be
    /// dropped (Flink refuses the same way unless told to allow non-restored state).
    #[error(
        "{id} holds state of operator id(s) [{}] that this job does not have (its stateful operators are [{}]); \
         give each stateful operator the id it had when the state was written (`.id(\"...\")` after \
         `.window(..)` or `.dedup_by(..)`), or drop that state on purpose with \
         `allow_non_restored_state(true)`",
        unmatched.join(", "),
        job.join(", ")
    )]
    UnmatchedState {
        /// Checkpoint id or savepoint name.
        id: String,
        /// Operator ids in the checkpoint that the job does not have.
        unmatched: Vec<String>,
        /// The job's stateful operator ids.
        job: Vec<String>,
    },
    /// Another process claimed the checkpoint folder after this one: two running processes share
    /// an instance id, or this process was replaced by a restarted one. This one stops without
    /// committing anything more.
    #[error(
        "checkpoints at {location} were taken over by another writer, {by}; this writer, {ours}, stops \
         without committing: two running processes share one instance id, or a restarted process \
         replaced this one"
    )]
    Fenced {
        /// The checkpoint folder.
        location: String,
        /// This process's claim.
        ours: String,
        /// The newer claim.
        by: String,
    },
    /// Local file I/O failed.
    #[error("checkpoint I/O error at {path}: {source}")]
    Io {
        /// File involved.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(feature = "checkpoints")]
impl CheckpointError {
    /// Whose problem the error is.
    pub fn domain(&self) -> ErrorDomain {
        match self {
            CheckpointError::Storage { .. } | CheckpointError::Io { .. } => ErrorDomain::External,
            CheckpointError::State(e) => e.domain(),
            _ => ErrorDomain::User,
        }
    }

    /// Whether retrying may succeed.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            CheckpointError::Storage { .. } | CheckpointError::Io { .. } => RetryHint::WithBackoff,
            CheckpointError::State(e) => e.retry_hint(),
            _ => RetryHint::NoRetry,
        }
    }

    pub(crate) fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        CheckpointError::Io { path: path.into(), source }
    }

    /// True when the store said the object does not exist (as opposed to failing to answer).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CheckpointError::Storage { source: object_store::Error::NotFound { .. }, .. })
    }
}
