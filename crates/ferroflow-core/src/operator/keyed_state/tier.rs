//! What a table keeps about its keys beyond memory: the budget it draws on, where its spilled
//! keys live in the spill store, and a Bloom filter of them.

use ahash::AHashSet;

use crate::error::StateError;
use crate::record::Key;
use crate::state::{BITS_FOR_ONE_PERCENT, KeyFilter, StateBudget};

/// Called with each spilled key and its encoded cell.
pub(super) type SpilledVisitor<'a> = dyn FnMut(Key, &[u8]) -> Result<(), StateError> + 'a;

/// The Bloom filter's bits per key (under 1 % false positives: that share of new keys costs a
/// disk read).
const FILTER_BITS: usize = BITS_FOR_ONE_PERCENT;

/// A table's spilled keys.
pub(super) struct Tier {
    pub(super) budget: StateBudget,
    prefix: [u8; 8],
    /// Made at the first spill: a table that never spills holds no filter.
    bloom: Option<KeyFilter>,
    /// Keys the filter was sized for, and keys put in it since.
    bloom_capacity: usize,
    bloom_items: usize,
    /// Keys in the filter whose disk copy was deleted since it was built: a filter of mostly
    /// deleted keys sends most new keys to disk for nothing, so it is rebuilt.
    stale: usize,
    /// Keys on disk that are not in memory.
    pub(super) on_disk_only: usize,
    /// Keys removed from memory whose disk copy is still to be deleted (with the next write).
    pub(super) deleted: AHashSet<Key>,
    /// Keys changed since the last pass: their memory is counted again.
    pub(super) resized: Vec<Key>,
    /// What this table's keys in memory are charged, of the budget's total.
    pub(super) charged: usize,
    /// Where the clock hand stands among the keys in memory.
    pub(super) hand: usize,
}

impl Tier {
    pub(super) fn new(budget: StateBudget) -> Self {
        let prefix = budget.table_prefix();
        Self {
            budget,
            prefix,
            bloom: None,
            bloom_capacity: 0,
            bloom_items: 0,
            stale: 0,
            on_disk_only: 0,
            deleted: AHashSet::new(),
            resized: Vec::new(),
            charged: 0,
            hand: 0,
        }
    }

    pub(super) fn charge(&mut self, bytes: usize) {
        self.charged = self.charged.saturating_add(bytes);
        self.budget.charge(bytes);
    }

    pub(super) fn release(&mut self, bytes: usize) {
        self.charged = self.charged.saturating_sub(bytes);
        self.budget.release(bytes);
    }

    /// How many bytes this table should spill: its share of the budget's excess.
    pub(super) fn share_of_excess(&self) -> usize {
        self.budget.share_of_excess(self.charged)
    }

    /// What a key with `encoded` bytes costs in memory, as the budget counts it, in a map whose
    /// entries take `slot` bytes each (see [`StateBudget::entry_cost`]).
    pub(super) fn cost(slot: usize, key: &Key, encoded: usize) -> usize {
        StateBudget::entry_cost(slot, key, encoded)
    }

    /// The key's row in the spill store.
    pub(super) fn row(&self, key: &Key) -> Vec<u8> {
        let mut row = Vec::with_capacity(8 + key.as_bytes().len());
        row.extend_from_slice(&self.prefix);
        row.extend_from_slice(key.as_bytes());
        row
    }

    /// The key may have a copy on disk (a Bloom filter: `false` is certain).
    pub(super) fn maybe_on_disk(&self, key: &Key) -> bool {
        !self.deleted.contains(key) && self.bloom.as_ref().is_some_and(|b| b.contains(key.as_bytes()))
    }

    /// A key left memory for good (removed, or given to another copy): its memory is released
    /// and its disk copy, if any, deleted with the next write.
    pub(super) fn forget(&mut self, key: &Key, bytes: &usize, on_disk: bool) {
        self.release(*bytes);
        if on_disk {
            self.deleted.insert(key.clone());
            self.stale = self.stale.saturating_add(1);
        }
    }

