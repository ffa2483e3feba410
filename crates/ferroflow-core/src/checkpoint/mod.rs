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
//! writers/<epoch:020>-<nonce>.json         the claim of the process writing the folder
//! ```
//! Manifests have unique, monotonic names and the newest complete one is found by listing: no
//! step relies on conditional PUT, which some S3-compatible stores ignore.
//!
//! ## One writer per folder
//! A process claims the folder before it restores and writes; a later claim fences it (it stops
//! with [`CheckpointError::Fenced`] before its next commit). Ids carry the writer's epoch
//! ([`EPOCH_SPAN`]), so no two writers ever write one key.
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
//! references. A manifest is never left pointing at a deleted file. Objects an earlier writer
//! uploaded are deleted only once the store wrote them well before this writer's claim.

mod coordinator;
mod handover;
mod manifest;
mod store;
mod writer;

pub use coordinator::{
    CheckpointConfig, CheckpointCoordinator, CheckpointMeta, EPOCH_SPAN, Migration, RestoreOutcome,
    TakenCheckpoint, coordinator_meta,
};
pub use handover::{Located, OWNED_PARTITIONS, PartitionHandOver};
pub use manifest::{CheckpointKind, FileEntry, MANIFEST_FORMAT_VERSION, Manifest, OPERATOR_IDS};
pub use store::{CheckpointStore, S3Options, StoredObject};
pub use writer::{WriterClaim, host_name};

pub use crate::error::CheckpointError;
