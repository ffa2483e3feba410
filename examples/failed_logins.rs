//! Fraud rule with list state and a time to live: alert when a user has more than 3 failed logins
//! within 10 minutes of event time, once per burst.
//!
//! Run with `cargo run --example failed_logins`.
//!
//! Each user keeps the times of their recent failures (a list whose elements expire 10 minutes
//! of event time after they were added, so a quiet user holds nothing) and the time of their last
//! alert. A failure counts the failures of the 10 minutes up to it; a fourth one alerts, unless
//! the user was alerted in the last 10 minutes. A successful login clears the failures.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use ferroflow::prelude::*;

/// How many failures are allowed within [`WINDOW_MS`].
pub const MAX_FAILURES: usize = 3;
/// The rule's window.
pub const WINDOW: Duration = Duration::from_secs(10 * 60);
/// The rule's window, ms.
pub const WINDOW_MS: i64 = 10 * 60 * 1_000;

const FAILURES: ListState<i64> = ListState::new("failures").with_ttl(StateTtl::event_time(WINDOW));
const LAST_ALERT: ValueState<i64> = ValueState::new("last-alert").with_ttl(StateTtl::event_time(WINDOW));

/// A login attempt: user, event time, success.
pub type Login = (&'static str, i64, bool);

/// An alert: user, failures in the window, time of the failure that crossed the limit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Alert {
    /// Who.
    pub user: String,
    /// Failures within the window up to `at`.
    pub failures: usize,
    /// The failure that raised it.
    pub at: i64,
}

/// Raises an [`Alert`] for more than [`MAX_FAILURES`] failed logins in [`WINDOW_MS`].
#[derive(Debug)]
pub struct FailedLogins;

impl KeyedFunction for FailedLogins {
    type In = Login;
    type Out = Alert;

    fn declare(&self, states: &mut StateDeclarations) {
        states.list(FAILURES);
        states.value(LAST_ALERT);
    }

    fn process(&mut self, (_, at, ok): Login, ctx: &mut KeyedContext<'_, Alert>) -> Result<(), Rejection> {
        if ok {
            ctx.list(FAILURES)?.clear();
            return Ok(());
        }
        let mut failures = ctx.list(FAILURES)?;
        failures.add(at);
        let recent = failures.iter().filter(|t| **t > at.saturating_sub(WINDOW_MS) && **t <= at).count();
        if recent <= MAX_FAILURES {
            return Ok(());
        }
        let alerted_lately = ctx.value(LAST_ALERT)?.is_some_and(|last| at.saturating_sub(*last) < WINDOW_MS);
        if !alerted_lately {
            ctx.set_value(LAST_ALERT, at)?;
            let user = ctx.key().as_str().unwrap_or_default().to_owned();
            ctx.emit(Alert { user, failures: recent, at });
        }
        Ok(())
    }
}

/// The job: logins in, alerts out (records may be 30 s out of order).
pub fn job() -> impl IntoOperator<Op: Operator<In = Login, Out = Alert>> {
    Stream::<Login>::new()
        .assign_timestamps(
            |l: &Login| l.1,
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(30)),
        )
        .key_by(|l: &Login| Key::from(l.0))
        .keyed_process(FailedLogins)
        .id("failed-logins")
}

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let minute = 60_000;
    let logins: Vec<Login> = vec![
        ("ana", 0, false),
        ("ana", minute, false),
        ("bob", minute, false),
        ("ana", 2 * minute, false),
        ("ana", 3 * minute, false), // ana's 4th failure in 10 min: alert
        ("ana", 4 * minute, false), // already alerted within 10 min
        ("bob", 2 * minute, true),  // bob logs in: his failures are cleared
        ("bob", 3 * minute, false),
        ("bob", 4 * minute, false),
        ("bob", 5 * minute, false), // 3 failures since the success: no alert
        ("eve", 10 * minute, false),
        ("eve", 15 * minute, false),
        ("eve", 21 * minute, false), // the failure at minute 10 is out of the window
        ("eve", 22 * minute, false),
        ("eve", 23 * minute, false), // 4 within 10 min (15, 21, 22, 23): alert
    ];
    let source = MemorySource::of(logins).with_batch_size(2);
    let (sink, rows) = CollectSink::with_handle();
    let report = Runner::default().job(source, job()).sink(sink).discard_dead_letters().run().await?;

    let mut alerts = rows.take();
    alerts.sort();
    for a in &alerts {
        println!("{} had {} failed logins in 10 minutes up to minute {}", a.user, a.failures, a.at / minute);
    }
    let got: Vec<(&str, usize, i64)> =
        alerts.iter().map(|a| (a.user.as_str(), a.failures, a.at / minute)).collect();
    let expected = [("ana", 4, 3), ("eve", 4, 23)];
    if got != expected || !report.counters.identity_holds() {
        return Err(format!("expected {expected:?}, got {got:?} ({:?})", report.counters).into());
    }
    Ok(())
}
