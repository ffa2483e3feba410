//! Partition-scoped views of a state backend: the state of one source partition's task, kept
//! under a 4-byte prefix in every namespace so that it can be snapshotted with the rest, copied
//! to another instance and deleted on its own.

use std::path::Path;

use super::{PrefixIter, StateBackend};
use crate::error::StateError;
use crate::record::PartitionId;

/// The key prefix of a partition's state: its id, big-endian, so a partition's keys are one range.
fn prefix(partition: PartitionId) -> [u8; 4] {
    partition.to_be_bytes()
}

/// One partition's view of a backend: every key it reads or writes is prefixed with the
/// partition id, so operators written for a whole backend keep per-partition state unchanged.
///
/// # Examples
/// ```
/// use ferroflow_core::state::{MemoryStateBackend, PartitionState, StateBackend};
/// let mut backend = MemoryStateBackend::new();
/// PartitionState::writer(&mut backend, 3).put("window", b"k", b"v").unwrap();
/// PartitionState::writer(&mut backend, 4).put("window", b"k", b"other").unwrap();
/// assert_eq!(PartitionState::reader(&mut backend, 3).get("window", b"k").unwrap(), Some(b"v".to_vec()));
/// assert_eq!(backend.get("window", &[0, 0, 0, 3, b'k']).unwrap(), Some(b"v".to_vec()));
/// ```
pub struct PartitionState<'a> {
    // `&mut` even for reading: a shared `&dyn StateBackend` is not `Send`, and views are backends.
    inner: &'a mut dyn StateBackend,
    read_only: bool,
    prefix: [u8; 4],
}

impl std::fmt::Debug for PartitionState<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionState").field("partition", &u32::from_be_bytes(self.prefix)).finish()
    }
}

impl<'a> PartitionState<'a> {
    /// A read-only view of `partition`'s state (for restores).
    pub fn reader(state: &'a mut dyn StateBackend, partition: PartitionId) -> Self {
        Self { inner: state, read_only: true, prefix: prefix(partition) }
    }

    /// A read-write view of `partition`'s state (for snapshots).
    pub fn writer(state: &'a mut dyn StateBackend, partition: PartitionId) -> Self {
        Self { inner: state, read_only: false, prefix: prefix(partition) }
    }

    fn read(&self) -> &dyn StateBackend {
        &*self.inner
    }

    fn write(&mut self) -> Result<&mut dyn StateBackend, StateError> {
        if self.read_only {
            return Err(StateError::Backend(
                "a partition's state was written through a read-only view".into(),
            ));
        }
        Ok(&mut *self.inner)
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(4 + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }
}

impl StateBackend for PartitionState<'_> {
    fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.read().get(ns, &self.key(key))
    }

    fn put(&mut self, ns: &str, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let k = self.key(key);
        self.write()?.put(ns, &k, value)
    }

    fn delete(&mut self, ns: &str, key: &[u8]) -> Result<(), StateError> {
        let k = self.key(key);
        self.write()?.delete(ns, &k)
    }

    fn delete_prefix(&mut self, ns: &str, prefix: &[u8]) -> Result<(), StateError> {
        let k = self.key(prefix);
        self.write()?.delete_prefix(ns, &k)
    }

    fn delete_large_prefix(&mut self, ns: &str, prefix: &[u8]) -> Result<(), StateError> {
        let k = self.key(prefix);
        self.write()?.delete_large_prefix(ns, &k)
    }

    fn scan_prefix<'b>(&'b self, ns: &str, prefix: &[u8]) -> Result<PrefixIter<'b>, StateError> {
        let iter = self.read().scan_prefix(ns, &self.key(prefix))?;
        Ok(Box::new(iter.map(|kv| kv.map(|(mut k, v)| (k.split_off(4), v)))))
    }

    fn snapshot(&mut self, _dir: &Path) -> Result<(), StateError> {
        Err(StateError::Backend("snapshot the whole backend, not one partition's view".into()))
    }

    fn restore(&mut self, _dir: &Path) -> Result<(), StateError> {
        Err(StateError::Backend("restore the whole backend, not one partition's view".into()))
    }

    fn namespaces(&self) -> Result<Vec<String>, StateError> {
        self.read().namespaces()
    }
}

/// Copies every key of `partition` from `from` into `to` (after deleting what `to` held for it).
pub fn copy_partition(
    from: &dyn StateBackend,
    to: &mut dyn StateBackend,
    partition: PartitionId,
) -> Result<u64, StateError> {
    delete_partition(to, partition)?;
    let p = prefix(partition);
    let mut copied = 0;
    for ns in from.namespaces()? {
        for kv in from.scan_prefix(&ns, &p)? {
            let (k, v) = kv?;
            to.put(&ns, &k, &v)?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// Deletes every key of `partition` in every namespace of `state`.
pub fn delete_partition(state: &mut dyn StateBackend, partition: PartitionId) -> Result<(), StateError> {
    let p = prefix(partition);
    for ns in state.namespaces()? {
        state.delete_prefix(&ns, &p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStateBackend;

    #[test]
    fn views_are_disjoint_and_scans_strip_the_prefix() -> Result<(), StateError> {
        let mut b = MemoryStateBackend::new();
        for p in [1u32, 2, 256] {
            let mut w = PartitionState::writer(&mut b, p);
            w.put("w", b"a", &p.to_be_bytes())?;
            w.put("w", b"ab", b"x")?;
            w.put("d", b"z", b"y")?;
        }
        let r = PartitionState::reader(&mut b, 2);
        let keys: Vec<Vec<u8>> =
            r.scan_prefix("w", b"a")?.map(|kv| kv.map(|(k, _)| k)).collect::<Result<_, _>>()?;
        assert_eq!(keys, vec![b"a".to_vec(), b"ab".to_vec()], "only partition 2's keys, unprefixed");
        assert_eq!(r.get("w", b"a")?, Some(2u32.to_be_bytes().to_vec()));
        let mut ro = PartitionState::reader(&mut b, 2);
        assert!(ro.put("w", b"q", b"q").is_err(), "a reader refuses writes");

        let mut target = MemoryStateBackend::new();
        PartitionState::writer(&mut target, 2).put("w", b"stale", b"old")?;
        assert_eq!(copy_partition(&b, &mut target, 2)?, 3);
        assert_eq!(PartitionState::reader(&mut target, 2).get("w", b"stale")?, None, "the copy replaces");
        assert_eq!(PartitionState::reader(&mut target, 1).get("w", b"a")?, None, "other partitions stay out");

        delete_partition(&mut b, 2)?;
        assert_eq!(PartitionState::reader(&mut b, 2).scan_prefix("w", b"")?.count(), 0);
        assert_eq!(PartitionState::reader(&mut b, 256).scan_prefix("w", b"")?.count(), 2);
        Ok(())
    }
}
