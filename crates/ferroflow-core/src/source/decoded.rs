//! A source of bytes decoded into values as it reads.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;

use super::{CheckpointListener, PartitionLifecycle, Source, SourceBatch, SourceEvent};
use crate::dead_letter::{DeadLetter, Rejection};
use crate::error::SourceError;
use crate::record::{PartitionId, Record};
use crate::time::WatermarkCeiling;

/// Decodes each record of a source of bytes (a Kafka topic) with `decode`, for the places that
/// take a source of values rather than a chain: a [`BroadcastTable`](crate::join::BroadcastTable)'s
/// input. What `decode` refuses becomes a dead letter of the batch, with its reason, position and
/// bytes; the record keeps its position. Everything else (seeking, checkpoint listeners, the
/// hand-over hook) is the inner source's.
///
/// # Examples
/// ```
/// use bytes::Bytes;
/// use ferroflow_core::source::{DecodedSource, MemorySource, Source, SourceEvent};
/// use ferroflow_core::Rejection;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bytes = MemorySource::of([Bytes::from_static(b"7"), Bytes::from_static(b"x")]);
/// let mut numbers = DecodedSource::new(bytes, |b: &Bytes| {
///     std::str::from_utf8(b).ok().and_then(|s| s.parse::<u32>().ok()).ok_or_else(|| Rejection::decode("not a number"))
/// });
/// let _assigned = numbers.next_event().await.unwrap();
/// let Some(SourceEvent::Batch(batch)) = numbers.next_event().await.unwrap() else { panic!() };
/// assert_eq!(batch.records[0].payload, 7);
/// assert_eq!(batch.dead_letters[0].position.offset, 1);
/// # });
/// ```
pub struct DecodedSource<S, F, T> {
    inner: S,
    decode: F,
    _t: PhantomData<fn() -> T>,
}

impl<S, F, T> std::fmt::Debug for DecodedSource<S, F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedSource").finish_non_exhaustive()
    }
}

impl<S, F, T> DecodedSource<S, F, T>
where
    S: Source<Bytes>,
    F: FnMut(&Bytes) -> Result<T, Rejection> + Send + 'static,
    T: Send + 'static,
{
    /// Reads `inner`, decoding each record with `decode`.
    pub fn new(inner: S, decode: F) -> Self {
        Self { inner, decode, _t: PhantomData }
    }

    fn decode_batch(&mut self, batch: SourceBatch<Bytes>) -> SourceBatch<T> {
        let SourceBatch { records, mut dead_letters, originals, progress } = batch;
        let mut decoded = Vec::with_capacity(records.len());
        for r in records {
            match (self.decode)(&r.payload) {
                Ok(value) => decoded.push(Record {
                    payload: value,
                    key: r.key,
                    event_time: r.event_time,
                    position: r.position,
                }),
                Err(rejection) => {
                    let mut dl = DeadLetter::new(rejection.reason, rejection.detail, r.position, r.payload);
                    dl.event_time = None;
                    dead_letters.push(dl);
                }
            }
        }
        SourceBatch { records: decoded, dead_letters, originals, progress }
    }
}

impl<S, F, T> Source<T> for DecodedSource<S, F, T>
where
    S: Source<Bytes>,
    F: FnMut(&Bytes) -> Result<T, Rejection> + Send + 'static,
    T: Send + 'static,
{
    async fn next_event(&mut self) -> Result<Option<SourceEvent<T>>, SourceError> {
        Ok(match self.inner.next_event().await? {
            None => None,
            Some(SourceEvent::Batch(batch)) => Some(SourceEvent::Batch(self.decode_batch(batch))),
            Some(SourceEvent::PartitionsAssigned(ps)) => Some(SourceEvent::PartitionsAssigned(ps)),
            Some(SourceEvent::PartitionsRevoked(ps)) => Some(SourceEvent::PartitionsRevoked(ps)),
            Some(SourceEvent::PartitionFinished(p)) => Some(SourceEvent::PartitionFinished(p)),
            Some(SourceEvent::Progress(p)) => Some(SourceEvent::Progress(p)),
        })
    }

    fn inputs(&self) -> usize {
        self.inner.inputs()
    }

    fn require_co_partitioning(&mut self) {
        self.inner.require_co_partitioning();
    }

    fn watermark_ceiling(&self) -> Option<WatermarkCeiling> {
        self.inner.watermark_ceiling()
    }

    fn seek(&mut self, offsets: &BTreeMap<PartitionId, u64>) -> Result<(), SourceError> {
        self.inner.seek(offsets)
    }

    fn checkpoint_listener(&self) -> Option<Arc<dyn CheckpointListener>> {
        self.inner.checkpoint_listener()
    }

    fn set_partition_lifecycle(&mut self, lifecycle: Arc<dyn PartitionLifecycle>) -> bool {
        self.inner.set_partition_lifecycle(lifecycle)
    }
}
