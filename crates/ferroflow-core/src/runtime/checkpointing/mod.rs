//! Checkpointing inside the runner, as one unit behind the `checkpoints` feature: restore at
//! start, the snapshot and upload at a barrier, and, for partition-scoped jobs, handing partition
//! state over to and from other instances (release, carry, start).
//!
//! Without the feature [`Checkpointing`] is a type with no values, so the processing loop holds
//! an `Option<Checkpointing>` that is always `None` and needs no `cfg` of its own.

#[cfg(feature = "checkpoints")]
mod enabled;
#[cfg(feature = "checkpoints")]
mod handover;

#[cfg(feature = "checkpoints")]
pub(crate) use enabled::{CheckpointSettings, Checkpointing};

#[cfg(not(feature = "checkpoints"))]
mod disabled;
#[cfg(not(feature = "checkpoints"))]
pub(crate) use disabled::Checkpointing;

/// Where a run resumes, from the checkpoint it restored.
#[derive(Debug)]
pub(crate) struct Resumed {
    pub(crate) id: u64,
    pub(crate) offsets: std::collections::BTreeMap<crate::record::PartitionId, u64>,
    pub(crate) watermark: i64,
    pub(crate) epoch: u64,
}
