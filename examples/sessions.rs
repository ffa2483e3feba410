//! Session windows with allowed lateness: a late click that still falls within the allowed
//! lateness updates an already emitted session (revision 1), the session is later marked final,
//! and a click that comes after that goes to the dead letters as `late_event`.
//!
//! Run with `cargo run --example sessions`.
//!
//! The source delivers one record per batch so the watermark moves between records (watermarks
//! advance at batch boundaries); the comments give the watermark each record leaves behind.

use ferroflow::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // (user, event time in ms). In-order input: watermark = highest event time - 1.
    let clicks = vec![
        ("alice", 0i64),   // alice's session opens: [0, 30000)
        ("alice", 10_000), // grows to [0, 40000)
        ("alice", 20_000), // grows to [0, 50000)
        ("bob", 100_000),  // watermark 99999 passes 49999: alice's session fires, revision 0
        ("alice", 25_000), // late but within 60 s of lateness: merges into [0, 55000), revision 1
        ("bob", 200_000),  // watermark 199999 passes 54999 + 60000: alice's final marker, revision 2
        ("alice", 30_000), // too late: its session would have been dropped already -> late_event
    ];
    // Offsets make dead letters traceable: the late click is offset 6 of partition 0.
    let records = clicks
        .into_iter()
        .enumerate()
        .map(|(i, c)| Record::new(c, 0).with_position(SourcePosition::new(0, i as u64)))
        .collect();
    let source = MemorySource::new(records).with_batch_size(1);

    let spec = WindowSpec::session(Duration::from_secs(30))?.with_allowed_lateness(Duration::from_secs(60));
    let job = Stream::<(&str, i64)>::new()
        .assign_timestamps(|c| c.1, WatermarkStrategy::monotonous())
        .key_by(|c| Key::from(c.0))
        .window(spec, Count);

    let (sink, dead_letters) = (CollectSink::new(), CollectSink::new());
    let (rows, late) = (sink.handle(), dead_letters.handle());
    let report = Runner::default().job(source, job).sink(sink).dead_letters(dead_letters).run().await?;

    println!("session rows (gap 30 s, allowed lateness 60 s), in emission order:");
    for row in rows.take() {
        println!(
            "  {:<6} [{:>6}, {:>6}) clicks={} revision={} final={}",
            row.key.to_string(),
            row.window_start,
            row.window_end,
            row.value,
            row.revision,
            row.is_final
        );
    }
    println!("dead letters:");
    for dl in late.take() {
        println!("  {} at {}: {}", dl.reason, dl.position, dl.detail);
    }
    let c = &report.counters;
    println!(
        "records_in={} windowed={} late={} window_rows={} identity holds: {}",
        c.records_in,
        c.records_windowed,
        c.dead_letters(ferroflow::DeadLetterReason::LateEvent),
        c.window_rows_emitted,
        c.identity_holds()
    );
    Ok(())
}
