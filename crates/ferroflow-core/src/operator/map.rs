//! Transforms each payload one to one.

use std::marker::PhantomData;

use super::{Context, Operator};
use crate::record::Record;

/// Transforms each payload; key, event time and position are kept.
///
/// # Examples
/// ```
/// use ferroflow_core::operator::Map;
/// use ferroflow_core::{Context, Operator, Record};
/// let mut op = Map::new(|s: &'static str| s.len());
/// let mut out = Vec::new();
/// op.process_batch(&mut vec![Record::new("abc", 0)], &mut Context::default(), &mut out);
/// assert_eq!(out[0].payload, 3);
/// ```
pub struct Map<T, U, F> {
    f: F,
    _t: PhantomData<fn(T) -> U>,
}

impl<T, U, F: FnMut(T) -> U> Map<T, U, F> {
    /// Applies `f` to every payload.
    pub fn new(f: F) -> Self {
        Self { f, _t: PhantomData }
    }
}

impl<T, U, F> std::fmt::Debug for Map<T, U, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Map")
    }
}

impl<T, U, F> Operator for Map<T, U, F>
where
    T: Send + 'static,
    U: Send + 'static,
    F: FnMut(T) -> U + Send + 'static,
{
    type In = T;
    type Out = U;

    #[inline]
    fn process_batch(&mut self, input: &mut Vec<Record<T>>, _ctx: &mut Context, out: &mut Vec<Record<U>>) {
        let f = &mut self.f;
        out.extend(input.drain(..).map(|r| r.map_payload(&mut *f)));
    }

    fn name(&self) -> &'static str {
        "map"
    }

    fn emits_before_exchange(&self, _exchanged: &mut bool) -> bool {
        false // emits only from the records of a batch
    }
}
