//! Sources: where records come from. A source yields batches of records, partition lifecycle
//! events, and (for sources that decode) dead letters for input it could not read.

mod decoded;
mod file;
mod memory;
mod union;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

pub use decoded::{Decode, DecodedSource, PerInput};
pub use file::JsonLinesSource;
pub use memory::MemorySource;
pub(crate) use union::task_of;
pub use union::{RIGHT_PARTITIONS, UnionSource};

use crate::dead_letter::DeadLetter;
use crate::error::SourceError;
use bytes::Bytes;

use crate::record::{PartitionId, Record, SourcePosition};

/// A batch of records read from a source, plus any input the source itself could not decode.
///
/// # Examples
/// ```
/// use bytes::Bytes;
/// use ferroflow_core::source::SourceBatch;
/// use ferroflow_core::{Record, SourcePosition};
/// let at = SourcePosition::new(0, 0);
/// let batch = SourceBatch::of(vec![Record::new(1u8, 0).with_position(at)]).with_originals(vec![(at, Bytes::from_static(b"1"))]);
/// assert_eq!(batch.records.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SourceBatch<T> {
    /// Records, in read order.
    pub records: Vec<Record<T>>,
    /// Input the source could not turn into records (each counts as one record in).
    pub dead_letters: Vec<DeadLetter>,
    /// The bytes records were read from, by position (shared with the read buffer, no copy): a
    /// later step that refuses a record puts them in its dead letter. A source that has none
    /// leaves this empty, and such dead letters carry no original bytes.
    pub originals: Vec<(SourcePosition, Bytes)>,
    /// The source's clock when it cut the batch, for sources that keep one (see
    /// [`SourceProgress`]).
    pub progress: Option<SourceProgress>,
}

impl<T> Default for SourceBatch<T> {
    fn default() -> Self {
        Self { records: Vec::new(), dead_letters: Vec::new(), originals: Vec::new(), progress: None }
    }
}

impl<T> SourceBatch<T> {
    /// A batch of `records` (no dead letters, no original bytes).
    pub fn of(records: Vec<Record<T>>) -> Self {
        Self { records, ..Self::default() }
    }

    /// Adds the bytes the records were read from.
    pub fn with_originals(mut self, originals: Vec<(SourcePosition, Bytes)>) -> Self {
        self.originals = originals;
        self
    }

    /// Adds the source's clock at the batch.
    pub fn with_progress(mut self, progress: SourceProgress) -> Self {
        self.progress = Some(progress);
        self
    }
}

/// What a source knows about idleness: its own clock, and which partitions still have data.
///
/// Idleness judged by processing time alone goes wrong whenever the job is blocked: after a
/// sink outage longer than the idle timeout every partition looks silent, although their records
/// wait in the broker, and the watermark jumps past them. A source that reports progress gives the
/// job a clock that runs only while the source is reading (it stops while the source waits on a
/// full channel or a rebalance), and names the partitions it has not caught up with. The runner
/// measures idleness on that clock ([`Context::idle_time`](crate::Context::idle_time)) and keeps
/// the named partitions active.
///
/// # Examples
/// ```
/// use ferroflow_core::source::{SourceEvent, SourceProgress};
/// let beat: SourceEvent<u8> = SourceEvent::Progress(SourceProgress { time_ms: 1_000, behind: vec![2] });
/// # let _ = beat;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceProgress {
    /// The source's clock, ms: it only runs while the source is able to read.
    pub time_ms: i64,
    /// Partitions with data the source has not delivered yet: they are not idle.
    pub behind: Vec<PartitionId>,
}

/// What a source delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent<T> {
    /// Records.
    Batch(SourceBatch<T>),
    /// Partitions now read by this instance (they hold the watermark back until data or idleness).
    PartitionsAssigned(Vec<PartitionId>),
    /// Partitions no longer read by this instance.
    PartitionsRevoked(Vec<PartitionId>),
    /// A bounded partition reached its end.
    PartitionFinished(PartitionId),
    /// The source's clock moved while it had nothing to deliver (see [`SourceProgress`]).
    Progress(SourceProgress),
}