    /// Writes `puts` after the pending deletes (a key removed, then written again, keeps its new
    /// value).
    pub(super) fn write(&mut self, puts: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StateError> {
        let deletes: Vec<Vec<u8>> = self.deleted.iter().map(|k| self.row(k)).collect();
        self.budget.write_ordered(&deletes, puts)?;
        self.deleted.clear();
        Ok(())
    }

    /// Writes the pending deletes, if any.
    pub(super) fn flush_deletes(&mut self) -> Result<(), StateError> {
        if self.deleted.is_empty() {
            return Ok(());
        }
        self.write(&[])
    }

    /// A key was written to disk and left memory.
    pub(super) fn spilled_one(&mut self, key: &Key, bytes: usize, was_on_disk: bool) {
        self.release(bytes);
        self.on_disk_only = self.on_disk_only.saturating_add(1);
        if !was_on_disk {
            let bloom = self.bloom.get_or_insert_with(|| bloom(1 << 16));
            bloom.insert(key.as_bytes());
            self.bloom_capacity = self.bloom_capacity.max(1 << 16);
            self.bloom_items = self.bloom_items.saturating_add(1);
            if self.bloom_items > self.bloom_capacity {
                self.grow_bloom();
            }
        }
    }

    /// Rebuilds the filter from the keys on disk once more than half of the keys put in it were
    /// deleted since (keys that come and go, such as sessions that end): otherwise the filter,
    /// which cannot forget, would answer `maybe` for every key ever spilled.
    pub(super) fn forget_deleted(&mut self) -> Result<(), StateError> {
        if self.stale < (1 << 16) || self.stale.saturating_mul(2) < self.bloom_items {
            return Ok(());
        }
        self.flush_deletes()?;
        self.rebuild_bloom(self.bloom_items.saturating_sub(self.stale).saturating_mul(2));
        Ok(())
    }

    /// A fuller filter answers `maybe` too often: build one twice the size from the keys on disk.
    fn grow_bloom(&mut self) {
        self.rebuild_bloom(self.bloom_capacity.saturating_mul(2));
    }

    /// Builds the filter again from the keys on disk, for `capacity` keys or twice as many as
    /// there are.
    fn rebuild_bloom(&mut self, capacity: usize) {
        let capacity = capacity.max(1 << 16);
        let mut fresh = bloom(capacity);
        let mut items = 0usize;
        let scanned = self.budget.for_each(&self.prefix, &mut |row, _| {
            fresh.insert(row.get(8..).unwrap_or_default());
            items = items.saturating_add(1);
            Ok(())
        });
        match scanned {
            Ok(()) => {
                self.bloom = Some(fresh);
                self.bloom_items = items;
                self.bloom_capacity = capacity.max(items.saturating_mul(2));
                self.stale = 0;
            }
            // The old filter still says `maybe` for every key on disk: only slower.
            Err(e) => {
                tracing::warn!(error = %e, "cannot rebuild the spill filter");
                self.bloom_capacity = self.bloom_capacity.max(capacity);
                self.stale = 0;
            }
        }
    }

    /// Calls `f` with every spilled row of the table that is not deleted: (key, encoded cell).
    pub(super) fn for_each_spilled(&self, f: &mut SpilledVisitor<'_>) -> Result<(), StateError> {
        self.budget.for_each(&self.prefix, &mut |row, v| {
            let key = Key::from(row.get(8..).unwrap_or_default());
            if self.deleted.contains(&key) { Ok(()) } else { f(key, v) }
        })
    }

    /// Deletes the spilled keys that are not in memory and `keep` refuses.
    pub(super) fn retain_spilled(
        &mut self,
        hot: &dyn Fn(&Key) -> bool,
        keep: &dyn Fn(&Key) -> bool,
    ) -> Result<(), StateError> {
        let mut gone = Vec::new();
        let deleted = &self.deleted;
        self.budget.for_each(&self.prefix, &mut |row, _| {
            let key = Key::from(row.get(8..).unwrap_or_default());
            if !hot(&key) && !deleted.contains(&key) && !keep(&key) {
                gone.push(row.to_vec());
            }
            Ok(())
        })?;
        for chunk in gone.chunks(4_096) {
            self.budget.write_ordered::<&[u8], &[u8]>(chunk, &[])?;
            self.on_disk_only = self.on_disk_only.saturating_sub(chunk.len());
        }
        Ok(())
    }

    /// Forgets every key: disk, then memory (`charged` bytes).
    pub(super) fn reset(&mut self) -> Result<(), StateError> {
        self.budget.clear(&self.prefix)?;
        let charged = self.charged;
        self.release(charged);
        self.bloom = None;
        self.bloom_capacity = 0;
        self.bloom_items = 0;
        self.stale = 0;
        self.on_disk_only = 0;
        self.deleted.clear();
        self.resized.clear();
        self.hand = 0;
        Ok(())
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        // The budget and its store outlive the step: give back its memory and its disk.
        let charged = self.charged;
        self.release(charged);
        if self.bloom.is_some()
            && let Err(e) = self.budget.clear(&self.prefix)
        {
            tracing::warn!(error = %e, "cannot remove a dropped step's spilled state");
        }
    }
}

fn bloom(capacity: usize) -> KeyFilter {
    KeyFilter::new(capacity, FILTER_BITS)
}
