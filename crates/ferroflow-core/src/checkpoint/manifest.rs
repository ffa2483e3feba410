//! The manifest: everything a restore needs, written last as the checkpoint's commit point.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::PartitionId;

/// Version of the manifest's own layout.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// A periodic checkpoint (garbage-collected) or a named savepoint (kept until deleted by hand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// Taken periodically; only the newest few are kept.
    Checkpoint,
    /// Taken on demand or at shutdown; never garbage-collected.
    Savepoint,
}

/// One state file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the snapshot directory.
    pub name: String,
    /// Object key relative to the store prefix.
    pub object: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC32 of the contents.
    pub crc32: u32,
    /// True for immutable files shared between checkpoints.
    pub shared: bool,
}

/// Metadata key under which a checkpoint lists the job's stateful operator ids (a JSON array):
/// a restore maps state to operators by them.
pub const OPERATOR_IDS: &str = "operators.ids";

/// Describes one complete checkpoint or savepoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT_VERSION`] at write time.
    pub format_version: u32,
    /// Version of the job's state layout (see [`CheckpointConfig::state_format_version`](super::CheckpointConfig)).
    pub state_format_version: u32,
    /// Checkpoint or savepoint.
    pub kind: CheckpointKind,
    /// Monotonic checkpoint id (the id the savepoint was taken at, for savepoints).
    pub id: u64,
    /// Savepoint name (savepoints only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The job that wrote it.
    pub job_id: String,
    /// Wall-clock time of the checkpoint, ms since epoch.
    pub created_at_ms: i64,
    /// Per source partition, the offset of the next record to read.
    pub source_offsets: BTreeMap<PartitionId, u64>,
    /// The combined watermark at the checkpoint.
    pub watermark: i64,
    /// The sink epoch the checkpoint closes (every output before it is durable in the sink).
    pub sink_epoch: u64,
    /// The state files.
    pub files: Vec<FileEntry>,
    /// Free-form metadata from the job.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Manifest {
    /// Total bytes of the state files.
    pub fn state_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The stateful operator ids the job had when it wrote this checkpoint (`None` when the
    /// checkpoint does not say: written before ids were recorded).
    pub fn operator_ids(&self) -> Option<Vec<String>> {
        self.metadata.get(OPERATOR_IDS).and_then(|ids| serde_json::from_str(ids).ok())
    }

    /// A name for logs: `checkpoint 42` or `savepoint before-upgrade`.
    pub fn label(&self) -> String {
        match (&self.kind, &self.name) {
            (CheckpointKind::Savepoint, Some(n)) => format!("savepoint {n}"),
            _ => format!("checkpoint {}", self.id),
        }
    }
}
