//! Checkpointing of a run: the settings the builder collected, the coordinator opened at the
//! start of the run, and, for a job run as several instances, the partition hand-over hooks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Resumed;
use super::handover::{HandOverHooks, ScratchDir, Start};
use crate::checkpoint::{
    CheckpointConfig, CheckpointCoordinator, CheckpointError, CheckpointMeta, CheckpointStore, Manifest,
    OPERATOR_IDS, OWNED_PARTITIONS, PartitionHandOver, RestoreOutcome,
};
use crate::error::JobError;
use crate::metrics::JobCounters;
use crate::operator::{Context, Operator};
use crate::record::{PartitionId, Record};
use crate::runtime::chains::{Backend, Chains};
use crate::runtime::processing::JobState;
use crate::source::{PartitionLifecycle, Source};
use crate::state::StateBackend;

/// What the runner builder collected about checkpoints.
pub(crate) struct CheckpointSettings {
    /// Where checkpoints go (the folder of every instance, with `instance` set).
    pub(crate) store: CheckpointStore,
    pub(crate) config: CheckpointConfig,
    pub(crate) state: Box<dyn StateBackend>,
    pub(crate) from_savepoint: Option<String>,
    /// This runner is one instance of a partition-scoped job run as several.
    pub(crate) instance: Option<String>,
    /// Start even when the checkpoint holds state of operators the job no longer has.
    pub(crate) allow_non_restored_state: bool,
}

/// Checkpointing of one run.
pub(crate) struct Checkpointing {
    settings: CheckpointSettings,
    /// Opened at the start of the run (it lists the store).
    coordinator: Option<CheckpointCoordinator>,
    /// Installed when the job is partition-scoped and its source changes partitions.
    hooks: Option<Arc<HandOverHooks>>,
}

impl std::fmt::Debug for Checkpointing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointing")
            .field("store", &self.settings.store.location())
            .field("config", &self.settings.config)
            .field("instance", &self.settings.instance)
            .finish()
    }
}

impl Checkpointing {
    pub(crate) fn new(settings: CheckpointSettings) -> Self {
        Self { settings, coordinator: None, hooks: None }
    }

    /// Time between periodic checkpoints.
    pub(crate) fn interval(&self) -> Duration {
        self.settings.config.interval
    }

    /// This runner is one instance of a job run as several (partitions move between them).
    pub(crate) fn runs_as_instances(&self) -> bool {
        self.settings.instance.is_some()
    }

    /// The live state backend.
    pub(crate) fn state(&mut self) -> &mut Backend {
        &mut *self.settings.state
    }

    fn hand_over(&self) -> Option<PartitionHandOver> {
        let instance = self.settings.instance.as_ref()?;
        let version = self.settings.config.state_format_version;
        Some(PartitionHandOver::new(self.settings.store.clone(), instance.clone(), version))
    }

    /// Opens the coordinator, installs the hand-over hooks, and restores the named savepoint or
    /// the newest usable checkpoint into the state, the chains and the source.
    pub(crate) async fn restore<C: Operator, S: Source<C::In>>(
        &mut self,
        chains: &mut Chains<C>,
        source: &mut S,
        counters: &JobCounters,
    ) -> Result<Option<Resumed>, JobError> {
        let started = Instant::now();
        let hand_over = self.hand_over();
        let store = hand_over.as_ref().map_or_else(|| self.settings.store.clone(), |h| h.instance_store());
        let coordinator = CheckpointCoordinator::open(store, self.settings.config.clone()).await?;
        if let Some(h) = hand_over.filter(|_| chains.partitioned()) {
            let scratch = &self.settings.config.local_dir;
            let hooks = Arc::new(HandOverHooks::new(tokio::runtime::Handle::current(), h, scratch));
            let lifecycle: Arc<dyn PartitionLifecycle> = hooks.clone();
            self.hooks = source.set_partition_lifecycle(lifecycle).then_some(hooks);
        }
        let coordinator = self.coordinator.insert(coordinator);
        // Claimed before restoring: from here on an earlier writer of the folder (a process this
        // one replaces) is fenced and cannot garbage-collect what is restored.
        coordinator.claim().await?;
        let state = self.settings.state.as_mut();
        let manifest = match self.settings.from_savepoint.take() {
            Some(name) => Some(coordinator.restore_savepoint(&name, state).await?),
            None => match coordinator.restore_latest(state).await? {
                RestoreOutcome::Fresh => {
                    // Whatever an earlier run left in the local backend belongs to no checkpoint:
                    // starting over must not see its watermarks, dedup ids or windows.
                    state.clear()?;
                    None
                }
                RestoreOutcome::Restored(m) => Some(*m),
            },
        };
        let Some(m) = manifest else { return Ok(None) };
        self.check_operator_ids(&m, &chains.state_ids())?;
        chains.restore(self.settings.state.as_mut())?;
        chains.resume_at(crate::time::Watermark(m.watermark));
        source.seek(&m.source_offsets)?;
        if let Some(h) = &self.hooks {
            h.set_live(m.source_offsets.iter().map(|(p, o)| (*p, *o)));
        }
        counters.record_restore(started.elapsed());
        counters.set_state_stats(self.settings.state.stats());
        Ok(Some(Resumed { id: m.id, offsets: m.source_offsets, watermark: m.watermark, epoch: m.sink_epoch }))
    }

