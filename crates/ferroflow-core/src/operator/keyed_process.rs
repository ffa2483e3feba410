//! User-defined stateful logic on a keyed stream: a function with per-key state and event-time
//! timers (Flink's `KeyedProcessFunction`).

use super::keyed_state::{StateDeclarations, Tables, Timers, ValueState};
use super::{Context, Operator, StatefulOperator};
use crate::dead_letter::{DeadLetter, Rejection};
use crate::error::StateError;
use crate::record::{Key, Record, SourcePosition, Timestamp};
use crate::state::StateBackend;
use crate::time::Watermark;

/// A function run on every record of a keyed stream, with the record's key's state, event-time
/// timers and the main output (see [`KeyedProcess`]).
///
/// # Examples
/// ```
/// use ferroflow_core::operator::{KeyedContext, KeyedFunction, StateDeclarations, ValueState};
/// use ferroflow_core::Rejection;
///
/// /// Emits a running count per key.
/// struct Counter;
/// const COUNT: ValueState<u64> = ValueState::new("count");
///
/// impl KeyedFunction for Counter {
///     type In = String;
///     type Out = u64;
///     fn declare(&self, states: &mut StateDeclarations) {
///         states.value(COUNT);
///     }
///     fn process(&mut self, _input: String, ctx: &mut KeyedContext<'_, u64>) -> Result<(), Rejection> {
///         let n = ctx.value(COUNT)?.copied().unwrap_or(0) + 1;
///         ctx.set_value(COUNT, n)?;
///         ctx.emit(n);
///         Ok(())
///     }
/// }
/// ```
pub trait KeyedFunction: Send + 'static {
    /// What it reads.
    type In: Send + 'static;
    /// What it emits.
    type Out: Send + 'static;

    /// Declares every state the function uses: reading or writing one that is not declared is
    /// an error (the record goes to the dead letters, saying so), and a restore reads the declared
    /// ones back before the first record. A restore refuses a checkpoint that holds a state the
    /// function does not declare.
    fn declare(&self, states: &mut StateDeclarations) {
        let _ = states;
    }

    /// Handles one record of the context's key. An `Err` sends the record to the dead letters
    /// (counted there instead of as processed) and drops what it emitted; what it changed in
    /// state or timers stays changed.
    fn process(&mut self, input: Self::In, ctx: &mut KeyedContext<'_, Self::Out>) -> Result<(), Rejection>;

    /// Handles a timer of the context's key that the watermark reached ([`KeyedContext::timestamp`]
    /// is its time). An `Err` becomes a dead letter with the key and the timer's time in its
    /// detail; it is not a source record, so it stays out of the record accounting.
    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, Self::Out>) -> Result<(), Rejection> {
        let _ = ctx;
        Ok(())
    }
}

/// What a [`KeyedFunction`] can reach while it handles a record or a timer: the key's state, its
/// timers, the time, and the main output.
pub struct KeyedContext<'a, O> {
    key: &'a Key,
    timestamp: Timestamp,
    watermark: Timestamp,
    processing_time: Timestamp,
    tables: &'a mut Tables,
    timers: &'a mut Timers,
    out: &'a mut Vec<Record<O>>,
    position: SourcePosition,
}

impl<O> std::fmt::Debug for KeyedContext<'_, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedContext")
            .field("key", self.key)
            .field("timestamp", &self.timestamp)
            .field("watermark", &self.watermark)
            .finish_non_exhaustive()
    }
}

