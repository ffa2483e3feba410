//! Timers beyond the memory budget: the latest of a domain's timers, in the spill store.
//!
//! Rows, in time order: `prefix, 0, time (sign bit flipped), key → ()` for the timers on disk,
//! and `prefix, 1, sequence → present, time, key` for changes a snapshot has not written yet
//! (notes, in the order they happened: the last one about a timer says whether it exists). Every
//! timer on disk sorts at or after `low`, so the timers in memory that sort before it can fire
//! without a read.

use super::rows;
use crate::error::StateError;
use crate::record::{Key, Timestamp};
use crate::state::StateBudget;

/// A timer: its time and its key.
pub(super) type Timer = (Timestamp, Key);

const TIMER_ROW: u8 = 0;
const NOTE_ROW: u8 = 1;

/// A domain's timers on disk.
pub(super) struct SpilledTimers {
    pub(super) budget: StateBudget,
    prefix: [u8; 8],
    /// No timer on disk sorts before this one; `None`: no timer is on disk.
    low: Option<Timer>,
    /// Rows of timers removed while they may be on disk, deleted with the next write.
    deletes: Vec<Vec<u8>>,
    /// Timers written to disk and not read back (a timer written twice counts twice).
    pub(super) on_disk: usize,
    next_note: u64,
    /// What the timers in memory are charged, of the budget's total.
    pub(super) charged: usize,
}

impl SpilledTimers {
    pub(super) fn new(budget: StateBudget) -> Self {
        let prefix = budget.table_prefix();
        Self { budget, prefix, low: None, deletes: Vec::new(), on_disk: 0, next_note: 0, charged: 0 }
    }

    /// Charges or releases the difference to `bytes`, what the timers in memory now cost.
    pub(super) fn set_charge(&mut self, bytes: usize) {
        if bytes > self.charged {
            self.budget.charge(bytes - self.charged);
        } else {
            self.budget.release(self.charged - bytes);
        }
        self.charged = bytes;
    }

    /// The prefix, then the timer as a checkpoint row has it under the tag `TIMER_ROW`.
    fn timer_row(&self, (at, key): &Timer) -> Vec<u8> {
        let mut timer = Vec::with_capacity(9 + key.as_bytes().len());
        rows::timer_key(&mut timer, TIMER_ROW, *at, key);
        let mut row = Vec::with_capacity(8 + timer.len());
        row.extend_from_slice(&self.prefix);
        row.extend_from_slice(&timer);
        row
    }

    fn rows_from(&self, tag: u8) -> Vec<u8> {
        let mut row = self.prefix.to_vec();
        row.push(tag);
        row
    }

    /// The timer may be on disk.
    pub(super) fn may_hold(&self, timer: &Timer) -> bool {
        self.low.as_ref().is_some_and(|low| timer >= low)
    }

    /// Disk may hold a timer due at `up_to` that sorts at or before `next`, the earliest timer in
    /// memory: it has to be read before `next` fires.
    pub(super) fn holds_before(&self, next: Option<(Timestamp, &Key)>, up_to: Timestamp) -> bool {
        self.low.as_ref().is_some_and(|low| low.0 <= up_to && next.is_none_or(|n| (low.0, &low.1) <= n))
    }

    /// Notes that `timer`, removed from memory, is to be deleted from disk too.
    pub(super) fn forget(&mut self, timer: &Timer) {
        if self.may_hold(timer) {
            self.deletes.push(self.timer_row(timer));
        }
    }

    /// `timer` is on disk.
    pub(super) fn contains(&mut self, timer: &Timer) -> Result<bool, StateError> {
        self.flush()?;
        Ok(self.budget.get(&self.timer_row(timer))?.is_some())
    }

    /// Writes `timers` (sorted) to disk and `notes` (changes a snapshot has not written yet:
    /// whether each timer exists), after the pending deletes, in one batch.
    pub(super) fn write(&mut self, timers: &[Timer], notes: &[(Timer, bool)]) -> Result<(), StateError> {
        let mut puts: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(timers.len() + notes.len());
        puts.extend(timers.iter().map(|t| (self.timer_row(t), Vec::new())));
        let mut seq = self.next_note;
        for ((at, key), present) in notes {
            let mut row = self.rows_from(NOTE_ROW);
            row.extend_from_slice(&seq.to_be_bytes());
            let mut note = Vec::with_capacity(9 + key.as_bytes().len());
            note.push(u8::from(*present));
            note.extend_from_slice(&at.to_be_bytes());
            note.extend_from_slice(key.as_bytes());
            puts.push((row, note));
            seq = seq.saturating_add(1);
        }
        self.budget.write_ordered(&self.deletes, &puts)?;
        self.deletes.clear();
        self.next_note = seq;
        self.on_disk = self.on_disk.saturating_add(timers.len());
        if let Some(first) = timers.first()
            && self.low.as_ref().is_none_or(|low| first < low)
        {
            self.low = Some(first.clone());
        }
        Ok(())
    }

