//! One declared state's table: what every key holds, the keys changed since the last snapshot,
//! and the time-to-live clean-up.

use std::any::Any;
use std::collections::BTreeMap;

use ahash::{AHashMap, AHashSet};
use serde::{Deserialize, Serialize};

use super::StateValue;
use super::rows;
use super::ttl::{Now, StateTtl};
use crate::error::StateError;
use crate::record::{Key, Timestamp};
use crate::state::StateBackend;

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
pub(in crate::operator) type MapCell<K, V> = BTreeMap<K, Stamped<V>>;

/// What a key holds in one kind of state, written as one row.
pub(in crate::operator) trait Cell: StateValue {
    /// The kind, as the schema row records it.
    const KIND: &'static str;
    /// Keeps the parts whose stamp `live` accepts; returns (something was removed, nothing is
    /// left).
    fn retain_live(&mut self, live: &dyn Fn(Timestamp) -> bool) -> (bool, bool);

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
}

impl<T: StateValue> Cell for Vec<Stamped<T>> {
    const KIND: &'static str = "list";
    fn retain_live(&mut self, live: &dyn Fn(Timestamp) -> bool) -> (bool, bool) {
        let before = self.len();
        self.retain(|e| live(e.at));
        (self.len() != before, self.is_empty())
    }
}

impl<K: StateValue + Ord, V: StateValue> Cell for BTreeMap<K, Stamped<V>> {
    const KIND: &'static str = "map";
    fn retain_live(&mut self, live: &dyn Fn(Timestamp) -> bool) -> (bool, bool) {
        let before = self.len();
        self.retain(|_, e| live(e.at));
        (self.len() != before, self.is_empty())
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
    fn clear(&mut self);
    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool);
    /// Removes expired values, if the table has a time to live and its clean-up is due.
    fn sweep(&mut self, now: &Now);
    fn len(&self) -> usize;
}

/// The table of one declared state.
pub(in crate::operator) struct KeyedTable<C> {
    name: &'static str,
    pub(super) ttl: Option<StateTtl>,
    cells: AHashMap<Key, C>,
    /// Keys changed since the last snapshot, noted only once the step is checkpointed: without
    /// checkpoints the set would only grow.
    touched: AHashSet<Key>,
    tracking: bool,
    last_sweep: Option<Timestamp>,
    /// Writes since the last clean-up: a clean-up walks every key, so it waits until writes have
    /// paid for it (an eighth of the keys), which keeps it O(1) per write.
    writes: usize,
}

impl<C: Cell> KeyedTable<C> {
    pub(super) fn new(name: &'static str, ttl: Option<StateTtl>, tracking: bool) -> Self {
        Self {
            name,
            ttl,
            cells: AHashMap::new(),
            touched: AHashSet::new(),
            tracking,
            last_sweep: None,
            writes: 0,
        }
    }

    pub(super) fn get(&self, key: &Key) -> Option<&C> {
        self.cells.get(key)
    }

    /// The key's cell, to change: the change is noted.
    pub(super) fn get_mut(&mut self, key: &Key) -> Option<&mut C> {
        let cell = self.cells.get_mut(key)?;
        self.writes = self.writes.saturating_add(1);
        if self.tracking {
            self.touched.insert(key.clone());
        }
        Some(cell)
    }

    pub(super) fn insert(&mut self, key: &Key, cell: C) {
        self.cells.insert(key.clone(), cell);
        self.writes = self.writes.saturating_add(1);
        if self.tracking {
            self.touched.insert(key.clone());
        }
    }

    pub(in crate::operator) fn remove(&mut self, key: &Key) {
        if self.cells.remove(key).is_some() && self.tracking {
            self.touched.insert(key.clone());
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
        let Some(cell) = self.cells.get_mut(key) else { return };
        let (changed, empty) = cell.retain_live(&|at| !ttl.expired(at, now));
        if empty {
            self.remove(key);
        } else if changed && self.tracking {
            self.touched.insert(key.clone());
        }
    }
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
        let name = self.name;
        let encode = |c: &C| {
            postcard::to_stdvec(c)
                .map_err(|e| StateError::Backend(format!("cannot encode {} state '{name}': {e}", C::KIND)))
        };
        if all {
            self.touched.clear();
            for (key, c) in &self.cells {
                rows::cell_key(buf, name, key);
                state.put(ns, buf, &encode(c)?)?;
            }
            return Ok(());
        }
        for key in self.touched.drain() {
            rows::cell_key(buf, name, &key);
            match self.cells.get(&key) {
                Some(c) => state.put(ns, buf, &encode(c)?)?,
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
        let corrupt = |detail: String| StateError::Corrupt {
            what: format!("{} state '{}' does not read as its declared type: {detail}", C::KIND, self.name),
        };
        // Left-over bytes mean another type was written under this name.
        let (cell, rest) = postcard::take_from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?;
        if !rest.is_empty() {
            return Err(corrupt(format!("{} bytes left over", rest.len())));
        }
        self.cells.insert(key, cell);
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
        self.touched.insert(key.clone());
        self.cells.insert(key, cell);
        Ok(())
    }

    fn holds(&mut self, ttl: Option<StateTtl>, cell: std::any::TypeId) -> bool {
        self.ttl == ttl && std::any::TypeId::of::<C>() == cell
    }

    fn clear(&mut self) {
        self.cells.clear();
        self.touched.clear();
        self.last_sweep = None;
    }

    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        // Dropped keys belong to another copy now: its checkpoint rows are its own, not deleted.
        self.cells.retain(|k, _| keep(k));
        self.touched.retain(|k| keep(k));
    }

    fn sweep(&mut self, now: &Now) {
        let paid = self.writes.saturating_mul(8) >= self.cells.len();
        let Some(ttl) = self.ttl.filter(|t| paid && t.sweep_due(self.last_sweep, now)) else {
            return;
        };
        self.last_sweep = Some(ttl.sweep_time(now));
        self.writes = 0;
        let (tracking, touched) = (self.tracking, &mut self.touched);
        self.cells.retain(|key, cell| {
            let (changed, empty) = cell.retain_live(&|at| !ttl.expired(at, now));
            if changed && tracking {
                touched.insert(key.clone());
            }
            !empty
        });
    }

    fn len(&self) -> usize {
        self.cells.len()
    }
}
