//! The table itself: every key's versions by time, shared by every task of the instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{RetryHint, SourceError};
use crate::record::{Key, Timestamp};
use crate::time::{Clock, SystemClock, Watermark, WatermarkCeiling};

/// How far the table's history reaches below the slowest reader's watermark unless told
/// otherwise (see [`BroadcastTable::with_history`]).
pub const DEFAULT_HISTORY: Duration = Duration::from_secs(3600);

/// A versioned table every task of a job instance reads whole: a small dimension table (users,
/// products, rates) joined with a stream that is not keyed or partitioned by the table's key, like
/// Kafka Streams' GlobalKTable, but looked up as of each event's time.
///
/// The table is filled from its own input ([`loaded_from`](Self::loaded_from)), read from the start
/// by every instance on every start, on a task of its own; it is not part of checkpoints. Each
/// version is valid from its event time until the key's next version. The table's watermark
/// (from its input's records, by the strategy given) caps the job's watermark, so an event is
/// joined only once every version up to its time has arrived: [`BroadcastJoin`](super::BroadcastJoin)
/// holds each event in keyed state until the job's watermark reaches it.
///
/// History is kept from [`with_history`](Self::with_history) below the lowest watermark of the
/// steps reading the table: an older version is dropped once a newer one is valid from before
/// that point.
///
/// # Examples
/// ```
/// use ferroflow_core::join::BroadcastTable;
/// use ferroflow_core::Key;
/// let users: BroadcastTable<&str> = BroadcastTable::new("users");
/// users.insert(Key::from("u1"), 100, "free");
/// users.insert(Key::from("u1"), 200, "pro");
/// assert_eq!(users.get(&Key::from("u1"), 150).unwrap(), Some("free"));
/// assert_eq!(users.get(&Key::from("u1"), 250).unwrap(), Some("pro"));
/// assert_eq!(users.get(&Key::from("u1"), 50).unwrap(), None, "no version yet");
/// ```
pub struct BroadcastTable<V> {
    pub(super) shared: Arc<Shared<V>>,
}

impl<V> Clone for BroadcastTable<V> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared) }
    }
}

impl<V> std::fmt::Debug for BroadcastTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastTable")
            .field("name", &self.shared.name)
            .field("watermark", &self.shared.ceiling.get())
            .field("versions", &self.shared.versions.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Where the table's input stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Load {
    /// Still reading (or not started).
    Reading,
    /// The input ended: the table is complete and its watermark is [`Watermark::MAX`].
    Complete,
    /// The input failed; the error waits in `Shared::failure`.
    Failed,
}

pub(super) struct Shared<V> {
    pub(super) name: String,
    rows: RwLock<HashMap<Key, History<V>>>,
    ceiling: WatermarkCeiling,
    set_ceiling: Box<dyn Fn(Watermark) + Send + Sync>,
    history_ms: i64,
    /// Idleness of the table's input is measured on it (when the input keeps no clock of its own).
    pub(super) clock: Arc<dyn Clock>,
    /// The watermark each step reading the table last reported (see [`TableReader`]).
    readers: Mutex<Vec<Arc<Marks>>>,
    pub(super) versions: AtomicU64,
    pub(super) late: AtomicU64,
    pub(super) unreadable: AtomicU64,
    pub(super) load: watch::Sender<Load>,
    failure: Mutex<Option<SourceError>>,
    /// An input started filling the table (or a version was put in by hand).
    fed: AtomicBool,
}

/// One key's versions, oldest first.
struct History<V> {
    versions: Vec<(Timestamp, V)>,
    /// Versions before this time were dropped: a lookup before it cannot be answered, and a
    /// version before it that comes late is not kept (it would answer lookups in the gap wrongly).
    floor: Option<Timestamp>,
}

/// A lookup before the oldest version the table still keeps of a key, which older ones were
/// dropped to make room for: the answer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryGone {
    /// The oldest version kept.
    pub oldest_kept: Timestamp,
}

