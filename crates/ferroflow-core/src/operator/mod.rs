//! Operators and their chaining.
//!
//! Every step of a job implements [`Operator`]: one required method, [`Operator::process_batch`],
//! plus lifecycle hooks with defaults (source signals, watermarks, state snapshots). Steps are
//! chained with [`Chain`] inside one task: a batch flows through the whole chain by direct calls,
//! with one reusable buffer between neighbours and no channel per operator.
//!
//! Users rarely name these types: the [`Stream`](crate::Stream) builder (`.filter(..)`, `.map(..)`,
//! `.window(..)`, …) assembles them.

mod assign_timestamps;
mod chain;
mod dedup;
mod either;
mod exchange;
mod filter;
mod flat_map;
mod key_by;
mod keyed_process;
mod keyed_state;
mod map;
pub(crate) mod originals;
mod process;
mod source_input;
mod try_map;

pub use assign_timestamps::AssignTimestamps;
pub use chain::Chain;
pub use dedup::Dedup;
pub(crate) use exchange::Gather;
pub use exchange::{ExchangeBroken, ExchangeHub, ExchangePort, ExchangePorts, Note, key_owner};
pub use filter::Filter;
pub use flat_map::FlatMap;
pub use key_by::KeyBy;
pub use keyed_process::{KeyedContext, KeyedFunction, KeyedProcess, TimeDomain};
#[cfg(test)]
pub(crate) use keyed_state::state_shape;
pub(crate) use keyed_state::{Cell, KeyedTable, Timers};
pub use keyed_state::{
    ListAccess, ListState, MapAccess, MapState, StateDeclarations, StateTtl, StateValue, TtlTime, TtlUpdate,
    TtlVisibility, ValueState,
};
pub use map::Map;
pub use process::{Process, ProcessOutput};
pub use source_input::SourceInput;
pub use try_map::TryMap;

use crate::dead_letter::DeadLetter;
use crate::dead_letter::Rejection;
use crate::error::StateError;
use crate::metrics::{LocalCounters, StepCount};
use crate::record::{Key, PartitionId, Record, SourcePosition, Timestamp};
use crate::state::StateBackend;
use crate::time::Watermark;

/// Rows a step emits at most per call when it fires on a watermark or a timer: the rest waits in
/// the step until the runner has taken these to the sink (see
/// [`Operator::has_pending_output`]).
pub const OUTPUT_CHUNK: usize = 16 * 1024;

/// Events from the source side that operators may react to (the watermark generator does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// These partitions now belong to this job instance.
    PartitionsAssigned(Vec<PartitionId>),
    /// These partitions were taken away from this job instance.
    PartitionsRevoked(Vec<PartitionId>),
    /// A bounded partition reached its end.
    PartitionFinished(PartitionId),
    /// Every partition reached its end: the final watermark follows.
    EndOfInput,
    /// The source still has data of these partitions to read (they are behind the end of their
    /// log): they are not idle, even if none of their records arrived for a while.
    PartitionsActive(Vec<PartitionId>),
    /// Idleness may have changed: the runner sends it for every task after each event once the
    /// idleness clock moved (see [`Context::idle_time`]), and on a periodic wake-up.
    Tick,
}

