//! Sets each record's grouping key from its payload.

use std::collections::VecDeque;
use std::marker::PhantomData;

use super::exchange::IN_FLIGHT;
use super::originals::SharedOriginals;
use super::{Context, ExchangePort, ExchangePorts, Operator};
use crate::record::{Key, Record, Timestamp};

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
    /// Pipelined: the rounds put in and not taken yet, oldest first.
    in_flight: VecDeque<InFlight>,
    /// The copies run this step pipelined (every copy does, or none).
    pipelining: bool,
    _t: PhantomData<fn(T)>,
}

impl<T, F: FnMut(&T) -> Key> KeyBy<T, F> {
    /// Keys records by `f(payload)`.
    pub fn new(f: F) -> Self {
        Self {
            f,
            exchange: None,
            keyed: Vec::new(),
            in_flight: VecDeque::new(),
            pipelining: false,
            _t: PhantomData,
        }
    }
}

/// A round put in and not taken yet, with what its share ran with: the bytes of its batch (its
/// records' dead letters, downstream, need them) and its clocks (processing time and the idleness
/// clock: the round's notes are applied under them, the same in every copy).
struct InFlight {
    round: u64,
    originals: SharedOriginals,
    now_ms: Timestamp,
    idle_ms: Timestamp,
}

impl<T: Send, F> KeyBy<T, F> {
    /// Puts the share in a new round and passes on the oldest round in flight once every copy
    /// has put in its part (or, draining, only passes on the oldest round in flight). A copy waits
    /// for the others only when it is [`IN_FLIGHT`] rounds ahead, or drains. Each round's records,
    /// then its notes, reach the steps downstream in round order, one round per batch, as without
    /// pipelining: results do not change.
    fn pipelined(&mut self, input: &mut Vec<Record<T>>, ctx: &mut Context, out: &mut Vec<Record<T>>) {
        let Some(port) = &mut self.exchange else { return };
        ctx.traded_notes.clear();
        ctx.notes_traded = true;
        ctx.round_taken = false;
        let mut broken = false;
        if !ctx.draining {
            std::mem::swap(input, &mut self.keyed);
            match port.put(&mut self.keyed, Some(&mut ctx.observations)) {
                Ok(round) => self.in_flight.push_back(InFlight {
                    round,
                    originals: ctx.shared_originals(),
                    now_ms: ctx.processing_time(),
                    idle_ms: ctx.idle_time(),
                }),
                Err(_) => broken = true,
            }
        }
        if let Some(round) = self.in_flight.front().filter(|_| !broken).map(|f| f.round) {
            let taken = if ctx.draining || self.in_flight.len() > IN_FLIGHT {
                port.take(round, out, Some(&mut ctx.traded_notes)).map(|()| true)
            } else {
                Ok(port.try_take(round, out, Some(&mut ctx.traded_notes)))
            };
            match taken {
                Ok(true) => {
                    if let Some(f) = self.in_flight.pop_front() {
                        // The taken records were read with the round's batch, not the current one,
                        // and run on with its clocks.
                        ctx.set_shared_originals(f.originals);
                        ctx.set_processing_time(f.now_ms);
                        ctx.set_idle_clock(f.idle_ms);
                        ctx.round_taken = true;
                    }
                }
                Ok(false) => {}
                Err(_) => broken = true,
            }
        }
        if broken {
            // A worker stopped: the job fails and restarts from its last checkpoint, which none
            // of these records are part of.
            self.keyed.clear();
            self.in_flight.clear();
            ctx.exchange_broken();
        }
        ctx.round_in_flight = !self.in_flight.is_empty();
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
        if self.exchange.is_some() && (ctx.pipelined || self.pipelining) {
            self.pipelining = true;
            if !ctx.pipelined {
                // A watermark reached the step: nothing upstream of a pipelined key step emits
                // on one, so the copies have nothing to trade and skip the round. A step that
                // said so and emits all the same would have its records traded out of order:
                // the job fails instead.
                if !input.is_empty() {
                    tracing::error!(
                        records = input.len(),
                        "a step before key_by emitted records on a watermark though its \
                         Operator::emits_before_exchange says it does not; the copies stop"
                    );
                    input.clear();
                    ctx.exchange_broken();
                }
                return;
            }
            self.pipelined(input, ctx, out);
            return;
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

    fn emits_before_exchange(&self, exchanged: &mut bool) -> bool {
        *exchanged |= self.exchange.is_some();
        false
    }
}
