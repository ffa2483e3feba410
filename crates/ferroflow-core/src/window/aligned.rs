//! Tumbling and sliding windows: windows shared by every key, kept in event-time order so firing
//! and cleanup pop from the front.
//!
//! Under a memory budget, slots that do not fit spill to the budget's store (see the `spill`
//! module): the slots of fired windows first (only late records reach them), then those of the
//! open windows that end last, keys not used since the last pass before the rest. A record whose
//! slot is on disk reads it back before the batch runs; a window that fires reads its spilled slots
//! in one scan. A spilled copy that says "never emitted" in a window that has fired since was
//! emitted as revision 0 by that fire, which does not write the copies back.

use std::collections::BTreeMap;

use ahash::{AHashMap, AHashSet};
use serde::{Deserialize, Serialize};

use super::aggregate::Aggregator;
use super::common::{
    Emitter, WindowState, corrupt, late, next_revision, order_prefix, ordered, out_of_range, unordered,
};
use super::spec::Window;
use super::spill::{SpilledKeys, WindowSpill};
use crate::dead_letter::{DeadLetterReason, Rejection};
use crate::error::StateError;
use crate::operator::OUTPUT_CHUNK;
use crate::record::{Key, Record, Timestamp};
use crate::state::{SpillFailure, StateBackend, StateBudget};

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
    /// Used since the spill's last pass over its window (a cold slot spills first).
    #[serde(skip)]
    pub touched: bool,
}

struct Bucket<Acc> {
    fired: bool,
    slots: AHashMap<Key, Slot<Acc>>,
    /// Keys changed since the last snapshot (unless `all_unsaved`).
    unsaved: Vec<Key>,
    /// Every slot changed since the last snapshot (the window fired, or is new since then).
    all_unsaved: bool,
    /// The keys of the slots this window spilled, once it has spilled some.
    spilled: Option<SpilledKeys>,
    /// What its slots in memory cost, as the budget counts it.
    cost: usize,
}

impl<Acc> Bucket<Acc> {
    fn new() -> Self {
        Self {
            fired: false,
            slots: AHashMap::new(),
            unsaved: Vec::new(),
            all_unsaved: true,
            spilled: None,
            cost: 0,
        }
    }

    /// Puts a slot read from disk (a spilled copy or a checkpoint row) in memory.
    fn insert_read(&mut self, key: Key, mut slot: Slot<Acc>, unsaved: bool) {
        emitted_by_fire(self.fired, &mut slot);
        slot.unsaved = unsaved;
        slot.touched = true;
        if unsaved && !self.all_unsaved {
            self.unsaved.push(key.clone());
        }
        let cost = slot_cost::<Acc>(&key);
        if self.slots.insert(key, slot).is_none() {
            self.cost = self.cost.saturating_add(cost);
        }
    }
}

/// A firing under way: the watermark it fires and how far it got.
struct Firing<Acc> {
    watermark: Timestamp,
    /// The last window it looked at.
    last: Option<Window>,
    /// The window whose rows are going out.
    window: Option<WindowFiring<Acc>>,
    /// Fired windows past their allowed lateness, dropped once the firing ends.
    done: Vec<Window>,
}

