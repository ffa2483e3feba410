//! A source of bytes decoded into values as it reads.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;

use super::RIGHT_PARTITIONS;
use super::{CheckpointListener, PartitionLifecycle, Source, SourceBatch, SourceEvent};
use crate::dead_letter::{DeadLetter, Rejection};
use crate::error::SourceError;
use crate::join::Either;
use crate::record::{PartitionId, Record, SourcePosition};
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

/// How a [`DecodedSource`] turns a record's bytes into a value: a closure of the bytes, or
/// [`PerInput`] for a source of two inputs.
pub trait Decode<T>: Send + 'static {
    /// Decodes the bytes of the record at `at`.
    fn decode(&mut self, bytes: &Bytes, at: SourcePosition) -> Result<T, Rejection>;
}

impl<T, F> Decode<T> for F
where
    F: FnMut(&Bytes) -> Result<T, Rejection> + Send + 'static,
{
    fn decode(&mut self, bytes: &Bytes, _at: SourcePosition) -> Result<T, Rejection> {
        self(bytes)
    }
}

/// Decodes the first input's records with one function and the second's with another, into
/// [`Either`](crate::join::Either) (see [`DecodedSource::per_input`]).
pub struct PerInput<FL, FR> {
    left: FL,
    right: FR,
}

impl<FL, FR> std::fmt::Debug for PerInput<FL, FR> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerInput").finish_non_exhaustive()
    }
}

impl<L, R, FL, FR> Decode<Either<L, R>> for PerInput<FL, FR>
where
    FL: FnMut(&Bytes) -> Result<L, Rejection> + Send + 'static,
    FR: FnMut(&Bytes) -> Result<R, Rejection> + Send + 'static,
{
    fn decode(&mut self, bytes: &Bytes, at: SourcePosition) -> Result<Either<L, R>, Rejection> {
        if at.partition >= RIGHT_PARTITIONS {
            (self.right)(bytes).map(Either::Right)
        } else {
            (self.left)(bytes).map(Either::Left)
        }
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
}

impl<S, FL, FR, L, R> DecodedSource<S, PerInput<FL, FR>, Either<L, R>>
where
    S: Source<Bytes>,
    FL: FnMut(&Bytes) -> Result<L, Rejection> + Send + 'static,
    FR: FnMut(&Bytes) -> Result<R, Rejection> + Send + 'static,
    L: Send + 'static,
    R: Send + 'static,
{
    /// Reads a source of two inputs of bytes (a Kafka source with a `co_topic`), decoding the
    /// first input's records with `left` into [`Either::Left`] and the second's (partitions from
    /// [`RIGHT_PARTITIONS`]) with `right` into [`Either::Right`]: the input of a join per partition.
    ///
    /// # Examples
    /// ```
    /// use bytes::Bytes;
    /// use ferroflow_core::join::Either;
    /// use ferroflow_core::source::{DecodedSource, Source, SourceEvent, RIGHT_PARTITIONS};
    /// use ferroflow_core::testing::ScriptedSource;
    /// use ferroflow_core::{Record, Rejection, SourcePosition};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let at = |p| SourcePosition::new(p, 0);
    /// let bytes = ScriptedSource::new().with_inputs(2).records(vec![
    ///     Record::new(Bytes::from_static(b"view"), 0).with_position(at(0)),
    ///     Record::new(Bytes::from_static(b"7"), 0).with_position(at(RIGHT_PARTITIONS)),
    /// ]);
    /// let text = |b: &Bytes| String::from_utf8(b.to_vec()).map_err(|_| Rejection::decode("not UTF-8"));
    /// let number = |b: &Bytes| std::str::from_utf8(b).ok().and_then(|s| s.parse::<u32>().ok()).ok_or_else(|| Rejection::decode("not a number"));
    /// let mut both = DecodedSource::per_input(bytes, text, number);
    /// assert_eq!(both.inputs(), 2);
    /// let Some(SourceEvent::Batch(batch)) = both.next_event().await.unwrap() else { panic!() };
    /// let values: Vec<_> = batch.records.into_iter().map(|r| r.payload).collect();
    /// assert_eq!(values, [Either::Left("view".to_owned()), Either::Right(7)]);
    /// # });
    /// ```
    pub fn per_input(inner: S, left: FL, right: FR) -> Self {
        Self { inner, decode: PerInput { left, right }, _t: PhantomData }
    }
}

impl<S, F, T> DecodedSource<S, F, T>
where
    S: Source<Bytes>,
    F: Decode<T>,
    T: Send + 'static,
{
    fn decode_batch(&mut self, batch: SourceBatch<Bytes>) -> SourceBatch<T> {
        let SourceBatch { records, mut dead_letters, originals, progress } = batch;
        let mut decoded = Vec::with_capacity(records.len());
        for r in records {
            match self.decode.decode(&r.payload, r.position) {
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
    F: Decode<T>,
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

    fn assigns_inputs_together(&self) -> bool {
        self.inner.assigns_inputs_together()
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