/// What an operator can reach while it runs: processing time, the dead-letter output, counters and
/// the watermark.
#[derive(Debug)]
pub struct Context {
    now_ms: Timestamp,
    /// The source's clock, when it has one: idleness is measured in it.
    idle_clock_ms: Option<Timestamp>,
    pub(crate) counters: LocalCounters,
    pub(crate) dead_letters: Vec<DeadLetter>,
    pending_watermark: Option<Watermark>,
    /// Per-partition watermarks reported by the watermark generator this batch.
    pub(crate) partitions: Option<Vec<crate::metrics::PartitionStatus>>,
    /// Records in and out of each step of the chain this batch, by step index.
    pub(crate) steps: Vec<StepCount>,
    /// False downstream of a window: those steps see results, not source records, so they are
    /// kept out of the record accounting.
    counting: bool,
    /// The job reads two inputs: counts are also kept for the second input's records (see
    /// [`InputCounts`](crate::metrics::InputCounts)).
    per_input: bool,
    /// The bytes the current batch's records were read from, for their dead letters.
    originals: originals::Originals,
    /// The chain is one of several copies, each on a share of the batch: timestamp steps note
    /// what they see in `observations` instead of moving their watermark (see
    /// [`Operator::observe_event_times`]).
    pub(crate) observing: bool,
    /// `(partition, highest event time)` runs noted while `observing`, in input order.
    pub(crate) observations: Vec<Note>,
    /// Every copy's notes on the batch, gathered by the first key step's exchange round (set
    /// with `notes_traded`).
    pub(crate) traded_notes: Vec<Note>,
    /// The first key step traded the notes this batch.
    pub(crate) notes_traded: bool,
    /// Set for a copy whose chain takes every note before its first key step: that step trades
    /// them in its round (the same for every copy: it depends on the chain's shape only).
    pub(crate) notes_at_exchange: bool,
    /// A key step's exchange stopped (another copy's worker did): the job must fail.
    pub(crate) exchange_broken: bool,
    /// A step's state failed outside a record (its spill store): the job must fail before this
    /// batch's results go out.
    pub(crate) state_failure: Option<StateError>,
    /// Set with `notes_at_exchange` for a copy whose chain has one key step: that step puts the
    /// share in a round and passes on the round before, so a copy works on its next share instead
    /// of waiting for the others (see [`KeyBy`]).
    pub(crate) pipelined: bool,
    /// No share this time: a pipelined key step only passes on its round in flight.
    pub(crate) draining: bool,
    /// A pipelined key step has a round in flight (set after each batch).
    pub(crate) round_in_flight: bool,
    /// A pipelined key step passed on a round this batch, and set the clocks of its share.
    pub(crate) round_taken: bool,
    /// The highest watermark a task may reach now (see [`WatermarkCeiling`](crate::time::WatermarkCeiling)):
    /// sampled once per event by the runner, so that copies of a chain all see the same one.
    pub(crate) ceiling: Watermark,
}

impl Default for Context {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Context {
    /// A context at processing time `now_ms`.
    pub fn new(now_ms: Timestamp) -> Self {
        Self {
            now_ms,
            idle_clock_ms: None,
            counters: LocalCounters::default(),
            dead_letters: Vec::new(),
            pending_watermark: None,
            partitions: None,
            steps: Vec::new(),
            counting: true,
            per_input: false,
            originals: originals::Originals::default(),
            observing: false,
            observations: Vec::new(),
            traded_notes: Vec::new(),
            notes_traded: false,
            notes_at_exchange: false,
            exchange_broken: false,
            state_failure: None,
            pipelined: false,
            draining: false,
            round_in_flight: false,
            round_taken: false,
            ceiling: Watermark::MAX,
        }
    }

    /// Processing time (wall clock) in milliseconds since the epoch.
    #[inline]
    pub fn processing_time(&self) -> Timestamp {
        self.now_ms
    }

    /// Sets processing time; the runner does this before each batch.
    pub fn set_processing_time(&mut self, now_ms: Timestamp) {
        self.now_ms = now_ms;
    }

    /// The time idleness is measured in, ms: the source's own clock when the source reports one
    /// ([`SourceProgress`](crate::source::SourceProgress)), else processing time.
    ///
    /// A source's clock runs only while the source can read: while the job is blocked (a sink
    /// outage, a slow checkpoint) the source waits, its clock stands still, and no partition turns
    /// idle because of time the job spent elsewhere (Flink's pausable idleness clock).
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::Context;
    /// let mut ctx = Context::new(5_000);
    /// assert_eq!(ctx.idle_time(), 5_000);
    /// ctx.set_idle_clock(1_200);
    /// ctx.set_processing_time(9_000);
    /// assert_eq!(ctx.idle_time(), 1_200, "the source's clock, once it has one");
    /// ```
    #[inline]
    pub fn idle_time(&self) -> Timestamp {
        self.idle_clock_ms.unwrap_or(self.now_ms)
    }

