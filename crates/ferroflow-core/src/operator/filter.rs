//! Keeps the records a predicate accepts; counts the rest as filtered.

use std::marker::PhantomData;

use super::{Context, Operator};
use crate::record::Record;

/// Keeps records whose payload satisfies a predicate; every dropped record is counted as filtered.
///
/// # Examples
/// ```
/// use ferroflow_core::operator::Filter;
/// use ferroflow_core::{Context, Operator, Record};
/// let mut op = Filter::new(|x: &i32| x % 2 == 0);
/// let mut ctx = Context::default();
/// let mut out = Vec::new();
/// op.process_batch(&mut vec![Record::new(1, 0), Record::new(2, 0)], &mut ctx, &mut out);
/// assert_eq!(out.len(), 1);
/// assert_eq!(ctx.counters_mut().records_filtered, 1);
/// ```
pub struct Filter<T, F> {
    f: F,
    _t: PhantomData<fn(T)>,
}

impl<T, F: FnMut(&T) -> bool> Filter<T, F> {
    /// Keeps records for which `f` returns true.
    pub fn new(f: F) -> Self {
        Self { f, _t: PhantomData }
    }
}

impl<T, F> std::fmt::Debug for Filter<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Filter")
    }
}

impl<T: Send + 'static, F: FnMut(&T) -> bool + Send + 'static> Operator for Filter<T, F> {
    type In = T;
    type Out = T;

    #[inline]
    fn process_batch(&mut self, input: &mut Vec<Record<T>>, ctx: &mut Context, out: &mut Vec<Record<T>>) {
        let before = input.len();
        let second_before = ctx.second_input_share(input);
        let start = out.len();
        let f = &mut self.f;
        out.extend(input.drain(..).filter(|r| f(&r.payload)));
        let kept = out.len() - start;
        ctx.count_filtered((before - kept) as u64);
        let second_kept = ctx.second_input_share(out.get(start..).unwrap_or_default());
        ctx.count_second_input(|c| &mut c.records_filtered, second_before.saturating_sub(second_kept));
    }

    fn name(&self) -> &'static str {
        "filter"
    }

    fn emits_before_exchange(&self, _exchanged: &mut bool) -> bool {
        false // emits only from the records of a batch
    }
}
