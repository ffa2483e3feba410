//! [`OperatorHarness`]: one operator chain, driven batch by batch as the runner drives it.

use crate::dead_letter::DeadLetter;
use crate::error::StateError;
use crate::metrics::LocalCounters;
use crate::operator::{Context, IntoOperator, Operator, Signal};
use crate::record::{PartitionId, Record, Timestamp};
use crate::state::StateBackend;
use crate::time::Watermark;

/// One thing a chain emitted, in the order it was emitted.
#[derive(Debug, PartialEq)]
pub enum Emitted<'a, T> {
    /// A result record.
    Output(&'a Record<T>),
    /// A dead letter.
    DeadLetter(&'a DeadLetter),
    /// The chain's watermark moved forward to this value (and was delivered to it).
    Watermark(Watermark),
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    Output(usize),
    DeadLetter(usize),
    Watermark(Watermark),
}

/// Drives one operator chain: push batches, signals and watermarks, then look at its outputs,
/// dead letters, counters and state.
///
/// # Examples
/// ```
/// use ferroflow_core::prelude::*;
/// use ferroflow_core::operator::Signal;
/// use ferroflow_core::testing::OperatorHarness;
///
/// let job = Stream::<i64>::new()
///     .assign_timestamps(|t| *t, WatermarkStrategy::monotonous())
///     .key_by(|_| Key::from("all"))
///     .window(WindowSpec::tumbling(Duration::from_millis(10)).unwrap(), Count);
/// let mut h = OperatorHarness::new(job);
/// h.process(vec![Record::new(1, 0), Record::new(4, 0), Record::new(12, 0)]);
/// assert_eq!(h.watermark(), Watermark(11), "monotonous: the highest time seen, minus 1 ms");
/// assert_eq!(h.payloads().iter().map(|r| r.value).collect::<Vec<_>>(), vec![2], "[0, 10) fired");
/// h.signal(&Signal::EndOfInput);
/// assert_eq!(h.payloads().len(), 2, "[10, 20) fired at the end");
/// assert_eq!(h.counters().records_windowed, 3);
/// ```
#[derive(Debug)]
pub struct OperatorHarness<O: Operator> {
    op: O,
    ctx: Context,
    watermark: Watermark,
    buf: Vec<Record<O::Out>>,
    outputs: Vec<Record<O::Out>>,
    dead_letters: Vec<DeadLetter>,
    log: Vec<Entry>,
}

impl<O: Operator> OperatorHarness<O> {
    /// A harness around `job` (an operator or a [`Stream`](crate::Stream)) at processing time 0.
    pub fn new(job: impl IntoOperator<Op = O>) -> Self {
        Self {
            op: job.into_operator(),
            ctx: Context::new(0),
            watermark: Watermark::MIN,
            buf: Vec::new(),
            outputs: Vec::new(),
            dead_letters: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Runs one batch through the chain, then delivers the watermark it proposed, if it moved.
    ///
    /// # Panics
    /// If the chain leaves records in its input (an operator must drain it).
    #[allow(clippy::panic)]
    pub fn process(&mut self, mut records: Vec<Record<O::In>>) -> &mut Self {
        self.op.process_batch(&mut records, &mut self.ctx, &mut self.buf);
        if !records.is_empty() {
            panic!("the chain left {} records in its input: an operator must drain it", records.len());
        }
        self.settle();
        self
    }

    /// Delivers a source signal (a [`Signal::Tick`] also fires processing-time timers, as the
    /// runner's tick does), then the watermark it made the chain propose, if it moved.
    pub fn signal(&mut self, signal: &Signal) -> &mut Self {
        self.op.on_signal(signal, &mut self.ctx);
        if matches!(signal, Signal::Tick) {
            // As the runner's tick: processing-time timers fire.
            let now = self.ctx.processing_time();
            self.op.on_processing_time(now, &mut self.ctx, &mut self.buf);
        }
        self.settle();
        self
    }

    /// Every partition in `partitions` finished, then the input ended (the final watermark).
    pub fn finish(&mut self, partitions: &[PartitionId]) -> &mut Self {
        for p in partitions {
            self.signal(&Signal::PartitionFinished(*p));
        }
        self.signal(&Signal::EndOfInput)
    }

    /// Delivers watermark `w` directly (for chains without a watermark generator), if it moves
    /// the chain's watermark forward.
    pub fn advance_watermark(&mut self, w: Watermark) -> &mut Self {
        self.deliver(w);
        self
    }

    /// Counts the chain's keyed state against `budget` (spilling what does not fit), as a
    /// runner with [`state_budget`](crate::runtime::RunnerBuilder::state_budget) does.
    pub fn attach_budget(&mut self, budget: &crate::state::StateBudget) -> &mut Self {
        self.op.attach_budget(budget);
        self
    }

    /// Sets processing time (what operators read from their context) and fires what it makes
    /// due, as the runner's tick does: processing-time timers.
    pub fn set_processing_time(&mut self, now_ms: Timestamp) -> &mut Self {
        self.ctx.set_processing_time(now_ms);
        self.op.on_processing_time(now_ms, &mut self.ctx, &mut self.buf);
        self.settle();
        self
    }

    /// The last watermark delivered to the chain.
    pub fn watermark(&self) -> Watermark {
        self.watermark
    }

    /// Every result record emitted so far, in order.
    pub fn outputs(&self) -> &[Record<O::Out>] {
        &self.outputs
    }

    /// The payloads of every result emitted so far, in order.
    pub fn payloads(&self) -> Vec<O::Out>
    where
        O::Out: Clone,
    {
        self.outputs.iter().map(|r| r.payload.clone()).collect()
    }

    /// Every dead letter so far, in order.
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }

    /// Outputs, dead letters and watermark moves, in the order they happened.
    pub fn emitted(&self) -> impl Iterator<Item = Emitted<'_, O::Out>> {
        self.log.iter().filter_map(|e| match *e {
            Entry::Output(i) => self.outputs.get(i).map(Emitted::Output),
            Entry::DeadLetter(i) => self.dead_letters.get(i).map(Emitted::DeadLetter),
            Entry::Watermark(w) => Some(Emitted::Watermark(w)),
        })
    }

    /// The record counters so far (records windowed, filtered, deduplicated, dead-lettered, …).
    pub fn counters(&self) -> &LocalCounters {
        &self.ctx.counters
    }

    /// Writes the chain's state into `state`, as a checkpoint does.
    pub fn snapshot(&mut self, state: &mut dyn StateBackend) -> Result<(), StateError> {
        self.op.snapshot_state(state)
    }

    /// Replaces the chain's state with what `state` holds, as a restore does.
    pub fn restore(&mut self, state: &dyn StateBackend) -> Result<(), StateError> {
        self.op.restore_state(state)
    }

    /// The chain itself.
    pub fn operator(&self) -> &O {
        &self.op
    }

    /// The chain itself, mutably.
    pub fn operator_mut(&mut self) -> &mut O {
        &mut self.op
    }

    /// What the runner does after each event: collect what was emitted, then deliver a proposed
    /// watermark that moved forward and collect what that emitted.
    fn settle(&mut self) {
        self.collect();
        if let Some(w) = self.ctx.take_watermark() {
            self.deliver(w);
        }
    }

    fn deliver(&mut self, w: Watermark) {
        if w > self.watermark {
            self.watermark = w;
            self.log.push(Entry::Watermark(w));
            self.op.on_watermark(w, &mut self.ctx, &mut self.buf);
            self.collect();
        }
    }

    /// Takes what the chain emitted, chunk by chunk as the runner does when a firing is larger
    /// than one chunk.
    fn collect(&mut self) {
        loop {
            for d in self.ctx.take_dead_letters() {
                self.log.push(Entry::DeadLetter(self.dead_letters.len()));
                self.dead_letters.push(d);
            }
            for r in self.buf.drain(..) {
                self.log.push(Entry::Output(self.outputs.len()));
                self.outputs.push(r);
            }
            if !self.op.has_pending_output() {
                return;
            }
            self.op.resume_output(&mut self.ctx, &mut self.buf);
        }
    }
}
