//! [`ScriptedSource`]: a source that plays a script of events and waits when told to.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::error::{RetryHint, SourceError};
use crate::record::{PartitionId, Record, SourcePosition};
use crate::source::{PartitionLifecycle, Source, SourceBatch, SourceEvent};

/// One step of a [`ScriptedSource`].
#[derive(Debug)]
pub enum Script<T> {
    /// Deliver this event.
    Emit(SourceEvent<T>),
    /// Wait until the test calls `notify_one` on this.
    Wait(Arc<Notify>),
    /// Deliver the next `count` values of `partition`'s data (see [`ScriptedSource::over`]), from
    /// where the partition stands (a seek or a hand-over moves it).
    Read {
        /// The partition.
        partition: PartitionId,
        /// How many values at most.
        count: usize,
    },
}

/// Where assigned partitions resume, as the job's hand-over hook answered at each assignment.
pub type HookAnswers = Arc<Mutex<Vec<BTreeMap<PartitionId, u64>>>>;

/// Plays its script in order, then ends (bounded input); a [`Script::Wait`] step holds it until
/// the test releases it, so a test can look at a running job between events.
///
/// # Examples
/// ```
/// use ferroflow_core::prelude::*;
/// use ferroflow_core::testing::ScriptedSource;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let source = ScriptedSource::new().assign(vec![0]).records(vec![Record::new(1i64, 0), Record::new(2, 0)]).finish(0);
/// let (sink, out) = CollectSink::with_handle();
/// Runner::default().job(source, Stream::<i64>::new()).sink(sink).discard_dead_letters().run().await.unwrap();
/// assert_eq!(out.take(), vec![1, 2]);
/// # });
/// ```
///
/// Over per-partition data ([`over`](Self::over)) it reads like a consumer-group member: a
/// [`read`](Self::read) step delivers the next values of a partition at their offsets, and at an
/// assignment it asks the job's hand-over hook (when the job installed one) where the partitions
/// resume; [`hook_answers`](Self::hook_answers) shows what the hook said. After a revocation it
/// waits until the job has released the partitions before its next step, as the Kafka source's
/// revoke callback does.
pub struct ScriptedSource<T> {
    steps: VecDeque<Script<T>>,
    /// Where each partition resumes (records before it are skipped, reads start there).
    resume: BTreeMap<PartitionId, u64>,
    data: BTreeMap<PartitionId, Vec<T>>,
    lifecycle: Option<Arc<dyn PartitionLifecycle>>,
    answers: HookAnswers,
    /// Revoked partitions the job has not released yet: the next step waits for them.
    releasing: Option<Vec<PartitionId>>,
    /// How many inputs it reads as one group member (see [`with_inputs`](Self::with_inputs)).
    inputs: usize,
}

impl<T> std::fmt::Debug for ScriptedSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedSource")
            .field("steps", &self.steps.len())
            .field("resume", &self.resume)
            .finish()
    }
}

impl<T> Default for ScriptedSource<T> {
    fn default() -> Self {
        Self {
            steps: VecDeque::new(),
            resume: BTreeMap::new(),
            data: BTreeMap::new(),
            lifecycle: None,
            answers: HookAnswers::default(),
            releasing: None,
            inputs: 1,
        }
    }
}

impl<T> ScriptedSource<T> {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty script over per-partition data: value `i` of a partition is at offset `i`, with
    /// event time 0 (set it with `assign_timestamps`).
    pub fn over(data: BTreeMap<PartitionId, Vec<T>>) -> Self {
        Self { data, ..Self::default() }
    }

    /// Makes it a source of `inputs` inputs read by one consumer-group member, like a Kafka
    /// consumer of two co-partitioned topics: partition `p` of the second input is
    /// [`RIGHT_PARTITIONS`](crate::source::RIGHT_PARTITIONS)` + p` in the data and the script, and
    /// the script assigns and revokes a task's partitions together
    /// ([`Source::assigns_inputs_together`]).
    pub fn with_inputs(mut self, inputs: usize) -> Self {
        self.inputs = inputs.max(1);
        self
    }

    /// Appends a read of the next `count` values of `partition` (see [`over`](Self::over)).
    pub fn read(self, partition: PartitionId, count: usize) -> Self {
        self.then(Script::Read { partition, count })
    }

    /// What the job's hand-over hook answered at each assignment.
    pub fn hook_answers(&self) -> HookAnswers {
        Arc::clone(&self.answers)
    }

    /// Appends a step.
    pub fn then(mut self, step: Script<T>) -> Self {
        self.steps.push_back(step);
        self
    }

    /// Appends an event.
    pub fn emit(self, event: SourceEvent<T>) -> Self {
        self.then(Script::Emit(event))
    }

    /// Appends an assignment of `partitions`.
    pub fn assign(self, partitions: Vec<PartitionId>) -> Self {
        self.emit(SourceEvent::PartitionsAssigned(partitions))
    }

    /// Appends a revocation of `partitions`.
    pub fn revoke(self, partitions: Vec<PartitionId>) -> Self {
        self.emit(SourceEvent::PartitionsRevoked(partitions))
    }

