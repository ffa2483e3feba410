//! Sets each record's grouping key from its payload.

use std::marker::PhantomData;

use super::{Context, ExchangePort, ExchangePorts, Operator};
use crate::record::{Key, Record};

/// Sets each record's key from its payload; windows and state are then per key.
///
/// # Examples
/// ```
/// use ferroflow_core::operator::KeyBy;
/// use ferroflow_core::{Context, Key, Operator, Record};
/// let mut op = KeyBy::new(|s: &(&'static str, i64)| Key::from(s.0));
/// let mut out = Vec::new();
/// op.process_batch(&mut vec![Record::new(("u1", 3), 0)], &mut Context::default(), &mut out);
/// assert_eq!(out[0].key, Key::from("u1"));
/// ```
pub struct KeyBy<T, F> {
    f: F,
    /// Set when the chain is one of several copies: records go on to the copy that owns their key.
    exchange: Option<ExchangePort<T>>,
    /// The records traded away, kept for their allocation.
    keyed: Vec<Record<T>>,
    _t: PhantomData<fn(T)>,
}

impl<T, F: FnMut(&T) -> Key> KeyBy<T, F> {
    /// Keys records by `f(payload)`.
    pub fn new(f: F) -> Self {
        Self { f, exchange: None, keyed: Vec::new(), _t: PhantomData }
    }
}

impl<T, F> std::fmt::Debug for KeyBy<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBy")
    }
}

impl<T: Send + 'static, F: FnMut(&T) -> Key + Send + 'static> Operator for KeyBy<T, F> {
    type In = T;
    type Out = T;

    #[inline]
    fn process_batch(&mut self, input: &mut Vec<Record<T>>, ctx: &mut Context, out: &mut Vec<Record<T>>) {
        for r in input.iter_mut() {
            r.key = (self.f)(&r.payload);
        }
        if let Some(port) = &mut self.exchange {
            std::mem::swap(input, &mut self.keyed);
            // The first key step of a copy on a share also trades the copies' event-time notes.
            let notes = (ctx.observing && ctx.notes_at_exchange && !ctx.notes_traded)
                .then_some(&mut ctx.observations);
            let with_notes = notes.is_some();
            let traded = port.trade(&mut self.keyed, out, notes, &mut ctx.traded_notes);
            ctx.notes_traded |= with_notes;
            if traded.is_err() {
                // A worker stopped: the job fails and restarts from its last checkpoint, which
                // none of these records are part of.
                self.keyed.clear();
                ctx.exchange_broken();
            }
            return;
        }
        if out.is_empty() {
            std::mem::swap(input, out);
        } else {
            out.append(input);
        }
    }

    fn name(&self) -> &'static str {
        "key_by"
    }

    fn connect_exchanges(&mut self, ports: &mut ExchangePorts<'_>) {
        self.exchange = ports.port();
    }

    fn runs_every_batch(&self) -> bool {
        self.exchange.is_some()
    }

    fn notes_after_exchange(&self, exchanged: &mut bool) -> bool {
        *exchanged |= self.exchange.is_some();
        false
    }
}
