//! Two sources read as one: the inputs of a join, or two topics of one type.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use either::Either;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{CheckpointListener, PartitionLifecycle, Source, SourceBatch, SourceEvent, SourceProgress};
use crate::error::{RetryHint, SourceError};
use crate::record::{PartitionId, Record, SourcePosition};

/// Partition `p` of a [`UnionSource`]'s second input is partition `RIGHT_PARTITIONS + p` of the
/// union (in positions, offsets, checkpoints and dead letters); the first input's keep their ids.
/// Either input's partitions must lie below it.
pub const RIGHT_PARTITIONS: PartitionId = 1 << 24;

/// What one input's reader sends: its index and its next event, or its end.
type Delivery<A, B> = (usize, Result<Option<SourceEvent<Either<A, B>>>, SourceError>);

/// Reads two sources as one, records of the first as [`Either::Left`], of the second as
/// [`Either::Right`], in the order they come (each source on a task of its own, so a slow or
/// silent one never holds the other back). When both have something ready, they take turns: two
/// inputs of the same pace stay level, where a random pick would let one drift ahead of the
/// other, and a join's state and results wait on the one behind.
///
/// Each input keeps its partitions: the second's are renumbered from [`RIGHT_PARTITIONS`], so
/// every partition of both has its own watermark, its own idleness and its own offset in a
/// checkpoint, and a restore resumes each input where it was. A step after the union sees the
/// minimum watermark over the partitions of both inputs. The union ends once both inputs have.
///
/// At the start, nothing goes out until both inputs have announced their partitions (or
/// delivered their first records, whose partitions the union then announces, or ended): records
/// of one input must not move the watermark before the other input's partitions hold it back.
/// Then the held partition events go out in arrival order, then the held records. Meanwhile an
/// input that has started is not read (it waits, as when the job is behind), and the clocks the
/// inputs report are not passed on.
///
/// # Examples
/// ```
/// use ferroflow_core::join::Either;
/// use ferroflow_core::source::{MemorySource, RIGHT_PARTITIONS, Source, SourceEvent, UnionSource};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut union = UnionSource::new(MemorySource::of(["click"]), MemorySource::of([7u32]));
/// let mut seen = Vec::new();
/// while let Some(event) = union.next_event().await.unwrap() {
///     if let SourceEvent::Batch(b) = event {
///         seen.extend(b.records.into_iter().map(|r| (r.payload, r.position.partition)));
///     }
/// }
/// seen.sort_by_key(|s| s.1);
/// assert_eq!(seen, [(Either::Left("click"), 0), (Either::Right(7), RIGHT_PARTITIONS)]);
/// # });
/// ```
pub struct UnionSource<A, B, SA, SB> {
    inputs: Option<(SA, SB)>,
    /// Each input's events, from its reader (one at a time: a reader waits while the job is
    /// behind, or while the union waits for the other input to start).
    receivers: Vec<mpsc::Receiver<Delivery<A, B>>>,
    readers: Vec<JoinHandle<()>>,
    /// The input has announced its partitions (or delivered records, or ended).
    started: [bool; 2],
    /// Partition events held until both inputs have started, in arrival order.
    held_signals: VecDeque<SourceEvent<Either<A, B>>>,
    /// First batches held until both inputs have started (they go out after every held
    /// partition event: an input's batch is the last thing of it the union takes at the start).
    held_batches: VecDeque<SourceEvent<Either<A, B>>>,
    ended: [bool; 2],
    /// Each running input's clock, once it reported one (see [`SourceProgress`]).
    clocks: [Option<i64>; 2],
    /// The clock the union last reported: it never goes back.
    reported_clock: Option<i64>,
    /// Check at the start that both inputs announced the same partition numbers (see
    /// [`Source::require_co_partitioning`]); `None` once checked or when not asked.
    co_partitioning: Option<CoPartitioning>,
    /// The input whose turn it is, when both have something ready.
    turn: usize,
}

/// The partitions each input announced at the start (its own numbers), for the co-partitioning
/// check. An input that announces none (files, memory: it only delivers records) is not checked.
#[derive(Debug, Default)]
struct CoPartitioning {
    announced: [Option<BTreeSet<PartitionId>>; 2],
}

