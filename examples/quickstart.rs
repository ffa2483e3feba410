//! The library quickstart: count clicks per user in one-minute event-time windows, with RocksDB
//! state and checkpoints to a `file://` store. The README shows this file, and tests it.
//!
//! Run with `cargo run --example quickstart`; run it again and it resumes after the last click
//! (nothing is counted twice, so it prints no new window).

use ferroflow::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let clicks = [("alice", 1_000i64), ("bob", 2_000), ("alice", 30_000), ("alice", 61_000)]; // (user, ms)
    let job = Stream::<(&str, i64)>::new()
        .assign_timestamps(|c| c.1, WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5)))
        .key_by(|c| Key::from(c.0))
        .window(WindowSpec::tumbling(Duration::from_secs(60))?, Count)
        .id("clicks-per-minute");
    let mut runner = Runner::builder()
        .state(RocksDb::at("/tmp/ferroflow-quickstart/state"))
        .checkpoints("file:///tmp/ferroflow-quickstart/checkpoints")
        .every(Duration::from_secs(10))
        .build()?;
    let (sink, rows) = CollectSink::with_handle();
    let dead_letters = JsonLinesSink::append("/tmp/ferroflow-quickstart/dead-letters.jsonl").await?;
    let report =
        runner.job(MemorySource::of(clicks), job).sink(sink).dead_letters(dead_letters).run().await?;
    for row in rows.take() {
        println!("{} [{}, {}) count={}", row.key, row.window_start, row.window_end, row.value);
    }
    println!("resumed: {:?}, identity holds: {}", report.restored_from, report.counters.identity_holds());
    Ok(())
}
