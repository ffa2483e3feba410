//! The temporal join: each event with its key's table value valid at the event's time.

use either::Either;

use super::arrivals::Arrivals;
use super::{JoinFn, late};
use crate::dead_letter::Rejection;
use crate::error::StateError;
use crate::operator::{KeyedContext, KeyedFunction, MapState, StateDeclarations, StateValue};
use crate::record::Timestamp;

/// Enriches each left event with the right input's value of its key that was valid at the
/// event's time: the version with the latest time at or before it (an "as-of" lookup; Flink's
/// event-time temporal table join, Kafka Streams' join with a versioned table).
///
/// The right input is a changelog: each record is a new version of its key's value from its
/// event time on (use `Option<V>` for deletions, and treat `None` as absent in the join
/// function). Run it with [`Stream::temporal_join`](crate::Stream::temporal_join) on a stream of
/// [`Either`] keyed by the table's key. Semantics:
/// - An event waits in keyed state until the watermark (the lower of both inputs') reaches its
///   time, so that a version on its way is not missed; then it is joined and emitted at its own
///   time.
/// - Versions are kept by time; once the watermark has passed a version's successor, the older one
///   can no longer be valid for any event to come and is dropped.
/// - A record of either input at or below the watermark is late and goes to the dead letters
///   (`late_event`, naming its input): a late version would change results already emitted.
/// - [`inner`](Self::inner) emits nothing for an event whose key had no version yet (Flink's
///   inner temporal join); [`left_outer`](Self::left_outer) emits it with `None`.
/// - [`latest`](Self::latest) joins each event at once with the latest version that has arrived,
///   whatever its time (Kafka Streams' KStream-KTable join): nothing waits and nothing is late,
///   and results depend on the order the inputs arrive in.
///
/// # Examples
/// ```
/// use ferroflow_core::join::{Either, TemporalJoin};
/// use ferroflow_core::operator::KeyedProcess;
/// use ferroflow_core::time::Watermark;
/// use ferroflow_core::{Context, Key, Operator, Record};
///
/// // Orders (left) priced in the currency rate (right) valid when they were placed.
/// let join = TemporalJoin::left_outer(|amount: &u64, rate: Option<&u64>| rate.map(|r| amount * r));
/// let mut op = KeyedProcess::new("priced", join);
/// let rec = |e: Either<u64, u64>, t| Record::new(e, t).with_key(Key::from("EUR"));
/// let mut input = vec![rec(Either::Right(2), 100), rec(Either::Left(10), 150), rec(Either::Right(3), 120)];
/// let (mut ctx, mut out) = (Context::default(), Vec::new());
/// op.process_batch(&mut input, &mut ctx, &mut out);
/// assert!(out.is_empty(), "the order waits for the watermark");
/// op.on_watermark(Watermark(150), &mut ctx, &mut out);
/// assert_eq!(out.iter().map(|r| (r.payload, r.event_time)).collect::<Vec<_>>(), [(Some(30), 150)]);
/// ```
pub struct TemporalJoin<L, R, O> {
    latest: bool,
    join: JoinFn<L, R, O>,
    names: [String; 2],
    versions: MapState<Timestamp, R>,
    waiting: MapState<Timestamp, Arrivals<L>>,
    /// The events a timer lets go of (kept for the next timer, so that none allocates).
    due: Vec<(Timestamp, Arrivals<L>)>,
    /// Rows of the firing at hand, emitted once the state is let go.
    found: Vec<(O, Timestamp)>,
}

