//! Takes checkpoints and savepoints, restores them, and garbage-collects old files.
//!
//! One file because the three share one invariant (a manifest never names a deleted file) and the
//! coordinator's caches (next id, known shared files, read manifests); splitting them would spread
//! that invariant over several files. Who may write at all is decided in `writer.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::Instrument;

use super::CheckpointError;
use super::manifest::{CheckpointKind, FileEntry, MANIFEST_FORMAT_VERSION, Manifest};
use super::store::CheckpointStore;
use super::writer::{FOREIGN_GRACE_MS, Writer, WriterClaim};
use crate::error::StateError;
use crate::record::PartitionId;
use crate::state::StateBackend;

const CHECKPOINTS: &str = "checkpoints/";
const SAVEPOINTS: &str = "savepoints/";
const SHARED: &str = "shared/";

/// Checkpoint ids are `epoch × EPOCH_SPAN + sequence`: each writer of a folder numbers its
/// checkpoints from its own epoch (see [`WriterClaim`](super::WriterClaim)), so two writers never write the same
/// key and a newer writer's checkpoints sort after every older one's. `3000000000042` is
/// checkpoint 42 of the writer of epoch 3; ids below the span are from before epochs.
pub const EPOCH_SPAN: u64 = 1_000_000_000_000;

/// Fewest periodic checkpoints kept: the one a newly claimed writer restored must survive the one
/// commit a fenced writer can still make.
const MIN_RETAIN: usize = 2;

/// Upgrades state written in an older format, after its files are restored.
pub trait Migration: Send + Sync {
    /// Rewrites `state` from format `from` to the job's current format.
    fn migrate(&self, from: u32, state: &mut dyn StateBackend) -> Result<(), StateError>;
}

impl<F: Fn(u32, &mut dyn StateBackend) -> Result<(), StateError> + Send + Sync> Migration for F {
    fn migrate(&self, from: u32, state: &mut dyn StateBackend) -> Result<(), StateError> {
        self(from, state)
    }
}

/// How a job checkpoints.
#[derive(Clone)]
pub struct CheckpointConfig {
    /// Identifies the job in manifests.
    pub job_id: String,
    /// Time between periodic checkpoints (default 10 s).
    pub interval: Duration,
    /// Periodic checkpoints kept (default 3, at least 2: see [`EPOCH_SPAN`]'s writers).
    pub retain: usize,
    /// Local scratch directory for snapshots and downloads.
    pub local_dir: PathBuf,
    /// Version of the job's state layout; bump it on incompatible changes (default 1).
    pub state_format_version: u32,
    /// Start empty when checkpoints exist but none is usable (default false: refuse).
    pub allow_empty_start: bool,
    /// Upgrades older state formats; without one, an older format is an error.
    pub migration: Option<Arc<dyn Migration>>,
}

impl std::fmt::Debug for CheckpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointConfig")
            .field("job_id", &self.job_id)
            .field("interval", &self.interval)
            .field("retain", &self.retain)
            .field("local_dir", &self.local_dir)
            .field("state_format_version", &self.state_format_version)
            .field("allow_empty_start", &self.allow_empty_start)
            .field("migration", &self.migration.is_some())
            .finish()
    }
}

impl CheckpointConfig {
    /// Defaults for `job_id` with scratch space in `local_dir`.
    pub fn new(job_id: impl Into<String>, local_dir: impl Into<PathBuf>) -> Self {
        Self {
            job_id: job_id.into(),
            interval: Duration::from_secs(10),
            retain: 3,
            local_dir: local_dir.into(),
            state_format_version: 1,
            allow_empty_start: false,
            migration: None,
        }
    }
}

/// What a job hands the coordinator besides its state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointMeta {
    /// Next offset to read per source partition.
    pub source_offsets: BTreeMap<PartitionId, u64>,
    /// Combined watermark.
    pub watermark: i64,
    /// Sink epoch the checkpoint closes.
    pub sink_epoch: u64,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
}

