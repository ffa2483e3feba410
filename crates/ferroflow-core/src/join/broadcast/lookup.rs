//! The join of a keyed stream with a broadcast table.

use super::table::{BroadcastTable, HistoryGone, TableReader};
use crate::dead_letter::{DeadLetterReason, Rejection};
use crate::join::arrivals::Arrivals;
use crate::operator::{KeyedContext, KeyedFunction, MapState, StateDeclarations, StateValue, TimeDomain};
use crate::record::{SourcePosition, Timestamp};

/// What the join makes of an event and the table's value (`None`: no value); `None` emits nothing.
type LookupFn<L, V, O> = Box<dyn FnMut(&L, Option<&V>) -> Option<O> + Send>;

/// Whether an event at `t` is late at `watermark` (see [`BroadcastJoin::late_when`]).
type LatePredicate = Box<dyn Fn(Timestamp, Timestamp) -> bool + Send>;

/// Enriches each event with the [`BroadcastTable`]'s value of the event's key that was valid at
/// the event's time (an as-of lookup, as [`TemporalJoin`](crate::join::TemporalJoin) does, but on a
/// table every task holds whole, so the stream need not be partitioned by the table's key).
///
/// Run it with [`Stream::broadcast_join`](crate::Stream::broadcast_join) on a stream keyed by
/// the table's key, whose source the table's feed [gates](super::TableFeed::gating). Semantics:
/// - An event waits in keyed state until the job's watermark reaches its time. The table's input
///   holds the job's watermark back, so by then every version up to the event's time has arrived;
///   the event is then joined and emitted at its own time and with its source position (a step
///   after the join that refuses it names the event's record).
/// - An event at or below the watermark (late for the job) is joined at once when the table is
///   past its time (every version up to it is in; after a restart, while the table reloads, it
///   waits instead). Steps after the join judge its lateness, or the join does with
///   [`late_when`](Self::late_when); the table's history must reach back as far as late events
///   are accepted.
/// - An event whose version the table no longer keeps (it lies more than the table's history
///   behind every other reader: a partition taken over from an old checkpoint) goes to the dead
///   letters (`processing_error`), never joined with a wrong version.
/// - [`inner`](Self::inner) emits nothing for an event whose key had no version yet;
///   [`left_outer`](Self::left_outer) emits it with `None`. [`latest`](Self::latest) joins at once
///   with the latest version loaded (Kafka Streams' GlobalKTable join).
///
/// # Examples
/// ```
/// use ferroflow_core::join::{BroadcastJoin, BroadcastTable};
/// use ferroflow_core::operator::KeyedProcess;
/// use ferroflow_core::time::Watermark;
/// use ferroflow_core::{Context, Key, Operator, Record};
///
/// let tiers: BroadcastTable<&'static str> = BroadcastTable::new("tiers");
/// tiers.insert(Key::from("u1"), 100, "free");
/// tiers.insert(Key::from("u1"), 200, "pro");
/// let join = BroadcastJoin::left_outer(&tiers, |clicks: &u32, tier: Option<&&str>| (*clicks, tier.copied()));
/// let mut op = KeyedProcess::new("tiered", join);
/// let mut input = vec![Record::new(3u32, 150).with_key(Key::from("u1"))];
/// let (mut ctx, mut out) = (Context::default(), Vec::new());
/// op.process_batch(&mut input, &mut ctx, &mut out);
/// assert!(out.is_empty(), "the event waits for the watermark");
/// op.on_watermark(Watermark(150), &mut ctx, &mut out);
/// assert_eq!(out[0].payload, (3, Some("free")));
/// ```
pub struct BroadcastJoin<L, V, O> {
    table: BroadcastTable<V>,
    /// Holds the table's history back to what this step may still look up (none for `latest`).
    reader: Option<TableReader>,
    latest: bool,
    join: LookupFn<L, V, O>,
    name: String,
    /// Events behind the watermark this says are late go to the dead letters here.
    late_when: Option<LatePredicate>,
    /// Events waiting for the watermark, with the position they were read from.
    waiting: MapState<Timestamp, Arrivals<(L, SourcePosition)>>,
    /// Rows of the firing at hand, emitted once the state is let go.
    found: Vec<(O, Timestamp, SourcePosition)>,
}

impl<L, V, O> std::fmt::Debug for BroadcastJoin<L, V, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastJoin")
            .field("table", &self.table.shared.name)
            .field("latest", &self.latest)
            .finish_non_exhaustive()
    }
}

impl<L: StateValue, V: Send + Sync + 'static, O: Send + 'static> BroadcastJoin<L, V, O> {
    /// An inner join: `f(event, value)` for each event whose key had a value at its time.
    pub fn inner(table: &BroadcastTable<V>, mut f: impl FnMut(&L, &V) -> O + Send + 'static) -> Self {
        Self::build(table, Box::new(move |l, v| v.map(|v| f(l, v))))
    }

    /// A left-outer join: `f(event, value)` for every event, `None` when its key had no value at
    /// its time.
    pub fn left_outer(
        table: &BroadcastTable<V>,
        mut f: impl FnMut(&L, Option<&V>) -> O + Send + 'static,
    ) -> Self {
        Self::build(table, Box::new(move |l, v| Some(f(l, v))))
    }

    fn build(table: &BroadcastTable<V>, join: LookupFn<L, V, O>) -> Self {
        Self {
            table: table.clone(),
            reader: Some(table.reader()),
            latest: false,
            join,
            name: "events".to_owned(),
            late_when: None,
            waiting: MapState::new("waiting"),
            found: Vec::new(),
        }
    }

    /// Joins each event at once with its key's latest version loaded, whatever its time (Kafka
    /// Streams' GlobalKTable join): nothing waits and nothing is late, and results depend on how
    /// far the table has loaded.
    pub fn latest(mut self) -> Self {
        self.latest = true;
        self.reader = None;
        self
    }