impl CoPartitioning {
    fn note(&mut self, input: usize, union_partitions: &[PartitionId]) {
        if let Some(set) = self.announced.get_mut(input) {
            set.get_or_insert_with(BTreeSet::new)
                .extend(union_partitions.iter().map(|&p| input_partition(p).1));
        }
    }

    /// Fails when both inputs announced partitions and their numbers differ.
    fn check(&self) -> Result<(), SourceError> {
        let [Some(left), Some(right)] = &self.announced else { return Ok(()) };
        if left == right {
            return Ok(());
        }
        let only = |a: &BTreeSet<PartitionId>, b: &BTreeSet<PartitionId>| {
            a.difference(b).copied().collect::<Vec<_>>()
        };
        Err(SourceError::External {
            message: format!(
                "the two inputs of a job per partition are not co-partitioned: the first has partitions {left:?}, \
                 the second {right:?} (only in the first: {:?}, only in the second: {:?}). Partition p's task \
                 joins partition p of both inputs, so both topics need the same number of partitions and the \
                 same partitioner for the join key: repartition one of them (for Kafka, `kafka-topics.sh \
                 --alter --partitions N` on the smaller one, then re-key what it already holds, or write it \
                 again to a new topic with N partitions), or run the job with `Runner::job` or \
                 `Runner::parallel_job`, which key by the join key whatever the partitions",
                only(left, right),
                only(right, left)
            ),
            retry: RetryHint::NoRetry,
        })
    }
}

impl<A, B, SA, SB> std::fmt::Debug for UnionSource<A, B, SA, SB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnionSource")
            .field("ended", &self.ended)
            .field("clocks", &self.clocks)
            .finish_non_exhaustive()
    }
}

