//! A sink that routes each item to one of two sinks: branching a job's output.

use std::marker::PhantomData;

use either::Either;

use super::Sink;
use crate::error::SinkError;

/// Sends each item to one of two sinks, by a routing function that may also change its type
/// (`Either::Left` to the first sink, `Either::Right` to the second): one stream to several
/// destinations (alerts to one topic, everything to a table) or a side output by predicate
/// (Flink's side outputs, Kafka Streams' `split().branch()`). Nest it for more than two.
///
/// Both sinks take part in every checkpoint: each starts every epoch and is flushed at every
/// barrier, so an exactly-once sink stays exactly once behind a split. Items keep their order
/// within each sink; a failure of either sink fails the write (and so the job, which restarts
/// from its last checkpoint).
///
/// # Examples
/// ```
/// use ferroflow_core::join::Either;
/// use ferroflow_core::sink::{CollectSink, Sink, SplitSink};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let (alerts, alerts_seen) = CollectSink::with_handle();
/// let (rest, rest_seen) = CollectSink::with_handle();
/// // Amounts above 100 become alert texts; the others go on as they are.
/// let mut sink = SplitSink::new(
///     |amount: u32| if amount > 100 { Either::Left(format!("large: {amount}")) } else { Either::Right(amount) },
///     alerts,
///     rest,
/// );
/// sink.write_batch(vec![5, 500, 7]).await.unwrap();
/// assert_eq!(alerts_seen.take(), ["large: 500"]);
/// assert_eq!(rest_seen.take(), [5, 7]);
/// # });
/// ```
pub struct SplitSink<L, R, F, A, B> {
    route: F,
    left: A,
    right: B,
    types: PhantomData<fn() -> (L, R)>,
}

impl<L, R, F, A, B> std::fmt::Debug for SplitSink<L, R, F, A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitSink").finish_non_exhaustive()
    }
}

impl<L, R, F, A, B> SplitSink<L, R, F, A, B> {
    /// Routes each item with `route`: `Left` items to `left`, `Right` items to `right`.
    pub fn new(route: F, left: A, right: B) -> Self {
        Self { route, left, right, types: PhantomData }
    }
}

impl<T, L, R, F, A, B> Sink<T> for SplitSink<L, R, F, A, B>
where
    T: Send + 'static,
    L: Send + 'static,
    R: Send + 'static,
    F: FnMut(T) -> Either<L, R> + Send + 'static,
    A: Sink<L>,
    B: Sink<R>,
{
    async fn write_batch(&mut self, batch: Vec<T>) -> Result<(), SinkError> {
        let (mut lefts, mut rights) = (Vec::new(), Vec::new());
        for item in batch {
            match (self.route)(item) {
                Either::Left(l) => lefts.push(l),
                Either::Right(r) => rights.push(r),
            }
        }
        if !lefts.is_empty() {
            self.left.write_batch(lefts).await?;
        }
        if !rights.is_empty() {
            self.right.write_batch(rights).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.left.flush().await?;
        self.right.flush().await
    }

    async fn on_idle(&mut self) -> Result<(), SinkError> {
        self.left.on_idle().await?;
        self.right.on_idle().await
    }

    fn begin_epoch(&mut self, epoch: u64) {
        self.left.begin_epoch(epoch);
        self.right.begin_epoch(epoch);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::error::RetryHint;

    /// Logs what the split asks of it, and fails writes once told to.
    struct Recording {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
        fail: bool,
    }

    impl<T: std::fmt::Debug + Send + 'static> Sink<T> for Recording {
        async fn write_batch(&mut self, batch: Vec<T>) -> Result<(), SinkError> {
            self.log.lock().unwrap().push(format!("{} write {batch:?}", self.name));
            if self.fail {
                return Err(SinkError::External { message: "refused".into(), retry: RetryHint::WithBackoff });
            }
            Ok(())
        }
        async fn flush(&mut self) -> Result<(), SinkError> {
            self.log.lock().unwrap().push(format!("{} flush", self.name));
            Ok(())
        }
        async fn on_idle(&mut self) -> Result<(), SinkError> {
            self.log.lock().unwrap().push(format!("{} idle", self.name));
            Ok(())
        }
        fn begin_epoch(&mut self, epoch: u64) {
            self.log.lock().unwrap().push(format!("{} epoch {epoch}", self.name));
        }
    }

    fn split(fail_left: bool) -> (impl Sink<i32>, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let left = Recording { name: "odd", log: Arc::clone(&log), fail: fail_left };
        let right = Recording { name: "even", log: Arc::clone(&log), fail: false };
        let route = |v: i32| if v % 2 != 0 { Either::Left(v) } else { Either::Right(v) };
        (SplitSink::new(route, left, right), log)
    }

    #[tokio::test]
    async fn both_sinks_see_every_epoch_flush_and_idle_tick_and_only_their_items() {
        let (mut sink, log) = split(false);
        sink.begin_epoch(3);
        sink.write_batch(vec![1, 2, 3, 4]).await.unwrap();
        sink.write_batch(vec![6]).await.unwrap();
        sink.on_idle().await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "odd epoch 3",
                "even epoch 3",
                "odd write [1, 3]",
                "even write [2, 4]",
                "even write [6]",
                "odd idle",
                "even idle",
                "odd flush",
                "even flush"
            ]
        );
    }

    #[tokio::test]
    async fn a_failing_sink_fails_the_write() {
        let (mut sink, log) = split(true);
        let err = sink.write_batch(vec![1, 2]).await.unwrap_err();
        assert!(matches!(err, SinkError::External { .. }), "{err:?}");
        assert_eq!(*log.lock().unwrap(), ["odd write [1]"]);
    }
}
