//! Checkpoints and savepoints: consistent snapshots of operator state, source positions,
//! watermarks and the sink epoch, stored incrementally in object storage.
//!
//! ## Layout in the store (under the configured prefix)
//! ```text
//! shared/<crc32>-<size>-<file name>        immutable state files (RocksDB SSTs), shared by checkpoints
//! checkpoints/<id:020>/<file name>         files private to one checkpoint (RocksDB MANIFEST, OPTIONS, …)
//! checkpoints/<id:020>.json                the manifest: written last, it is the commit point
//! savepoints/<name>/<file name>            private files of a savepoint
//! savepoints/<name>.json                   a savepoint's manifest (never garbage-collected)
//! ```
//! Manifests have unique, monotonic names and the newest complete one is found by listing: no
//! step relies on conditional PUT, which some S3-compatible stores ignore.
//!
//! A job run as several instances (a partition-scoped job in one consumer group) gives each
//! instance its own folder, `<instance>/`, with the layout above; [`PartitionHandOver`] finds the
//! newest state of a partition across every instance's folder.
//!
//! ## Incremental uploads
//! A checkpoint snapshots the state backend into a local directory (RocksDB: a checkpoint made of
//! hard links), then uploads only the shared files the store does not hold yet. Unchanged SSTs
//! cost nothing; after a small change only the new SSTs move.
//!
//! ## Retention
//! After a new manifest is durable, checkpoints beyond the newest `retain` are deleted (manifest
//! first, then private files), then every shared file that no remaining checkpoint or savepoint
//! references. A manifest is never left pointing at a deleted file.

mod coordinator;
mod handover;
mod manifest;
mod store;

pub use coordinator::{
    CheckpointConfig, CheckpointCoordinator, CheckpointMeta, Migration, RestoreOutcome, TakenCheckpoint,
    coordinator_meta,
};
pub use handover::{Located, OWNED_PARTITIONS, PartitionHandOver};
pub use manifest::{CheckpointKind, FileEntry, MANIFEST_FORMAT_VERSION, Manifest};
pub use store::{CheckpointStore, S3Options};

use thiserror::Error;

use crate::error::{ErrorDomain, RetryHint, StateError};

/// A checkpoint could not be written, read or restored.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The object store failed.
    #[error("checkpoint storage error at {location}: {message}")]
    Storage {
        /// Object or prefix involved.
        location: String,
        /// The store's error.
        message: String,
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
}