impl<L, R, O> std::fmt::Debug for TemporalJoin<L, R, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemporalJoin")
            .field("latest", &self.latest)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl<L: StateValue, R: StateValue, O: Send + 'static> TemporalJoin<L, R, O> {
    /// An inner temporal join: `f(event, version)` for each event whose key had a version at its
    /// time; an event without one emits nothing.
    pub fn inner(mut f: impl FnMut(&L, &R) -> O + Send + 'static) -> Self {
        Self::build(Box::new(move |l, r| r.map(|r| f(l, r))))
    }

    /// A left-outer temporal join: `f(event, version)` for every event, `None` when its key had
    /// no version at its time.
    pub fn left_outer(mut f: impl FnMut(&L, Option<&R>) -> O + Send + 'static) -> Self {
        Self::build(Box::new(move |l, r| Some(f(l, r))))
    }

    fn build(join: JoinFn<L, R, O>) -> Self {
        Self {
            latest: false,
            join,
            names: ["events".to_owned(), "table".to_owned()],
            versions: MapState::new("versions"),
            waiting: MapState::new("waiting"),
            due: Vec::new(),
            found: Vec::new(),
        }
    }

    /// Joins each event at once with the latest version that has arrived (a lookup in processing
    /// order, Kafka Streams' KStream-KTable join) instead of the version valid at its time.
    pub fn latest(mut self) -> Self {
        self.latest = true;
        self
    }

    /// Names the two inputs in the dead letters of their late records (`events` and `table`
    /// unless named).
    pub fn with_input_names(mut self, events: impl Into<String>, table: impl Into<String>) -> Self {
        self.names = [events.into(), table.into()];
        self
    }

    /// Drops the versions no event to come can see: those older than the latest at or before
    /// `upto` (every event to come is later than `upto`).
    fn prune(&self, upto: Timestamp, ctx: &mut KeyedContext<'_, O>) -> Result<(), StateError> {
        let mut versions = ctx.map(self.versions)?;
        // Most keys hold one version: nothing below it, and no second look-up.
        let (valid, older) = {
            let mut at_or_below = versions.range(..=upto).rev().map(|(t, _)| *t);
            (at_or_below.next(), at_or_below.next().is_some())
        };
        if let Some(valid) = valid
            && older
        {
            versions.remove_range(..valid);
        }
        Ok(())
    }
}

impl<L: StateValue, R: StateValue, O: Send + 'static> KeyedFunction for TemporalJoin<L, R, O> {
    type In = Either<L, R>;
    type Out = O;

    fn declare(&self, states: &mut StateDeclarations) {
        states.map(self.versions);
        states.map(self.waiting);
    }

    fn process(&mut self, input: Either<L, R>, ctx: &mut KeyedContext<'_, O>) -> Result<(), Rejection> {
        let (t, watermark) = (ctx.timestamp(), ctx.watermark());
        if self.latest {
            match input {
                Either::Left(l) => {
                    let mut versions = ctx.map(self.versions)?;
                    let row = (self.join)(&l, versions.range(..).next_back().map(|(_, v)| v));
                    if let Some(o) = row {
                        ctx.emit_at(o, t);
                    }
                }
                Either::Right(r) => {
                    let mut versions = ctx.map(self.versions)?;
                    versions.clear();
                    versions.put(t, r);
                }
            }
            return Ok(());
        }
        if t <= watermark {
            return Err(late("a temporal join", &self.names[usize::from(input.is_right())], t, watermark));
        }
        match input {
            Either::Left(l) => {
                ctx.map(self.waiting)?.get_or_insert_with(t, Arrivals::default).push(l);
                ctx.register_event_time_timer(t);
            }
            Either::Right(r) => {
                ctx.map(self.versions)?.put(t, r);
                self.prune(watermark, ctx)?;
            }
        }
        Ok(())
    }

    /// Joins the events whose time the watermark has reached with the versions valid then.
    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, O>) -> Result<(), Rejection> {
        let at = ctx.timestamp();
        let mut due = std::mem::take(&mut self.due);
        ctx.map(self.waiting)?.retain_range(..=at, |t, events| {
            due.push((*t, std::mem::take(events)));
            false
        });
        let mut versions = ctx.map(self.versions)?;
        // Mostly the events of one time, the timer's: the look-up of the version valid then also
        // tells whether an older one is left to drop.
        let one_time = matches!(due.as_slice(), [(t, _)] if *t == at);
        let mut older_than = None;
        for (t, events) in &due {
            let mut at_or_below = versions.range(..=*t).rev();
            let version = at_or_below.next();
            if one_time && at_or_below.next().is_some() {
                older_than = version.map(|(valid, _)| *valid);
            }
            for l in events {
                if let Some(o) = (self.join)(l, version.map(|(_, v)| v)) {
                    self.found.push((o, *t));
                }
            }
        }
        if let Some(valid) = older_than {
            versions.remove_range(..valid);
        }
        due.clear();
        self.due = due;
        for (o, t) in self.found.drain(..) {
            ctx.emit_at(o, t);
        }
        if !one_time {
            self.prune(at, ctx)?;
        }
        Ok(())
    }
}
