//! Window slots beyond the memory budget: where a window's spilled slots live in the spill store,
//! and a Bloom filter per window of the keys it spilled.
//!
//! Rows, per window `[start, end)`: `prefix, start, end, 0, key → slot` for the spilled slots
//! (the latest spilled copy of each), and `prefix, start, end, 1, sequence → key, slot` for the
//! slots that were spilled before a snapshot wrote them (pending, in spill order). A window's rows
//! all go with one range delete when the window is dropped.

use super::common::ordered;
use super::spec::Window;
use crate::error::StateError;
use crate::record::Key;
use crate::state::{BITS_FOR_ONE_PERCENT, KeyFilter, RowVisitor, StateBudget, ValueVisitor};

/// The filters' bits per key (under 1 % false positives: that share of a window's keys never
/// spilled costs a read).
const FILTER_BITS: usize = BITS_FOR_ONE_PERCENT;
/// The smallest filter, in keys.
const MIN_FILTER: usize = 1 << 12;
const SLOT_TAG: u8 = 0;
const PENDING_TAG: u8 = 1;
/// Bytes before the key (or sequence) in a row: prefix, start, end, tag.
pub(super) const ROW_HEAD: usize = 8 + 8 + 8 + 1;

/// The keys one window spilled.
pub(super) struct SpilledKeys {
    filter: KeyFilter,
    capacity: usize,
    items: usize,
}

impl SpilledKeys {
    /// The key may have a spilled slot (`false` is certain).
    #[inline]
    pub(super) fn maybe(&self, key: &Key) -> bool {
        self.filter.contains(key.as_bytes())
    }

    /// What the filter holds in memory, bytes.
    pub(super) fn bytes(&self) -> usize {
        self.filter.bytes()
    }
}

/// A window operator's spilled slots, and what its memory is charged of the budget.
pub(super) struct WindowSpill {
    budget: StateBudget,
    prefix: [u8; 8],
    /// What the operator's memory is charged of the budget now.
    charged: usize,
    /// The next pending row's sequence number.
    seq: u64,
}

impl WindowSpill {
    pub(super) fn new(budget: StateBudget) -> Self {
        let prefix = budget.table_prefix();
        Self { budget, prefix, charged: 0, seq: 0 }
    }

    /// Sets the operator's charge to `bytes`.
    pub(super) fn charge(&mut self, bytes: usize) {
        if bytes > self.charged {
            self.budget.charge(bytes - self.charged);
        } else {
            self.budget.release(self.charged - bytes);
        }
        self.charged = bytes;
    }

    /// How many bytes the operator should spill now (0 within the budget).
    pub(super) fn to_spill(&self) -> usize {
        if self.budget.over() { self.budget.share_of_excess(self.charged) } else { 0 }
    }

    fn head(&self, buf: &mut Vec<u8>, w: Window, tag: u8) {
        buf.clear();
        buf.extend_from_slice(&self.prefix);
        buf.extend_from_slice(&ordered(w.start));
        buf.extend_from_slice(&ordered(w.end));
        buf.push(tag);
    }

    /// The row of `key`'s slot in window `w`.
    pub(super) fn slot_row(&self, w: Window, key: &Key) -> Vec<u8> {
        let mut row = Vec::with_capacity(ROW_HEAD + key.as_bytes().len());
        self.head(&mut row, w, SLOT_TAG);
        row.extend_from_slice(key.as_bytes());
        row
    }

    /// Writes the slots of window `w` (key, encoded slot; `pending` ones were not in a snapshot
    /// yet) and notes their keys in `keys`, made on the window's first spill.
    pub(super) fn write(
        &mut self,
        w: Window,
        slots: &[(Key, Vec<u8>, bool)],
        keys: &mut Option<SpilledKeys>,
        window_keys: usize,
    ) -> Result<(), StateError> {
        let mut puts = Vec::with_capacity(slots.len());
        let mut notes = Vec::new();
        for (key, value, pending) in slots {
            puts.push((self.slot_row(w, key), value.as_slice()));
            if *pending {
                let mut row = Vec::with_capacity(ROW_HEAD + 8);
                self.head(&mut row, w, PENDING_TAG);
                row.extend_from_slice(&self.seq.to_be_bytes());
                self.seq = self.seq.wrapping_add(1);
                let mut note = Vec::with_capacity(4 + key.as_bytes().len() + value.len());
                let key_len = u32::try_from(key.as_bytes().len()).unwrap_or(u32::MAX);
                note.extend_from_slice(&key_len.to_be_bytes());
                note.extend_from_slice(key.as_bytes());
                note.extend_from_slice(value);
                notes.push((row, note));
            }
        }
        self.budget.write_notes(&notes)?;
        self.budget.write_ordered(&[], &puts)?;
        let spilled = keys.get_or_insert_with(|| {
            let capacity = window_keys.saturating_mul(2).max(MIN_FILTER);
            SpilledKeys { filter: filter(capacity), capacity, items: 0 }
        });
        for (key, _, _) in slots {
            spilled.filter.insert(key.as_bytes());
        }
        spilled.items = spilled.items.saturating_add(slots.len());
        if spilled.items > spilled.capacity {
            self.grow(w, spilled);
        }
        Ok(())
    }

