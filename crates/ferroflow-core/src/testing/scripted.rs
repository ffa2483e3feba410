//! [`ScriptedSource`]: a source that plays a script of events and waits when told to.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::error::SourceError;
use crate::record::{PartitionId, Record};
use crate::source::{Source, SourceBatch, SourceEvent};

/// One step of a [`ScriptedSource`].
#[derive(Debug)]
pub enum Script<T> {
    /// Deliver this event.
    Emit(SourceEvent<T>),
    /// Wait until the test calls `notify_one` on this.
    Wait(Arc<Notify>),
}

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
#[derive(Debug)]
pub struct ScriptedSource<T> {
    steps: VecDeque<Script<T>>,
    /// Where each partition resumes after a restore (records before it are skipped).
    resume: BTreeMap<PartitionId, u64>,
}

impl<T> Default for ScriptedSource<T> {
    fn default() -> Self {
        Self { steps: VecDeque::new(), resume: BTreeMap::new() }
    }
}

impl<T> ScriptedSource<T> {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
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

impl<T: Send + 'static> Source<T> for ScriptedSource<T> {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<T>>, SourceError> {
        loop {
            match self.steps.pop_front() {
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
                Some(Script::Emit(ev)) => return Ok(Some(ev)),
                Some(Script::Wait(go)) => go.notified().await,
                None => return Ok(None),
            }
        }
    }

    fn seek(&mut self, offsets: &BTreeMap<PartitionId, u64>) -> Result<(), SourceError> {
        self.resume.extend(offsets.iter().map(|(p, o)| (*p, *o)));
        Ok(())
    }
}
