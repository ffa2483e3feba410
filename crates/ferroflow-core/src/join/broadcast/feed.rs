//! Filling a broadcast table from its input, and the main source that waits for it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::table::BroadcastTable;
use crate::error::{RetryHint, SourceError};
use crate::record::{Key, Timestamp};
use crate::source::{CheckpointListener, PartitionLifecycle, Source, SourceEvent};
use crate::time::{Watermark, WatermarkCeiling, WatermarkStrategy, WatermarkTracker};

/// How often the table's loader re-checks idleness while its input is silent.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// How often a main input that has ended checks whether the table has caught up.
const END_CHECK: Duration = Duration::from_millis(20);

type Loader = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A [`BroadcastTable`]'s input, ready to start with the job: see
/// [`BroadcastTable::loaded_from`], then [`gating`](Self::gating).
pub struct TableFeed<V> {
    table: BroadcastTable<V>,
    loader: Loader,
}

impl<V> std::fmt::Debug for TableFeed<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableFeed").field("table", &self.table.shared.name).finish_non_exhaustive()
    }
}

impl<V: Send + Sync + 'static> BroadcastTable<V> {
    /// Fills the table from `source` once the job starts: each record is a version of the key
    /// `key_of` gives, valid from `time_of` on. The input's watermark, by `strategy` (per
    /// partition, with idleness), caps the watermark of the job the feed
    /// [gates](TableFeed::gating); while every partition of the input is idle or finished, it caps
    /// nothing.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use ferroflow_core::join::BroadcastTable;
    /// use ferroflow_core::source::MemorySource;
    /// use ferroflow_core::time::WatermarkStrategy;
    /// use ferroflow_core::Key;
    /// let segments: BroadcastTable<(String, i64, String)> = BroadcastTable::new("segments");
    /// let feed = segments.loaded_from(
    ///     MemorySource::of([("u1".to_owned(), 100, "pro".to_owned())]),
    ///     |u| Key::from(u.0.as_str()),
    ///     |u| u.1,
    ///     WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(1)).with_idleness(Duration::from_secs(10)),
    /// );
    /// let events = feed.gating(MemorySource::of(["click"]));
    /// # let _ = events;
    /// ```
    pub fn loaded_from<S>(
        &self,
        source: S,
        key_of: impl Fn(&V) -> Key + Send + 'static,
        time_of: impl Fn(&V) -> Timestamp + Send + 'static,
        strategy: WatermarkStrategy,
    ) -> TableFeed<V>
    where
        S: Source<V>,
    {
        let table = self.clone();
        let loader = Box::pin(load(table, source, key_of, time_of, strategy));
        TableFeed { table: self.clone(), loader }
    }
}

impl<V: Send + Sync + 'static> TableFeed<V> {
    /// The job's source `main`, with the table loading beside it: the loader starts with the
    /// source's first read, the job's watermark waits for the table's, and the source's end waits
    /// until the table has caught up (its input ended, or every partition of it is idle), so
    /// that the final watermark finds every version in. The table's input failing fails the job,
    /// also while `main` waits for records.
    pub fn gating<T: Send + 'static, S: Source<T>>(self, main: S) -> TableGated<T, S, V> {
        let ceiling = WatermarkCeiling::either(main.watermark_ceiling(), Some(self.table.ceiling()));
        TableGated {
            inputs: main.inputs(),
            main: Main::Waiting(main),
            ceiling,
            table: self.table,
            loader: Some(self.loader),
            running: Vec::new(),
        }
    }
}

/// The job's source with a [`BroadcastTable`] loading beside it (see [`TableFeed::gating`]).
pub struct TableGated<T, S, V> {
    main: Main<T, S>,
    inputs: usize,
    ceiling: Option<WatermarkCeiling>,
    table: BroadcastTable<V>,
    loader: Option<Loader>,
    running: Vec<AbortOnDrop>,
}

/// The job's own source: before its first read, then on a task of its own (so that waiting for
/// it can be interrupted by the table's failure without losing what it was reading).
enum Main<T, S> {
    Waiting(S),
    Reading(mpsc::Receiver<Read<T>>),
    Ended,
}

impl<T, S, V> std::fmt::Debug for TableGated<T, S, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableGated").field("table", &self.table.shared.name).finish_non_exhaustive()
    }
}

