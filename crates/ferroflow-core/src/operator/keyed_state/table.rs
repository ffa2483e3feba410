//! One declared state's table: what every key holds, the keys changed since the last snapshot,
//! and the time-to-live clean-up.

use std::any::Any;

use ahash::{AHashMap, AHashSet};
use serde::{Deserialize, Serialize};

use super::StateValue;
use super::rows;
use super::small_map::SmallMap;
use super::tier::Tier;
use super::ttl::{Now, StateTtl};
use crate::error::StateError;
use crate::record::{Key, Timestamp};
use crate::state::{StateBackend, StateBudget};

/// A value with the time its time to live counts from (written also without a TTL: a TTL added
/// later then has a time to start from).
#[derive(Debug, Clone, Serialize, Deserialize)]
// A name no user type has: the schema tracing stops at two types of one name.
#[serde(rename = "ferroflow::Stamped")]
pub(in crate::operator) struct Stamped<T> {
    pub(in crate::operator) at: Timestamp,
    pub(in crate::operator) v: T,
}

/// What one key holds in a value state.
pub(in crate::operator) type ValueCell<T> = Stamped<T>;
/// What one key holds in a list state, in the order the elements were added.
pub(in crate::operator) type ListCell<T> = Vec<Stamped<T>>;
/// What one key holds in a map state.
pub(in crate::operator) type MapCell<K, V> = SmallMap<K, Stamped<V>>;

/// What a key holds in one kind of state, written as one row.
pub(crate) trait Cell: StateValue {
    /// The kind, as the schema row records it.
    const KIND: &'static str;
    /// Keeps the parts whose stamp `live` accepts; returns (something was removed, nothing is
    /// left).
    fn retain_live(&mut self, live: &dyn Fn(Timestamp) -> bool) -> (bool, bool);

    /// It holds nothing (a key whose cell empties holds no value: its row goes).
    fn is_empty(&self) -> bool;

    /// Reads a row of the first format (value state only, a bare postcard value without a
    /// stamp), stamped `at`; `None` for a kind that format did not have.
    fn from_first_format(bytes: &[u8], at: Timestamp) -> Option<Result<Self, postcard::Error>> {
        let _ = (bytes, at);
        None
    }
}

impl<T: StateValue> Cell for Stamped<T> {
    const KIND: &'static str = "value";
    fn from_first_format(bytes: &[u8], at: Timestamp) -> Option<Result<Self, postcard::Error>> {
        Some(postcard::from_bytes(bytes).map(|v| Stamped { at, v }))
    }
    fn retain_live(&mut self, live: &dyn Fn(Timestamp) -> bool) -> (bool, bool) {
        let dead = !live(self.at);
        (dead, dead)
    }
    fn is_empty(&self) -> bool {
        false
    }
}

impl<T: StateValue> Cell for Vec<Stamped<T>> {
    const KIND: &'static str = "list";
    fn retain_live(&mut self, live: &dyn Fn(Timestamp) -> bool) -> (bool, bool) {
        let before = self.len();
        self.retain(|e| live(e.at));
        (self.len() != before, self.is_empty())
    }
    fn is_empty(&self) -> bool {
        <[Stamped<T>]>::is_empty(self)
    }
}

impl<K: StateValue + Ord, V: StateValue> Cell for SmallMap<K, Stamped<V>> {
    const KIND: &'static str = "map";
    fn retain_live(&mut self, live: &dyn Fn(Timestamp) -> bool) -> (bool, bool) {
        let before = self.len();
        self.retain(|_, e| live(e.at));
        (self.len() != before, self.is_empty())
    }
    fn is_empty(&self) -> bool {
        SmallMap::is_empty(self)
    }
}

