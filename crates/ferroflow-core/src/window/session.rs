//! Session windows: per key, a window grows while records keep arriving within the gap, and
//! overlapping sessions merge.
//!
//! Sessions follow Flink's merge rule: a record at `t` opens the proto-session `[t, t + gap)`,
//! which merges with every session of the key it intersects (touching bounds included, so records
//! exactly `gap` apart share a session). Because a record at `end` still joins, a session
//! `[start, end)` is complete when the watermark reaches `end` (not `end - 1` as for tumbling and
//! sliding windows); it is dropped when the watermark reaches `end + lateness`. A record whose own
//! proto-session is past that point is late even if it touches a session still held. A merge that
//! involves an already emitted session re-emits the merged session with the next revision; the
//! superseded rows keep their old `window_start`, so consumers that store sessions should key them
//! by `(key, window_start)` and treat a later row that covers them as a replacement.
//!
//! Under a memory budget, a key's sessions are one cell of a keyed table, which spills its
//! coldest keys to the budget's store and reads them back before a batch that needs them; the
//! fire and clean-up timers are a timer queue whose latest timers wait on disk. Without a budget
//! both stay in memory, unbounded.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::aggregate::Aggregator;
use super::common::{Emitter, WindowState, corrupt, late, next_revision, ordered, out_of_range};
use super::spec::Window;
use crate::dead_letter::{DeadLetterReason, Rejection};
use crate::error::StateError;
use crate::operator::{Cell, KeyedTable, OUTPUT_CHUNK, Timers};
use crate::record::{Key, Record, Timestamp};
use crate::state::{SpillFailure, StateBackend, StateBudget};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session<Acc> {
    start: Timestamp,
    end: Timestamp,
    acc: Acc,
    emitted: Option<u32>,
    /// Changed since its last emission (only meaningful once emitted).
    #[serde(default)]
    changed: bool,
}

impl<Acc> Session<Acc> {
    /// Emits the session's next revision, which brings it up to date.
    fn emit<A: Aggregator<T, Acc = Acc>, T>(
        &mut self,
        key: &Key,
        agg: &A,
        is_final: bool,
        out: &mut Emitter<'_, A::Output>,
    ) {
        self.changed = false;
        let revision = next_revision(&mut self.emitted);
        out.emit(
            key.clone(),
            Window { start: self.start, end: self.end },
            agg.result(&self.acc),
            revision,
            is_final,
        );
    }
}

/// One key's sessions, ordered by start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
struct Sessions<Acc>(SmallVec<[Session<Acc>; 1]>);

