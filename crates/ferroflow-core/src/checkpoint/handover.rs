//! Finds the newest checkpointed state of source partitions across every instance of a job, and
//! downloads it: how a partition's state follows the partition when the consumer group moves it.
//!
//! Each instance checkpoints into its own folder under a shared base (`<base>/<instance>/…`).
//! A partition's offset only grows from one owner to the next (a new owner resumes where the
//! previous one checkpointed), so the manifest holding the highest offset for a partition holds
//! its newest state, whichever instance wrote it. Finding it takes listings and manifest reads
//! only: no lease, no conditional PUT, no coordinator service.

use std::collections::BTreeMap;
use std::path::Path;

use super::CheckpointError;
use super::coordinator::{EPOCH_SPAN, download_files};
use super::manifest::Manifest;
use super::store::CheckpointStore;
use super::writer::newest_epoch;
use crate::record::PartitionId;

const CHECKPOINTS: &str = "checkpoints/";

/// Manifest metadata key listing the partitions whose tasks ran in the instance that wrote it
/// (comma-separated); the manifest's other partitions were released and carried for a successor.
pub const OWNED_PARTITIONS: &str = "partitions.owned";

/// The partitions a manifest lists as owned.
fn owned(manifest: &Manifest) -> Vec<PartitionId> {
    manifest
        .metadata
        .get(OWNED_PARTITIONS)
        .map(|s| s.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Where a partition's newest state is.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// The instance folder holding it.
    pub instance: String,
    /// The checkpoint.
    pub manifest: Manifest,
    /// The partition's next offset in that checkpoint.
    pub offset: u64,
}

/// Locates and fetches partition state written by any instance of a job.
///
/// # Examples
/// ```
/// use ferroflow_core::checkpoint::{CheckpointConfig, CheckpointCoordinator, CheckpointStore, PartitionHandOver, S3Options, coordinator_meta};
/// use ferroflow_core::state::MemoryStateBackend;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let scratch = tempfile::tempdir().unwrap();
/// let base = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
/// let hand_over = PartitionHandOver::new(base.clone(), "a", 1);
/// let mut a = CheckpointCoordinator::open(hand_over.instance_store(), CheckpointConfig::new("job", scratch.path())).await.unwrap();
/// a.take(&mut MemoryStateBackend::new(), coordinator_meta(&[(0, 40), (1, 7)])).await.unwrap();
///
/// let found = PartitionHandOver::new(base, "b", 1).locate(&[1, 2]).await.unwrap();
/// assert_eq!((found[&1].instance.as_str(), found[&1].offset), ("a", 7));
/// assert!(!found.contains_key(&2), "nobody checkpointed partition 2");
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct PartitionHandOver {
    base: CheckpointStore,
    instance: String,
    state_format_version: u32,
}

impl PartitionHandOver {
    /// Hand-over among the instance folders under `base`; this instance writes to `instance`.
    pub fn new(base: CheckpointStore, instance: impl Into<String>, state_format_version: u32) -> Self {
        Self { base, instance: instance.into(), state_format_version }
    }

    /// This instance's own folder (open its [`CheckpointCoordinator`](super::CheckpointCoordinator) on it).
    pub fn instance_store(&self) -> CheckpointStore {
        self.base.child(&self.instance)
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// For each of `partitions` that any instance has checkpointed, the checkpoint with its
    /// highest offset (ties: the newest). Manifests in another state format are skipped.
    ///
    /// Partitions of one task (partition `p` of each input of a co-partitioned job, see
    /// [`RIGHT_PARTITIONS`](crate::source::RIGHT_PARTITIONS)) share one state, so they are located
    /// together: all of them in the checkpoint with the highest offsets for the task, compared
    /// first input first. A partition that checkpoint has no offset for is left out (it had
    /// delivered nothing there).
    pub async fn locate(
        &self,
        partitions: &[PartitionId],
    ) -> Result<BTreeMap<PartitionId, Located>, CheckpointError> {
        let mut tasks: BTreeMap<PartitionId, Vec<PartitionId>> = BTreeMap::new();
        for &p in partitions {
            let members = tasks.entry(crate::source::task_of(p)).or_default();
            if !members.contains(&p) {
                members.push(p);
            }
        }
        for members in tasks.values_mut() {
            members.sort_unstable();
        }
        // Per task: the offsets of its partitions in the best manifest so far, and that manifest.
        let mut best: BTreeMap<PartitionId, (Vec<Option<u64>>, String, Manifest)> = BTreeMap::new();
        for (instance, manifest) in self.manifests().await? {
            for (task, members) in &tasks {
                let offsets: Vec<Option<u64>> =
                    members.iter().map(|p| manifest.source_offsets.get(p).copied()).collect();
                if offsets.iter().all(Option::is_none) {
                    continue;
                }
                let better = best
                    .get(task)
                    .is_none_or(|(o, _, m)| (&offsets, manifest.created_at_ms) > (o, m.created_at_ms));
                if better {
                    best.insert(*task, (offsets, instance.clone(), manifest.clone()));
                }
            }
        }
        let mut out = BTreeMap::new();
        for (task, (offsets, instance, manifest)) in best {
            let Some(members) = tasks.get(&task) else { continue };
            for (&p, offset) in members.iter().zip(offsets) {
                if let Some(offset) = offset {
                    out.insert(p, Located { instance: instance.clone(), manifest: manifest.clone(), offset });
                }
            }
        }
        Ok(out)
    }

    /// Which of the partitions this instance carries without running them (`carried`: partition →
    /// offset) another instance now runs from at least that offset: their state is safe there,
    /// and this instance can drop it.
    ///
    /// Only manifests of a folder's current writer count. A fenced writer can still commit the
    /// one manifest whose fence check raced the new claim; the new writer restored an older
    /// checkpoint, does not carry what only that manifest holds, and its retention deletes it.
    pub async fn superseded(
        &self,
        carried: &BTreeMap<PartitionId, u64>,
    ) -> Result<Vec<PartitionId>, CheckpointError> {
        let mut out = Vec::new();
        // Manifests first, claims after: a raced manifest lands after the claim that fences its
        // writer, so a listing that shows the manifest is followed by one that shows the claim.
        let manifests = self.manifests().await?;
        let mut current: BTreeMap<&str, u64> = BTreeMap::new();
        for (instance, _) in &manifests {
            if instance != &self.instance && !current.contains_key(instance.as_str()) {
                let epoch = newest_epoch(&self.base.child(instance)).await?;
                current.insert(instance, epoch);
            }
        }
        for (instance, manifest) in &manifests {
            let Some(&epoch) = current.get(instance.as_str()) else { continue };
            if manifest.id / EPOCH_SPAN < epoch {
                continue;
            }
            // `owned` lists tasks; a task's partitions are those of every input with its number.
            let owned = owned(manifest);
            for (&p, ours) in carried {
                if !owned.contains(&crate::source::task_of(p)) {
                    continue;
                }
                let newer = manifest.source_offsets.get(&p).is_some_and(|theirs| theirs >= ours);
                if newer && !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Every readable manifest of every instance, in this job's state format.
    async fn manifests(&self) -> Result<Vec<(String, Manifest)>, CheckpointError> {
        let mut out = Vec::new();
        for instance in self.base.list_folders().await? {
            let store = self.base.child(&instance);
            for (key, _) in store.list(CHECKPOINTS).await? {
                let is_manifest =
                    key.strip_prefix(CHECKPOINTS).is_some_and(|r| !r.contains('/')) && key.ends_with(".json");
                if !is_manifest {
                    continue;
                }
                // A manifest deleted by its owner's retention between the listing and the read
                // is simply not a candidate any more.
                let manifest: Manifest = match store.get(&key).await {
                    Ok(bytes) => match serde_json::from_slice(&bytes) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(instance = %instance, manifest = %key, error = %e, "skipping a manifest that does not parse");
                            continue;
                        }
                    },
                    Err(e) => {
                        tracing::debug!(instance = %instance, manifest = %key, error = %e, "manifest gone while locating");
                        continue;
                    }
                };
                if manifest.state_format_version != self.state_format_version {
                    tracing::warn!(
                        instance = %instance,
                        checkpoint = manifest.id,
                        found = manifest.state_format_version,
                        expected = self.state_format_version,
                        "skipping another instance's checkpoint in a different state format"
                    );
                    continue;
                }
                out.push((instance.clone(), manifest));
            }
        }
        Ok(out)
    }

    /// Downloads the files of `located`'s checkpoint into `dir` (replacing what is there), ready
    /// for [`StateBackend::restore`](crate::state::StateBackend::restore).
    pub async fn download(&self, located: &Located, dir: &Path) -> Result<(), CheckpointError> {
        download_files(&self.base.child(&located.instance), &located.manifest, dir).await
    }
}