/// A declared state's table, seen without its type.
pub(super) trait Table: Send {
    fn name(&self) -> &'static str;
    fn kind(&self) -> &'static str;
    /// The structure of its rows, as the schema row records it.
    fn shape(&self) -> String;
    /// The clock its values are stamped in (`event` without a time to live).
    fn stamp_clock(&self) -> &'static str;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Writes the keys changed since the last snapshot (emptied ones are deleted), or, with
    /// `all`, every key.
    fn snapshot(
        &mut self,
        ns: &str,
        state: &mut dyn StateBackend,
        buf: &mut Vec<u8>,
        all: bool,
    ) -> Result<(), StateError>;
    /// Starts noting changed keys (only a checkpointed step needs them).
    fn track(&mut self);
    fn restore_entry(&mut self, key: Key, bytes: &[u8]) -> Result<(), StateError>;
    /// Reads a row of the first format (see [`Cell::from_first_format`]) and notes its key, so
    /// that the next snapshot writes it again in the current format.
    fn restore_first_format(&mut self, key: Key, bytes: &[u8], at: Timestamp) -> Result<(), StateError>;
    /// It holds `C` with time to live `ttl`.
    fn holds(&mut self, ttl: Option<StateTtl>, cell: std::any::TypeId) -> bool;
    fn clear(&mut self) -> Result<(), StateError>;
    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) -> Result<(), StateError>;
    /// Removes expired values, if the table has a time to live and its clean-up is due.
    fn sweep(&mut self, now: &Now);
    /// Counts its memory against `budget`, spilling beyond it.
    fn attach(&mut self, budget: &StateBudget);
    /// Spills its coldest keys while the budget is exceeded (between batches).
    fn spill(&mut self) -> Result<(), StateError>;
    /// Brings the spilled ones among `keys` back in one read (before a batch).
    fn preload(&mut self, keys: &[&Key]);
    /// Keys holding a value, in memory or spilled.
    fn len(&self) -> usize;
}

/// A key's cell in memory, with what the budget needs to know of it.
struct Hot<C> {
    cell: C,
    /// What the budget is charged for it (0 without a budget).
    bytes: usize,
    /// Used since the clock hand last passed (second chance before it spills).
    referenced: bool,
    /// Changed since it was last written to the spill store (or never written there).
    dirty: bool,
    /// The spill store holds a copy (written when it spilled, or read from there).
    on_disk: bool,
    /// `bytes` is up to date (a change queues the key to be measured again, once).
    measured: bool,
    /// Picked by the current spill pass.
    chosen: bool,
}

impl<C> Hot<C> {
    fn new(cell: C) -> Self {
        Self { cell, bytes: 0, referenced: true, dirty: true, on_disk: false, measured: false, chosen: false }
    }
}

/// The table of one declared state.
pub(crate) struct KeyedTable<C> {
    name: &'static str,
    pub(super) ttl: Option<StateTtl>,
    cells: AHashMap<Key, Hot<C>>,
    /// Keys changed since the last snapshot, noted only once the step is checkpointed: without
    /// checkpoints the set would only grow.
    touched: AHashSet<Key>,
    tracking: bool,
    last_sweep: Option<Timestamp>,
    /// Writes since the last clean-up: a clean-up walks every key, so it waits until writes have
    /// paid for it (an eighth of the keys), which keeps it O(1) per write.
    writes: usize,
    /// The memory budget and the keys that spilled, once the step runs under a budget.
    tier: Option<Tier>,
    /// Keys the last batched read looked for on disk and did not find: until the next spill,
    /// a load of one of them needs no read.
    absent: AHashSet<Key>,
}

impl<C: Cell> KeyedTable<C> {
    /// Bytes of one entry of the map (with its control byte).
    const SLOT: usize = std::mem::size_of::<(Key, Hot<C>)>() + 1;

    pub(super) fn new(name: &'static str, ttl: Option<StateTtl>, tracking: bool) -> Self {
        Self {
            name,
            ttl,
            cells: AHashMap::new(),
            touched: AHashSet::new(),
            tracking,
            last_sweep: None,
            writes: 0,
            tier: None,
            absent: AHashSet::new(),
        }
    }

    /// Brings the key's cell back from the spill store, if it spilled: every access of a key
    /// starts here (spilling happens between batches only, so the key stays in memory while its
    /// record or timer runs).
    pub(crate) fn load(&mut self, key: &Key) -> Result<(), StateError> {
        let Some(tier) = &mut self.tier else { return Ok(()) };
        if self.cells.contains_key(key) || !tier.maybe_on_disk(key) || self.absent.contains(key) {
            return Ok(());
        }
        let Some(bytes) = tier.budget.get(&tier.row(key))? else { return Ok(()) };
        self.loaded(key, &bytes)
    }

