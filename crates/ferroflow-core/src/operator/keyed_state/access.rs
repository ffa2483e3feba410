//! Reading and writing one key's state, with its time to live applied.

use std::borrow::Borrow;
use std::ops::{Bound, RangeBounds};

use super::StateValue;
use super::small_map::well_formed;
use super::table::{KeyedTable, ListCell, MapCell, Stamped, ValueCell};
use super::ttl::{Now, StateTtl};
use crate::record::{Key, Timestamp};

/// The stamp a write at `now` gives a value.
fn stamp(ttl: Option<StateTtl>, now: &Now) -> Timestamp {
    ttl.map_or(now.event, |t| t.stamp(now))
}

/// The bounds of `range`, borrowed (a range to scan twice).
fn bounds<Q: ?Sized, R: RangeBounds<Q>>(range: &R) -> (Bound<&Q>, Bound<&Q>) {
    (range.start_bound(), range.end_bound())
}

/// A stamp never moves back: a record older than the one that last wrote or read a value (out of
/// order, or late) must not shorten its life.
fn restamp(at: &mut Timestamp, stamp: Timestamp) {
    *at = (*at).max(stamp);
}

impl<T: StateValue> KeyedTable<ValueCell<T>> {
    pub(in crate::operator) fn read(&mut self, key: &Key, now: &Now) -> Option<&T> {
        self.drop_expired(key, now);
        if let Some(ttl) = self.ttl.filter(StateTtl::refresh_on_read)
            && self.get(key).is_some_and(|c| !ttl.expired(c.at, now))
            && let Some(c) = self.get_mut(key)
        {
            restamp(&mut c.at, ttl.stamp(now));
        }
        self.get(key).map(|c| &c.v)
    }

    pub(in crate::operator) fn write(&mut self, key: &Key, v: T, now: &Now) {
        let at = stamp(self.ttl, now);
        match self.get_mut(key) {
            Some(c) => {
                c.v = v;
                restamp(&mut c.at, at);
            }
            None => self.insert(key, Stamped { at, v }),
        }
    }
}

/// One key's list state (see [`ListState`](super::ListState)), from
/// [`KeyedContext::list`](crate::operator::KeyedContext::list).
///
/// # Examples
/// ```
/// use ferroflow_core::operator::{KeyedContext, KeyedFunction, ListState, StateDeclarations};
/// use ferroflow_core::Rejection;
///
/// /// Emits the last three values of each key, oldest first.
/// struct LastThree;
/// const RECENT: ListState<i64> = ListState::new("recent");
///
/// impl KeyedFunction for LastThree {
///     type In = i64;
///     type Out = Vec<i64>;
///     fn declare(&self, states: &mut StateDeclarations) {
///         states.list(RECENT);
///     }
///     fn process(&mut self, v: i64, ctx: &mut KeyedContext<'_, Vec<i64>>) -> Result<(), Rejection> {
///         let mut recent = ctx.list(RECENT)?;
///         recent.add(v);
///         let all: Vec<i64> = recent.iter().copied().collect();
///         let last = all[all.len().saturating_sub(3)..].to_vec();
///         recent.update(last.clone());
///         ctx.emit(last);
///         Ok(())
///     }
/// }
/// ```
pub struct ListAccess<'a, T> {
    table: &'a mut KeyedTable<ListCell<T>>,
    key: &'a Key,
    now: Now,
}

impl<T> std::fmt::Debug for ListAccess<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListAccess").field("key", self.key).finish_non_exhaustive()
    }
}

impl<'a, T: StateValue> ListAccess<'a, T> {
    pub(in crate::operator) fn new(table: &'a mut KeyedTable<ListCell<T>>, key: &'a Key, now: Now) -> Self {
        Self { table, key, now }
    }

    /// The key's values, in the order they were added (expired ones left out, unless the TTL
    /// returns them).
    pub fn iter(&mut self) -> impl Iterator<Item = &T> {
        self.table.drop_expired(self.key, &self.now);
        if let Some(ttl) = self.table.ttl.filter(StateTtl::refresh_on_read)
            && let Some(cell) = self.table.get_mut(self.key)
        {
            for e in cell.iter_mut().filter(|e| !ttl.expired(e.at, &self.now)) {
                restamp(&mut e.at, ttl.stamp(&self.now));
            }
        }
        self.table.get(self.key).into_iter().flatten().map(|e| &e.v)
    }