    /// Sets the source's clock (the runner does, from the source's progress reports).
    pub fn set_idle_clock(&mut self, source_time_ms: Timestamp) {
        self.idle_clock_ms = Some(source_time_ms);
    }

    /// Sends the record at `position` to the dead letters with `rejection`'s reason and detail,
    /// its event time when known, and the bytes it was read from (see
    /// [`set_originals`](Self::set_originals)). This is how a step refuses a record.
    ///
    /// # Examples
    /// ```
    /// use bytes::Bytes;
    /// use ferroflow_core::{Context, Rejection, SourcePosition};
    /// let mut ctx = Context::default();
    /// let at = SourcePosition::new(0, 7);
    /// ctx.set_originals(vec![(at, Bytes::from_static(b"{oops"))]);
    /// ctx.reject(at, None, Rejection::decode("not JSON"));
    /// assert_eq!(&ctx.take_dead_letters()[0].original[..], b"{oops");
    /// ```
    pub fn reject(&mut self, position: SourcePosition, event_time: Option<Timestamp>, rejection: Rejection) {
        // Downstream of a window the records are results, not source records: their position
        // names no source bytes.
        let original = if self.counting { self.originals.get(position) } else { bytes::Bytes::new() };
        let mut dl = DeadLetter::new(rejection.reason, rejection.detail, position, original);
        dl.event_time = event_time;
        self.dead_letter(dl);
    }

    /// The bytes the records of the next batch were read from, by position (the runner sets them
    /// from [`SourceBatch::originals`](crate::source::SourceBatch) before each batch; tests of
    /// operators may too).
    pub fn set_originals(&mut self, originals: Vec<(SourcePosition, bytes::Bytes)>) {
        self.originals.set(originals);
    }

    /// The bytes of the next batch's records, shared with the other parts of the batch that run
    /// on other worker threads.
    pub(crate) fn set_shared_originals(&mut self, originals: originals::SharedOriginals) {
        self.originals.set_shared(originals);
    }

    /// The current batch's bytes, to keep for its records while they wait in an exchange.
    pub(crate) fn shared_originals(&self) -> originals::SharedOriginals {
        self.originals.shared()
    }

    /// Forgets the current batch's bytes (the runner does this after each batch).
    pub fn clear_originals(&mut self) {
        self.originals.clear();
    }

    /// Sends a dead letter to the job's dead-letter output and counts it.
    pub fn dead_letter(&mut self, dead_letter: DeadLetter) {
        if self.counting {
            self.counters.dead_letter(dead_letter.reason);
            if self.is_second_input(dead_letter.position) {
                self.counters.second_input.records_dead_lettered += 1;
            }
        }
        self.dead_letters.push(dead_letter);
    }

    /// Keeps counts per input from now on (the runner does, for a job with two inputs).
    pub(crate) fn count_per_input(&mut self) {
        self.per_input = true;
    }

    /// True when counts are kept per input and `at` is a position of the second input.
    #[inline]
    pub(crate) fn is_second_input(&self, at: SourcePosition) -> bool {
        self.per_input && at.partition >= crate::source::RIGHT_PARTITIONS
    }

    /// How many of `records` come from the second input (0 unless counts are kept per input).
    #[inline]
    pub(crate) fn second_input_share<T>(&self, records: &[Record<T>]) -> u64 {
        if !self.per_input {
            return 0;
        }
        records.iter().filter(|r| self.is_second_input(r.position)).count() as u64
    }

    /// Adds `n` to the second input's share of one accounting term (`term` picks it).
    #[inline]
    pub(crate) fn count_second_input(
        &mut self,
        term: fn(&mut crate::metrics::InputCounts) -> &mut u64,
        n: u64,
    ) {
        if self.counting && n > 0 {
            *term(&mut self.counters.second_input) += n;
        }
    }

    /// Counts `n` records dropped on purpose.
    #[inline]
    pub fn count_filtered(&mut self, n: u64) {
        if self.counting {
            self.counters.records_filtered += n;
        }
    }

    /// Counts `n` records dropped as duplicates.
    #[inline]
    pub fn count_deduplicated(&mut self, n: u64) {
        if self.counting {
            self.counters.records_deduplicated += n;
        }
    }