    /// Refuses, as `late_event` dead letters, the events behind the watermark for which
    /// `late(event_time, watermark)` holds, instead of joining them and leaving them to the next
    /// step: give it that step's rule (a window's: [`WindowSpec::is_late`](crate::window::WindowSpec::is_late)).
    /// Refused here, they keep their bytes and count in the accounting; a window after a join
    /// sees the join's rows, not source records, and its dead letters have neither.
    pub fn late_when(mut self, late: impl Fn(Timestamp, Timestamp) -> bool + Send + 'static) -> Self {
        self.late_when = Some(Box::new(late));
        self
    }

    /// Names the events' input in the dead letters of its late records (`events` unless named).
    pub fn with_input_name(mut self, events: impl Into<String>) -> Self {
        self.name = events.into();
        self
    }
}

impl<L: StateValue, V: Send + Sync + 'static, O: Send + 'static> KeyedFunction for BroadcastJoin<L, V, O> {
    type In = L;
    type Out = O;

    fn declare(&self, states: &mut StateDeclarations) {
        states.map(self.waiting);
    }

    fn process(&mut self, input: L, ctx: &mut KeyedContext<'_, O>) -> Result<(), Rejection> {
        let (t, watermark) = (ctx.timestamp(), ctx.watermark());
        if !self.table.is_fed() {
            return Err(Rejection::new(
                DeadLetterReason::ProcessingError,
                format!(
                    "broadcast table '{}' has no input: gate the job's source with \
                     `table.loaded_from(..).gating(source)`",
                    self.table.name()
                ),
            ));
        }
        if self.latest {
            let join = &mut self.join;
            if let Some(o) = self.table.with_latest(ctx.key(), |v| join(&input, v)) {
                ctx.emit_at(o, t);
            }
            return Ok(());
        }
        // Every timer at or below the watermark has fired: this step looks nothing up below it.
        if let Some(reader) = &mut self.reader {
            reader.settled(watermark);
        }
        if t <= watermark {
            if self.late_when.as_ref().is_some_and(|late| late(t, watermark)) {
                return Err(late_event(&self.name, t, watermark));
            }
            // Behind the job's watermark: once the table is past `t` too, every version up to it
            // is in and the answer is final (after a restart the table may still be loading:
            // then it waits like any event, and fires once the watermark moves).
            if t <= self.table.watermark().0 {
                let join = &mut self.join;
                let row = self
                    .table
                    .with_value(ctx.key(), t, |v| join(&input, v))
                    .map_err(|g| self.gone(t, 1, g))?;
                if let Some(o) = row {
                    ctx.emit_at(o, t);
                }
                return Ok(());
            }
        }
        let position = ctx.position();
        ctx.map(self.waiting)?.get_or_insert_with(t, Arrivals::default).push((input, position));
        if t <= watermark {
            // Behind the watermark already, its event-time timer waits for the next move; the
            // table catching up is no move of the watermark: look again at the next tick.
            ctx.register_processing_time_timer(ctx.processing_time());
        }
        ctx.register_event_time_timer(t);
        Ok(())
    }

    /// Joins the events whose time the watermark has reached with the values valid then.
    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, O>) -> Result<(), Rejection> {
        let at = match ctx.timer_domain() {
            // Events behind the watermark that waited for the table (see `process`): those the
            // table has passed now.
            Some(TimeDomain::ProcessingTime) => ctx.watermark().min(self.table.watermark().0),
            _ => ctx.timestamp(),
        };
        if let Some(reader) = &mut self.reader {
            // Timers fire in time order: every lookup to come is at `at` or later.
            reader.settled(at.saturating_sub(1));
            reader.joined(at);
        }
        let due = ctx.map(self.waiting)?.remove_range(..=at);
        let watermark = ctx.watermark();
        if ctx.timer_domain() == Some(TimeDomain::ProcessingTime)
            && ctx.map(self.waiting)?.range(..=watermark).next().is_some()
        {
            ctx.register_processing_time_timer(ctx.processing_time().saturating_add(1));
        }
        let mut gone = None;
        for (t, events) in due {
            let (join, found) = (&mut self.join, &mut self.found);
            let looked_up = self.table.with_value(ctx.key(), t, |v| {
                found.extend(events.iter().filter_map(|(l, at)| join(l, v).map(|o| (o, t, *at))));
            });
            if let Err(g) = looked_up {
                gone = Some((t, events.len(), g));
            }
        }
        for (o, t, position) in self.found.drain(..) {
            ctx.emit_from(o, t, position);
        }
        match gone {
            None => Ok(()),
            Some((t, n, g)) => Err(self.gone(t, n, g)),
        }
    }
}

/// The dead letter of an event the step after the join would refuse as late.
fn late_event(input: &str, t: Timestamp, watermark: Timestamp) -> Rejection {
    Rejection::new(
        DeadLetterReason::LateEvent,
        format!(
            "input '{input}' of a broadcast join: event time {t} is too far behind the watermark {watermark}"
        ),
    )
}

impl<L, V: Send + Sync + 'static, O> BroadcastJoin<L, V, O> {
    /// The dead letter of `n` events at `t` whose version the table no longer keeps.
    fn gone(&self, t: Timestamp, n: usize, g: HistoryGone) -> Rejection {
        Rejection::new(
            DeadLetterReason::ProcessingError,
            format!(
                "{n} event(s) at {t}: broadcast table '{}' no longer keeps the version valid then (its oldest \
                 kept is at {}); this step lies more than the table's history behind the other readers: raise \
                 `BroadcastTable::with_history`",
                self.table.name(),
                g.oldest_kept
            ),
        )
    }
}
