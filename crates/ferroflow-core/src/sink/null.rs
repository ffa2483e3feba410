//! A sink that discards output and counts it, for benchmarks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Sink;
use crate::error::SinkError;

/// Discards items and counts them.
///
/// # Examples
/// ```
/// use ferroflow_core::sink::{NullSink, Sink};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut sink = NullSink::new();
/// let count = sink.counter();
/// sink.write_batch(vec!["a", "b"]).await.unwrap();
/// assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 2);
/// # });
/// ```
#[derive(Debug, Default, Clone)]
pub struct NullSink {
    count: Arc<AtomicU64>,
}

impl NullSink {
    /// A new sink with a zero count.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared count of discarded items.
    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.count)
    }
}

impl<T: Send + 'static> Sink<T> for NullSink {
    async fn write_batch(&mut self, batch: Vec<T>) -> Result<(), SinkError> {
        self.count.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
