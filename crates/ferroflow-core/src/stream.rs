//! The job builder: `Stream::<T>::new().filter(..).map(..).window(..)`.

use crate::dead_letter::Rejection;
use crate::join::{BroadcastJoin, BroadcastJoinStep, IntervalJoin, TemporalJoin, WindowJoin};
use crate::operator::{
    AssignTimestamps, Chain, Dedup, Filter, FlatMap, KeyBy, KeyedFunction, KeyedProcess, Map, Operator,
    Process, ProcessOutput, SourceInput, StatefulOperator, TryMap,
};
use crate::record::{Key, Record, Timestamp};
use crate::time::WatermarkStrategy;
use crate::window::{Aggregator, WindowOperator, WindowSpec};

/// The decoder [`Stream::decode_json`] installs.
pub type DecodeFn<T, U> = fn(&T) -> Result<U, Rejection>;

/// The step [`Stream::decode_json`] appends.
pub type DecodeJson<T, U> = TryMap<T, U, Rejection, DecodeFn<T, U>>;

fn decode_json_payload<T: AsRef<[u8]>, U: serde::de::DeserializeOwned>(b: &T) -> Result<U, Rejection> {
    crate::json::parse::<U>(b.as_ref())
}

/// The stream after appending step `B` to chain `Op`, keyed or not as before (`S`).
pub type Then<Op, B, S = Unkeyed> = Stream<<Op as Operator>::In, Chain<Op, B>, S>;

/// Type state of a [`Stream`] whose records have no key yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unkeyed;

/// Type state of a [`Stream`] after [`key_by`](Stream::key_by): keyed steps (windows) are
/// available. Steps that keep records' keys (filter, map, …) keep it keyed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keyed;

/// A chain of operators under construction; each method appends one step.
///
/// All steps of a stream run fused in one task, batch-at-a-time (see [`crate::operator`]).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use ferroflow_core::time::WatermarkStrategy;
/// use ferroflow_core::window::{Count, WindowSpec};
/// use ferroflow_core::{Key, Stream};
///
/// let stream = Stream::<(String, i64)>::new()
///     .filter(|(user, _)| !user.is_empty())
///     .assign_timestamps(|(_, ts)| *ts, WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(1)))
///     .key_by(|(user, _)| Key::from(user.as_str()))
///     .window(WindowSpec::tumbling(Duration::from_secs(60)).unwrap(), Count);
/// # let _ = stream;
/// ```
///
/// A stream is keyed once [`key_by`](Stream::key_by) has run (the type says so): only then does
/// [`window`](Stream::window) exist, so a window cannot silently aggregate everything under one
/// empty key.
///
/// ```compile_fail
/// use std::time::Duration;
/// use ferroflow_core::prelude::*;
/// // No key_by: `window` does not exist on an unkeyed stream.
/// let job = Stream::<i64>::new().window(WindowSpec::tumbling(Duration::from_secs(1)).unwrap(), Count);
/// ```
#[derive(Debug)]
pub struct Stream<In, Op: Operator<In = In> = SourceInput<In>, S = Unkeyed> {
    op: Op,
    _keyed: std::marker::PhantomData<S>,
}

impl<T: Send + 'static> Stream<T, SourceInput<T>> {
    /// An empty chain over source records of type `T`.
    pub fn new() -> Self {
        Self { op: SourceInput::new(), _keyed: std::marker::PhantomData }
    }
}

