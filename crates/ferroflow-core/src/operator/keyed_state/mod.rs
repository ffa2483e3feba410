//! Per-key state and timers of a [`KeyedProcess`](super::KeyedProcess) step: typed value, list
//! and map states declared by name, with an optional time to live, kept on the heap and written
//! to the state backend incrementally.

mod access;
mod rows;
mod schema;
#[cfg(test)]
pub(crate) use schema::shape as state_shape;
mod small_map;
mod spilled_timers;
mod table;
mod tables;
mod tier;
mod timer_queue;
mod timers;
mod ttl;

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use access::{ListAccess, MapAccess};
pub(super) use tables::Tables;
pub(crate) use timers::Timers;
pub(super) use ttl::Now;
pub use ttl::{StateTtl, TtlTime, TtlUpdate, TtlVisibility};

pub(crate) use table::{Cell, KeyedTable};
pub(super) use table::{ListCell, MapCell, ValueCell};

/// What a state's values can be: anything serde reads and writes.
pub trait StateValue: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> StateValue for T {}

macro_rules! descriptor {
    ($(#[$doc:meta])* $name:ident<$($t:ident),+>, $debug:literal) => {
        $(#[$doc])*
        pub struct $name<$($t),+> {
            name: &'static str,
            ttl: Option<StateTtl>,
            _t: PhantomData<fn() -> ($($t,)+)>,
        }

        impl<$($t),+> $name<$($t),+> {
            /// A state called `name` (at most 255 bytes; unique within its step), kept until it
            /// is cleared.
            pub const fn new(name: &'static str) -> Self {
                Self { name, ttl: None, _t: PhantomData }
            }

            /// The same state, whose values expire `ttl` after they were last written (see
            /// [`StateTtl`]).
            pub const fn with_ttl(self, ttl: StateTtl) -> Self {
                Self { name: self.name, ttl: Some(ttl), _t: PhantomData }
            }

            /// Its name.
            pub const fn name(&self) -> &'static str {
                self.name
            }

            /// Its time to live, if it has one.
            pub const fn ttl(&self) -> Option<StateTtl> {
                self.ttl
            }
        }

        impl<$($t),+> Clone for $name<$($t),+> {
            fn clone(&self) -> Self {
                *self
            }
        }

        impl<$($t),+> Copy for $name<$($t),+> {}

        impl<$($t),+> std::fmt::Debug for $name<$($t),+> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct($debug).field("name", &self.name).field("ttl", &self.ttl).finish()
            }
        }
    };
}

descriptor!(
    /// One value per key, declared by name (Flink's `ValueState`). The name is the state's
    /// address in checkpoints and savepoints: keep it while the job changes around it.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::operator::{StateTtl, ValueState};
    /// use std::time::Duration;
    /// const LAST_SEEN: ValueState<i64> = ValueState::new("last-seen");
    /// const SESSION: ValueState<u32> =
    ///     ValueState::new("session").with_ttl(StateTtl::event_time(Duration::from_secs(1_800)));
    /// assert_eq!(LAST_SEEN.name(), "last-seen");
    /// assert!(SESSION.ttl().is_some());
    /// ```
    ValueState<T>,
    "ValueState"
);

descriptor!(
    /// A list of values per key (Flink's `ListState`): append one or several, read them in the
    /// order they were added, or replace them all. With a time to live, each element expires on
    /// its own.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::operator::ListState;
    /// const ATTEMPTS: ListState<i64> = ListState::new("attempts");
    /// assert_eq!(ATTEMPTS.name(), "attempts");
    /// ```
    ListState<T>,
    "ListState"
);

descriptor!(
    /// A map per key (Flink's `MapState`), iterated in the order of its keys. With a time to
    /// live, each entry expires on its own.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::operator::MapState;
    /// const PER_COUNTRY: MapState<String, u64> = MapState::new("per-country");
    /// assert_eq!(PER_COUNTRY.name(), "per-country");
    /// ```
    MapState<K, V>,
    "MapState"
);

/// The states a function declares, so that a restore can read them back before the first record
/// (see [`KeyedFunction::declare`](super::KeyedFunction::declare)).
#[derive(Default)]
pub struct StateDeclarations {
    tables: Tables,
}

impl std::fmt::Debug for StateDeclarations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tables.names()).finish()
    }
}

impl StateDeclarations {
    /// Declares a value state.
    pub fn value<T: StateValue>(&mut self, state: ValueState<T>) {
        self.tables.declare::<ValueCell<T>>(state.name, state.ttl);
    }

    /// Declares a list state.
    pub fn list<T: StateValue>(&mut self, state: ListState<T>) {
        self.tables.declare::<ListCell<T>>(state.name, state.ttl);
    }

    /// Declares a map state.
    pub fn map<K: StateValue + Ord, V: StateValue>(&mut self, state: MapState<K, V>) {
        self.tables.declare::<MapCell<K, V>>(state.name, state.ttl);
    }

    pub(super) fn into_tables(self) -> Tables {
        self.tables
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StateError;
    use crate::record::Key;

    /// Without checkpoints nothing reads the changes: noting them would grow without end (every
    /// heartbeat of an absence detector moves a timer).
    #[test]
    fn changes_are_noted_only_once_the_step_is_checkpointed() -> Result<(), StateError> {
        let (mut timers, mut tables) = (Timers::event_time(), Tables::default());
        tables.declare::<ValueCell<u64>>("n", None);
        let key = Key::from("k");
        let now = Now { event: 0, watermark: 0, processing: 0 };
        for t in 0..1_000 {
            timers.register(t, &key);
            timers.delete(t, &key);
            tables.table::<ValueCell<u64>>("n", None)?.write(&key, 1, &now);
        }
        assert_eq!(timers.changes(), 0);
        assert_eq!(tables.table::<ValueCell<u64>>("n", None)?.changes(), 0);

        let mut backend = crate::state::MemoryStateBackend::new();
        timers.register(5, &key);
        timers.snapshot("ns", &mut backend)?;
        tables.snapshot("ns", &mut backend)?;
        timers.delete(5, &key);
        tables.table::<ValueCell<u64>>("n", None)?.write(&key, 2, &now);
        assert_eq!((timers.changes(), tables.table::<ValueCell<u64>>("n", None)?.changes()), (1, 1));
        Ok(())
    }
}
