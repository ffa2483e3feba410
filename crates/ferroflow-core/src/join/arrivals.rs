//! The records of one key that came at one event time, waiting in a join's keyed state.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Records of one key and event time waiting in a join: mostly one, held inside the key's state
/// without an allocation of its own. Written as a `Vec` is, so rows written before read back, and
/// read back as a `Vec` is: a length read from a damaged row does not reserve memory up front
/// beyond a bound (a `SmallVec` reserves what the row says).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(super) struct Arrivals<T>(SmallVec<[T; 1]>);

impl<T> Default for Arrivals<T> {
    fn default() -> Self {
        Self(SmallVec::new())
    }
}

impl<T> Arrivals<T> {
    pub(super) fn push(&mut self, record: T) {
        self.0.push(record);
    }

    /// Takes every record out, in the order they came.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.0.drain(..)
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

impl<T> std::ops::Deref for Arrivals<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Arrivals<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

impl<'a, T> IntoIterator for &'a Arrivals<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Arrivals<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(d).map(|v| Self(SmallVec::from_vec(v)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::Arrivals;

    /// Rows of a `Vec` read back, and the schema shape a restore compares is a `Vec`'s.
    #[test]
    fn reads_and_writes_what_a_vec_does() {
        let rows = postcard::to_stdvec(&vec![(1u32, "a".to_owned()), (2, "b".to_owned())]).unwrap();
        let back: Arrivals<(u32, String)> = postcard::from_bytes(&rows).unwrap();
        assert_eq!(back.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(postcard::to_stdvec(&back).unwrap(), rows);
        let shape = crate::operator::state_shape::<Arrivals<(u32, String)>>;
        assert_eq!(shape(), crate::operator::state_shape::<Vec<(u32, String)>>());
        assert_ne!(shape(), crate::operator::state_shape::<Vec<(u64, String)>>(), "the check can fail");
    }
}
