//! Event-time and processing-time timers of a keyed step, as Flink's timer service keeps them;
//! under a memory budget, the latest of them wait on disk.

use ahash::AHashSet;

use super::rows;
use super::spilled_timers::{SpilledTimers, Timer};
use super::timer_queue::{Queue, cost};
use crate::error::StateError;
use crate::record::{Key, Timestamp};
use crate::state::{SpillFailure, StateBackend, StateBudget};

/// Timers read back from disk at once, when the earliest due ones are there.
const LOAD: usize = 4_096;

/// Checkpoint rows a restore reads between two checks of the budget.
const RESTORE_CHUNK: usize = 16_384;

/// One domain's timers: at most one per (time, key), fired in time order, then key order.
#[derive(Debug)]
pub(crate) struct Timers {
    /// The row tag of this domain's timers.
    tag: u8,
    due: Queue,
    /// Timers set or removed since the last snapshot (noted once the step is checkpointed).
    touched: AHashSet<Timer>,
    /// What `touched` costs in memory.
    touched_bytes: usize,
    tracking: bool,
    /// While timers fire up to this watermark: timers registered at or below it wait in
    /// `deferred` for the next watermark (a timer that registers its own time again would
    /// otherwise fire for ever).
    firing: Option<Timestamp>,
    deferred: Queue,
    /// Under a memory budget: the latest timers, on disk. A timer is in memory, on disk, or
    /// both (registered again while on disk: both copies are one timer).
    disk: Option<SpilledTimers>,
    /// A spill-store failure outside a record: reported to the job at once, and every snapshot
    /// fails until a restore.
    failure: SpillFailure,
    /// Due timers read back from disk at once.
    load: usize,
    /// Timers fired so far (a firing spills every `load` of them).
    popped: usize,
}

impl std::fmt::Debug for SpilledTimers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpilledTimers").field("on_disk", &self.on_disk).finish_non_exhaustive()
    }
}

impl Timers {
    /// Event-time timers.
    pub(crate) fn event_time() -> Self {
        Self::new(rows::EVENT_TIMER_TAG)
    }

    /// Processing-time timers.
    pub(in crate::operator) fn processing_time() -> Self {
        Self::new(rows::PROCESSING_TIMER_TAG)
    }

    fn new(tag: u8) -> Self {
        Self {
            tag,
            due: Queue::default(),
            touched: AHashSet::new(),
            touched_bytes: 0,
            tracking: false,
            firing: None,
            deferred: Queue::default(),
            disk: None,
            failure: SpillFailure::default(),
            load: LOAD,
            popped: 0,
        }
    }

    /// Runs under `budget` from now on: timers beyond it wait on disk.
    pub(crate) fn attach(&mut self, budget: &StateBudget) {
        if self.disk.is_none() {
            self.disk = Some(SpilledTimers::new(budget.clone()));
        }
    }

    /// Notes a change for the next snapshot (from the first one on).
    fn touch(&mut self, timer: Timer) {
        if !self.tracking {
            return;
        }
        let bytes = cost(&timer.1);
        if self.touched.insert(timer) {
            self.touched_bytes = self.touched_bytes.saturating_add(bytes);
        }
    }

    fn clear_touched(&mut self) {
        self.touched.clear();
        self.touched_bytes = 0;
    }

    pub(crate) fn register(&mut self, at: Timestamp, key: &Key) {
        let timer = (at, key.clone());
        // A copy for the changes only when they are tracked (incremental checkpoints).
        let copy = self.tracking.then(|| timer.clone());
        let added = match self.firing {
            Some(w) if at <= w => {
                !self.due.contains(&timer) && !self.due_on_disk(&timer) && self.deferred.insert(timer)
            }
            _ => self.due.insert(timer),
        };
        if added && let Some(timer) = copy {
            self.touch(timer);
        }
    }

    /// While timers fire: `timer`, due, is on disk and fires with them.
    fn due_on_disk(&mut self, timer: &Timer) -> bool {
        let Some(disk) = &mut self.disk else { return false };
        if !disk.may_hold(timer) {
            return false;
        }
        match disk.contains(timer) {
            Ok(found) => found,
            Err(e) => {
                // Deferred as well: it may fire twice, but the next snapshot fails, and a
                // restore from the last checkpoint fires it once.
                tracing::warn!(error = %e, "cannot look up a spilled timer");
                self.failure.set(e);
                false
            }
        }
    }

