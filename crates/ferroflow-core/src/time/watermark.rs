//! Watermarks: one per input partition, combined by minimum, with idleness and finished partitions.
//!
//! A watermark `W` asserts that no more records with event time `<= W` are expected. With bounded
//! out-of-orderness `B`, a partition whose highest event time so far is `M` has watermark
//! `M - B - 1`. The job's watermark is the minimum over partitions that are neither idle nor
//! finished, and it never goes backwards.
//!
//! **Idleness.** A partition that delivered nothing for the idle timeout `T` stops holding the
//! watermark back until it delivers again. `T` is measured on the idleness clock
//! ([`Context::idle_time`](crate::Context::idle_time)): the source's own clock when it reports one,
//! which stands still while the source cannot read, so a stalled job (sink outage, slow checkpoint)
//! never turns partitions with a backlog idle; processing time otherwise. A source may also say
//! that a partition still has data to read ([`Signal::PartitionsActive`](crate::Signal)), which
//! keeps it from going idle. The runner checks every task's idleness after each event once that
//! clock moved by the tick interval `I`, and on a periodic wake-up, so a partition is detected idle
//! at worst `T + I` after its last record.
//!
//! **Finished partitions** (bounded input that reached its end) leave the minimum for good, so a
//! partition that ended early neither holds the others back nor makes their records late. When every
//! partition has finished, the watermark jumps to [`Watermark::MAX`], which fires every open window.

use std::time::Duration;

use ahash::AHashMap;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, duration_ms, non_negative_ms};
use crate::record::{PartitionId, Timestamp};
use crate::source::RIGHT_PARTITIONS;

/// A point in event time: no more records at or before it are expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Watermark(pub Timestamp);

impl Watermark {
    /// The watermark before any record was seen.
    pub const MIN: Watermark = Watermark(i64::MIN);
    /// The final watermark at the end of bounded input: every window fires.
    pub const MAX: Watermark = Watermark(i64::MAX);
}

/// How watermarks are generated: bounded out-of-orderness plus optional idleness.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use ferroflow_core::time::WatermarkStrategy;
/// let s = WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5))
///     .with_idleness(Duration::from_secs(30));
/// assert_eq!(s.out_of_orderness_ms(), 5_000);
/// assert_eq!(s.idle_timeout_ms(), Some(30_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkStrategy {
    out_of_orderness_ms: i64,
    idle_timeout_ms: Option<i64>,
    #[serde(default)]
    max_time_ahead_ms: Option<i64>,
    /// The second input's bound and idle timeout (its partitions, from
    /// [`RIGHT_PARTITIONS`] on), when it has its own.
    #[serde(default)]
    second_input: Option<(i64, Option<i64>)>,
}

impl Default for WatermarkStrategy {
    /// 5 s of out-of-orderness, partitions idle after 60 s.
    fn default() -> Self {
        Self {
            out_of_orderness_ms: 5_000,
            idle_timeout_ms: Some(60_000),
            max_time_ahead_ms: None,
            second_input: None,
        }
    }
}

impl WatermarkStrategy {
    /// Records may arrive up to `bound` behind the highest event time seen on their partition.
    pub fn bounded_out_of_orderness(bound: Duration) -> Self {
        Self {
            out_of_orderness_ms: duration_ms(bound),
            idle_timeout_ms: None,
            max_time_ahead_ms: None,
            second_input: None,
        }
    }

    /// Bound 0, for input in event-time order per partition: the watermark is the highest event
    /// time seen minus 1 ms, so further records at that same time are still on time.
    pub fn monotonous() -> Self {
        Self { out_of_orderness_ms: 0, idle_timeout_ms: None, max_time_ahead_ms: None, second_input: None }
    }