    /// How many values [`iter`](Self::iter) gives.
    pub fn len(&mut self) -> usize {
        self.table.drop_expired(self.key, &self.now);
        self.table.get(self.key).map_or(0, Vec::len)
    }

    /// The key has no values.
    pub fn is_empty(&mut self) -> bool {
        self.len() == 0
    }

    /// Appends `value`.
    pub fn add(&mut self, value: T) {
        self.add_all(std::iter::once(value));
    }

    /// Appends `values`, in order.
    pub fn add_all(&mut self, values: impl IntoIterator<Item = T>) {
        let at = stamp(self.table.ttl, &self.now);
        let mut values = values.into_iter().map(|v| Stamped { at, v }).peekable();
        if values.peek().is_none() {
            return;
        }
        match self.table.get_mut(self.key) {
            Some(cell) => cell.extend(values),
            None => self.table.insert(self.key, values.collect()),
        }
    }

    /// Replaces the key's values with `values` (none clears the list).
    pub fn update(&mut self, values: Vec<T>) {
        let at = stamp(self.table.ttl, &self.now);
        if values.is_empty() {
            self.table.remove(self.key);
        } else {
            self.table.insert(self.key, values.into_iter().map(|v| Stamped { at, v }).collect());
        }
    }

    /// Removes every value of the key.
    pub fn clear(&mut self) {
        self.table.remove(self.key);
    }
}

/// One key's map state (see [`MapState`](super::MapState)), from
/// [`KeyedContext::map`](crate::operator::KeyedContext::map).
///
/// # Examples
/// ```
/// use ferroflow_core::operator::{KeyedContext, KeyedFunction, MapState, StateDeclarations};
/// use ferroflow_core::Rejection;
///
/// /// Counts each user's events per country and emits the running count.
/// struct PerCountry;
/// const COUNTS: MapState<String, u64> = MapState::new("counts");
///
/// impl KeyedFunction for PerCountry {
///     type In = String;
///     type Out = (String, u64);
///     fn declare(&self, states: &mut StateDeclarations) {
///         states.map(COUNTS);
///     }
///     fn process(&mut self, country: String, ctx: &mut KeyedContext<'_, (String, u64)>) -> Result<(), Rejection> {
///         let mut counts = ctx.map(COUNTS)?;
///         let n = counts.get(&country).copied().unwrap_or(0) + 1;
///         counts.put(country.clone(), n);
///         ctx.emit((country, n));
///         Ok(())
///     }
/// }
/// ```
pub struct MapAccess<'a, K, V> {
    table: &'a mut KeyedTable<MapCell<K, V>>,
    key: &'a Key,
    now: Now,
}

impl<K, V> std::fmt::Debug for MapAccess<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapAccess").field("key", self.key).finish_non_exhaustive()
    }
}

impl<'a, K: StateValue + Ord, V: StateValue> MapAccess<'a, K, V> {
    pub(in crate::operator) fn new(table: &'a mut KeyedTable<MapCell<K, V>>, key: &'a Key, now: Now) -> Self {
        Self { table, key, now }
    }

    /// The value under `k` (an expired one is absent, unless the TTL returns it).
    pub fn get<Q>(&mut self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let (ttl, now) = (self.table.ttl, self.now);
        if let Some(ttl) = ttl {
            let at = self.table.get(self.key).and_then(|m| m.get(k)).map(|e| e.at)?;
            if ttl.expired(at, &now) {
                if ttl.hides_expired() {
                    self.remove(k);
                    return None;
                }
            } else if ttl.refresh_on_read()
                && let Some(e) = self.table.get_mut(self.key).and_then(|m| m.get_mut(k))
            {
                restamp(&mut e.at, ttl.stamp(&now));
            }
        }
        self.table.get(self.key).and_then(|m| m.get(k)).map(|e| &e.v)
    }

