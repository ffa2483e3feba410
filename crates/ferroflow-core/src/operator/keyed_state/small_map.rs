//! What one key holds in a map state: a sorted vector held in the key's slot while it is small, a
//! B-tree once it grows.
//!
//! Most keys of a join or a per-key index hold one or a few entries. A `BTreeMap` puts even one
//! entry in a node of its own, allocated apart from the key's slot: every access of the key then
//! misses the cache twice, and every new key allocates. Held inline, a small map is read with the
//! slot that holds the key.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};

use either::Either;
use smallvec::SmallVec;

/// Entries a map holds in its sorted vector; one more turns it into a B-tree (inserting into the
/// middle of a long vector moves every entry after it).
const MOST_INLINE: usize = 32;

/// An ordered map, sorted by key, that serializes as a map (the rows a `BTreeMap` writes).
#[derive(Debug, Clone)]
pub(crate) enum SmallMap<K, V> {
    /// Sorted by key, no key twice.
    Small(SmallVec<[(K, V); 1]>),
    Large(BTreeMap<K, V>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self::Small(SmallVec::new())
    }
}

/// Where the entries with keys in `range` lie in `entries`, sorted by key.
fn span<K, V, Q, R>(entries: &[(K, V)], range: &R) -> std::ops::Range<usize>
where
    K: Borrow<Q>,
    Q: Ord + ?Sized,
    R: RangeBounds<Q>,
{
    let from = match range.start_bound() {
        Bound::Included(s) => entries.partition_point(|(k, _)| k.borrow() < s),
        Bound::Excluded(s) => entries.partition_point(|(k, _)| k.borrow() <= s),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(e) => entries.partition_point(|(k, _)| k.borrow() <= e),
        Bound::Excluded(e) => entries.partition_point(|(k, _)| k.borrow() < e),
        Bound::Unbounded => entries.len(),
    };
    // A range that starts after it ends holds nothing.
    from.min(to)..to
}

/// False for a range that starts after it ends (or is empty between two excluded equal bounds),
/// which a `BTreeMap` refuses with a panic: such a range holds no entries.
pub(super) fn well_formed<Q: Ord + ?Sized, R: RangeBounds<Q>>(range: &R) -> bool {
    match (range.start_bound(), range.end_bound()) {
        (Bound::Included(s), Bound::Included(e)) => s <= e,
        (Bound::Included(s), Bound::Excluded(e)) | (Bound::Excluded(s), Bound::Included(e)) => s <= e,
        (Bound::Excluded(s), Bound::Excluded(e)) => s < e,
        _ => true,
    }
}

impl<K: Ord, V> SmallMap<K, V> {
    fn find<Q>(entries: &[(K, V)], k: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        entries.binary_search_by(|(e, _)| e.borrow().cmp(k))
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Small(v) => v.len(),
            Self::Large(m) => m.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self {
            Self::Small(v) => Self::find(v, k).ok().and_then(|i| v.get(i)).map(|(_, e)| e),
            Self::Large(m) => m.get(k),
        }
    }