    /// Writes the pending deletes, if any.
    pub(super) fn flush(&mut self) -> Result<(), StateError> {
        if self.deletes.is_empty() {
            return Ok(());
        }
        self.write(&[], &[])
    }

    /// Takes the earliest timers off the disk: those due at `up_to`, at most `max` of them.
    pub(super) fn load(&mut self, up_to: Timestamp, max: usize) -> Result<Vec<Timer>, StateError> {
        self.flush()?;
        let Some(low) = self.low.clone() else { return Ok(Vec::new()) };
        let from = self.timer_row(&low);
        let mut taken = Vec::new();
        let mut next: Option<Timer> = None;
        self.budget.scan_from(&self.rows_from(TIMER_ROW), &from, &mut |row, _| {
            let timer = split_timer_row(row)?;
            if timer.0 > up_to || taken.len() >= max {
                next = Some(timer);
                return Ok(false);
            }
            taken.push(timer);
            Ok(true)
        })?;
        let to = match &next {
            Some(t) => self.timer_row(t),
            None => self.rows_from(NOTE_ROW),
        };
        self.budget.delete_range(&from, &to)?;
        self.on_disk = self.on_disk.saturating_sub(taken.len());
        self.low = next;
        Ok(taken)
    }

    /// Calls `f` with every timer on disk, in time order.
    pub(super) fn for_each_timer(
        &mut self,
        f: &mut dyn FnMut(Timer) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        self.flush()?;
        self.budget.for_each(&self.rows_from(TIMER_ROW), &mut |row, _| f(split_timer_row(row)?))
    }

    /// Calls `f` with every note, in the order the changes happened.
    pub(super) fn for_each_note(
        &self,
        f: &mut dyn FnMut(Timer, bool) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        self.budget.for_each(&self.rows_from(NOTE_ROW), &mut |_, note| {
            let corrupt = || StateError::Corrupt { what: "a spilled timer note is too short".into() };
            let present = *note.first().ok_or_else(corrupt)? != 0;
            let at = note
                .get(1..9)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(i64::from_be_bytes)
                .ok_or_else(corrupt)?;
            f((at, Key::from(note.get(9..).unwrap_or_default())), present)
        })
    }

    /// Removes every note (a snapshot wrote what they say).
    pub(super) fn clear_notes(&mut self) -> Result<(), StateError> {
        let to = u64::from_be_bytes(self.prefix).saturating_add(1).to_be_bytes();
        self.budget.delete_range(&self.rows_from(NOTE_ROW), &to)?;
        self.next_note = 0;
        Ok(())
    }

    /// Deletes the timers on disk and the notes whose key `keep` refuses.
    pub(super) fn retain(&mut self, keep: &dyn Fn(&Key) -> bool) -> Result<(), StateError> {
        self.flush()?;
        let mut gone = Vec::new();
        self.budget.for_each(&self.rows_from(TIMER_ROW), &mut |row, _| {
            if !keep(&split_timer_row(row)?.1) {
                gone.push(row.to_vec());
            }
            Ok(())
        })?;
        let removed = gone.len();
        self.budget.for_each(&self.rows_from(NOTE_ROW), &mut |row, note| {
            if !keep(&Key::from(note.get(9..).unwrap_or_default())) {
                gone.push(row.to_vec());
            }
            Ok(())
        })?;
        for chunk in gone.chunks(4_096) {
            self.budget.write_ordered::<&[u8], &[u8]>(chunk, &[])?;
        }
        self.on_disk = self.on_disk.saturating_sub(removed);
        Ok(())
    }

    /// Forgets every timer on disk and every note.
    pub(super) fn reset(&mut self) -> Result<(), StateError> {
        self.budget.clear(&self.prefix)?;
        self.low = None;
        self.deletes.clear();
        self.on_disk = 0;
        self.next_note = 0;
        Ok(())
    }
}

impl Drop for SpilledTimers {
    fn drop(&mut self) {
        // The budget and its store outlive the step: give back its memory and its disk.
        self.set_charge(0);
        if let Err(e) = self.budget.clear(&self.prefix) {
            tracing::warn!(error = %e, "cannot remove a dropped step's spilled timers");
        }
    }
}

fn split_timer_row(row: &[u8]) -> Result<Timer, StateError> {
    rows::split_timer_key(row.get(8..).unwrap_or_default())
}
