//! Fencing: at most one process commits checkpoints into a folder.
//!
//! Two processes end up writing one folder when two instances are given the same `instance_id`,
//! or when a restarted process starts while its predecessor is still shutting down. Unfenced,
//! they overwrite each other's manifests and garbage-collect each other's files.
//!
//! A writer claims the folder before it restores: it writes `writers/<epoch>-<nonce>.json` with an
//! epoch above every claim and every checkpoint id already there. The newest claim (highest epoch,
//! then nonce) owns the folder. As with Kafka's producer epochs and static group members, the
//! newest process wins: a restarted process takes over from a zombie at once instead of waiting
//! for a lease to run out. Before each manifest it commits and before each garbage collection a
//! writer lists the claims; when it finds a newer one it stops with [`CheckpointError::Fenced`].
//!
//! The store offers no compare-and-set that every S3 implementation honours (Garage ignores
//! `If-None-Match`), so a fenced writer can still commit the one manifest whose check raced the
//! new claim. The coordinator keeps that harmless: checkpoint ids carry the writer's epoch (no key
//! is ever written by two writers), retention keeps at least two checkpoints (the one the new
//! writer restored survives the zombie's last commit), and a writer deletes objects of earlier
//! writers only once they are older than [`FOREIGN_GRACE_MS`] before its own claim.

use std::hash::BuildHasher;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::CheckpointError;
use super::store::CheckpointStore;

const WRITERS: &str = "writers/";

/// Objects an earlier writer left behind are deleted only when the store wrote them at least this
/// long before this writer's claim: a zombie's upload in flight when the claim landed is never
/// pulled from under its manifest.
pub(super) const FOREIGN_GRACE_MS: i64 = 10 * 60_000;

/// Who claimed a checkpoint folder (the body of its claim object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterClaim {
    /// Increases with every claim of the folder.
    pub epoch: u64,
    /// Random, to order two claims of the same epoch.
    pub nonce: String,
    /// Host name of the writing process.
    pub host: String,
    /// Process id of the writing process.
    pub pid: u32,
    /// The job it runs.
    pub job_id: String,
    /// When it claimed the folder, ms since the epoch (its own clock).
    pub claimed_at_ms: i64,
}

impl WriterClaim {
    fn key(&self) -> String {
        format!("{WRITERS}{:020}-{}.json", self.epoch, self.nonce)
    }

    /// `epoch 3 (host web-1, pid 4711)`, for logs and errors.
    pub fn describe(&self) -> String {
        format!("epoch {} (host {}, pid {}, job {})", self.epoch, self.host, self.pid, self.job_id)
    }
}

/// The epoch a claim key names.
fn epoch_of(key: &str) -> Option<u64> {
    key.strip_prefix(WRITERS)?.split_once('-')?.0.parse().ok()
}

/// The epoch of the newest claim of `store` (0: never claimed).
pub(super) async fn newest_epoch(store: &CheckpointStore) -> Result<u64, CheckpointError> {
    Ok(store.list(WRITERS).await?.iter().filter_map(|(k, _)| epoch_of(k)).max().unwrap_or(0))
}

/// This process's claim of a folder.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    pub(super) claim: WriterClaim,
    key: String,
    /// When the store wrote the claim, by the store's clock (comparable with listings).
    pub(super) claimed_at_ms: i64,
}

impl Writer {
    /// Claims `store` for a writer of `job_id`, with an epoch above `at_least` and above every
    /// claim already there; fails with [`CheckpointError::Fenced`] when a newer claim appeared
    /// meanwhile.
    pub(super) async fn claim(
        store: &CheckpointStore,
        job_id: &str,
        at_least: u64,
    ) -> Result<Self, CheckpointError> {
        let epoch = newest_epoch(store).await?.max(at_least).saturating_add(1);
        let claim = WriterClaim {
            epoch,
            nonce: format!("{:016x}", nonce()),
            host: host_name(),
            pid: std::process::id(),
            job_id: job_id.to_owned(),
            claimed_at_ms: super::coordinator::now_ms(),
        };
        let key = claim.key();
        let body = serde_json::to_vec_pretty(&claim)
            .map_err(|e| CheckpointError::Invalid { id: key.clone(), reason: e.to_string() })?;
        store.put(&key, Bytes::from(body)).await?;
        let listed = store.list_meta(WRITERS).await?;
        let claimed_at_ms =
            listed.iter().find(|o| o.key == key).map_or(claim.claimed_at_ms, |o| o.modified_ms);
        let me = Self { claim, key, claimed_at_ms };
        me.fenced_by(store, listed.iter().map(|o| o.key.as_str())).await?;
        tracing::info!(store = store.location(), writer = %me.claim.describe(), "claimed the checkpoint folder");
        Ok(me)
    }

    /// Fails with [`CheckpointError::Fenced`] when a newer writer has claimed the folder.
    pub(super) async fn check(&self, store: &CheckpointStore) -> Result<(), CheckpointError> {
        let listed = store.list(WRITERS).await?;
        self.fenced_by(store, listed.iter().map(|(k, _)| k.as_str())).await
    }

    async fn fenced_by<'a>(
        &self,
        store: &CheckpointStore,
        keys: impl Iterator<Item = &'a str>,
    ) -> Result<(), CheckpointError> {
        // Zero-padded epochs: the greatest key is the newest claim.
        let Some(newer) = keys.filter(|k| k.ends_with(".json")).filter(|k| *k > self.key.as_str()).max()
        else {
            return Ok(());
        };
        let by =
            match store.get(newer).await.ok().and_then(|b| serde_json::from_slice::<WriterClaim>(&b).ok()) {
                Some(c) => c.describe(),
                None => newer.to_owned(),
            };
        Err(CheckpointError::Fenced {
            location: store.location().to_owned(),
            ours: self.claim.describe(),
            by,
        })
    }

    /// Deletes the claims of earlier writers (a zombie still finds this writer's newer claim).
    pub(super) async fn forget_older(&self, store: &CheckpointStore) -> Result<(), CheckpointError> {
        for (key, _) in store.list(WRITERS).await? {
            if key < self.key {
                store.delete(&key).await?;
            }
        }
        Ok(())
    }
}

/// A random number, without a dependency: std's per-process random hash keys over the time and
/// the process id.
fn nonce() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((nanos, std::process::id()))
}

/// This machine's host name (`HOSTNAME`, then the kernel's), or `unknown-host`; only letters,
/// digits, `-`, `_` and `.` are kept.
///
/// # Examples
/// ```
/// let host = ferroflow_core::checkpoint::host_name();
/// assert!(!host.is_empty());
/// assert!(host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
/// ```
pub fn host_name() -> String {
    let raw = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let clean: String =
        raw.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect();
    if clean.is_empty() { "unknown-host".to_owned() } else { clean }
}
