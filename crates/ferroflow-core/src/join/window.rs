//! The window join: pairs of one key whose records fall into the same event-time window.

mod session;

use either::Either;
use serde::{Deserialize, Serialize};

use super::late;
use crate::dead_letter::Rejection;
use crate::error::{ConfigError, StateError};
use crate::operator::{KeyedContext, KeyedFunction, MapState, StateDeclarations, StateValue};
use crate::record::Timestamp;
use crate::window::{Window, WindowKind, WindowSpec};

/// What the join makes of a pair.
type PairFn<L, R, O> = Box<dyn FnMut(&L, &R) -> O + Send>;

/// Both sides' records of one key in one window.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "L: Serialize, R: Serialize",
    deserialize = "L: Deserialize<'de>, R: Deserialize<'de>"
))]
struct Pane<L, R> {
    left: Vec<L>,
    right: Vec<R>,
    /// The window has fired: a record that reaches it now (late, within the allowed lateness)
    /// pairs at once with the other side's records.
    fired: bool,
}

/// Joins the left and right records of one key that fall into the same tumbling, sliding or
/// session window (Flink's `join().where().equalTo().window()`, an inner join): when the watermark
/// reaches a window's last millisecond, `f(left, right)` for every pair in it, at that millisecond.
///
/// Allowed lateness works as in the window operator ([`WindowSpec::with_allowed_lateness`]): a
/// window keeps its records until the watermark passes its end plus the lateness, and a record
/// that reaches a window that has fired pairs at once with the other side's records there (only
/// the new pairs: a pair is emitted once); a record whose every window is past its lateness goes
/// to the dead letters (`late_event`, naming its input). A record of a sliding window belongs to
/// each window that holds it, and pairs in each.
///
/// Session windows are formed by the records of both inputs together, as in Flink: a record at
/// `t` opens `[t, t + gap)`, which merges with every session of its key it touches, whichever
/// input their records came from. A session fires when the watermark reaches its last
/// millisecond; a record that later merges into it (on time for its own session, or late within
/// the allowed lateness) makes it fire again once the watermark reaches the merged session's last
/// millisecond, with only the pairs not emitted before. A record whose own session `[t, t + gap)`
/// is past its allowed lateness is late even when it touches a session still held.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use ferroflow_core::join::{Either, WindowJoin};
/// use ferroflow_core::operator::KeyedProcess;
/// use ferroflow_core::time::Watermark;
/// use ferroflow_core::window::WindowSpec;
/// use ferroflow_core::{Context, Key, Operator, Record};
///
/// let spec = WindowSpec::tumbling(Duration::from_millis(100)).unwrap();
/// let join = WindowJoin::new(spec, |order: &u32, payment: &u32| (*order, *payment)).unwrap();
/// let mut op = KeyedProcess::new("orders-payments", join);
/// let rec = |e: Either<u32, u32>, t| Record::new(e, t).with_key(Key::from("user-1"));
/// let mut input = vec![rec(Either::Left(1), 10), rec(Either::Right(7), 90), rec(Either::Right(8), 110)];
/// let (mut ctx, mut out) = (Context::default(), Vec::new());
/// op.process_batch(&mut input, &mut ctx, &mut out);
/// op.on_watermark(Watermark(99), &mut ctx, &mut out);
/// assert_eq!(out.iter().map(|r| (r.payload, r.event_time)).collect::<Vec<_>>(), [((1, 7), 99)]);
/// ```
pub struct WindowJoin<L, R, O> {
    size: i64,
    slide: i64,
    /// Session windows with this gap (`size` and `slide` unused).
    gap: Option<i64>,
    lateness: i64,
    join: PairFn<L, R, O>,
    names: [String; 2],
    panes: MapState<Timestamp, Pane<L, R>>,
    sessions: MapState<Timestamp, session::SessionPane<L, R>>,
    found: Vec<(O, Timestamp)>,
}

impl<L, R, O> std::fmt::Debug for WindowJoin<L, R, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowJoin")
            .field("size", &self.size)
            .field("slide", &self.slide)
            .field("gap", &self.gap)
            .field("lateness", &self.lateness)
            .finish_non_exhaustive()
    }
}

