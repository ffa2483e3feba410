//! The head of every chain: passes source records through unchanged.

use std::marker::PhantomData;

use super::{Context, Operator};
use crate::record::Record;

/// The first step of a chain: hands source records on unchanged.
///
/// # Examples
/// ```
/// use ferroflow_core::operator::SourceInput;
/// use ferroflow_core::{Context, Operator, Record};
/// let mut op = SourceInput::<u8>::new();
/// let mut out = Vec::new();
/// op.process_batch(&mut vec![Record::new(7u8, 0)], &mut Context::default(), &mut out);
/// assert_eq!(out[0].payload, 7);
/// ```
#[derive(Debug)]
pub struct SourceInput<T>(PhantomData<fn() -> T>);

impl<T> SourceInput<T> {
    /// The identity step.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for SourceInput<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + 'static> Operator for SourceInput<T> {
    type In = T;
    type Out = T;

    #[inline]
    fn process_batch(&mut self, input: &mut Vec<Record<T>>, _ctx: &mut Context, out: &mut Vec<Record<T>>) {
        if out.is_empty() {
            std::mem::swap(input, out);
        } else {
            out.append(input);
        }
    }

    fn name(&self) -> &'static str {
        "source"
    }

    fn emits_before_exchange(&self, _exchanged: &mut bool) -> bool {
        false // emits only from the records of a batch
    }
}