impl<T: Send + 'static> Default for Stream<T, SourceInput<T>> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Op: Operator, S> Stream<Op::In, Op, S> {
    /// Appends any operator (the stream stays keyed if it was).
    pub fn then<B: Operator<In = Op::Out>>(self, next: B) -> Then<Op, B, S> {
        Stream { op: Chain::new(self.op, next), _keyed: std::marker::PhantomData }
    }

    /// The id a stateful step appended now gets unless [`id`](Stream::id) names it: the step's
    /// position. Inserting a step before it changes it, as Flink's generated ids change; a restore
    /// then refuses the checkpoint instead of dropping its state silently.
    fn position_id(&self, kind: &str) -> String {
        format!("{kind}#{}", self.op.steps())
    }

    /// Keeps records whose payload satisfies `f`; the rest are counted as filtered. See [`Filter`].
    pub fn filter<F>(self, f: F) -> Then<Op, Filter<Op::Out, F>, S>
    where
        F: FnMut(&Op::Out) -> bool + Send + 'static,
    {
        self.then(Filter::new(f))
    }

    /// Transforms each payload. See [`Map`].
    pub fn map<U, F>(self, f: F) -> Then<Op, Map<Op::Out, U, F>, S>
    where
        U: Send + 'static,
        F: FnMut(Op::Out) -> U + Send + 'static,
    {
        self.then(Map::new(f))
    }

    /// Turns each payload into zero or more. See [`FlatMap`].
    pub fn flat_map<I, F>(self, f: F) -> Then<Op, FlatMap<Op::Out, I, F>, S>
    where
        I: IntoIterator + 'static,
        I::Item: Send + 'static,
        F: FnMut(Op::Out) -> I + Send + 'static,
    {
        self.then(FlatMap::new(f))
    }

    /// Sets each record's key. See [`KeyBy`].
    pub fn key_by<F>(self, f: F) -> Then<Op, KeyBy<Op::Out, F>, Keyed>
    where
        F: FnMut(&Op::Out) -> Key + Send + 'static,
    {
        Stream { op: Chain::new(self.op, KeyBy::new(f)), _keyed: std::marker::PhantomData }
    }

    /// Maps with a fallible `f`: `Ok(u)` continues as the payload, `Err(e)` goes to the dead letters
    /// with `e`'s reason, the record's position and its original bytes. See [`TryMap`].
    pub fn try_map<U, E, F>(self, f: F) -> Then<Op, TryMap<Op::Out, U, E, F>, S>
    where
        U: Send + 'static,
        E: Into<Rejection> + 'static,
        F: FnMut(&Op::Out) -> Result<U, E> + Send + 'static,
    {
        self.then(TryMap::new(f))
    }

    /// Decodes JSON payloads into `U` (on [`json::parse`](crate::json::parse)); undecodable ones
    /// become `decode_error` dead letters.
    pub fn decode_json<U>(self) -> Then<Op, DecodeJson<Op::Out, U>, S>
    where
        Op::Out: AsRef<[u8]>,
        U: serde::de::DeserializeOwned + Send + 'static,
    {
        self.try_map(decode_json_payload::<Op::Out, U> as DecodeFn<Op::Out, U>)
    }

    /// The general step: any number of outputs per record, or a rejection. See [`Process`].
    pub fn process<U, F>(self, f: F) -> Then<Op, Process<Op::Out, U, F>, S>
    where
        U: Send + 'static,
        F: FnMut(Record<Op::Out>, &mut ProcessOutput<'_, Op::Out, U>) + Send + 'static,
    {
        self.then(Process::new(f))
    }

    /// Drops records whose `key_fn(payload)` was already seen within `ttl` of event time, counting
    /// them as deduplicated. See [`Dedup`] for the exact semantics; put it after
    /// [`assign_timestamps`](Self::assign_timestamps). Give it a stable id with
    /// [`.id("…")`](Stream::id) so that savepoints survive changes to the job.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use ferroflow_core::time::WatermarkStrategy;
    /// use ferroflow_core::{Context, Operator, Record, Stream};
    ///
    /// let mut job = Stream::<(String, i64)>::new()
    ///     .assign_timestamps(|e| e.1, WatermarkStrategy::monotonous())
    ///     .dedup_by(Duration::from_secs(600), |e: &(String, i64)| e.0.as_str())
    ///     .into_operator();
    /// let mut input = vec![Record::new(("id-1".to_string(), 5), 0), Record::new(("id-1".to_string(), 9), 0)];
    /// let (mut ctx, mut out) = (Context::default(), Vec::new());
    /// job.process_batch(&mut input, &mut ctx, &mut out);
    /// assert_eq!(out.len(), 1);
    /// assert_eq!(ctx.counters_mut().records_deduplicated, 1);
    /// ```
    pub fn dedup_by<K, F>(self, ttl: std::time::Duration, key_fn: F) -> Then<Op, Dedup<Op::Out, F, K>, S>
    where
        K: AsRef<[u8]> + ?Sized + 'static,
        F: for<'a> FnMut(&'a Op::Out) -> &'a K + Send + 'static,
    {
        let id = self.position_id("dedup");
        self.then(Dedup::new(id, ttl, key_fn))
    }

    /// Sets event time from the payload and generates watermarks. See [`AssignTimestamps`].
    pub fn assign_timestamps<F>(
        self,
        f: F,
        strategy: WatermarkStrategy,
    ) -> Then<Op, AssignTimestamps<Op::Out, F>, S>
    where
        F: FnMut(&Op::Out) -> Timestamp + Send + 'static,
    {
        self.then(AssignTimestamps::new(f, strategy))
    }

    /// The assembled operator chain.
    pub fn into_operator(self) -> Op {
        self.op
    }
}

