//! The RocksDB state backend (feature `rocksdb`, on by default): a column family per namespace,
//! snapshots as RocksDB checkpoints (hard links to the immutable SST files).

use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode,
    Options, WriteOptions,
};
use serde::{Deserialize, Serialize};

use super::{PrefixIter, StateBackend, WriteBatch, WriteOp};
use crate::error::StateError;

/// RocksDB tuning, overridable from configuration.
///
/// The defaults suit window and dedup state: a modest shared block cache (reads are rare: the
/// operators keep their working set in memory and write through), large write buffers so a
/// checkpoint's writes become few, large SST files, LZ4 for upper levels and ZSTD for the
/// bottommost level (where most bytes live and compress best).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RocksDbOptions {
    /// Shared LRU block cache in bytes (default 64 MiB).
    pub block_cache_bytes: usize,
    /// Memtable size per column family in bytes (default 64 MiB).
    pub write_buffer_bytes: usize,
    /// Memtables per column family before writes stall (default 3).
    pub max_write_buffers: i32,
    /// Target SST file size in bytes (default 64 MiB).
    pub target_file_size_bytes: u64,
    /// Compression of upper levels: `none`, `lz4`, `zstd` (default `lz4`).
    pub compression: String,
    /// Compression of the bottommost level (default `zstd`).
    pub bottommost_compression: String,
    /// Background compaction/flush threads (default 2).
    pub background_jobs: i32,
}

impl Default for RocksDbOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 64 << 20,
            max_write_buffers: 3,
            target_file_size_bytes: 64 << 20,
            compression: "lz4".into(),
            bottommost_compression: "zstd".into(),
            background_jobs: 2,
        }
    }
}

fn compression(name: &str) -> Result<DBCompressionType, StateError> {
    match name {
        "none" => Ok(DBCompressionType::None),
        "lz4" => Ok(DBCompressionType::Lz4),
        "zstd" => Ok(DBCompressionType::Zstd),
        other => {
            Err(StateError::Backend(format!("unknown RocksDB compression `{other}`: use none, lz4 or zstd")))
        }
    }
}

impl RocksDbOptions {
    fn to_options(&self, cache: &Cache) -> Result<Options, StateError> {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        o.set_write_buffer_size(self.write_buffer_bytes);
        o.set_max_write_buffer_number(self.max_write_buffers);
        o.set_target_file_size_base(self.target_file_size_bytes);
        o.set_compression_type(compression(&self.compression)?);
        o.set_bottommost_compression_type(compression(&self.bottommost_compression)?);
        o.set_max_background_jobs(self.background_jobs);
        let mut block = BlockBasedOptions::default();
        block.set_block_cache(cache);
        block.set_bloom_filter(10.0, false);
        o.set_block_based_table_factory(&block);
        Ok(o)
    }
}

/// State in a local RocksDB instance: one column family per namespace.
///
/// Writes skip the write-ahead log: durability comes from checkpoints (a restart restores the
/// last checkpoint, never the local directory), so the WAL would only cost time.
///
/// # Examples
/// ```
/// use ferroflow_core::state::{RocksDbOptions, RocksDbStateBackend, StateBackend};
/// let dir = tempfile::tempdir().unwrap();
/// let mut s = RocksDbStateBackend::open(dir.path().join("db"), RocksDbOptions::default()).unwrap();
/// s.put("window", b"k", b"v").unwrap();
/// assert_eq!(s.get("window", b"k").unwrap(), Some(b"v".to_vec()));
/// ```
pub struct RocksDbStateBackend {
    path: PathBuf,
    options: RocksDbOptions,
    cache: Cache,
    db: Option<DB>,
    write_options: WriteOptions,
    /// Held for the backend's lifetime when it owns its directory (see
    /// [`open_empty`](Self::open_empty)).
    _lock: Option<std::fs::File>,
}

impl std::fmt::Debug for RocksDbStateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbStateBackend")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish()
    }
}