/// The result of taking a checkpoint or savepoint.
#[derive(Debug, Clone)]
pub struct TakenCheckpoint {
    /// The manifest written.
    pub manifest: Manifest,
    /// Bytes uploaded for this checkpoint (new shared files + private files + manifest).
    pub bytes_uploaded: u64,
    /// Files uploaded.
    pub files_uploaded: usize,
    /// Wall time from snapshot start to manifest written.
    pub duration: Duration,
}

/// What a restore found.
#[derive(Debug, Clone)]
pub enum RestoreOutcome {
    /// No checkpoint exists: the job starts from scratch.
    Fresh,
    /// State was restored from this manifest.
    Restored(Box<Manifest>),
}

/// Takes, restores and garbage-collects checkpoints of one job.
///
/// # Examples
/// ```
/// use ferroflow_core::checkpoint::{CheckpointConfig, CheckpointCoordinator, CheckpointStore, RestoreOutcome, S3Options};
/// use ferroflow_core::checkpoint::coordinator_meta as meta;
/// use ferroflow_core::state::{MemoryStateBackend, StateBackend};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let scratch = tempfile::tempdir().unwrap();
/// let store = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
/// let mut coord = CheckpointCoordinator::open(store.clone(), CheckpointConfig::new("job", scratch.path())).await.unwrap();
/// let mut state = MemoryStateBackend::new();
/// state.put("ns", b"k", b"v").unwrap();
/// let taken = coord.take(&mut state, meta(&[(0, 42)])).await.unwrap();
/// assert_eq!(taken.manifest.source_offsets[&0], 42);
///
/// let mut restored = MemoryStateBackend::new();
/// let mut coord = CheckpointCoordinator::open(store, CheckpointConfig::new("job", scratch.path())).await.unwrap();
/// assert!(matches!(coord.restore_latest(&mut restored).await.unwrap(), RestoreOutcome::Restored(_)));
/// assert_eq!(restored.get("ns", b"k").unwrap(), Some(b"v".to_vec()));
/// # });
/// ```
pub struct CheckpointCoordinator {
    store: CheckpointStore,
    config: CheckpointConfig,
    next_id: u64,
    /// This process's claim of the folder; taken before the first restore or write.
    writer: Option<Writer>,
    /// Shared objects a committed manifest this writer restored or wrote references: uploads of
    /// them are skipped.
    known_shared: HashSet<String>,
    /// Objects this writer uploaded (garbage collection may delete them as soon as nothing
    /// references them; an earlier writer's only after the grace period).
    uploaded: HashSet<String>,
    /// Manifests read or written, by object key, to avoid fetching them again during GC.
    manifests: HashMap<String, Manifest>,
}

impl std::fmt::Debug for CheckpointCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointCoordinator")
            .field("store", &self.store.location())
            .field("config", &self.config)
            .field("next_id", &self.next_id)
            .field("writer", &self.writer.as_ref().map(|w| w.claim.epoch))
            .finish()
    }
}

fn checkpoint_manifest_key(id: u64) -> String {
    format!("{CHECKPOINTS}{id:020}.json")
}

