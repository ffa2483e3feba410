//! A memory budget for keyed state, and the local store the state beyond it spills to.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::error::StateError;

/// Key bytes held inside a [`Key`](crate::record::Key) itself (longer ones are allocated).
const INLINE_KEY: usize = 24;

/// Called with each key's index and value (or error) of a batched read of the spill store.
pub(crate) type ValueVisitor<'a> = dyn FnMut(usize, Result<Option<&[u8]>, StateError>) + 'a;

/// Called with each row (key, value) of a scan of the spill store.
pub(crate) type RowVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StateError> + 'a;

/// Called with each row (key, value) of a scan of the spill store that goes on while it returns
/// `true`.
pub(crate) type RowsWhile<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StateError> + 'a;

/// Bounds the heap that keyed state (`keyed_process` value, list and map states and timers,
/// dedup's ids, tumbling and sliding windows) holds in one process; what does not fit spills to a
/// local RocksDB and is read back when its key is next used.
///
/// The budget counts each key's encoded size plus a fixed per-key overhead, so it tracks the heap
/// approximately. Each step's table keeps its hot keys in memory; once the process is over the
/// budget, a table writes its coldest keys (not used since the clock hand last passed) to the
/// spill store and drops them from the heap, down to 90 % of the budget. A Bloom filter per table
/// answers most lookups of keys that never spilled (a new key) without reading the disk.
///
/// The spill store is scratch: a restart wipes it, as the state comes back from the checkpoint.
/// Its own memory (memtables, block cache: about 40 MB) is outside the budget. It needs the
/// `rocksdb` feature: without it, [`open`](Self::open) fails and keyed state is unbounded.
///
/// # Examples
/// ```
/// use ferroflow_core::state::StateBudget;
/// let dir = tempfile::tempdir().unwrap();
/// let budget = StateBudget::open(64 << 20, dir.path().join("spill")).unwrap();
/// assert_eq!(budget.limit(), 64 << 20);
/// assert_eq!(budget.used(), 0);
/// ```
#[derive(Clone)]
pub struct StateBudget(Arc<Inner>);

/// A state budget's figures (see [`StateBudget::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BudgetStats {
    /// The budget, bytes.
    pub limit_bytes: u64,
    /// What state in memory holds, as counted, bytes.
    pub used_bytes: u64,
    /// Keys and ids written to the spill store so far (one that spills twice counts twice).
    pub spilled_keys: u64,
    /// Memory of the spill store itself (memtables, table readers, block cache), outside the
    /// budget, bytes.
    pub store_memory_bytes: u64,
}

struct Inner {
    limit: usize,
    used: AtomicUsize,
    store: store::Store,
    next_table: AtomicU64,
    path: PathBuf,
    /// Keys written to the spill store so far.
    spilled: AtomicU64,
}

impl std::fmt::Debug for StateBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateBudget")
            .field("limit", &self.0.limit)
            .field("used", &self.used())
            .field("path", &self.0.path)
            .finish()
    }
}

