//! Session windows: per key, a window grows while records keep arriving within the gap, and
//! overlapping sessions merge.
//!
//! Sessions follow Flink's rule: a record at `t` opens the proto-session `[t, t + gap)`, which
//! merges with every session of the key it intersects (touching bounds included). A merge that
//! involves an already emitted session re-emits the merged session with the next revision; the
//! superseded rows keep their old `window_start`, so consumers that store sessions should key them
//! by `(key, window_start)` and treat a later row that covers them as a replacement.

use std::collections::BTreeSet;

use ahash::AHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::aggregate::Aggregator;
use super::aligned::{corrupt, ordered, unordered};
use super::operator::{Emitter, late_detail};
use super::spec::Window;
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
    /// `(end, key)` of fired sessions waiting for cleanup at `end - 1 + lateness`.
    cleanup_timers: BTreeSet<(Timestamp, Key)>,
    dirty: Vec<Key>,
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
        }
    }

    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }

    pub fn add<T, A: Aggregator<T, Acc = Acc>>(&mut self, agg: &A, record: &Record<T>) -> Result<(), String> {
        let ts = record.event_time;
        let proto = Window { start: ts, end: ts.saturating_add(self.gap) };
        let list = self.sessions.entry(record.key.clone()).or_default();
        // Indices of sessions intersecting the proto-session (bounds touching count).
        let mut hits: SmallVec<[usize; 2]> = SmallVec::new();
        for (i, s) in list.iter().enumerate() {
            if s.start <= proto.end && proto.start <= s.end {
                hits.push(i);
            }
        }
        if hits.is_empty() {
            if proto.max_timestamp().saturating_add(self.lateness) <= self.watermark {
                if list.is_empty() {
                    self.sessions.remove(&record.key);
                }
                return Err(late_detail(ts, self.watermark, self.lateness, proto));
            }
            let mut acc = agg.create();
            agg.add(&mut acc, &record.payload);
            let pos = list.iter().position(|s| s.start > proto.start).unwrap_or(list.len());
            // A new session the watermark has already passed (late, within lateness) goes out with
            // this batch's updates instead of waiting for the next watermark.
            let complete = proto.max_timestamp() <= self.watermark;
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
        let already_complete = merged.end.saturating_sub(1) <= self.watermark;
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

    pub fn flush_updates<A: Aggregator<T, Acc = Acc>, T>(
        &mut self,
        agg: &A,
        out: &mut Emitter<'_, A::Output>,
    ) {
        if self.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for key in dirty.drain(..) {
            if let Some(list) = self.sessions.get_mut(&key) {
                let watermark = self.watermark;
                for s in list.iter_mut().filter(|s| s.changed && s.end.saturating_sub(1) <= watermark) {
                    s.changed = false;
                    let revision = s.emitted.map_or(0, |r| r + 1);
                    s.emitted = Some(revision);
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

    pub fn on_watermark<A: Aggregator<T, Acc = Acc>, T>(
        &mut self,
        agg: &A,
        watermark: Timestamp,
        out: &mut Emitter<'_, A::Output>,
    ) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        // Fire every session whose end the watermark has reached, in (end, key) order.
        while let Some((end, key)) = self.fire_timers.first().cloned() {
            if end.saturating_sub(1) > watermark {
                break;
            }
            self.fire_timers.pop_first();
            let Some(list) = self.sessions.get_mut(&key) else { continue };
            let Some(s) = list.iter_mut().find(|s| s.end == end) else { continue };
            let expire = end.saturating_sub(1).saturating_add(self.lateness) <= watermark;
            if s.emitted.is_none() || s.changed {
                s.changed = false;
                let revision = s.emitted.map_or(0, |r| r + 1);
                s.emitted = Some(revision);
                out.emit(
                    key.clone(),
                    Window { start: s.start, end: s.end },
                    agg.result(&s.acc),
                    revision,
                    expire,
                );
                if expire {
                    list.retain(|s| s.end != end);
                    if list.is_empty() {
                        self.sessions.remove(&key);
                    }
                    continue;
                }
            }
            self.cleanup_timers.insert((end, key));
        }
        // Drop sessions past their allowed lateness, marking their last value final.
        while let Some((end, key)) = self.cleanup_timers.first().cloned() {
            if end.saturating_sub(1).saturating_add(self.lateness) > watermark {
                break;
            }
            self.cleanup_timers.pop_first();
            let Some(list) = self.sessions.get_mut(&key) else { continue };
            let Some(idx) = list.iter().position(|s| s.end == end) else { continue };
            let s = list.remove(idx);
            if let Some(r) = s.emitted {
                out.emit(key.clone(), Window { start: s.start, end: s.end }, agg.result(&s.acc), r + 1, true);
            }
            if list.is_empty() {
                self.sessions.remove(&key);
            }
        }
    }

    pub fn open_windows(&self) -> usize {
        self.sessions.values().map(SmallVec::len).sum()
    }

    pub fn snapshot(&self, ns: &str, state: &mut dyn StateBackend) -> Result<(), StateError> {
        state.delete_prefix(ns, &[])?;
        state.put(ns, META_KEY, &self.watermark.to_be_bytes())?;
        let mut key_buf = Vec::with_capacity(64);
        for (key, list) in &self.sessions {
            for s in list {
                key_buf.clear();
                key_buf.push(ENTRY_TAG);
                key_buf.extend_from_slice(&ordered(s.start));
                key_buf.extend_from_slice(key.as_bytes());
                let value = postcard::to_stdvec(s)
                    .map_err(|e| StateError::Backend(format!("cannot encode session state: {e}")))?;
                state.put(ns, &key_buf, &value)?;
            }
        }
        Ok(())
    }

    pub fn restore(&mut self, ns: &str, state: &dyn StateBackend) -> Result<(), StateError> {
        self.sessions.clear();
        self.fire_timers.clear();
        self.cleanup_timers.clear();
        self.dirty.clear();
        self.watermark = match state.get(ns, META_KEY)? {
            Some(b) => i64::from_be_bytes(
                b.as_slice().try_into().map_err(|_| corrupt("session watermark has the wrong length"))?,
            ),
            None => i64::MIN,
        };
        for kv in state.scan_prefix(ns, &[ENTRY_TAG])? {
            let (k, v) = kv?;
            if k.len() < 9 {
                return Err(corrupt("session entry key too short"));
            }
            let _start = unordered(&k[1..9]);
            let key = Key::from_bytes(&k[9..]);
            let s: Session<Acc> =
                postcard::from_bytes(&v).map_err(|e| corrupt(&format!("session entry: {e}")))?;
            if s.emitted.is_some() {
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
}

const META_KEY: &[u8] = b"\x00meta";
const ENTRY_TAG: u8 = 1;
