//! Events enriched with the user's segment valid when they happened, then counted per segment and
//! minute: a broadcast table join followed by a window.
//!
//! Run with `cargo run --example user_segments`.
//!
//! The users table is a changelog (user, valid from, segment) read by every task of the job
//! whole, so the events need not be partitioned by user. Each event waits until the table's
//! watermark has passed its time, so a segment change on its way is never missed: u1 turns `pro`
//! at minute 2, and its event at minute 3 counts as `pro` however the two inputs' batches
//! interleave.
#![allow(clippy::print_stdout)]

use ferroflow::prelude::*;
use ferroflow::source::Source;

/// A page view: user, event time (ms).
pub type View = (String, i64);
/// A version of a user's segment: user, valid from (ms), segment.
pub type Segment = (String, i64, String);

const MINUTE: i64 = 60_000;

/// The users table's feed gating the views' source.
pub fn source<S: Source<View>>(
    users: &BroadcastTable<Segment>,
    views: S,
    changes: Vec<Segment>,
) -> impl Source<View> {
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5));
    users
        .loaded_from(
            MemorySource::of(changes).with_batch_size(1),
            |s| Key::from(s.0.as_str()),
            |s| s.1,
            strategy,
        )
        .gating(views)
}

/// The job: each view with its user's segment then (`unknown` before the first), counted per
/// segment in one-minute windows.
pub fn job(
    users: &BroadcastTable<Segment>,
) -> Result<impl IntoOperator<Op: Operator<In = View, Out = WindowResult<u64>>> + use<>, ConfigError> {
    let with_segment = BroadcastJoin::left_outer(users, |v: &View, s: Option<&Segment>| {
        (v.0.clone(), s.map_or_else(|| "unknown".to_owned(), |s| s.2.clone()))
    });
    Ok(Stream::<View>::new()
        .assign_timestamps(|v| v.1, WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5)))
        .key_by(|v| Key::from(v.0.as_str()))
        .broadcast_join(with_segment)
        .id("views-with-segment")
        .key_by(|(_, segment): &(String, String)| Key::from(segment.as_str()))
        .window(WindowSpec::tumbling(Duration::from_secs(60))?, Count)
        .id("views-per-segment"))
}

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let users = BroadcastTable::new("users");
    let changes = vec![
        ("u1".to_owned(), 0, "free".to_owned()),
        ("u2".to_owned(), 0, "pro".to_owned()),
        ("u1".to_owned(), 2 * MINUTE, "pro".to_owned()),
    ];
    let views: Vec<View> =
        [("u1", 30_000), ("u2", 40_000), ("u3", 50_000), ("u1", 3 * MINUTE), ("u2", 3 * MINUTE + 1)]
            .into_iter()
            .map(|(u, t)| (u.to_owned(), t))
            .collect();
    let (sink, rows) = CollectSink::with_handle();
    let report = Runner::default()
        .job(source(&users, MemorySource::of(views).with_batch_size(2), changes), job(&users)?)
        .sink(sink)
        .discard_dead_letters()
        .run()
        .await?;

    let mut counts: Vec<(String, i64, u64)> =
        rows.take().into_iter().map(|r| (r.key.to_string(), r.window_start / MINUTE, r.value)).collect();
    counts.sort();
    for (segment, minute, n) in &counts {
        println!("minute {minute}: {n} view(s) by {segment} users");
    }
    let expected = [
        ("free".to_owned(), 0, 1),
        ("pro".to_owned(), 0, 1),
        ("pro".to_owned(), 3, 2),
        ("unknown".to_owned(), 0, 1),
    ];
    if counts != expected || !report.counters.identity_holds() {
        return Err(format!("expected {expected:?}, got {counts:?} ({:?})", report.counters).into());
    }
    Ok(())
}
