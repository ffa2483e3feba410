//! Tumbling and sliding windows: windows shared by every key, kept in event-time order so firing
//! and cleanup pop from the front.

use std::collections::BTreeMap;

use ahash::AHashMap;
use serde::{Deserialize, Serialize};

use super::aggregate::Aggregator;
use super::common::{
    Emitter, WindowState, corrupt, late, next_revision, order_prefix, ordered, out_of_range, unordered,
};
use super::spec::Window;
use crate::dead_letter::Rejection;
use crate::error::StateError;
use crate::record::{Key, Record, Timestamp};
use crate::state::StateBackend;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Slot<Acc> {
    pub acc: Acc,
    /// Revision of the last emitted row, `None` if never emitted.
    pub emitted: Option<u32>,
    #[serde(skip)]
    pub dirty: bool,
    /// Changed since the last state snapshot.
    #[serde(skip)]
    pub unsaved: bool,
}

struct Bucket<Acc> {
    fired: bool,
    slots: AHashMap<Key, Slot<Acc>>,
    /// Keys changed since the last snapshot (unless `all_unsaved`).
    unsaved: Vec<Key>,
    /// Every slot changed since the last snapshot (the window fired, or is new since then).
    all_unsaved: bool,
}

impl<Acc> Bucket<Acc> {
    fn new() -> Self {
        Self { fired: false, slots: AHashMap::new(), unsaved: Vec::new(), all_unsaved: true }
    }
}

/// Windows of fixed size every `slide` (tumbling when `slide == size`).
pub(super) struct AlignedWindows<Acc> {
    size: i64,
    slide: i64,
    lateness: i64,
    watermark: Timestamp,
    windows: BTreeMap<Window, Bucket<Acc>>,
    /// Fired windows with keys updated by late records during the current batch.
    dirty: Vec<(Window, Key)>,
    /// Windows dropped since the last snapshot (their state rows must be deleted).
    dropped: Vec<Window>,
}

impl<Acc: Clone + Serialize + serde::de::DeserializeOwned> AlignedWindows<Acc> {
    pub fn new(size: i64, slide: i64, lateness: i64) -> Self {
        Self {
            size,
            slide,
            lateness,
            watermark: i64::MIN,
            windows: BTreeMap::new(),
            dirty: Vec::new(),
            dropped: Vec::new(),
        }
    }

    /// True when a window ending at `end` has been cleaned up (or will be, at this watermark).
    #[inline]
    fn expired(&self, end: Timestamp) -> bool {
        end.saturating_sub(1).saturating_add(self.lateness) <= self.watermark
    }
}

impl<Acc: Clone + Serialize + serde::de::DeserializeOwned> WindowState<Acc> for AlignedWindows<Acc> {
    fn watermark(&self) -> Timestamp {
        self.watermark
    }

    /// Adds a record to each of its windows that is still open; returns `Err(detail)` when none is.
    #[inline]
    fn add<T, A: Aggregator<T, Acc = Acc>>(&mut self, agg: &A, record: &Record<T>) -> Result<(), Rejection> {
        let ts = record.event_time;
        // Every window of `ts` starts within `size` before it and ends within `size` after it:
        // outside that margin of the i64 range the arithmetic below would overflow.
        let last_start = match (ts.checked_sub(self.size), ts.checked_add(self.size)) {
            (Some(_), Some(_)) => ts - ts.rem_euclid(self.slide),
            _ => return Err(out_of_range(ts, self.size)),
        };
        let mut start = last_start;
        let mut accepted = false;
        let mut first_window = None;
        while start > ts.saturating_sub(self.size) {
            let w = Window { start, end: start.saturating_add(self.size) };
            first_window.get_or_insert(w);
            if !self.expired(w.end) {
                accepted = true;
                let watermark = self.watermark;
                // A window the watermark already passed counts as fired: a late record that is the
                // first to reach it is emitted with this batch, like any other late update.
                let bucket = self
                    .windows
                    .entry(w)
                    .or_insert_with(|| Bucket { fired: w.max_timestamp() <= watermark, ..Bucket::new() });
                let slot = match bucket.slots.get_mut(&record.key) {
                    Some(s) => s,
                    None => bucket.slots.entry(record.key.clone()).or_insert_with(|| Slot {
                        acc: agg.create(),
                        emitted: None,
                        dirty: false,
                        unsaved: false,
                    }),
                };
                agg.add(&mut slot.acc, &record.payload);
                if !slot.unsaved {
                    slot.unsaved = true;
                    if !bucket.all_unsaved {
                        bucket.unsaved.push(record.key.clone());
                    }
                }
                if bucket.fired && !slot.dirty {
                    slot.dirty = true;
                    self.dirty.push((w, record.key.clone()));
                }
            }
            start = match start.checked_sub(self.slide) {
                Some(s) => s,
                None => break,
            };
        }
        if accepted {
            Ok(())
        } else {
            let w = first_window
                .unwrap_or(Window { start: last_start, end: last_start.saturating_add(self.size) });
            Err(late(ts, self.watermark, self.lateness, w))
        }
    }

    /// Emits updated rows for fired windows that late records changed in this batch.
    fn flush_updates<A: Aggregator<T, Acc = Acc>, T>(&mut self, agg: &A, out: &mut Emitter<'_, A::Output>) {
        if self.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        for (w, key) in dirty.drain(..) {
            if let Some(slot) = self.windows.get_mut(&w).and_then(|b| b.slots.get_mut(&key)) {
                slot.dirty = false;
                let revision = next_revision(&mut slot.emitted);
                out.emit(key, w, agg.result(&slot.acc), revision, false);
            }
        }
        self.dirty = dirty;
    }