    /// A [`load`](Self::load) of the key would read the spill store.
    pub(crate) fn needs_read(&self, key: &Key) -> bool {
        self.tier.as_ref().is_some_and(|tier| {
            !self.cells.contains_key(key) && tier.maybe_on_disk(key) && !self.absent.contains(key)
        })
    }

    /// Brings back, in one read of the spill store, the spilled keys among `keys` (the keys of a
    /// batch, before its records run): a batched read costs far less per key than one read per
    /// key. A key it cannot read is left for [`load`](Self::load), which reports the error.
    pub(crate) fn preload(&mut self, keys: &[&Key]) {
        self.absent.clear();
        let Some(tier) = &self.tier else { return };
        let mut wanted: Vec<&Key> =
            keys.iter().copied().filter(|k| !self.cells.contains_key(*k) && tier.maybe_on_disk(k)).collect();
        if wanted.is_empty() {
            return;
        }
        wanted.sort_unstable();
        wanted.dedup();
        let rows: Vec<Vec<u8>> = wanted.iter().map(|k| tier.row(k)).collect();
        let mut found: Vec<(&Key, Vec<u8>)> = Vec::new();
        let absent = &mut self.absent;
        tier.budget.multi_get(&rows, &mut |i, value| match (wanted.get(i), value) {
            (Some(key), Ok(Some(v))) => found.push((key, v.to_vec())),
            (Some(key), Ok(None)) => {
                absent.insert((*key).clone());
            }
            _ => {}
        });
        for (key, bytes) in found {
            // A row that does not decode is left on disk: `load` reports it with the record.
            let _ = self.loaded(key, &bytes);
        }
    }

    /// Puts a key read back from the spill store in memory.
    fn loaded(&mut self, key: &Key, bytes: &[u8]) -> Result<(), StateError> {
        let Some(tier) = &mut self.tier else { return Ok(()) };
        let cell = decode::<C>(self.name, bytes)?;
        let charge = Tier::cost(Self::SLOT, key, bytes.len());
        tier.charge(charge);
        tier.on_disk_only = tier.on_disk_only.saturating_sub(1);
        let hot = Hot {
            cell,
            bytes: charge,
            referenced: true,
            dirty: false,
            on_disk: true,
            measured: true,
            chosen: false,
        };
        self.cells.insert(key.clone(), hot);
        Ok(())
    }

    pub(crate) fn get(&mut self, key: &Key) -> Option<&C> {
        let hot = self.cells.get_mut(key)?;
        hot.referenced = true;
        Some(&hot.cell)
    }

    /// The key's cell, to change: the change is noted.
    pub(crate) fn get_mut(&mut self, key: &Key) -> Option<&mut C> {
        let hot = self.cells.get_mut(key)?;
        hot.referenced = true;
        hot.dirty = true;
        self.writes = self.writes.saturating_add(1);
        if self.tracking {
            self.touched.insert(key.clone());
        }
        if let Some(tier) = &mut self.tier
            && std::mem::take(&mut hot.measured)
        {
            tier.resized.push(key.clone());
        }
        Some(&mut hot.cell)
    }

    /// Runs `f` on the key's cell, if it has one: `f` returns what it found and whether it
    /// changed the cell. A change is noted, and a cell left empty is removed.
    pub(crate) fn update<R>(&mut self, key: &Key, f: impl FnOnce(&mut C) -> (R, bool)) -> Option<R> {
        let hot = self.cells.get_mut(key)?;
        hot.referenced = true;
        let (found, changed) = f(&mut hot.cell);
        if changed && hot.cell.is_empty() {
            self.remove(key);
        } else if changed {
            let _ = self.get_mut(key); // notes the change (a second probe, of a slot just read)
        }
        Some(found)
    }

