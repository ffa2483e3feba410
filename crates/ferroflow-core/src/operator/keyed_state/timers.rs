//! Event-time and processing-time timers of a keyed step, as Flink's timer service keeps them.

use std::collections::BTreeSet;

use ahash::AHashSet;

use super::rows;
use crate::error::StateError;
use crate::record::{Key, Timestamp};
use crate::state::StateBackend;

/// One domain's timers: at most one per (time, key), fired in time order, then key order.
#[derive(Debug)]
pub(in crate::operator) struct Timers {
    /// The row tag of this domain's timers.
    tag: u8,
    due: BTreeSet<(Timestamp, Key)>,
    /// Timers set or removed since the last snapshot (noted once the step is checkpointed).
    touched: AHashSet<(Timestamp, Key)>,
    tracking: bool,
    /// While timers fire up to this watermark: timers registered at or below it wait in
    /// `deferred` for the next watermark (a timer that registers its own time again would
    /// otherwise fire for ever).
    firing: Option<Timestamp>,
    deferred: BTreeSet<(Timestamp, Key)>,
}

impl Timers {
    /// Event-time timers.
    pub(in crate::operator) fn event_time() -> Self {
        Self::new(rows::EVENT_TIMER_TAG)
    }

    /// Processing-time timers.
    pub(in crate::operator) fn processing_time() -> Self {
        Self::new(rows::PROCESSING_TIMER_TAG)
    }

    fn new(tag: u8) -> Self {
        Self {
            tag,
            due: BTreeSet::new(),
            touched: AHashSet::new(),
            tracking: false,
            firing: None,
            deferred: BTreeSet::new(),
        }
    }

    pub(in crate::operator) fn register(&mut self, at: Timestamp, key: &Key) {
        let timer = (at, key.clone());
        let added = match self.firing {
            Some(w) if at <= w => !self.due.contains(&timer) && self.deferred.insert(timer.clone()),
            _ => self.due.insert(timer.clone()),
        };
        if added && self.tracking {
            self.touched.insert(timer);
        }
    }

    pub(in crate::operator) fn delete(&mut self, at: Timestamp, key: &Key) {
        let timer = (at, key.clone());
        if (self.due.remove(&timer) || self.deferred.remove(&timer)) && self.tracking {
            self.touched.insert(timer);
        }
    }

    /// Starts firing the timers due at `watermark` (or processing time) (see [`pop_due`](Self::pop_due)).
    pub(in crate::operator) fn start_firing(&mut self, watermark: Timestamp) {
        self.firing = Some(watermark);
    }

    /// Removes and returns the earliest timer due at the watermark being fired; `None` once none
    /// is left, which ends the firing (timers deferred meanwhile wait for the next watermark).
    pub(in crate::operator) fn pop_due(&mut self) -> Option<(Timestamp, Key)> {
        let w = self.firing?;
        if self.due.first().is_none_or(|(at, _)| *at > w) {
            self.firing = None;
            self.due.append(&mut self.deferred);
            return None;
        }
        let timer = self.due.pop_first()?;
        if self.tracking {
            self.touched.insert(timer.clone());
        }
        Some(timer)
    }

    /// Timers noted as changed since the last snapshot.
    #[cfg(test)]
    pub(super) fn changes(&self) -> usize {
        self.touched.len()
    }

    pub(in crate::operator) fn len(&self) -> usize {
        self.due.len() + self.deferred.len()
    }

    /// Writes what changed since the last snapshot; the first one writes every timer (and
    /// removes no rows, as [`Tables::snapshot`]).
    pub(in crate::operator) fn snapshot(
        &mut self,
        ns: &str,
        state: &mut dyn StateBackend,
    ) -> Result<(), StateError> {
        let mut buf = Vec::new();
        if !self.tracking {
            for (at, key) in self.due.iter().chain(&self.deferred) {
                rows::timer_key(&mut buf, self.tag, *at, key);
                state.put(ns, &buf, &[])?;
            }
            self.tracking = true;
            self.touched.clear();
            return Ok(());
        }
        for timer in self.touched.drain() {
            rows::timer_key(&mut buf, self.tag, timer.0, &timer.1);
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
        self.due.clear();
        self.deferred.clear();
        self.touched.clear();
        self.tracking = true;
        for kv in state.scan_prefix(ns, &[self.tag])? {
            let (k, _) = kv?;
            self.due.insert(rows::split_timer_key(&k)?);
        }
        Ok(())
    }

    pub(in crate::operator) fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        self.due.retain(|(_, k)| keep(k));
        self.deferred.retain(|(_, k)| keep(k));
        self.touched.retain(|(_, k)| keep(k));
    }
}
