//! Exponential backoff with jitter, and the start-up requests that retry until a deadline.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use clickhouse::query::Query;
use clickhouse::{RowOwned, RowRead};

use crate::config::ClickHouseConfig;
use crate::error::{ClickHouseError, ErrorClass, classify};
use crate::stats::SinkStats;

/// Delays between attempts: `initial * 2^(attempt-1)` capped at `max`, then "equal jitter" (a
/// random point in the upper half) so that many sinks do not retry in lockstep.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    initial_ms: u64,
    max_ms: u64,
}

impl Backoff {
    pub(crate) fn new(config: &ClickHouseConfig) -> Self {
        Self { initial_ms: config.retry_initial_backoff_ms, max_ms: config.retry_max_backoff_ms }
    }

    /// The delay after failed attempt number `attempt` (1-based), with `unit` in `[0, 1)`
    /// choosing the jitter.
    pub(crate) fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        let base = self.initial_ms.saturating_mul(1u64 << exp).min(self.max_ms);
        let half = base / 2;
        let jitter = ((base - half) as f64 * unit.clamp(0.0, 1.0)) as u64;
        Duration::from_millis(half + jitter)
    }

    /// The delay after failed attempt number `attempt`, with random jitter.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, random_unit())
    }
}

/// A random number in `[0, 1)`: std gives every `RandomState` fresh random keys, which is
/// random enough for jitter without a dependency.
fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs the start-up queries: transient failures are retried with backoff until
/// `startup_timeout_ms`, then reported as [`ClickHouseError::Unavailable`]; other failures at
/// once, as the precise error they stand for.
#[derive(Debug)]
pub(crate) struct Requests<'a> {
    pub(crate) config: &'a ClickHouseConfig,
    pub(crate) started: Instant,
    pub(crate) stats: &'a SinkStats,
}

impl Requests<'_> {
    async fn run<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, ClickHouseError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = clickhouse::error::Result<T>>,
    {
        let backoff = Backoff::new(self.config);
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let budget = Duration::from_millis(self.config.startup_timeout_ms);
        let mut n: u32 = 0;
        loop {
            n = n.saturating_add(1);
            let result = tokio::time::timeout(timeout, attempt())
                .await
                .unwrap_or(Err(clickhouse::error::Error::TimedOut));
            let error = match result {
                Ok(value) => return Ok(value),
                Err(e) => classify(&e),
            };
            self.stats.failed(error.class);
            if error.class != ErrorClass::Transient {
                return Err(error.into_error(self.config, what));
            }
            let waited = self.started.elapsed();
            if waited >= budget {
                return Err(ClickHouseError::Unavailable {
                    url: self.config.url.clone(),
                    waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                    message: error.message,
                });
            }
            let delay = backoff.delay(n).min(budget - waited);
            tracing::warn!(
                url = %self.config.url,
                attempt = n,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %error.message,
                "ClickHouse start-up: {what} failed, retrying"
            );
            self.stats.retried();
            tokio::time::sleep(delay).await;
        }
    }

    pub(crate) async fn fetch_optional<T: RowOwned + RowRead>(
        &self,
        query: impl Fn() -> Query,
        what: &str,
    ) -> Result<Option<T>, ClickHouseError> {
        self.run(what, || query().fetch_optional::<T>()).await
    }

    pub(crate) async fn fetch_all<T: RowOwned + RowRead>(
        &self,
        query: impl Fn() -> Query,
        what: &str,
    ) -> Result<Vec<T>, ClickHouseError> {
        self.run(what, || query().fetch_all::<T>()).await
    }

    pub(crate) async fn fetch_one<T: RowOwned + RowRead>(
        &self,
        query: impl Fn() -> Query,
        what: &str,
    ) -> Result<T, ClickHouseError> {
        self.run(what, || query().fetch_one::<T>()).await
    }

    pub(crate) async fn execute(&self, query: impl Fn() -> Query, what: &str) -> Result<(), ClickHouseError> {
        self.run(what, || query().execute()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff { initial_ms, max_ms }
    }

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        let b = backoff(100, 1_000);
        assert_eq!(b.delay_with(1, 0.0), Duration::from_millis(50), "lowest point: half the base");
        assert_eq!(b.delay_with(1, 0.999_999), Duration::from_millis(99));
        assert_eq!(b.delay_with(2, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay_with(3, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay_with(5, 0.0), Duration::from_millis(500), "capped at max (1000) / 2");
        assert_eq!(b.delay_with(u32::MAX, 0.5), Duration::from_millis(750), "no overflow on huge attempts");
    }

    #[test]
    fn random_delays_stay_within_bounds() {
        let b = backoff(100, 10_000);
        for attempt in 1..40 {
            let d = b.delay(attempt).as_millis() as u64;
            let base = (100u64 << (attempt - 1).min(32)).min(10_000);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d} ms outside [{}, {base}]", base / 2);
        }
    }
}
