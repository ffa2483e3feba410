//! Turns each payload into zero or more payloads.

use std::marker::PhantomData;

use super::{Context, Operator};
use crate::record::Record;

/// Turns each payload into zero or more payloads. An input that yields nothing is counted as
/// filtered; outputs beyond the first are counted as expanded, so the accounting identity holds.
///
/// # Examples
/// ```
/// use ferroflow_core::operator::FlatMap;
/// use ferroflow_core::{Context, Operator, Record};
/// let mut op = FlatMap::new(|s: String| s.split(' ').map(str::to_owned).collect::<Vec<_>>());
/// let mut out = Vec::new();
/// op.process_batch(&mut vec![Record::new("a b c".to_string(), 5)], &mut Context::default(), &mut out);
/// assert_eq!(out.len(), 3);
/// assert_eq!(out[2].event_time, 5);
/// ```
pub struct FlatMap<T, I, F> {
    f: F,
    _t: PhantomData<fn(T) -> I>,
}

impl<T, I: IntoIterator, F: FnMut(T) -> I> FlatMap<T, I, F> {
    /// Applies `f` and flattens its output.
    pub fn new(f: F) -> Self {
        Self { f, _t: PhantomData }
    }
}

impl<T, I, F> std::fmt::Debug for FlatMap<T, I, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlatMap")
    }
}

impl<T, I, F> Operator for FlatMap<T, I, F>
where
    T: Send + 'static,
    I: IntoIterator + 'static,
    I::Item: Send + 'static,
    F: FnMut(T) -> I + Send + 'static,
{
    type In = T;
    type Out = I::Item;

    fn process_batch(
        &mut self,
        input: &mut Vec<Record<T>>,
        ctx: &mut Context,
        out: &mut Vec<Record<I::Item>>,
    ) {
        let (mut empty, mut extra) = (0u64, 0u64);
        let (mut second_empty, mut second_extra) = (0u64, 0u64);
        for r in input.drain(..) {
            let (key, event_time, position) = (r.key, r.event_time, r.position);
            let mut n = 0u64;
            for payload in (self.f)(r.payload) {
                out.push(Record { key: key.clone(), event_time, position, payload });
                n += 1;
            }
            let (e, x) = if n == 0 { (1, 0) } else { (0, n - 1) };
            empty += e;
            extra += x;
            if ctx.is_second_input(position) {
                second_empty += e;
                second_extra += x;
            }
        }
        ctx.count_filtered(empty);
        ctx.count_expanded(extra);
        ctx.count_second_input(|c| &mut c.records_filtered, second_empty);
        ctx.count_second_input(|c| &mut c.records_expanded, second_extra);
    }

    fn name(&self) -> &'static str {
        "flat_map"
    }

    fn emits_before_exchange(&self, _exchanged: &mut bool) -> bool {
        false // emits only from the records of a batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_outputs_count_as_filtered_and_extra_outputs_as_expanded() {
        let mut op = FlatMap::new(|n: usize| vec![n; n]);
        let mut ctx = Context::default();
        let mut out = Vec::new();
        let mut input = vec![Record::new(0usize, 1), Record::new(3usize, 2), Record::new(1usize, 3)];
        op.process_batch(&mut input, &mut ctx, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(ctx.counters.records_filtered, 1);
        assert_eq!(ctx.counters.records_expanded, 2);
        // in + expanded == out + filtered
        assert_eq!(3 + 2, out.len() as u64 + 1);
        assert!(out.iter().filter(|r| r.payload == 3).all(|r| r.event_time == 2));
    }
}
