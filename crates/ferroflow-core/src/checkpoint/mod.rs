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
pub use manifest::{CheckpointKind, FileEntry, MANIFEST_FORMAT_VERSION, Manifest, OPERATOR_IDS};
pub use store::{CheckpointStore, S3Options};

pub use crate::error::CheckpointError;