/// RocksDB state in a directory, opened when the runner is built.
///
/// The directory holds working state only: it is emptied when the runner is built, then filled
/// from the restored checkpoint (a checkpoint, not the directory, is what survives a crash; the
/// write-ahead log is off). A directory a crash left half-written therefore never stops a start.
///
/// # Examples
/// ```
/// use ferroflow_core::prelude::*;
/// let dir = tempfile::tempdir().unwrap();
/// let runner = Runner::builder()
///     .state(RocksDb::at(dir.path().join("state")))
///     .checkpoints(format!("file://{}", dir.path().join("checkpoints").display()))
///     .build()
///     .unwrap();
/// # let _ = runner;
/// ```
#[derive(Debug, Clone)]
pub struct RocksDb {
    path: PathBuf,
    options: RocksDbOptions,
}

impl RocksDb {
    /// RocksDB in `dir` (created if missing) with the default options.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { path: dir.into(), options: RocksDbOptions::default() }
    }

    /// Other options (cache and write-buffer sizes, compression).
    pub fn options(mut self, options: RocksDbOptions) -> Self {
        self.options = options;
        self
    }
}

impl super::StateBackendSpec for RocksDb {
    fn open_backend(self) -> Result<Box<dyn StateBackend>, StateError> {
        Ok(Box::new(RocksDbStateBackend::open_empty(self.path, self.options)?))
    }
}

fn backend(e: rocksdb::Error) -> StateError {
    StateError::RocksDb(e)
}