    /// The key's cell, to change, first set to `make()` if the key has none: one probe of the
    /// map where `get_mut` then `insert` take three. The change is noted.
    pub(crate) fn get_or_insert_with(&mut self, key: &Key, make: impl FnOnce() -> C) -> &mut C {
        let (hot, new) = match self.cells.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => (o.into_mut(), false),
            std::collections::hash_map::Entry::Vacant(v) => (v.insert(Hot::new(make())), true),
        };
        hot.referenced = true;
        hot.dirty = true;
        self.writes = self.writes.saturating_add(1);
        if self.tracking {
            self.touched.insert(key.clone());
        }
        if let Some(tier) = &mut self.tier
            && (std::mem::take(&mut hot.measured) || new)
        {
            tier.resized.push(key.clone());
        }
        &mut hot.cell
    }

    pub(crate) fn insert(&mut self, key: &Key, cell: C) {
        match self.get_mut(key) {
            Some(c) => *c = cell,
            None => {
                self.writes = self.writes.saturating_add(1);
                if self.tracking {
                    self.touched.insert(key.clone());
                }
                if let Some(tier) = &mut self.tier {
                    tier.resized.push(key.clone());
                }
                self.cells.insert(key.clone(), Hot::new(cell));
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &Key) {
        let Some(hot) = self.cells.remove(key) else { return };
        if self.tracking {
            self.touched.insert(key.clone());
        }
        if let Some(tier) = &mut self.tier {
            tier.forget(key, &hot.bytes, hot.on_disk);
        }
    }

    /// Keys noted as changed since the last snapshot.
    #[cfg(test)]
    pub(super) fn changes(&self) -> usize {
        self.touched.len()
    }

    /// Removes the key's expired parts, if the table has a TTL that hides them from reads.
    pub(super) fn drop_expired(&mut self, key: &Key, now: &Now) {
        let Some(ttl) = self.ttl.filter(StateTtl::hides_expired) else {
            return; // no TTL, or expired values stay readable until the clean-up
        };
        let Some(hot) = self.cells.get_mut(key) else { return };
        let (changed, empty) = hot.cell.retain_live(&|at| !ttl.expired(at, now));
        if empty {
            self.remove(key);
        } else if changed {
            let _ = self.get_mut(key); // notes the change
        }
    }

    /// The key's row as the checkpoint holds it: from memory, or from the spill store.
    fn row_bytes(&mut self, key: &Key) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(hot) = self.cells.get(key) {
            return encode(self.name, &hot.cell).map(Some);
        }
        match &self.tier {
            Some(tier) if !tier.deleted.contains(key) && tier.maybe_on_disk(key) => {
                tier.budget.get(&tier.row(key))
            }
            _ => Ok(None),
        }
    }
}

fn encode<C: Cell>(name: &str, c: &C) -> Result<Vec<u8>, StateError> {
    postcard::to_stdvec(c)
        .map_err(|e| StateError::Backend(format!("cannot encode {} state '{name}': {e}", C::KIND)))
}

fn decode<C: Cell>(name: &str, bytes: &[u8]) -> Result<C, StateError> {
    let corrupt = |detail: String| StateError::Corrupt {
        what: format!("{} state '{name}' does not read as its declared type: {detail}", C::KIND),
    };
    // Left-over bytes mean another type was written under this name.
    let (cell, rest) = postcard::take_from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} bytes left over", rest.len())));
    }
    Ok(cell)
}