    /// Appends a batch of records.
    pub fn records(self, records: Vec<Record<T>>) -> Self {
        self.emit(SourceEvent::Batch(SourceBatch::of(records)))
    }

    /// Appends the end of partition `p`.
    pub fn finish(self, p: PartitionId) -> Self {
        self.emit(SourceEvent::PartitionFinished(p))
    }

    /// Appends a wait for `go.notify_one()`.
    pub fn wait(self, go: &Arc<Notify>) -> Self {
        self.then(Script::Wait(Arc::clone(go)))
    }
}

impl<T: Clone + Send + 'static> ScriptedSource<T> {
    fn read_next(&mut self, p: PartitionId, count: usize) -> SourceBatch<T> {
        let from = self.resume.get(&p).copied().unwrap_or(0);
        let values = self.data.get(&p).map_or(&[][..], Vec::as_slice);
        let records: Vec<Record<T>> = values
            .iter()
            .zip(0u64..)
            .skip(usize::try_from(from).unwrap_or(usize::MAX))
            .take(count)
            .map(|(v, o)| Record::new(v.clone(), 0).with_position(SourcePosition::new(p, o)))
            .collect();
        self.resume.insert(p, from + records.len() as u64);
        SourceBatch::of(records)
    }

    /// Waits, off the runtime, until the job released the partitions revoked last.
    async fn await_release(&mut self) -> Result<(), SourceError> {
        let (Some(ps), Some(hook)) = (self.releasing.take(), self.lifecycle.clone()) else { return Ok(()) };
        // Bounded: a job that failed never releases, and the runtime waits for blocking tasks.
        tokio::task::spawn_blocking(move || {
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !hook.wait_released(&ps, std::time::Duration::from_millis(100))
                && std::time::Instant::now() < give_up
            {}
        })
        .await
        .map_err(|e| SourceError::External {
            message: format!("waiting for the job to release partitions failed: {e}"),
            retry: RetryHint::NoRetry,
        })
    }

    /// Asks the hand-over hook where `partitions` resume, off the runtime (it blocks while it
    /// downloads), as a consumer's poll thread would.
    async fn ask_hook(&mut self, partitions: &[PartitionId]) -> Result<(), SourceError> {
        let Some(hook) = self.lifecycle.clone() else { return Ok(()) };
        let asked = partitions.to_vec();
        let offsets = tokio::task::spawn_blocking(move || hook.assigning(&asked)).await.map_err(|e| {
            SourceError::External {
                message: format!("the hand-over hook failed: {e}"),
                retry: RetryHint::NoRetry,
            }
        })?;
        // A partition the hook leaves out has no state anywhere: it starts over, as the Kafka
        // source starts it from its start offset.
        for p in partitions.iter().filter(|p| !offsets.contains_key(p)) {
            self.resume.remove(p);
        }
        self.resume.extend(offsets.iter().map(|(p, o)| (*p, *o)));
        if let Ok(mut answers) = self.answers.lock() {
            answers.push(offsets);
        }
        Ok(())
    }
}

impl<T: Clone + Send + 'static> Source<T> for ScriptedSource<T> {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<T>>, SourceError> {
        self.await_release().await?;
        loop {
            match self.steps.pop_front() {
                Some(Script::Read { partition, count }) => {
                    return Ok(Some(SourceEvent::Batch(self.read_next(partition, count))));
                }
                Some(Script::Emit(SourceEvent::PartitionsAssigned(ps))) => {
                    self.ask_hook(&ps).await?;
                    return Ok(Some(SourceEvent::PartitionsAssigned(ps)));
                }
                Some(Script::Emit(SourceEvent::Batch(mut b))) => {
                    let resume = &self.resume;
                    let keep = |p: &crate::record::SourcePosition| {
                        resume.get(&p.partition).is_none_or(|o| p.offset >= *o)
                    };
                    b.records.retain(|r| keep(&r.position));
                    b.dead_letters.retain(|d| keep(&d.position));
                    b.originals.retain(|(p, _)| keep(p));
                    return Ok(Some(SourceEvent::Batch(b)));
                }
                Some(Script::Emit(SourceEvent::PartitionsRevoked(ps))) => {
                    self.releasing = Some(ps.clone());
                    return Ok(Some(SourceEvent::PartitionsRevoked(ps)));
                }
                Some(Script::Emit(ev)) => return Ok(Some(ev)),
                Some(Script::Wait(go)) => go.notified().await,
                None => return Ok(None),
            }
        }
    }

    fn inputs(&self) -> usize {
        self.inputs
    }

    fn assigns_inputs_together(&self) -> bool {
        true
    }

    fn seek(&mut self, offsets: &BTreeMap<PartitionId, u64>) -> Result<(), SourceError> {
        self.resume.extend(offsets.iter().map(|(p, o)| (*p, *o)));
        Ok(())
    }

    fn set_partition_lifecycle(&mut self, lifecycle: Arc<dyn PartitionLifecycle>) -> bool {
        self.lifecycle = Some(lifecycle);
        true
    }
}
