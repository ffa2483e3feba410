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

use std::collections::BTreeSet;

use ahash::AHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::aggregate::Aggregator;
use super::common::{Emitter, WindowState, corrupt, late, next_revision, ordered, out_of_range, unordered};
use super::spec::Window;
use crate::dead_letter::Rejection;
use crate::error::StateError;
use crate::record::{Key, Record, Timestamp};
use crate::state::StateBackend;

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

/// Per-key session windows.
pub(super) struct SessionWindows<Acc> {
    gap: i64,
    lateness: i64,
    watermark: Timestamp,
    sessions: AHashMap<Key, SmallVec<[Session<Acc>; 1]>>,
    /// `(end, key)` of sessions waiting to fire; stale entries (the session grew) are skipped.
    fire_timers: BTreeSet<(Timestamp, Key)>,
    /// `(end, key)` of fired sessions waiting for cleanup at `end + lateness`.
    cleanup_timers: BTreeSet<(Timestamp, Key)>,
    dirty: Vec<Key>,
    /// Keys whose sessions changed since the last state snapshot, noted once the operator is
    /// checkpointed (without checkpoints the set would only grow, a key per distinct key seen).
    unsaved: ahash::AHashSet<Key>,
    tracking: bool,
}

impl<Acc: Clone + Serialize + serde::de::DeserializeOwned> SessionWindows<Acc> {
    pub fn new(gap: i64, lateness: i64) -> Self {
        Self {
            gap,
            lateness,
            watermark: i64::MIN,
            sessions: AHashMap::new(),
            fire_timers: BTreeSet::new(),
            cleanup_timers: BTreeSet::new(),
            dirty: Vec::new(),
            unsaved: ahash::AHashSet::new(),
            tracking: false,
        }
    }

    /// Notes that `key`'s sessions changed, for the next snapshot.
    fn note(&mut self, key: &Key) {
        if self.tracking && !self.unsaved.contains(key) {
            self.unsaved.insert(key.clone());
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
        self.note(&key);
        let Some(list) = self.sessions.get_mut(&key) else { return };
        let Some(s) = list.iter_mut().find(|s| s.end == end) else { return };
        let expire = end.saturating_add(self.lateness) <= self.watermark;
        if s.emitted.is_none() || s.changed {
            s.changed = false;
            let revision = next_revision(&mut s.emitted);
            out.emit(
                key.clone(),
                Window { start: s.start, end: s.end },
                agg.result(&s.acc),
                revision,
                expire,
            );
            if expire {
                self.remove_session(&key, end);
                return;
            }
        }
        self.cleanup_timers.insert((end, key));
    }

    /// Removes the session of `key` ending at `end`, and the key once it has no session left.
    fn remove_session(&mut self, key: &Key, end: Timestamp) -> Option<Session<Acc>> {
        let list = self.sessions.get_mut(key)?;
        let idx = list.iter().position(|s| s.end == end)?;
        let s = list.remove(idx);
        if list.is_empty() {
            self.sessions.remove(key);
        }
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
        self.note(&key);
        let Some(s) = self.remove_session(&key, end) else { return };
        if let Some(r) = s.emitted {
            out.emit(key, Window { start: s.start, end: s.end }, agg.result(&s.acc), r + 1, true);
        }
    }
}

impl<Acc: Clone + Serialize + serde::de::DeserializeOwned> WindowState<Acc> for SessionWindows<Acc> {
    fn watermark(&self) -> Timestamp {
        self.watermark
    }