impl<V: Send + Sync + 'static> BroadcastTable<V> {
    /// An empty table named `name` (in logs, metrics and dead letters).
    pub fn new(name: impl Into<String>) -> Self {
        let (ceiling, set_ceiling) = WatermarkCeiling::new();
        let history_ms = i64::try_from(DEFAULT_HISTORY.as_millis()).unwrap_or(i64::MAX);
        Self {
            shared: Arc::new(Shared {
                name: name.into(),
                rows: RwLock::new(HashMap::new()),
                ceiling,
                set_ceiling: Box::new(set_ceiling),
                history_ms,
                clock: Arc::new(SystemClock),
                readers: Mutex::new(Vec::new()),
                versions: AtomicU64::new(0),
                late: AtomicU64::new(0),
                unreadable: AtomicU64::new(0),
                load: watch::channel(Load::Reading).0,
                failure: Mutex::new(None),
                fed: AtomicBool::new(false),
            }),
        }
    }

    /// Keeps versions for `history` below the lowest watermark the steps reading the table have
    /// reported (default [`DEFAULT_HISTORY`]). A step whose watermark lies further behind (one
    /// restored from an old checkpoint after a hand-over, an idle one that never reported) may find
    /// the version it needs gone: the join sends such events to the dead letters, never a wrong
    /// answer. Call it before the table is shared (cloned, fed or read).
    pub fn with_history(self, history: Duration) -> Self {
        let history_ms = i64::try_from(history.as_millis()).unwrap_or(i64::MAX);
        self.configure(|shared| shared.history_ms = history_ms)
    }

    /// Measures the idleness of the table's input on `clock` (the wall clock unless told; an
    /// input that reports a clock of its own is measured on that). Call it before the table is
    /// shared.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        self.configure(|shared| shared.clock = clock)
    }

    /// Changes a setting while the table is not shared yet (once shared, settings stay).
    fn configure(self, f: impl FnOnce(&mut Shared<V>)) -> Self {
        match Arc::try_unwrap(self.shared) {
            Ok(mut shared) => {
                f(&mut shared);
                Self { shared: Arc::new(shared) }
            }
            Err(shared) => {
                tracing::warn!(table = %shared.name, "a broadcast table's setting changed after it was shared: ignored");
                Self { shared }
            }
        }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// How far the table holds the watermark of the jobs reading it: its input's watermark
    /// (every version at or before it has arrived, except late ones), or [`Watermark::MAX`] while
    /// every partition of its input is idle or finished.
    pub fn watermark(&self) -> Watermark {
        self.shared.ceiling.get()
    }

    /// What caps the watermark of the jobs reading the table.
    pub fn ceiling(&self) -> WatermarkCeiling {
        self.shared.ceiling.clone()
    }

    /// Versions held, over every key.
    pub fn versions(&self) -> u64 {
        self.shared.versions.load(Ordering::Relaxed)
    }

    /// Versions that arrived at or below the watermark a reading step had already reached: they
    /// were kept, but events that step joined already did not see them.
    pub fn late_versions(&self) -> u64 {
        self.shared.late.load(Ordering::Relaxed)
    }

    /// Input of the table's source that it could not read (its dead letters): logged and counted
    /// here, not sent to the job's dead letters, since every start reads the input again.
    pub fn unreadable(&self) -> u64 {
        self.shared.unreadable.load(Ordering::Relaxed)
    }

    /// True once the table's input has ended (a bounded input): every version is in.
    pub fn is_complete(&self) -> bool {
        *self.shared.load.borrow() == Load::Complete
    }

    /// Adds `value` as `key`'s version from `at` on (replacing one at the same time), and drops
    /// versions no reader can need any more. The table's input does this; tests and tools may too.
    pub fn insert(&self, key: Key, at: Timestamp, value: V) {
        self.insert_all([(key, at, value)]);
    }

    /// Adds versions as [`insert`](Self::insert) does, under one lock.
    pub(super) fn insert_all(&self, versions: impl IntoIterator<Item = (Key, Timestamp, V)>) {
        self.shared.fed.store(true, Ordering::Release);
        let horizon = self.shared.horizon();
        let (mut added, mut dropped, mut below_floor) = (0u64, 0u64, 0u64);
        let mut rows = self.shared.rows.write().unwrap_or_else(PoisonError::into_inner);
        for (key, at, value) in versions {
            let history = rows.entry(key).or_insert_with(|| History { versions: Vec::new(), floor: None });
            match history.insert(at, value, horizon) {
                Some((new, gone)) => {
                    added = added.saturating_add(u64::from(new));
                    dropped = dropped.saturating_add(gone);
                }
                None => below_floor = below_floor.saturating_add(1),
            }
        }
        drop(rows);
        self.shared.versions.fetch_add(added, Ordering::Relaxed);
        self.shared.versions.fetch_sub(dropped, Ordering::Relaxed);
        if below_floor > 0 {
            // No reader can look them up: their time is below what every reader has settled.
            self.shared.late.fetch_add(below_floor, Ordering::Relaxed);
        }
    }

    /// `key`'s value valid at `at`: the version with the latest time at or before it (`None`: the
    /// key had none yet).
    ///
    /// # Errors
    /// [`HistoryGone`] when older versions of the key were dropped and `at` lies before the oldest
    /// one kept.
    pub fn get(&self, key: &Key, at: Timestamp) -> Result<Option<V>, HistoryGone>
    where
        V: Clone,
    {
        self.with_value(key, at, |v| v.cloned())
    }

    /// Calls `f` with `key`'s value valid at `at` (see [`get`](Self::get)), without copying it.
    pub fn with_value<R>(
        &self,
        key: &Key,
        at: Timestamp,
        f: impl FnOnce(Option<&V>) -> R,
    ) -> Result<R, HistoryGone> {
        let rows = self.shared.rows.read().unwrap_or_else(PoisonError::into_inner);
        let Some(history) = rows.get(key) else { return Ok(f(None)) };
        if let Some(floor) = history.floor.filter(|floor| at < *floor) {
            return Err(HistoryGone { oldest_kept: floor });
        }
        let valid = history.versions.partition_point(|(t, _)| *t <= at);
        Ok(f(valid.checked_sub(1).and_then(|i| history.versions.get(i)).map(|(_, v)| v)))
    }

    /// `key`'s latest version, whatever its time.
    pub fn with_latest<R>(&self, key: &Key, f: impl FnOnce(Option<&V>) -> R) -> R {
        let rows = self.shared.rows.read().unwrap_or_else(PoisonError::into_inner);
        f(rows.get(key).and_then(|h| h.versions.last()).map(|(_, v)| v))
    }

    /// A handle through which one step reports its watermark, holding the table's history back
    /// to it (from [`Watermark::MIN`] until the first report) until it is dropped.
    pub fn reader(&self) -> TableReader {
        let marks = Arc::new(Marks { settled: AtomicI64::new(i64::MIN), joined: AtomicI64::new(i64::MIN) });
        self.shared.readers.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(&marks));
        TableReader {
            marks,
            readers: Arc::downgrade(&self.shared) as std::sync::Weak<dyn Readers>,
            last_settled: Timestamp::MIN,
        }
    }

    /// True once an input started filling the table, or a version was inserted.
    pub(super) fn is_fed(&self) -> bool {
        self.shared.fed.load(Ordering::Acquire)
    }

    /// Empties the table for a new read of its input from the start (a job starting again in
    /// the same process after a failure reads everything again, as a new process would).
    pub(super) fn restart(&self) {
        self.shared.rows.write().unwrap_or_else(PoisonError::into_inner).clear();
        self.shared.versions.store(0, Ordering::Relaxed);
        *self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.hold_at(Watermark::MIN);
        self.shared.load.send_replace(Load::Reading);
        self.shared.fed.store(true, Ordering::Release);
    }

    /// Sets how far the table holds the watermark of its readers.
    pub(super) fn hold_at(&self, w: Watermark) {
        (self.shared.set_ceiling)(w);
    }

    /// The input ended: every version is in.
    pub(super) fn complete(&self) {
        self.hold_at(Watermark::MAX);
        self.shared.load.send_replace(Load::Complete);
    }

    /// The input failed: the job fails with `error`.
    pub(super) fn fail(&self, error: SourceError) {
        *self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
        self.shared.load.send_replace(Load::Failed);
    }

    /// The input's failure, if it failed (the error itself once, then a note that it failed).
    pub(super) fn failure(&self) -> Option<SourceError> {
        if *self.shared.load.borrow() != Load::Failed {
            return None;
        }
        let taken = self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner).take();
        Some(taken.unwrap_or_else(|| SourceError::External {
            message: format!("the input of broadcast table '{}' failed", self.shared.name),
            retry: RetryHint::WithBackoff,
        }))
    }
}