    pub(in crate::operator) fn delete(&mut self, at: Timestamp, key: &Key) {
        let timer = (at, key.clone());
        // Both: after a failed lookup, a timer may be deferred and due at once.
        let mut removed = self.due.remove(&timer) | self.deferred.remove(&timer);
        if let Some(disk) = &mut self.disk
            && disk.may_hold(&timer)
        {
            disk.forget(&timer);
            removed = true;
        }
        if removed {
            self.touch(timer);
        }
    }

    /// Starts firing the timers due at `watermark` (or processing time) (see [`pop_due`](Self::pop_due)).
    pub(crate) fn start_firing(&mut self, watermark: Timestamp) {
        self.firing = Some(watermark);
    }

    /// The earliest timer due at the watermark being fired, left in place; `None` once none is
    /// left, which ends the firing (timers deferred meanwhile wait for the next watermark).
    pub(crate) fn peek_due(&mut self) -> Option<(Timestamp, &Key)> {
        let w = self.firing?;
        // Timers on disk that sort before the earliest in memory come back first.
        while let Some(disk) = &mut self.disk
            && disk.holds_before(self.due.first(), w)
        {
            match disk.load(w, self.load) {
                Ok(timers) => {
                    for t in timers {
                        self.due.insert(t);
                    }
                }
                Err(e) => {
                    // They fire with a later watermark; the next snapshot fails, so that a
                    // restore from the last checkpoint fires them in order.
                    tracing::warn!(error = %e, "cannot read spilled timers back");
                    self.failure.set(e);
                    self.end_firing();
                    return None;
                }
            }
        }
        if self.due.first().is_none_or(|(at, _)| at > w) {
            self.end_firing();
            return None;
        }
        self.due.first()
    }

    /// The keys of the next `n` due timers in memory (a step reads their state back in one go
    /// before they fire).
    pub(crate) fn upcoming(&self, n: usize) -> impl Iterator<Item = &Key> {
        let w = self.firing.unwrap_or(i64::MIN);
        self.due.iter().take_while(move |(at, _)| self.firing.is_some() && *at <= w).take(n).map(|(_, k)| k)
    }

    /// Removes and returns the earliest timer due at the watermark being fired; `None` once none
    /// is left, which ends the firing (timers deferred meanwhile wait for the next watermark).
    pub(crate) fn pop_due(&mut self) -> Option<Timer> {
        self.peek_due()?;
        let timer = self.due.pop_first()?;
        if self.tracking {
            self.touch(timer.clone());
        }
        // Fired timers are noted as changes, and timers set meanwhile wait: a firing of millions
        // spills as it goes.
        self.popped = self.popped.wrapping_add(1);
        if self.disk.is_some() && self.popped.is_multiple_of(self.load.max(1)) {
            self.spill();
        }
        Some(timer)
    }

    fn end_firing(&mut self) {
        self.firing = None;
        self.due.append(&mut self.deferred);
    }

    /// Under a budget, between batches and as timers fire: writes the latest timers to disk while the budget is
    /// exceeded, and the changes a snapshot has not written yet with them. A failed write keeps
    /// them in memory (over the budget, nothing lost).
    ///
    /// While timers fire, only timers after the watermark being fired may go (the others may
    /// fire in this round), so that a long firing stays within the budget too.
    pub(crate) fn spill(&mut self) {
        let firing = self.firing;
        let Some(disk) = &mut self.disk else { return };
        disk.set_charge(
            self.due.bytes.saturating_add(self.deferred.bytes).saturating_add(self.touched_bytes),
        );
        if !disk.budget.over() {
            if let Err(e) = disk.flush() {
                self.failure.set(e);
            }
            return;
        }
        let want = disk.budget.share_of_excess(disk.charged);
        let mut freed = 0usize;
        let mut out: Vec<Timer> = Vec::new();
        for (at, key) in self.due.iter().rev() {
            if freed >= want || firing.is_some_and(|w| at <= w) {
                break;
            }
            freed = freed.saturating_add(cost(key));
            out.push((at, key.clone()));
        }
        out.reverse();
        // Changes not yet in a checkpoint go to disk as notes, so that they do not pile up in
        // memory between checkpoints; the timers that spill exist.
        let notes: Vec<(Timer, bool)> = if self.tracking {
            self.touched
                .iter()
                .map(|t| (t.clone(), self.due.contains(t) || self.deferred.contains(t)))
                .collect()
        } else {
            Vec::new()
        };
        match disk.write(&out, &notes) {
            Ok(()) => {
                for t in &out {
                    self.due.remove(t);
                }
                self.touched.clear();
                self.touched_bytes = 0;
                disk.set_charge(self.due.bytes.saturating_add(self.deferred.bytes));
            }
            Err(e) => tracing::warn!(error = %e, "cannot spill timers: they stay in memory"),
        }
    }