/// One window's rows going out, chunk by chunk.
struct WindowFiring<Acc> {
    window: Window,
    /// Past its allowed lateness at this watermark: its rows are final and it goes.
    expire: bool,
    /// Had fired before (its spilled copies that were never emitted were emitted then).
    fired: bool,
    /// The keys in memory, in output order, and the next one to go; with their slots when the
    /// window goes after this firing (taken out of its table: no lookup per row).
    order: Vec<(u128, Key, Option<Slot<Acc>>)>,
    next: usize,
    /// The last spilled slot emitted: the next chunk reads on from there.
    spilled_after: Option<Key>,
    spilled_done: bool,
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
    /// Where slots beyond the memory budget go, under one.
    spill: Option<WindowSpill>,
    /// Slots of this batch's records that could not be read back: those records are rejected.
    unreadable: AHashSet<(Window, Key)>,
    /// A spill-store failure outside a record: reported to the job at once, and every snapshot
    /// fails until a restore.
    failure: SpillFailure,
    /// The firing of the last watermark, while rows of it wait to go out.
    firing: Option<Firing<Acc>>,
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
            spill: None,
            unreadable: AHashSet::new(),
            failure: SpillFailure::default(),
            firing: None,
        }
    }

    /// True when a window ending at `end` has been cleaned up (or will be, at this watermark).
    #[inline]
    fn expired(&self, end: Timestamp) -> bool {
        end.saturating_sub(1).saturating_add(self.lateness) <= self.watermark
    }

    /// The windows holding `ts`, latest first; `None` when they would not fit in `i64`.
    #[inline]
    fn windows_of(&self, ts: Timestamp) -> Option<WindowsOf> {
        // Every window of `ts` starts within `size` before it and ends within `size` after it:
        // outside that margin of the i64 range the arithmetic below would overflow.
        ts.checked_sub(self.size)?;
        ts.checked_add(self.size)?;
        Some(WindowsOf {
            next: Some(ts - ts.rem_euclid(self.slide)),
            after: ts.saturating_sub(self.size),
            size: self.size,
            slide: self.slide,
        })
    }

    /// What the windows hold in memory, as the budget counts it.
    fn memory(&self) -> usize {
        let key = std::mem::size_of::<Key>();
        let per_bucket = self.windows.values().map(|b| {
            let filter = b.spilled.as_ref().map_or(0, SpilledKeys::bytes);
            b.cost.saturating_add(filter).saturating_add(b.unsaved.len().saturating_mul(key))
        });
        per_bucket.fold(0usize, usize::saturating_add)
    }

    /// Goes on with the firing under way: windows the watermark has passed, in order, each one's
    /// rows in key order, until a chunk of rows is out (the rest waits for `resume`) or every
    /// due window has fired; then drops the windows past their allowed lateness.
    fn fire_due<A: Aggregator<T, Acc = Acc>, T>(&mut self, agg: &A, out: &mut Emitter<'_, A::Output>) {
        let Some(mut firing) = self.firing.take() else { return };
        loop {
            if !has_room(out) {
                self.firing = Some(firing);
                return;
            }
            if let Some(fire) = &mut firing.window {
                if self.fire_rows(agg, fire, out) {
                    let (w, expire) = (fire.window, fire.expire);
                    if let Some(bucket) = self.windows.get_mut(&w) {
                        bucket.fired = true;
                        bucket.all_unsaved = true;
                    }
                    if expire {
                        firing.done.push(w);
                    }
                    firing.window = None;
                }
                continue;
            }
            let after = match firing.last {
                Some(w) => std::ops::Bound::Excluded(w),
                None => std::ops::Bound::Unbounded,
            };
            let Some((&w, bucket)) = self.windows.range_mut((after, std::ops::Bound::Unbounded)).next()
            else {
                break;
            };
            if w.max_timestamp() > firing.watermark {
                break; // windows are ordered by start and share one size: later ones end later
            }
            firing.last = Some(w);
            let expire = w.max_timestamp().saturating_add(self.lateness) <= firing.watermark;
            if bucket.fired && !expire {
                continue;
            }
            // The rows in memory come out in key order through `order`: (leading key bytes, key).
            // Most comparisons end on the leading bytes; equal ones compare the whole keys (the
            // same order as the keys' bytes, which is the store's). Deterministic output order:
            // replays after a restore produce the same rows.
            // A window that goes after this firing gives its slots up (it is dropped at the end).
            let mut order: Vec<(u128, Key, Option<Slot<Acc>>)> = if expire {
                std::mem::take(&mut bucket.slots)
                    .into_iter()
                    .map(|(k, s)| (order_prefix(&k), k, Some(s)))
                    .collect()
            } else {
                bucket.slots.keys().map(|k| (order_prefix(k), k.clone(), None)).collect()
            };
            order.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            let spilled = self.spill.is_some() && bucket.spilled.is_some();
            firing.window = Some(WindowFiring {
                window: w,
                expire,
                fired: bucket.fired,
                order,
                next: 0,
                spilled_after: None,
                spilled_done: !spilled,
            });
        }
        for w in firing.done {
            if let Some(bucket) = self.windows.remove(&w)
                && bucket.spilled.is_some()
                && let Some(spill) = &self.spill
                && let Err(e) = spill.drop_window(w)
            {
                self.failure.set(e);
            }
            self.dropped.push(w);
        }
        if let Err(e) = self.settle() {
            self.failure.set(e);
        }
    }

    /// Emits the next rows of the window `fire` is firing, until the chunk is full; true once
    /// all of them are out. Spilled slots come from the store in key order and merge in as they
    /// are read, never held (a window of millions of keys is mostly on disk under a budget).
    fn fire_rows<A: Aggregator<T, Acc = Acc>, T>(
        &mut self,
        agg: &A,
        fire: &mut WindowFiring<Acc>,
        out: &mut Emitter<'_, A::Output>,
    ) -> bool {
        let Some(bucket) = self.windows.get_mut(&fire.window) else { return true };
        let (w, expire) = (fire.window, fire.expire);
        // Emits the rows in memory that sort before `until` (all of them without one) while the
        // chunk has room; true when all of those are out.
        // `None` when the chunk filled first, else whether the next row in memory has `until`'s key
        // (its copy on disk is then stale).
        let mut emit_memory = |until: Option<(u128, &Key)>,
                               out: &mut Emitter<'_, A::Output>,
                               slots: &mut AHashMap<Key, Slot<Acc>>| {
            while let Some((prefix, key, taken)) = fire.order.get_mut(fire.next) {
                if let Some((p, k)) = until
                    && (*prefix, &*key) >= (p, k)
                {
                    return Some((*prefix, &*key) == (p, k));
                }
                if !has_room(out) {
                    return None;
                }
                if let Some(slot) = taken.as_mut().or_else(|| slots.get_mut(key)) {
                    let revision = next_revision(&mut slot.emitted);
                    out.emit(key.clone(), w, agg.result(&slot.acc), revision, expire);
                }
                fire.next += 1;
            }
            Some(false)
        };
        if !fire.spilled_done
            && let Some(spill) = &self.spill
        {
            let (fired, slots) = (fire.fired, &mut bucket.slots);
            let from = fire.spilled_after.clone().unwrap_or_default();
            let mut finished = true;
            let read = spill.scan_slots_from(w, from.as_bytes(), &mut |key, value| {
                // The scan starts at the last row emitted.
                if fire.spilled_after.as_ref().is_some_and(|a| a.as_bytes() == key) {
                    return Ok(true);
                }
                let key = Key::from_bytes(key);
                match emit_memory(Some((order_prefix(&key), &key)), out, slots) {
                    // A slot read back is in memory: its copy on disk is stale.
                    Some(true) => return Ok(true),
                    Some(false) if has_room(out) => {}
                    _ => {
                        finished = false;
                        return Ok(false);
                    }
                }
                let mut slot: Slot<Acc> = decode_slot(value)?;
                emitted_by_fire(fired, &mut slot);
                let revision = next_revision(&mut slot.emitted);
                out.emit(key.clone(), w, agg.result(&slot.acc), revision, expire);
                fire.spilled_after = Some(key);
                Ok(true)
            });
            match read {
                Ok(()) if !finished => return false,
                Ok(()) => {}
                Err(e) => self.failure.set(e),
            }
            fire.spilled_done = true;
        }
        emit_memory(None, out, &mut bucket.slots).is_some()
    }

    /// Charges the budget for what the windows hold, and spills their share of any excess.
    fn settle(&mut self) -> Result<(), StateError> {
        let memory = self.memory();
        let Some(spill) = &mut self.spill else { return Ok(()) };
        spill.charge(memory);
        let want = spill.to_spill();
        if want == 0 {
            return Ok(());
        }
        let spilled = self.spill_slots(want);
        let memory = self.memory();
        if let Some(spill) = &mut self.spill {
            spill.charge(memory);
        }
        spilled
    }

    /// Moves slots worth about `want` bytes to the spill store: fired windows' first (oldest
    /// first), then open windows' (latest first), where keys not used since the last pass go
    /// before used ones. Each window's write comes first: a failed one keeps its slots in memory.
    fn spill_slots(&mut self, want: usize) -> Result<(), StateError> {
        let Some(spill) = &mut self.spill else { return Ok(()) };
        let fired = self.windows.iter().filter(|(_, b)| b.fired).map(|(w, _)| *w);
        let open = self.windows.iter().rev().filter(|(_, b)| !b.fired).map(|(w, _)| *w);
        let order: Vec<Window> = fired.chain(open).collect();
        let mut freed = 0usize;
        for pass in [Pass::Cold, Pass::Any] {
            for w in &order {
                if freed >= want {
                    return Ok(());
                }
                let Some(bucket) = self.windows.get_mut(w) else { continue };
                let mut taken: Vec<(Key, Vec<u8>, bool)> = Vec::new();
                for (key, slot) in &mut bucket.slots {
                    if freed >= want {
                        break;
                    }
                    if pass == Pass::Cold && !bucket.fired && slot.touched {
                        slot.touched = false;
                        continue;
                    }
                    if slot.dirty {
                        continue;
                    }
                    let value = encode_slot(slot)?;
                    freed = freed.saturating_add(slot_cost::<Acc>(key));
                    // A window that changed as a whole is read back from the spilled copies at
                    // the next snapshot; otherwise changed slots are noted as pending.
                    taken.push((key.clone(), value, slot.unsaved && !bucket.all_unsaved));
                }
                if taken.is_empty() {
                    continue;
                }
                let window_keys = bucket.slots.len();
                spill.write(*w, &taken, &mut bucket.spilled, window_keys)?;
                for (key, _, _) in &taken {
                    if bucket.slots.remove(key).is_some() {
                        bucket.cost = bucket.cost.saturating_sub(slot_cost::<Acc>(key));
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads back the spilled slots the records of a batch are about to update, in one read.
    /// Nothing spills within a batch, so they stay in memory until it ends.
    fn read_back<T>(&mut self, records: &[Record<T>]) {
        self.unreadable.clear();
        let Some(spill) = &self.spill else { return };
        if self.windows.values().all(|b| b.spilled.is_none()) {
            return;
        }
        let mut wanted: Vec<(Window, Key)> = Vec::new();
        for r in records {
            let Some(windows) = self.windows_of(r.event_time) else { continue };
            for w in windows {
                if let Some(b) = self.windows.get(&w)
                    && b.spilled.as_ref().is_some_and(|k| k.maybe(&r.key))
                    && !b.slots.contains_key(&r.key)
                {
                    wanted.push((w, r.key.clone()));
                }
            }
        }
        if wanted.is_empty() {
            return;
        }
        wanted.sort_unstable();
        wanted.dedup();
        let rows: Vec<Vec<u8>> = wanted.iter().map(|(w, k)| spill.slot_row(*w, k)).collect();
        let mut found: Vec<(usize, Result<Slot<Acc>, StateError>)> = Vec::new();
        spill.read(&rows, &mut |i, v| match v {
            Ok(Some(bytes)) => found.push((i, decode_slot(bytes))),
            Ok(None) => {}
            Err(e) => found.push((i, Err(e))),
        });
        for (i, slot) in found {
            let Some((w, key)) = wanted.get(i) else { continue };
            match slot {
                Ok(slot) => {
                    if let Some(b) = self.windows.get_mut(w) {
                        b.insert_read(key.clone(), slot, true);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a spilled window slot back");
                    self.unreadable.insert((*w, key.clone()));
                }
            }
        }
    }

    /// The rejection of a record whose slot in one of its windows could not be read back.
    fn unreadable_rejection(&self, record_key: &Key, ts: Timestamp) -> Option<Rejection> {
        if self.unreadable.is_empty() {
            return None;
        }
        let w = self.windows_of(ts)?.find(|w| self.unreadable.contains(&(*w, record_key.clone())))?;
        Some(Rejection::new(
            DeadLetterReason::ProcessingError,
            format!("state: the spilled slot of window [{}, {}) could not be read back", w.start, w.end),
        ))
    }
}

/// A pass of the spill over the windows: cold slots only, then any.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Cold,
    Any,
}

/// The windows holding one timestamp, latest start first.
struct WindowsOf {
    next: Option<Timestamp>,
    /// Windows starting at or before this one do not hold the timestamp.
    after: Timestamp,
    size: i64,
    slide: i64,
}

impl Iterator for WindowsOf {
    type Item = Window;

    #[inline]
    fn next(&mut self) -> Option<Window> {
        let start = self.next.filter(|s| *s > self.after)?;
        self.next = start.checked_sub(self.slide);
        Some(Window { start, end: start.saturating_add(self.size) })
    }
}

/// True while a chunk of rows has room for more.
fn has_room<V>(out: &Emitter<'_, V>) -> bool {
    out.emitted < OUTPUT_CHUNK as u64
}

/// What a slot costs in memory, as the budget counts it (the accumulator by its inline size).
fn slot_cost<Acc>(key: &Key) -> usize {
    StateBudget::entry_cost(std::mem::size_of::<(Key, Slot<Acc>)>(), key, 0)
}

/// A spilled copy that was never emitted, in a window that has fired since: that fire emitted it
/// as revision 0 (in a fired window, every slot has been emitted by the end of each batch).
fn emitted_by_fire<Acc>(fired: bool, slot: &mut Slot<Acc>) {
    if fired && slot.emitted.is_none() {
        slot.emitted = Some(0);
    }
}

fn encode_slot<Acc: Serialize>(slot: &Slot<Acc>) -> Result<Vec<u8>, StateError> {
    postcard::to_stdvec(slot).map_err(|e| StateError::Backend(format!("cannot encode window state: {e}")))
}

fn decode_slot<Acc: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Slot<Acc>, StateError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt(&format!("spilled window slot: {e}")))
}

impl<Acc: Clone + Serialize + serde::de::DeserializeOwned> WindowState<Acc> for AlignedWindows<Acc> {
    fn watermark(&self) -> Timestamp {
        self.watermark
    }

    fn attach(&mut self, budget: &StateBudget) {
        if self.spill.is_none() {
            self.spill = Some(WindowSpill::new(budget.clone()));
        }
    }

    fn before_batch<T>(&mut self, records: &[Record<T>]) {
        self.read_back(records);
    }

    fn after_batch(&mut self) {
        if let Err(e) = self.settle() {
            self.failure.set(e);
        }
    }

    fn report_failure(&mut self, ctx: &mut crate::operator::Context) {
        self.failure.report(ctx);
    }

    /// Adds a record to each of its windows that is still open; returns `Err(detail)` when none is.
    #[inline]
    fn add<T, A: Aggregator<T, Acc = Acc>>(&mut self, agg: &A, record: &Record<T>) -> Result<(), Rejection> {
        let ts = record.event_time;
        let Some(windows) = self.windows_of(ts) else { return Err(out_of_range(ts, self.size)) };
        if let Some(rejection) = self.unreadable_rejection(&record.key, ts) {
            return Err(rejection);
        }
        let mut accepted = false;
        let mut first_window = None;
        for w in windows {
            first_window.get_or_insert(w);
            if self.expired(w.end) {
                continue;
            }
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
                None => {
                    bucket.cost = bucket.cost.saturating_add(slot_cost::<Acc>(&record.key));
                    bucket.slots.entry(record.key.clone()).or_insert_with(|| Slot {
                        acc: agg.create(),
                        emitted: None,
                        dirty: false,
                        unsaved: false,
                        touched: false,
                    })
                }
            };
            agg.add(&mut slot.acc, &record.payload);
            slot.touched = true;
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
        if accepted {
            Ok(())
        } else {
            let w = first_window.unwrap_or_else(|| {
                let start = ts - ts.rem_euclid(self.slide);
                Window { start, end: start.saturating_add(self.size) }
            });
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
        self.firing = Some(Firing { watermark, last: None, window: None, done: Vec::new() });
        self.fire_due(agg, out);
    }

    fn has_pending(&self) -> bool {
        self.firing.is_some()
    }

    fn resume<A: Aggregator<T, Acc = Acc>, T>(&mut self, agg: &A, out: &mut Emitter<'_, A::Output>) {
        self.fire_due(agg, out);
    }

    fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Writes what changed since the last snapshot: dropped windows are deleted, changed keys
    /// rewritten. Unchanged state is not touched, so incremental checkpoints stay small.
    fn snapshot(&mut self, ns: &str, state: &mut dyn StateBackend) -> Result<(), StateError> {
        self.failure.check()?;
        state.put(ns, META_KEY, &self.watermark.to_be_bytes())?;
        let mut key_buf = Vec::with_capacity(64);
        for w in self.dropped.drain(..) {
            window_prefix(&mut key_buf, w);
            state.delete_prefix(ns, &key_buf)?;
        }
        for (w, bucket) in &mut self.windows {
            let fired = bucket.fired;
            // Spilled slots first: where a slot is also in memory, memory holds the latest.
            if let (Some(spill), Some(_)) = (&self.spill, &bucket.spilled) {
                let slots = &bucket.slots;
                let mut put = |key: &[u8], value: &[u8]| -> Result<(), StateError> {
                    if slots.contains_key(&Key::from_bytes(key)) {
                        return Ok(());
                    }
                    let mut slot: Slot<Acc> = decode_slot(value)?;
                    emitted_by_fire(fired, &mut slot);
                    window_prefix(&mut key_buf, *w);
                    key_buf.extend_from_slice(key);
                    state.put(ns, &key_buf, &encode_row(fired, &slot)?)
                };
                if bucket.all_unsaved {
                    spill.for_each_slot(*w, &mut put)?;
                } else {
                    spill.for_each_pending(*w, &mut put)?;
                }
                spill.clear_pending(*w)?;
            }
            let mut write = |key: &Key, slot: &mut Slot<Acc>| -> Result<(), StateError> {
                slot.unsaved = false;
                window_prefix(&mut key_buf, *w);
                key_buf.extend_from_slice(key.as_bytes());
                state.put(ns, &key_buf, &encode_row(fired, slot)?)
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
        // The lists of changes are empty again: so is their charge.
        let memory = self.memory();
        if let Some(spill) = &mut self.spill {
            spill.charge(memory);
        }
        Ok(())
    }

    fn restore(&mut self, ns: &str, state: &dyn StateBackend) -> Result<(), StateError> {
        self.windows.clear();
        self.firing = None;
        self.dirty.clear();
        self.dropped.clear();
        self.unreadable.clear();
        self.failure.clear();
        if let Some(spill) = &mut self.spill {
            spill.reset()?;
        }
        self.watermark = match state.get(ns, META_KEY)? {
            Some(b) => i64::from_be_bytes(
                b.as_slice().try_into().map_err(|_| corrupt("window watermark has the wrong length"))?,
            ),
            None => i64::MIN,
        };
        let mut read = 0usize;
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
            bucket.insert_read(key, slot, false);
            read += 1;
            if read.is_multiple_of(RESTORE_CHUNK) {
                // Under a budget, restoring spills as it goes: memory stays within it.
                self.settle()?;
            }
        }
        self.settle()
    }

    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        // Emptied windows go without a trace in `dropped`: their rows belong to other copies.
        let spill = self.spill.as_ref();
        let mut failure = None;
        self.windows.retain(|w, bucket| {
            bucket.slots.retain(|k, _| {
                let kept = keep(k);
                if !kept {
                    bucket.cost = bucket.cost.saturating_sub(slot_cost::<Acc>(k));
                }
                kept
            });
            bucket.unsaved.retain(|k| keep(k));
            let mut left_on_disk = 0usize;
            if let (Some(spill), Some(_)) = (spill, &bucket.spilled) {
                let mut gone = Vec::new();
                let scanned = spill.for_each_slot(*w, &mut |key, _| {
                    let key = Key::from_bytes(key);
                    if keep(&key) {
                        left_on_disk += 1;
                    } else {
                        gone.push(spill.slot_row(*w, &key));
                    }
                    Ok(())
                });
                if let Err(e) = scanned.and_then(|()| spill.delete(&gone)) {
                    failure.get_or_insert(e);
                    left_on_disk = 1;
                }
            }
            !bucket.slots.is_empty() || left_on_disk > 0
        });
        if let Some(e) = failure {
            self.failure.set(e);
        }
        self.dirty.retain(|(_, k)| keep(k));
    }
}

/// A checkpoint row's value: whether the window fired, and the slot.
fn encode_row<Acc: Serialize>(fired: bool, slot: &Slot<Acc>) -> Result<Vec<u8>, StateError> {
    postcard::to_stdvec(&(fired, slot))
        .map_err(|e| StateError::Backend(format!("cannot encode window state: {e}")))
}

fn window_prefix(buf: &mut Vec<u8>, w: Window) {
    buf.clear();
    buf.push(ENTRY_TAG);
    buf.extend_from_slice(&ordered(w.start));
    buf.extend_from_slice(&ordered(w.end));
}

const META_KEY: &[u8] = b"\x00meta";
const ENTRY_TAG: u8 = 1;
/// Rows a restore reads between two checks of the budget.
const RESTORE_CHUNK: usize = 1 << 14;