impl<V> Shared<V> {
    /// The furthest watermark a reader has reported: a version at or below it comes too late for
    /// events that reader has joined already.
    pub(super) fn furthest_reader(&self) -> Timestamp {
        let readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        readers.iter().map(|r| r.joined.load(Ordering::Acquire)).max().unwrap_or(Timestamp::MIN)
    }

    /// The time before which versions may go: the lowest watermark readers have reported, less
    /// the history kept. Readers that never reported (no event reached them yet: an idle
    /// partition's task, one just taken over) do not hold it; the history is their margin. No
    /// report yet: nothing goes.
    fn horizon(&self) -> Timestamp {
        let readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        let reported =
            readers.iter().map(|r| r.settled.load(Ordering::Acquire)).filter(|s| *s > Timestamp::MIN);
        match reported.min() {
            Some(low) => low.saturating_sub(self.history_ms),
            None => Timestamp::MIN,
        }
    }
}

impl<V> History<V> {
    /// Adds a version (true) or replaces the one at the same time (false); returns that and how
    /// many older versions were dropped, or `None` for a version below the floor (not kept).
    fn insert(&mut self, at: Timestamp, value: V, horizon: Timestamp) -> Option<(bool, u64)> {
        if self.floor.is_some_and(|floor| at < floor) {
            return None;
        }
        let i = self.versions.partition_point(|(t, _)| *t < at);
        let added = match self.versions.get_mut(i) {
            Some((t, v)) if *t == at => {
                *v = value;
                false
            }
            _ => {
                self.versions.insert(i, (at, value));
                true
            }
        };
        // Keep the version valid at the horizon and every later one.
        let drop = self.versions.partition_point(|(t, _)| *t <= horizon).saturating_sub(1);
        if drop > 0 {
            self.versions.drain(..drop);
            self.floor = self.versions.first().map(|(t, _)| *t);
        }
        Some((added, u64::try_from(drop).unwrap_or(u64::MAX)))
    }
}