impl<A, B, SA, SB> Drop for UnionSource<A, B, SA, SB> {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

/// A reader stopped before its input ended (it failed outside the source, or was stopped).
fn stopped() -> SourceError {
    SourceError::External {
        message: "a union source's reader stopped before its input ended".into(),
        retry: RetryHint::WithBackoff,
    }
}

/// The union's id of `input`'s partition `p`.
fn union_partition(input: usize, p: PartitionId) -> Result<PartitionId, SourceError> {
    // Either input's partitions beyond the range would take another partition's id (a union
    // nested in a union has such partitions): refused, never merged.
    if p >= RIGHT_PARTITIONS {
        return Err(SourceError::External {
            message: format!(
                "partition {p} of a union's input {input} is beyond the {RIGHT_PARTITIONS} partitions a union can number \
                 (a union of unions is not supported)"
            ),
            retry: RetryHint::NoRetry,
        });
    }
    Ok(if input == 0 { p } else { RIGHT_PARTITIONS + p })
}

/// The task that runs source partition `p` in a job per partition: `p` itself, or for a second
/// input's partition the first input's partition of the same number (co-partitioning). Sources of
/// one input number their partitions below [`RIGHT_PARTITIONS`], so for them a task is its
/// partition. A task's partitions are checkpointed, handed over and released together.
#[inline]
pub(crate) fn task_of(p: PartitionId) -> PartitionId {
    p % RIGHT_PARTITIONS
}

/// The input and its own id of the union's partition `p`.
fn input_partition(p: PartitionId) -> (usize, PartitionId) {
    if p >= RIGHT_PARTITIONS { (1, p - RIGHT_PARTITIONS) } else { (0, p) }
}

fn renumber(input: usize, parts: Vec<PartitionId>) -> Result<Vec<PartitionId>, SourceError> {
    parts.into_iter().map(|p| union_partition(input, p)).collect()
}

fn renumber_position(input: usize, at: &mut SourcePosition) -> Result<(), SourceError> {
    at.partition = union_partition(input, at.partition)?;
    Ok(())
}

/// Splits the union's offsets into each input's.
fn split_offsets(offsets: &BTreeMap<PartitionId, u64>) -> [BTreeMap<PartitionId, u64>; 2] {
    let mut split = [BTreeMap::new(), BTreeMap::new()];
    for (&p, &o) in offsets {
        let (input, own) = input_partition(p);
        split[input].insert(own, o);
    }
    split
}

/// Turns `input`'s event into the union's: payloads tagged, partitions renumbered.
fn tag<T, A, B>(
    input: usize,
    event: SourceEvent<T>,
    wrap: fn(T) -> Either<A, B>,
) -> Result<SourceEvent<Either<A, B>>, SourceError> {
    Ok(match event {
        SourceEvent::Batch(b) => {
            let SourceBatch { records, mut dead_letters, mut originals, mut progress } = b;
            let records = records
                .into_iter()
                .map(|r| {
                    let Record { key, event_time, mut position, payload } = r;
                    renumber_position(input, &mut position)?;
                    Ok(Record { key, event_time, position, payload: wrap(payload) })
                })
                .collect::<Result<Vec<_>, SourceError>>()?;
            for d in &mut dead_letters {
                renumber_position(input, &mut d.position)?;
            }
            for (at, _) in &mut originals {
                renumber_position(input, at)?;
            }
            if let Some(p) = &mut progress {
                p.behind = renumber(input, std::mem::take(&mut p.behind))?;
            }
            SourceEvent::Batch(SourceBatch { records, dead_letters, originals, progress })
        }
        SourceEvent::PartitionsAssigned(p) => SourceEvent::PartitionsAssigned(renumber(input, p)?),
        SourceEvent::PartitionsRevoked(p) => SourceEvent::PartitionsRevoked(renumber(input, p)?),
        SourceEvent::PartitionFinished(p) => SourceEvent::PartitionFinished(union_partition(input, p)?),
        SourceEvent::Progress(mut p) => {
            p.behind = renumber(input, std::mem::take(&mut p.behind))?;
            SourceEvent::Progress(p)
        }
    })
}

/// Reads `source` until it ends or fails, or the union stops listening.
async fn read<T, A, B, S: Source<T>>(
    input: usize,
    mut source: S,
    wrap: fn(T) -> Either<A, B>,
    to: mpsc::Sender<Delivery<A, B>>,
) {
    loop {
        let next = match source.next_event().await {
            Ok(Some(event)) => tag(input, event, wrap).map(Some),
            other => other.map(|_| None),
        };
        let last = !matches!(next, Ok(Some(_)));
        if to.send((input, next)).await.is_err() || last {
            return;
        }
    }
}

impl<A, B, SA, SB> UnionSource<A, B, SA, SB>
where
    A: Send + 'static,
    B: Send + 'static,
    SA: Source<A>,
    SB: Source<B>,
{
    /// Reads `left` and `right` as one source.
    pub fn new(left: SA, right: SB) -> Self {
        Self {
            inputs: Some((left, right)),
            receivers: Vec::new(),
            readers: Vec::new(),
            started: [false; 2],
            held_signals: VecDeque::new(),
            held_batches: VecDeque::new(),
            ended: [false; 2],
            clocks: [None; 2],
            reported_clock: None,
            co_partitioning: None,
            turn: 0,
        }
    }

    /// The next delivery of an input still running; while `starting`, only of the inputs that
    /// have not started (the others wait in their channels).
    async fn receive(&mut self, starting: bool) -> Result<Delivery<A, B>, SourceError> {
        let listen = |i: usize| !(self.ended[i] || (starting && self.started[i]));
        let (l, r) = (listen(0), listen(1));
        let [left, right] = self.receivers.as_mut_slice() else {
            return Err(stopped());
        };
        let next = if self.turn == 0 {
            tokio::select! {
                biased;
                d = left.recv(), if l => d,
                d = right.recv(), if r => d,
                else => None,
            }
        } else {
            tokio::select! {
                biased;
                d = right.recv(), if r => d,
                d = left.recv(), if l => d,
                else => None,
            }
        };
        let next = next.ok_or_else(stopped)?;
        self.turn = 1 - next.0.min(1);
        Ok(next)
    }

    fn not_started(&mut self) -> Result<&mut (SA, SB), SourceError> {
        self.inputs.as_mut().ok_or_else(|| SourceError::External {
            message: "a union source cannot change its inputs once it has started reading".into(),
            retry: RetryHint::NoRetry,
        })
    }

    /// Notes `input`'s clock and reports the union's: the earliest of its running inputs' (each
    /// stands still while its input cannot read, and so must the union's), never going back.
    fn note_clock(&mut self, input: usize, progress: &mut SourceProgress) {
        self.clocks[input] = Some(progress.time_ms);
        let earliest = self.clocks.iter().flatten().copied().min().unwrap_or(progress.time_ms);
        let clock = self.reported_clock.map_or(earliest, |r| r.max(earliest));
        self.reported_clock = Some(clock);
        progress.time_ms = clock;
    }
}

impl<A, B, SA, SB> Source<Either<A, B>> for UnionSource<A, B, SA, SB>
where
    A: Send + 'static,
    B: Send + 'static,
    SA: Source<A>,
    SB: Source<B>,
{
    async fn next_event(&mut self) -> Result<Option<SourceEvent<Either<A, B>>>, SourceError> {
        if let Some((left, right)) = self.inputs.take() {
            let (left_tx, left_rx) = mpsc::channel(1);
            let (right_tx, right_rx) = mpsc::channel(1);
            self.readers.push(tokio::spawn(read(0, left, Either::Left, left_tx)));
            self.readers.push(tokio::spawn(read(1, right, Either::Right, right_tx)));
            self.receivers = vec![left_rx, right_rx];
        }
        loop {
            let starting = !self.started.iter().all(|s| *s);
            if !starting && let Some(check) = self.co_partitioning.take() {
                check.check()?;
            }
            if !starting
                && let Some(event) = self.held_signals.pop_front().or_else(|| self.held_batches.pop_front())
            {
                return Ok(Some(event));
            }
            if self.ended.iter().all(|e| *e) {
                return Ok(None);
            }
            let (input, delivery) = self.receive(starting).await?;
            let Some(mut event) = delivery? else {
                self.ended[input] = true;
                self.started[input] = true;
                // An input that ended no longer holds the union's clock.
                self.clocks[input] = None;
                continue;
            };
            if starting {
                // Held until both inputs have started; the clock too, so that no partition turns
                // idle while the gate holds its records back.
                match event {
                    SourceEvent::Progress(_) => {}
                    SourceEvent::PartitionsAssigned(ref ps) => {
                        self.started[input] = true;
                        if let Some(check) = &mut self.co_partitioning {
                            check.note(input, ps);
                        }
                        self.held_signals.push_back(event);
                    }
                    SourceEvent::Batch(mut b) => {
                        // Its partitions hold the watermark back before any record goes out.
                        self.started[input] = true;
                        let parts: BTreeSet<PartitionId> =
                            b.records.iter().map(|r| r.position.partition).collect();
                        self.held_signals
                            .push_back(SourceEvent::PartitionsAssigned(parts.into_iter().collect()));
                        b.progress = None;
                        self.held_batches.push_back(SourceEvent::Batch(b));
                    }
                    SourceEvent::PartitionsRevoked(_) | SourceEvent::PartitionFinished(_) => {
                        self.held_signals.push_back(event);
                    }
                }
                continue;
            }
            if let SourceEvent::Batch(SourceBatch { progress: Some(p), .. }) | SourceEvent::Progress(p) =
                &mut event
            {
                self.note_clock(input, p);
            }
            return Ok(Some(event));
        }
    }

    fn inputs(&self) -> usize {
        2
    }

    fn require_co_partitioning(&mut self) {
        self.co_partitioning = Some(CoPartitioning::default());
    }

    fn seek(&mut self, offsets: &BTreeMap<PartitionId, u64>) -> Result<(), SourceError> {
        let [left_offsets, right_offsets] = split_offsets(offsets);
        let (left, right) = self.not_started()?;
        // An input without offsets delivered nothing that a checkpoint holds: it starts afresh.
        if !left_offsets.is_empty() {
            left.seek(&left_offsets)?;
        }
        if !right_offsets.is_empty() {
            right.seek(&right_offsets)?;
        }
        Ok(())
    }

    fn watermark_ceiling(&self) -> Option<crate::time::WatermarkCeiling> {
        let (left, right) = self.inputs.as_ref()?;
        crate::time::WatermarkCeiling::either(left.watermark_ceiling(), right.watermark_ceiling())
    }

    fn checkpoint_listener(&self) -> Option<Arc<dyn CheckpointListener>> {
        let (left, right) = self.inputs.as_ref()?;
        let listeners = [left.checkpoint_listener(), right.checkpoint_listener()];
        if listeners.iter().all(Option::is_none) {
            return None;
        }
        Some(Arc::new(SplitListener { listeners }))
    }

    fn set_partition_lifecycle(&mut self, lifecycle: Arc<dyn PartitionLifecycle>) -> bool {
        let Some((left, right)) = self.inputs.as_mut() else { return false };
        let l = left.set_partition_lifecycle(Arc::new(InputLifecycle { input: 0, union: lifecycle.clone() }));
        let r = right.set_partition_lifecycle(Arc::new(InputLifecycle { input: 1, union: lifecycle }));
        l || r
    }
}

/// Passes each input's share of a completed checkpoint's offsets to its own listener.
struct SplitListener {
    listeners: [Option<Arc<dyn CheckpointListener>>; 2],
}

impl CheckpointListener for SplitListener {
    fn checkpoint_complete(&self, checkpoint_id: u64, offsets: &BTreeMap<PartitionId, u64>) {
        for (listener, offsets) in self.listeners.iter().zip(split_offsets(offsets)) {
            if let Some(l) = listener {
                l.checkpoint_complete(checkpoint_id, &offsets);
            }
        }
    }
}

/// The job's partition hand-over, seen by one input in its own partition ids.
struct InputLifecycle {
    input: usize,
    union: Arc<dyn PartitionLifecycle>,
}

impl InputLifecycle {
    /// The union's ids of the input's `partitions` (one beyond the range cannot be numbered: it
    /// has no state in the job, and is left out).
    fn union_ids(&self, partitions: &[PartitionId]) -> Vec<PartitionId> {
        partitions.iter().filter_map(|p| union_partition(self.input, *p).ok()).collect()
    }
}

impl PartitionLifecycle for InputLifecycle {
    fn assigning(&self, partitions: &[PartitionId]) -> BTreeMap<PartitionId, u64> {
        let resume = self.union.assigning(&self.union_ids(partitions));
        split_offsets(&resume).into_iter().nth(self.input).unwrap_or_default()
    }