impl<C: Cell> Table for KeyedTable<C> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn kind(&self) -> &'static str {
        C::KIND
    }

    fn shape(&self) -> String {
        super::schema::shape::<C>()
    }

    fn stamp_clock(&self) -> &'static str {
        match self.ttl.map(|t| t.time()) {
            Some(super::ttl::TtlTime::ProcessingTime) => "processing",
            Some(super::ttl::TtlTime::EventTime) | None => "event",
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn snapshot(
        &mut self,
        ns: &str,
        state: &mut dyn StateBackend,
        buf: &mut Vec<u8>,
        all: bool,
    ) -> Result<(), StateError> {
        if all {
            self.touched.clear();
            for (key, hot) in &self.cells {
                rows::cell_key(buf, self.name, key);
                state.put(ns, buf, &encode(self.name, &hot.cell)?)?;
            }
            if let Some(tier) = &self.tier {
                let (cells, name) = (&self.cells, self.name);
                tier.for_each_spilled(&mut |key, bytes| {
                    if !cells.contains_key(&key) {
                        rows::cell_key(buf, name, &key);
                        state.put(ns, buf, bytes)?;
                    }
                    Ok(())
                })?;
            }
            return Ok(());
        }
        for key in std::mem::take(&mut self.touched) {
            rows::cell_key(buf, self.name, &key);
            match self.row_bytes(&key)? {
                Some(bytes) => state.put(ns, buf, &bytes)?,
                None => state.delete(ns, buf)?,
            }
        }
        Ok(())
    }

    fn track(&mut self) {
        self.tracking = true;
        self.touched.clear();
    }

    fn restore_entry(&mut self, key: Key, bytes: &[u8]) -> Result<(), StateError> {
        let cell = decode::<C>(self.name, bytes)?;
        self.restored(key, cell, bytes.len(), false);
        Ok(())
    }

    fn restore_first_format(&mut self, key: Key, bytes: &[u8], at: Timestamp) -> Result<(), StateError> {
        let cell = C::from_first_format(bytes, at)
            .ok_or_else(|| StateError::Corrupt {
                what: format!(
                    "{} state '{}' has rows of the first format, which had value states only",
                    C::KIND,
                    self.name
                ),
            })?
            .map_err(|e| StateError::Corrupt {
                what: format!("value state '{}' does not read as its declared type: {e}", self.name),
            })?;
        self.restored(key, cell, bytes.len(), true);
        Ok(())
    }

    fn holds(&mut self, ttl: Option<StateTtl>, cell: std::any::TypeId) -> bool {
        self.ttl == ttl && std::any::TypeId::of::<C>() == cell
    }

    fn clear(&mut self) -> Result<(), StateError> {
        if let Some(tier) = &mut self.tier {
            tier.reset()?;
        }
        self.cells.clear();
        self.touched.clear();
        self.absent.clear();
        self.last_sweep = None;
        Ok(())
    }

    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) -> Result<(), StateError> {
        // Dropped keys belong to another copy now: its checkpoint rows are its own, not deleted.
        let tier = &mut self.tier;
        self.cells.retain(|k, hot| {
            let kept = keep(k);
            if !kept && let Some(tier) = tier.as_mut() {
                tier.forget(k, &hot.bytes, hot.on_disk);
            }
            kept
        });
        self.touched.retain(|k| keep(k));
        if let Some(tier) = &mut self.tier {
            let hot = &self.cells;
            tier.retain_spilled(&|k| hot.contains_key(k), keep)?;
        }
        Ok(())
    }

    fn sweep(&mut self, now: &Now) {
        let Some(ttl) = self.ttl else { return };
        // At the end of time every event-time value expires: the last clean-up waits neither
        // for writes to pay for it nor for a quarter of the time to live since the one before,
        // so that nothing is left behind.
        let last = ttl.at_end_of_time(now) && self.last_sweep != Some(Timestamp::MAX);
        // A clean-up walks every key: it waits until writes have paid for it, or a whole time
        // to live has passed (state that no longer grows still goes, once per time to live).
        let paid = self.writes.saturating_mul(8) >= self.len() || ttl.overdue(self.last_sweep, now);
        if !(last || (paid && ttl.sweep_due(self.last_sweep, now))) {
            return;
        }
        self.last_sweep = Some(ttl.sweep_time(now));
        self.writes = 0;
        let (tracking, touched, tier) = (self.tracking, &mut self.touched, &mut self.tier);
        self.cells.retain(|key, hot| {
            let (changed, empty) = hot.cell.retain_live(&|at| !ttl.expired(at, now));
            if changed {
                hot.dirty = true;
                if tracking {
                    touched.insert(key.clone());
                }
            }
            if let Some(tier) = tier.as_mut() {
                if empty {
                    tier.forget(key, &hot.bytes, hot.on_disk);
                } else if changed && std::mem::take(&mut hot.measured) {
                    tier.resized.push(key.clone()); // smaller now: measured again
                }
            }
            !empty
        });
        // Spilled keys expire too: the same values must be gone as without a budget.
        if let Err(e) = self.sweep_spilled(ttl, now) {
            tracing::warn!(state = self.name, error = %e, "cannot clean up spilled state: its expired values stay hidden");
        }
    }

    fn attach(&mut self, budget: &StateBudget) {
        if self.tier.is_none() {
            let mut tier = Tier::new(budget.clone());
            for (key, hot) in &mut self.cells {
                hot.bytes = Tier::cost(
                    Self::SLOT,
                    key,
                    postcard::experimental::serialized_size(&hot.cell).unwrap_or(0),
                );
                hot.measured = true;
                tier.charge(hot.bytes);
            }
            self.tier = Some(tier);
        }
    }

    fn preload(&mut self, keys: &[&Key]) {
        KeyedTable::preload(self, keys);
    }

    fn spill(&mut self) -> Result<(), StateError> {
        self.absent.clear();
        let Some(tier) = &mut self.tier else { return Ok(()) };
        // Measure again what changed since the last pass.
        for key in std::mem::take(&mut tier.resized) {
            if let Some(hot) = self.cells.get_mut(&key) {
                let bytes = Tier::cost(
                    Self::SLOT,
                    &key,
                    postcard::experimental::serialized_size(&hot.cell).unwrap_or(0),
                );
                tier.charge(bytes);
                tier.release(hot.bytes);
                hot.bytes = bytes;
                hot.measured = true;
            }
        }
        tier.forget_deleted()?;
        if !tier.budget.over() {
            return tier.flush_deletes();
        }
        // The clock: from where the hand stands, a key used since the hand last passed gets a
        // second chance; two rounds at most over the keys in memory.
        let mut want = tier.share_of_excess();
        let len = self.cells.len();
        let start = tier.hand % len.max(1);
        let mut chosen: Vec<Key> = Vec::new();
        let mut visited = 0usize;
        'rounds: for _ in 0..2 {
            for (from, to) in [(start, len), (0, start)] {
                for (key, hot) in self.cells.iter_mut().skip(from).take(to - from) {
                    if want == 0 {
                        break 'rounds;
                    }
                    visited = visited.saturating_add(1);
                    if hot.chosen || std::mem::take(&mut hot.referenced) {
                        continue;
                    }
                    hot.chosen = true;
                    want = want.saturating_sub(hot.bytes);
                    chosen.push(key.clone());
                }
            }
        }
        tier.hand = start.saturating_add(visited) % len.max(1);
        let mut puts = Vec::new();
        for key in &chosen {
            if let Some(hot) = self.cells.get(key).filter(|h| h.dirty || !h.on_disk) {
                puts.push((tier.row(key), encode(self.name, &hot.cell)?));
            }
        }
        // In key order: the memtable inserts each next to the last.
        puts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Err(e) = tier.write(&puts) {
            for key in &chosen {
                if let Some(hot) = self.cells.get_mut(key) {
                    hot.chosen = false;
                }
            }
            return Err(e);
        }
        // Written: now they may leave memory.
        for key in chosen {
            if let Some(hot) = self.cells.remove(&key) {
                tier.spilled_one(&key, hot.bytes, hot.on_disk);
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.cells.len().saturating_add(self.tier.as_ref().map_or(0, |t| t.on_disk_only))
    }
}

