//! A source wrapper that slows a source down (demos and crash tests need a job that runs for a while).

use std::collections::BTreeMap;
use std::time::Duration;

use ferroflow_core::source::{Source, SourceEvent};
use ferroflow_core::{PartitionId, SourceError};

/// Delivers the inner source's events, pausing after each batch.
#[derive(Debug)]
pub struct Paced<S> {
    inner: S,
    pause: Duration,
}

impl<S> Paced<S> {
    /// Wraps `inner`, sleeping `pause` after each batch.
    pub fn new(inner: S, pause: Duration) -> Self {
        Self { inner, pause }
    }
}

impl<T: Send + 'static, S: Source<T>> Source<T> for Paced<S> {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<T>>, SourceError> {
        let ev = self.inner.next_event().await?;
        if matches!(ev, Some(SourceEvent::Batch(_))) && !self.pause.is_zero() {
            tokio::time::sleep(self.pause).await;
        }
        Ok(ev)
    }

    fn seek(&mut self, offsets: &BTreeMap<PartitionId, u64>) -> Result<(), SourceError> {
        self.inner.seek(offsets)
    }
}