/// How far one reader has got.
#[derive(Debug)]
struct Marks {
    /// Every lookup to come is later than this.
    settled: AtomicI64,
    /// The latest time looked up.
    joined: AtomicI64,
}

/// Where the table's readers report their watermarks.
trait Readers: Send + Sync {
    fn forget(&self, reader: &Arc<Marks>);
}

impl<V: Send + Sync> Readers for Shared<V> {
    fn forget(&self, reader: &Arc<Marks>) {
        self.readers.lock().unwrap_or_else(PoisonError::into_inner).retain(|r| !Arc::ptr_eq(r, reader));
    }
}

/// One step's hold on a [`BroadcastTable`]'s history: the table keeps every version that step
/// may still look up (see [`BroadcastTable::reader`]). Dropping it lets go.
pub struct TableReader {
    marks: Arc<Marks>,
    readers: std::sync::Weak<dyn Readers>,
    /// The watermark last reported: the step reports on every record, the table needs to hear
    /// only when it moved.
    last_settled: Timestamp,
}

impl std::fmt::Debug for TableReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableReader").field("marks", &self.marks).finish()
    }
}

impl TableReader {
    /// Every lookup this step makes from now on is later than `watermark`.
    #[inline]
    pub fn settled(&mut self, watermark: Timestamp) {
        if watermark <= self.last_settled {
            return;
        }
        self.last_settled = watermark;
        self.marks.settled.fetch_max(watermark, Ordering::Release);
        self.marks.joined.fetch_max(watermark, Ordering::Release);
    }