impl<C: Cell> KeyedTable<C> {
    /// Removes expired values of spilled keys (as the clean-up does in memory).
    fn sweep_spilled(&mut self, ttl: StateTtl, now: &Now) -> Result<(), StateError> {
        let Some(tier) = &mut self.tier else { return Ok(()) };
        let (cells, name) = (&self.cells, self.name);
        let mut gone: Vec<Key> = Vec::new();
        let mut kept: Vec<(Key, Vec<u8>)> = Vec::new();
        tier.for_each_spilled(&mut |key, bytes| {
            if cells.contains_key(&key) {
                return Ok(()); // the copy in memory is the one that counts
            }
            let mut cell = decode::<C>(name, bytes)?;
            let (changed, empty) = cell.retain_live(&|at| !ttl.expired(at, now));
            if empty {
                gone.push(key);
            } else if changed {
                kept.push((key, encode(name, &cell)?));
            }
            Ok(())
        })?;
        if gone.is_empty() && kept.is_empty() {
            return Ok(());
        }
        let deletes: Vec<Vec<u8>> = gone.iter().map(|k| tier.row(k)).collect();
        let puts: Vec<(Vec<u8>, Vec<u8>)> = kept.iter().map(|(k, v)| (tier.row(k), v.clone())).collect();
        tier.budget.write_ordered(&deletes, &puts)?;
        tier.on_disk_only = tier.on_disk_only.saturating_sub(gone.len());
        if self.tracking {
            self.touched.extend(gone);
            self.touched.extend(kept.into_iter().map(|(k, _)| k));
        }
        Ok(())
    }