    fn add<T, A: Aggregator<T, Acc = Acc>>(&mut self, agg: &A, record: &Record<T>) -> Result<(), Rejection> {
        let ts = record.event_time;
        let Some(end) = ts.checked_add(self.gap).filter(|_| ts.checked_sub(self.gap).is_some()) else {
            return Err(out_of_range(ts, self.gap));
        };
        let proto = Window { start: ts, end };
        self.note(&record.key);
        // A record whose own session would be past its allowed lateness is late, even when it
        // touches a session still held: merging it would revive a result already marked final.
        if proto.end.saturating_add(self.lateness) <= self.watermark {
            return Err(late(ts, self.watermark, self.lateness, proto));
        }
        let list = self.sessions.entry(record.key.clone()).or_default();
        // Indices of sessions intersecting the proto-session (bounds touching count).
        let mut hits: SmallVec<[usize; 2]> = SmallVec::new();
        for (i, s) in list.iter().enumerate() {
            if s.start <= proto.end && proto.start <= s.end {
                hits.push(i);
            }
        }
        if hits.is_empty() {
            let mut acc = agg.create();
            agg.add(&mut acc, &record.payload);
            let pos = list.iter().position(|s| s.start > proto.start).unwrap_or(list.len());
            // A new session the watermark has already passed (late, within lateness) goes out with
            // this batch's updates instead of waiting for the next watermark.
            let complete = proto.end <= self.watermark;
            list.insert(
                pos,
                Session { start: proto.start, end: proto.end, acc, emitted: None, changed: complete },
            );
            self.fire_timers.insert((proto.end, record.key.clone()));
            if complete {
                self.dirty.push(record.key.clone());
            }
            return Ok(());
        }
        // Merge every hit into the first one.
        let first = hits[0];
        let mut merged = list[first].clone();
        for &i in hits.iter().skip(1).rev() {
            let s = list.remove(i);
            merged.start = merged.start.min(s.start);
            merged.end = merged.end.max(s.end);
            agg.merge(&mut merged.acc, &s.acc);
            merged.emitted = match (merged.emitted, s.emitted) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        let old_end = list[first].end;
        merged.start = merged.start.min(proto.start);
        merged.end = merged.end.max(proto.end);
        agg.add(&mut merged.acc, &record.payload);
        let (end, emitted) = (merged.end, merged.emitted);
        let already_complete = merged.end <= self.watermark;
        list[first] = merged;
        if end != old_end || hits.len() > 1 {
            self.fire_timers.insert((end, record.key.clone()));
        }
        if emitted.is_some() || already_complete {
            list[first].changed = true;
            if already_complete {
                // Complete and already emitted: the update goes out at the end of this batch.
                self.dirty.push(record.key.clone());
            }
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
        for key in dirty.drain(..) {
            self.note(&key);
            if let Some(list) = self.sessions.get_mut(&key) {
                let watermark = self.watermark;
                for s in list.iter_mut().filter(|s| s.changed && s.end <= watermark) {
                    s.changed = false;
                    let revision = next_revision(&mut s.emitted);
                    out.emit(
                        key.clone(),
                        Window { start: s.start, end: s.end },
                        agg.result(&s.acc),
                        revision,
                        false,
                    );
                    self.cleanup_timers.insert((s.end, key.clone()));
                }
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
        // Fire every session whose end the watermark has reached and drop every session past its
        // allowed lateness, together in (end, key) order, so that the rows of one watermark step
        // come out sorted by (window end, key) whichever kind they are (a session's firing comes
        // before its own cleanup).
        let lateness = self.lateness;
        loop {
            let fire = self.fire_timers.first().filter(|(end, _)| *end <= watermark).cloned();
            let cleanup = self
                .cleanup_timers
                .first()
                .filter(|(end, _)| end.saturating_add(lateness) <= watermark)
                .cloned();
            match (fire, cleanup) {
                (Some(f), Some(c)) if c < f => {
                    self.cleanup_timers.pop_first();
                    self.drop_session(agg, c, out);
                }
                (Some(f), _) => {
                    self.fire_timers.pop_first();
                    self.fire_session(agg, f, out);
                }
                (None, Some(c)) => {
                    self.cleanup_timers.pop_first();
                    self.drop_session(agg, c, out);
                }
                (None, None) => break,
            }
        }
    }

    fn open_windows(&self) -> usize {
        self.sessions.values().map(SmallVec::len).sum()
    }

    /// Rewrites the sessions of keys that changed since the last snapshot; others stay untouched.
    fn snapshot(&mut self, ns: &str, state: &mut dyn StateBackend) -> Result<(), StateError> {
        state.put(ns, META_KEY, &self.watermark.to_be_bytes())?;
        let mut key_buf = Vec::with_capacity(64);
        if !self.tracking {
            // The first snapshot writes every key. It removes no rows beyond each key's own: copies
            // of a job write their own keys into one backend, one after the other.
            self.unsaved = self.sessions.keys().cloned().collect();
            self.tracking = true;
        }
        for key in self.unsaved.drain() {
            key_prefix(&mut key_buf, &key)?;
            state.delete_prefix(ns, &key_buf)?;
            let prefix_len = key_buf.len();
            for s in self.sessions.get(&key).map(|l| l.as_slice()).unwrap_or_default() {
                key_buf.truncate(prefix_len);
                key_buf.extend_from_slice(&ordered(s.start));
                let value = postcard::to_stdvec(s)
                    .map_err(|e| StateError::Backend(format!("cannot encode session state: {e}")))?;
                state.put(ns, &key_buf, &value)?;
            }
        }
        Ok(())
    }

    fn restore(&mut self, ns: &str, state: &dyn StateBackend) -> Result<(), StateError> {
        self.sessions.clear();
        self.fire_timers.clear();
        self.cleanup_timers.clear();
        self.dirty.clear();
        self.unsaved.clear();
        self.tracking = true;
        self.watermark = match state.get(ns, META_KEY)? {
            Some(b) => i64::from_be_bytes(
                b.as_slice().try_into().map_err(|_| corrupt("session watermark has the wrong length"))?,
            ),
            None => i64::MIN,
        };
        for kv in state.scan_prefix(ns, &[ENTRY_TAG])? {
            let (k, v) = kv?;
            let key_len = match k.get(1..3) {
                Some(b) => u16::from_be_bytes([b[0], b[1]]) as usize,
                None => return Err(corrupt("session entry key too short")),
            };
            let Some(key_bytes) = k.get(3..3 + key_len) else {
                return Err(corrupt("session entry key shorter than its length prefix"));
            };
            let key = Key::from_bytes(key_bytes);
            if k.len() != 3 + key_len + 8 {
                return Err(corrupt("session entry key has the wrong length"));
            }
            let _start = unordered(&k[3 + key_len..]);
            let s: Session<Acc> =
                postcard::from_bytes(&v).map_err(|e| corrupt(&format!("session entry: {e}")))?;
            if s.emitted.is_some() && !s.changed {
                self.cleanup_timers.insert((s.end, key.clone()));
            } else {
                self.fire_timers.insert((s.end, key.clone()));
            }
            let list = self.sessions.entry(key).or_default();
            let pos = list.iter().position(|x| x.start > s.start).unwrap_or(list.len());
            list.insert(pos, s);
        }
        Ok(())
    }

    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        self.sessions.retain(|k, _| keep(k));
        self.fire_timers.retain(|(_, k)| keep(k));
        self.cleanup_timers.retain(|(_, k)| keep(k));
        self.dirty.retain(|k| keep(k));
        self.unsaved.retain(|k| keep(k));
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
