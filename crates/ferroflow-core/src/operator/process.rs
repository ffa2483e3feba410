//! The general step: full access to each record, any number of outputs, and dead letters.

use std::marker::PhantomData;

use super::{Context, Operator};
use crate::dead_letter::Rejection;
use crate::record::Record;

/// Where a [`Process`] function sends its results: the main output or the dead-letter side output.
#[derive(Debug)]
pub struct ProcessOutput<'a, T, U> {
    out: &'a mut Vec<Record<U>>,
    ctx: &'a mut Context,
    emitted: u64,
    _t: PhantomData<fn(T)>,
}

impl<T, U> ProcessOutput<'_, T, U> {
    /// Emits a record downstream.
    pub fn emit(&mut self, record: Record<U>) {
        self.emitted += 1;
        self.out.push(record);
    }

    /// Sends `input` to the dead-letter output with `rejection`'s reason and detail.
    pub fn reject(&mut self, input: &Record<T>, rejection: Rejection) {
        self.ctx.reject(input.position, Some(input.event_time), rejection);
        // A rejected input counts as handled, not as a dropped one.
        self.emitted += 1;
    }

    /// Processing time, for functions that need it.
    pub fn processing_time(&self) -> i64 {
        self.ctx.processing_time()
    }
}

/// Runs `f(record, output)` for every record; `f` may emit any number of records or reject the
/// input to the dead-letter output. An input that neither emits nor is rejected counts as filtered.
///
/// # Examples
/// ```
/// use ferroflow_core::operator::Process;
/// use ferroflow_core::{Context, DeadLetterReason, Operator, Record, Rejection};
/// let mut op = Process::new(|r: ferroflow_core::Record<String>, out: &mut ferroflow_core::operator::ProcessOutput<'_, String, usize>| {
///     if r.payload.is_empty() {
///         out.reject(&r, Rejection::contract("payload must not be empty"));
///     } else {
///         let n = r.payload.len();
///         out.emit(r.with_payload(n));
///     }
/// });
/// let mut ctx = Context::default();
/// let mut out = Vec::new();
/// op.process_batch(&mut vec![Record::new("hey".into(), 0), Record::new(String::new(), 0)], &mut ctx, &mut out);
/// assert_eq!(out[0].payload, 3);
/// assert_eq!(ctx.take_dead_letters()[0].reason, DeadLetterReason::ContractViolation);
/// ```
pub struct Process<T, U, F> {
    f: F,
    _t: PhantomData<fn(T) -> U>,
}

impl<T, U, F> Process<T, U, F>
where
    F: FnMut(Record<T>, &mut ProcessOutput<'_, T, U>),
{
    /// Runs `f` on every record.
    pub fn new(f: F) -> Self {
        Self { f, _t: PhantomData }
    }
}

impl<T, U, F> std::fmt::Debug for Process<T, U, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Process")
    }
}

impl<T, U, F> Operator for Process<T, U, F>
where
    T: Send + 'static,
    U: Send + 'static,
    F: FnMut(Record<T>, &mut ProcessOutput<'_, T, U>) + Send + 'static,
{
    type In = T;
    type Out = U;

    fn process_batch(&mut self, input: &mut Vec<Record<T>>, ctx: &mut Context, out: &mut Vec<Record<U>>) {
        let (mut empty, mut extra) = (0u64, 0u64);
        let (mut second_empty, mut second_extra) = (0u64, 0u64);
        for r in input.drain(..) {
            let second = ctx.is_second_input(r.position);
            let mut po = ProcessOutput { out: &mut *out, ctx: &mut *ctx, emitted: 0, _t: PhantomData };
            (self.f)(r, &mut po);
            let (e, x) = match po.emitted {
                0 => (1, 0),
                n => (0, n - 1),
            };
            empty += e;
            extra += x;
            if second {
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
        "process"
    }

    fn emits_before_exchange(&self, _exchanged: &mut bool) -> bool {
        false // emits only from the records of a batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::DeadLetterReason;

    #[test]
    fn rejections_are_dead_letters_not_filtered_and_silence_is_filtered() {
        let mut op = Process::new(|r: Record<String>, out: &mut ProcessOutput<'_, String, String>| {
            match r.payload.as_str() {
                "bad" => out.reject(&r, Rejection::contract("bad payload")),
                "drop" => {}
                _ => {
                    out.emit(r.with_payload(r.payload.clone()));
                    out.emit(r.with_payload(r.payload.to_uppercase()));
                }
            }
        });
        let mut ctx = Context::default();
        let mut out = Vec::new();
        let at = |o| crate::record::SourcePosition::new(0, o);
        let mut input = vec![
            Record::new("ok".to_string(), 0).with_position(at(0)),
            Record::new("bad".to_string(), 7).with_position(at(1)),
            Record::new("drop".to_string(), 0).with_position(at(2)),
        ];
        ctx.set_originals(vec![(at(1), bytes::Bytes::from_static(b"bad"))]);
        op.process_batch(&mut input, &mut ctx, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(ctx.counters.records_filtered, 1);
        assert_eq!(ctx.counters.records_expanded, 1);
        let dl = ctx.take_dead_letters();
        assert_eq!(dl.len(), 1);
        assert_eq!(dl[0].reason, DeadLetterReason::ContractViolation);
        assert_eq!(dl[0].event_time, Some(7));
        assert_eq!(&dl[0].original[..], b"bad");
        assert_eq!(ctx.counters.records_dead_lettered(), 1);
    }
}
