//! Per-key state and event-time timers of a [`KeyedProcess`](super::KeyedProcess) step: typed
//! tables declared by name, kept on the heap, written to the state backend incrementally.

use std::any::Any;
use std::collections::BTreeSet;
use std::marker::PhantomData;

use ahash::{AHashMap, AHashSet};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StateError;
use crate::record::{Key, Timestamp};
use crate::state::StateBackend;

/// One value per key, declared by name (Flink's `ValueState`). The name is the state's address in
/// checkpoints and savepoints: keep it while the job changes around it.
///
/// # Examples
/// ```
/// use ferroflow_core::operator::ValueState;
/// const LAST_SEEN: ValueState<i64> = ValueState::new("last-seen");
/// assert_eq!(LAST_SEEN.name(), "last-seen");
/// ```
pub struct ValueState<T> {
    name: &'static str,
    _t: PhantomData<fn() -> T>,
}

impl<T> ValueState<T> {
    /// A value state called `name` (at most 255 bytes; unique within its step).
    pub const fn new(name: &'static str) -> Self {
        Self { name, _t: PhantomData }
    }

    /// Its name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> Clone for ValueState<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ValueState<T> {}

impl<T> std::fmt::Debug for ValueState<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ValueState").field(&self.name).finish()
    }
}

/// The states a function declares, so that a restore can read them back before the first record
/// (see [`KeyedFunction::declare`](super::KeyedFunction::declare)).
#[derive(Default)]
pub struct StateDeclarations {
    tables: Tables,
}

impl std::fmt::Debug for StateDeclarations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tables.list.iter().map(|t| t.name())).finish()
    }
}

impl StateDeclarations {
    /// Declares a value state.
    pub fn value<T: Serialize + DeserializeOwned + Send + 'static>(&mut self, state: ValueState<T>) {
        self.tables.declare(state);
    }

    pub(super) fn into_tables(self) -> Tables {
        self.tables
    }
}

/// A typed table behind a name, seen without its type.
trait Table: Send {
    fn name(&self) -> &'static str;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Writes the keys changed since the last snapshot (deleted ones are deleted), or, with
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
    fn clear(&mut self);
    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool);
    fn len(&self) -> usize;
}

/// A value state's table: the value of every key that has one.
pub(super) struct ValueTable<T> {
    name: &'static str,
    values: AHashMap<Key, T>,
    /// Keys set or cleared since the last snapshot, noted only once the step is checkpointed:
    /// without checkpoints the set would only grow.
    touched: AHashSet<Key>,
    tracking: bool,
}

impl<T> ValueTable<T> {
    pub(super) fn get(&self, key: &Key) -> Option<&T> {
        self.values.get(key)
    }

    pub(super) fn set(&mut self, key: &Key, value: T) {
        self.values.insert(key.clone(), value);
        if self.tracking {
            self.touched.insert(key.clone());
        }
    }

    pub(super) fn clear_key(&mut self, key: &Key) {
        if self.values.remove(key).is_some() && self.tracking {
            self.touched.insert(key.clone());
        }
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Table for ValueTable<T> {
    fn name(&self) -> &'static str {
        self.name
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
        let encode = |v: &T| {
            postcard::to_stdvec(v)
                .map_err(|e| StateError::Backend(format!("cannot encode value state '{name}': {e}")))
        };
        if all {
            self.touched.clear();
            for (key, v) in &self.values {
                value_key(buf, name, key);
                state.put(ns, buf, &encode(v)?)?;
            }
            return Ok(());
        }
        for key in self.touched.drain() {
            value_key(buf, name, &key);
            match self.values.get(&key) {
                Some(v) => state.put(ns, buf, &encode(v)?)?,
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
            what: format!("value state '{}' does not read as its declared type: {detail}", self.name),
        };
        // Left-over bytes mean another type was written under this name.
        let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?;
        if !rest.is_empty() {
            return Err(corrupt(format!("{} bytes left over", rest.len())));
        }
        self.values.insert(key, value);
        Ok(())
    }

    fn clear(&mut self) {
        self.values.clear();
        self.touched.clear();
    }

    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        // Dropped keys belong to another copy now: its checkpoint rows are its own, not deleted.
        self.values.retain(|k, _| keep(k));
        self.touched.retain(|k| keep(k));
    }

    fn len(&self) -> usize {
        self.values.len()
    }
}

/// Every table of a step, by name.
#[derive(Default)]
pub(super) struct Tables {
    list: Vec<Box<dyn Table>>,
    /// Tables note changed keys (from the first snapshot or restore on).
    tracking: bool,
}

impl Tables {
    /// Declares `state`; a second declaration of its name is ignored.
    fn declare<T: Serialize + DeserializeOwned + Send + 'static>(&mut self, state: ValueState<T>) {
        if state.name.len() > usize::from(u8::MAX) || self.list.iter().any(|t| t.name() == state.name) {
            return; // refused at the first access, with the reason
        }
        self.list.push(Box::new(ValueTable::<T> {
            name: state.name,
            values: AHashMap::new(),
            touched: AHashSet::new(),
            tracking: self.tracking,
        }));
    }

