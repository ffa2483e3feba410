//! Two operators fused into one: the output buffer of the first is the input of the second.

use super::{Context, ExchangePorts, Operator, Signal};
use crate::error::StateError;
use crate::record::{Key, PartitionId, Record, Timestamp};
use crate::state::StateBackend;
use crate::time::Watermark;

/// Records of room a step's output buffer keeps between batches (the rest goes back).
const MID_KEPT: usize = 1 << 16;

/// `A` then `B`, fused: one buffer between them, reused across batches, no channel.
///
/// # Examples
/// ```
/// use ferroflow_core::operator::{Chain, Filter, Map};
/// use ferroflow_core::{Context, Operator, Record};
/// let mut chain = Chain::new(Filter::new(|x: &i64| *x > 1), Map::new(|x: i64| x * 10));
/// let mut input = vec![Record::new(1i64, 0), Record::new(2, 0)];
/// let mut out = Vec::new();
/// chain.process_batch(&mut input, &mut Context::default(), &mut out);
/// assert_eq!(out.iter().map(|r| r.payload).collect::<Vec<_>>(), vec![20]);
/// ```
#[derive(Debug)]
pub struct Chain<A: Operator, B: Operator<In = A::Out>> {
    a: A,
    b: B,
    mid: Vec<Record<A::Out>>,
    a_consumes: bool,
    /// `a` is a single step (step 0) whose counts this chain records; a nested chain counts its own.
    a_single: bool,
    /// Step index of `b` within the whole chain.
    b_index: usize,
    /// What `b` gets once `a` has emitted everything it fired for it: `a` emits a large firing in
    /// chunks, and each row must reach `b` before the watermark (or time) that fired it.
    held: Option<Held>,
}

/// A watermark or processing time held back from a chain's second step.
#[derive(Debug, Clone, Copy)]
enum Held {
    Watermark(Watermark),
    Time(Timestamp),
}

impl<A: Operator, B: Operator<In = A::Out>> Chain<A, B> {
    /// Fuses `a` and `b`.
    pub fn new(a: A, b: B) -> Self {
        let a_consumes = a.consumes_records();
        let (a_single, b_index) = (a.steps() == 1, a.steps());
        Self { a, b, mid: Vec::new(), a_consumes, a_single, b_index, held: None }
    }

    /// The last step, to set its id.
    pub(crate) fn last_mut(&mut self) -> &mut B {
        &mut self.b
    }

    fn drain_mid(&mut self, ctx: &mut Context, out: &mut Vec<Record<B::Out>>) {
        // A connected key step runs for every batch, empty or not: the other copies wait for it.
        if !self.mid.is_empty() || self.b.runs_every_batch() {
            let (b, mid) = (&mut self.b, &mut self.mid);
            let (taken, before) = (mid.len() as u64, out.len());
            ctx.with_counting(!self.a_consumes, |ctx| b.process_batch(mid, ctx, out));
            ctx.count_step(self.b_index, taken, (out.len() - before) as u64);
            self.mid.clear();
            // A window that fired for millions of keys must not leave its rows' room held.
            if self.mid.capacity() > MID_KEPT.saturating_mul(4) {
                self.mid.shrink_to(MID_KEPT);
            }
        }
    }

    /// Takes the rest of what `a` holds back into `mid` at once: a connected key step after it
    /// must trade in the same rounds as its copies, whatever each copy's windows fired.
    fn complete_a(&mut self, ctx: &mut Context) {
        while self.a.has_pending_output() {
            let before = self.mid.len();
            self.a.resume_output(ctx, &mut self.mid);
            self.count_a(ctx, 0, before);
        }
    }

    /// Emits everything the chain holds back (a call other than `resume_output` reached it).
    fn finish_pending(&mut self, ctx: &mut Context, out: &mut Vec<Record<B::Out>>) {
        while self.has_pending_output() {
            self.resume_output(ctx, out);
        }
    }