impl<T: Send + 'static, S: Source<T>, V: Send + Sync + 'static> TableGated<T, S, V> {
    /// The main source's next event; `None` at its end.
    async fn next_of_main(&mut self) -> Result<Option<SourceEvent<T>>, SourceError> {
        if matches!(self.main, Main::Waiting(_))
            && let Main::Waiting(main) = std::mem::replace(&mut self.main, Main::Ended)
        {
            let (tx, rx) = mpsc::channel(1);
            self.running.push(AbortOnDrop(tokio::spawn(read(main, tx))));
            self.main = Main::Reading(rx);
        }
        let Main::Reading(rx) = &mut self.main else { return Ok(None) };
        let mut load = self.table.shared.load.subscribe();
        loop {
            if let Some(e) = self.table.failure() {
                return Err(e);
            }
            tokio::select! {
                event = rx.recv() => return match event {
                    Some(Ok(Some(event))) => Ok(Some(event)),
                    Some(Ok(None)) => Ok(None),
                    Some(Err(e)) => Err(e),
                    None => Err(SourceError::External {
                        message: "the reader of a source gated by a broadcast table stopped".into(),
                        retry: RetryHint::WithBackoff,
                    }),
                },
                changed = load.changed() => {
                    if changed.is_err() {
                        return Err(SourceError::External {
                            message: format!("broadcast table '{}' is gone", self.table.name()),
                            retry: RetryHint::NoRetry,
                        });
                    }
                }
            }
        }
    }
}

impl<T: Send + 'static, S: Source<T>, V: Send + Sync + 'static> Source<T> for TableGated<T, S, V> {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<T>>, SourceError> {
        if let Some(loader) = self.loader.take() {
            self.table.restart();
            self.running.push(AbortOnDrop(tokio::spawn(loader)));
        }
        if let Some(event) = self.next_of_main().await? {
            return Ok(Some(event));
        }
        // The final watermark must find every version in.
        loop {
            if let Some(e) = self.table.failure() {
                return Err(e);
            }
            if self.table.watermark() == Watermark::MAX {
                return Ok(None);
            }
            tokio::time::sleep(END_CHECK).await;
        }
    }

    fn inputs(&self) -> usize {
        self.inputs
    }

    fn require_co_partitioning(&mut self) {
        if let Main::Waiting(main) = &mut self.main {
            main.require_co_partitioning();
        }
    }

    fn assigns_inputs_together(&self) -> bool {
        match &self.main {
            Main::Waiting(main) => main.assigns_inputs_together(),
            _ => self.inputs <= 1,
        }
    }

    fn watermark_ceiling(&self) -> Option<WatermarkCeiling> {
        self.ceiling.clone()
    }

    /// Only the main source resumes: the table is read again from its start.
    fn seek(&mut self, offsets: &BTreeMap<crate::record::PartitionId, u64>) -> Result<(), SourceError> {
        match &mut self.main {
            Main::Waiting(main) => main.seek(offsets),
            _ => Err(started()),
        }
    }

    fn checkpoint_listener(&self) -> Option<Arc<dyn CheckpointListener>> {
        match &self.main {
            Main::Waiting(main) => main.checkpoint_listener(),
            _ => None,
        }
    }

    fn set_partition_lifecycle(&mut self, lifecycle: Arc<dyn PartitionLifecycle>) -> bool {
        match &mut self.main {
            Main::Waiting(main) => main.set_partition_lifecycle(lifecycle),
            _ => false,
        }
    }
}

/// Settings reach the main source only before its first read.
fn started() -> SourceError {
    SourceError::External {
        message: "a source gated by a broadcast table cannot seek once it has started reading".into(),
        retry: RetryHint::NoRetry,
    }
}

/// Stops a task when dropped (a stopped job's table loader and its reader).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the table's input into the table until it ends or fails, moving the table's watermark.
async fn load<V, S>(
    table: BroadcastTable<V>,
    source: S,
    key_of: impl Fn(&V) -> Key + Send + 'static,
    time_of: impl Fn(&V) -> Timestamp + Send + 'static,
    strategy: WatermarkStrategy,
) where
    V: Send + Sync + 'static,
    S: Source<V>,
{
    // A loader that stops other than through its input's end or failure (a panic in `key_of`
    // or `time_of`) fails the table: its readers must not wait for a watermark that never comes.
    let mut guard = LoadGuard(Some(table.clone()));
    // The source reads on a task of its own: waiting on a channel can be interrupted by the
    // idleness check, waiting on the source itself could lose what it was reading.
    let (tx, mut rx) = mpsc::channel(1);
    let _reader = AbortOnDrop(tokio::spawn(read(source, tx)));
    let mut tracker = WatermarkTracker::new(strategy);
    let mut check = tokio::time::interval(IDLE_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Idleness is measured on the source's clock once it reports one (it stands still while the
    // source cannot read), else on the table's clock.
    let mut source_clock: Option<Timestamp> = None;
    let started = table.shared.clock.now_ms();
    loop {
        let event = tokio::select! {
            event = rx.recv() => event,
            _ = check.tick() => {
                let now = table.shared.clock.now_ms();
                hold(&table, &mut tracker, source_clock.unwrap_or(now), now.saturating_sub(started));
                continue;
            }
        };
        match event {
            Some(Ok(Some(event))) => {
                let wall = table.shared.clock.now_ms();
                let now = source_clock.unwrap_or(wall);
                source_clock = apply(&table, &mut tracker, event, &key_of, &time_of, now).or(source_clock);
                hold(&table, &mut tracker, source_clock.unwrap_or(wall), wall.saturating_sub(started));
            }
            Some(Ok(None)) => {
                guard.0 = None;
                table.complete();
                return;
            }
            Some(Err(e)) => {
                guard.0 = None;
                tracing::error!(table = %table.name(), error = %e, "the input of a broadcast table failed");
                table.fail(e);
                return;
            }
            // The reader stopped without a word: the guard says so.
            None => return,
        }
    }
}

/// Fails the table when the loader stops before its input ended or failed.
struct LoadGuard<V: Send + Sync + 'static>(Option<BroadcastTable<V>>);

impl<V: Send + Sync + 'static> Drop for LoadGuard<V> {
    fn drop(&mut self) {
        if let Some(table) = self.0.take() {
            table.fail(SourceError::External {
                message: format!(
                    "the loader of broadcast table '{}' stopped before its input ended",
                    table.name()
                ),
                retry: RetryHint::WithBackoff,
            });
        }
    }
}

