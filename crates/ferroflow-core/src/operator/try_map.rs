//! A fallible map: `Ok` results go on, `Err` results become dead letters.

use std::marker::PhantomData;

use super::{Context, Operator};
use crate::dead_letter::Rejection;
use crate::record::Record;

/// Runs a fallible step: `Ok(u)` continues downstream as the new payload, `Err(e)` goes to the
/// dead-letter output with `e`'s reason and detail, the record's position and its original bytes.
///
/// The error side is typed: any `E: Into<Rejection>` works, so a step can return its own error
/// enum and decide per variant which dead-letter reason applies.
///
/// # Examples
/// ```
/// use bytes::Bytes;
/// use ferroflow_core::operator::TryMap;
/// use ferroflow_core::{Context, DeadLetterReason, Operator, Record, Rejection, SourcePosition};
/// let mut op = TryMap::new(|b: &Bytes| {
///     std::str::from_utf8(b).map_err(|e| Rejection::decode(e.to_string()))?
///         .trim().parse::<i64>().map_err(|e| Rejection::decode(e.to_string()))
/// });
/// let (at0, at1) = (SourcePosition::new(0, 0), SourcePosition::new(0, 1));
/// let mut ctx = Context::default();
/// // What a source hands the runner with each batch: the bytes each record was read from.
/// ctx.set_originals(vec![(at0, Bytes::from_static(b"42")), (at1, Bytes::from_static(b"x"))]);
/// let mut out = Vec::new();
/// let mut input = vec![
///     Record::new(Bytes::from_static(b"42"), 0).with_position(at0),
///     Record::new(Bytes::from_static(b"x"), 0).with_position(at1),
/// ];
/// op.process_batch(&mut input, &mut ctx, &mut out);
/// assert_eq!(out[0].payload, 42);
/// let dl = ctx.take_dead_letters();
/// assert_eq!(dl[0].reason, DeadLetterReason::DecodeError);
/// assert_eq!(&dl[0].original[..], b"x");
/// ```
pub struct TryMap<T, U, E, F> {
    f: F,
    _t: PhantomData<fn(T) -> Result<U, E>>,
}

impl<T, U, E: Into<Rejection>, F: FnMut(&T) -> Result<U, E>> TryMap<T, U, E, F> {
    /// Splits records by the result of `f`.
    pub fn new(f: F) -> Self {
        Self { f, _t: PhantomData }
    }
}

impl<T, U, E, F> std::fmt::Debug for TryMap<T, U, E, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TryMap")
    }
}

impl<T, U, E, F> Operator for TryMap<T, U, E, F>
where
    T: Send + 'static,
    U: Send + 'static,
    E: Into<Rejection> + 'static,
    F: FnMut(&T) -> Result<U, E> + Send + 'static,
{
    type In = T;
    type Out = U;

    #[inline]
    fn process_batch(&mut self, input: &mut Vec<Record<T>>, ctx: &mut Context, out: &mut Vec<Record<U>>) {
        for r in input.drain(..) {
            match (self.f)(&r.payload) {
                Ok(u) => out.push(Record {
                    key: r.key,
                    event_time: r.event_time,
                    position: r.position,
                    payload: u,
                }),
                Err(e) => ctx.reject(r.position, None, e.into()),
            }
        }
    }

    fn name(&self) -> &'static str {
        "try_map"
    }

    fn emits_before_exchange(&self, _exchanged: &mut bool) -> bool {
        false // emits only from the records of a batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SourcePosition;

    #[derive(Debug)]
    enum ParseError {
        NotANumber,
        Negative,
    }

    impl From<ParseError> for Rejection {
        fn from(e: ParseError) -> Self {
            match e {
                ParseError::NotANumber => Rejection::decode("not a number"),
                ParseError::Negative => Rejection::contract("amount must be >= 0"),
            }
        }
    }

    #[test]
    fn typed_errors_map_to_reasons_and_keep_position_and_bytes() {
        let mut op = TryMap::new(|s: &String| -> Result<i64, ParseError> {
            let n: i64 = s.parse().map_err(|_| ParseError::NotANumber)?;
            if n < 0 { Err(ParseError::Negative) } else { Ok(n) }
        });
        let mut ctx = Context::default();
        let mut out = Vec::new();
        let mut input = vec![
            Record::new("5".to_string(), 0).with_position(SourcePosition::new(1, 10)),
            Record::new("x".to_string(), 0).with_position(SourcePosition::new(1, 11)),
            Record::new("-3".to_string(), 0).with_position(SourcePosition::new(2, 12)),
        ];
        ctx.set_originals(
            input.iter().map(|r| (r.position, bytes::Bytes::from(r.payload.clone().into_bytes()))).collect(),
        );
        op.process_batch(&mut input, &mut ctx, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].position, SourcePosition::new(1, 10));
        let dl = ctx.take_dead_letters();
        let got: Vec<_> =
            dl.iter().map(|d| (d.reason.code(), d.position.offset, d.original.to_vec())).collect();
        assert_eq!(
            got,
            vec![("decode_error", 11, b"x".to_vec()), ("contract_violation", 12, b"-3".to_vec())]
        );
    }
}
