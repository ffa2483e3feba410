//! The interval join: pairs of one key whose times lie within bounds of each other.

use either::Either;
use serde::{Deserialize, Serialize};

use super::arrivals::Arrivals;
use super::{JoinFn, late};
use crate::dead_letter::Rejection;
use crate::error::{ConfigError, StateError};
use crate::operator::{
    KeyedContext, KeyedFunction, MapState, StateDeclarations, StateTtl, StateValue, TtlVisibility,
};
use crate::record::Timestamp;

/// A record waiting in a join for partners that may still come.
#[derive(Debug, Serialize, Deserialize)]
struct Waiting<T> {
    value: T,
    /// It met a partner (a left-outer join emits an unmatched left record alone, once its
    /// interval has passed).
    joined: bool,
}

/// The records of one side and key waiting at one event time.
type Waiters<T> = Arrivals<Waiting<T>>;

/// A key's records of both sides waiting at one event time.
#[derive(Debug, Serialize, Deserialize)]
struct Sides<L, R> {
    left: Waiters<L>,
    right: Waiters<R>,
}

impl<L, R> Default for Sides<L, R> {
    fn default() -> Self {
        Self { left: Arrivals::default(), right: Arrivals::default() }
    }
}

/// A key's waiting records of both sides, by event time: one state, so that a record's partners
/// and its own place are found with one look-up of the key, and a timer lets go of both sides in
/// one pass.
type Buffer<L, R> = MapState<Timestamp, Sides<L, R>>;

/// Joins the left and right records of one key whose event times satisfy
/// `left.ts + lower <= right.ts <= left.ts + upper` (bounds included, in ms, either may be
/// negative): Flink's interval join, Kafka Streams' windowed stream-stream join.
///
/// Run it with [`Stream::interval_join`](crate::Stream::interval_join) (or as the function of a
/// [`KeyedProcess`](crate::operator::KeyedProcess)) on a stream of [`Either`] keyed by the join
/// key. Semantics:
/// - A pair is emitted once, when its second record arrives, with event time the later of the
///   two (as Flink does).
/// - Each record waits in keyed state while a partner can still arrive: a left record until the
///   watermark reaches `ts + upper`, a right one until it reaches `ts - lower`. A record whose
///   wait is already over when it arrives joins with what is waiting and is not kept. A
///   left-outer join lets go of each record with a timer at the end of its wait. An inner one,
///   which emits nothing then, does so with a clean-up of its state as the watermark moves (an
///   event-time TTL of `max(upper, -lower)`, swept at most every quarter of it once writes have
///   paid for the walk, at least once per time to live, and at the end of time), without a
///   timer per record, when the two sides' waits are within a factor of two; with timers
///   otherwise.
/// - A record at or below the watermark is late: its partners may be gone, so it goes to the
///   dead letters (`late_event`, naming its input) instead of joining with some of them.
/// - [`left_outer`](Self::left_outer) also emits each left record that met no partner, alone,
///   once the watermark has passed its interval (never earlier: a partner could still come), with
///   event time `ts + upper`, the end of its interval (a step after the join, whose watermark
///   has not moved yet, then never takes it for late); a left record whose interval had passed
///   when it came is emitted at once, at its own time.
///
/// # Examples
/// ```
/// use ferroflow_core::join::{Either, IntervalJoin};
/// use ferroflow_core::operator::KeyedProcess;
/// use ferroflow_core::time::Watermark;
/// use ferroflow_core::{Context, Key, Operator, Record};
///
/// // Clicks (right) within 0..=10 ms after an impression (left) of the same ad.
/// let join = IntervalJoin::inner(0, 10, |imp: &String, click: &String| format!("{imp}+{click}")).unwrap();
/// let mut op = KeyedProcess::new("clicks", join);
/// let rec = |e: Either<String, String>, t| Record::new(e, t).with_key(Key::from("ad-1"));
/// let mut input = vec![
///     rec(Either::Left("i1".into()), 100),
///     rec(Either::Right("c1".into()), 105),
///     rec(Either::Right("c2".into()), 111),
/// ];
/// let (mut ctx, mut out) = (Context::default(), Vec::new());
/// op.process_batch(&mut input, &mut ctx, &mut out);
/// assert_eq!(out.iter().map(|r| (r.payload.as_str(), r.event_time)).collect::<Vec<_>>(), [("i1+c1", 105)]);
/// op.on_watermark(Watermark(200), &mut ctx, &mut out);
/// assert_eq!(op.held(), (0, 0), "nothing waits once the watermark passed both intervals");
/// ```
pub struct IntervalJoin<L, R, O> {
    lower: Timestamp,
    upper: Timestamp,
    outer: bool,
    /// Records are let go by the clean-up of an event-time TTL, not by timers (see `build`).
    swept: bool,
    join: JoinFn<L, R, O>,
    names: [String; 2],
    waiting: Buffer<L, R>,
    /// Pairs found for the record at hand, emitted once its side's state is let go.
    found: Vec<(O, Timestamp)>,
}