type Read<V> = Result<Option<SourceEvent<V>>, SourceError>;

async fn read<V: Send + 'static, S: Source<V>>(mut source: S, tx: mpsc::Sender<Read<V>>) {
    loop {
        let event = source.next_event().await;
        let last = !matches!(event, Ok(Some(_)));
        if tx.send(event).await.is_err() || last {
            return;
        }
    }
}

/// Puts one event of the table's input into the table; returns the source's clock, if the event
/// carried it.
fn apply<V: Send + Sync + 'static>(
    table: &BroadcastTable<V>,
    tracker: &mut WatermarkTracker,
    event: SourceEvent<V>,
    key_of: &impl Fn(&V) -> Key,
    time_of: &impl Fn(&V) -> Timestamp,
    now: Timestamp,
) -> Option<Timestamp> {
    let mut clock = None;
    match event {
        SourceEvent::Batch(batch) => {
            clock = batch.progress.as_ref().map(|p| p.time_ms);
            let now = clock.unwrap_or(now);
            for dl in &batch.dead_letters {
                table.shared.unreadable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    table = %table.name(),
                    partition = dl.position.partition,
                    offset = dl.position.offset,
                    reason = dl.reason.code(),
                    detail = %dl.detail,
                    "broadcast table input the table could not read"
                );
            }
            // Late: behind a time a reader already joined, and behind what the table held back
            // (versions read again after a restart are behind the readers, not late).
            let furthest = table.shared.furthest_reader().min(table.watermark().0);
            let mut late = 0u64;
            let versions: Vec<_> = batch
                .records
                .into_iter()
                .map(|r| {
                    let at = time_of(&r.payload);
                    tracker.observe(r.position.partition, at, now);
                    late += u64::from(at <= furthest);
                    (key_of(&r.payload), at, r.payload)
                })
                .collect();
            // Versions go in before the watermark passes them.
            table.insert_all(versions);
            if late > 0 {
                table.shared.late.fetch_add(late, Ordering::Relaxed);
                tracing::debug!(table = %table.name(), late, "versions behind a reader's watermark");
            }
        }
        SourceEvent::PartitionsAssigned(ps) => {
            for p in ps {
                tracker.register(p, now);
            }
        }
        SourceEvent::PartitionsRevoked(ps) => {
            for p in ps {
                tracker.remove(p);
            }
        }
        SourceEvent::PartitionFinished(p) => tracker.finish(p),
        SourceEvent::Progress(progress) => {
            for p in &progress.behind {
                tracker.touch(*p, progress.time_ms);
            }
            clock = Some(progress.time_ms);
        }
    }
    clock
}

/// Sets how far the table holds its readers: its input's watermark, or nothing while every
/// partition of the input is idle or finished (nothing is on its way), or while the input has
/// announced no partition for an idle timeout since the start (a topic that is missing or has
/// none: a table that stays empty must not hold the job for good).
fn hold<V: Send + Sync + 'static>(
    table: &BroadcastTable<V>,
    tracker: &mut WatermarkTracker,
    now: Timestamp,
    running_ms: i64,
) {
    let current = tracker.advance(now).unwrap_or(tracker.current());
    let marks = tracker.partition_watermarks();
    let idle = tracker.idle_partitions();
    let quiet = match marks.is_empty() {
        true => tracker.strategy().idle_timeout_ms().is_some_and(|t| running_ms >= t),
        false => marks.iter().all(|(p, w)| *w == Watermark::MAX || idle.contains(p)),
    };
    if quiet && marks.is_empty() && table.watermark() != Watermark::MAX {
        tracing::warn!(table = %table.name(), "a broadcast table's input has no partitions: it holds nothing back");
    }
    table.hold_at(if quiet { Watermark::MAX } else { current });
}