impl<Acc: Serialize + serde::de::DeserializeOwned + Send + 'static> Cell for Sessions<Acc> {
    const KIND: &'static str = "sessions";
    fn retain_live(&mut self, _: &dyn Fn(Timestamp) -> bool) -> (bool, bool) {
        (false, self.0.is_empty()) // no time to live: sessions go with their clean-up timers
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Timers fired between two spills of the sessions read back for them.
const SPILL_EVERY: usize = 4_096;
/// Timers fired between two batched reads of the sessions of the next ones.
const READ_AHEAD_AFTER: usize = 64;
/// Keys a restore reads between two spills of the timers.
const RESTORE_CHUNK: usize = 16_384;

/// Per-key session windows.
pub(super) struct SessionWindows<Acc> {
    gap: i64,
    lateness: i64,
    watermark: Timestamp,
    sessions: KeyedTable<Sessions<Acc>>,
    /// Sessions held, all keys together.
    open: usize,
    /// `(end, key)` of sessions waiting to fire; stale entries (the session grew) are skipped.
    fire_timers: Timers,
    /// `(end, key)` of fired sessions waiting for clean-up at `end + lateness`.
    cleanup_timers: Timers,
    dirty: Vec<Key>,
    /// A first snapshot wrote every key: later ones write the keys changed since.
    tracking: bool,
    /// Due timers of the last watermark wait to fire (their rows go out chunk by chunk).
    firing: bool,
    /// A spill-store failure outside a record: reported to the job at once, and every snapshot
    /// fails until a restore.
    failure: SpillFailure,
}

impl<Acc: Clone + Serialize + serde::de::DeserializeOwned + Send + 'static> SessionWindows<Acc> {
    pub fn new(gap: i64, lateness: i64) -> Self {
        Self {
            gap,
            lateness,
            watermark: i64::MIN,
            sessions: KeyedTable::untracked("sessions"),
            open: 0,
            fire_timers: Timers::event_time(),
            cleanup_timers: Timers::event_time(),
            dirty: Vec::new(),
            tracking: false,
            firing: false,
            failure: SpillFailure::default(),
        }
    }

    /// Goes on with the firing under way: fires and cleans up due sessions until a chunk of rows
    /// is out (the rest waits for `resume`) or none is due.
    fn fire_due<A: Aggregator<T, Acc = Acc>, T>(&mut self, agg: &A, out: &mut Emitter<'_, A::Output>) {
        // Fire every session whose end the watermark has reached and drop every session past its
        // allowed lateness, together in (end, key) order, so that the rows of one watermark step
        // come out sorted by (window end, key) whichever kind they are (a session's firing comes
        // before its own cleanup).
        let mut done = 0usize;
        // Timers fired since the last batched read of their sessions.
        let mut since_read = READ_AHEAD_AFTER;
        loop {
            if out.emitted >= OUTPUT_CHUNK as u64 {
                // The rest goes out with the next chunks: the timers keep their place.
                self.spill();
                return;
            }
            let fire = self.fire_timers.peek_due().map(|(at, key)| (at, key.clone()));
            let cleanup = self.cleanup_timers.peek_due().map(|(at, key)| (at, key.clone()));
            // A timer whose sessions are on disk reads those of the timers after it too, in one
            // go; not more often than every few timers (the others may all be in memory).
            let next = match (&fire, &cleanup) {
                (Some(f), Some(c)) => Some(f.min(c)),
                (f, c) => f.as_ref().or(c.as_ref()),
            };
            if next.is_some_and(|(_, key)| self.sessions.needs_read(key)) && since_read >= READ_AHEAD_AFTER {
                self.preload_due();
                since_read = 0;
            }
            since_read = since_read.saturating_add(1);
            match (fire, cleanup) {
                (Some(f), Some(c)) if c < f => {
                    self.cleanup_timers.pop_due();
                    self.drop_session(agg, c, out);
                }
                (Some(f), _) => {
                    self.fire_timers.pop_due();
                    self.fire_session(agg, f, out);
                }
                (None, Some(c)) => {
                    self.cleanup_timers.pop_due();
                    self.drop_session(agg, c, out);
                }
                (None, None) => break,
            }
            done = done.wrapping_add(1);
            if done.is_multiple_of(SPILL_EVERY) {
                // The sessions read back for firing leave again as it goes.
                self.spill();
            }
        }
        self.firing = false;
        self.spill();
    }

    /// Brings `key`'s sessions into memory if they spilled; a failure is the job's.
    fn load(&mut self, key: &Key) -> bool {
        match self.sessions.load(key) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read spilled sessions back");
                self.failure.set(e);
                false
            }
        }
    }

    /// Emits the session of `key` ending at `end` if it was never emitted or changed since; drops it
    /// at once if it is also past its allowed lateness, else schedules its cleanup.
    fn fire_session<A: Aggregator<T, Acc = Acc>, T>(
        &mut self,
        agg: &A,
        (end, key): (Timestamp, Key),
        out: &mut Emitter<'_, A::Output>,
    ) {
        if !self.load(&key) {
            return;
        }
        let expire = end.saturating_add(self.lateness) <= self.watermark;
        let Some(list) = self.sessions.get(&key) else { return };
        let Some(s) = list.0.iter().find(|s| s.end == end) else { return };
        if s.emitted.is_none() || s.changed {
            let Some(list) = self.sessions.get_mut(&key) else { return };
            let Some(s) = list.0.iter_mut().find(|s| s.end == end) else { return };
            s.emit(&key, agg, expire, out);
            if expire {
                self.remove_session(&key, end);
                return;
            }
        }
        self.cleanup_timers.register(end, &key);
    }

    /// Removes the session of `key` ending at `end`, and the key once it has no session left.
    fn remove_session(&mut self, key: &Key, end: Timestamp) -> Option<Session<Acc>> {
        let list = self.sessions.get_mut(key)?;
        let idx = list.0.iter().position(|s| s.end == end)?;
        let s = list.0.remove(idx);
        if list.0.is_empty() {
            self.sessions.remove(key);
        }
        self.open = self.open.saturating_sub(1);
        Some(s)
    }

    /// Drops the session of `key` ending at `end` (past its allowed lateness), marking its last value
    /// final.
    fn drop_session<A: Aggregator<T, Acc = Acc>, T>(
        &mut self,
        agg: &A,
        (end, key): (Timestamp, Key),
        out: &mut Emitter<'_, A::Output>,
    ) {
        if !self.load(&key) {
            return;
        }
        let Some(s) = self.remove_session(&key, end) else { return };
        if let Some(r) = s.emitted {
            out.emit(key, Window { start: s.start, end: s.end }, agg.result(&s.acc), r + 1, true);
        }
    }

    /// Reads back, in one go, the spilled sessions of the next timers due (a read per timer
    /// costs far more).
    fn preload_due(&mut self) {
        // Timers on disk that are due come back to memory first.
        self.fire_timers.peek_due();
        self.cleanup_timers.peek_due();
        let keys: Vec<&Key> =
            self.fire_timers.upcoming(SPILL_EVERY).chain(self.cleanup_timers.upcoming(SPILL_EVERY)).collect();
        self.sessions.preload(&keys);
    }

    /// Under a budget: spills the coldest sessions and the latest timers beyond it.
    fn spill(&mut self) {
        if let Err(e) = self.sessions.spill_cold() {
            tracing::warn!(error = %e, "cannot spill sessions: they stay in memory");
        }
        self.fire_timers.spill();
        self.cleanup_timers.spill();
    }

    /// Writes `key`'s rows (all of its sessions, or none) in place of those the checkpoint holds.
    fn write_key(&mut self, key: &Key, ns: &str, state: &mut dyn StateBackend) -> Result<(), StateError> {
        let mut buf = Vec::with_capacity(64);
        key_prefix(&mut buf, key)?;
        state.delete_prefix(ns, &buf)?;
        let rows = self.sessions.with_cell(key, |list| {
            list.map(|l| l.0.iter().map(|s| (s.start, postcard::to_stdvec(s))).collect::<Vec<_>>())
        })?;
        let prefix_len = buf.len();
        for (start, value) in rows.unwrap_or_default() {
            let value =
                value.map_err(|e| StateError::Backend(format!("cannot encode session state: {e}")))?;
            buf.truncate(prefix_len);
            buf.extend_from_slice(&ordered(start));
            state.put(ns, &buf, &value)?;
        }
        Ok(())
    }

    /// A key's sessions read from a checkpoint: into the table, with their timers.
    fn restored(&mut self, key: Key, list: Sessions<Acc>, encoded: usize) {
        for s in &list.0 {
            if s.emitted.is_some() && !s.changed {
                self.cleanup_timers.register(s.end, &key);
            } else {
                self.fire_timers.register(s.end, &key);
            }
        }
        self.open = self.open.saturating_add(list.0.len());
        self.sessions.restore_cell(key, list, encoded);
    }
}