impl<L, R, O> std::fmt::Debug for IntervalJoin<L, R, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntervalJoin")
            .field("lower", &self.lower)
            .field("upper", &self.upper)
            .field("outer", &self.outer)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl<L: StateValue, R: StateValue, O: Send + 'static> IntervalJoin<L, R, O> {
    /// An inner join: `f(left, right)` for every pair within `[lower_ms, upper_ms]`. An error if
    /// `lower_ms > upper_ms`.
    pub fn inner(
        lower_ms: Timestamp,
        upper_ms: Timestamp,
        mut f: impl FnMut(&L, &R) -> O + Send + 'static,
    ) -> Result<Self, ConfigError> {
        Self::build(lower_ms, upper_ms, false, Box::new(move |l, r| r.map(|r| f(l, r))))
    }

    /// A left-outer join: `f(left, Some(right))` for every pair, and `f(left, None)` for a left
    /// record that met no partner, once the watermark has passed its interval (at the interval's
    /// end, `ts + upper`). An error if
    /// `lower_ms > upper_ms`.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::join::{Either, IntervalJoin};
    /// use ferroflow_core::operator::KeyedProcess;
    /// use ferroflow_core::time::Watermark;
    /// use ferroflow_core::{Context, Key, Operator, Record};
    ///
    /// let join = IntervalJoin::left_outer(0, 10, |order: &u32, paid: Option<&u32>| (*order, paid.copied())).unwrap();
    /// let mut op = KeyedProcess::new("payments", join);
    /// let mut input = vec![Record::new(Either::<u32, u32>::Left(7), 100).with_key(Key::from("o-7"))];
    /// let (mut ctx, mut out) = (Context::default(), Vec::new());
    /// op.process_batch(&mut input, &mut ctx, &mut out);
    /// op.on_watermark(Watermark(109), &mut ctx, &mut out);
    /// assert!(out.is_empty(), "a payment at 110 ms would still join");
    /// op.on_watermark(Watermark(110), &mut ctx, &mut out);
    /// assert_eq!(out.iter().map(|r| (r.payload, r.event_time)).collect::<Vec<_>>(), [((7, None), 110)]);
    /// ```
    pub fn left_outer(
        lower_ms: Timestamp,
        upper_ms: Timestamp,
        mut f: impl FnMut(&L, Option<&R>) -> O + Send + 'static,
    ) -> Result<Self, ConfigError> {
        Self::build(lower_ms, upper_ms, true, Box::new(move |l, r| Some(f(l, r))))
    }

    fn build(
        lower: Timestamp,
        upper: Timestamp,
        outer: bool,
        join: JoinFn<L, R, O>,
    ) -> Result<Self, ConfigError> {
        if lower > upper {
            return Err(ConfigError::Invalid(format!(
                "an interval join's lower bound ({lower} ms) is above its upper bound ({upper} ms)"
            )));
        }
        let waiting = MapState::new("waiting");
        // An inner join emits nothing when a record's wait ends: its records can be let go by a
        // clean-up that walks the state as the watermark moves, instead of a timer per record
        // that looks its key up a second time. Every record waits at most `max(upper, -lower)`
        // past its own time, the time its entry is stamped with; one kept longer matches
        // nothing, since a partner of it would be late. With one time to live for both sides,
        // the side with the shorter wait is kept as long as the other: only while the shorter
        // is at least half the longer (at most twice the memory), timers otherwise.
        let (left_wait, right_wait) = (i128::from(upper), -i128::from(lower));
        let swept = !outer && 2 * left_wait.min(right_wait) >= left_wait.max(right_wait);
        let waiting = if swept {
            let longest = upper.max(lower.saturating_neg()).max(1);
            let ttl = std::time::Duration::from_millis(u64::try_from(longest).unwrap_or(u64::MAX));
            waiting.with_ttl(StateTtl::event_time(ttl).visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp))
        } else {
            waiting
        };
        Ok(Self {
            lower,
            upper,
            outer,
            swept,
            join,
            names: ["left".to_owned(), "right".to_owned()],
            waiting,
            found: Vec::new(),
        })
    }

    /// Names the two inputs in the dead letters of their late records (`left` and `right`
    /// unless named).
    pub fn with_input_names(mut self, left: impl Into<String>, right: impl Into<String>) -> Self {
        self.names = [left.into(), right.into()];
        self
    }

    fn left_arrives(&mut self, l: L, t: Timestamp, ctx: &mut KeyedContext<'_, O>) -> Result<(), StateError> {
        let watermark = ctx.watermark();
        let mut waiting = ctx.map(self.waiting)?;
        let mut joined = false;
        if let Some((from, to)) = shifted(t, i128::from(self.lower), i128::from(self.upper)) {
            for (&rt, sides) in waiting.range(from..=to) {
                for w in &sides.right {
                    joined = true;
                    if let Some(o) = (self.join)(&l, Some(&w.value)) {
                        self.found.push((o, t.max(rt)));
                    }
                }
            }
        }
        // A partner can still come while the watermark is below `t + upper`.
        let wait_until = i128::from(t) + i128::from(self.upper);
        let waits = wait_until > i128::from(watermark);
        if waits {
            waiting.get_or_insert_with(t, Sides::default).left.push(Waiting { value: l, joined });
        } else if !joined && let Some(o) = (self.join)(&l, None) {
            self.found.push((o, t));
        }
        self.emit_found(ctx);
        if waits && !self.swept {
            ctx.register_event_time_timer(clamp(wait_until));
        }
        Ok(())
    }

    fn right_arrives(&mut self, r: R, t: Timestamp, ctx: &mut KeyedContext<'_, O>) -> Result<(), StateError> {
        let watermark = ctx.watermark();
        let mut waiting = ctx.map(self.waiting)?;
        // Left partners lie in `[t - upper, t - lower]`.
        if let Some((from, to)) = shifted(t, -i128::from(self.upper), -i128::from(self.lower)) {
            let mut unmarked = false;
            for (&lt, sides) in waiting.range(from..=to) {
                for w in &sides.left {
                    unmarked |= !w.joined;
                    if let Some(o) = (self.join)(&w.value, Some(&r)) {
                        self.found.push((o, lt.max(t)));
                    }
                }
            }
            if self.outer && unmarked {
                for (_, sides) in waiting.range_mut(from..=to) {
                    sides.left.iter_mut().for_each(|w| w.joined = true);
                }
            }
        }
        let wait_until = i128::from(t) - i128::from(self.lower);
        let waits = wait_until > i128::from(watermark);
        if waits {
            waiting.get_or_insert_with(t, Sides::default).right.push(Waiting { value: r, joined: false });
        }
        self.emit_found(ctx);
        if waits && !self.swept {
            ctx.register_event_time_timer(clamp(wait_until));
        }
        Ok(())
    }

    fn emit_found(&mut self, ctx: &mut KeyedContext<'_, O>) {
        for (o, at) in self.found.drain(..) {
            ctx.emit_at(o, at);
        }
    }
}