    fn wait_released(&self, partitions: &[PartitionId], timeout: Duration) -> bool {
        self.union.wait_released(&self.union_ids(partitions), timeout)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::source::MemorySource;

    /// A source that says nothing for a while, then plays its inner source.
    struct Late<S>(Option<Duration>, S);

    impl<T: Send + 'static, S: Source<T>> Source<T> for Late<S> {
        async fn next_event(&mut self) -> Result<Option<SourceEvent<T>>, SourceError> {
            if let Some(d) = self.0.take() {
                tokio::time::sleep(d).await;
            }
            self.1.next_event().await
        }
    }

    /// What the union delivered, in order: `A(partitions)`, `B(partitions of the records)`, `F(p)`.
    async fn trace<A: Send + 'static, B: Send + 'static>(
        mut union: UnionSource<A, B, impl Source<A>, impl Source<B>>,
    ) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(e) = union.next_event().await.unwrap() {
            seen.push(match e {
                SourceEvent::PartitionsAssigned(p) => format!("A{p:?}"),
                SourceEvent::Batch(b) => {
                    format!("B{:?}", b.records.iter().map(|r| r.position.partition).collect::<Vec<_>>())
                }
                SourceEvent::PartitionFinished(p) => format!("F{p}"),
                SourceEvent::PartitionsRevoked(p) => format!("R{p:?}"),
                SourceEvent::Progress(p) => format!("P{}", p.time_ms),
            });
        }
        seen
    }