    /// Timers noted as changed since the last snapshot.
    #[cfg(test)]
    pub(super) fn changes(&self) -> usize {
        self.touched.len()
    }

    /// Timers pending, at most (those on disk counted as written: a timer written twice, or
    /// removed while on disk, counts until it is read back).
    pub(crate) fn len(&self) -> usize {
        self.due.len() + self.deferred.len() + self.disk.as_ref().map_or(0, |d| d.on_disk)
    }

    /// Writes what changed since the last snapshot; the first one writes every timer (and
    /// removes no rows, as [`Tables::snapshot`]).
    pub(in crate::operator) fn snapshot(
        &mut self,
        ns: &str,
        state: &mut dyn StateBackend,
    ) -> Result<(), StateError> {
        self.failure.check()?;
        let mut buf = Vec::new();
        let tag = self.tag;
        if !self.tracking {
            for (at, key) in self.due.iter().chain(self.deferred.iter()) {
                rows::timer_key(&mut buf, tag, at, key);
                state.put(ns, &buf, &[])?;
            }
            if let Some(disk) = &mut self.disk {
                disk.for_each_timer(&mut |(at, key)| {
                    rows::timer_key(&mut buf, tag, at, &key);
                    state.put(ns, &buf, &[])
                })?;
                disk.clear_notes()?;
            }
            self.tracking = true;
            self.clear_touched();
            return Ok(());
        }
        if let Some(disk) = &mut self.disk {
            // Notes first: what `touched` holds happened after them.
            disk.flush()?;
            disk.for_each_note(&mut |(at, key), present| {
                rows::timer_key(&mut buf, tag, at, &key);
                if present { state.put(ns, &buf, &[]) } else { state.delete(ns, &buf) }
            })?;
            disk.clear_notes()?;
        }
        self.touched_bytes = 0;
        for timer in self.touched.drain() {
            rows::timer_key(&mut buf, tag, timer.0, &timer.1);
            if self.due.contains(&timer) || self.deferred.contains(&timer) {
                state.put(ns, &buf, &[])?;
            } else {
                state.delete(ns, &buf)?;
            }
        }
        Ok(())
    }

    pub(in crate::operator) fn restore(
        &mut self,
        ns: &str,
        state: &dyn StateBackend,
    ) -> Result<(), StateError> {
        self.reset()?;
        let mut read = 0usize;
        for kv in state.scan_prefix(ns, &[self.tag])? {
            let (k, _) = kv?;
            self.due.insert(rows::split_timer_key(&k)?);
            read = read.wrapping_add(1);
            // Rows come in time order: the latest spill as the restore goes, within the budget.
            if read.is_multiple_of(RESTORE_CHUNK) {
                self.spill();
            }
        }
        self.spill();
        self.tracking = true;
        let checked = self.failure.check();
        self.failure.clear();
        checked
    }

    /// Forgets every timer, in memory and on disk, and any failure; changes are not noted until
    /// a snapshot or restore (nothing needs a note that a checkpoint holds already).
    pub(crate) fn reset(&mut self) -> Result<(), StateError> {
        self.due.clear();
        self.deferred.clear();
        self.clear_touched();
        self.firing = None;
        self.failure.clear();
        self.tracking = false;
        match &mut self.disk {
            Some(disk) => disk.reset(),
            None => Ok(()),
        }
    }

    /// The spill-store failure since the last restore, if any (a snapshot must not be taken).
    pub(crate) fn check(&mut self) -> Result<(), StateError> {
        self.failure.check()
    }

    /// Hands a spill-store failure to the job, which fails before the results go out.
    pub(crate) fn report_failure(&mut self, ctx: &mut crate::operator::Context) {
        self.failure.report(ctx);
    }

    pub(crate) fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        self.due.retain(keep);
        self.deferred.retain(keep);
        self.touched.retain(|(_, k)| keep(k));
        self.touched_bytes = self.touched.iter().map(|t| cost(&t.1)).sum();
        if let Some(disk) = &mut self.disk
            && let Err(e) = disk.retain(keep)
        {
            self.failure.set(e);
        }
    }
}

#[cfg(all(test, feature = "rocksdb"))]
mod tests {
    use super::*;

    fn budgeted(limit: usize, dir: &std::path::Path) -> Result<(Timers, StateBudget), StateError> {
        let budget = StateBudget::open(limit, dir.join("spill"))?;
        let mut timers = Timers::event_time();
        timers.attach(&budget);
        Ok((timers, budget))
    }

