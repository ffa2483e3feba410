//! Sinks: where results and dead letters go (one or, split by item, several).

mod collect;
mod discard;
mod file;
mod null;
mod split;

use std::future::Future;

pub use collect::{CollectSink, Collected};
pub use discard::DiscardDeadLetters;
pub use file::JsonLinesSink;
pub use null::NullSink;
pub use split::SplitSink;

use crate::error::SinkError;

/// A destination for a job's output (results or dead letters).
///
/// The runner calls `write_batch` from the sink's own task; while it runs, the bounded channel in
/// front of the sink fills and the job slows down instead of buffering without limit. `flush` is
/// called once at the end (and, with checkpoints, at every checkpoint).
pub trait Sink<T>: Send + 'static {
    /// Writes one batch.
    fn write_batch(&mut self, batch: Vec<T>) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Makes everything written so far durable.
    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }

    /// Called periodically while no batch arrives (every runner tick), so sinks that buffer can
    /// honour a time limit without waiting for the next write or checkpoint. Default: nothing.
    fn on_idle(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }

    /// Called before the first batch of each sink epoch: once at start (with the epoch after the
    /// restored checkpoint, or 0) and after every checkpoint barrier. An epoch is the output
    /// between two checkpoints; sinks that deduplicate writes derive their tokens from it.
    fn begin_epoch(&mut self, epoch: u64) {
        let _ = epoch;
    }
}
