//! What the poll thread and the rebalance callbacks share: the queue of events on their way to
//! the job, the read position of every assigned partition, and the source's clock.
//!
//! **One queue, librdkafka's order.** Messages go into the batch being built; a rebalance
//! callback (it runs inside `poll`, on the poll thread) first cuts that batch, then queues its
//! own event. Batches and partition events therefore reach the job exactly in the order
//! librdkafka produced them: no record of a partition after its revocation, none before its
//! assignment.
//!
//! **The source's clock** runs only while the poll thread is able to read. It stops while the
//! thread waits for the job (a full channel with a full next batch) and while a rebalance callback
//! waits (state downloads, the job releasing revoked partitions). Idleness is measured on it, so
//! a stalled job never makes partitions with a backlog idle.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferroflow_core::source::{PartitionLifecycle, SourceBatch, SourceEvent, SourceProgress};
use ferroflow_core::time::Clock as _;
use ferroflow_core::{PartitionId, Record, SourcePosition};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::Offset;
use tokio::sync::mpsc;

use crate::config::{DataLossPolicy, StartOffset};
use crate::error::KafkaError;
use crate::headers::HeaderStash;
use crate::rebalance::SourceContext;
use crate::stats::SourceStats;
use crate::topics::Topics;

pub(crate) type Consumer_ = BaseConsumer<SourceContext>;

/// The channel to the job.
pub(crate) type JobTx = mpsc::Sender<Result<SourceEvent<Bytes>, KafkaError>>;

/// How long one wait for room in the job's channel lasts before the thread looks again.
const SEND_RETRY: Duration = Duration::from_millis(5);

/// Locks `m`, going on with the data if a panic poisoned it: every update below leaves the data
/// consistent between statements, and stopping the source would lose more.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A batch being assembled: payloads packed into one buffer, split into slices at the end.
#[derive(Default)]
pub(crate) struct BatchBuilder {
    buf: BytesMut,
    /// (partition, offset, timestamp, payload length)
    meta: Vec<(PartitionId, u64, i64, usize)>,
}

impl BatchBuilder {
    pub(crate) fn push(&mut self, partition: PartitionId, offset: u64, ts: i64, payload: &[u8]) {
        self.buf.extend_from_slice(payload);
        self.meta.push((partition, offset, ts, payload.len()));
    }

    pub(crate) fn len(&self) -> usize {
        self.meta.len()
    }

    /// The batch, the next offset of each partition in it, and its payload bytes.
    fn finish(&mut self) -> (SourceBatch<Bytes>, BTreeMap<PartitionId, u64>, u64) {
        let mut all: Bytes = std::mem::take(&mut self.buf).freeze();
        let bytes = all.len() as u64;
        let mut next = BTreeMap::new();
        let mut records = Vec::with_capacity(self.meta.len());
        // The payload is the original: dead letters of later steps take it from here (shared).
        let mut originals = Vec::with_capacity(self.meta.len());
        for (p, o, ts, len) in self.meta.drain(..) {
            let payload = all.split_to(len);
            let e = next.entry(p).or_insert(0);
            *e = (*e).max(o.saturating_add(1));
            let position = SourcePosition::new(p, o);
            originals.push((position, payload.clone()));
            records.push(Record::new(payload, ts).with_position(position));
        }
        (SourceBatch::of(records).with_originals(originals), next, bytes)
    }
}

/// An event on its way to the job, with the resume positions it advances once delivered.
pub(crate) struct Outgoing {
    event: SourceEvent<Bytes>,
    next: BTreeMap<PartitionId, u64>,
}

/// The batch being built and the events before it.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) builder: BatchBuilder,
    events: VecDeque<Outgoing>,
}

/// Where an assigned partition is.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    /// The offset of the next message expected from the broker, once known.
    next: Option<u64>,
    /// Resumed at this checkpointed offset: the first message must be there.
    check_first: Option<u64>,
    /// Started at the log start (no checkpoint, `start_offset = earliest`): until the first
    /// message, the whole log is still to read.
    from_start: bool,
}

/// A clock that only runs while the source is reading.
#[derive(Debug)]
struct SourceClock {
    base_ms: i64,
    started: Instant,
    paused: Duration,
    paused_since: Option<Instant>,
}

