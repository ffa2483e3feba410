//! The runner's side of a partition hand-over: when the consumer group assigns partitions, the
//! source asks [`HandOverHooks::assigning`] (on its own thread) where they resume; the hooks find
//! each partition's newest checkpoint across the job's instances, download it, and the processing
//! task then copies the partition's state out of it before the partition's first record.
//!
//! The offset a partition resumes at and the state its task starts from are decided together,
//! here, and never separately: a task must not start from state newer or older than its offset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::checkpoint::{Located, PartitionHandOver};
use crate::record::PartitionId;
use crate::source::{PartitionLifecycle, task_of};

/// Attempts at locating and downloading before the hand-over is declared failed.
const ATTEMPTS: u32 = 5;

/// A downloaded checkpoint, removed from disk when the last partition taken from it is done.
#[derive(Debug)]
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    /// The downloaded checkpoint files.
    pub(crate) fn files(&self) -> PathBuf {
        self.0.join("files")
    }

    /// Where to open the scratch backend that restores them.
    pub(crate) fn backend(&self) -> PathBuf {
        self.0.join("backend")
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::debug!(dir = %self.0.display(), error = %e, "could not remove a hand-over scratch directory");
        }
    }
}

/// Removes `dir` and everything in it, if it is there.
fn remove_leftovers(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "removed hand-over downloads an earlier run left behind")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove earlier hand-over downloads")
        }
    }
}

/// How a newly assigned partition's task starts.
#[derive(Debug)]
pub(crate) enum Start {
    /// From state another checkpoint holds, downloaded to `dir`, at `offset`.
    Fetched { dir: Arc<ScratchDir>, offset: u64, from: String },
    /// From the state already in the live backend (this instance's own), at `offset`.
    Live { offset: u64 },
}

#[derive(Debug, Default)]
struct Book {
    /// Partitions the job released since the source last asked (see
    /// [`PartitionLifecycle::wait_released`]).
    released: std::collections::BTreeSet<PartitionId>,
    /// Partitions whose state sits in the live backend without a task (restored at start-up, or
    /// released at a revoke), with the offset that state belongs to.
    live: BTreeMap<PartitionId, u64>,
    /// Decided starts the processing task has not taken yet.
    starts: BTreeMap<PartitionId, Start>,
    /// Set when the newest state of an assigned partition could not be fetched.
    failure: Option<String>,
    next_dir: u64,
}

/// One checkpoint to download and the partitions (with offsets) to take from it.
type Download = (Arc<ScratchDir>, Vec<(PartitionId, u64)>);

/// Implements [`PartitionLifecycle`] for a partition-scoped job with checkpoints.
pub(crate) struct HandOverHooks {
    handle: tokio::runtime::Handle,
    hand_over: PartitionHandOver,
    scratch: PathBuf,
    book: Mutex<Book>,
    /// Signalled when partitions are released.
    released: Condvar,
}

impl std::fmt::Debug for HandOverHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandOverHooks").field("instance", &self.hand_over.instance()).finish()
    }
}

impl HandOverHooks {
    pub(crate) fn new(
        handle: tokio::runtime::Handle,
        hand_over: PartitionHandOver,
        local_dir: &Path,
    ) -> Self {
        let scratch = local_dir.join("handover");
        // Downloads of an earlier run of this process that was killed before it removed them: the
        // numbering starts again at 0, and opening a scratch backend over another run's files
        // fails ("corruption: no such file").
        remove_leftovers(&scratch);
        Self { handle, hand_over, scratch, book: Mutex::new(Book::default()), released: Condvar::new() }
    }

    /// The job released `partitions` (their state is checkpointed and carried): a source waiting
    /// in its revoke callback may let them go.
    pub(crate) fn note_released(&self, partitions: &[PartitionId]) {
        self.book().released.extend(partitions.iter().copied());
        self.released.notify_all();
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // A panic while holding the lock cannot leave the book half-updated in a way that matters
        // more than stopping would: keep going with what is there.
        self.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records partitions whose state is in the live backend without a task.
    pub(crate) fn set_live(&self, partitions: impl IntoIterator<Item = (PartitionId, u64)>) {
        self.book().live.extend(partitions);
    }

    /// The decided start of each of `partitions` that has one (taken: decided once per assignment).
    pub(crate) fn take_starts(&self, partitions: &[PartitionId]) -> Vec<(PartitionId, Start)> {
        let mut book = self.book();
        partitions.iter().filter_map(|p| book.starts.remove(p).map(|s| (*p, s))).collect()
    }

    /// Partitions whose tasks start now: their state in the live backend is owned again.
    pub(crate) fn forget_live(&self, partitions: &[PartitionId]) {
        let mut book = self.book();
        for p in partitions {
            book.live.remove(p);
        }
    }

    /// Of the partitions carried without a task, those another instance now runs from at least
    /// the carried offset: their state can go. Forgotten here as they are returned.
    pub(crate) async fn take_superseded(
        &self,
    ) -> Result<Vec<PartitionId>, crate::checkpoint::CheckpointError> {
        let carried = self.book().live.clone();
        if carried.is_empty() {
            return Ok(Vec::new());
        }
        let done = self.hand_over.superseded(&carried).await?;
        let mut book = self.book();
        // Only what is still carried at the same offset: an assignment may have taken it since.
        let done: Vec<PartitionId> = done
            .into_iter()
            .filter(|p| book.live.get(p).is_some_and(|o| Some(o) == carried.get(p)))
            .collect();
        // A task's state goes only once every partition of it carried here is checkpointed
        // elsewhere: the partitions of a co-partitioned task share it.
        let done: Vec<PartitionId> = done
            .iter()
            .copied()
            .filter(|&p| {
                let task = task_of(p);
                book.live.keys().filter(|&&q| task_of(q) == task).all(|q| done.contains(q))
            })
            .collect();
        for p in &done {
            book.live.remove(p);
        }
        Ok(done)
    }

    /// Why a hand-over failed, if one did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.book().failure.clone()
    }