impl<L: StateValue, R: StateValue, O: Send + 'static> KeyedFunction for IntervalJoin<L, R, O> {
    type In = Either<L, R>;
    type Out = O;

    fn declare(&self, states: &mut StateDeclarations) {
        states.map(self.waiting);
    }

    fn process(&mut self, input: Either<L, R>, ctx: &mut KeyedContext<'_, O>) -> Result<(), Rejection> {
        let (t, watermark) = (ctx.timestamp(), ctx.watermark());
        if t <= watermark {
            return Err(late("an interval join", &self.names[usize::from(input.is_right())], t, watermark));
        }
        match input {
            Either::Left(l) => self.left_arrives(l, t, ctx)?,
            Either::Right(r) => self.right_arrives(r, t, ctx)?,
        }
        Ok(())
    }

    /// Lets go of the records whose wait is over, emitting the unmatched left ones of a
    /// left-outer join. A timer stands for the records of its key whose wait ends at its time:
    /// the left ones at `at - upper` and the right ones at `at + lower`, two entries looked up by
    /// time (the records of earlier times went with earlier timers, later ones are still
    /// waiting: a scan of every time up to `at` would pass the same waiting records again at
    /// each timer). At the end of time every record goes (a wait beyond `i64::MAX` ends there).
    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, O>) -> Result<(), Rejection> {
        let at = ctx.timestamp();
        let due = |shift: i128| -> Option<Timestamp> {
            if at == Timestamp::MAX {
                return Some(Timestamp::MAX);
            }
            let bound = i128::from(at) + shift;
            (bound >= i128::from(Timestamp::MIN)).then(|| clamp(bound))
        };
        let (left_due, right_due) = (due(-i128::from(self.upper)), due(i128::from(self.lower)));
        let (upper, join, found) = (self.upper, &mut self.join, &mut self.found);
        let mut let_go = |&ts: &Timestamp, sides: &mut Sides<L, R>| {
            if left_due.is_some_and(|due| ts <= due) {
                // Final once the interval has passed: emitted at its end, so that a step after
                // the join, whose watermark is still below it, does not take it for late.
                let final_at = clamp(i128::from(ts) + i128::from(upper)).max(ts);
                for w in sides.left.drain().filter(|w| !w.joined) {
                    if let Some(o) = join(&w.value, None) {
                        found.push((o, final_at));
                    }
                }
            }
            if right_due.is_some_and(|due| ts <= due) {
                sides.right.clear();
            }
            !(sides.left.is_empty() && sides.right.is_empty())
        };
        let mut waiting = ctx.map(self.waiting)?;
        if at == Timestamp::MAX {
            waiting.retain_range(.., &mut let_go);
        } else {
            for ts in [left_due, right_due.filter(|r| Some(*r) != left_due)].into_iter().flatten() {
                waiting.retain_range(ts..=ts, &mut let_go);
            }
        }
        self.emit_found(ctx);
        Ok(())
    }
}

/// `[t + lo, t + hi]` within the range of timestamps, or `None` when nothing of it is.
fn shifted(t: Timestamp, lo: i128, hi: i128) -> Option<(Timestamp, Timestamp)> {
    let (from, to) = (i128::from(t) + lo, i128::from(t) + hi);
    (from <= i128::from(Timestamp::MAX) && to >= i128::from(Timestamp::MIN)).then(|| (clamp(from), clamp(to)))
}

/// `t` as a timestamp, the nearest one when beyond their range.
fn clamp(t: i128) -> Timestamp {
    Timestamp::try_from(t).unwrap_or(if t < 0 { Timestamp::MIN } else { Timestamp::MAX })
}