    /// The value under `k`, to change in place (an expired one is absent, unless the TTL returns
    /// it); it counts as written.
    pub fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.range_mut((Bound::Included(k), Bound::Included(k))).next().map(|(_, v)| v)
    }

    /// `k` has a value [`get`](Self::get) returns.
    pub fn contains<Q>(&mut self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get(k).is_some()
    }

    /// Sets the value under `k`.
    pub fn put(&mut self, k: K, value: V) {
        let at = stamp(self.table.ttl, &self.now);
        match self.table.get_mut(self.key) {
            Some(m) => match m.get_mut(&k) {
                Some(e) => {
                    e.v = value;
                    restamp(&mut e.at, at);
                }
                None => {
                    m.insert(k, Stamped { at, v: value });
                }
            },
            None => self.table.insert(self.key, MapCell::from_iter([(k, Stamped { at, v: value })])),
        }
    }

    /// The value under `k`, to change in place, first set to `make()` if there is none (an
    /// expired one counts as none, unless the TTL returns it); it counts as written.
    pub fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        self.table.drop_expired(self.key, &self.now);
        let at = stamp(self.table.ttl, &self.now);
        let e = self
            .table
            .get_or_insert_with(self.key, MapCell::default)
            .get_or_insert_with(k, || Stamped { at, v: make() });
        restamp(&mut e.at, at);
        &mut e.v
    }

    /// Removes the value under `k`; true if there was one (expired or not).
    pub fn remove<Q>(&mut self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        if !self.table.get(self.key).is_some_and(|m| m.contains_key(k)) {
            return false;
        }
        let emptied = self.table.get_mut(self.key).is_some_and(|m| {
            m.remove(k);
            m.is_empty()
        });
        if emptied {
            self.table.remove(self.key);
        }
        true
    }

    /// Every entry, in key order (expired ones left out, unless the TTL returns them).
    pub fn iter(&mut self) -> impl Iterator<Item = (&K, &V)> {
        self.table.drop_expired(self.key, &self.now);
        if let Some(ttl) = self.table.ttl.filter(StateTtl::refresh_on_read)
            && let Some(cell) = self.table.get_mut(self.key)
        {
            for e in cell.values_mut().filter(|e| !ttl.expired(e.at, &self.now)) {
                restamp(&mut e.at, ttl.stamp(&self.now));
            }
        }
        self.table.get(self.key).map(|m| m.iter()).into_iter().flatten().map(|(k, e)| (k, &e.v))
    }

    /// The entries whose map key lies in `range`, in key order (expired ones left out, unless the
    /// TTL returns them): a scan of part of the map, as a join reads the buffered records of a
    /// time interval.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::operator::{KeyedContext, KeyedFunction, MapState, StateDeclarations};
    /// use ferroflow_core::Rejection;
    ///
    /// /// Emits how many of the key's earlier records lie within 10 ms before each one.
    /// struct Recent;
    /// const SEEN: MapState<i64, u32> = MapState::new("seen");
    ///
    /// impl KeyedFunction for Recent {
    ///     type In = ();
    ///     type Out = u32;
    ///     fn declare(&self, states: &mut StateDeclarations) {
    ///         states.map(SEEN);
    ///     }
    ///     fn process(&mut self, _: (), ctx: &mut KeyedContext<'_, u32>) -> Result<(), Rejection> {
    ///         let t = ctx.timestamp();
    ///         let mut seen = ctx.map(SEEN)?;
    ///         let recent = seen.range(t.saturating_sub(10)..t).map(|(_, n)| *n).sum();
    ///         let n = seen.get(&t).copied().unwrap_or(0) + 1;
    ///         seen.put(t, n);
    ///         ctx.emit(recent);
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn range<Q, R>(&mut self, range: R) -> impl DoubleEndedIterator<Item = (&K, &V)>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        self.table.drop_expired(self.key, &self.now);
        let valid = well_formed(&range);
        if valid
            && let Some(ttl) = self.table.ttl.filter(StateTtl::refresh_on_read)
            && self.table.get(self.key).is_some_and(|m| m.range(bounds(&range)).next().is_some())
            && let Some(cell) = self.table.get_mut(self.key)
        {
            for (_, e) in cell.range_mut(bounds(&range)).filter(|(_, e)| !ttl.expired(e.at, &self.now)) {
                restamp(&mut e.at, ttl.stamp(&self.now));
            }
        }
        self.table
            .get(self.key)
            .filter(|_| valid)
            .map(|m| m.range(range))
            .into_iter()
            .flatten()
            .map(|(k, e)| (k, &e.v))
    }

    /// The entries whose map key lies in `range`, in key order, to change in place (expired ones
    /// left out, unless the TTL returns them). Each entry it gives counts as written.
    pub fn range_mut<Q, R>(&mut self, range: R) -> impl DoubleEndedIterator<Item = (&K, &mut V)>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        // What a hiding TTL leaves out is gone after this; what is left is returned.
        self.table.drop_expired(self.key, &self.now);
        let at = stamp(self.table.ttl, &self.now);
        let valid = well_formed(&range);
        let has_any =
            valid && self.table.get(self.key).is_some_and(|m| m.range(bounds(&range)).next().is_some());
        let cell = if has_any { self.table.get_mut(self.key) } else { None };
        cell.map(|m| m.range_mut(range)).into_iter().flatten().map(move |(k, e)| {
            restamp(&mut e.at, at);
            (k, &mut e.v)
        })
    }

    /// Removes the entries whose map key lies in `range` and returns them in key order (expired
    /// ones are dropped, not returned, unless the TTL returns them).
    pub fn remove_range<Q, R>(&mut self, range: R) -> Vec<(K, V)>
    where
        K: Borrow<Q> + Clone,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        self.table.drop_expired(self.key, &self.now);
        if !well_formed(&range) {
            return Vec::new();
        }
        // One probe of the key's cell.
        self.table
            .update(self.key, |m| {
                let mut removed = Vec::new();
                let n = m.remove_range(range, |k, e| removed.push((k, e.v)));
                (removed, n > 0)
            })
            .unwrap_or_default()
    }

    /// Calls `f` on each entry whose map key lies in `range`, in key order, to change it, and
    /// removes the entries it returns false for (expired ones are dropped first, unless the TTL
    /// returns them): one pass that lets go of part of an entry and all of others, as a join
    /// lets go of what the watermark has passed. Each entry it is given counts as written.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::operator::{KeyedContext, KeyedFunction, MapState, StateDeclarations};
    /// use ferroflow_core::Rejection;
    ///
    /// /// Keeps the values of the last 10 ms of each key, halving older ones' weights first.
    /// struct Decay;
    /// const WEIGHTS: MapState<i64, u32> = MapState::new("weights");
    ///
    /// impl KeyedFunction for Decay {
    ///     type In = u32;
    ///     type Out = u32;
    ///     fn declare(&self, states: &mut StateDeclarations) {
    ///         states.map(WEIGHTS);
    ///     }
    ///     fn process(&mut self, w: u32, ctx: &mut KeyedContext<'_, u32>) -> Result<(), Rejection> {
    ///         let t = ctx.timestamp();
    ///         let mut weights = ctx.map(WEIGHTS)?;
    ///         weights.retain_range(..t.saturating_sub(10), |_, w| {
    ///             *w /= 2;
    ///             *w > 0
    ///         });
    ///         weights.put(t, w);
    ///         ctx.emit(w);
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn retain_range<Q, R>(&mut self, range: R, mut f: impl FnMut(&K, &mut V) -> bool)
    where
        K: Borrow<Q> + Clone,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        self.table.drop_expired(self.key, &self.now);
        let at = stamp(self.table.ttl, &self.now);
        self.table.update(self.key, |m| {
            let given = m.retain_range(range, |k, e| {
                let keep = f(k, &mut e.v);
                restamp(&mut e.at, at);
                keep
            });
            ((), given)
        });
    }

    /// How many entries [`iter`](Self::iter) gives.
    pub fn len(&mut self) -> usize {
        self.table.drop_expired(self.key, &self.now);
        self.table.get(self.key).map_or(0, MapCell::len)
    }

    /// The key's map is empty.
    pub fn is_empty(&mut self) -> bool {
        self.len() == 0
    }

    /// Removes every entry of the key.
    pub fn clear(&mut self) {
        self.table.remove(self.key);
    }
}