    fn fire(timers: &mut Timers, up_to: Timestamp) -> Vec<Timer> {
        timers.start_firing(up_to);
        std::iter::from_fn(|| timers.pop_due()).collect()
    }

    fn tmp() -> Result<tempfile::TempDir, StateError> {
        tempfile::tempdir().map_err(|e| StateError::Backend(e.to_string()))
    }

    #[test]
    fn timers_beyond_the_budget_wait_on_disk_and_fire_once_in_order() -> Result<(), StateError> {
        let dir = tmp()?;
        let (mut timers, budget) = budgeted(16 << 10, dir.path())?;
        timers.load = 100;
        let mut all = Vec::new();
        for i in 0..5_000i64 {
            // Times out of order, two keys per time.
            let at = (i * 7_919) % 2_500;
            let key = Key::from(format!("k{}", i % 2));
            timers.register(at, &key);
            all.push((at, key));
            if i % 100 == 99 {
                timers.spill();
            }
        }
        all.sort();
        all.dedup();
        assert!(timers.due.len() < all.len() / 4, "{} of {} in memory", timers.due.len(), all.len());
        assert!(budget.used() <= 16 << 10, "{} bytes charged", budget.used());
        let first = fire(&mut timers, 999);
        let rest = fire(&mut timers, i64::MAX);
        assert_eq!([first.as_slice(), rest.as_slice()].concat(), all, "each once, in time then key order");
        assert!(first.iter().all(|t| t.0 <= 999) && rest.iter().all(|t| t.0 > 999));
        assert_eq!(fire(&mut timers, i64::MAX), Vec::new());
        Ok(())
    }

    #[test]
    fn a_due_timer_set_again_while_timers_fire_fires_once_when_its_copy_is_on_disk() -> Result<(), StateError>
    {
        let dir = tmp()?;
        let (mut timers, _budget) = budgeted(0, dir.path())?;
        timers.load = 1;
        let (a, b) = (Key::from("a"), Key::from("b"));
        timers.register(10, &a);
        timers.register(20, &b);
        timers.spill();
        assert_eq!(timers.due.len(), 0, "all on disk under a budget of nothing");
        timers.start_firing(30);
        assert_eq!(timers.pop_due(), Some((10, a.clone())));
        // (20, b) is due and on disk: it fires in this round, not once more in the next.
        timers.register(20, &b);
        assert_eq!(std::iter::from_fn(|| timers.pop_due()).collect::<Vec<_>>(), [(20, b)]);
        assert_eq!(fire(&mut timers, 40), Vec::new());
        Ok(())
    }

    /// Timers fired and timers set as they fire are spilled as the firing goes, and the
    /// checkpoint after it holds exactly the new ones.
    #[test]
    fn a_long_firing_stays_within_the_budget() -> Result<(), StateError> {
        let dir = tmp()?;
        let limit = 32 << 10;
        let (mut timers, budget) = budgeted(limit, dir.path())?;
        timers.load = 100;
        let key = |i: i64| Key::from(format!("k{}", i % 7));
        for i in 0..20_000i64 {
            timers.register(i, &key(i));
        }
        timers.spill();
        let mut state = crate::state::MemoryStateBackend::new();
        timers.snapshot("ns", &mut state)?;
        let mut most = 0;
        timers.start_firing(20_000);
        while let Some((at, k)) = timers.pop_due() {
            timers.register(at + 1_000_000, &k);
            most = most.max(timers.due.bytes + timers.deferred.bytes + timers.touched_bytes);
        }
        assert!(most < 2 * limit, "{most} bytes held while firing, under {limit}");
        assert!(budget.used() <= limit);
        timers.snapshot("ns", &mut state)?;
        let mut restored = Timers::event_time();
        restored.restore("ns", &state)?;
        let all = fire(&mut restored, i64::MAX);
        let expected: Vec<Timer> = (0..20_000i64).map(|i| (i + 1_000_000, key(i))).collect();
        assert_eq!(all, expected);
        Ok(())
    }

    #[test]
    fn a_timer_removed_while_on_disk_does_not_fire() -> Result<(), StateError> {
        let dir = tmp()?;
        let (mut timers, _budget) = budgeted(0, dir.path())?;
        let (a, b) = (Key::from("a"), Key::from("b"));
        timers.register(10, &a);
        timers.register(20, &b);
        timers.spill();
        timers.delete(10, &a);
        assert_eq!(fire(&mut timers, 30), [(20, b)]);
        Ok(())
    }
}