    /// Fires windows the watermark has passed and drops those past their allowed lateness.
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
        let mut done = Vec::new();
        // The rows of one window, read in the table's order (one pass over its memory), then
        // emitted in key order through `order`: (leading key bytes, index into `rows`).
        let mut rows: Vec<Option<(Key, A::Output, u32)>> = Vec::new();
        let mut order: Vec<(u128, usize)> = Vec::new();
        for (w, bucket) in self.windows.iter_mut() {
            if w.max_timestamp() > watermark {
                break; // windows are ordered by start and share one size: later ones end later
            }
            let expire = w.max_timestamp().saturating_add(self.lateness) <= watermark;
            if !bucket.fired || expire {
                rows.clear();
                order.clear();
                for (key, slot) in bucket.slots.iter_mut() {
                    order.push((order_prefix(key), rows.len()));
                    let revision = next_revision(&mut slot.emitted);
                    rows.push(Some((key.clone(), agg.result(&slot.acc), revision)));
                }
                // Deterministic output order: replays after a restore produce the same rows. Most
                // comparisons end on the keys' leading bytes; equal ones compare the whole keys.
                let key_at = |i: usize| rows.get(i).and_then(|r| r.as_ref()).map(|r| &r.0);
                order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| key_at(a.1).cmp(&key_at(b.1))));
                out.out.reserve(order.len());
                for &(_, i) in &order {
                    if let Some((key, value, revision)) = rows.get_mut(i).and_then(Option::take) {
                        out.emit(key, *w, value, revision, expire);
                    }
                }
                bucket.fired = true;
                bucket.all_unsaved = true;
            }
            if expire {
                done.push(*w);
            }
        }
        for w in done {
            self.windows.remove(&w);
            self.dropped.push(w);
        }
    }

    fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Writes what changed since the last snapshot: dropped windows are deleted, changed keys
    /// rewritten. Unchanged state is not touched, so incremental checkpoints stay small.
    fn snapshot(&mut self, ns: &str, state: &mut dyn StateBackend) -> Result<(), StateError> {
        state.put(ns, META_KEY, &self.watermark.to_be_bytes())?;
        let mut key_buf = Vec::with_capacity(64);
        for w in self.dropped.drain(..) {
            window_prefix(&mut key_buf, w);
            state.delete_prefix(ns, &key_buf)?;
        }
        for (w, bucket) in &mut self.windows {
            let mut write = |key: &Key, slot: &mut Slot<Acc>| -> Result<(), StateError> {
                slot.unsaved = false;
                window_prefix(&mut key_buf, *w);
                key_buf.extend_from_slice(key.as_bytes());
                let value = postcard::to_stdvec(&(bucket.fired, &*slot))
                    .map_err(|e| StateError::Backend(format!("cannot encode window state: {e}")))?;
                state.put(ns, &key_buf, &value)
            };
            if bucket.all_unsaved {
                for (key, slot) in &mut bucket.slots {
                    write(key, slot)?;
                }
            } else {
                for key in &bucket.unsaved {
                    if let Some(slot) = bucket.slots.get_mut(key) {
                        write(key, slot)?;
                    }
                }
            }
            bucket.unsaved.clear();
            bucket.all_unsaved = false;
        }
        Ok(())
    }

    fn restore(&mut self, ns: &str, state: &dyn StateBackend) -> Result<(), StateError> {
        self.windows.clear();
        self.dirty.clear();
        self.dropped.clear();
        self.watermark = match state.get(ns, META_KEY)? {
            Some(b) => i64::from_be_bytes(
                b.as_slice().try_into().map_err(|_| corrupt("window watermark has the wrong length"))?,
            ),
            None => i64::MIN,
        };
        for kv in state.scan_prefix(ns, &[ENTRY_TAG])? {
            let (k, v) = kv?;
            if k.len() < 17 {
                return Err(corrupt("window entry key too short"));
            }
            let start = unordered(&k[1..9]);
            let end = unordered(&k[9..17]);
            let key = Key::from_bytes(&k[17..]);
            let (fired, slot): (bool, Slot<Acc>) =
                postcard::from_bytes(&v).map_err(|e| corrupt(&format!("window entry: {e}")))?;
            let bucket = self.windows.entry(Window { start, end }).or_insert_with(Bucket::new);
            bucket.fired |= fired;
            bucket.all_unsaved = false;
            bucket.slots.insert(key, slot);
        }
        Ok(())
    }

    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        // Emptied windows go without a trace in `dropped`: their rows belong to other copies.
        self.windows.retain(|_, bucket| {
            bucket.slots.retain(|k, _| keep(k));
            bucket.unsaved.retain(|k| keep(k));
            !bucket.slots.is_empty()
        });
        self.dirty.retain(|(_, k)| keep(k));
    }
}

fn window_prefix(buf: &mut Vec<u8>, w: Window) {
    buf.clear();
    buf.push(ENTRY_TAG);
    buf.extend_from_slice(&ordered(w.start));
    buf.extend_from_slice(&ordered(w.end));
}

const META_KEY: &[u8] = b"\x00meta";
const ENTRY_TAG: u8 = 1;