    /// Counts `n` records added beyond one output per input.
    #[inline]
    pub fn count_expanded(&mut self, n: u64) {
        if self.counting {
            self.counters.records_expanded += n;
        }
    }

    /// Counts `n` records accepted into a window.
    #[inline]
    pub fn count_windowed(&mut self, n: u64) {
        if self.counting {
            self.counters.records_windowed += n;
        }
    }

    /// Counts `n` records consumed by a keyed process function.
    #[inline]
    pub fn count_processed(&mut self, n: u64) {
        if self.counting {
            self.counters.records_processed += n;
        }
    }

    /// Counts `n` window results emitted.
    #[inline]
    pub fn count_window_rows(&mut self, n: u64) {
        self.counters.window_rows_emitted += n;
    }

    /// Notes the end of a window whose row was just emitted (for the emission-lag metric).
    pub fn note_window_emitted(&mut self, window_end: Timestamp) {
        let newest = &mut self.counters.newest_window_end;
        *newest = Some(newest.map_or(window_end, |e| e.max(window_end)));
    }

    /// Proposes a new combined watermark (the watermark generator calls this); the runner then
    /// delivers it to every operator through [`Operator::on_watermark`].
    pub fn propose_watermark(&mut self, watermark: Watermark) {
        self.pending_watermark = Some(self.pending_watermark.map_or(watermark, |w| w.max(watermark)));
    }

    /// Reports every partition's watermark and idleness (the watermark generator does, for
    /// metrics).
    pub fn report_partitions(&mut self, partitions: Vec<crate::metrics::PartitionStatus>) {
        self.partitions = Some(partitions);
    }

    /// Adds records in and out of the chain step at `index` (chains call this for every step).
    #[inline]
    pub fn count_step(&mut self, index: usize, records_in: u64, records_out: u64) {
        if self.steps.len() <= index {
            self.steps.resize(index + 1, StepCount::default());
        }
        let step = &mut self.steps[index];
        step.records_in += records_in;
        step.records_out += records_out;
    }

    /// Records in and out of each chain step counted so far, by step index.
    pub fn step_counts(&self) -> &[StepCount] {
        &self.steps
    }

    /// Takes the proposed watermark, if any.
    pub fn take_watermark(&mut self) -> Option<Watermark> {
        self.pending_watermark.take()
    }

    /// Takes the dead letters collected so far.
    pub fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead_letters)
    }

    /// The counters collected so far (the runner moves them to the job counters after each batch).
    pub fn counters_mut(&mut self) -> &mut LocalCounters {
        &mut self.counters
    }

    /// Notes that a key step could not trade its records: a worker stopped.
    pub(crate) fn exchange_broken(&mut self) {
        self.exchange_broken = true;
    }

    /// Fails the job with `error` before the results of this batch or watermark go out (the
    /// first one counts).
    pub(crate) fn fail_state(&mut self, error: StateError) {
        self.state_failure.get_or_insert(error);
    }

    /// The state failure a step reported, if any.
    pub(crate) fn take_state_failure(&mut self) -> Option<StateError> {
        self.state_failure.take()
    }

    pub(crate) fn with_counting<R>(&mut self, counting: bool, f: impl FnOnce(&mut Self) -> R) -> R {
        let prev = self.counting;
        self.counting = prev && counting;
        let r = f(self);
        self.counting = prev;
        r
    }
}

