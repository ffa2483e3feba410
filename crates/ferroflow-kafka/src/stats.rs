//! Live figures of the Kafka source, for metrics and the demo's summary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ferroflow_core::PartitionId;

/// Per-partition progress as librdkafka last reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionLag {
    /// The partition's high watermark (offset of the next message produced).
    pub high_watermark: i64,
    /// The consumer's position in it.
    pub position: i64,
    /// `high_watermark - position` (messages not yet consumed).
    pub lag: i64,
}

/// Where a partition stands, as librdkafka's statistics last reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LogRange {
    /// The log start (records below it were deleted).
    pub(crate) start: i64,
    /// The end a consumer can read to: the last stable offset under `read_committed` (past open
    /// transactions nothing is readable yet), else the high watermark.
    pub(crate) end: i64,
    /// The offset after the last message librdkafka handed to the application (it moves past
    /// transaction markers, which never reach the application); -1 before the first.
    pub(crate) app: i64,
}

/// Counters shared between the poll thread and readers. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SourceStats {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: AtomicU64,
    bytes: AtomicU64,
    batches: AtomicU64,
    blocked_ns: AtomicU64,
    commits: AtomicU64,
    commit_failures: AtomicU64,
    rebalances: AtomicU64,
    lag: Mutex<BTreeMap<PartitionId, PartitionLag>>,
    /// Where every partition librdkafka reports on stands, as of its latest statistics.
    log_range: Mutex<BTreeMap<PartitionId, LogRange>>,
    /// Offsets skipped because the broker no longer had them, per partition.
    lost: Mutex<BTreeMap<PartitionId, u64>>,
    /// Messages of partitions not assigned any more, dropped unread (another owner reads them).
    stray: AtomicU64,
    /// Offsets a resumed partition skipped while the broker still had the log there: transaction
    /// markers or compaction (no records), or records gone some other way.
    gaps: AtomicU64,
    /// The source's header stash, for its eviction count.
    headers: Mutex<Option<crate::headers::HeaderStash>>,
}

impl SourceStats {
    pub(crate) fn consumed(&self, records: u64, bytes: u64) {
        self.inner.records.fetch_add(records, Ordering::Relaxed);
        self.inner.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.inner.batches.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn blocked(&self, ns: u64) {
        self.inner.blocked_ns.fetch_add(ns, Ordering::Relaxed);
    }
    pub(crate) fn committed(&self, ok: bool) {
        let c = if ok { &self.inner.commits } else { &self.inner.commit_failures };
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn rebalanced(&self) {
        self.inner.rebalances.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn lost(&self, partition: PartitionId, records: u64) {
        if let Ok(mut l) = self.inner.lost.lock() {
            let n = l.entry(partition).or_default();
            *n = n.saturating_add(records);
        }
    }
    pub(crate) fn watch_headers(&self, stash: crate::headers::HeaderStash) {
        if let Ok(mut h) = self.inner.headers.lock() {
            *h = Some(stash);
        }
    }
    pub(crate) fn stray(&self) {
        self.inner.stray.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn gap(&self, offsets: u64) {
        self.inner.gaps.fetch_add(offsets, Ordering::Relaxed);
    }
    pub(crate) fn set_lag(&self, lags: BTreeMap<PartitionId, PartitionLag>) {
        if let Ok(mut l) = self.inner.lag.lock() {
            *l = lags;
        }
    }
    pub(crate) fn set_log_range(&self, ranges: BTreeMap<PartitionId, LogRange>) {
        if let Ok(mut r) = self.inner.log_range.lock() {
            *r = ranges;
        }
    }
    /// The log start of `partition`, from librdkafka's latest statistics.
    pub(crate) fn log_start(&self, partition: PartitionId) -> Option<i64> {
        self.inner.log_range.lock().ok()?.get(&partition).map(|r| r.start)
    }
    /// Where each partition stands, from librdkafka's latest statistics.
    pub(crate) fn log_range(&self) -> BTreeMap<PartitionId, LogRange> {
        self.inner.log_range.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Records consumed.
    pub fn records(&self) -> u64 {
        self.inner.records.load(Ordering::Relaxed)
    }
    /// Payload bytes consumed.
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }
    /// Batches delivered to the job.
    pub fn batches(&self) -> u64 {
        self.inner.batches.load(Ordering::Relaxed)
    }
    /// Time the poll thread spent waiting for the job to take a batch (backpressure), seconds.
    pub fn blocked_seconds(&self) -> f64 {
        self.inner.blocked_ns.load(Ordering::Relaxed) as f64 / 1e9
    }
    /// Offset commits handed to the client / failed (refused locally or by the broker).
    pub fn commits(&self) -> (u64, u64) {
        (self.inner.commits.load(Ordering::Relaxed), self.inner.commit_failures.load(Ordering::Relaxed))
    }
    /// Rebalances seen.
    pub fn rebalances(&self) -> u64 {
        self.inner.rebalances.load(Ordering::Relaxed)
    }
    /// Offsets skipped per partition because retention had deleted them when the partition
    /// resumed (only with `on_data_loss = "continue"`; by default the job stops instead).
    pub fn records_lost(&self) -> BTreeMap<PartitionId, u64> {
        self.inner.lost.lock().map(|l| l.clone()).unwrap_or_default()
    }
    /// Original headers dropped from the stash to stay within `header_stash_max_bytes` (their
    /// dead letters go out without them).
    pub fn headers_evicted(&self) -> u64 {
        self.inner
            .headers
            .lock()
            .ok()
            .and_then(|h| h.as_ref().map(crate::headers::HeaderStash::evicted))
            .unwrap_or(0)
    }
    /// Messages of partitions no longer assigned that were dropped unread.
    pub fn stray_messages(&self) -> u64 {
        self.inner.stray.load(Ordering::Relaxed)
    }
    /// Offsets skipped where a partition resumed although the log still held them: transaction
    /// markers and compaction make such gaps without records; on a topic with neither, any gap
    /// is worth a look.
    pub fn offset_gaps(&self) -> u64 {
        self.inner.gaps.load(Ordering::Relaxed)
    }
    /// Consumer lag per partition, from librdkafka's latest statistics.
    pub fn lag(&self) -> BTreeMap<PartitionId, PartitionLag> {
        self.inner.lag.lock().map(|l| l.clone()).unwrap_or_default()
    }
}