fn parse_checkpoint_id(key: &str) -> Option<u64> {
    key.strip_prefix(CHECKPOINTS)?.strip_suffix(".json")?.parse().ok()
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Shorthand for a [`CheckpointMeta`] with only source offsets (examples and tests).
pub fn coordinator_meta(offsets: &[(PartitionId, u64)]) -> CheckpointMeta {
    CheckpointMeta { source_offsets: offsets.iter().copied().collect(), ..CheckpointMeta::default() }
}

impl CheckpointCoordinator {
    /// Opens the coordinator; it lists the store to check that it answers. Reading (listing,
    /// restoring) needs nothing more; the first write claims the folder (see
    /// [`claim`](Self::claim)).
    pub async fn open(store: CheckpointStore, mut config: CheckpointConfig) -> Result<Self, CheckpointError> {
        config.retain = config.retain.max(MIN_RETAIN);
        std::fs::create_dir_all(&config.local_dir).map_err(|e| CheckpointError::io(&config.local_dir, e))?;
        let me = Self {
            store,
            config,
            next_id: 1,
            writer: None,
            known_shared: HashSet::new(),
            uploaded: HashSet::new(),
            manifests: HashMap::new(),
        };
        me.checkpoint_ids().await?;
        Ok(me)
    }

    /// Claims the folder for this process: a newer epoch than every writer and checkpoint there
    /// before. From then on a process that claims it later fences this one, and this one fences
    /// every earlier one. A job claims before it restores, so that what it restores cannot be
    /// garbage-collected by an earlier writer; [`take`](Self::take) claims by itself otherwise.
    pub async fn claim(&mut self) -> Result<&WriterClaim, CheckpointError> {
        let mut newest = self.checkpoint_ids().await?.into_iter().max().unwrap_or(0);
        for key in self.savepoint_keys().await? {
            if let Ok(m) = self.manifest(&key).await {
                newest = newest.max(m.id);
            }
        }
        let writer = Writer::claim(&self.store, &self.config.job_id, newest / EPOCH_SPAN).await?;
        self.next_id = writer.claim.epoch.saturating_mul(EPOCH_SPAN).saturating_add(1);
        Ok(&self.writer.insert(writer).claim)
    }

    /// This process's claim, once it has claimed the folder.
    pub fn writer(&self) -> Option<&WriterClaim> {
        self.writer.as_ref().map(|w| &w.claim)
    }

    async fn ensure_claimed(&mut self) -> Result<(), CheckpointError> {
        if self.writer.is_none() {
            self.claim().await?;
        }
        Ok(())
    }

    /// Fails with [`CheckpointError::Fenced`] once another process has claimed the folder.
    async fn check_fence(&self) -> Result<(), CheckpointError> {
        match &self.writer {
            Some(w) => w.check(&self.store).await,
            None => Ok(()),
        }
    }

    /// The store.
    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &CheckpointConfig {
        &self.config
    }

    async fn checkpoint_ids(&self) -> Result<Vec<u64>, CheckpointError> {
        let mut ids: Vec<u64> =
            self.store.list(CHECKPOINTS).await?.iter().filter_map(|(k, _)| parse_checkpoint_id(k)).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn savepoint_keys(&self) -> Result<Vec<String>, CheckpointError> {
        Ok(self
            .store
            .list(SAVEPOINTS)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.ends_with(".json") && !k[SAVEPOINTS.len()..].contains('/'))
            .collect())
    }

    async fn manifest(&mut self, key: &str) -> Result<Manifest, CheckpointError> {
        if let Some(m) = self.manifests.get(key) {
            return Ok(m.clone());
        }
        let bytes = self.store.get(key).await?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Invalid {
            id: key.to_owned(),
            reason: format!("manifest does not parse: {e}"),
        })?;
        if m.format_version > MANIFEST_FORMAT_VERSION {
            return Err(CheckpointError::Invalid {
                id: key.to_owned(),
                reason: format!("manifest format {} is newer than this build supports", m.format_version),
            });
        }
        self.manifests.insert(key.to_owned(), m.clone());
        Ok(m)
    }

    /// Manifests of the retained periodic checkpoints, oldest first.
    pub async fn list_checkpoints(&mut self) -> Result<Vec<Manifest>, CheckpointError> {
        let mut out = Vec::new();
        for id in self.checkpoint_ids().await? {
            out.push(self.manifest(&checkpoint_manifest_key(id)).await?);
        }
        Ok(out)
    }

    /// Manifests of all savepoints, by name.
    pub async fn list_savepoints(&mut self) -> Result<Vec<Manifest>, CheckpointError> {
        let mut out = Vec::new();
        for key in self.savepoint_keys().await? {
            out.push(self.manifest(&key).await?);
        }
        Ok(out)
    }

    /// Takes a periodic checkpoint of `state` and garbage-collects what no retained checkpoint needs.
    pub async fn take(
        &mut self,
        state: &mut dyn StateBackend,
        meta: CheckpointMeta,
    ) -> Result<TakenCheckpoint, CheckpointError> {
        self.ensure_claimed().await?;
        let id = self.next_id;
        let taken = self.write(state, meta, CheckpointKind::Checkpoint, id, None).await?;
        self.next_id = id + 1;
        match self.collect_garbage().await {
            Ok(()) => {}
            // The checkpoint committed before the claim was seen; the next one would not.
            Err(e @ CheckpointError::Fenced { .. }) => return Err(e),
            // The checkpoint itself is complete; stale files only cost space until the next run.
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint garbage collection failed; will retry after the next checkpoint");
            }
        }
        Ok(taken)
    }

    /// Takes a named savepoint (never garbage-collected).
    pub async fn savepoint(
        &mut self,
        name: &str,
        state: &mut dyn StateBackend,
        meta: CheckpointMeta,
    ) -> Result<TakenCheckpoint, CheckpointError> {
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(CheckpointError::Config(format!(
                "savepoint name `{name}` must be non-empty and use only letters, digits, '-', '_' or '.'"
            )));
        }
        self.ensure_claimed().await?;
        let id = self.next_id;
        let taken = self.write(state, meta, CheckpointKind::Savepoint, id, Some(name)).await?;
        self.next_id = id + 1;
        Ok(taken)
    }

    async fn write(
        &mut self,
        state: &mut dyn StateBackend,
        meta: CheckpointMeta,
        kind: CheckpointKind,
        id: u64,
        name: Option<&str>,
    ) -> Result<TakenCheckpoint, CheckpointError> {
        // Instrumented rather than entered: an entered guard held across `.await` would leak the
        // span into whatever else the thread runs meanwhile.
        let span = tracing::info_span!("checkpoint", id, kind = ?kind, job = %self.config.job_id);
        let body = async {
            let started = Instant::now();
            // Fail fast when fenced: nothing is uploaded for a manifest that may not be written.
            self.check_fence().await?;
            let label = name.map_or_else(|| format!("chk-{id:020}"), |n| format!("sp-{n}"));
            let dir = self.config.local_dir.join("snapshots").join(&label);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| CheckpointError::io(&dir, e))?;
            }
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(|e| CheckpointError::io(parent, e))?;
            }
            state.snapshot(&dir)?;
            let private_prefix = match name {
                Some(n) => format!("{SAVEPOINTS}{n}/"),
                None => format!("{CHECKPOINTS}{id:020}/"),
            };
            let mut files = Vec::new();
            let (mut bytes_uploaded, mut files_uploaded) = (0u64, 0usize);
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| CheckpointError::io(&dir, e))?
                .filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let path = entry.path();
                let file_name = entry.file_name().to_string_lossy().into_owned();
                let data = Bytes::from(std::fs::read(&path).map_err(|e| CheckpointError::io(&path, e))?);
                let crc32 = crc32fast::hash(&data);
                let size = data.len() as u64;
                // SST files never change once written: share them between checkpoints.
                let shared = file_name.ends_with(".sst");
                let object = if shared {
                    format!("{SHARED}{crc32:08x}-{size}-{file_name}")
                } else {
                    format!("{private_prefix}{file_name}")
                };
                if !shared || !self.known_shared.contains(&object) {
                    self.store.put(&object, data).await?;
                    bytes_uploaded += size;
                    files_uploaded += 1;
                    self.uploaded.insert(object.clone());
                }
                files.push(FileEntry { name: file_name, object, size, crc32, shared });
            }
            let manifest = Manifest {
                format_version: MANIFEST_FORMAT_VERSION,
                state_format_version: self.config.state_format_version,
                kind,
                id,
                name: name.map(str::to_owned),
                job_id: self.config.job_id.clone(),
                created_at_ms: now_ms(),
                source_offsets: meta.source_offsets,
                watermark: meta.watermark,
                sink_epoch: meta.sink_epoch,
                files,
                metadata: meta.metadata,
            };
            let body = serde_json::to_vec_pretty(&manifest)
                .map_err(|e| CheckpointError::Invalid { id: label.clone(), reason: e.to_string() })?;
            let manifest_key = match name {
                Some(n) => format!("{SAVEPOINTS}{n}.json"),
                None => checkpoint_manifest_key(id),
            };
            bytes_uploaded += body.len() as u64;
            files_uploaded += 1;
            // The manifest goes last: until it exists, the checkpoint does not. A writer fenced
            // since the first check commits nothing.
            self.check_fence().await?;
            self.store.put(&manifest_key, Bytes::from(body)).await?;
            self.known_shared.extend(manifest.files.iter().filter(|f| f.shared).map(|f| f.object.clone()));
            self.manifests.insert(manifest_key, manifest.clone());
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::debug!(error = %e, dir = %dir.display(), "could not remove local snapshot");
            }
            let duration = started.elapsed();
            tracing::info!(
                label = %manifest.label(),
                bytes_uploaded,
                files_uploaded,
                state_bytes = manifest.state_bytes(),
                duration_ms = duration.as_millis() as u64,
                "checkpoint complete"
            );
            Ok(TakenCheckpoint { manifest, bytes_uploaded, files_uploaded, duration })
        };
        body.instrument(span).await
    }

    /// Deletes checkpoints beyond the newest `retain`, then shared files nothing references.
    /// Objects of earlier writers go only once they are older than the fencing grace period; a
    /// fenced writer deletes nothing.
    async fn collect_garbage(&mut self) -> Result<(), CheckpointError> {
        self.check_fence().await?;
        let Some(writer) = self.writer.clone() else { return Ok(()) };
        let ids = self.checkpoint_ids().await?;
        let keep_from = ids.len().saturating_sub(self.config.retain);
        let (doomed, kept) = ids.split_at(keep_from);
        for &id in doomed {
            // Manifest first: a checkpoint without its manifest is never restored.
            let key = checkpoint_manifest_key(id);
            self.store.delete(&key).await?;
            self.manifests.remove(&key);
            for (obj, _) in self.store.list(&format!("{CHECKPOINTS}{id:020}/")).await? {
                self.store.delete(&obj).await?;
                self.uploaded.remove(&obj);
            }
        }
        let mut referenced = HashSet::new();
        let mut keys: Vec<String> = kept.iter().map(|&id| checkpoint_manifest_key(id)).collect();
        keys.extend(self.savepoint_keys().await?);
        for key in &keys {
            let m = self.manifest(key).await?;
            referenced.extend(m.files.iter().filter(|f| f.shared).map(|f| f.object.clone()));
        }
        let grace_before = writer.claimed_at_ms.saturating_sub(FOREIGN_GRACE_MS);
        let mine_or_old = |me: &HashSet<String>, key: &str, modified_ms: i64| {
            me.contains(key) || modified_ms < grace_before
        };
        // Private folders of checkpoints whose manifest was never written (a crash mid-upload).
        for obj in self.store.list_meta(CHECKPOINTS).await? {
            let Some(id) = obj
                .key
                .strip_prefix(CHECKPOINTS)
                .and_then(|r| r.split_once('/'))
                .and_then(|(id, _)| id.parse::<u64>().ok())
            else {
                continue;
            };
            if !kept.contains(&id)
                && id < self.next_id
                && mine_or_old(&self.uploaded, &obj.key, obj.modified_ms)
            {
                self.store.delete(&obj.key).await?;
                self.uploaded.remove(&obj.key);
            }
        }
        for obj in self.store.list_meta(SHARED).await? {
            if !referenced.contains(&obj.key) && mine_or_old(&self.uploaded, &obj.key, obj.modified_ms) {
                self.store.delete(&obj.key).await?;
                self.known_shared.remove(&obj.key);
                self.uploaded.remove(&obj.key);
            }
        }
        writer.forget_older(&self.store).await
    }

    /// Restores the newest usable checkpoint into `state`, falling back to older ones when files are
    /// missing or corrupt. Fails when checkpoints exist but none is usable, unless
    /// `allow_empty_start` is set.
    pub async fn restore_latest(
        &mut self,
        state: &mut dyn StateBackend,
    ) -> Result<RestoreOutcome, CheckpointError> {
        let ids = self.checkpoint_ids().await?;
        if ids.is_empty() {
            tracing::info!(store = self.store.location(), "no checkpoint found; starting from scratch");
            return Ok(RestoreOutcome::Fresh);
        }
        for &id in ids.iter().rev() {
            let key = checkpoint_manifest_key(id);
            match self.restore_manifest(&key, state).await {
                Ok(m) => return Ok(RestoreOutcome::Restored(Box::new(m))),
                // A store that does not answer now may answer later: falling back would restore
                // older state, and the newer checkpoint's partitions with it.
                Err(e @ CheckpointError::IncompatibleFormat { .. }) => return Err(e),
                Err(e @ CheckpointError::Storage { .. }) if !e.is_not_found() => return Err(e),
                Err(e) => {
                    tracing::warn!(checkpoint = id, error = %e, "checkpoint unusable; falling back to the previous one");
                }
            }
        }
        if self.config.allow_empty_start {
            tracing::warn!(
                found = ids.len(),
                "no usable checkpoint; starting empty because allow_empty_start is set"
            );
            return Ok(RestoreOutcome::Fresh);
        }
        Err(CheckpointError::NoUsableCheckpoint {
            location: self.store.location().to_owned(),
            found: ids.len(),
        })
    }

    /// Restores the savepoint `name` into `state`.
    pub async fn restore_savepoint(
        &mut self,
        name: &str,
        state: &mut dyn StateBackend,
    ) -> Result<Manifest, CheckpointError> {
        self.restore_manifest(&format!("{SAVEPOINTS}{name}.json"), state).await
    }

    async fn restore_manifest(
        &mut self,
        key: &str,
        state: &mut dyn StateBackend,
    ) -> Result<Manifest, CheckpointError> {
        let started = Instant::now();
        let manifest = self.manifest(key).await?;
        let label = manifest.label();
        let expected = self.config.state_format_version;
        if manifest.state_format_version != expected
            && (manifest.state_format_version > expected || self.config.migration.is_none())
        {
            return Err(CheckpointError::IncompatibleFormat {
                id: label,
                found: manifest.state_format_version,
                expected,
            });
        }
        let dir = self.config.local_dir.join("restore").join(format!("{:020}", manifest.id));
        download_files(&self.store, &manifest, &dir).await?;
        state.restore(&dir)?;
        // What a committed manifest references exists: the next checkpoint need not upload it.
        self.known_shared.extend(manifest.files.iter().filter(|f| f.shared).map(|f| f.object.clone()));
        if manifest.state_format_version != expected
            && let Some(m) = &self.config.migration
        {
            m.migrate(manifest.state_format_version, state)?;
            tracing::info!(from = manifest.state_format_version, to = expected, "state migrated");
        }
        remove_quietly(&dir);
        tracing::info!(
            label = %label,
            files = manifest.files.len(),
            state_bytes = manifest.state_bytes(),
            duration_ms = started.elapsed().as_millis() as u64,
            "restored"
        );
        Ok(manifest)
    }
}

