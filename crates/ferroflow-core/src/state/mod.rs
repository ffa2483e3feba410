//! Keyed state storage: the [`StateBackend`] trait and its in-memory implementation.
//!
//! Keys and values are bytes; each operator writes under its own namespace (a column family in
//! RocksDB, a separate map in memory). Operators keep their hot working set in memory and write
//! through to the backend at batch or checkpoint boundaries, never a read-modify-write per record.

mod budget;
mod filter;
mod memory;
#[cfg(feature = "rocksdb")]
mod rocks;
mod scoped;

use std::path::Path;

pub use budget::{BudgetStats, StateBudget};
pub(crate) use budget::{RowVisitor, RowsWhile, SpillFailure, ValueVisitor};
pub(crate) use filter::{BITS_FOR_HALF_PERCENT, BITS_FOR_ONE_PERCENT, KeyFilter};
pub use memory::MemoryStateBackend;
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksDb, RocksDbOptions, RocksDbStateBackend};
pub use scoped::{PartitionState, copy_partition, delete_partition};

use crate::error::StateError;

/// A state backend for [`Runner::builder`](crate::Runner::builder) to open: an opened
/// [`StateBackend`], or a description of one such as [`RocksDb::at`] (feature `rocksdb`).
pub trait StateBackendSpec {
    /// Opens the backend.
    fn open_backend(self) -> Result<Box<dyn StateBackend>, StateError>;
}

impl<B: StateBackend + 'static> StateBackendSpec for B {
    fn open_backend(self) -> Result<Box<dyn StateBackend>, StateError> {
        Ok(Box::new(self))
    }
}

impl StateBackendSpec for Box<dyn StateBackend> {
    fn open_backend(self) -> Result<Box<dyn StateBackend>, StateError> {
        Ok(self)
    }
}

/// A key-value pair read from a backend.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Iterator over the pairs under a prefix, in key order.
pub type PrefixIter<'a> = Box<dyn Iterator<Item = Result<KeyValue, StateError>> + 'a>;

/// One write of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Set `key` to `value` in namespace `ns`.
    Put {
        /// Namespace.
        ns: String,
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// Remove `key` from namespace `ns`.
    Delete {
        /// Namespace.
        ns: String,
        /// Key.
        key: Vec<u8>,
    },
}

/// Writes applied together (atomically where the backend supports it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The writes, in order.
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// Adds a put.
    pub fn put(&mut self, ns: &str, key: &[u8], value: &[u8]) {
        self.ops.push(WriteOp::Put { ns: ns.to_owned(), key: key.to_vec(), value: value.to_vec() });
    }

    /// Adds a delete.
    pub fn delete(&mut self, ns: &str, key: &[u8]) {
        self.ops.push(WriteOp::Delete { ns: ns.to_owned(), key: key.to_vec() });
    }
}

/// Size figures of a state backend, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateStats {
    /// Keys held (RocksDB: its estimate, `rocksdb.estimate-num-keys`).
    pub keys: u64,
    /// Bytes of live data files (RocksDB: `rocksdb.live-sst-files-size`; memory: keys + values).
    pub live_bytes: u64,
    /// Bytes held in memory by write buffers (RocksDB: `rocksdb.cur-size-all-mem-tables`).
    pub memtable_bytes: u64,
    /// Bytes the block cache holds (0 for the memory backend).
    pub block_cache_bytes: u64,
}

/// Byte-keyed state, a namespace per operator, with snapshots to a local directory.
///
/// Implementations: [`MemoryStateBackend`] here, RocksDB behind the `rocksdb` feature. A snapshot
/// directory holds whatever files the backend needs to restore exactly the same contents; the
/// checkpoint machinery uploads it and downloads it again before [`restore`](Self::restore).
///
/// # Examples
/// ```
/// use ferroflow_core::state::{MemoryStateBackend, StateBackend};
/// let mut s = MemoryStateBackend::new();
/// s.put("window", b"k1", b"v1").unwrap();
/// s.put("window", b"k2", b"v2").unwrap();
/// let keys: Vec<_> = s.scan_prefix("window", b"k").unwrap().map(|kv| kv.unwrap().0).collect();
/// assert_eq!(keys, vec![b"k1".to_vec(), b"k2".to_vec()]);
/// ```
pub trait StateBackend: Send + std::fmt::Debug {
    /// Reads one value.
    fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;

    /// Writes one value.
    fn put(&mut self, ns: &str, key: &[u8], value: &[u8]) -> Result<(), StateError>;

    /// Removes one key (no error if absent).
    fn delete(&mut self, ns: &str, key: &[u8]) -> Result<(), StateError>;

    /// Removes every key that starts with `prefix`.
    fn delete_prefix(&mut self, ns: &str, prefix: &[u8]) -> Result<(), StateError>;

    /// Removes every key that starts with `prefix`, where that may be many keys: a backend that
    /// can removes them in one operation (RocksDB: a range delete) instead of one by one.
    fn delete_large_prefix(&mut self, ns: &str, prefix: &[u8]) -> Result<(), StateError> {
        self.delete_prefix(ns, prefix)
    }

    /// Iterates the pairs whose key starts with `prefix`, in key order.
    fn scan_prefix<'a>(&'a self, ns: &str, prefix: &[u8]) -> Result<PrefixIter<'a>, StateError>;

    /// Applies a batch of writes.
    fn write_batch(&mut self, batch: WriteBatch) -> Result<(), StateError> {
        for op in batch.ops {
            match op {
                WriteOp::Put { ns, key, value } => self.put(&ns, &key, &value)?,
                WriteOp::Delete { ns, key } => self.delete(&ns, &key)?,
            }
        }
        Ok(())
    }

    /// Writes a consistent snapshot of all contents into the empty or missing directory `dir`.
    fn snapshot(&mut self, dir: &Path) -> Result<(), StateError>;

    /// Replaces all contents with the snapshot in `dir`.
    fn restore(&mut self, dir: &Path) -> Result<(), StateError>;

    /// Removes all contents: a job that starts without a checkpoint starts from nothing, whatever
    /// an earlier run left on disk. The default deletes every namespace's keys.
    fn clear(&mut self) -> Result<(), StateError> {
        for ns in self.namespaces()? {
            self.delete_prefix(&ns, &[])?;
        }
        Ok(())
    }

    /// Names of the namespaces that hold (or held) keys. Partition-scoped jobs need it to move a
    /// partition's state; the default refuses.
    fn namespaces(&self) -> Result<Vec<String>, StateError> {
        Err(StateError::Backend("this state backend cannot list its namespaces".into()))
    }

    /// An empty backend of the same kind and options, kept in `dir` (for reading a snapshot
    /// beside the live state, as a partition hand-over does); the default refuses.
    fn open_scratch(&self, dir: &Path) -> Result<Box<dyn StateBackend>, StateError> {
        let _ = dir;
        Err(StateError::Backend("this state backend cannot open a scratch copy".into()))
    }

    /// Size figures for metrics (keys, live bytes, memory); cheap enough to call per checkpoint.
    fn stats(&self) -> StateStats {
        StateStats::default()
    }
}