    /// This step looked a key up as of `at`: a version at or before it that comes later is late.
    #[inline]
    pub fn joined(&self, at: Timestamp) {
        self.marks.joined.fetch_max(at, Ordering::Release);
    }
}

impl Drop for TableReader {
    fn drop(&mut self) {
        if let Some(readers) = self.readers.upgrade() {
            readers.forget(&self.marks);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key() -> Key {
        Key::from("u1")
    }

    #[test]
    fn without_readers_every_version_stays() {
        let table = BroadcastTable::new("t").with_history(Duration::ZERO);
        for t in [100, 500, 900] {
            table.insert(key(), t, t);
        }
        assert_eq!(table.versions(), 3);
        assert_eq!(table.get(&key(), 120), Ok(Some(100)));
        assert_eq!(table.get(&key(), 99), Ok(None), "before the first version: none, not gone");
    }

    #[test]
    fn versions_go_once_every_reader_is_past_their_successor_and_a_lookup_before_them_says_so() {
        let table = BroadcastTable::new("t").with_history(Duration::ZERO);
        let (mut slow, mut fast) = (table.reader(), table.reader());
        for t in [100, 500, 900] {
            table.insert(key(), t, t);
        }
        fast.settled(2_000);
        slow.settled(600);
        table.insert(key(), 1_200, 1_200);
        // The slow reader still looks up after 600: the version valid then (500) stays.
        assert_eq!(table.versions(), 3);
        assert_eq!(table.get(&key(), 650), Ok(Some(500)));
        assert_eq!(table.get(&key(), 300), Err(HistoryGone { oldest_kept: 500 }));
        drop(slow);
        table.insert(key(), 1_300, 1_300);
        assert_eq!(table.versions(), 1, "only the fast reader holds: the version valid at 2 000");
        assert_eq!(table.get(&key(), 2_500), Ok(Some(1_300)));
    }

    #[test]
    fn history_keeps_versions_below_the_slowest_reader() {
        let table = BroadcastTable::new("t").with_history(Duration::from_millis(500));
        let mut reader = table.reader();
        reader.settled(1_000);
        for t in [100, 400, 700, 1_100] {
            table.insert(key(), t, t);
        }
        // Horizon 1 000 - 500 = 500: the version valid at 500 (400) and later ones stay.
        assert_eq!(table.get(&key(), 450), Ok(Some(400)));
        assert_eq!(table.get(&key(), 150), Err(HistoryGone { oldest_kept: 400 }));
        assert_eq!(table.versions(), 3);
    }

    #[test]
    fn a_late_version_below_dropped_history_is_not_kept_and_lookups_there_say_gone() {
        let table = BroadcastTable::new("t").with_history(Duration::ZERO);
        let mut reader = table.reader();
        reader.settled(600);
        for t in [100, 350, 500] {
            table.insert(key(), t, t);
        }
        assert_eq!(table.versions(), 1, "only the version valid at 600");
        drop(reader); // a reader taken over from elsewhere would not report yet either
        table.insert(key(), 300, 300);
        assert_eq!(table.late_versions(), 1);
        assert_eq!(table.get(&key(), 400), Err(HistoryGone { oldest_kept: 500 }), "350 was dropped, not 300");
        assert_eq!(table.get(&key(), 550), Ok(Some(500)));
    }

    #[test]
    fn readers_that_never_reported_do_not_hold_history() {
        let table = BroadcastTable::new("t").with_history(Duration::ZERO);
        let (_idle, mut busy) = (table.reader(), table.reader());
        busy.settled(1_000);
        for t in [100, 500, 1_200] {
            table.insert(key(), t, t);
        }
        assert_eq!(table.versions(), 2, "the version valid at 1 000 and the later one");
    }

    #[test]
    fn a_version_at_the_same_time_replaces_the_one_there() {
        let table = BroadcastTable::new("t");
        table.insert(key(), 100, "a");
        table.insert(key(), 100, "b");
        assert_eq!(table.versions(), 1);
        assert_eq!(table.get(&key(), 100), Ok(Some("b")));
        assert_eq!(table.with_latest(&key(), |v| v.copied()), Some("b"));
    }
}