impl StateBudget {
    /// A budget of `limit_bytes`, spilling to a RocksDB at `dir` (emptied first).
    pub fn open(limit_bytes: usize, dir: impl AsRef<Path>) -> Result<Self, StateError> {
        let path = dir.as_ref().to_path_buf();
        let store = store::Store::open(&path)?;
        Ok(Self(Arc::new(Inner {
            limit: limit_bytes,
            used: AtomicUsize::new(0),
            store,
            next_table: AtomicU64::new(0),
            path,
            spilled: AtomicU64::new(0),
        })))
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// Memory the spill store itself holds (memtables, table readers, block cache), bytes, as
    /// RocksDB estimates it: outside the budget.
    pub fn store_memory(&self) -> u64 {
        self.0.store.memory()
    }

    /// Keys written to the spill store so far (a key that spills twice counts twice).
    pub fn spilled_keys(&self) -> u64 {
        self.0.spilled.load(Ordering::Relaxed)
    }

    /// The budget's figures now.
    pub fn stats(&self) -> BudgetStats {
        BudgetStats {
            limit_bytes: self.limit() as u64,
            used_bytes: self.used() as u64,
            spilled_keys: self.spilled_keys(),
            store_memory_bytes: self.store_memory(),
        }
    }

    /// What keyed state in memory holds now, as counted.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    pub(crate) fn charge(&self, bytes: usize) {
        self.0.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn release(&self, bytes: usize) {
        // Saturating: a table never releases more than it charged, but races must not wrap.
        let _ =
            self.0.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(bytes)));
    }

    /// State in memory exceeds the budget.
    pub(crate) fn over(&self) -> bool {
        self.used() > self.0.limit
    }

    /// How many bytes to spill to get down to 90 % of the budget.
    pub(crate) fn excess(&self) -> usize {
        self.used().saturating_sub(self.0.limit / 10 * 9)
    }

    /// How many bytes a table charged `charged` should spill: its share of the excess, as its
    /// share of what the budget holds (the tables of other steps and copies spill theirs).
    pub(crate) fn share_of_excess(&self, charged: usize) -> usize {
        let (excess, used) = (self.excess(), self.used().max(1));
        let wide = |n: usize| u128::from(u64::try_from(n).unwrap_or(u64::MAX));
        let share = wide(excess).saturating_mul(wide(charged)) / wide(used);
        // At least something, so that a table alone over the budget always makes progress.
        usize::try_from(share).unwrap_or(usize::MAX).max(excess.min(charged).min(1 << 16))
    }

    /// A prefix of its own for a table's rows in the spill store.
    pub(crate) fn table_prefix(&self) -> [u8; 8] {
        self.0.next_table.fetch_add(1, Ordering::Relaxed).to_be_bytes()
    }

    /// Removes `deletes`, then writes `puts`, in one batch (a key in both ends up written).
    pub(crate) fn write_ordered<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        deletes: &[Vec<u8>],
        puts: &[(K, V)],
    ) -> Result<(), StateError> {
        self.0.store.write(deletes, puts)?;
        self.0.spilled.fetch_add(puts.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `puts` that are bookkeeping, not spilled keys (not counted in
    /// [`spilled_keys`](Self::spilled_keys)).
    pub(crate) fn write_notes<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        puts: &[(K, V)],
    ) -> Result<(), StateError> {
        if puts.is_empty() {
            return Ok(());
        }
        self.0.store.write(&[], puts)
    }

    /// What an entry costs in memory, as the budget counts it: in a hash map whose entries take
    /// `slot` bytes each, with key `key` and `encoded` bytes held out of line by its value.
    ///
    /// The map's share is three slots: keys come and go all the time under a budget, and a hash
    /// map whose removed entries fill it up doubles once more than half of it is live, so it
    /// holds 2.3 to 4.6 slots per live key (measured: a 256 MB budget took 700 MB with one slot
    /// counted). Beyond the slot: what the key keeps out of line, and the value's `encoded` size.
    pub(crate) fn entry_cost(slot: usize, key: &crate::record::Key, encoded: usize) -> usize {
        let key_heap = if key.as_bytes().len() > INLINE_KEY { key.as_bytes().len() } else { 0 };
        slot.saturating_mul(3).saturating_add(key_heap).saturating_add(encoded)
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.0.store.get(key)
    }

    /// Reads `keys` in one batch: calls `f` with each key's index and its value, if it has one,
    /// or the error that kept it from being read.
    pub(crate) fn multi_get<K: AsRef<[u8]>>(&self, keys: &[K], f: &mut ValueVisitor<'_>) {
        self.0.store.multi_get(keys, f);
    }

    /// Calls `f` with every row under `prefix`, in key order, without holding them all.
    pub(crate) fn for_each(&self, prefix: &[u8], f: &mut RowVisitor<'_>) -> Result<(), StateError> {
        self.0.store.for_each(prefix, f)
    }

    /// Calls `f` with the rows under `prefix` from `from` on, in key order, while it returns
    /// `true`.
    pub(crate) fn scan_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut RowsWhile<'_>,
    ) -> Result<(), StateError> {
        self.0.store.scan_from(prefix, from, f)
    }

    /// Removes every row under `prefix`.
    pub(crate) fn clear(&self, prefix: &[u8; 8]) -> Result<(), StateError> {
        let end = u64::from_be_bytes(*prefix).saturating_add(1).to_be_bytes();
        self.0.store.delete_range(prefix, &end)
    }

    /// Removes every row from `from` (included) to `to` (excluded) with one range delete.
    pub(crate) fn delete_range(&self, from: &[u8], to: &[u8]) -> Result<(), StateError> {
        self.0.store.delete_range(from, to)
    }
}

/// A spill-store failure outside a record (between batches, at a firing): reported to the job
/// at once through the step's context, so that no result of the batch goes out, and failing
/// every snapshot until a restore (which starts over from the last checkpoint).
#[derive(Debug, Default)]
pub(crate) struct SpillFailure {
    pending: Option<StateError>,
    reported: bool,
}

impl SpillFailure {
    /// Notes `error` (the first one counts).
    pub(crate) fn set(&mut self, error: StateError) {
        if !self.reported {
            self.pending.get_or_insert(error);
        }
    }

    /// Hands a failure not yet reported to the job.
    pub(crate) fn report(&mut self, ctx: &mut crate::operator::Context) {
        if let Some(e) = self.pending.take() {
            self.reported = true;
            ctx.fail_state(e);
        }
    }