impl RocksDbStateBackend {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl Into<PathBuf>, options: RocksDbOptions) -> Result<Self, StateError> {
        let path = path.into();
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        let mut me = Self { path, options, cache, db: None, write_options, _lock: None };
        me.db = Some(me.open_db()?);
        Ok(me)
    }

    fn open_db(&self) -> Result<DB, StateError> {
        std::fs::create_dir_all(&self.path).map_err(|e| StateError::io(&self.path, e))?;
        let opts = self.options.to_options(&self.cache)?;
        let cfs = DB::list_cf(&opts, &self.path).unwrap_or_else(|_| vec!["default".to_owned()]);
        let descriptors: Vec<_> = cfs
            .into_iter()
            .map(|name| self.options.to_options(&self.cache).map(|o| ColumnFamilyDescriptor::new(name, o)))
            .collect::<Result<_, _>>()?;
        DB::open_cf_descriptors(&opts, &self.path, descriptors).map_err(backend)
    }

    fn db(&self) -> Result<&DB, StateError> {
        self.db.as_ref().ok_or_else(|| StateError::Backend("RocksDB is closed after a failed restore".into()))
    }

    fn db_mut(&mut self) -> Result<&mut DB, StateError> {
        self.db.as_mut().ok_or_else(|| StateError::Backend("RocksDB is closed after a failed restore".into()))
    }

    fn ensure_cf(&mut self, ns: &str) -> Result<(), StateError> {
        if self.db()?.cf_handle(ns).is_none() {
            let opts = self.options.to_options(&self.cache)?;
            self.db_mut()?.create_cf(ns, &opts).map_err(backend)?;
        }
        Ok(())
    }

    /// Opens an empty database at `path`, removing whatever the directory held: what a job
    /// starts from (its state comes from the restored checkpoint). A crash can leave the directory
    /// in any state (killed during a restore, say, with half of the files linked), and opening it
    /// as it is would fail or, worse, resurrect state no checkpoint holds.
    ///
    /// The directory is owned for the backend's lifetime through an exclusive lock on
    /// `<path>.lock` beside it: a second process given the same directory (a restart while the
    /// old process still runs) fails here instead of wiping state in use.
    pub fn open_empty(path: impl Into<PathBuf>, options: RocksDbOptions) -> Result<Self, StateError> {
        let path = path.into();
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        if let Some(parent) = lock_path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StateError::io(parent, e))?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StateError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StateError::Backend(format!(
                    "state directory {} is in use by another process (it holds {}); each running \
                     instance needs its own state directory",
                    path.display(),
                    lock_path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(StateError::io(&lock_path, e)),
        }
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| StateError::io(&path, e))?;
        }
        let mut me = Self::open(path, options)?;
        me._lock = Some(lock);
        Ok(me)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A RocksDB integer property summed over column families (e.g. `rocksdb.estimate-num-keys`,
    /// `rocksdb.live-sst-files-size`).
    pub fn property_sum(&self, name: &str) -> Result<u64, StateError> {
        let db = self.db()?;
        let opts = self.options.to_options(&self.cache)?;
        let mut total = 0u64;
        for cf_name in DB::list_cf(&opts, &self.path).map_err(backend)? {
            if let Some(cf) = db.cf_handle(&cf_name) {
                total += db.property_int_value_cf(cf, name).map_err(backend)?.unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Bytes the block cache holds now.
    pub fn block_cache_usage(&self) -> usize {
        self.cache.get_usage()
    }
}

impl StateBackend for RocksDbStateBackend {
    fn namespaces(&self) -> Result<Vec<String>, StateError> {
        let opts = self.options.to_options(&self.cache)?;
        let names = DB::list_cf(&opts, &self.path).map_err(backend)?;
        Ok(names.into_iter().filter(|n| n != "default").collect())
    }

    fn open_scratch(&self, dir: &Path) -> Result<Box<dyn StateBackend>, StateError> {
        Ok(Box::new(RocksDbStateBackend::open(dir, self.options.clone())?))
    }

    fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let db = self.db()?;
        match db.cf_handle(ns) {
            Some(cf) => db.get_cf(cf, key).map_err(backend),
            None => Ok(None),
        }
    }

    fn put(&mut self, ns: &str, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.ensure_cf(ns)?;
        let db = self.db()?;
        let cf =
            db.cf_handle(ns).ok_or_else(|| StateError::Backend(format!("column family {ns} vanished")))?;
        db.put_cf_opt(cf, key, value, &self.write_options).map_err(backend)
    }

    fn delete(&mut self, ns: &str, key: &[u8]) -> Result<(), StateError> {
        let db = self.db()?;
        match db.cf_handle(ns) {
            Some(cf) => db.delete_cf_opt(cf, key, &self.write_options).map_err(backend),
            None => Ok(()),
        }
    }

    fn delete_prefix(&mut self, ns: &str, prefix: &[u8]) -> Result<(), StateError> {
        let db = self.db()?;
        let Some(cf) = db.cf_handle(ns) else { return Ok(()) };
        // Delete the keys one by one in a batch: range tombstones would be cheaper to write but
        // slow down later reads, and prefixes here cover one window's keys at most.
        let mut batch = rocksdb::WriteBatch::default();
        for item in db.iterator_cf(cf, IteratorMode::From(prefix, Direction::Forward)) {
            let (k, _) = item.map_err(backend)?;
            if !k.starts_with(prefix) {
                break;
            }
            batch.delete_cf(cf, k);
        }
        db.write_opt(batch, &self.write_options).map_err(backend)
    }

    fn delete_large_prefix(&mut self, ns: &str, prefix: &[u8]) -> Result<(), StateError> {
        // The first key after every key with the prefix: the prefix with its last byte below 0xff
        // raised by one, and what follows it dropped.
        let Some(last) = prefix.iter().rposition(|b| *b < 0xff) else {
            return self.delete_prefix(ns, prefix);
        };
        let mut end = prefix.get(..=last).unwrap_or_default().to_vec();
        if let Some(b) = end.last_mut() {
            *b += 1;
        }
        let db = self.db()?;
        let Some(cf) = db.cf_handle(ns) else { return Ok(()) };
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range_cf(cf, prefix, &end);
        db.write_opt(batch, &self.write_options).map_err(backend)
    }

    fn scan_prefix<'a>(&'a self, ns: &str, prefix: &[u8]) -> Result<PrefixIter<'a>, StateError> {
        let db = self.db()?;
        let Some(cf) = db.cf_handle(ns) else { return Ok(Box::new(std::iter::empty())) };
        let prefix = prefix.to_vec();
        let it = db.iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward));
        Ok(Box::new(
            it.map(|item| item.map(|(k, v)| (k.into_vec(), v.into_vec())).map_err(backend)).take_while(
                move |item| match item {
                    Ok((k, _)) => k.starts_with(&prefix),
                    Err(_) => true,
                },
            ),
        ))
    }

    fn write_batch(&mut self, batch: WriteBatch) -> Result<(), StateError> {
        for op in &batch.ops {
            if let WriteOp::Put { ns, .. } = op {
                self.ensure_cf(ns)?;
            }
        }
        let db = self.db()?;
        let mut wb = rocksdb::WriteBatch::default();
        for op in &batch.ops {
            match op {
                WriteOp::Put { ns, key, value } => {
                    let cf = db
                        .cf_handle(ns)
                        .ok_or_else(|| StateError::Backend(format!("no column family {ns}")))?;
                    wb.put_cf(cf, key, value);
                }
                WriteOp::Delete { ns, key } => {
                    if let Some(cf) = db.cf_handle(ns) {
                        wb.delete_cf(cf, key);
                    }
                }
            }
        }
        db.write_opt(wb, &self.write_options).map_err(backend)
    }

    fn snapshot(&mut self, dir: &Path) -> Result<(), StateError> {
        if dir.exists() {
            let empty = std::fs::read_dir(dir).map_err(|e| StateError::io(dir, e))?.next().is_none();
            if !empty {
                return Err(StateError::Backend(format!(
                    "snapshot directory {} is not empty",
                    dir.display()
                )));
            }
            std::fs::remove_dir(dir).map_err(|e| StateError::io(dir, e))?;
        }
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StateError::io(parent, e))?;
        }
        let db = self.db()?;
        // Memtables hold writes made without WAL: flush them so the checkpoint's SSTs hold everything.
        db.flush().map_err(backend)?;
        let opts = self.options.to_options(&self.cache)?;
        for cf_name in DB::list_cf(&opts, &self.path).map_err(backend)? {
            if let Some(cf) = db.cf_handle(&cf_name) {
                db.flush_cf(cf).map_err(backend)?;
            }
        }
        Checkpoint::new(db).and_then(|c| c.create_checkpoint(dir)).map_err(backend)
    }

    fn clear(&mut self) -> Result<(), StateError> {
        // Close, remove the directory, reopen empty.
        self.db = None;
        if self.path.exists() {
            std::fs::remove_dir_all(&self.path).map_err(|e| StateError::io(&self.path, e))?;
        }
        std::fs::create_dir_all(&self.path).map_err(|e| StateError::io(&self.path, e))?;
        self.db = Some(self.open_db()?);
        Ok(())
    }

    fn restore(&mut self, dir: &Path) -> Result<(), StateError> {
        // Close, replace the directory's contents with the snapshot's files, reopen.
        self.db = None;
        if self.path.exists() {
            std::fs::remove_dir_all(&self.path).map_err(|e| StateError::io(&self.path, e))?;
        }
        std::fs::create_dir_all(&self.path).map_err(|e| StateError::io(&self.path, e))?;
        for entry in std::fs::read_dir(dir).map_err(|e| StateError::io(dir, e))? {
            let entry = entry.map_err(|e| StateError::io(dir, e))?;
            let from = entry.path();
            if !from.is_file() {
                continue;
            }
            let to = self.path.join(entry.file_name());
            // Hard links are free when the snapshot is on the same filesystem; copy otherwise.
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(|e| StateError::io(&from, e))?;
            }
        }
        self.db = Some(self.open_db()?);
        Ok(())
    }

    fn stats(&self) -> super::StateStats {
        // A property that cannot be read is reported as 0: metrics must not fail the job.
        let prop = |name: &str| self.property_sum(name).unwrap_or(0);
        super::StateStats {
            keys: prop("rocksdb.estimate-num-keys"),
            live_bytes: prop("rocksdb.live-sst-files-size"),
            memtable_bytes: prop("rocksdb.cur-size-all-mem-tables"),
            block_cache_bytes: self.block_cache_usage() as u64,
        }
    }
}