    /// A partition silent for `timeout` stops holding the watermark back. The timeout runs on
    /// the source's clock when it has one (see [`Context::idle_time`](crate::Context::idle_time)):
    /// time the job spent blocked does not count.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idle_timeout_ms = Some(duration_ms(timeout).max(1));
        self
    }

    /// Refuses records whose event time is more than `bound` ahead of processing time: they
    /// become `event_time_out_of_range` dead letters and never move the watermark.
    ///
    /// Without a bound, one record stamped years ahead (a bad clock, a unit mix-up) moves its
    /// partition's watermark there for good, and every later record of the partition is late.
    /// Off by default in the library (tests and replays often run with a clock at 0); the
    /// reference pipeline sets one hour. A record refused this way may be accepted by a replay
    /// much later, when processing time has caught up with it.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use ferroflow_core::time::WatermarkStrategy;
    /// let s = WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5))
    ///     .with_max_time_ahead(Duration::from_secs(3600));
    /// assert_eq!(s.max_time_ahead_ms(), Some(3_600_000));
    /// ```
    pub fn with_max_time_ahead(mut self, bound: Duration) -> Self {
        self.max_time_ahead_ms = Some(duration_ms(bound));
        self
    }

    /// Gives the second input of a [`UnionSource`](crate::source::UnionSource) (its partitions,
    /// from [`RIGHT_PARTITIONS`] on) the out-of-orderness bound and idle timeout of `second`; the
    /// first input's partitions keep this strategy's. Each input's partitions then make their
    /// watermarks by their own rule (a changelog in order with bound 0 beside events 5 s out of
    /// order, say), and the step after them sees the minimum, as before. The bound on time ahead
    /// stays this strategy's, for both.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use ferroflow_core::source::RIGHT_PARTITIONS;
    /// use ferroflow_core::time::{Watermark, WatermarkStrategy, WatermarkTracker};
    /// let events = WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5));
    /// let table = WatermarkStrategy::monotonous().with_idleness(Duration::from_secs(1));
    /// let mut t = WatermarkTracker::new(events.with_second_input(table));
    /// t.observe(0, 10_000, 0);
    /// t.observe(RIGHT_PARTITIONS, 3_000, 0);
    /// assert_eq!(t.advance(0), Some(Watermark(2_999)), "the table's, bound 0");
    /// assert_eq!(t.advance(1_000), Some(Watermark(4_999)), "the table is idle: the events', bound 5 s");
    /// ```
    pub fn with_second_input(mut self, second: WatermarkStrategy) -> Self {
        self.second_input = Some((second.out_of_orderness_ms, second.idle_timeout_ms));
        self
    }

    /// The bound and idle timeout of `partition`'s input.
    fn timing(&self, partition: PartitionId) -> (i64, Option<i64>) {
        match self.second_input {
            Some(second) if partition >= RIGHT_PARTITIONS => second,
            _ => (self.out_of_orderness_ms, self.idle_timeout_ms),
        }
    }

    /// The bound on event time ahead of processing time, in milliseconds, if one is set.
    pub fn max_time_ahead_ms(&self) -> Option<i64> {
        self.max_time_ahead_ms
    }

    /// Builds a strategy from configured milliseconds, rejecting negative values.
    pub fn from_millis(out_of_orderness_ms: i64, idle_timeout_ms: Option<i64>) -> Result<Self, ConfigError> {
        let out_of_orderness_ms = non_negative_ms("out_of_orderness", out_of_orderness_ms)?;
        let idle_timeout_ms = match idle_timeout_ms {
            Some(v) => Some(crate::error::positive_ms("idle_timeout", v)?),
            None => None,
        };
        Ok(Self { out_of_orderness_ms, idle_timeout_ms, max_time_ahead_ms: None, second_input: None })
    }

    /// The out-of-orderness bound in milliseconds.
    pub fn out_of_orderness_ms(&self) -> i64 {
        self.out_of_orderness_ms
    }

    /// The idle timeout in milliseconds, if idleness is on.
    pub fn idle_timeout_ms(&self) -> Option<i64> {
        self.idle_timeout_ms
    }
}

#[derive(Debug, Clone, Copy)]
struct PartitionState {
    /// Highest event time seen, `i64::MIN` before the first record.
    max_event_time: Timestamp,
    /// Processing time of the last record (or of registration).
    last_activity_ms: Timestamp,
    idle: bool,
    finished: bool,
}

impl PartitionState {
    fn watermark(&self, bound: i64) -> Timestamp {
        if self.max_event_time == i64::MIN {
            i64::MIN
        } else {
            self.max_event_time.saturating_sub(bound).saturating_sub(1)
        }
    }
}

/// The persisted form of a [`WatermarkTracker`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerSnapshot {
    /// The combined watermark.
    pub current: Watermark,
    /// `(partition, highest event time, finished)`.
    pub partitions: Vec<(PartitionId, Timestamp, bool)>,
}

/// Tracks one watermark per partition and combines them.
///
/// # Examples
/// ```
/// use ferroflow_core::time::{Watermark, WatermarkStrategy, WatermarkTracker};
/// let mut t = WatermarkTracker::new(WatermarkStrategy::monotonous());
/// t.observe(0, 100, 0);
/// t.observe(1, 50, 0);
/// assert_eq!(t.advance(0), Some(Watermark(49)));   // min over partitions, minus 1
/// t.finish(1);
/// assert_eq!(t.advance(0), Some(Watermark(99)));   // a finished partition stops holding it back
/// ```
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    strategy: WatermarkStrategy,
    partitions: AHashMap<PartitionId, PartitionState>,
    current: Watermark,
}

