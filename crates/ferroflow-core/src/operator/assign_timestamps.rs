//! Sets event time from the payload and generates per-partition watermarks.

use std::marker::PhantomData;

use super::{Context, Operator, Signal};
use crate::dead_letter::{DeadLetterReason, Rejection};
use crate::error::StateError;
use crate::record::{PartitionId, Record, Timestamp};
use crate::state::StateBackend;
use crate::time::{TrackerSnapshot, Watermark, WatermarkStrategy, WatermarkTracker};

/// State namespace of the watermark generator.
const NAMESPACE: &str = "watermarks";

/// Sets each record's event time with `f(payload)` and tracks one watermark per source partition
/// (see [`crate::time`] for the strategy); proposes the combined watermark after every batch and
/// on every idleness tick.
///
/// # Examples
/// ```
/// use ferroflow_core::operator::AssignTimestamps;
/// use ferroflow_core::time::{Watermark, WatermarkStrategy};
/// use ferroflow_core::{Context, Operator, Record};
/// let mut op = AssignTimestamps::new(|ts: &i64| *ts, WatermarkStrategy::monotonous());
/// let mut ctx = Context::default();
/// let mut out = Vec::new();
/// op.process_batch(&mut vec![Record::new(1_000i64, 0)], &mut ctx, &mut out);
/// assert_eq!(out[0].event_time, 1_000);
/// assert_eq!(ctx.take_watermark(), Some(Watermark(999)));
/// ```
pub struct AssignTimestamps<T, F> {
    f: F,
    tracker: WatermarkTracker,
    /// Set by a restore: the next batch restarts every partition's idle timeout.
    restored: bool,
    _t: PhantomData<fn(T)>,
}

impl<T, F: FnMut(&T) -> Timestamp> AssignTimestamps<T, F> {
    /// Uses `f` for event time and `strategy` for watermarks.
    pub fn new(f: F, strategy: WatermarkStrategy) -> Self {
        Self { f, tracker: WatermarkTracker::new(strategy), restored: false, _t: PhantomData }
    }

    /// The watermark tracker (per-partition watermarks, idle partitions).
    pub fn tracker(&self) -> &WatermarkTracker {
        &self.tracker
    }
}

impl<T, F> std::fmt::Debug for AssignTimestamps<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssignTimestamps").field("tracker", &self.tracker).finish()
    }
}

impl<T: Send + 'static, F: FnMut(&T) -> Timestamp + Send + 'static> AssignTimestamps<T, F> {
    fn propose(&mut self, ctx: &mut Context) {
        if self.restored {
            self.restored = false;
            let snapshot = self.tracker.export();
            self.tracker.import(&snapshot, ctx.idle_time());
            // The restored watermark again: the task may not have reached it before the
            // checkpoint (a watermark ceiling held it back), and the tracker proposes only moves.
            ctx.propose_watermark(self.tracker.current());
        }
        if let Some(w) = self.tracker.advance(ctx.idle_time()) {
            ctx.propose_watermark(w);
        }
        let idle = self.tracker.idle_partitions();
        let statuses = self
            .tracker
            .partition_watermarks()
            .into_iter()
            .map(|(partition, w)| crate::metrics::PartitionStatus {
                partition,
                watermark: w.0,
                idle: idle.contains(&partition),
            })
            .collect();
        ctx.report_partitions(statuses);
    }
}

impl<T: Send + 'static, F: FnMut(&T) -> Timestamp + Send + 'static> Operator for AssignTimestamps<T, F> {
    type In = T;
    type Out = T;