impl<L: StateValue + Clone, R: StateValue + Clone, O: Send + 'static> WindowJoin<L, R, O> {
    /// An inner join of the pairs in each window of `spec` (tumbling, sliding or session).
    pub fn new(spec: WindowSpec, f: impl FnMut(&L, &R) -> O + Send + 'static) -> Result<Self, ConfigError> {
        let (size, slide, gap) = match spec.kind() {
            WindowKind::Tumbling { size_ms } => (size_ms, size_ms, None),
            WindowKind::Sliding { size_ms, slide_ms } => (size_ms, slide_ms, None),
            WindowKind::Session { gap_ms } => (1, 1, Some(gap_ms)),
        };
        Ok(Self {
            size,
            slide,
            gap,
            lateness: spec.allowed_lateness_ms(),
            join: Box::new(f),
            names: ["left".to_owned(), "right".to_owned()],
            panes: MapState::new("panes"),
            sessions: MapState::new("sessions"),
            found: Vec::new(),
        })
    }

    /// Names the two inputs in the dead letters of their late records (`left` and `right`
    /// unless named).
    pub fn with_input_names(mut self, left: impl Into<String>, right: impl Into<String>) -> Self {
        self.names = [left.into(), right.into()];
        self
    }

    /// The windows holding `t`, earliest first (none near the ends of time, where a window would
    /// not fit).
    fn windows_of(&self, t: Timestamp) -> impl Iterator<Item = Window> + use<L, R, O> {
        let (size, slide) = (self.size, self.slide);
        let last = t.checked_sub(size).and(t.checked_add(size)).map(|_| t - t.rem_euclid(slide));
        let first = last.map(|l| {
            // The earliest start above `t - size`, on the slide's grid.
            let after = t - size;
            l - (l - after - 1).div_euclid(slide) * slide
        });
        let starts =
            first.zip(last).map(|(f, l)| (f..=l).step_by(usize::try_from(slide).unwrap_or(usize::MAX)));
        starts.into_iter().flatten().map(move |start| Window { start, end: start + size })
    }

    /// Past its allowed lateness at `watermark`: the window is gone.
    fn expired(&self, w: &Window, watermark: Timestamp) -> bool {
        w.max_timestamp().saturating_add(self.lateness) <= watermark
    }

    fn arrive(&mut self, input: Either<L, R>, ctx: &mut KeyedContext<'_, O>) -> Result<bool, StateError> {
        let (t, watermark) = (ctx.timestamp(), ctx.watermark());
        let live: Vec<Window> = self.windows_of(t).filter(|w| !self.expired(w, watermark)).collect();
        if live.is_empty() {
            return Ok(false);
        }
        let mut panes = ctx.map(self.panes)?;
        for w in &live {
            let fired = w.max_timestamp() <= watermark;
            let pane =
                panes.get_or_insert_with(w.start, || Pane { left: Vec::new(), right: Vec::new(), fired });
            // A late record in a fired window pairs at once with what is there.
            if pane.fired {
                match &input {
                    Either::Left(l) => {
                        self.found.extend(pane.right.iter().map(|r| ((self.join)(l, r), w.max_timestamp())))
                    }
                    Either::Right(r) => {
                        self.found.extend(pane.left.iter().map(|l| ((self.join)(l, r), w.max_timestamp())))
                    }
                }
            }
        }
        // The record goes into every live window; the last one takes it, the others a copy.
        let (last, rest) = live.split_last().map_or((None, &[][..]), |(l, r)| (Some(l), r));
        for w in rest {
            if let Some(pane) = panes.get_mut(&w.start) {
                match &input {
                    Either::Left(l) => pane.left.push(l.clone()),
                    Either::Right(r) => pane.right.push(r.clone()),
                }
            }
        }
        if let Some(w) = last
            && let Some(pane) = panes.get_mut(&w.start)
        {
            match input {
                Either::Left(l) => pane.left.push(l),
                Either::Right(r) => pane.right.push(r),
            }
        }
        for w in &live {
            let fire = w.max_timestamp();
            if fire > watermark {
                ctx.register_event_time_timer(fire);
            }
            ctx.register_event_time_timer(fire.saturating_add(self.lateness));
        }
        for (o, at) in self.found.drain(..) {
            ctx.emit_at(o, at);
        }
        Ok(true)
    }
}

impl<L: StateValue + Clone, R: StateValue + Clone, O: Send + 'static> KeyedFunction for WindowJoin<L, R, O> {
    type In = Either<L, R>;
    type Out = O;

    fn declare(&self, states: &mut StateDeclarations) {
        match self.gap {
            None => states.map(self.panes),
            Some(_) => states.map(self.sessions),
        }
    }

    fn process(&mut self, input: Either<L, R>, ctx: &mut KeyedContext<'_, O>) -> Result<(), Rejection> {
        let side = usize::from(input.is_right());
        let arrived = match self.gap {
            None => self.arrive(input, ctx)?,
            Some(gap) => self.arrive_in_session(gap, input, ctx)?,
        };
        if arrived {
            return Ok(());
        }
        Err(late("a window join", &self.names[side], ctx.timestamp(), ctx.watermark()))
    }

    /// Fires the windows whose end the watermark has reached (every pair, at the window's last
    /// millisecond), then lets go of those past their allowed lateness.
    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, O>) -> Result<(), Rejection> {
        if self.gap.is_some() {
            return self.fire_sessions(ctx);
        }
        let at = ctx.timestamp();
        // Windows ending at or before `at + 1` are due: those starting at or before `at + 1 - size`.
        let due = at.saturating_add(1).saturating_sub(self.size);
        let mut panes = ctx.map(self.panes)?;
        for (&start, pane) in panes.range_mut(..=due) {
            if !pane.fired {
                pane.fired = true;
                let last = Window { start, end: start.saturating_add(self.size) }.max_timestamp();
                for l in &pane.left {
                    self.found.extend(pane.right.iter().map(|r| ((self.join)(l, r), last)));
                }
            }
        }
        // Past the allowed lateness: windows ending at or before `at + 1 - lateness`.
        panes.remove_range(..=due.saturating_sub(self.lateness));
        for (o, at) in self.found.drain(..) {
            ctx.emit_at(o, at);
        }
        Ok(())
    }
}