    /// A restored key: into memory, spilling as the budget requires.
    fn restored(&mut self, key: Key, cell: C, encoded: usize, note: bool) {
        if note {
            self.touched.insert(key.clone());
        }
        let mut hot = Hot::new(cell);
        if let Some(tier) = &mut self.tier {
            hot.bytes = Tier::cost(Self::SLOT, &key, encoded);
            hot.measured = true;
            tier.charge(hot.bytes);
        }
        self.cells.insert(key, hot);
        if self.tier.as_ref().is_some_and(|t| t.budget.over()) {
            // A failed spill keeps the keys in memory: over the budget, nothing lost.
            if let Err(e) = self.spill() {
                tracing::warn!(state = self.name, error = %e, "cannot spill restored state");
            }
        }
    }
}

/// What a built-in keyed operator (session windows) uses of a table: it keeps its own checkpoint
/// rows, so it asks for the keys changed since its last snapshot and reads their cells.
impl<C: Cell> KeyedTable<C> {
    /// A table without a time to live that notes no changes until
    /// [`start_tracking`](Self::start_tracking).
    pub(crate) fn untracked(name: &'static str) -> Self {
        Self::new(name, None, false)
    }

    /// Counts its memory against `budget` from now on, spilling beyond it.
    pub(crate) fn attach_budget(&mut self, budget: &StateBudget) {
        Table::attach(self, budget);
    }

    /// Spills its coldest keys while the budget is exceeded; a failed write keeps them in memory.
    pub(crate) fn spill_cold(&mut self) -> Result<(), StateError> {
        Table::spill(self)
    }

    /// Notes changed keys from now on (once a first snapshot wrote every key).
    pub(crate) fn start_tracking(&mut self) {
        Table::track(self);
    }

    /// The keys changed since the last call (or since tracking started).
    pub(crate) fn take_touched(&mut self) -> AHashSet<Key> {
        std::mem::take(&mut self.touched)
    }

    /// Calls `f` with the key's cell, from memory or from the spill store, without bringing it
    /// into memory; `None` when the key holds nothing.
    pub(crate) fn with_cell<R>(
        &mut self,
        key: &Key,
        f: impl FnOnce(Option<&C>) -> R,
    ) -> Result<R, StateError> {
        if let Some(hot) = self.cells.get(key) {
            return Ok(f(Some(&hot.cell)));
        }
        match self.row_bytes(key)? {
            Some(bytes) => Ok(f(Some(&decode::<C>(self.name, &bytes)?))),
            None => Ok(f(None)),
        }
    }

    /// Calls `f` with every key and its cell, those in memory first, then the spilled ones.
    pub(crate) fn for_each_cell(
        &self,
        f: &mut dyn FnMut(&Key, &C) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        for (key, hot) in &self.cells {
            f(key, &hot.cell)?;
        }
        let Some(tier) = &self.tier else { return Ok(()) };
        tier.for_each_spilled(&mut |key, bytes| {
            if self.cells.contains_key(&key) { Ok(()) } else { f(&key, &decode::<C>(self.name, bytes)?) }
        })
    }

    /// Puts a cell read from a checkpoint in the table (encoded in about `encoded` bytes),
    /// spilling as the budget requires.
    pub(crate) fn restore_cell(&mut self, key: Key, cell: C, encoded: usize) {
        self.restored(key, cell, encoded, false);
    }

    /// Forgets every key, in memory and on disk.
    pub(crate) fn clear_all(&mut self) -> Result<(), StateError> {
        Table::clear(self)
    }

    /// Drops every key `keep` refuses, in memory and on disk.
    pub(crate) fn retain(&mut self, keep: &dyn Fn(&Key) -> bool) -> Result<(), StateError> {
        Table::retain_keys(self, keep)
    }
}