impl SourceClock {
    fn new() -> Self {
        Self {
            base_ms: ferroflow_core::time::SystemClock.now_ms(),
            started: Instant::now(),
            paused: Duration::ZERO,
            paused_since: None,
        }
    }

    fn now_ms(&self) -> i64 {
        let now = Instant::now();
        let stopped = self.paused + self.paused_since.map_or(Duration::ZERO, |s| now.duration_since(s));
        let running = now.duration_since(self.started).saturating_sub(stopped);
        self.base_ms.saturating_add(i64::try_from(running.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The state the poll thread and the rebalance callbacks share.
pub(crate) struct Shared {
    pub(crate) topics: Topics,
    pub(crate) start: StartOffset,
    pub(crate) on_data_loss: DataLossPolicy,
    /// librdkafka sends statistics (`statistics_interval_ms` > 0): partitions' log ranges come.
    pub(crate) statistics: bool,
    /// Next offset to deliver, per partition: from the checkpoint at first, then advanced as
    /// batches are handed over, so a partition assigned again resumes where the job is.
    pub(crate) resume: Mutex<BTreeMap<PartitionId, u64>>,
    pub(crate) stats: SourceStats,
    /// Headers of messages that have any, for the dead-letter topic.
    pub(crate) headers: HeaderStash,
    /// The job's hook deciding where newly assigned partitions resume (partition hand-over).
    pub(crate) lifecycle: Mutex<Option<Arc<dyn PartitionLifecycle>>>,
    pub(crate) stop: Arc<AtomicBool>,
    /// The channel to the job, once reading started.
    pub(crate) tx: OnceLock<JobTx>,
    queue: Mutex<Queue>,
    reading: Mutex<BTreeMap<PartitionId, Reading>>,
    clock: Mutex<SourceClock>,
    /// A failure found inside a callback or while appending, sent by the poll loop.
    failure: Mutex<Option<KafkaError>>,
    /// `failure` is set (read for every message, without the lock).
    failing: AtomicBool,
}

impl Shared {
    pub(crate) fn new(
        topics: Topics,
        start: StartOffset,
        on_data_loss: DataLossPolicy,
        headers: HeaderStash,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self {
            topics,
            start,
            on_data_loss,
            statistics: true,
            resume: Mutex::new(BTreeMap::new()),
            stats: SourceStats::default(),
            headers,
            lifecycle: Mutex::new(None),
            stop,
            tx: OnceLock::new(),
            queue: Mutex::new(Queue::default()),
            reading: Mutex::new(BTreeMap::new()),
            clock: Mutex::new(SourceClock::new()),
            failure: Mutex::new(None),
            failing: AtomicBool::new(false),
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Stops the source's clock until [`resume_clock`](Self::resume_clock).
    pub(crate) fn pause_clock(&self) {
        let mut c = lock(&self.clock);
        if c.paused_since.is_none() {
            c.paused_since = Some(Instant::now());
        }
    }

    pub(crate) fn resume_clock(&self) {
        let mut c = lock(&self.clock);
        if let Some(since) = c.paused_since.take() {
            c.paused += since.elapsed();
        }
    }

    /// Runs `f` with the clock stopped (a wait that is not reading).
    pub(crate) fn paused<R>(&self, f: impl FnOnce() -> R) -> R {
        self.pause_clock();
        let r = f();
        self.resume_clock();
        r
    }

    pub(crate) fn set_failure(&self, e: KafkaError) {
        lock(&self.failure).get_or_insert(e);
        self.failing.store(true, Ordering::Relaxed);
    }

    /// The failure, once: the source stops after sending it (the flag stays set).
    pub(crate) fn take_failure(&self) -> Option<KafkaError> {
        lock(&self.failure).take()
    }

    pub(crate) fn failed(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Where each of `partitions` starts: the job's hand-over decides first (it fetches the
    /// partitions' state and blocks meanwhile, with the clock stopped), then this instance's own
    /// resume position, then `start_offset`. Records the partitions as assigned.
    ///
    /// With a hand-over, a partition it leaves out has no state anywhere: it starts from
    /// `start_offset`, never from where this instance last delivered it, as that position
    /// belongs to state that is gone (dropped here once another instance had it).
    pub(crate) fn start_offsets(&self, partitions: &[PartitionId]) -> Vec<(PartitionId, Offset)> {
        let lifecycle = lock(&self.lifecycle).clone();
        let decided = lifecycle.map(|l| self.paused(|| l.assigning(partitions)));
        let mut resume = lock(&self.resume);
        if let Some(decided) = decided {
            for p in partitions.iter().filter(|p| !decided.contains_key(p)) {
                if let Some(stale) = resume.remove(p) {
                    tracing::warn!(
                        topics = %self.topics,
                        partition = p,
                        stale,
                        start = ?self.start,
                        "no checkpoint holds the partition's state any more: it starts over from the start offset"
                    );
                }
            }
            resume.extend(decided);
        }
        let mut reading = lock(&self.reading);
        partitions
            .iter()
            .map(|p| {
                let (offset, at) = match resume.get(p) {
                    Some(o) => (Offset::Offset(i64::try_from(*o).unwrap_or(i64::MAX)), Some(*o)),
                    None => match self.start {
                        StartOffset::Earliest => (Offset::Beginning, None),
                        StartOffset::Latest => (Offset::End, None),
                    },
                };
                let from_start = at.is_none() && self.start == StartOffset::Earliest;
                reading.insert(*p, Reading { next: at, check_first: at, from_start });
                (*p, offset)
            })
            .collect()
    }

    /// Forgets revoked partitions: their messages still in librdkafka's queues are dropped.
    pub(crate) fn forget_partitions(&self, partitions: &[PartitionId]) {
        let mut reading = lock(&self.reading);
        for p in partitions {
            reading.remove(p);
        }
    }

    /// Adds a message to the batch being built. Messages of partitions not assigned (left in a
    /// queue across a revocation) are dropped: they belong to another owner now.
    pub(crate) fn append(&self, consumer: &Consumer_, m: &rdkafka::message::BorrowedMessage<'_>) {
        use rdkafka::message::Message as _;
        let (Some(p), Ok(o)) = (self.topics.id(m.topic(), m.partition()), u64::try_from(m.offset())) else {
            return;
        };
        if self.failed() {
            return; // the source stops; nothing read from here on reaches the job
        }
        let (first, gap_from) = {
            let mut reading = lock(&self.reading);
            let Some(r) = reading.get_mut(&p) else {
                self.stats.stray();
                return;
            };
            let gap_from = r.next.filter(|n| o > *n);
            r.next = Some(o.saturating_add(1));
            (r.check_first.take(), gap_from)
        };
        // The first message after a resume must be at the resume offset; a later gap is checked
        // against the log start librdkafka last reported (compaction and transaction markers make
        // gaps too; only a log start past the gap means deleted records).
        let jumped = match (first, gap_from) {
            (Some(expected), _) if expected != o => Some(expected),
            (None, Some(from))
                if self
                    .stats
                    .log_start(p)
                    .is_some_and(|start| start > i64::try_from(from).unwrap_or(i64::MAX)) =>
            {
                Some(from)
            }
            _ => None,
        };
        if let Some(expected) = jumped
            && !self.offset_jump(consumer, p, expected, o)
        {
            return;
        }
        let ts = m.timestamp().to_millis().unwrap_or(0);
        lock(&self.queue).builder.push(p, o, ts, m.payload().unwrap_or(&[]));
        if let Some(hs) = m.headers() {
            use rdkafka::message::Headers as _;
            let pairs: Vec<crate::headers::HeaderPair> =
                hs.iter().map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice))).collect();
            if !pairs.is_empty() {
                self.headers.put(SourcePosition::new(p, o), pairs);
            }
        }
    }

    /// The first message of partition `p` after it resumed at `expected` is at `delivered`:
    /// finds out from the broker's log start whether records were lost, counts and logs them,
    /// and (by default) fails the source. False when the message must not be delivered.
    #[cold]
    fn offset_jump(&self, consumer: &Consumer_, p: PartitionId, expected: u64, delivered: u64) -> bool {
        let (topic, partition) = self.topics.of(p).unwrap_or((self.topics.first(), -1));
        let start = (0..3).find_map(|attempt| {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .ok()
                .and_then(|(low, _)| u64::try_from(low).ok())
        });
        let (lost, detail) = match start {
            // Offsets below the log start were deleted (retention, DeleteRecords).
            Some(low) if delivered > expected && low > expected => {
                let lost = low.min(delivered) - expected;
                (lost, format!("the log now starts at {low}: {lost} record(s) were deleted by retention"))
            }
            // Compaction or transaction markers: the offsets in between hold no records. Counted
            // and logged, not failed: on a topic with neither, a gap here is worth a look.
            Some(low) if delivered > expected => {
                self.stats.gap(delivered - expected);
                tracing::info!(
                    topic,
                    partition,
                    expected,
                    delivered,
                    log_start = low,
                    "partition resumed past its checkpointed offset while the log still holds it (transaction markers or compaction)"
                );
                return true;
            }
            Some(low) => (0, format!("the log starts at {low}; the topic was recreated or truncated")),
            None => {
                (delivered.saturating_sub(expected), "the broker did not say where the log starts".to_owned())
            }
        };
        tracing::error!(topic, partition, expected, delivered, lost, %detail, "partition did not resume at its checkpointed offset");
        self.stats.lost(p, lost);
        match self.on_data_loss {
            DataLossPolicy::Continue => true,
            DataLossPolicy::Fail => {
                self.set_failure(KafkaError::DataLoss {
                    topic: topic.to_owned(),
                    partition: u32::try_from(partition).unwrap_or(p),
                    expected,
                    delivered,
                    detail,
                });
                false
            }
        }
    }

    /// The source's clock and the partitions it has not caught up with: their log end, as
    /// librdkafka's statistics last reported it (every `statistics_interval_ms`), is past the next
    /// offset to read (or, for a partition read from its start that delivered nothing yet, past
    /// its log start). A partition that delivered nothing and that the statistics do not cover
    /// yet counts as behind: nothing says it is caught up, and a slow first fetch must not make
    /// it idle (its first records would then be late behind the others).
    pub(crate) fn progress(&self) -> SourceProgress {
        let time_ms = lock(&self.clock).now_ms();
        let range = self.stats.log_range();
        let behind = lock(&self.reading)
            .iter()
            .filter_map(|(p, r)| {
                let Some(log) = range.get(p) else {
                    let nothing_yet = r.next.is_none() || r.check_first.is_some();
                    return (self.statistics && nothing_yet).then_some(*p);
                };
                let next = match r.next {
                    Some(n) => i64::try_from(n).ok()?.max(log.app),
                    None if r.from_start => log.start,
                    None => return None,
                };
                // One offset of slack: a transaction's commit marker can end a quiet partition.
                (log.end > next.saturating_add(1)).then_some(*p)
            })
            .collect();
        SourceProgress { time_ms, behind }
    }

    /// Queues `event` after whatever was read before it (the batch being built is cut first).
    pub(crate) fn enqueue(&self, event: SourceEvent<Bytes>) {
        let progress = self.progress();
        let mut q = lock(&self.queue);
        cut(&mut q, progress, &self.stats);
        q.events.push_back(Outgoing { event, next: BTreeMap::new() });
    }

    /// Turns the batch being built into a queued event.
    pub(crate) fn cut_batch(&self) {
        if lock(&self.queue).builder.len() == 0 {
            return;
        }
        let progress = self.progress();
        cut(&mut lock(&self.queue), progress, &self.stats);
    }

    /// Records waiting in the batch being built.
    pub(crate) fn building(&self) -> usize {
        lock(&self.queue).builder.len()
    }

    pub(crate) fn queued(&self) -> bool {
        !lock(&self.queue).events.is_empty()
    }

    /// Sends the source's clock to the job when it has nothing else to say (skipped if the
    /// channel is full: the job is busy and will hear it with the next batch).
    pub(crate) fn heartbeat(&self) {
        let Some(tx) = self.tx.get() else { return };
        if self.queued() || self.building() > 0 {
            return;
        }
        let _ = tx.try_send(Ok(SourceEvent::Progress(self.progress())));
    }

    /// Hands the queued events to the job, in order. While the channel is full it calls `wait`
    /// (which may poll for more messages: a callback running inside that poll queues behind the
    /// event waiting here). False when the job is gone or the source stops.
    pub(crate) fn send_queued(&self, mut wait: impl FnMut()) -> bool {
        let Some(tx) = self.tx.get() else { return false };
        let blocked = Instant::now();
        let mut waited = false;
        let sent = loop {
            let Some(out) = lock(&self.queue).events.pop_front() else { break true };
            match tx.try_send(Ok(out.event)) {
                Ok(()) => self.delivered(&out.next),
                Err(mpsc::error::TrySendError::Closed(_)) => break false,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    let Ok(event) = back else { break false };
                    lock(&self.queue).events.push_front(Outgoing { event, next: out.next });
                    if self.stopping() {
                        break false;
                    }
                    waited = true;
                    wait();
                }
            }
        };
        if waited {
            self.stats.blocked(blocked.elapsed().as_nanos() as u64);
        }
        sent
    }

    /// Waits, with the clock stopped, for room in the job's channel.
    pub(crate) fn idle_wait(&self) {
        self.paused(|| std::thread::sleep(SEND_RETRY));
    }

    /// A batch reached the job: its partitions resume after it if they come back here.
    fn delivered(&self, next: &BTreeMap<PartitionId, u64>) {
        if next.is_empty() {
            return;
        }
        let mut r = lock(&self.resume);
        for (p, o) in next {
            let e = r.entry(*p).or_insert(0);
            *e = (*e).max(*o);
        }
    }
}

/// Cuts the batch being built into a queued event stamped with `progress`.
fn cut(q: &mut Queue, progress: SourceProgress, stats: &SourceStats) {
    if q.builder.len() == 0 {
        return;
    }
    let (batch, next, bytes) = q.builder.finish();
    stats.consumed(batch.records.len() as u64, bytes);
    q.events.push_back(Outgoing { event: SourceEvent::Batch(batch.with_progress(progress)), next });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A hand-over that knows only `known`.
    struct Knows(BTreeMap<PartitionId, u64>);

    impl PartitionLifecycle for Knows {
        fn assigning(&self, partitions: &[PartitionId]) -> BTreeMap<PartitionId, u64> {
            partitions.iter().filter_map(|p| self.0.get(p).map(|o| (*p, *o))).collect()
        }
    }

    fn shared(lifecycle: Option<Knows>) -> Shared {
        let s = Shared::new(
            crate::topics::Topics::new("t", None),
            StartOffset::Earliest,
            DataLossPolicy::Fail,
            HeaderStash::default(),
            Arc::new(AtomicBool::new(false)),
        );
        *lock(&s.lifecycle) = lifecycle.map(|l| Arc::new(l) as Arc<dyn PartitionLifecycle>);
        s
    }

    #[test]
    fn a_partition_the_hand_over_leaves_out_starts_over_not_where_it_was_last_delivered() {
        let s = shared(Some(Knows(BTreeMap::from([(1, 70)]))));
        // Both were delivered here before; partition 0's state has since gone from every checkpoint.
        s.delivered(&BTreeMap::from([(0, 40), (1, 50)]));
        let starts = s.start_offsets(&[0, 1]);
        assert_eq!(starts, vec![(0, Offset::Beginning), (1, Offset::Offset(70))]);
        assert_eq!(lock(&s.reading)[&0].check_first, None, "no resume check for a fresh start");
    }

    #[test]
    fn a_partition_without_statistics_that_delivered_nothing_is_behind() {
        let s = shared(None);
        s.start_offsets(&[0, 1]);
        assert_eq!(s.progress().behind, vec![0, 1], "no statistics yet: nothing says they are caught up");
        s.delivered(&BTreeMap::from([(1, 5)]));
        lock(&s.reading).get_mut(&1).unwrap().next = Some(5);
        assert_eq!(s.progress().behind, vec![0], "partition 1 delivered");
        let mut off = shared(None);
        off.statistics = false;
        off.start_offsets(&[0]);
        assert!(off.progress().behind.is_empty(), "without statistics nothing is ever known behind");
    }

    #[test]
    fn without_a_hand_over_a_partition_resumes_where_it_was_last_delivered() {
        let s = shared(None);
        s.delivered(&BTreeMap::from([(0, 40)]));
        assert_eq!(s.start_offsets(&[0, 2]), vec![(0, Offset::Offset(40)), (2, Offset::Beginning)]);
    }
}
