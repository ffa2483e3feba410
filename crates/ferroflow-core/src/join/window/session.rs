//! The window join over session windows: sessions formed by both inputs' records together.
//!
//! A key's sessions are entries of map state by start, disjoint and apart by more than nothing
//! (touching sessions merge), so their ends are in the order of their starts. Each record carries
//! the firing that last emitted its pairs: two records tagged with one firing have been paired,
//! and a later firing (after a merge, or a late record) emits only the pairs of records whose
//! tags differ or are unset, then tags every record of the session with itself.

use either::Either;
use serde::{Deserialize, Serialize};

use super::WindowJoin;
use crate::dead_letter::{DeadLetterReason, Rejection};
use crate::operator::{KeyedContext, StateValue};
use crate::record::Timestamp;
use crate::window::Window;

/// One session of one key: both sides' records, each with the firing (the session's last
/// millisecond when it fired) that emitted its pairs so far.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "L: Serialize, R: Serialize",
    deserialize = "L: Deserialize<'de>, R: Deserialize<'de>"
))]
pub(super) struct SessionPane<L, R> {
    /// Exclusive: the last record's time plus the gap.
    end: Timestamp,
    left: Vec<(L, Option<Timestamp>)>,
    right: Vec<(R, Option<Timestamp>)>,
    /// Records came (or sessions merged) since the last firing.
    pending: bool,
}

impl<L, R> SessionPane<L, R> {
    fn last_millisecond(&self) -> Timestamp {
        self.end.saturating_sub(1)
    }

    /// The pairs not emitted before, at the session's last millisecond; then every record is
    /// tagged with this firing.
    fn fire<O>(&mut self, join: &mut (dyn FnMut(&L, &R) -> O + Send), found: &mut Vec<(O, Timestamp)>) {
        let at = self.last_millisecond();
        for (l, lf) in &self.left {
            for (r, rf) in &self.right {
                if lf.is_none() || lf != rf {
                    found.push((join(l, r), at));
                }
            }
        }
        for (_, f) in &mut self.left {
            *f = Some(at);
        }
        for (_, f) in &mut self.right {
            *f = Some(at);
        }
        self.pending = false;
    }
}

impl<L: StateValue + Clone, R: StateValue + Clone, O: Send + 'static> WindowJoin<L, R, O> {
    /// Takes a record into its key's sessions, merging the ones it touches; a merged session the
    /// watermark has passed fires at once. False when the record's own session is past its
    /// allowed lateness (late).
    pub(super) fn arrive_in_session(
        &mut self,
        gap: i64,
        input: Either<L, R>,
        ctx: &mut KeyedContext<'_, O>,
    ) -> Result<bool, Rejection> {
        let (t, watermark) = (ctx.timestamp(), ctx.watermark());
        let Some(end) = t.checked_add(gap).filter(|_| t.checked_sub(gap).is_some()) else {
            return Err(Rejection::new(
                DeadLetterReason::EventTimeOutOfRange,
                format!(
                    "event time {t} is within {gap} ms of the ends of the millisecond range: no session can hold it"
                ),
            ));
        };
        let proto = Window { start: t, end };
        if proto.max_timestamp().saturating_add(self.lateness) <= watermark {
            return Ok(false);
        }
        let mut sessions = ctx.map(self.sessions)?;
        // The sessions it touches: starting at or before its end and ending at or after its start,
        // the latest ones before `end` (ends are ordered as starts).
        let touched: Vec<Timestamp> = sessions
            .range(..=proto.end)
            .rev()
            .take_while(|(_, s)| s.end >= proto.start)
            .map(|(start, _)| *start)
            .collect();
        let mut pane = SessionPane { end: proto.end, left: Vec::new(), right: Vec::new(), pending: true };
        let mut start = proto.start;
        if let (Some(&last), Some(&first)) = (touched.first(), touched.last()) {
            for (s, old) in sessions.remove_range(first..=last) {
                start = start.min(s);
                pane.end = pane.end.max(old.end);
                pane.left.extend(old.left);
                pane.right.extend(old.right);
            }
        }
        match input {
            Either::Left(l) => pane.left.push((l, None)),
            Either::Right(r) => pane.right.push((r, None)),
        }
        let last = pane.last_millisecond();
        let due = last <= watermark;
        if due {
            // Merged into a session the watermark has passed: its new pairs go out now.
            pane.fire(&mut *self.join, &mut self.found);
        }
        sessions.put(start, pane);
        if !due {
            ctx.register_event_time_timer(last);
        }
        ctx.register_event_time_timer(last.saturating_add(self.lateness));
        for (o, at) in self.found.drain(..) {
            ctx.emit_at(o, at);
        }
        Ok(true)
    }

    /// Fires the key's sessions whose last millisecond the timer has reached and that have pairs
    /// not emitted yet, then lets go of those past their allowed lateness.
    pub(super) fn fire_sessions(&mut self, ctx: &mut KeyedContext<'_, O>) -> Result<(), Rejection> {
        let at = ctx.timestamp();
        let lateness = self.lateness;
        let mut sessions = ctx.map(self.sessions)?;
        for (_, pane) in sessions.range_mut::<Timestamp, _>(..) {
            if pane.pending && pane.last_millisecond() <= at {
                pane.fire(&mut *self.join, &mut self.found);
            }
        }
        let gone: Vec<Timestamp> = sessions
            .range::<Timestamp, _>(..)
            .filter(|(_, s)| s.last_millisecond().saturating_add(lateness) <= at)
            .map(|(start, _)| *start)
            .collect();
        for start in &gone {
            sessions.remove(start);
        }
        for (o, t) in self.found.drain(..) {
            ctx.emit_at(o, t);
        }
        Ok(())
    }
}
