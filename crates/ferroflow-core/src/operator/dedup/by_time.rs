//! Dedup's ids in memory by the time they were last seen, in coarse buckets: what expires and
//! what spills goes bucket by bucket, earliest first.

use std::collections::VecDeque;

use super::IdHash;
use crate::record::Timestamp;

/// The widest bucket, ms: spilling goes about earliest-seen first at least to this precision.
const MAX_WIDTH: i64 = 60_000;
/// Buckets beyond which an earlier sighting joins a later bucket instead of making its own.
const MAX_BUCKETS: usize = 4_096;

/// Ids by the bucket of their sighting time. An id seen again later is pushed again, into its new
/// bucket; its entry in the old one is stale and skipped (the map of ids says which sighting is
/// the last). Pushing is appending to a vector, so a record costs no heap reordering; a bucket is
/// as wide as a sixty-fourth of the time-to-live, at most a minute.
#[derive(Debug)]
pub(super) struct ByTime {
    width: i64,
    /// Buckets by start, ascending.
    buckets: VecDeque<(Timestamp, Vec<IdHash>)>,
    entries: usize,
}

impl ByTime {
    pub(super) fn new(ttl_ms: i64) -> Self {
        Self { width: (ttl_ms / 64).clamp(1, MAX_WIDTH), buckets: VecDeque::new(), entries: 0 }
    }

    /// Entries held, stale ones included.
    pub(super) fn len(&self) -> usize {
        self.entries
    }

    /// The last time that falls in the bucket of `at`.
    pub(super) fn end_of(&self, at: Timestamp) -> Timestamp {
        self.end(at.div_euclid(self.width).saturating_mul(self.width))
    }

    /// The last time that falls in the bucket starting at `start`.
    pub(super) fn end(&self, start: Timestamp) -> Timestamp {
        start.saturating_add(self.width - 1)
    }

    pub(super) fn push(&mut self, at: Timestamp, h: IdHash) {
        let start = at.div_euclid(self.width).saturating_mul(self.width);
        self.entries = self.entries.saturating_add(1);
        match self.buckets.back_mut() {
            Some((s, ids)) if *s == start => ids.push(h),
            Some((s, _)) if *s > start => match self.buckets.binary_search_by_key(&start, |(s, _)| *s) {
                Ok(i) => {
                    if let Some((_, ids)) = self.buckets.get_mut(i) {
                        ids.push(h);
                    }
                }
                Err(i) if self.buckets.len() < MAX_BUCKETS => self.buckets.insert(i, (start, vec![h])),
                // Too many buckets (event times all over the place): into the next later one,
                // which expires and spills it later than its own would, never earlier.
                Err(i) => {
                    if let Some((_, ids)) = self.buckets.get_mut(i) {
                        ids.push(h);
                    }
                }
            },
            _ => self.buckets.push_back((start, vec![h])),
        }
    }

    /// The earliest bucket's start, if any.
    pub(super) fn first_start(&self) -> Option<Timestamp> {
        self.buckets.front().map(|(s, _)| *s)
    }

    /// Takes the earliest bucket out: (start, its ids).
    pub(super) fn pop_first(&mut self) -> Option<(Timestamp, Vec<IdHash>)> {
        let first = self.buckets.pop_front()?;
        self.entries = self.entries.saturating_sub(first.1.len());
        Some(first)
    }

    /// Puts back what is left of a bucket taken with [`pop_first`](Self::pop_first).
    pub(super) fn put_back_first(&mut self, start: Timestamp, ids: Vec<IdHash>) {
        if ids.is_empty() {
            return;
        }
        self.entries = self.entries.saturating_add(ids.len());
        match self.buckets.front_mut() {
            Some((s, rest)) if *s == start => rest.extend(ids),
            _ => self.buckets.push_front((start, ids)),
        }
    }

    /// Replaces everything with `live` (time, hash): drops the stale entries.
    pub(super) fn rebuild(&mut self, live: impl Iterator<Item = (Timestamp, IdHash)>) {
        self.clear();
        for (at, h) in live {
            self.push(at, h);
        }
    }

    pub(super) fn clear(&mut self) {
        self.buckets.clear();
        self.entries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_come_out_earliest_first_whatever_the_order_of_pushes() {
        let mut b = ByTime::new(64_000); // 1 s wide
        for (at, h) in [(5_500, 1), (1_200, 2), (i64::MIN, 3), (5_999, 4), (3_000, 5), (-1, 6), (i64::MAX, 7)]
        {
            b.push(at, h);
        }
        assert_eq!(b.len(), 7);
        let mut order = Vec::new();
        while let Some(bucket) = b.pop_first() {
            order.push(bucket);
        }
        let starts: Vec<Timestamp> = order.iter().map(|(s, _)| *s).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
        assert_eq!(order[1], (-1_000, vec![6]));
        assert_eq!(order[4], (5_000, vec![1, 4]));
        assert_eq!(b.len(), 0);
    }
}
