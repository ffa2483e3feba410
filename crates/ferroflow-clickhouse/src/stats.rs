//! Counters of the sink, shared with whoever exports them (Prometheus, logs, tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::ErrorClass;

/// Insert durations kept for exporters between two reads.
const RECENT_INSERTS: usize = 1024;

#[derive(Debug, Default)]
struct Counters {
    rows_written: AtomicU64,
    batches_written: AtomicU64,
    retries: AtomicU64,
    errors_transient: AtomicU64,
    errors_permanent: AtomicU64,
    errors_fatal: AtomicU64,
    rows_rejected: AtomicU64,
    last_insert_latency_us: AtomicU64,
    insert_latency_sum_us: AtomicU64,
    insert_latency_count: AtomicU64,
    /// The latest insert durations, numbered by `insert_latency_count`, for histogram exporters.
    recent: std::sync::Mutex<std::collections::VecDeque<(u64, Duration)>>,
}

/// Live counters of one sink; clones share them. Updated once per INSERT, never per row.
///
/// # Examples
/// ```
/// use ferroflow_clickhouse::SinkStats;
/// let stats = SinkStats::default();
/// let exported = stats.clone();
/// assert_eq!(exported.snapshot().rows_written, 0);
/// ```
#[derive(Debug, Clone, Default)]
pub struct SinkStats(Arc<Counters>);

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinkStatsSnapshot {
    /// Rows the server accepted.
    pub rows_written: u64,
    /// Successful INSERT statements.
    pub batches_written: u64,
    /// Attempts repeated after a transient failure.
    pub retries: u64,
    /// Failed requests that were retried (network, timeouts, overload).
    pub errors_transient: u64,
    /// INSERTs the server refused because of their data (each leads to splitting the rows).
    pub errors_permanent: u64,
    /// Failures that stopped the sink (misconfiguration).
    pub errors_fatal: u64,
    /// Rows handed to the rejection callback.
    pub rows_rejected: u64,
    /// Duration of the last successful INSERT, in microseconds.
    pub last_insert_latency_us: u64,
    /// Sum of the durations of all successful INSERTs, in microseconds.
    pub insert_latency_sum_us: u64,
    /// Number of durations in `insert_latency_sum_us`.
    pub insert_latency_count: u64,
}

impl SinkStats {
    /// The current values.
    pub fn snapshot(&self) -> SinkStatsSnapshot {
        let c = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SinkStatsSnapshot {
            rows_written: get(&c.rows_written),
            batches_written: get(&c.batches_written),
            retries: get(&c.retries),
            errors_transient: get(&c.errors_transient),
            errors_permanent: get(&c.errors_permanent),
            errors_fatal: get(&c.errors_fatal),
            rows_rejected: get(&c.rows_rejected),
            last_insert_latency_us: get(&c.last_insert_latency_us),
            insert_latency_sum_us: get(&c.insert_latency_sum_us),
            insert_latency_count: get(&c.insert_latency_count),
        }
    }

    /// Durations of the successful inserts numbered after `seen` (a count of inserts), oldest
    /// first: how exporters feed a latency histogram. The last 1024 are kept.
    pub fn insert_latencies_after(&self, seen: u64) -> Vec<(u64, Duration)> {
        self.0
            .recent
            .lock()
            .map(|r| r.iter().filter(|(n, _)| *n > seen).copied().collect())
            .unwrap_or_default()
    }

    /// Rows the server accepted so far.
    pub fn rows_written(&self) -> u64 {
        self.0.rows_written.load(Ordering::Relaxed)
    }

    /// Attempts repeated after a transient failure so far.
    pub fn retries(&self) -> u64 {
        self.0.retries.load(Ordering::Relaxed)
    }

    /// Rows rejected so far.
    pub fn rows_rejected(&self) -> u64 {
        self.0.rows_rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn inserted(&self, rows: usize, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let c = &self.0;
        c.rows_written.fetch_add(rows as u64, Ordering::Relaxed);
        c.batches_written.fetch_add(1, Ordering::Relaxed);
        c.last_insert_latency_us.store(us, Ordering::Relaxed);
        c.insert_latency_sum_us.fetch_add(us, Ordering::Relaxed);
        let n = c.insert_latency_count.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut r) = c.recent.lock() {
            if r.len() == RECENT_INSERTS {
                r.pop_front();
            }
            r.push_back((n, took));
        }
    }

    pub(crate) fn failed(&self, class: ErrorClass) {
        let c = &self.0;
        let counter = match class {
            ErrorClass::Transient => &c.errors_transient,
            ErrorClass::Permanent => &c.errors_permanent,
            ErrorClass::Fatal => &c.errors_fatal,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retried(&self) {
        self.0.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self, rows: u64) {
        self.0.rows_rejected.fetch_add(rows, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_insert_durations_are_numbered_for_exporters() {
        let stats = SinkStats::default();
        stats.inserted(10, Duration::from_millis(3));
        stats.inserted(20, Duration::from_millis(7));
        let all = stats.insert_latencies_after(0);
        assert_eq!(all, vec![(1, Duration::from_millis(3)), (2, Duration::from_millis(7))]);
        assert_eq!(stats.insert_latencies_after(1), vec![(2, Duration::from_millis(7))]);
        for _ in 0..2000 {
            stats.inserted(1, Duration::from_millis(1));
        }
        assert_eq!(stats.insert_latencies_after(0).len(), RECENT_INSERTS, "bounded");
    }

    #[test]
    fn clones_share_counters_and_latency_accumulates() {
        let stats = SinkStats::default();
        let view = stats.clone();
        stats.inserted(10, Duration::from_micros(300));
        stats.inserted(5, Duration::from_micros(100));
        stats.failed(ErrorClass::Transient);
        stats.retried();
        stats.failed(ErrorClass::Permanent);
        stats.rejected(1);
        let s = view.snapshot();
        assert_eq!((s.rows_written, s.batches_written), (15, 2));
        assert_eq!(
            (s.last_insert_latency_us, s.insert_latency_sum_us, s.insert_latency_count),
            (100, 400, 2)
        );
        assert_eq!((s.errors_transient, s.errors_permanent, s.errors_fatal), (1, 1, 0));
        assert_eq!((s.retries, s.rows_rejected), (1, 1));
    }
}
