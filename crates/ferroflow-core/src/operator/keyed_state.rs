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
        // A second declaration of the name with another type surfaces at the first access.
        let _ = self.tables.value_table(state);
    }

    pub(super) fn into_tables(self) -> Tables {
        self.tables
    }
}

/// A typed table behind a name, seen without its type.
trait Table: Send {
    fn name(&self) -> &'static str;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Writes the keys changed since the last snapshot (deleted ones are deleted).
    fn snapshot(
        &mut self,
        ns: &str,
        state: &mut dyn StateBackend,
        buf: &mut Vec<u8>,
    ) -> Result<(), StateError>;
    fn restore_entry(&mut self, key: Key, bytes: &[u8]) -> Result<(), StateError>;
    fn clear(&mut self);
    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool);
    fn len(&self) -> usize;
}

/// A value state's table: the value of every key that has one.
pub(super) struct ValueTable<T> {
    name: &'static str,
    values: AHashMap<Key, T>,
    /// Keys set or cleared since the last snapshot.
    touched: AHashSet<Key>,
}

impl<T> ValueTable<T> {
    pub(super) fn get(&self, key: &Key) -> Option<&T> {
        self.values.get(key)
    }

    pub(super) fn set(&mut self, key: &Key, value: T) {
        self.values.insert(key.clone(), value);
        self.touched.insert(key.clone());
    }

    pub(super) fn clear_key(&mut self, key: &Key) {
        if self.values.remove(key).is_some() {
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
    ) -> Result<(), StateError> {
        for key in self.touched.drain() {
            value_key(buf, self.name, &key);
            match self.values.get(&key) {
                Some(v) => {
                    let bytes = postcard::to_stdvec(v).map_err(|e| {
                        StateError::Backend(format!("cannot encode value state '{}': {e}", self.name))
                    })?;
                    state.put(ns, buf, &bytes)?;
                }
                None => state.delete(ns, buf)?,
            }
        }
        Ok(())
    }

    fn restore_entry(&mut self, key: Key, bytes: &[u8]) -> Result<(), StateError> {
        let value = postcard::from_bytes(bytes).map_err(|e| StateError::Corrupt {
            what: format!("value state '{}' does not read as its declared type: {e}", self.name),
        })?;
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
}

impl Tables {
    /// The table of `state`, created on first use; an error when the name is taken by a state of
    /// another type.
    pub(super) fn value_table<T: Serialize + DeserializeOwned + Send + 'static>(
        &mut self,
        state: ValueState<T>,
    ) -> Result<&mut ValueTable<T>, StateError> {
        let i = match self.list.iter().position(|t| t.name() == state.name) {
            Some(i) => i,
            None if state.name.len() > usize::from(u8::MAX) => {
                return Err(StateError::Backend(format!(
                    "state name '{}…' is longer than 255 bytes",
                    state.name.get(..32).unwrap_or_default()
                )));
            }
            None => {
                self.list.push(Box::new(ValueTable::<T> {
                    name: state.name,
                    values: AHashMap::new(),
                    touched: AHashSet::new(),
                }));
                self.list.len() - 1
            }
        };
        self.list.get_mut(i).and_then(|t| t.as_any_mut().downcast_mut::<ValueTable<T>>()).ok_or_else(|| {
            StateError::Backend(format!(
                "state '{}' is used as a ValueState<{}> but was created with another type",
                state.name,
                std::any::type_name::<T>()
            ))
        })
    }

    pub(super) fn snapshot(&mut self, ns: &str, state: &mut dyn StateBackend) -> Result<(), StateError> {
        let mut buf = Vec::new();
        for t in &mut self.list {
            t.snapshot(ns, state, &mut buf)?;
        }
        Ok(())
    }

    /// Reads every value row of `ns` back into the declared tables.
    pub(super) fn restore(&mut self, ns: &str, state: &dyn StateBackend) -> Result<(), StateError> {
        for t in &mut self.list {
            t.clear();
        }
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
    /// Timers set or removed since the last snapshot.
    touched: AHashSet<(Timestamp, Key)>,
}

impl Timers {
    pub(super) fn register(&mut self, at: Timestamp, key: &Key) {
        if self.due.insert((at, key.clone())) {
            self.touched.insert((at, key.clone()));
        }
    }

    pub(super) fn delete(&mut self, at: Timestamp, key: &Key) {
        let timer = (at, key.clone());
        if self.due.remove(&timer) {
            self.touched.insert(timer);
        }
    }

    /// Removes and returns the earliest timer due at `watermark`.
    pub(super) fn pop_due(&mut self, watermark: Timestamp) -> Option<(Timestamp, Key)> {
        if self.due.first().is_none_or(|(at, _)| *at > watermark) {
            return None;
        }
        let timer = self.due.pop_first()?;
        self.touched.insert(timer.clone());
        Some(timer)
    }

    pub(super) fn len(&self) -> usize {
        self.due.len()
    }

    pub(super) fn snapshot(&mut self, ns: &str, state: &mut dyn StateBackend) -> Result<(), StateError> {
        let mut buf = Vec::new();
        for timer in self.touched.drain() {
            timer_key(&mut buf, timer.0, &timer.1);
            if self.due.contains(&timer) {
                state.put(ns, &buf, &[])?;
            } else {
                state.delete(ns, &buf)?;
            }
        }
        Ok(())
    }

    pub(super) fn restore(&mut self, ns: &str, state: &dyn StateBackend) -> Result<(), StateError> {
        self.due.clear();
        self.touched.clear();
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
