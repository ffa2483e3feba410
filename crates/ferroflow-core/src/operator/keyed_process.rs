//! User-defined stateful logic on a keyed stream: a function with per-key state and event-time
//! and processing-time timers (Flink's `KeyedProcessFunction`).

use super::keyed_state::{
    ListAccess, ListState, MapAccess, MapState, Now, StateDeclarations, StateValue, Tables, Timers,
    ValueCell, ValueState,
};
use super::{Context, OUTPUT_CHUNK, Operator, StatefulOperator};
use crate::dead_letter::{DeadLetter, Rejection};
use crate::error::StateError;
use crate::record::{Key, Record, SourcePosition, Timestamp};
use crate::state::{StateBackend, StateBudget};
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

    /// Handles a timer of the context's key that came due: an event-time timer the watermark
    /// reached, or a processing-time timer the clock reached ([`KeyedContext::timestamp`] is its
    /// time, [`KeyedContext::timer_domain`] says which). An `Err` becomes a dead letter with the key and the timer's time in its
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
    now: Now,
    domain: Option<TimeDomain>,
    tables: &'a mut Tables,
    timers: &'a mut StepTimers,
    out: &'a mut Vec<Record<O>>,
    position: SourcePosition,
}

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeDomain {
    /// Fires when the step's watermark reaches it.
    EventTime,
    /// Fires when the runner's processing-time clock reaches it (at its next tick).
    ProcessingTime,
}

/// A step's timers, by domain.
#[derive(Debug)]
struct StepTimers {
    event: Timers,
    processing: Timers,
}

impl StepTimers {
    fn of(&mut self, domain: TimeDomain) -> &mut Timers {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Under a memory budget: the latest timers of both domains go to disk while it is exceeded.
    fn spill(&mut self) {
        self.event.spill();
        self.processing.spill();
    }

    fn report_failure(&mut self, ctx: &mut Context) {
        self.event.report_failure(ctx);
        self.processing.report_failure(ctx);
    }
}

impl<O> std::fmt::Debug for KeyedContext<'_, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedContext")
            .field("key", self.key)
            .field("timestamp", &self.timestamp)
            .field("watermark", &self.now.watermark)
            .field("timer_domain", &self.domain)
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

    /// While a timer fires, its domain; `None` while a record is handled.
    pub fn timer_domain(&self) -> Option<TimeDomain> {
        self.domain
    }

    /// The step's event-time watermark (`i64::MIN` before the first one).
    pub fn watermark(&self) -> Timestamp {
        self.now.watermark
    }

    /// Processing time, ms.
    pub fn processing_time(&self) -> Timestamp {
        self.now.processing
    }

    /// The key's value of `state`, if it has one (an expired one reads as absent, unless its TTL
    /// returns it). An error when the state is not declared, or declared as another kind or type.
    pub fn value<T: StateValue>(&mut self, state: ValueState<T>) -> Result<Option<&T>, StateError> {
        let (key, now) = (self.key, self.now);
        let table = self.tables.table::<ValueCell<T>>(state.name(), state.ttl())?;
        table.load(key)?;
        Ok(table.read(key, &now))
    }

    /// Sets the key's value of `state`.
    pub fn set_value<T: StateValue>(&mut self, state: ValueState<T>, value: T) -> Result<(), StateError> {
        let (key, now) = (self.key, self.now);
        let table = self.tables.table::<ValueCell<T>>(state.name(), state.ttl())?;
        table.load(key)?;
        table.write(key, value, &now);
        Ok(())
    }

    /// Removes the key's value of `state`.
    pub fn clear_value<T: StateValue>(&mut self, state: ValueState<T>) -> Result<(), StateError> {
        let table = self.tables.table::<ValueCell<T>>(state.name(), state.ttl())?;
        table.load(self.key)?;
        table.remove(self.key);
        Ok(())
    }