    /// `Err` once a failure happened: the state may miss what the spill store lost.
    pub(crate) fn check(&mut self) -> Result<(), StateError> {
        if let Some(e) = self.pending.take() {
            self.reported = true;
            return Err(e);
        }
        if self.reported {
            return Err(StateError::Backend(
                "an earlier spill-store failure (reported then) left the state incomplete: restore from the last checkpoint"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Forgets the failure (the state was restored).
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(feature = "rocksdb")]
mod store {
    use std::path::Path;

    use rocksdb::{
        BlockBasedOptions, Cache, DB, DBCompressionType, Direction, IteratorMode, Options, WriteOptions,
    };

    use super::{RowVisitor, RowsWhile, ValueVisitor};
    use crate::error::StateError;

    fn backend(e: rocksdb::Error) -> StateError {
        StateError::Backend(format!("spill store: {e}"))
    }

    /// The file that says a directory is a spill store, so that opening one may empty it.
    const MARKER: &str = "FERROFLOW_SPILL_STORE";

    pub(super) struct Store {
        db: DB,
        write: WriteOptions,
    }

    impl Store {
        pub(super) fn open(path: &Path) -> Result<Self, StateError> {
            let io = |what: &str, e: std::io::Error| {
                StateError::Backend(format!("spill store {}: {what}: {e}", path.display()))
            };
            // Scratch: what an earlier run spilled is not state (the checkpoint is). Only a
            // directory that holds a spill store (its marker) is emptied: a mistyped path that
            // holds anything else is refused, not deleted.
            let marker = path.join(MARKER);
            let holds_other =
                std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some()) && !marker.exists();
            if holds_other {
                return Err(StateError::Backend(format!(
                    "{} is not empty and holds no spill store: give the budget a directory of its own",
                    path.display()
                )));
            }
            if path.exists() {
                std::fs::remove_dir_all(path).map_err(|e| io("cannot empty it", e))?;
            }
            std::fs::create_dir_all(path).map_err(|e| io("cannot create it", e))?;
            std::fs::write(&marker, b"").map_err(|e| io("cannot mark it", e))?;
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.set_write_buffer_size(16 << 20);
            opts.set_max_write_buffer_number(2);
            // Small files: a compaction builds each output's index and filter in memory.
            opts.set_target_file_size_base(8 << 20);
            // Reads of spilled keys are the hot path here, not disk space: no compression, and a
            // Bloom filter per file so that a read skips the files without its key.
            opts.set_compression_type(DBCompressionType::None);
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&Cache::new_lru_cache(8 << 20));
            table.set_bloom_filter(10.0, false);
            opts.set_block_based_table_factory(&table);
            let db = DB::open(&opts, path).map_err(backend)?;
            let mut write = WriteOptions::default();
            // Scratch again: a crash loses nothing the checkpoint does not have.
            write.disable_wal(true);
            Ok(Self { db, write })
        }

        pub(super) fn write<K: AsRef<[u8]>, V: AsRef<[u8]>>(
            &self,
            deletes: &[Vec<u8>],
            puts: &[(K, V)],
        ) -> Result<(), StateError> {
            let mut batch = rocksdb::WriteBatch::default();
            for k in deletes {
                batch.delete(k);
            }
            for (k, v) in puts {
                batch.put(k, v);
            }
            self.db.write_opt(batch, &self.write).map_err(backend)
        }

        pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
            self.db.get(key).map_err(backend)
        }

        pub(super) fn multi_get<K: AsRef<[u8]>>(&self, keys: &[K], f: &mut ValueVisitor<'_>) {
            // The batched read pins values instead of copying each into a vector, and skips its
            // own sort when the keys come sorted (callers sort them to read blocks in order).
            let Some(cf) = self.db.cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME) else {
                let values = self.db.multi_get(keys.iter().map(AsRef::as_ref));
                for (i, v) in values.into_iter().enumerate() {
                    match v {
                        Ok(v) => f(i, Ok(v.as_deref())),
                        Err(e) => f(i, Err(backend(e))),
                    }
                }
                return;
            };
            let sorted = keys.windows(2).all(|w| matches!(w, [a, b] if a.as_ref() <= b.as_ref()));
            let values = self.db.batched_multi_get_cf(cf, keys.iter().map(AsRef::as_ref), sorted);
            for (i, v) in values.into_iter().enumerate() {
                match v {
                    Ok(v) => f(i, Ok(v.as_deref())),
                    Err(e) => f(i, Err(backend(e))),
                }
            }
        }

        pub(super) fn memory(&self) -> u64 {
            [
                "rocksdb.cur-size-all-mem-tables",
                "rocksdb.estimate-table-readers-mem",
                "rocksdb.block-cache-usage",
            ]
            .iter()
            .filter_map(|p| self.db.property_int_value(*p).ok().flatten())
            .sum()
        }

        pub(super) fn for_each(&self, prefix: &[u8], f: &mut RowVisitor<'_>) -> Result<(), StateError> {
            for kv in self.db.iterator(IteratorMode::From(prefix, Direction::Forward)) {
                let (k, v) = kv.map_err(backend)?;
                if !k.starts_with(prefix) {
                    break;
                }
                f(&k, &v)?;
            }
            Ok(())
        }

        pub(super) fn scan_from(
            &self,
            prefix: &[u8],
            from: &[u8],
            f: &mut RowsWhile<'_>,
        ) -> Result<(), StateError> {
            for kv in self.db.iterator(IteratorMode::From(from, Direction::Forward)) {
                let (k, v) = kv.map_err(backend)?;
                if !k.starts_with(prefix) || !f(&k, &v)? {
                    break;
                }
            }
            Ok(())
        }

        pub(super) fn delete_range(&self, from: &[u8], to: &[u8]) -> Result<(), StateError> {
            let mut batch = rocksdb::WriteBatch::default();
            batch.delete_range(from, to);
            self.db.write_opt(batch, &self.write).map_err(backend)
        }
    }
}

