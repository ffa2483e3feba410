//! Two operators fused into one: the output buffer of the first is the input of the second.

use super::{Context, Operator, Signal};
use crate::error::StateError;
use crate::record::Record;
use crate::state::StateBackend;
use crate::time::Watermark;

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
}

impl<A: Operator, B: Operator<In = A::Out>> Chain<A, B> {
    /// Fuses `a` and `b`.
    pub fn new(a: A, b: B) -> Self {
        let a_consumes = a.consumes_records();
        Self { a, b, mid: Vec::new(), a_consumes }
    }

    fn drain_mid(&mut self, ctx: &mut Context, out: &mut Vec<Record<B::Out>>) {
        if !self.mid.is_empty() {
            let (b, mid) = (&mut self.b, &mut self.mid);
            ctx.with_counting(!self.a_consumes, |ctx| b.process_batch(mid, ctx, out));
            self.mid.clear();
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
        self.a.process_batch(input, ctx, &mut self.mid);
        self.drain_mid(ctx, out);
    }

    fn on_signal(&mut self, signal: &Signal, ctx: &mut Context) {
        self.a.on_signal(signal, ctx);
        let b = &mut self.b;
        ctx.with_counting(!self.a_consumes, |ctx| b.on_signal(signal, ctx));
    }

    fn on_watermark(&mut self, watermark: Watermark, ctx: &mut Context, out: &mut Vec<Record<B::Out>>) {
        self.a.on_watermark(watermark, ctx, &mut self.mid);
        self.drain_mid(ctx, out);
        let b = &mut self.b;
        ctx.with_counting(!self.a_consumes, |ctx| b.on_watermark(watermark, ctx, out));
    }

    fn snapshot_state(&mut self, state: &mut dyn StateBackend) -> Result<(), StateError> {
        self.a.snapshot_state(state)?;
        self.b.snapshot_state(state)
    }

    fn restore_state(&mut self, state: &dyn StateBackend) -> Result<(), StateError> {
        self.a.restore_state(state)?;
        self.b.restore_state(state)
    }

    fn consumes_records(&self) -> bool {
        self.a_consumes || self.b.consumes_records()
    }

    fn name(&self) -> &'static str {
        "chain"
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
        Ok(())
    }
}