    pub(crate) fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self {
            Self::Small(v) => match Self::find(v, k) {
                Ok(i) => v.get_mut(i).map(|(_, e)| e),
                Err(_) => None,
            },
            Self::Large(m) => m.get_mut(k),
        }
    }

    pub(crate) fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get(k).is_some()
    }

    /// The value under `k`, first set to `make()` if there is none.
    pub(crate) fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        if let Self::Small(v) = self
            && v.len() >= MOST_INLINE
            && Self::find(v, &k).is_err()
        {
            self.grow();
        }
        match self {
            Self::Small(v) => {
                let i = match Self::find(v, &k) {
                    Ok(i) => i,
                    Err(i) => {
                        v.insert(i, (k, make()));
                        i
                    }
                };
                // `i` is in the vector: found there, or just inserted at it.
                &mut v[i].1
            }
            Self::Large(m) => m.entry(k).or_insert_with(make),
        }
    }

    /// Sets the value under `k`; the value it had, if any.
    pub(crate) fn insert(&mut self, k: K, value: V) -> Option<V> {
        if let Some(e) = self.get_mut(&k) {
            return Some(std::mem::replace(e, value));
        }
        self.get_or_insert_with(k, || value);
        None
    }

    /// Turns the vector into a B-tree.
    fn grow(&mut self) {
        if let Self::Small(v) = self {
            let entries = std::mem::take(v);
            *self = Self::Large(entries.into_iter().collect());
        }
    }

    pub(crate) fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self {
            Self::Small(v) => Self::find(v, k).ok().map(|i| v.remove(i).1),
            Self::Large(m) => m.remove(k),
        }
    }

    /// Removes the entries with keys in `range` and hands them to `f`, in key order; how many
    /// it removed.
    pub(crate) fn remove_range<Q, R>(&mut self, range: R, mut f: impl FnMut(K, V)) -> usize
    where
        K: Borrow<Q> + Clone,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        match self {
            Self::Small(v) => {
                let span = span(v, &range);
                let n = span.len();
                if n > 0 {
                    v.drain(span).for_each(|(k, e)| f(k, e));
                }
                n
            }
            Self::Large(m) => {
                let mut n = 0;
                if !well_formed(&range) {
                    return n;
                }
                while let Some(k) =
                    m.range::<Q, _>((range.start_bound(), range.end_bound())).next().map(|(k, _)| k.clone())
                {
                    // A key read from the map is there (unless its `Ord` disagrees with itself).
                    let Some(e) = m.remove::<K>(&k) else { break };
                    f(k, e);
                    n += 1;
                }
                n
            }
        }
    }

    /// Calls `keep` on the entries with keys in `range`, in key order, and removes those it
    /// returns false for; whether it was called at all.
    pub(crate) fn retain_range<Q, R>(&mut self, range: R, mut keep: impl FnMut(&K, &mut V) -> bool) -> bool
    where
        K: Borrow<Q> + Clone,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        match self {
            Self::Small(v) => {
                let std::ops::Range { start, mut end } = span(v, &range);
                let given = start < end;
                let mut i = start;
                while i < end {
                    let Some((k, e)) = v.get_mut(i) else { break };
                    if keep(k, e) {
                        i += 1;
                    } else {
                        v.remove(i);
                        end -= 1;
                    }
                }
                given
            }
            Self::Large(m) => {
                if !well_formed(&range) {
                    return false;
                }
                let (mut given, mut gone) = (false, Vec::new());
                for (k, e) in m.range_mut(range) {
                    given = true;
                    if !keep(k, e) {
                        gone.push(k.clone());
                    }
                }
                for k in gone {
                    m.remove::<K>(&k);
                }
                given
            }
        }
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        match self {
            Self::Small(v) => v.retain(|(k, e)| keep(k, e)),
            Self::Large(m) => m.retain(|k, e| keep(k, e)),
        }
    }

    /// The entries with keys in `range`, in key order (none for a range that starts after it
    /// ends).
    pub(crate) fn range<Q, R>(&self, range: R) -> impl DoubleEndedIterator<Item = (&K, &V)>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        match self {
            Self::Small(v) => Either::Left(pairs(v.get(span(v, &range)).unwrap_or_default())),
            Self::Large(m) if well_formed(&range) => Either::Right(m.range(range)),
            Self::Large(_) => Either::Left(pairs(&[])),
        }
    }

    /// The entries with keys in `range`, in key order, to change.
    pub(crate) fn range_mut<Q, R>(&mut self, range: R) -> impl DoubleEndedIterator<Item = (&K, &mut V)>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        match self {
            Self::Small(v) => {
                let span = span(v, &range);
                Either::Left(pairs_mut(v.get_mut(span).unwrap_or_default()))
            }
            Self::Large(m) if well_formed(&range) => Either::Right(m.range_mut(range)),
            Self::Large(_) => Either::Left(pairs_mut(&mut [])),
        }
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> {
        self.range::<K, _>(..)
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.range_mut::<K, _>(..).map(|(_, e)| e)
    }
}

/// Sorted entries as a map's iterator gives them.
fn pairs<K, V>(entries: &[(K, V)]) -> impl DoubleEndedIterator<Item = (&K, &V)> {
    entries.iter().map(|(k, v)| (k, v))
}

fn pairs_mut<K, V>(entries: &mut [(K, V)]) -> impl DoubleEndedIterator<Item = (&K, &mut V)> {
    entries.iter_mut().map(|(k, v)| (&*k, v))
}

impl<K: Ord, V> FromIterator<(K, V)> for SmallMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let mut map = Self::default();
        for (k, v) in entries {
            map.insert(k, v);
        }
        map
    }
}