impl<O> KeyedContext<'_, O> {
    /// The key whose record or timer this is.
    pub fn key(&self) -> &Key {
        self.key
    }

    /// The record's event time, or the timer's time.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The step's event-time watermark (`i64::MIN` before the first one).
    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }

    /// Processing time, ms.
    pub fn processing_time(&self) -> Timestamp {
        self.processing_time
    }

    /// The key's value of `state`, if it has one. An error when the state's name is used with
    /// another type.
    pub fn value<T>(&mut self, state: ValueState<T>) -> Result<Option<&T>, StateError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        let key = self.key;
        Ok(self.tables.value_table(state)?.get(key))
    }

    /// Sets the key's value of `state`.
    pub fn set_value<T>(&mut self, state: ValueState<T>, value: T) -> Result<(), StateError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        self.tables.value_table(state)?.set(self.key, value);
        Ok(())
    }

    /// Removes the key's value of `state`.
    pub fn clear_value<T>(&mut self, state: ValueState<T>) -> Result<(), StateError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        self.tables.value_table(state)?.clear_key(self.key);
        Ok(())
    }

    /// Calls [`on_timer`](KeyedFunction::on_timer) for this key once the watermark reaches `at`.
    /// A key has at most one timer per time: registering it again changes nothing. A time the
    /// watermark already reached fires with the next watermark (also from `on_timer`).
    pub fn register_event_time_timer(&mut self, at: Timestamp) {
        self.timers.register(at, self.key);
    }

    /// Removes this key's timer at `at`, if there is one.
    pub fn delete_event_time_timer(&mut self, at: Timestamp) {
        self.timers.delete(at, self.key);
    }

    /// Emits `value` on the main output, keyed by this key, at [`timestamp`](Self::timestamp).
    pub fn emit(&mut self, value: O) {
        let mut r = Record::new(value, self.timestamp).with_position(self.position);
        r.key = self.key.clone();
        self.out.push(r);
    }
}

impl From<StateError> for Rejection {
    fn from(e: StateError) -> Self {
        Rejection::new(crate::dead_letter::DeadLetterReason::ProcessingError, format!("state: {e}"))
    }
}

/// Runs a [`KeyedFunction`] on a keyed stream: each record with its key's state and timers,
/// event-time timers as the watermark passes them (in time order, then key order, so that a
/// replay fires them in the same order). Records are consumed, as by a window: what the function
/// emits is a result ([`Context::count_processed`]).
///
/// State lives on the heap and is written to the state backend incrementally at each checkpoint
/// (namespace `keyed/<id>`): a restore continues exactly where the checkpoint was, pending timers
/// included.
///
/// # Examples
/// ```
/// use ferroflow_core::operator::{KeyedContext, KeyedFunction, KeyedProcess, StateDeclarations, ValueState};
/// use ferroflow_core::time::Watermark;
/// use ferroflow_core::{Context, Key, Operator, Record, Rejection};
///
/// /// Emits the key once it has been silent for 5 s of event time.
/// struct Silence;
/// const LAST: ValueState<i64> = ValueState::new("last");
///
/// impl KeyedFunction for Silence {
///     type In = ();
///     type Out = i64;
///     fn declare(&self, states: &mut StateDeclarations) {
///         states.value(LAST);
///     }
///     fn process(&mut self, _: (), ctx: &mut KeyedContext<'_, i64>) -> Result<(), Rejection> {
///         if let Some(last) = ctx.value(LAST)?.copied() {
///             ctx.delete_event_time_timer(last.saturating_add(5_000));
///         }
///         let now = ctx.timestamp();
///         ctx.set_value(LAST, now)?;
///         ctx.register_event_time_timer(now.saturating_add(5_000));
///         Ok(())
///     }
///     fn on_timer(&mut self, ctx: &mut KeyedContext<'_, i64>) -> Result<(), Rejection> {
///         let last = ctx.value(LAST)?.copied().unwrap_or_default();
///         ctx.emit(last);
///         Ok(())
///     }
/// }
///
/// let mut op = KeyedProcess::new("silence", Silence);
/// let mut ctx = Context::default();
/// let mut out = Vec::new();
/// let keyed = |t| { let mut r = Record::new((), t); r.key = Key::from("dev-1"); r };
/// op.process_batch(&mut vec![keyed(1_000), keyed(3_000)], &mut ctx, &mut out);
/// op.on_watermark(Watermark(7_999), &mut ctx, &mut out);
/// assert!(out.is_empty(), "the timer at 6 s was replaced by the one at 8 s");
/// op.on_watermark(Watermark(8_000), &mut ctx, &mut out);
/// assert_eq!(out.iter().map(|r| r.payload).collect::<Vec<_>>(), [3_000]);
/// ```
pub struct KeyedProcess<F: KeyedFunction> {
    ns: String,
    f: F,
    tables: Tables,
    timers: Timers,
    watermark: Timestamp,
}

impl<F: KeyedFunction> KeyedProcess<F> {
    /// Runs `f`, its state kept under `id` (namespace `keyed/<id>`).
    pub fn new(id: impl AsRef<str>, f: F) -> Self {
        let mut states = StateDeclarations::default();
        f.declare(&mut states);
        Self {
            ns: format!("keyed/{}", id.as_ref()),
            f,
            tables: states.into_tables(),
            timers: Timers::default(),
            watermark: i64::MIN,
        }
    }