    /// The key's list of `state`, to read or change.
    pub fn list<T: StateValue>(&mut self, state: ListState<T>) -> Result<ListAccess<'_, T>, StateError> {
        let now = self.now;
        let table = self.tables.table(state.name(), state.ttl())?;
        table.load(self.key)?;
        Ok(ListAccess::new(table, self.key, now))
    }

    /// The key's map of `state`, to read or change.
    pub fn map<K: StateValue + Ord, V: StateValue>(
        &mut self,
        state: MapState<K, V>,
    ) -> Result<MapAccess<'_, K, V>, StateError> {
        let now = self.now;
        let table = self.tables.table(state.name(), state.ttl())?;
        table.load(self.key)?;
        Ok(MapAccess::new(table, self.key, now))
    }

    /// Calls [`on_timer`](KeyedFunction::on_timer) for this key once the watermark reaches `at`.
    /// A key has at most one timer per time and domain: registering it again changes nothing. A
    /// time the watermark already reached fires with the next watermark (also from `on_timer`).
    pub fn register_event_time_timer(&mut self, at: Timestamp) {
        self.timers.event.register(at, self.key);
    }

    /// Removes this key's event-time timer at `at`, if there is one.
    pub fn delete_event_time_timer(&mut self, at: Timestamp) {
        self.timers.event.delete(at, self.key);
    }

    /// Calls [`on_timer`](KeyedFunction::on_timer) for this key once processing time reaches
    /// `at`, at the runner's next tick after it (a time already reached fires at the next tick).
    /// Timers that came due while the job was down fire at the first tick after the restore; the
    /// end of input does not fire pending ones (as in Flink).
    pub fn register_processing_time_timer(&mut self, at: Timestamp) {
        self.timers.processing.register(at, self.key);
    }

    /// Removes this key's processing-time timer at `at`, if there is one.
    pub fn delete_processing_time_timer(&mut self, at: Timestamp) {
        self.timers.processing.delete(at, self.key);
    }

    /// Emits `value` on the main output, keyed by this key, at [`timestamp`](Self::timestamp);
    /// from a processing-time timer, at the watermark (a processing time is no event time:
    /// Flink emits such records without one).
    pub fn emit(&mut self, value: O) {
        self.emit_at(value, self.now.event);
    }

    /// Emits `value` on the main output, keyed by this key, with event time `at`.
    pub fn emit_at(&mut self, value: O, at: Timestamp) {
        self.emit_from(value, at, self.position);
    }

    /// Emits `value` as [`emit_at`](Self::emit_at) does, carrying the source position of the
    /// record it stands for (one the function kept in state and lets go from a timer): a step
    /// after this one that refuses it then names that record in its dead letter.
    pub fn emit_from(&mut self, value: O, at: Timestamp, position: SourcePosition) {
        let mut r = Record::new(value, at).with_position(position);
        r.key = self.key.clone();
        self.out.push(r);
    }

    /// Where the record at hand was read from (the default position in a timer).
    pub fn position(&self) -> SourcePosition {
        self.position
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
    timers: StepTimers,
    watermark: Timestamp,
    /// Timers of this domain are firing, at this processing time, while their output goes out
    /// chunk by chunk.
    firing: Option<(TimeDomain, Timestamp)>,
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
            timers: StepTimers { event: Timers::event_time(), processing: Timers::processing_time() },
            watermark: i64::MIN,
            firing: None,
        }
    }

    /// The id the state is kept under.
    pub fn id(&self) -> &str {
        self.ns.strip_prefix("keyed/").unwrap_or(&self.ns)
    }

    /// Keys holding a value, over every state, and timers pending (both domains).
    pub fn held(&self) -> (usize, usize) {
        (self.tables.len(), self.timers.event.len() + self.timers.processing.len())
    }

    /// Emits the rest of a firing at once: something other than the runner's chunk-by-chunk
    /// `resume_output` reached the step, which must see it after every timer of the firing.
    fn finish_firing(&mut self, ctx: &mut Context, out: &mut Vec<Record<F::Out>>) {
        while self.firing.is_some() {
            self.fire_due(ctx, out);
        }
    }

    /// Fires `domain`'s timers due at `up_to` (the watermark, or processing time), in time order,
    /// then key order, then cleans up expired state.
    fn fire(
        &mut self,
        domain: TimeDomain,
        up_to: Timestamp,
        ctx: &mut Context,
        out: &mut Vec<Record<F::Out>>,
    ) {
        self.finish_firing(ctx, out);
        // Timers registered while these fire, at or below `up_to`, fire with the next move.
        self.timers.of(domain).start_firing(up_to);
        self.firing = Some((domain, ctx.processing_time()));
        self.fire_due(ctx, out);
    }

    /// Fires the due timers of the firing under way until they emitted a chunk of records (the
    /// rest waits for `resume_output`) or none is left, then cleans up expired state.
    fn fire_due(&mut self, ctx: &mut Context, out: &mut Vec<Record<F::Out>>) {
        let Some((domain, processing)) = self.firing else { return };
        let start = out.len();
        while out.len().saturating_sub(start) < OUTPUT_CHUNK {
            let Some((at, key)) = self.timers.of(domain).pop_due() else {
                self.firing = None;
                break;
            };
            // Event-time TTL stamps what a processing-time timer writes with the watermark.
            let event = if domain == TimeDomain::EventTime { at } else { self.watermark };
            let mut kctx = KeyedContext {
                key: &key,
                timestamp: at,
                now: Now { event, watermark: self.watermark, processing },
                domain: Some(domain),
                tables: &mut self.tables,
                timers: &mut self.timers,
                out,
                position: SourcePosition::default(),
            };
            if let Err(rejection) = self.f.on_timer(&mut kctx) {
                let detail = format!("{domain:?} timer at {at} of key {key:?}: {}", rejection.detail);
                let mut dl =
                    DeadLetter::new(rejection.reason, detail, SourcePosition::default(), bytes::Bytes::new());
                dl.event_time = (domain == TimeDomain::EventTime).then_some(at);
                // Not a source record: outside the record accounting, as a window's results are.
                ctx.with_counting(false, |ctx| ctx.dead_letter(dl));
            }
        }
        if self.firing.is_none() {
            self.tables.sweep(&Now { event: self.watermark, watermark: self.watermark, processing });
        }
        self.tables.spill();
        self.timers.spill();
        self.tables.report_failure(ctx);
        self.timers.report_failure(ctx);
    }
}