    /// Refuses a checkpoint that holds state of operators the job does not have, unless that was
    /// allowed; new operators simply start empty.
    fn check_operator_ids(&self, manifest: &Manifest, job: &[String]) -> Result<(), CheckpointError> {
        let Some(written) = manifest.operator_ids() else {
            // Written before checkpoints recorded ids: which state belongs to which operator is
            // unknown, and restoring the offsets without it would count records again.
            if job.is_empty() || self.settings.allow_non_restored_state {
                tracing::warn!(checkpoint = %manifest.label(), "the checkpoint does not list its operator ids; its state is restored by namespace as it is");
                return Ok(());
            }
            return Err(CheckpointError::UnmatchedState {
                id: manifest.label(),
                unmatched: vec!["(not recorded: written before operator ids)".to_owned()],
                job: job.to_vec(),
            });
        };
        let unmatched: Vec<String> = written.into_iter().filter(|id| !job.contains(id)).collect();
        if unmatched.is_empty() {
            return Ok(());
        }
        if self.settings.allow_non_restored_state {
            tracing::warn!(checkpoint = %manifest.label(), ?unmatched, "state of operators the job no longer has is not restored (allow_non_restored_state)");
            return Ok(());
        }
        Err(CheckpointError::UnmatchedState { id: manifest.label(), unmatched, job: job.to_vec() })
    }

    /// Snapshots every chain and uploads the checkpoint (or the savepoint `savepoint`). The
    /// sinks have acknowledged the barrier before this: everything emitted before it is durable.
    pub(crate) async fn take<C: Operator>(
        &mut self,
        chains: &mut Chains<C>,
        job: &mut JobState,
        savepoint: Option<&str>,
        counters: &JobCounters,
    ) -> Result<(), JobError> {
        chains.snapshot(self.settings.state.as_mut())?;
        let mut metadata = std::collections::BTreeMap::new();
        if let Some(ps) = chains.partitions() {
            let list: Vec<String> = ps.iter().map(ToString::to_string).collect();
            metadata.insert(OWNED_PARTITIONS.to_owned(), list.join(","));
        }
        let ids = serde_json::to_string(&chains.state_ids()).map_err(|e| JobError::Task {
            task: "checkpoint",
            detail: format!("cannot encode the operator ids: {e}"),
        })?;
        metadata.insert(OPERATOR_IDS.to_owned(), ids);
        let meta = CheckpointMeta {
            source_offsets: job.offsets.clone(),
            watermark: job.watermark.0,
            sink_epoch: job.epoch,
            metadata,
        };
        let state = self.settings.state.as_mut();
        let coordinator = self.coordinator.as_mut().ok_or(JobError::Task {
            task: "checkpoint",
            detail: "the checkpoint coordinator was not opened before the first checkpoint".into(),
        })?;
        let result = match savepoint {
            Some(name) => coordinator.savepoint(name, state, meta).await,
            None => coordinator.take(state, meta).await,
        };
        let taken = match result {
            Ok(t) => t,
            Err(e) => {
                counters.record_checkpoint_failure();
                return Err(e.into());
            }
        };
        counters.record_checkpoint(taken.duration, taken.bytes_uploaded);
        counters.set_state_stats(self.settings.state.stats());
        job.checkpoints_taken += 1;
        job.epoch += 1;
        if let Some(l) = &job.listener {
            l.checkpoint_complete(taken.manifest.id, &taken.manifest.source_offsets);
        }
        Ok(())
    }