    #[inline]
    fn process_batch(&mut self, input: &mut Vec<Record<T>>, ctx: &mut Context, out: &mut Vec<Record<T>>) {
        let now = ctx.idle_time();
        let latest =
            self.tracker.strategy().max_time_ahead_ms().map(|b| ctx.processing_time().saturating_add(b));
        let mut too_far = false;
        // Consecutive records mostly share a partition: look the partition up once per run.
        let mut run: Option<(PartitionId, Timestamp)> = None;
        // One of several copies: the runner gathers every copy's runs and hands them to all.
        let observing = ctx.observing;
        for r in input.iter_mut() {
            r.event_time = (self.f)(&r.payload);
            if latest.is_some_and(|l| r.event_time > l) {
                // Refused below; it must not move the watermark.
                too_far = true;
                continue;
            }
            match &mut run {
                Some((p, max)) if *p == r.position.partition => *max = (*max).max(r.event_time),
                _ => {
                    if let Some((p, max)) = run {
                        match observing {
                            true => ctx.observations.push((p, max)),
                            false => self.tracker.observe(p, max, now),
                        }
                    }
                    run = Some((r.position.partition, r.event_time));
                }
            }
        }
        if let Some((p, max)) = run {
            match observing {
                true => ctx.observations.push((p, max)),
                false => self.tracker.observe(p, max, now),
            }
        }
        if let (true, Some(latest)) = (too_far, latest) {
            refuse_ahead(input, latest, ctx);
        }
        if out.is_empty() {
            std::mem::swap(input, out);
        } else {
            out.append(input);
        }
        if !observing {
            self.propose(ctx);
        }
    }

    fn notes_after_exchange(&self, exchanged: &mut bool) -> bool {
        *exchanged
    }

    fn observe_event_times(&mut self, observations: &[(PartitionId, Timestamp)], ctx: &mut Context) {
        let now = ctx.idle_time();
        for &(p, max) in observations {
            self.tracker.observe(p, max, now);
        }
        self.propose(ctx);
    }

    fn on_signal(&mut self, signal: &Signal, ctx: &mut Context) {
        match signal {
            Signal::PartitionsAssigned(ps) => {
                for p in ps {
                    self.tracker.register(*p, ctx.idle_time());
                }
            }
            Signal::PartitionsRevoked(ps) => {
                for p in ps {
                    self.tracker.remove(*p);
                }
            }
            Signal::PartitionFinished(p) => self.tracker.finish(*p),
            Signal::EndOfInput => self.tracker.finish_all(),
            Signal::PartitionsActive(ps) => {
                // Only keeps partitions from going idle; judging idleness here, before the
                // records of the batch this came with are observed, could idle one of them.
                for p in ps {
                    self.tracker.touch(*p, ctx.idle_time());
                }
                return;
            }
            Signal::Tick => {}
        }
        self.propose(ctx);
        if matches!(signal, Signal::EndOfInput) {
            ctx.propose_watermark(Watermark::MAX);
        }
    }

    fn snapshot_state(&mut self, state: &mut dyn StateBackend) -> Result<(), StateError> {
        let bytes = postcard::to_stdvec(&self.tracker.export())
            .map_err(|e| StateError::Corrupt { what: format!("watermark state: {e}") })?;
        state.put(NAMESPACE, b"tracker", &bytes)
    }

    fn restore_state(&mut self, state: &dyn StateBackend) -> Result<(), StateError> {
        if let Some(bytes) = state.get(NAMESPACE, b"tracker")? {
            let snapshot: TrackerSnapshot = postcard::from_bytes(&bytes)
                .map_err(|e| StateError::Corrupt { what: format!("watermark state: {e}") })?;
            // Processing time is not known here; idle timeouts restart from the first batch.
            self.tracker.import(&snapshot, i64::MAX);
            self.restored = true;
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "assign_timestamps"
    }

    fn emits_before_exchange(&self, _exchanged: &mut bool) -> bool {
        false // emits only from the records of a batch
    }
}

/// Dead-letters the records of `batch` stamped after `latest` (processing time plus the strategy's
/// bound), keeping the others in order.
#[cold]
fn refuse_ahead<T>(batch: &mut Vec<Record<T>>, latest: Timestamp, ctx: &mut Context) {
    let now = ctx.processing_time();
    batch.retain(|r| {
        if r.event_time <= latest {
            return true;
        }
        let ahead = r.event_time.saturating_sub(now);
        let bound = latest.saturating_sub(now);
        ctx.reject(
            r.position,
            Some(r.event_time),
            Rejection::new(
                DeadLetterReason::EventTimeOutOfRange,
                format!(
                    "event time {} is {ahead} ms ahead of processing time {now}, beyond the bound of {bound} ms",
                    r.event_time
                ),
            ),
        );
        false
    });
}