/// A source of records for the [`Runner`](crate::Runner).
///
/// `next_event` returns `Ok(None)` once every partition is exhausted (bounded input); an unbounded
/// source never does. The runner calls it from its own task and applies backpressure by not
/// calling it while the channel to the processing task is full.
pub trait Source<T>: Send + 'static {
    /// The next batch or partition event; `None` at the end of all input.
    fn next_event(&mut self) -> impl Future<Output = Result<Option<SourceEvent<T>>, SourceError>> + Send;

    /// How many inputs the source reads, each with partitions of its own (a
    /// [`UnionSource`] reads two): 1 unless it says otherwise.
    fn inputs(&self) -> usize {
        1
    }

    /// Asks a source of several inputs to check, once every input has announced its partitions,
    /// that they announced the same partition numbers, and to fail otherwise (a job per
    /// partition calls it: its task for partition `p` runs partition `p` of every input, so a
    /// partition without its counterpart would silently join with nothing). Sources of one input
    /// have nothing to check.
    fn require_co_partitioning(&mut self) {}

    /// Whether partition `p` of every input is assigned to this instance, and revoked from it,
    /// together, in one event (one consumer-group member reads every input, and the group's
    /// assignor gives equal partition numbers of its topics to the same member, as Kafka's range
    /// assignor does for topics of equal partition counts). A job per partition over several
    /// inputs can then move between instances: a task's state follows all its partitions at once.
    /// Sources of one input have nothing to keep together (true); the default for several inputs
    /// is false, as for a [`UnionSource`], whose inputs change hands independently.
    fn assigns_inputs_together(&self) -> bool {
        self.inputs() <= 1
    }

    /// A limit the job's watermark may not pass (see [`WatermarkCeiling`](crate::time::WatermarkCeiling)): sources whose
    /// records wait for another input's progress (a [`BroadcastTable`](crate::join::BroadcastTable)'s)
    /// return one, taken before the source moves to its task. The default has none.
    fn watermark_ceiling(&self) -> Option<crate::time::WatermarkCeiling> {
        None
    }

    /// Resumes reading at `offsets` (per partition, the offset of the next record to deliver),
    /// after a restore. Sources that cannot resume keep the default, which refuses: resuming from
    /// the start would count records twice.
    fn seek(&mut self, offsets: &BTreeMap<PartitionId, u64>) -> Result<(), SourceError> {
        let _ = offsets;
        Err(SourceError::External {
            message: "this source cannot resume from checkpointed offsets".into(),
            retry: crate::error::RetryHint::NoRetry,
        })
    }

    /// A listener told about every completed checkpoint, taken before the source moves to its
    /// task. Sources that report progress elsewhere (a Kafka consumer committing offsets so lag
    /// tools see them) return one; the default has none.
    fn checkpoint_listener(&self) -> Option<Arc<dyn CheckpointListener>> {
        None
    }

    /// Installs the job's hook for partitions changing hands; returns false when the source
    /// never changes partitions (the default), so the job need not hand state over.
    fn set_partition_lifecycle(&mut self, lifecycle: Arc<dyn PartitionLifecycle>) -> bool {
        let _ = lifecycle;
        false
    }
}

/// Consulted by a source before it reads partitions newly assigned to this instance (a
/// consumer-group rebalance), so that their state can follow them from the previous owner.
pub trait PartitionLifecycle: Send + Sync + 'static {
    /// Fetches the newest state of `partitions` for the job and returns where each one must
    /// resume. A partition left out has no state in any checkpoint: the source starts it from its
    /// configured start, not from where it last delivered it (that position belongs to state that
    /// is gone). Blocks while it downloads; call it from the source's own thread, never from an
    /// async task.
    fn assigning(&self, partitions: &[PartitionId]) -> BTreeMap<PartitionId, u64>;

    /// Waits up to `timeout` until the job has released `partitions`: it processed every event
    /// the source delivered before their revocation, checkpointed their state and ended their
    /// tasks. True once they are released.
    ///
    /// A source calls it after it delivered a revocation and before it lets the partitions go to
    /// another owner (inside the consumer's revoke callback, as Kafka Streams commits in
    /// `onPartitionsRevoked`): the next owner, or this instance when the partitions come back, then
    /// finds their newest state instead of an older one. Call it in a loop that also checks whether
    /// the source is stopping. The default (a job without hand-over) releases at once.
    fn wait_released(&self, partitions: &[PartitionId], timeout: std::time::Duration) -> bool {
        let _ = (partitions, timeout);
        true
    }
}

/// Told when a checkpoint has committed, with the source offsets it holds.
///
/// Called from the processing task right after the commit point; it must not block for long.
pub trait CheckpointListener: Send + Sync + 'static {
    /// Checkpoint `checkpoint_id` committed `offsets` (per partition, the next offset to read).
    fn checkpoint_complete(&self, checkpoint_id: u64, offsets: &BTreeMap<PartitionId, u64>);
}
