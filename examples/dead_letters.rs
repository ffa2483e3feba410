//! Dead letters and record accounting: a JSON-lines file with good, malformed, invalid and late
//! lines goes through decode → validate → filter → event-time windows. Everything that cannot go
//! on lands in a dead-letter file as one envelope per record, and the counters prove that no
//! record was lost.
//!
//! Run with `cargo run --example dead_letters`.
//!
//! Why the file is a couple of MiB: the watermark advances between batches (as Flink's periodic
//! watermarks advance between emissions), and `JsonLinesSource` reads a file in chunks of about
//! 1 MiB, one batch each. The late lines sit at the end of the file, in a later batch than the
//! records that pushed the watermark past their window; in the same batch they would still count.

use std::fmt::Write as _;

use ferroflow::prelude::*;
use serde::{Deserialize, Serialize};

/// One click as it appears in the input file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Click {
    user: String,
    /// Event time, ms since the epoch.
    ts: i64,
    page: String,
    ua: String,
}

// Dead letters raised after decoding keep the record's JSON encoding as their original bytes.

const USERS: [&str; 3] = ["alice", "bob", "carol"];
const GOOD_LINES: usize = 13_000;
/// Event time covered by the good lines: 30 minutes.
const SPAN_MS: i64 = 30 * 60 * 1000;
const UA: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";

/// Writes the input: 13 000 good clicks over 30 minutes (every 40th a health check), with two
/// malformed lines and one click without a user in between, and two late clicks at the end.
fn input_file() -> String {
    let mut s = String::new();
    for i in 0..GOOD_LINES {
        let ts = i as i64 * SPAN_MS / GOOD_LINES as i64;
        let user = USERS[i % USERS.len()];
        let page = if i % 40 == 0 { "/healthz".to_string() } else { format!("/products/{}", i % 97) };
        let _ = writeln!(s, r#"{{"user":"{user}","ts":{ts},"page":"{page}","ua":"{UA}"}}"#);
        match i {
            100 => s.push_str("{\"user\":\"bob\",\"ts\":\n"), // truncated record
            5_000 => s.push_str("not json at all\n"),
            9_000 => {
                let _ = writeln!(s, r#"{{"user":"","ts":{ts},"page":"/cart","ua":"{UA}"}}"#);
            }
            _ => {}
        }
    }
    // Two clicks from the first minute, arriving after the watermark has passed their window.
    let _ = writeln!(s, r#"{{"user":"alice","ts":10000,"page":"/late","ua":"{UA}"}}"#);
    let _ = writeln!(s, r#"{{"user":"bob","ts":59000,"page":"/late","ua":"{UA}"}}"#);
    s
}

fn validate(c: &Click) -> Result<Click, Rejection> {
    if c.user.is_empty() {
        return Err(Rejection::contract("field `user` must not be empty"));
    }
    Ok(c.clone())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("clicks.jsonl");
    let dlq_path = dir.path().join("dead-letters.jsonl");
    std::fs::write(&input, input_file())?;
    println!("input: {} ({} bytes)", input.display(), std::fs::metadata(&input)?.len());

    let job = Stream::<bytes::Bytes>::new()
        .decode_json::<Click>() // malformed lines -> decode_error
        .try_map(validate) // broken contract -> contract_violation
        .filter(|c| c.page != "/healthz") // counted as filtered, not lost
        .assign_timestamps(|c| c.ts, WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5)))
        .key_by(|c| Key::from(c.user.as_str()))
        .window(WindowSpec::tumbling(Duration::from_secs(600))?, Count); // too late -> late_event

    let source = JsonLinesSource::raw([&input]);
    let results = CollectSink::new();
    let rows = results.handle();
    let dead_letters = JsonLinesSink::create(&dlq_path).await?;
    let report = Runner::default().job(source, job).sink(results).dead_letters(dead_letters).run().await?;

    println!("\nwindow results (10-minute tumbling windows, clicks per user):");
    for row in rows.take() {
        println!(
            "  {:<6} [{:>7}, {:>7}) count={:<4} final={}",
            row.key.to_string(),
            row.window_start,
            row.window_end,
            row.value,
            row.is_final
        );
    }

    println!("\ndead-letter envelopes in {}:", dlq_path.display());
    let envelopes = std::fs::read_to_string(&dlq_path)?;
    for line in envelopes.lines() {
        println!("  {line}");
    }
    // Envelopes are plain JSON: they can be read back (and replayed) as `DeadLetter`s.
    let parsed: Vec<DeadLetter> = envelopes.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let late = parsed.iter().filter(|d| d.reason == DeadLetterReason::LateEvent).count();
    println!("  ({} envelopes read back, {late} of them late events)", parsed.len());

    let c = &report.counters;
    println!("\ndead letters by reason: {:?}", c.dead_letters_by_reason);
    println!("accounting identity: in + expanded = windowed + out + filtered + deduplicated + dead_lettered");
    println!(
        "                     {} + {} = {} + {} + {} + {} + {}  -> {}",
        c.records_in,
        c.records_expanded,
        c.records_windowed,
        c.records_out,
        c.records_filtered,
        c.records_deduplicated,
        c.records_dead_lettered,
        if c.identity_holds() { "holds" } else { "BROKEN" }
    );
    if !c.identity_holds() {
        return Err("record accounting identity does not hold".into());
    }
    Ok(())
}