impl WatermarkTracker {
    /// A tracker with no partitions yet.
    pub fn new(strategy: WatermarkStrategy) -> Self {
        Self { strategy, partitions: AHashMap::new(), current: Watermark::MIN }
    }

    /// The strategy in use.
    pub fn strategy(&self) -> &WatermarkStrategy {
        &self.strategy
    }

    /// Declares a partition before its first record: it holds the watermark back until it delivers
    /// or goes idle.
    pub fn register(&mut self, partition: PartitionId, now_ms: Timestamp) {
        self.partitions.entry(partition).or_insert(PartitionState {
            max_event_time: i64::MIN,
            last_activity_ms: now_ms,
            idle: false,
            finished: false,
        });
    }

    /// Notes a record of `partition` at `event_time`, seen at processing time `now_ms`.
    #[inline]
    pub fn observe(&mut self, partition: PartitionId, event_time: Timestamp, now_ms: Timestamp) {
        let p = self.partitions.entry(partition).or_insert(PartitionState {
            max_event_time: i64::MIN,
            last_activity_ms: now_ms,
            idle: false,
            finished: false,
        });
        if event_time > p.max_event_time {
            p.max_event_time = event_time;
        }
        p.last_activity_ms = now_ms;
        p.idle = false;
    }

    /// Notes that `partition` still has data to read (the source says so) although none of its
    /// records arrived: it is not idle.
    pub fn touch(&mut self, partition: PartitionId, now_ms: Timestamp) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.last_activity_ms = now_ms;
            p.idle = false;
        }
    }

    /// Marks a partition as finished: it no longer holds the watermark back.
    pub fn finish(&mut self, partition: PartitionId) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.finished = true;
        } else {
            self.partitions.insert(
                partition,
                PartitionState { max_event_time: i64::MIN, last_activity_ms: 0, idle: false, finished: true },
            );
        }
    }

    /// Forgets a partition (it was revoked from this instance).
    pub fn remove(&mut self, partition: PartitionId) {
        self.partitions.remove(&partition);
    }

    /// Marks every partition finished: the next [`advance`](Self::advance) returns [`Watermark::MAX`].
    pub fn finish_all(&mut self) {
        for p in self.partitions.values_mut() {
            p.finished = true;
        }
        if self.partitions.is_empty() {
            self.current = Watermark::MAX;
        }
    }

    /// The combined watermark so far.
    pub fn current(&self) -> Watermark {
        self.current
    }

    /// Partitions currently idle.
    pub fn idle_partitions(&self) -> Vec<PartitionId> {
        let mut v: Vec<_> = self.partitions.iter().filter(|(_, p)| p.idle).map(|(id, _)| *id).collect();
        v.sort_unstable();
        v
    }

    /// Per-partition watermarks (finished partitions report [`Watermark::MAX`]).
    pub fn partition_watermarks(&self) -> Vec<(PartitionId, Watermark)> {
        let strategy = self.strategy;
        let mut v: Vec<_> = self
            .partitions
            .iter()
            .map(|(id, p)| {
                let w =
                    if p.finished { Watermark::MAX } else { Watermark(p.watermark(strategy.timing(*id).0)) };
                (*id, w)
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Re-evaluates idleness at `now_ms` and returns the new combined watermark if it moved forward.
    pub fn advance(&mut self, now_ms: Timestamp) -> Option<Watermark> {
        let strategy = self.strategy;
        let mut min: Option<Timestamp> = None;
        let mut all_finished = !self.partitions.is_empty();
        for (id, p) in &mut self.partitions {
            if p.finished {
                continue;
            }
            all_finished = false;
            let (bound, idle_after) = strategy.timing(*id);
            if let Some(t) = idle_after
                && now_ms.saturating_sub(p.last_activity_ms) >= t
            {
                p.idle = true;
            }
            if p.idle {
                continue;
            }
            let w = p.watermark(bound);
            min = Some(min.map_or(w, |m| m.min(w)));
        }
        let candidate = if all_finished {
            Watermark::MAX
        } else {
            match min {
                Some(m) => Watermark(m),
                // Every live partition is idle: hold the watermark where it is.
                None => return None,
            }
        };
        if candidate > self.current {
            self.current = candidate;
            Some(candidate)
        } else {
            None
        }
    }

    /// Restores the combined watermark after a restart (it must not go backwards across restores).
    pub fn restore_current(&mut self, watermark: Watermark) {
        self.current = watermark;
    }

    /// What a checkpoint keeps: the combined watermark and, per partition, the highest event time
    /// and whether it finished. Idleness is not kept: it is a matter of processing time, and a
    /// restored partition gets a fresh idle timeout.
    pub fn export(&self) -> TrackerSnapshot {
        let mut partitions: Vec<_> =
            self.partitions.iter().map(|(id, p)| (*id, p.max_event_time, p.finished)).collect();
        partitions.sort_unstable();
        TrackerSnapshot { current: self.current, partitions }
    }

    /// Restores what [`export`](Self::export) produced; `now_ms` starts the idle timeouts afresh.
    pub fn import(&mut self, snapshot: &TrackerSnapshot, now_ms: Timestamp) {
        self.current = snapshot.current;
        self.partitions = snapshot
            .partitions
            .iter()
            .map(|&(id, max_event_time, finished)| {
                (id, PartitionState { max_event_time, last_activity_ms: now_ms, idle: false, finished })
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounded(ms: u64) -> WatermarkTracker {
        WatermarkTracker::new(WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(ms)))
    }

    #[test]
    fn watermark_is_max_minus_bound_minus_one() {
        let mut t = bounded(10);
        t.observe(0, 100, 0);
        assert_eq!(t.advance(0), Some(Watermark(89)));
        t.observe(0, 95, 0);
        assert_eq!(t.advance(0), None, "an older record must not move the watermark");
    }

    #[test]
    fn registered_partition_without_data_holds_watermark_until_idle() {
        let mut t = WatermarkTracker::new(
            WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO)
                .with_idleness(Duration::from_millis(100)),
        );
        t.register(1, 0);
        t.observe(0, 500, 0);
        assert_eq!(t.advance(50), None, "partition 1 has no data yet and is not idle");
        t.observe(0, 600, 120);
        assert_eq!(t.advance(120), Some(Watermark(599)), "partition 1 went idle after 100 ms");
        assert_eq!(t.idle_partitions(), vec![1]);
    }

    #[test]
    fn idle_partition_that_resumes_holds_again_but_never_backwards() {
        let mut t =
            WatermarkTracker::new(WatermarkStrategy::monotonous().with_idleness(Duration::from_millis(10)));
        t.observe(0, 1000, 0);
        t.observe(1, 100, 0);
        assert_eq!(t.advance(0), Some(Watermark(99)));
        t.observe(0, 2000, 20);
        assert_eq!(t.advance(20), Some(Watermark(1999)), "partition 1 idle");
        t.observe(1, 150, 21);
        assert_eq!(t.advance(21), None, "resumed partition is behind; watermark stays");
        assert_eq!(t.current(), Watermark(1999));
    }

    #[test]
    fn all_idle_holds_and_all_finished_is_max() {
        let mut t =
            WatermarkTracker::new(WatermarkStrategy::monotonous().with_idleness(Duration::from_millis(10)));
        t.observe(0, 1000, 0);
        assert_eq!(t.advance(0), Some(Watermark(999)));
        assert_eq!(t.advance(100), None, "all idle: hold");
        t.finish(0);
        assert_eq!(t.advance(100), Some(Watermark::MAX));
    }

    #[test]
    fn each_input_reports_its_partitions_by_its_own_bound_and_idles_by_its_own_timeout() {
        let events = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(50));
        let table = WatermarkStrategy::monotonous().with_idleness(Duration::from_millis(10));
        let mut t = WatermarkTracker::new(events.with_second_input(table));
        let right = RIGHT_PARTITIONS;
        t.observe(0, 1_000, 0);
        t.observe(right + 1, 500, 0);
        assert_eq!(t.partition_watermarks(), [(0, Watermark(949)), (right + 1, Watermark(499))]);
        assert_eq!(t.advance(5), Some(Watermark(499)));
        // The first input has no idle timeout: silent for long, it still holds.
        t.observe(right + 1, 2_000, 100);
        assert_eq!(t.advance(100), Some(Watermark(949)));
        assert_eq!(t.advance(1_000_000), None, "the table idles, the events never do: they hold at 949");
    }

    #[test]
    fn from_millis_rejects_negative() {
        assert!(WatermarkStrategy::from_millis(-1, None).is_err());
        assert!(WatermarkStrategy::from_millis(0, Some(0)).is_err());
        assert!(WatermarkStrategy::from_millis(0, Some(1)).is_ok());
    }
}