impl<K: serde::Serialize + Ord, V: serde::Serialize> serde::Serialize for SmallMap<K, V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // The length first, as a `BTreeMap` writes it (a B-tree's range does not know its length).
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K: serde::Deserialize<'de> + Ord, V: serde::Deserialize<'de>> serde::Deserialize<'de>
    for SmallMap<K, V>
{
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The rows a `BTreeMap` wrote, and the schema shape it recorded: a map.
        struct Visitor<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: serde::Deserialize<'de> + Ord, V: serde::Deserialize<'de>> serde::de::Visitor<'de>
            for Visitor<K, V>
        {
            type Value = SmallMap<K, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = SmallMap::default();
                while let Some((k, v)) = access.next_entry()? {
                    map.insert(k, v);
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::ops::Bound;

    use proptest::prelude::*;

    use super::SmallMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(i8, u16),
        GetOrInsert(i8, u16),
        Remove(i8),
        RemoveRange(Bound<i8>, Bound<i8>),
        RetainRange(Bound<i8>, Bound<i8>, u16),
        Bump(Bound<i8>, Bound<i8>),
        Retain(i8),
    }

    fn bound() -> impl Strategy<Value = Bound<i8>> {
        prop_oneof![
            any::<i8>().prop_map(Bound::Included),
            any::<i8>().prop_map(Bound::Excluded),
            Just(Bound::Unbounded)
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<i8>(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => (any::<i8>(), any::<u16>()).prop_map(|(k, v)| Op::GetOrInsert(k, v)),
            2 => any::<i8>().prop_map(Op::Remove),
            1 => (bound(), bound()).prop_map(|(a, b)| Op::RemoveRange(a, b)),
            1 => (bound(), bound(), any::<u16>()).prop_map(|(a, b, m)| Op::RetainRange(a, b, m)),
            1 => (bound(), bound()).prop_map(|(a, b)| Op::Bump(a, b)),
            1 => any::<i8>().prop_map(Op::Retain),
        ]
    }

    fn ok(r: &(Bound<i8>, Bound<i8>)) -> bool {
        super::well_formed(r)
    }

    proptest! {
        /// Every operation gives what a `BTreeMap` gives, across the switch to a B-tree, and the
        /// rows are the ones a `BTreeMap` writes.
        #[test]
        fn behaves_as_a_btree_map(ops in proptest::collection::vec(op(), 0..300)) {
            let (mut ours, mut theirs) = (SmallMap::<i8, u16>::default(), BTreeMap::<i8, u16>::new());
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(ours.insert(k, v), theirs.insert(k, v)),
                    Op::GetOrInsert(k, v) => {
                        let a = *ours.get_or_insert_with(k, || v);
                        prop_assert_eq!(a, *theirs.entry(k).or_insert(v));
                    }
                    Op::Remove(k) => prop_assert_eq!(ours.remove(&k), theirs.remove(&k)),
                    Op::RemoveRange(a, b) => {
                        let r = (a, b);
                        let expected: Vec<(i8, u16)> = if ok(&r) {
                            let keys: Vec<i8> = theirs.range(r).map(|(k, _)| *k).collect();
                            keys.into_iter().map(|k| (k, theirs.remove(&k).unwrap())).collect()
                        } else {
                            Vec::new()
                        };
                        let mut removed = Vec::new();
                        let n = ours.remove_range(r, |k, v| removed.push((k, v)));
                        prop_assert_eq!(n, removed.len());
                        prop_assert_eq!(removed, expected);
                    }
                    Op::RetainRange(a, b, below) => {
                        // Changes every entry it is given, keeps the small ones.
                        let r = (a, b);
                        let given = ours.retain_range(r, |_, v| {
                            *v = v.wrapping_add(1);
                            *v < below
                        });
                        let mut expected_given = false;
                        if ok(&r) {
                            let keys: Vec<i8> = theirs.range(r).map(|(k, _)| *k).collect();
                            expected_given = !keys.is_empty();
                            for k in keys {
                                let v = theirs.get_mut(&k).unwrap();
                                *v = v.wrapping_add(1);
                                if *v >= below {
                                    theirs.remove(&k);
                                }
                            }
                        }
                        prop_assert_eq!(given, expected_given);
                    }
                    Op::Bump(a, b) => {
                        let r = (a, b);
                        ours.range_mut(r).for_each(|(_, v)| *v = v.wrapping_add(1));
                        if ok(&r) {
                            theirs.range_mut(r).for_each(|(_, v)| *v = v.wrapping_add(1));
                        }
                        let back: Vec<_> = ours.range(r).rev().map(|(k, v)| (*k, *v)).collect();
                        let expected: Vec<_> =
                            if ok(&r) { theirs.range(r).rev().map(|(k, v)| (*k, *v)).collect() } else { Vec::new() };
                        prop_assert_eq!(back, expected);
                    }
                    Op::Retain(below) => {
                        ours.retain(|k, _| *k < below);
                        theirs.retain(|k, _| *k < below);
                    }
                }
                prop_assert_eq!(ours.len(), theirs.len());
                prop_assert_eq!(ours.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(), theirs.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
            }
            let rows = postcard::to_stdvec(&ours).unwrap();
            prop_assert_eq!(&rows, &postcard::to_stdvec(&theirs).unwrap());
            let back: SmallMap<i8, u16> = postcard::from_bytes(&rows).unwrap();
            prop_assert_eq!(back.iter().collect::<Vec<_>>(), ours.iter().collect::<Vec<_>>());
        }
    }

    /// Rows written before keep reading: a map of small vectors has the shape of a `BTreeMap`
    /// of `Vec`s.
    #[test]
    fn traces_as_the_map_it_replaces() {
        use crate::operator::keyed_state::schema::shape;
        type Small = SmallMap<i64, smallvec::SmallVec<[(String, bool); 1]>>;
        assert_eq!(shape::<Small>(), shape::<BTreeMap<i64, Vec<(String, bool)>>>());
        assert_ne!(shape::<Small>(), shape::<BTreeMap<i64, (String, bool)>>(), "the check can fail");
    }
}
