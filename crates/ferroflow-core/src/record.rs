//! Records: the unit that flows through a job, with its key, event time and source position.

use std::fmt;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Milliseconds since the Unix epoch, the engine's unit of event time.
pub type Timestamp = i64;

/// Index of a source partition (a Kafka partition, a file, a shard of an in-memory source).
pub type PartitionId = u32;

/// Where a record came from: its source partition and its offset inside that partition.
///
/// Every record and every dead letter carries one, so any output can be traced back to its input.
/// For file sources the offset is the zero-based line index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct SourcePosition {
    /// Source partition the record was read from.
    pub partition: PartitionId,
    /// Offset of the record inside its partition.
    pub offset: u64,
}

impl SourcePosition {
    /// Builds a position from a partition and an offset.
    pub const fn new(partition: PartitionId, offset: u64) -> Self {
        Self { partition, offset }
    }
}

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition {} offset {}", self.partition, self.offset)
    }
}

/// A grouping key: raw bytes, stored inline (no heap allocation) up to 24 bytes.
///
/// Keys are bytes so that state backends can store them as they are; most keys are short strings
/// (user ids, event types), which [`Key::from`] takes directly.
///
/// # Examples
/// ```
/// use ferroflow_core::Key;
/// let k = Key::from("user-42");
/// assert_eq!(k.as_bytes(), b"user-42");
/// assert_eq!(k.to_string(), "user-42");
/// ```
#[derive(Eq, Default)]
pub struct Key(SmallVec<[u8; 24]>);

/// The hash of the bytes, as derived before: keys equal by the comparison below hash alike.
impl std::hash::Hash for Key {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// Keys of 8 bytes (`Key::from(u64)`) are compared as one big-endian number, which is how their
/// bytes compare: without a call to `memcmp` for every comparison a state or timer look-up makes.
impl PartialEq for Key {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (<[u8; 8]>::try_from(self.as_bytes()), <[u8; 8]>::try_from(other.as_bytes())) {
            (Ok(a), Ok(b)) => u64::from_ne_bytes(a) == u64::from_ne_bytes(b),
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}

/// Byte order (shorter first on a common prefix), as for `[u8]`.
impl Ord for Key {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (<[u8; 8]>::try_from(self.as_bytes()), <[u8; 8]>::try_from(other.as_bytes())) {
            (Ok(a), Ok(b)) => u64::from_be_bytes(a).cmp(&u64::from_be_bytes(b)),
            _ => self.as_bytes().cmp(other.as_bytes()),
        }
    }
}

impl PartialOrd for Key {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Clone for Key {
    /// A copy of the bytes (`SmallVec`'s own `clone` goes through an iterator, byte by byte; keys
    /// are cloned for every record a window or exchange keeps).
    #[inline]
    fn clone(&self) -> Self {
        Self::from_bytes(&self.0)
    }
}

impl Key {
    /// The empty key, carried by records that have not been keyed yet.
    pub fn empty() -> Self {
        Self(SmallVec::new())
    }

    /// Builds a key from raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(SmallVec::from_slice(bytes))
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key as UTF-8 text, if it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The key as the `u64` it was made from with `Key::from(u64)` (8 big-endian bytes).
    ///
    /// Window results carry the key as bytes; [`as_str`](Self::as_str) and this give typed keys
    /// back for the common cases.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::Key;
    /// assert_eq!(Key::from(42u64).as_u64(), Some(42));
    /// assert_eq!(Key::from("user-42").as_u64(), None);
    /// ```
    pub fn as_u64(&self) -> Option<u64> {
        <[u8; 8]>::try_from(self.0.as_slice()).ok().map(u64::from_be_bytes)
    }

    /// True for the empty key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Self::from_bytes(s.as_bytes())
    }
}

impl From<&String> for Key {
    fn from(s: &String) -> Self {
        Self::from_bytes(s.as_bytes())
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Self::from_bytes(s.as_bytes())
    }
}

impl From<&[u8]> for Key {
    fn from(b: &[u8]) -> Self {
        Self::from_bytes(b)
    }
}

impl From<u64> for Key {
    fn from(v: u64) -> Self {
        Self::from_bytes(&v.to_be_bytes())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => write!(f, "Key({s:?})"),
            None => write!(f, "Key({:?})", self.0.as_slice()),
        }
    }
}

/// Keys serialize as a string when they are UTF-8 (the common case) and as a byte array otherwise.
impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.as_str() {
            Some(s) => serializer.serialize_str(s),
            None => serializer.serialize_bytes(&self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key::from(v))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Key, E> {
                Ok(Key::from_bytes(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Key, A::Error> {
                let mut out = SmallVec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Key(out))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

/// One element of a stream: a payload with its key, event time and source position.
///
/// # Examples
/// ```
/// use ferroflow_core::{Record, SourcePosition};
/// let r = Record::new("click", 1_700_000_000_000).with_position(SourcePosition::new(2, 17));
/// assert_eq!(r.position.offset, 17);
/// assert!(r.key.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Record<T> {
    /// Grouping key; empty until a `key_by` step sets it.
    pub key: Key,
    /// Event time in milliseconds since the epoch; set by the source or by `assign_timestamps`.
    pub event_time: Timestamp,
    /// Where the record was read from.
    pub position: SourcePosition,
    /// The data itself.
    pub payload: T,
}

impl<T> Record<T> {
    /// Builds an unkeyed record at `event_time` with a default position.
    pub fn new(payload: T, event_time: Timestamp) -> Self {
        Self { key: Key::empty(), event_time, position: SourcePosition::default(), payload }
    }

    /// Sets the source position.
    pub fn with_position(mut self, position: SourcePosition) -> Self {
        self.position = position;
        self
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Key>) -> Self {
        self.key = key.into();
        self
    }

    /// Replaces the payload, keeping key, event time and position.
    pub fn map_payload<U>(self, f: impl FnOnce(T) -> U) -> Record<U> {
        Record {
            key: self.key,
            event_time: self.event_time,
            position: self.position,
            payload: f(self.payload),
        }
    }

    /// Replaces the payload with `payload`, keeping key, event time and position.
    pub fn with_payload<U>(&self, payload: U) -> Record<U> {
        Record { key: self.key.clone(), event_time: self.event_time, position: self.position, payload }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::Key;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![proptest::collection::vec(any::<u8>(), 8), proptest::collection::vec(any::<u8>(), 0..12)]
    }

    proptest! {
        /// Keys order and compare equal as their bytes do, the 8-byte ones included.
        #[test]
        fn keys_compare_as_their_bytes(a in bytes(), other in bytes(), change in any::<(usize, u8)>(), same in any::<bool>()) {
            // Often equal or one byte apart, so that equality is reached.
            let mut b = if same { a.clone() } else { other };
            if !b.is_empty() && change.1 % 2 == 0 {
                let i = change.0 % b.len();
                b[i] = change.1;
            }
            let (ka, kb) = (Key::from_bytes(&a), Key::from_bytes(&b));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka == kb, a == b);
            prop_assert_eq!(ka.partial_cmp(&kb), a.partial_cmp(&b));
        }
    }
}