/// One step of a job, run batch-at-a-time inside a chain.
///
/// Only [`process_batch`](Operator::process_batch) is required. It must drain `input` (take every
/// record out of it), push results to `out`, and account for every record it does not pass on: a
/// filter calls [`Context::count_filtered`], a rejection goes to [`Context::dead_letter`].
///
/// # Examples
/// A custom operator that upper-cases text payloads:
/// ```
/// use ferroflow_core::{Context, Operator, Record};
///
/// #[derive(Debug)]
/// struct Upper;
/// impl Operator for Upper {
///     type In = String;
///     type Out = String;
///     fn process_batch(&mut self, input: &mut Vec<Record<String>>, _ctx: &mut Context,
///                      out: &mut Vec<Record<String>>) {
///         out.extend(input.drain(..).map(|r| r.map_payload(|s| s.to_uppercase())));
///     }
/// }
///
/// let mut op = Upper;
/// let mut ctx = Context::default();
/// let mut input = vec![Record::new("a".to_string(), 0)];
/// let mut out = Vec::new();
/// op.process_batch(&mut input, &mut ctx, &mut out);
/// assert_eq!(out[0].payload, "A");
/// assert!(input.is_empty());
/// ```
pub trait Operator: Send + 'static {
    /// Payload type consumed.
    type In: Send + 'static;
    /// Payload type produced.
    type Out: Send + 'static;

    /// Processes one batch: drain `input`, push results to `out`.
    fn process_batch(
        &mut self,
        input: &mut Vec<Record<Self::In>>,
        ctx: &mut Context,
        out: &mut Vec<Record<Self::Out>>,
    );

    /// Reacts to a source signal (partition assignment, end of input, idleness tick).
    fn on_signal(&mut self, _signal: &Signal, _ctx: &mut Context) {}

    /// Reacts to the combined watermark moving forward; may emit (windows fire here).
    fn on_watermark(&mut self, _watermark: Watermark, _ctx: &mut Context, _out: &mut Vec<Record<Self::Out>>) {
    }

    /// Processing time moved to `now` (the runner calls it at each tick, after the tick's
    /// signal): processing-time timers fire here.
    fn on_processing_time(&mut self, _now: Timestamp, _ctx: &mut Context, _out: &mut Vec<Record<Self::Out>>) {
    }

    /// True while the operator holds output it has not emitted yet: a step that fires many rows
    /// at once (a window closing for millions of keys) emits them in chunks of
    /// [`OUTPUT_CHUNK`] rows and says so here. The runner then takes each chunk to the sink and
    /// calls [`resume_output`](Self::resume_output) until nothing is pending, before anything else
    /// reaches the operator, so that the rows of one firing never sit in memory all at once.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::operator::OUTPUT_CHUNK;
    /// use ferroflow_core::time::Watermark;
    /// use ferroflow_core::window::{Count, WindowOperator, WindowSpec};
    /// use ferroflow_core::{Context, Key, Operator, Record};
    ///
    /// let spec = WindowSpec::tumbling(std::time::Duration::from_millis(10)).unwrap();
    /// let mut op = WindowOperator::new("counts", spec, Count);
    /// let (mut ctx, mut out) = (Context::default(), Vec::new());
    /// let mut input: Vec<_> =
    ///     (0..OUTPUT_CHUNK + 5).map(|i| Record::new(i, 3).with_key(Key::from(i.to_string()))).collect();
    /// op.process_batch(&mut input, &mut ctx, &mut out);
    /// op.on_watermark(Watermark(9), &mut ctx, &mut out);
    /// assert_eq!(out.len(), OUTPUT_CHUNK);
    /// assert!(op.has_pending_output());
    /// out.clear();
    /// op.resume_output(&mut ctx, &mut out);
    /// assert_eq!(out.len(), 5);
    /// assert!(!op.has_pending_output());
    /// ```
    fn has_pending_output(&self) -> bool {
        false
    }

    /// Emits the next chunk of the output the operator held back (see
    /// [`has_pending_output`](Self::has_pending_output)).
    fn resume_output(&mut self, _ctx: &mut Context, _out: &mut Vec<Record<Self::Out>>) {}

    /// True for operators that may emit or change state in
    /// [`on_processing_time`](Self::on_processing_time) (the runner skips the others).
    fn fires_on_processing_time(&self) -> bool {
        false
    }

    /// Counts the operator's keyed state against `budget`, spilling what does not fit (the
    /// runner calls it before the first batch or restore when it has a budget).
    fn attach_budget(&mut self, _budget: &crate::state::StateBudget) {}

    /// Writes the operator's state into `state` (called at a batch boundary, for checkpoints).
    fn snapshot_state(&mut self, _state: &mut dyn StateBackend) -> Result<(), StateError> {
        Ok(())
    }

    /// Replaces the operator's state with what `state` holds (called before the first batch).
    fn restore_state(&mut self, _state: &dyn StateBackend) -> Result<(), StateError> {
        Ok(())
    }

    /// True for operators that consume source records for good (windows): steps after them see
    /// results, which the record accounting does not count.
    fn consumes_records(&self) -> bool {
        false
    }

    /// A short name for logs and metrics.
    fn name(&self) -> &'static str {
        "operator"
    }

    /// Number of steps this operator is made of: 1, or the sum of its parts for a [`Chain`].
    fn steps(&self) -> usize {
        1
    }

    /// Appends the name of each step, in order (a [`Chain`] lists its parts).
    fn step_names(&self, names: &mut Vec<&'static str>) {
        names.push(self.name());
    }

    /// Appends the id of each stateful step, in order (a [`Chain`] lists its parts). A checkpoint
    /// records them, and a restore maps the state it holds to the job's operators by them.
    fn state_ids(&self, ids: &mut Vec<String>) {
        let _ = ids;
    }

    /// False for a step whose state is not split by the records' key (a dedup keeps its own
    /// keys): a job with such a step cannot run as several copies, one per share of the keys
    /// ([`Runner::parallel_job`](crate::Runner::parallel_job) then runs one copy).
    fn splits_by_key(&self) -> bool {
        true
    }

    /// Keeps only the state of the keys `keep` accepts. A job run as several copies restores
    /// every copy from the whole checkpoint, then each keeps the keys it owns. A step that keeps
    /// state per key implements it; the default keeps everything (stateless steps).
    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        let _ = keep;
    }

    /// Connects the step to the job's exchanges when the chain is one of several copies: a key
    /// step takes its port (see [`ExchangeHub`]). A [`Chain`] connects its parts in order.
    fn connect_exchanges(&mut self, ports: &mut ExchangePorts<'_>) {
        let _ = ports;
    }

    /// True when the step must run for every batch, even an empty one (a connected key step:
    /// every copy takes part in every round of its exchange).
    fn runs_every_batch(&self) -> bool {
        false
    }

    /// True when a timestamp step notes event times after a connected key step; sets
    /// `exchanged` once a connected key step was passed. Walked in step order by a [`Chain`]:
    /// when every note is taken before the first exchange, the copies trade their notes in that
    /// exchange's round instead of meeting a second time per batch.
    fn notes_after_exchange(&self, exchanged: &mut bool) -> bool {
        let _ = exchanged;
        false
    }

    /// True when a step before the first connected key step may emit records from
    /// [`on_watermark`](Self::on_watermark) or [`on_processing_time`](Self::on_processing_time); sets `exchanged` once a connected key step was passed.
    /// Walked in step order by a [`Chain`]: copies keep their key step's round in flight across
    /// shares only when nothing upstream of it emits between shares. Steps that never emit on a
    /// watermark or a tick say so; any other step before an exchange is taken to emit.
    fn emits_before_exchange(&self, exchanged: &mut bool) -> bool {
        !*exchanged
    }

    /// Applies the event times that every copy of the chain noted for the last batch (see
    /// [`Context`]'s observing mode), in input order, and proposes the watermark that follows:
    /// the copies' watermarks then move exactly as one chain's would over the whole batch.
    fn observe_event_times(&mut self, observations: &[(PartitionId, Timestamp)], ctx: &mut Context) {
        let _ = (observations, ctx);
    }
}

/// A step that keeps state under an id: the id is what a checkpoint or savepoint files its state
/// under, so it must stay the same across changes to the job (Flink's `uid`).
///
/// [`Stream::id`](crate::Stream::id) sets it on the last step of a stream.
pub trait StatefulOperator: Operator {
    /// Sets the id the step's state is kept under.
    fn set_id(&mut self, id: String);
}

/// Anything the runner can run: an [`Operator`] itself or a [`Stream`](crate::Stream) builder.
pub trait IntoOperator {
    /// The operator chain.
    type Op: Operator;
    /// Finishes building.
    fn into_operator(self) -> Self::Op;
}

impl<O: Operator> IntoOperator for O {
    type Op = O;
    fn into_operator(self) -> O {
        self
    }
}