impl<Acc: Clone + Serialize + serde::de::DeserializeOwned + Send + 'static> WindowState<Acc>
    for SessionWindows<Acc>
{
    fn watermark(&self) -> Timestamp {
        self.watermark
    }

    fn attach(&mut self, budget: &StateBudget) {
        self.sessions.attach_budget(budget);
        self.fire_timers.attach(budget);
        self.cleanup_timers.attach(budget);
    }

    fn before_batch<T>(&mut self, records: &[Record<T>]) {
        let keys: Vec<&Key> = records.iter().map(|r| &r.key).collect();
        self.sessions.preload(&keys);
    }

    fn after_batch(&mut self) {
        self.spill();
    }

    fn report_failure(&mut self, ctx: &mut crate::operator::Context) {
        self.failure.report(ctx);
        self.fire_timers.report_failure(ctx);
        self.cleanup_timers.report_failure(ctx);
    }

    fn add<T, A: Aggregator<T, Acc = Acc>>(&mut self, agg: &A, record: &Record<T>) -> Result<(), Rejection> {
        let ts = record.event_time;
        let Some(end) = ts.checked_add(self.gap).filter(|_| ts.checked_sub(self.gap).is_some()) else {
            return Err(out_of_range(ts, self.gap));
        };
        let proto = Window { start: ts, end };
        // A record whose own session would be past its allowed lateness is late, even when it
        // touches a session still held: merging it would revive a result already marked final.
        if proto.end.saturating_add(self.lateness) <= self.watermark {
            return Err(late(ts, self.watermark, self.lateness, proto));
        }
        if let Err(e) = self.sessions.load(&record.key) {
            return Err(Rejection::new(
                DeadLetterReason::ProcessingError,
                format!("state: the key's spilled sessions could not be read back: {e}"),
            ));
        }
        let watermark = self.watermark;
        let Some(list) = self.sessions.get_mut(&record.key) else {
            let mut acc = agg.create();
            agg.add(&mut acc, &record.payload);
            self.new_session(record.key.clone(), proto, acc, Sessions(SmallVec::new()));
            return Ok(());
        };
        // Indices of sessions intersecting the proto-session (bounds touching count).
        let mut hits: SmallVec<[usize; 2]> = SmallVec::new();
        for (i, s) in list.0.iter().enumerate() {
            if s.start <= proto.end && proto.start <= s.end {
                hits.push(i);
            }
        }
        if hits.is_empty() {
            let mut acc = agg.create();
            agg.add(&mut acc, &record.payload);
            let list = std::mem::replace(list, Sessions(SmallVec::new()));
            self.new_session(record.key.clone(), proto, acc, list);
            return Ok(());
        }
        // Merge every hit into the first one.
        let first = hits[0];
        let mut merged = list.0[first].clone();
        for &i in hits.iter().skip(1).rev() {
            let s = list.0.remove(i);
            merged.start = merged.start.min(s.start);
            merged.end = merged.end.max(s.end);
            agg.merge(&mut merged.acc, &s.acc);
            merged.emitted = match (merged.emitted, s.emitted) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        let old_end = list.0[first].end;
        merged.start = merged.start.min(proto.start);
        merged.end = merged.end.max(proto.end);
        agg.add(&mut merged.acc, &record.payload);
        let (end, emitted) = (merged.end, merged.emitted);
        let already_complete = merged.end <= watermark;
        if emitted.is_some() || already_complete {
            merged.changed = true;
        }
        list.0[first] = merged;
        self.open = self.open.saturating_sub(hits.len() - 1);
        if end != old_end || hits.len() > 1 {
            self.fire_timers.register(end, &record.key);
        }
        if already_complete {
            // Complete: the update goes out at the end of this batch.
            self.dirty.push(record.key.clone());
        }
        Ok(())
    }

    fn flush_updates<A: Aggregator<T, Acc = Acc>, T>(&mut self, agg: &A, out: &mut Emitter<'_, A::Output>) {
        if self.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let watermark = self.watermark;
        for key in dirty.drain(..) {
            // The batch's keys stay in memory until it ends.
            let Some(list) = self.sessions.get_mut(&key) else { continue };
            for s in list.0.iter_mut().filter(|s| s.changed && s.end <= watermark) {
                s.emit(&key, agg, false, out);
                self.cleanup_timers.register(s.end, &key);
            }
        }
        self.dirty = dirty;
    }

    fn on_watermark<A: Aggregator<T, Acc = Acc>, T>(
        &mut self,
        agg: &A,
        watermark: Timestamp,
        out: &mut Emitter<'_, A::Output>,
    ) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        // A clean-up is due when `end + lateness` (saturating) reaches the watermark: at the
        // last watermark every session is.
        let cleanup_up_to =
            if watermark == i64::MAX { i64::MAX } else { watermark.saturating_sub(self.lateness) };
        self.fire_timers.start_firing(watermark);
        self.cleanup_timers.start_firing(cleanup_up_to);
        self.firing = true;
        self.fire_due(agg, out);
    }

    fn has_pending(&self) -> bool {
        self.firing
    }

    fn resume<A: Aggregator<T, Acc = Acc>, T>(&mut self, agg: &A, out: &mut Emitter<'_, A::Output>) {
        if self.firing {
            self.fire_due(agg, out);
        }
    }

    fn open_windows(&self) -> usize {
        self.open
    }

    /// Rewrites the sessions of keys that changed since the last snapshot; others stay untouched.
    fn snapshot(&mut self, ns: &str, state: &mut dyn StateBackend) -> Result<(), StateError> {
        self.failure.check()?;
        self.fire_timers.check()?;
        self.cleanup_timers.check()?;
        state.put(ns, META_KEY, &self.watermark.to_be_bytes())?;
        let keys: Vec<Key> = if self.tracking {
            self.sessions.take_touched().into_iter().collect()
        } else {
            // The first snapshot writes every key. It removes no rows beyond each key's own:
            // copies of a job write their own keys into one backend, one after the other.
            let mut all = Vec::new();
            self.sessions.for_each_cell(&mut |key, _| {
                all.push(key.clone());
                Ok(())
            })?;
            self.sessions.start_tracking();
            self.tracking = true;
            all
        };
        for key in keys {
            self.write_key(&key, ns, state)?;
        }
        Ok(())
    }

    fn restore(&mut self, ns: &str, state: &dyn StateBackend) -> Result<(), StateError> {
        self.sessions.clear_all()?;
        self.fire_timers.reset()?;
        self.cleanup_timers.reset()?;
        self.firing = false;
        self.open = 0;
        self.dirty.clear();
        self.failure.clear();
        self.watermark = match state.get(ns, META_KEY)? {
            Some(b) => i64::from_be_bytes(
                b.as_slice().try_into().map_err(|_| corrupt("session watermark has the wrong length"))?,
            ),
            None => i64::MIN,
        };
        // Rows come in key order: one key's sessions are next to each other.
        let mut current: Option<(Key, Sessions<Acc>, usize)> = None;
        let mut keys = 0usize;
        for kv in state.scan_prefix(ns, &[ENTRY_TAG])? {
            let (k, v) = kv?;
            let key_len = match k.get(1..3) {
                Some(b) => u16::from_be_bytes([b[0], b[1]]) as usize,
                None => return Err(corrupt("session entry key too short")),
            };
            let Some(key_bytes) = k.get(3..3 + key_len) else {
                return Err(corrupt("session entry key shorter than its length prefix"));
            };
            if k.len() != 3 + key_len + 8 {
                return Err(corrupt("session entry key has the wrong length"));
            }
            let s: Session<Acc> =
                postcard::from_bytes(&v).map_err(|e| corrupt(&format!("session entry: {e}")))?;
            match &mut current {
                Some((key, list, encoded)) if key.as_bytes() == key_bytes => {
                    let pos = list.0.iter().position(|x| x.start > s.start).unwrap_or(list.0.len());
                    list.0.insert(pos, s);
                    *encoded = encoded.saturating_add(v.len());
                }
                _ => {
                    if let Some((key, list, encoded)) = current.take() {
                        self.restored(key, list, encoded);
                        keys = keys.wrapping_add(1);
                        if keys.is_multiple_of(RESTORE_CHUNK) {
                            self.fire_timers.spill();
                            self.cleanup_timers.spill();
                        }
                    }
                    let mut list = SmallVec::new();
                    list.push(s);
                    current = Some((Key::from_bytes(key_bytes), Sessions(list), v.len()));
                }
            }
        }
        if let Some((key, list, encoded)) = current.take() {
            self.restored(key, list, encoded);
        }
        self.spill();
        self.sessions.start_tracking();
        self.tracking = true;
        self.fire_timers.check()?;
        self.cleanup_timers.check()?;
        Ok(())
    }

    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        if let Err(e) = self.sessions.retain(keep) {
            self.failure.set(e);
        }
        self.fire_timers.retain_keys(keep);
        self.cleanup_timers.retain_keys(keep);
        self.dirty.retain(|k| keep(k));
        let mut open = 0usize;
        let counted = self.sessions.for_each_cell(&mut |_, list| {
            open = open.saturating_add(list.0.len());
            Ok(())
        });
        match counted {
            Ok(()) => self.open = open,
            Err(e) => self.failure.set(e),
        }
    }
}