    /// Runs [`fetch`](Self::fetch) to completion from a blocking caller. The source's callbacks
    /// usually run on its own thread, but librdkafka may also run one inside a call made from a
    /// runtime thread (closing the consumer at shutdown delivers a pending assignment there), where
    /// blocking on the runtime panics: the fetch then runs on a helper thread of its own.
    fn fetch_blocking(&self, wanted: &[PartitionId]) -> Result<BTreeMap<PartitionId, Start>, String> {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.handle.block_on(self.fetch(wanted));
        }
        std::thread::scope(|s| {
            let helper = std::thread::Builder::new()
                .name("ferroflow-hand-over".into())
                .spawn_scoped(s, || self.handle.block_on(self.fetch(wanted)))
                .map_err(|e| format!("cannot start the hand-over thread: {e}"))?;
            helper.join().unwrap_or_else(|_| Err("the hand-over thread panicked".into()))
        })
    }

    async fn fetch(&self, wanted: &[PartitionId]) -> Result<BTreeMap<PartitionId, Start>, String> {
        let located = self.hand_over.locate(wanted).await.map_err(|e| e.to_string())?;
        let mut starts = BTreeMap::new();
        let mut downloads: BTreeMap<(String, u64), Download> = BTreeMap::new();
        // The partitions of one task (one per input of a co-partitioned job) share its state:
        // they start together, all from this instance's own state or all from one checkpoint.
        let mut tasks: BTreeMap<PartitionId, Vec<PartitionId>> = BTreeMap::new();
        for &p in wanted {
            tasks.entry(task_of(p)).or_default().push(p);
        }
        {
            let mut book = self.book();
            for members in tasks.values() {
                let found: Vec<(PartitionId, &Located)> =
                    members.iter().filter_map(|p| located.get(p).map(|l| (*p, l))).collect();
                let own: Vec<(PartitionId, u64)> =
                    members.iter().filter_map(|p| book.live.get(p).map(|o| (*p, *o))).collect();
                // This instance's own state is as new as any: no download.
                let own_is_newest = !own.is_empty()
                    && found.iter().all(|(p, l)| book.live.get(p).is_some_and(|o| *o >= l.offset));
                if own_is_newest {
                    for (p, offset) in own {
                        book.live.remove(&p);
                        starts.insert(p, Start::Live { offset });
                    }
                    continue;
                }
                // Never checkpointed anywhere: the source's own start.
                let Some((_, l)) = found.first() else { continue };
                let key = (l.instance.clone(), l.manifest.id);
                let next = book.next_dir;
                let entry = downloads.entry(key).or_insert_with(|| {
                    let dir = self.scratch.join(format!("{next:06}"));
                    remove_leftovers(&dir);
                    (Arc::new(ScratchDir(dir)), Vec::new())
                });
                if entry.1.is_empty() {
                    book.next_dir += 1;
                }
                entry.1.extend(found.iter().map(|(p, l)| (*p, l.offset)));
            }
        }
        for ((instance, id), (dir, partitions)) in downloads {
            let Some(l) = partitions.first().and_then(|(p, _)| located.get(p)) else { continue };
            self.hand_over.download(l, &dir.files()).await.map_err(|e| e.to_string())?;
            tracing::info!(
                from = %instance,
                checkpoint = id,
                partitions = ?partitions.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
                "downloaded partition state handed over"
            );
            for (p, offset) in partitions {
                let from = format!("{instance}/checkpoint {id}");
                starts.insert(p, Start::Fetched { dir: Arc::clone(&dir), offset, from });
            }
        }
        Ok(starts)
    }
}

impl PartitionLifecycle for HandOverHooks {
    fn wait_released(&self, partitions: &[PartitionId], timeout: Duration) -> bool {
        let book = self.book();
        let (mut book, _) = self
            .released
            .wait_timeout_while(book, timeout, |b| !partitions.iter().all(|p| b.released.contains(p)))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let done = partitions.iter().all(|p| book.released.contains(p));
        if done {
            for p in partitions {
                book.released.remove(p);
            }
        }
        done
    }