    /// The table of `state`; an error when it was not declared, or declared with another type.
    pub(super) fn value_table<T: Serialize + DeserializeOwned + Send + 'static>(
        &mut self,
        state: ValueState<T>,
    ) -> Result<&mut ValueTable<T>, StateError> {
        let Some(table) = self.list.iter_mut().find(|t| t.name() == state.name) else {
            return Err(StateError::Backend(if state.name.len() > usize::from(u8::MAX) {
                format!("state name '{}…' is longer than 255 bytes", state.name.get(..32).unwrap_or_default())
            } else {
                format!("state '{}' is not declared (declare it in KeyedFunction::declare)", state.name)
            }));
        };
        table.as_any_mut().downcast_mut::<ValueTable<T>>().ok_or_else(|| {
            StateError::Backend(format!(
                "state '{}' is used as a ValueState<{}> but was declared with another type",
                state.name,
                std::any::type_name::<T>()
            ))
        })
    }

    /// Writes what changed since the last snapshot; the first one writes every value. It removes
    /// no rows: a job's backend starts empty or restored (which starts the noting), and copies of
    /// a job write their own keys into one backend, one after the other.
    pub(super) fn snapshot(&mut self, ns: &str, state: &mut dyn StateBackend) -> Result<(), StateError> {
        let all = !self.tracking;
        let mut buf = Vec::new();
        for t in &mut self.list {
            t.snapshot(ns, state, &mut buf, all)?;
        }
        self.track();
        Ok(())
    }

    fn track(&mut self) {
        if !self.tracking {
            self.tracking = true;
            for t in &mut self.list {
                t.track();
            }
        }
    }

    /// Reads every value row of `ns` back into the declared tables.
    pub(super) fn restore(&mut self, ns: &str, state: &dyn StateBackend) -> Result<(), StateError> {
        for t in &mut self.list {
            t.clear();
        }
        self.track();
        for kv in state.scan_prefix(ns, &[VALUE_TAG])? {
            let (k, v) = kv?;
            let (name, key) = split_value_key(&k)?;
            let table = self.list.iter_mut().find(|t| t.name() == name).ok_or_else(|| StateError::Corrupt {
                what: format!(
                    "the checkpoint holds state '{name}' of step '{ns}', which the function does not declare \
                     (declare it in KeyedFunction::declare)"
                ),
            })?;
            table.restore_entry(key, v.as_slice())?;
        }
        Ok(())
    }

    pub(super) fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        for t in &mut self.list {
            t.retain_keys(keep);
        }
    }

    /// Values held, over every table.
    pub(super) fn len(&self) -> usize {
        self.list.iter().map(|t| t.len()).sum()
    }
}

/// Event-time timers: at most one per (time, key), fired in time order, then key order.
#[derive(Debug, Default)]
pub(super) struct Timers {
    due: BTreeSet<(Timestamp, Key)>,
    /// Timers set or removed since the last snapshot (noted once the step is checkpointed).
    touched: AHashSet<(Timestamp, Key)>,
    tracking: bool,
    /// While timers fire up to this watermark: timers registered at or below it wait in
    /// `deferred` for the next watermark (a timer that registers its own time again would
    /// otherwise fire for ever).
    firing: Option<Timestamp>,
    deferred: BTreeSet<(Timestamp, Key)>,
}

impl Timers {
    pub(super) fn register(&mut self, at: Timestamp, key: &Key) {
        let timer = (at, key.clone());
        let added = match self.firing {
            Some(w) if at <= w => !self.due.contains(&timer) && self.deferred.insert(timer.clone()),
            _ => self.due.insert(timer.clone()),
        };
        if added && self.tracking {
            self.touched.insert(timer);
        }
    }

    pub(super) fn delete(&mut self, at: Timestamp, key: &Key) {
        let timer = (at, key.clone());
        if (self.due.remove(&timer) || self.deferred.remove(&timer)) && self.tracking {
            self.touched.insert(timer);
        }
    }

    /// Starts firing the timers due at `watermark` (see [`pop_due`](Self::pop_due)).
    pub(super) fn start_firing(&mut self, watermark: Timestamp) {
        self.firing = Some(watermark);
    }