    /// Hands `b` the watermark or time that `a` fired at, once `a`'s rows of it reached `b`.
    fn release(&mut self, held: Held, ctx: &mut Context, out: &mut Vec<Record<B::Out>>) {
        let (b, before) = (&mut self.b, out.len());
        match held {
            Held::Watermark(w) => ctx.with_counting(!self.a_consumes, |ctx| b.on_watermark(w, ctx, out)),
            Held::Time(now) if b.fires_on_processing_time() => {
                ctx.with_counting(!self.a_consumes, |ctx| b.on_processing_time(now, ctx, out));
            }
            Held::Time(_) => return,
        }
        ctx.count_step(self.b_index, 0, (out.len() - before) as u64);
    }

    /// After `a` fired: its rows so far go through `b`; `b` gets `held` now, or once `a` has
    /// emitted the rest (a connected key step after `a` takes everything at once).
    fn after_a_fired(&mut self, held: Held, ctx: &mut Context, out: &mut Vec<Record<B::Out>>) {
        if self.b.runs_every_batch() {
            self.complete_a(ctx);
        }
        self.drain_mid(ctx, out);
        if self.a.has_pending_output() {
            self.held = Some(held);
        } else {
            self.release(held, ctx, out);
        }
    }

    /// Counts what step 0 emitted into `mid` since it held `before` records.
    fn count_a(&self, ctx: &mut Context, records_in: usize, before: usize) {
        if self.a_single {
            ctx.count_step(0, records_in as u64, (self.mid.len() - before) as u64);
        }
    }
}

impl<A: Operator, B: Operator<In = A::Out>> Operator for Chain<A, B> {
    type In = A::In;
    type Out = B::Out;

    #[inline]
    fn process_batch(
        &mut self,
        input: &mut Vec<Record<A::In>>,
        ctx: &mut Context,
        out: &mut Vec<Record<B::Out>>,
    ) {
        self.finish_pending(ctx, out);
        let (records_in, before) = (input.len(), self.mid.len());
        self.a.process_batch(input, ctx, &mut self.mid);
        self.count_a(ctx, records_in, before);
        self.drain_mid(ctx, out);
    }

    fn on_signal(&mut self, signal: &Signal, ctx: &mut Context) {
        self.a.on_signal(signal, ctx);
        let b = &mut self.b;
        ctx.with_counting(!self.a_consumes, |ctx| b.on_signal(signal, ctx));
    }

    fn on_watermark(&mut self, watermark: Watermark, ctx: &mut Context, out: &mut Vec<Record<B::Out>>) {
        self.finish_pending(ctx, out);
        let before = self.mid.len();
        self.a.on_watermark(watermark, ctx, &mut self.mid);
        self.count_a(ctx, 0, before);
        self.after_a_fired(Held::Watermark(watermark), ctx, out);
    }

    fn has_pending_output(&self) -> bool {
        self.a.has_pending_output() || self.held.is_some() || self.b.has_pending_output()
    }

    fn resume_output(&mut self, ctx: &mut Context, out: &mut Vec<Record<B::Out>>) {
        if self.a.has_pending_output() {
            let before = self.mid.len();
            self.a.resume_output(ctx, &mut self.mid);
            self.count_a(ctx, 0, before);
            self.drain_mid(ctx, out);
            if self.a.has_pending_output() {
                return;
            }
        }
        if let Some(held) = self.held.take() {
            self.release(held, ctx, out);
        } else if self.b.has_pending_output() {
            let (b, before) = (&mut self.b, out.len());
            ctx.with_counting(!self.a_consumes, |ctx| b.resume_output(ctx, out));
            ctx.count_step(self.b_index, 0, (out.len() - before) as u64);
        }
    }

    fn on_processing_time(&mut self, now: Timestamp, ctx: &mut Context, out: &mut Vec<Record<B::Out>>) {
        self.finish_pending(ctx, out);
        // Every copy of a chain has the same steps: all of them, or none, run a key step here.
        if self.a.fires_on_processing_time() {
            let before = self.mid.len();
            self.a.on_processing_time(now, ctx, &mut self.mid);
            self.count_a(ctx, 0, before);
            self.after_a_fired(Held::Time(now), ctx, out);
        } else {
            self.release(Held::Time(now), ctx, out);
        }
    }