impl<Acc: Clone + Serialize + serde::de::DeserializeOwned + Send + 'static> SessionWindows<Acc> {
    /// Adds the proto-session `proto` (no session of the key intersects it) to `key`'s `list`.
    fn new_session(&mut self, key: Key, proto: Window, acc: Acc, mut list: Sessions<Acc>) {
        let pos = list.0.iter().position(|s| s.start > proto.start).unwrap_or(list.0.len());
        // A new session the watermark has already passed (late, within lateness) goes out with
        // this batch's updates instead of waiting for the next watermark.
        let complete = proto.end <= self.watermark;
        list.0.insert(
            pos,
            Session { start: proto.start, end: proto.end, acc, emitted: None, changed: complete },
        );
        self.sessions.insert(&key, list);
        self.open = self.open.saturating_add(1);
        self.fire_timers.register(proto.end, &key);
        if complete {
            self.dirty.push(key);
        }
    }
}

/// `ENTRY_TAG`, the key's length (u16, big-endian) and the key: every session of one key.
fn key_prefix(buf: &mut Vec<u8>, key: &Key) -> Result<(), StateError> {
    let len = u16::try_from(key.as_bytes().len()).map_err(|_| {
        StateError::Backend(format!("session key of {} bytes is too long to store", key.as_bytes().len()))
    })?;
    buf.clear();
    buf.push(ENTRY_TAG);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(key.as_bytes());
    Ok(())
}

const META_KEY: &[u8] = b"\x00meta";
const ENTRY_TAG: u8 = 1;