    fn assigning(&self, partitions: &[PartitionId]) -> BTreeMap<PartitionId, u64> {
        {
            // A release nobody waited for (the source gave up waiting) must not answer a later
            // revocation of the same partitions.
            let mut book = self.book();
            for p in partitions {
                book.released.remove(p);
            }
        }
        let mut attempt = 0;
        let starts = loop {
            attempt += 1;
            match self.fetch_blocking(partitions) {
                Ok(s) => break s,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(attempt, error = %e, "partition hand-over failed; retrying");
                    std::thread::sleep(Duration::from_millis(500 * u64::from(attempt)));
                }
                Err(e) => {
                    // Starting without the state would count its records again: stop the job
                    // instead (the processing task checks before the partitions' first record).
                    tracing::error!(error = %e, ?partitions, "partition hand-over failed; the job stops");
                    self.book().failure =
                        Some(format!("state of partitions {partitions:?} could not be fetched: {e}"));
                    return BTreeMap::new();
                }
            }
        };
        let offsets = starts
            .iter()
            .map(|(p, s)| match s {
                Start::Fetched { offset, .. } | Start::Live { offset } => (*p, *offset),
            })
            .collect();
        self.book().starts.extend(starts);
        offsets
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::checkpoint::{CheckpointStore, S3Options};

    /// librdkafka may run an assignment callback inside a call made on a runtime thread (closing
    /// the consumer at shutdown): deciding the start there must not block on the runtime, which
    /// panics.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_assignment_decided_on_a_runtime_thread_does_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let base = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
        let hooks = HandOverHooks::new(
            tokio::runtime::Handle::current(),
            PartitionHandOver::new(base, "a", 1),
            dir.path(),
        );
        hooks.set_live([(3, 40)]);
        assert_eq!(hooks.assigning(&[3, 4]), BTreeMap::from([(3, 40)]));
        assert!(hooks.failure().is_none());
    }

    /// Instance `b`'s checkpoint, owning task 1, at `offsets`.
    async fn b_checkpoints(base: &CheckpointStore, scratch: &Path, offsets: &[(PartitionId, u64)]) {
        use crate::checkpoint::{
            CheckpointConfig, CheckpointCoordinator, OWNED_PARTITIONS, coordinator_meta,
        };
        let store = PartitionHandOver::new(base.clone(), "b", 1).instance_store();
        let mut b = CheckpointCoordinator::open(store, CheckpointConfig::new("job", scratch)).await.unwrap();
        let mut meta = coordinator_meta(offsets);
        meta.metadata.insert(OWNED_PARTITIONS.to_owned(), "1".to_owned());
        b.take(&mut crate::state::MemoryStateBackend::new(), meta).await.unwrap();
    }

    /// The partitions of a co-partitioned task share its state: what instance `a` carries of it
    /// goes only once another instance has checkpointed every one of them from at least where `a`
    /// released them. Dropping the task when only the first input's partition had moved on
    /// deleted the state the second one's offset still pointed into.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_co_partitioned_task_is_dropped_only_when_both_of_its_partitions_moved_on() {
        use crate::source::RIGHT_PARTITIONS;
        let dir = tempfile::tempdir().unwrap();
        let base = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
        let hooks = HandOverHooks::new(
            tokio::runtime::Handle::current(),
            PartitionHandOver::new(base.clone(), "a", 1),
            &dir.path().join("a"),
        );
        hooks.set_live([(1, 37), (RIGHT_PARTITIONS + 1, 20)]);
        b_checkpoints(&base, &dir.path().join("b1"), &[(1, 40)]).await;
        assert_eq!(
            hooks.take_superseded().await.unwrap(),
            Vec::<PartitionId>::new(),
            "the second input's is not"
        );
        b_checkpoints(&base, &dir.path().join("b2"), &[(1, 41), (RIGHT_PARTITIONS + 1, 20)]).await;
        assert_eq!(hooks.take_superseded().await.unwrap(), vec![1, RIGHT_PARTITIONS + 1]);
        assert_eq!(
            hooks.take_superseded().await.unwrap(),
            Vec::<PartitionId>::new(),
            "forgotten once dropped"
        );
    }

    /// A process killed with SIGKILL leaves its hand-over downloads behind; the next run numbers
    /// its downloads from 0 again, and opening a scratch backend over the old run's RocksDB files
    /// failed ("corruption: no such file"), which stopped the job. Chaos saw it (seed
    /// 1796313240831379169).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn downloads_an_earlier_run_left_behind_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("handover").join("000001").join("backend");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("MANIFEST-000056"), b"an earlier run's files").unwrap();
        let base = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
        let _hooks = HandOverHooks::new(
            tokio::runtime::Handle::current(),
            PartitionHandOver::new(base, "a", 1),
            dir.path(),
        );
        assert!(!dir.path().join("handover").exists(), "the earlier run's downloads are gone");
    }
}