    fn fires_on_processing_time(&self) -> bool {
        self.a.fires_on_processing_time() || self.b.fires_on_processing_time()
    }

    fn attach_budget(&mut self, budget: &crate::state::StateBudget) {
        self.a.attach_budget(budget);
        self.b.attach_budget(budget);
    }

    fn snapshot_state(&mut self, state: &mut dyn StateBackend) -> Result<(), StateError> {
        self.a.snapshot_state(state)?;
        self.b.snapshot_state(state)
    }

    fn restore_state(&mut self, state: &dyn StateBackend) -> Result<(), StateError> {
        // What a firing before the restore held back belongs to the state being replaced.
        self.held = None;
        self.mid.clear();
        self.a.restore_state(state)?;
        self.b.restore_state(state)
    }

    fn consumes_records(&self) -> bool {
        self.a_consumes || self.b.consumes_records()
    }

    fn name(&self) -> &'static str {
        "chain"
    }

    fn steps(&self) -> usize {
        self.a.steps() + self.b.steps()
    }

    fn step_names(&self, names: &mut Vec<&'static str>) {
        self.a.step_names(names);
        self.b.step_names(names);
    }

    fn state_ids(&self, ids: &mut Vec<String>) {
        self.a.state_ids(ids);
        self.b.state_ids(ids);
    }

    fn splits_by_key(&self) -> bool {
        self.a.splits_by_key() && self.b.splits_by_key()
    }

    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        self.a.retain_keys(keep);
        self.b.retain_keys(keep);
    }

    fn connect_exchanges(&mut self, ports: &mut ExchangePorts<'_>) {
        self.a.connect_exchanges(ports);
        self.b.connect_exchanges(ports);
    }

    fn runs_every_batch(&self) -> bool {
        self.a.runs_every_batch() || self.b.runs_every_batch()
    }

    fn notes_after_exchange(&self, exchanged: &mut bool) -> bool {
        // Both halves walk, in order: the second sees whether the first passed an exchange.
        let a = self.a.notes_after_exchange(exchanged);
        let b = self.b.notes_after_exchange(exchanged);
        a || b
    }

    fn emits_before_exchange(&self, exchanged: &mut bool) -> bool {
        let a = self.a.emits_before_exchange(exchanged);
        let b = self.b.emits_before_exchange(exchanged);
        a || b
    }

    fn observe_event_times(&mut self, observations: &[(PartitionId, Timestamp)], ctx: &mut Context) {
        self.a.observe_event_times(observations, ctx);
        self.b.observe_event_times(observations, ctx);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::operator::{Filter, KeyBy};
    use crate::window::{Count, WindowOperator, WindowSpec};

    #[test]
    fn steps_after_a_window_are_outside_the_record_accounting() -> Result<(), crate::ConfigError> {
        let window = WindowOperator::new("w", WindowSpec::tumbling(Duration::from_millis(10))?, Count);
        let keyed = Chain::new(KeyBy::new(|_: &&'static str| crate::Key::from("k")), window);
        // The filter after the window drops result rows; they must not count as filtered records.
        let mut chain = Chain::new(keyed, Filter::new(|_: &crate::window::WindowResult<u64>| false));
        assert!(chain.consumes_records());
        let mut ctx = Context::default();
        let mut out = Vec::new();
        chain.process_batch(&mut vec![Record::new("a", 1), Record::new("b", 2)], &mut ctx, &mut out);
        chain.on_watermark(Watermark(100), &mut ctx, &mut out);
        assert!(out.is_empty());
        assert_eq!(ctx.counters.records_windowed, 2);
        assert_eq!(ctx.counters.records_filtered, 0, "result rows are not source records");
        assert_eq!(ctx.counters.window_rows_emitted, 1);
        let mut names = Vec::new();
        chain.step_names(&mut names);
        assert_eq!(names, vec!["key_by", "window", "filter"]);
        let counts: Vec<(u64, u64)> =
            ctx.step_counts().iter().map(|s| (s.records_in, s.records_out)).collect();
        assert_eq!(counts, vec![(2, 2), (2, 1), (1, 0)], "per step: in and out");
        Ok(())
    }
}