    /// A fuller filter answers `maybe` too often: build one twice the size from the rows on disk.
    fn grow(&self, w: Window, keys: &mut SpilledKeys) {
        let capacity = keys.capacity.saturating_mul(2);
        let mut fresh = filter(capacity);
        let mut items = 0usize;
        let scanned = self.for_each_slot(w, &mut |key, _| {
            fresh.insert(key);
            items = items.saturating_add(1);
            Ok(())
        });
        match scanned {
            Ok(()) => {
                keys.filter = fresh;
                keys.items = items;
                keys.capacity = capacity.max(items.saturating_mul(2));
            }
            // The old filter still says `maybe` for every key on disk: only slower.
            Err(e) => {
                tracing::warn!(error = %e, "cannot rebuild a window's spill filter");
                keys.capacity = capacity;
            }
        }
    }

    /// Reads `rows` (from [`slot_row`](Self::slot_row)) in one batch: `f` gets each row's index
    /// and its slot, if it has one.
    pub(super) fn read(&self, rows: &[Vec<u8>], f: &mut ValueVisitor<'_>) {
        self.budget.multi_get(rows, f);
    }

    /// Calls `f` with the key and slot of every spilled slot of `w`, in key order.
    pub(super) fn for_each_slot(&self, w: Window, f: &mut RowVisitor<'_>) -> Result<(), StateError> {
        let mut head = Vec::with_capacity(ROW_HEAD);
        self.head(&mut head, w, SLOT_TAG);
        self.budget.for_each(&head, &mut |row, v| f(row.get(ROW_HEAD..).unwrap_or_default(), v))
    }

    /// Calls `f` with the key and slot of the slots of `w` from key `from` on (included), in key
    /// order, while it returns `true` (a firing emits them chunk by chunk).
    pub(super) fn scan_slots_from(
        &self,
        w: Window,
        from: &[u8],
        f: &mut crate::state::RowsWhile<'_>,
    ) -> Result<(), StateError> {
        let mut head = Vec::with_capacity(ROW_HEAD);
        self.head(&mut head, w, SLOT_TAG);
        let mut start = Vec::with_capacity(ROW_HEAD + from.len());
        start.extend_from_slice(&head);
        start.extend_from_slice(from);
        self.budget.scan_from(&head, &start, &mut |row, v| f(row.get(ROW_HEAD..).unwrap_or_default(), v))
    }

    /// Calls `f` with the key and slot of every pending row of `w`, in spill order.
    pub(super) fn for_each_pending(&self, w: Window, f: &mut RowVisitor<'_>) -> Result<(), StateError> {
        let mut head = Vec::with_capacity(ROW_HEAD);
        self.head(&mut head, w, PENDING_TAG);
        self.budget.for_each(&head, &mut |_, note| {
            let (len, rest) = note.split_at_checked(4).ok_or_else(|| bad_note(w))?;
            let len = u32::from_be_bytes(len.try_into().map_err(|_| bad_note(w))?) as usize;
            let (key, slot) = rest.split_at_checked(len).ok_or_else(|| bad_note(w))?;
            f(key, slot)
        })
    }

    /// Drops the pending rows of `w` (a snapshot wrote them).
    pub(super) fn clear_pending(&self, w: Window) -> Result<(), StateError> {
        let (mut from, mut to) = (Vec::with_capacity(ROW_HEAD), Vec::with_capacity(ROW_HEAD));
        self.head(&mut from, w, PENDING_TAG);
        self.head(&mut to, w, PENDING_TAG + 1);
        self.budget.delete_range(&from, &to)
    }

    /// Drops every row of `w`.
    pub(super) fn drop_window(&self, w: Window) -> Result<(), StateError> {
        let (mut from, mut to) = (Vec::with_capacity(ROW_HEAD), Vec::with_capacity(ROW_HEAD));
        self.head(&mut from, w, SLOT_TAG);
        self.head(&mut to, w, PENDING_TAG + 1);
        self.budget.delete_range(&from, &to)
    }

    /// Deletes `rows`.
    pub(super) fn delete(&self, rows: &[Vec<u8>]) -> Result<(), StateError> {
        for chunk in rows.chunks(4_096) {
            self.budget.write_ordered::<&[u8], &[u8]>(chunk, &[])?;
        }
        Ok(())
    }

    /// Forgets every spilled slot.
    pub(super) fn reset(&mut self) -> Result<(), StateError> {
        self.budget.clear(&self.prefix)
    }
}

impl Drop for WindowSpill {
    fn drop(&mut self) {
        // The budget and its store outlive the operator: give back its memory and its disk.
        self.charge(0);
        if let Err(e) = self.budget.clear(&self.prefix) {
            tracing::warn!(error = %e, "cannot remove a dropped window operator's spilled state");
        }
    }
}

fn filter(capacity: usize) -> KeyFilter {
    KeyFilter::new(capacity, FILTER_BITS)
}

fn bad_note(w: Window) -> StateError {
    StateError::Corrupt { what: format!("a pending spilled slot of window [{}, {})", w.start, w.end) }
}
