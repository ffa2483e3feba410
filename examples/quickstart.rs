//! The library quickstart: count clicks per user in one-minute event-time windows.
//!
//! Run with `cargo run --example quickstart`.

use std::time::Duration;

use ferroflow::sink::CollectSink;
use ferroflow::source::MemorySource;
use ferroflow::time::WatermarkStrategy;
use ferroflow::window::{Count, WindowSpec};
use ferroflow::{Key, Record, Runner, Stream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // (user, event time in ms): alice twice in the first minute, once in the second.
    let clicks = vec![("alice", 1_000i64), ("bob", 2_000), ("alice", 30_000), ("alice", 61_000)];
    let source = MemorySource::new(clicks.into_iter().map(|c| Record::new(c, 0)).collect());

    let job = Stream::<(&str, i64)>::new()
        .assign_timestamps(|c| c.1, WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5)))
        .key_by(|c| Key::from(c.0))
        .window(WindowSpec::tumbling(Duration::from_secs(60))?, Count);

    let (sink, dead_letters) = (CollectSink::new(), CollectSink::new());
    let rows = sink.handle();
    let report = Runner::default().job(source, job).sink(sink).dead_letters(dead_letters).run().await?;

    for row in rows.take() {
        println!(
            "{:<6} [{:>6}, {:>6}) count={} revision={} final={}",
            row.key.to_string(),
            row.window_start,
            row.window_end,
            row.value,
            row.revision,
            row.is_final
        );
    }
    let c = &report.counters;
    println!(
        "records_in={} windowed={} dead_lettered={} window_rows={} final_watermark={:?}",
        c.records_in,
        c.records_windowed,
        c.records_dead_lettered,
        c.window_rows_emitted,
        report.final_watermark
    );
    println!("accounting identity holds: {}", c.identity_holds());
    Ok(())
}
