//! A sink that keeps everything in memory, for tests and embedding.

use std::sync::{Arc, Mutex};

use super::Sink;
use crate::error::SinkError;

/// Collects every item in memory; read them through the [`Collected`] handle.
///
/// # Examples
/// ```
/// use ferroflow_core::sink::{CollectSink, Sink};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut sink = CollectSink::new();
/// let handle = sink.handle();
/// sink.write_batch(vec![1, 2]).await.unwrap();
/// assert_eq!(handle.take(), vec![1, 2]);
/// # });
/// ```
#[derive(Debug)]
pub struct CollectSink<T> {
    items: Arc<Mutex<Vec<T>>>,
}

/// Read access to what a [`CollectSink`] collected.
#[derive(Debug)]
pub struct Collected<T> {
    items: Arc<Mutex<Vec<T>>>,
}

impl<T> Clone for Collected<T> {
    fn clone(&self) -> Self {
        Self { items: Arc::clone(&self.items) }
    }
}

impl<T> Default for CollectSink<T> {
    fn default() -> Self {
        Self { items: Arc::new(Mutex::new(Vec::new())) }
    }
}

impl<T> CollectSink<T> {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty sink and a handle to read what it collects.
    pub fn with_handle() -> (Self, Collected<T>) {
        let sink = Self::new();
        let handle = sink.handle();
        (sink, handle)
    }

    /// A handle to read the items later (after the sink moved into the runner).
    pub fn handle(&self) -> Collected<T> {
        Collected { items: Arc::clone(&self.items) }
    }
}

impl<T> Collected<T> {
    /// Takes every item collected so far.
    pub fn take(&self) -> Vec<T> {
        match self.items.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    /// Number of items collected so far.
    pub fn len(&self) -> usize {
        match self.items.lock() {
            Ok(g) => g.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }

    /// True when nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Clone> Collected<T> {
    /// A copy of every item collected so far (they stay collected).
    pub fn snapshot(&self) -> Vec<T> {
        match self.items.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl<T: Send + 'static> Sink<T> for CollectSink<T> {
    async fn write_batch(&mut self, batch: Vec<T>) -> Result<(), SinkError> {
        match self.items.lock() {
            Ok(mut g) => g.extend(batch),
            Err(poisoned) => poisoned.into_inner().extend(batch),
        }
        Ok(())
    }
}