    /// Ends the tasks of revoked partitions (a checkpoint holding them was just taken). With
    /// hand-over hooks their state is carried, in the backend and in every checkpoint, until
    /// another instance's checkpoint supersedes it: until then this instance's checkpoints may be
    /// the only place it is. Without, it is deleted.
    pub(crate) fn release<C: Operator>(
        &mut self,
        chains: &mut Chains<C>,
        partitions: &[PartitionId],
        job: &mut JobState,
        ctx: &mut Context,
        out: &mut Vec<Record<C::Out>>,
    ) -> Result<(), JobError> {
        match &self.hooks {
            Some(h) => {
                chains.release(partitions, None, ctx, out)?;
                h.set_live(partitions.iter().filter_map(|p| job.offsets.get(p).map(|o| (*p, *o))));
                h.note_released(partitions);
            }
            None => {
                chains.release(partitions, Some(self.settings.state.as_mut()), ctx, out)?;
                job.forget_partitions(chains, partitions);
            }
        }
        Ok(())
    }

    /// Starts newly assigned partitions from the state their hand-over decided on.
    pub(crate) fn start_partitions(
        &mut self,
        partitions: &[PartitionId],
        job: &mut JobState,
    ) -> Result<(), JobError> {
        let Some(h) = &self.hooks else { return Ok(()) };
        if let Some(detail) = h.failure() {
            return Err(JobError::Task { task: "partition hand-over", detail });
        }
        let starts = h.take_starts(partitions);
        h.forget_live(partitions);
        // A partition without a decided start begins at the source's configured start: an offset
        // this instance recorded for it earlier (a task carried here, then taken from another
        // checkpoint that does not hold this partition) belongs to state that is gone, and would
        // make the next checkpoint claim records it never read again.
        for p in partitions.iter().filter(|p| !starts.iter().any(|(s, _)| s == *p)) {
            job.offsets.remove(p);
        }
        let state = self.settings.state.as_mut();
        let mut opened: Vec<(Arc<ScratchDir>, Box<dyn StateBackend>)> = Vec::new();
        // The partitions of a co-partitioned task come from one checkpoint: copy its state once.
        let mut copied = std::collections::BTreeSet::new();
        for (p, start) in starts {
            match start {
                Start::Live { offset } => {
                    job.offsets.insert(p, offset);
                }
                Start::Fetched { dir, offset, from } => {
                    let i = match opened.iter().position(|(d, _)| Arc::ptr_eq(d, &dir)) {
                        Some(i) => i,
                        None => {
                            let mut scratch = state.open_scratch(&dir.backend())?;
                            scratch.restore(&dir.files())?;
                            opened.push((Arc::clone(&dir), scratch));
                            opened.len() - 1
                        }
                    };
                    let task = crate::source::task_of(p);
                    if copied.insert(task) {
                        let keys = crate::state::copy_partition(opened[i].1.as_ref(), state, task)?;
                        tracing::info!(partition = p, from = %from, offset, keys, "partition state handed over");
                    } else {
                        tracing::info!(partition = p, from = %from, offset, "partition handed over with its task's state");
                    }
                    job.offsets.insert(p, offset);
                }
            }
        }
        Ok(())
    }

    /// Stops carrying released partitions that another instance has checkpointed since.
    pub(crate) async fn drop_superseded(&mut self, job: &mut JobState) -> Result<(), JobError> {
        let Some(h) = &self.hooks else { return Ok(()) };
        let done = match h.take_superseded().await {
            Ok(done) => done,
            Err(e) => {
                // Carrying a partition a little longer costs only space.
                tracing::warn!(error = %e, "cannot tell whether released partitions moved on; carrying them");
                return Ok(());
            }
        };
        let tasks: std::collections::BTreeSet<PartitionId> =
            done.iter().map(|&p| crate::source::task_of(p)).collect();
        for t in tasks {
            crate::state::delete_partition(self.settings.state.as_mut(), t)?;
        }
        for p in &done {
            job.offsets.remove(p);
        }
        if !done.is_empty() {
            tracing::info!(partitions = ?done, "released partitions now checkpointed elsewhere; their state is dropped here");
        }
        Ok(())
    }
}