impl<Op: Operator> Stream<Op::In, Op, Keyed> {
    /// Aggregates keyed records in event-time windows. See [`WindowOperator`]. Give it a stable id
    /// with [`.id("…")`](Stream::id) so that savepoints survive changes to the job.
    pub fn window<A>(self, spec: WindowSpec, agg: A) -> Then<Op, WindowOperator<Op::Out, A>, Keyed>
    where
        A: Aggregator<Op::Out>,
    {
        let id = self.position_id("window");
        self.then(WindowOperator::new(id, spec, agg))
    }

    /// Runs a [`KeyedFunction`] on every record with its key's state and event-time timers. See
    /// [`KeyedProcess`]. Give it a stable id with [`.id("…")`](Stream::id) so that savepoints
    /// survive changes to the job.
    pub fn keyed_process<F>(self, f: F) -> Then<Op, KeyedProcess<F>, Keyed>
    where
        F: KeyedFunction<In = Op::Out>,
    {
        let id = self.position_id("keyed_process");
        self.then(KeyedProcess::new(id, f))
    }
}

impl<Op: Operator> Stream<Op::In, Op, Keyed>
where
    Op::Out: crate::operator::StateValue,
{
    /// Enriches each record with a [`BroadcastTable`](crate::join::BroadcastTable)'s value of its
    /// key valid at its time. See [`BroadcastJoin`] for the semantics; the job's source must be
    /// the table's feed [gating](crate::join::TableFeed::gating) the events' source. Give it a stable
    /// id with [`.id("…")`](Stream::id) so that savepoints survive changes to the job.
    pub fn broadcast_join<V: Send + Sync + 'static, O: Send + 'static>(
        self,
        join: BroadcastJoin<Op::Out, V, O>,
    ) -> Then<Op, BroadcastJoinStep<Op::Out, V, O>, Keyed> {
        let id = self.position_id("broadcast_join");
        self.then(KeyedProcess::new(id, join))
    }
}