    /// Removes and returns the earliest timer due at the watermark being fired; `None` once none
    /// is left, which ends the firing (timers deferred meanwhile wait for the next watermark).
    pub(super) fn pop_due(&mut self) -> Option<(Timestamp, Key)> {
        let w = self.firing?;
        if self.due.first().is_none_or(|(at, _)| *at > w) {
            self.firing = None;
            self.due.append(&mut self.deferred);
            return None;
        }
        let timer = self.due.pop_first()?;
        if self.tracking {
            self.touched.insert(timer.clone());
        }
        Some(timer)
    }

    pub(super) fn len(&self) -> usize {
        self.due.len() + self.deferred.len()
    }

    /// Writes what changed since the last snapshot; the first one writes every timer (and
    /// removes no rows, as [`Tables::snapshot`]).
    pub(super) fn snapshot(&mut self, ns: &str, state: &mut dyn StateBackend) -> Result<(), StateError> {
        let mut buf = Vec::new();
        if !self.tracking {
            for (at, key) in self.due.iter().chain(&self.deferred) {
                timer_key(&mut buf, *at, key);
                state.put(ns, &buf, &[])?;
            }
            self.tracking = true;
            self.touched.clear();
            return Ok(());
        }
        for timer in self.touched.drain() {
            timer_key(&mut buf, timer.0, &timer.1);
            if self.due.contains(&timer) || self.deferred.contains(&timer) {
                state.put(ns, &buf, &[])?;
            } else {
                state.delete(ns, &buf)?;
            }
        }
        Ok(())
    }

    pub(super) fn restore(&mut self, ns: &str, state: &dyn StateBackend) -> Result<(), StateError> {
        self.due.clear();
        self.deferred.clear();
        self.touched.clear();
        self.tracking = true;
        for kv in state.scan_prefix(ns, &[TIMER_TAG])? {
            let (k, _) = kv?;
            let at = k
                .get(1..9)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(|b| i64::from_be_bytes(b) ^ i64::MIN)
                .ok_or_else(|| StateError::Corrupt {
                    what: format!("a timer row of step '{ns}' is too short"),
                })?;
            self.due.insert((at, Key::from(k.get(9..).unwrap_or_default())));
        }
        Ok(())
    }

    pub(super) fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        self.due.retain(|(_, k)| keep(k));
        self.deferred.retain(|(_, k)| keep(k));
        self.touched.retain(|(_, k)| keep(k));
    }
}

/// Value rows: the tag, the state's name (length, then bytes), then the key's bytes.
const VALUE_TAG: u8 = 1;
/// Timer rows: the tag, the time (8 bytes, sign bit flipped, so rows sort by time), the key.
const TIMER_TAG: u8 = 2;

fn value_key(buf: &mut Vec<u8>, name: &str, key: &Key) {
    buf.clear();
    buf.push(VALUE_TAG);
    // Names are at most 255 bytes: a table is not created for a longer one.
    buf.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(key.as_bytes());
}

fn split_value_key(k: &[u8]) -> Result<(&str, Key), StateError> {
    let corrupt = || StateError::Corrupt { what: "a value state row has a malformed key".into() };
    let len = usize::from(*k.get(1).ok_or_else(corrupt)?);
    let end = len.checked_add(2).ok_or_else(corrupt)?;
    let name = std::str::from_utf8(k.get(2..end).ok_or_else(corrupt)?).map_err(|_| corrupt())?;
    Ok((name, Key::from(k.get(end..).unwrap_or_default())))
}

fn timer_key(buf: &mut Vec<u8>, at: Timestamp, key: &Key) {
    buf.clear();
    buf.push(TIMER_TAG);
    buf.extend_from_slice(&(at ^ i64::MIN).to_be_bytes());
    buf.extend_from_slice(key.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without checkpoints nothing reads the changes: noting them would grow without end (every
    /// heartbeat of an absence detector moves a timer).
    #[test]
    fn changes_are_noted_only_once_the_step_is_checkpointed() -> Result<(), StateError> {
        let (mut timers, mut tables) = (Timers::default(), Tables::default());
        let state: ValueState<u64> = ValueState::new("n");
        tables.declare(state);
        let key = Key::from("k");
        for t in 0..1_000 {
            timers.register(t, &key);
            timers.delete(t, &key);
            tables.value_table(state)?.set(&key, 1);
        }
        assert_eq!(timers.touched.len(), 0);
        assert_eq!(tables.value_table(state)?.touched.len(), 0);

        let mut backend = crate::state::MemoryStateBackend::new();
        timers.register(5, &key);
        timers.snapshot("ns", &mut backend)?;
        tables.snapshot("ns", &mut backend)?;
        timers.delete(5, &key);
        tables.value_table(state)?.set(&key, 2);
        assert_eq!((timers.touched.len(), tables.value_table(state)?.touched.len()), (1, 1));
        Ok(())
    }
}
