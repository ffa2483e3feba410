//! Helpers shared by the engine's integration tests.
#![allow(dead_code, clippy::panic)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferroflow::time::ManualClock;
use ferroflow::{Runner, RunnerConfig};

/// Fails the test if `fut` does not finish within `secs` seconds.
pub async fn within<F: Future>(secs: u64, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {secs} s"),
    }
}

/// Polls `cond` every 2 ms until it holds (fails the test after `secs` seconds).
pub async fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    within(secs, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// A runner on `clock` (processing time moves only when the test sets it) that ticks every 5 ms
/// and keeps 4 batches in flight, so that a test sees idleness and timers act promptly.
pub fn runner_on(clock: &ManualClock) -> Runner {
    Runner::new(RunnerConfig {
        channel_capacity: 4,
        tick_interval: Duration::from_millis(5),
        clock: Arc::new(clock.clone()),
        ..RunnerConfig::default()
    })
}