impl<Op, L, R> Stream<Op::In, Op, Keyed>
where
    Op: Operator<Out = crate::join::Either<L, R>>,
    L: crate::operator::StateValue,
    R: crate::operator::StateValue,
{
    /// Joins the `Left` and `Right` records of each key whose event times satisfy
    /// `left.ts + lower <= right.ts <= left.ts + upper`. See [`IntervalJoin`] for the semantics;
    /// build it with [`IntervalJoin::inner`] or [`IntervalJoin::left_outer`]. Give it a stable
    /// id with [`.id("…")`](Stream::id) so that savepoints survive changes to the job.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::join::{Either, IntervalJoin};
    /// use ferroflow_core::prelude::*;
    ///
    /// type Event = Either<(String, i64), (String, i64)>; // (ad, time): impressions, clicks
    /// let side = |e: &Event| e.as_ref().either(|l| l, |r| r).clone();
    /// let job = Stream::<Event>::new()
    ///     .assign_timestamps(move |e| side(e).1, WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5)))
    ///     .key_by(|e| Key::from(e.as_ref().either(|l| &l.0, |r| &r.0).as_str()))
    ///     .interval_join(IntervalJoin::inner(0, 60_000, |imp: &(String, i64), click: &(String, i64)| {
    ///         (imp.0.clone(), click.1 - imp.1)
    ///     }).unwrap())
    ///     .id("clicks-after-impressions");
    /// # let _ = job;
    /// ```
    pub fn interval_join<O: Send + 'static>(
        self,
        join: IntervalJoin<L, R, O>,
    ) -> Then<Op, KeyedProcess<IntervalJoin<L, R, O>>, Keyed> {
        let id = self.position_id("interval_join");
        self.then(KeyedProcess::new(id, join))
    }

    /// Enriches each `Left` event with its key's `Right` value valid at the event's time (or the
    /// latest value, with [`TemporalJoin::latest`]). See [`TemporalJoin`] for the semantics. Give
    /// it a stable id with [`.id("…")`](Stream::id) so that savepoints survive changes to the job.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::join::{Either, TemporalJoin};
    /// use ferroflow_core::prelude::*;
    ///
    /// // (user, time, …) events and (user, time, segment) profile versions.
    /// type Event = Either<(String, i64), (String, i64, String)>;
    /// let job = Stream::<Event>::new()
    ///     .assign_timestamps(|e| e.as_ref().either(|l| l.1, |r| r.1), WatermarkStrategy::monotonous())
    ///     .key_by(|e| Key::from(e.as_ref().either(|l| &l.0, |r| &r.0).as_str()))
    ///     .temporal_join(TemporalJoin::left_outer(|e: &(String, i64), p: Option<&(String, i64, String)>| {
    ///         (e.0.clone(), p.map(|p| p.2.clone()))
    ///     }))
    ///     .id("events-with-segment");
    /// # let _ = job;
    /// ```
    pub fn temporal_join<O: Send + 'static>(
        self,
        join: TemporalJoin<L, R, O>,
    ) -> Then<Op, KeyedProcess<TemporalJoin<L, R, O>>, Keyed> {
        let id = self.position_id("temporal_join");
        self.then(KeyedProcess::new(id, join))
    }

    /// Joins the `Left` and `Right` records of each key that fall into the same tumbling,
    /// sliding or session window, as each window fires. See [`WindowJoin`] for the semantics, allowed
    /// lateness included. Give it a stable id with [`.id("…")`](Stream::id) so that savepoints
    /// survive changes to the job.
    pub fn window_join<O: Send + 'static>(
        self,
        join: WindowJoin<L, R, O>,
    ) -> Then<Op, KeyedProcess<WindowJoin<L, R, O>>, Keyed>
    where
        L: Clone,
        R: Clone,
    {
        let id = self.position_id("window_join");
        self.then(KeyedProcess::new(id, join))
    }
}

impl<A: Operator, B: StatefulOperator<In = A::Out>, S> Stream<A::In, Chain<A, B>, S> {
    /// Names the state of the step just appended (a window, a dedup): checkpoints and savepoints
    /// keep its state under this id, so it must stay the same while the job changes around it
    /// (Flink's `uid`). Without one the id is the step's position, and inserting a step before it
    /// makes a restore refuse the checkpoint, naming the ids.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use ferroflow_core::prelude::*;
    ///
    /// let job = Stream::<(String, i64)>::new()
    ///     .assign_timestamps(|e| e.1, WatermarkStrategy::monotonous())
    ///     .key_by(|e| Key::from(e.0.as_str()))
    ///     .window(WindowSpec::tumbling(Duration::from_secs(60)).unwrap(), Count)
    ///     .id("clicks-per-minute")
    ///     .into_operator();
    /// let mut ids = Vec::new();
    /// job.state_ids(&mut ids);
    /// assert_eq!(ids, ["clicks-per-minute"]);
    /// ```
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.op.last_mut().set_id(id.into());
        self
    }
}

impl<Op: Operator, S> crate::operator::IntoOperator for Stream<Op::In, Op, S> {
    type Op = Op;
    fn into_operator(self) -> Op {
        self.op
    }
}