impl<F: KeyedFunction> std::fmt::Debug for KeyedProcess<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedProcess")
            .field("ns", &self.ns)
            .field("watermark", &self.watermark)
            .field("timers", &self.held().1)
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
        self.finish_firing(ctx, out);
        let processing = ctx.processing_time();
        if self.tables.budgeted() {
            let keys: Vec<&Key> = input.iter().map(|r| &r.key).collect();
            self.tables.preload(&keys);
        }
        // A rejected record is counted as a dead letter, the others as processed.
        let (mut processed, mut second_processed) = (0u64, 0u64);
        for r in input.drain(..) {
            let Record { key, event_time, position, payload } = r;
            let second = ctx.is_second_input(position);
            let mut kctx = KeyedContext {
                key: &key,
                timestamp: event_time,
                now: Now { event: event_time, watermark: self.watermark, processing },
                domain: None,
                tables: &mut self.tables,
                timers: &mut self.timers,
                out,
                position,
            };
            let emitted = kctx.out.len();
            match self.f.process(payload, &mut kctx) {
                Ok(()) => {
                    processed += 1;
                    second_processed += u64::from(second);
                }
                Err(rejection) => {
                    // A refused record emits nothing (what it changed in state stays changed).
                    out.truncate(emitted);
                    ctx.reject(position, Some(event_time), rejection);
                }
            }
        }
        ctx.count_processed(processed);
        ctx.count_second_input(|c| &mut c.records_processed, second_processed);
        self.tables.spill();
        self.timers.spill();
        self.tables.report_failure(ctx);
        self.timers.report_failure(ctx);
    }

    fn on_watermark(&mut self, watermark: Watermark, ctx: &mut Context, out: &mut Vec<Record<F::Out>>) {
        if watermark.0 <= self.watermark {
            return;
        }
        self.finish_firing(ctx, out);
        self.watermark = watermark.0;
        self.fire(TimeDomain::EventTime, watermark.0, ctx, out);
    }

    fn has_pending_output(&self) -> bool {
        self.firing.is_some()
    }

    fn resume_output(&mut self, ctx: &mut Context, out: &mut Vec<Record<F::Out>>) {
        self.fire_due(ctx, out);
    }

    fn on_processing_time(&mut self, now: Timestamp, ctx: &mut Context, out: &mut Vec<Record<F::Out>>) {
        self.fire(TimeDomain::ProcessingTime, now, ctx, out);
    }

    fn fires_on_processing_time(&self) -> bool {
        true
    }

    fn attach_budget(&mut self, budget: &StateBudget) {
        self.tables.attach(budget);
        self.timers.event.attach(budget);
        self.timers.processing.attach(budget);
    }

    fn snapshot_state(&mut self, state: &mut dyn StateBackend) -> Result<(), StateError> {
        state.put(&self.ns, META_KEY, &self.watermark.to_be_bytes())?;
        self.tables.snapshot(&self.ns, state)?;
        self.timers.event.snapshot(&self.ns, state)?;
        self.timers.processing.snapshot(&self.ns, state)
    }

    fn restore_state(&mut self, state: &dyn StateBackend) -> Result<(), StateError> {
        self.firing = None;
        self.watermark = match state.get(&self.ns, META_KEY)? {
            Some(b) => i64::from_be_bytes(b.as_slice().try_into().map_err(|_| StateError::Corrupt {
                what: format!("the watermark of step '{}' has the wrong length", self.ns),
            })?),
            None => i64::MIN,
        };
        self.tables.restore(&self.ns, state, self.watermark)?;
        self.timers.event.restore(&self.ns, state)?;
        self.timers.processing.restore(&self.ns, state)
    }

    fn consumes_records(&self) -> bool {
        true
    }

    fn state_ids(&self, ids: &mut Vec<String>) {
        ids.push(self.id().to_owned());
    }

    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        self.tables.retain_keys(keep);
        self.timers.event.retain_keys(keep);
        self.timers.processing.retain_keys(keep);
    }

    fn name(&self) -> &'static str {
        "keyed_process"
    }
}

/// The watermark, so that timers already fired before a checkpoint do not fire again.
const META_KEY: &[u8] = b"\x00meta";
