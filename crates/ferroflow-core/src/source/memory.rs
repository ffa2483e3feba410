//! An in-memory source for tests, examples and embedding.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Source, SourceBatch, SourceEvent};
use crate::error::SourceError;
use crate::record::{PartitionId, Record};

/// Replays records held in memory, in the given order, in batches of `batch_size`.
///
/// It first announces every partition found in the records' positions, then delivers the records,
/// then reports each partition finished and ends.
///
/// # Examples
/// ```
/// use ferroflow_core::source::{MemorySource, Source, SourceEvent};
/// use ferroflow_core::Record;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut src = MemorySource::new(vec![Record::new(1u32, 10), Record::new(2u32, 20)]).with_batch_size(1);
/// assert!(matches!(src.next_event().await.unwrap(), Some(SourceEvent::PartitionsAssigned(_))));
/// assert!(matches!(src.next_event().await.unwrap(), Some(SourceEvent::Batch(b)) if b.records.len() == 1));
/// # });
/// ```
#[derive(Debug)]
pub struct MemorySource<T> {
    events: VecDeque<SourceEvent<T>>,
}

impl<T: Send + 'static> MemorySource<T> {
    /// A source over `records` with batches of 1024.
    pub fn new(records: Vec<Record<T>>) -> Self {
        Self::build(records, 1024)
    }

    /// A source over `payloads` as one partition (0), at offsets 0, 1, 2, … in order and with
    /// event time 0 (set it with [`Stream::assign_timestamps`](crate::Stream::assign_timestamps)).
    /// The offsets let a job that checkpoints resume where it stopped.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::source::MemorySource;
    /// let source = MemorySource::of(["a", "b"]);
    /// # let _ = source;
    /// ```
    pub fn of(payloads: impl IntoIterator<Item = T>) -> Self {
        let records = payloads
            .into_iter()
            .zip(0u64..)
            .map(|(p, offset)| Record::new(p, 0).with_position(crate::record::SourcePosition::new(0, offset)))
            .collect();
        Self::new(records)
    }

    /// Re-batches the records into batches of at most `batch_size` (at least 1).
    pub fn with_batch_size(self, batch_size: usize) -> Self {
        let mut records = Vec::new();
        for e in self.events {
            if let SourceEvent::Batch(b) = e {
                records.extend(b.records);
            }
        }
        Self::build(records, batch_size)
    }

    /// A source that replays exactly these events, then ends.
    pub fn from_events(events: Vec<SourceEvent<T>>) -> Self {
        Self { events: events.into() }
    }

    fn build(records: Vec<Record<T>>, batch_size: usize) -> Self {
        let partitions: BTreeSet<PartitionId> = records.iter().map(|r| r.position.partition).collect();
        let mut events = VecDeque::new();
        events.push_back(SourceEvent::PartitionsAssigned(partitions.iter().copied().collect()));
        let mut it = records.into_iter().peekable();
        while it.peek().is_some() {
            let batch: Vec<_> = it.by_ref().take(batch_size.max(1)).collect();
            events.push_back(SourceEvent::Batch(SourceBatch::of(batch)));
        }
        events.extend(partitions.into_iter().map(SourceEvent::PartitionFinished));
        Self { events }
    }
}

impl<T: Send + 'static> Source<T> for MemorySource<T> {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<T>>, SourceError> {
        Ok(self.events.pop_front())
    }

    fn seek(&mut self, offsets: &BTreeMap<PartitionId, u64>) -> Result<(), SourceError> {
        for e in &mut self.events {
            if let SourceEvent::Batch(b) = e {
                let keep = |p: &crate::record::SourcePosition| {
                    offsets.get(&p.partition).is_none_or(|o| p.offset >= *o)
                };
                b.records.retain(|r| keep(&r.position));
                b.dead_letters.retain(|d| keep(&d.position));
                b.originals.retain(|(p, _)| keep(p));
            }
        }
        self.events.retain(
            |e| !matches!(e, SourceEvent::Batch(b) if b.records.is_empty() && b.dead_letters.is_empty()),
        );
        Ok(())
    }
}