/// Without RocksDB there is nowhere to spill: a budget cannot be opened.
#[cfg(not(feature = "rocksdb"))]
mod store {
    use std::path::Path;

    use super::{RowVisitor, RowsWhile, ValueVisitor};
    use crate::error::StateError;

    pub(super) enum Store {}

    impl Store {
        pub(super) fn open(_path: &Path) -> Result<Self, StateError> {
            Err(StateError::Backend("a state memory budget needs the `rocksdb` feature to spill to".into()))
        }

        pub(super) fn write<K, V>(&self, _: &[Vec<u8>], _: &[(K, V)]) -> Result<(), StateError> {
            match *self {}
        }

        pub(super) fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
            match *self {}
        }

        pub(super) fn memory(&self) -> u64 {
            match *self {}
        }

        pub(super) fn multi_get<K>(&self, _: &[K], _: &mut ValueVisitor<'_>) {
            match *self {}
        }

        pub(super) fn for_each(&self, _: &[u8], _: &mut RowVisitor<'_>) -> Result<(), StateError> {
            match *self {}
        }

        pub(super) fn scan_from(&self, _: &[u8], _: &[u8], _: &mut RowsWhile<'_>) -> Result<(), StateError> {
            match *self {}
        }

        pub(super) fn delete_range(&self, _: &[u8], _: &[u8]) -> Result<(), StateError> {
            match *self {}
        }
    }
}

#[cfg(test)]
mod failure_tests {
    use super::*;

    /// A failure reaches the job once, and every snapshot fails until a restore clears it.
    #[test]
    fn a_spill_failure_is_reported_once_and_fails_snapshots_until_cleared() {
        let mut failure = SpillFailure::default();
        assert!(failure.check().is_ok());
        failure.set(StateError::Backend("disk full".into()));
        failure.set(StateError::Backend("later".into()));
        let mut ctx = crate::operator::Context::default();
        failure.report(&mut ctx);
        let reported = ctx.take_state_failure().map(|e| e.to_string());
        assert!(reported.is_some_and(|e| e.contains("disk full")), "the first failure is reported");
        failure.report(&mut ctx);
        assert!(ctx.take_state_failure().is_none(), "once");
        assert!(failure.check().is_err() && failure.check().is_err(), "snapshots fail until a restore");
        failure.clear();
        assert!(failure.check().is_ok());
    }
}

#[cfg(all(test, feature = "rocksdb"))]
mod tests {
    use super::*;

    #[test]
    fn a_directory_holding_anything_but_a_spill_store_is_refused_not_emptied() -> Result<(), StateError> {
        let dir = std::env::temp_dir().join(format!("ferroflow-budget-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| StateError::Backend(e.to_string()))?;
        std::fs::write(dir.join("precious.txt"), b"keep me")
            .map_err(|e| StateError::Backend(e.to_string()))?;
        let refused = StateBudget::open(1 << 20, &dir);
        assert!(refused.is_err_and(|e| e.to_string().contains("holds no spill store")));
        assert!(dir.join("precious.txt").exists(), "nothing was deleted");

        // A spill store of an earlier run is emptied and opened again.
        let store = dir.join("spill");
        let budget = StateBudget::open(1 << 20, &store)?;
        budget.write_ordered(&[], &[(b"k".to_vec(), b"v".to_vec())])?;
        drop(budget);
        let again = StateBudget::open(1 << 20, &store)?;
        assert_eq!(again.get(b"k")?, None, "scratch: what the last run spilled is gone");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