    /// The id the state is kept under.
    pub fn id(&self) -> &str {
        self.ns.strip_prefix("keyed/").unwrap_or(&self.ns)
    }

    /// Values held over every state, and timers pending.
    pub fn held(&self) -> (usize, usize) {
        (self.tables.len(), self.timers.len())
    }
}

impl<F: KeyedFunction> std::fmt::Debug for KeyedProcess<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedProcess")
            .field("ns", &self.ns)
            .field("watermark", &self.watermark)
            .field("timers", &self.timers.len())
            .finish_non_exhaustive()
    }
}

impl<F: KeyedFunction> StatefulOperator for KeyedProcess<F> {
    fn set_id(&mut self, id: String) {
        self.ns = format!("keyed/{id}");
    }
}

impl<F: KeyedFunction> Operator for KeyedProcess<F> {
    type In = F::In;
    type Out = F::Out;

    fn process_batch(
        &mut self,
        input: &mut Vec<Record<F::In>>,
        ctx: &mut Context,
        out: &mut Vec<Record<F::Out>>,
    ) {
        let processing_time = ctx.processing_time();
        // A rejected record is counted as a dead letter, the others as processed.
        let mut processed = 0u64;
        for r in input.drain(..) {
            let Record { key, event_time, position, payload } = r;
            let mut kctx = KeyedContext {
                key: &key,
                timestamp: event_time,
                watermark: self.watermark,
                processing_time,
                tables: &mut self.tables,
                timers: &mut self.timers,
                out,
                position,
            };
            let emitted = kctx.out.len();
            match self.f.process(payload, &mut kctx) {
                Ok(()) => processed += 1,
                Err(rejection) => {
                    // A refused record emits nothing (what it changed in state stays changed).
                    out.truncate(emitted);
                    ctx.reject(position, Some(event_time), rejection);
                }
            }
        }
        ctx.count_processed(processed);
    }

    fn on_watermark(&mut self, watermark: Watermark, ctx: &mut Context, out: &mut Vec<Record<F::Out>>) {
        if watermark.0 <= self.watermark {
            return;
        }
        self.watermark = watermark.0;
        let processing_time = ctx.processing_time();
        // Timers registered while these fire, at or below the watermark, fire with the next one.
        self.timers.start_firing(watermark.0);
        while let Some((at, key)) = self.timers.pop_due() {
            let mut kctx = KeyedContext {
                key: &key,
                timestamp: at,
                watermark: self.watermark,
                processing_time,
                tables: &mut self.tables,
                timers: &mut self.timers,
                out,
                position: SourcePosition::default(),
            };
            if let Err(rejection) = self.f.on_timer(&mut kctx) {
                let detail = format!("timer at {at} of key {key:?}: {}", rejection.detail);
                let mut dl =
                    DeadLetter::new(rejection.reason, detail, SourcePosition::default(), bytes::Bytes::new());
                dl.event_time = Some(at);
                // Not a source record: outside the record accounting, as a window's results are.
                ctx.with_counting(false, |ctx| ctx.dead_letter(dl));
            }
        }
    }

    fn snapshot_state(&mut self, state: &mut dyn StateBackend) -> Result<(), StateError> {
        state.put(&self.ns, META_KEY, &self.watermark.to_be_bytes())?;
        self.tables.snapshot(&self.ns, state)?;
        self.timers.snapshot(&self.ns, state)
    }

    fn restore_state(&mut self, state: &dyn StateBackend) -> Result<(), StateError> {
        self.watermark = match state.get(&self.ns, META_KEY)? {
            Some(b) => i64::from_be_bytes(b.as_slice().try_into().map_err(|_| StateError::Corrupt {
                what: format!("the watermark of step '{}' has the wrong length", self.ns),
            })?),
            None => i64::MIN,
        };
        self.tables.restore(&self.ns, state)?;
        self.timers.restore(&self.ns, state)
    }

    fn consumes_records(&self) -> bool {
        true
    }

    fn state_ids(&self, ids: &mut Vec<String>) {
        ids.push(self.id().to_owned());
    }

    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        self.tables.retain_keys(keep);
        self.timers.retain_keys(keep);
    }

    fn name(&self) -> &'static str {
        "keyed_process"
    }
}

/// The watermark, so that timers already fired before a checkpoint do not fire again.
const META_KEY: &[u8] = b"\x00meta";