    #[tokio::test]
    async fn no_records_go_out_before_both_inputs_have_announced_their_partitions() {
        let slow = Late(Some(Duration::from_millis(50)), MemorySource::of([1u8, 2]));
        let seen = trace(UnionSource::new(slow, MemorySource::of(["x", "y"]))).await;
        let first_batch = seen.iter().position(|e| e.starts_with('B')).unwrap();
        let announced: Vec<_> = seen[..first_batch].iter().filter(|e| e.starts_with('A')).collect();
        assert_eq!(announced.len(), 2, "{seen:?}");
        assert!(
            seen.contains(&format!("F{RIGHT_PARTITIONS}")) && seen.contains(&"F0".to_owned()),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn an_input_that_starts_with_records_has_them_announced_first() {
        /// Records without an announcement.
        struct Bare(Option<Vec<Record<u8>>>);
        impl Source<u8> for Bare {
            async fn next_event(&mut self) -> Result<Option<SourceEvent<u8>>, SourceError> {
                Ok(self.0.take().map(|r| SourceEvent::Batch(SourceBatch::of(r))))
            }
        }
        let bare = Bare(Some(vec![Record::new(1, 0).with_position(SourcePosition::new(3, 0))]));
        let slow = Late(Some(Duration::from_millis(50)), MemorySource::of(["x"]));
        let seen = trace(UnionSource::new(bare, slow)).await;
        let expected_start = ["A[3]".to_owned(), format!("A[{RIGHT_PARTITIONS}]"), "B[3]".to_owned()];
        assert_eq!(seen[..3], expected_start, "{seen:?}");
    }

    /// Two inputs that always have a batch ready stay level: a random pick lets one run ahead.
    #[tokio::test]
    async fn inputs_with_batches_ready_take_turns() {
        let input = || MemorySource::of(0..12u32).with_batch_size(1);
        let seen = trace(UnionSource::new(input(), input())).await;
        let batches: Vec<&String> = seen.iter().filter(|e| e.starts_with('B')).collect();
        let (left, right) = ("B[0]".to_owned(), format!("B[{RIGHT_PARTITIONS}]"));
        let expected: Vec<&String> = std::iter::repeat_n([&left, &right], 12).flatten().collect();
        assert_eq!(batches, expected, "{seen:?}");
    }

    #[test]
    fn the_clock_is_the_earliest_running_inputs_and_never_goes_back() {
        let mut u = UnionSource::new(MemorySource::of([0u8]), MemorySource::of([0u8]));
        let at = |u: &mut UnionSource<_, _, _, _>, input, t| {
            let mut p = SourceProgress { time_ms: t, behind: Vec::new() };
            u.note_clock(input, &mut p);
            p.time_ms
        };
        assert_eq!(at(&mut u, 0, 1_000), 1_000);
        assert_eq!(at(&mut u, 1, 500), 1_000, "the second input's first report is behind: no step back");
        assert_eq!(at(&mut u, 1, 2_000), 1_000, "the first input's clock stands still: so does the union's");
        u.clocks[0] = None; // what the end of the first input does
        assert_eq!(at(&mut u, 1, 3_000), 3_000);
    }

    #[tokio::test]
    async fn offsets_split_between_the_inputs_and_a_partition_beyond_the_range_is_an_error() {
        let offsets = BTreeMap::from([(0, 5), (2, 7), (RIGHT_PARTITIONS + 1, 9)]);
        let [l, r] = split_offsets(&offsets);
        assert_eq!((l, r), (BTreeMap::from([(0, 5), (2, 7)]), BTreeMap::from([(1, 9)])));
        let far = MemorySource::new(vec![
            Record::new(1u8, 0).with_position(SourcePosition::new(RIGHT_PARTITIONS, 0)),
        ]);
        let mut union = UnionSource::new(MemorySource::of([0u8]), far);
        let mut failed = false;
        for _ in 0..8 {
            match union.next_event().await {
                Err(e) => {
                    failed = e.to_string().contains("beyond");
                    break;
                }
                Ok(None) => break,
                Ok(Some(_)) => {}
            }
        }
        assert!(failed, "the second input's partition 2^24 cannot be numbered");
    }
}