/// Downloads a manifest's files into the fresh directory `dir`, checking each one's size and CRC.
pub(super) async fn download_files(
    store: &CheckpointStore,
    manifest: &Manifest,
    dir: &Path,
) -> Result<(), CheckpointError> {
    let label = manifest.label();
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| CheckpointError::io(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| CheckpointError::io(dir, e))?;
    for f in &manifest.files {
        let data = store.get(&f.object).await.map_err(|e| {
            // Gone: the checkpoint is broken for good. Anything else may pass: kept as it is.
            if e.is_not_found() {
                CheckpointError::Invalid {
                    id: label.clone(),
                    reason: format!("file {} is missing: {e}", f.object),
                }
            } else {
                e
            }
        })?;
        if data.len() as u64 != f.size || crc32fast::hash(&data) != f.crc32 {
            return Err(CheckpointError::Invalid {
                id: label.clone(),
                reason: format!(
                    "file {} is corrupt: {} bytes with crc32 {:08x}, manifest says {} bytes with crc32 {:08x}",
                    f.object,
                    data.len(),
                    crc32fast::hash(&data),
                    f.size,
                    f.crc32
                ),
            });
        }
        let path = dir.join(&f.name);
        std::fs::write(&path, &data).map_err(|e| CheckpointError::io(&path, e))?;
    }
    Ok(())
}

pub(super) fn remove_quietly(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::debug!(error = %e, dir = %dir.display(), "could not remove restore scratch directory");
    }
}
