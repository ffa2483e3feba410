//! Join throughput: an interval join of two JSON inputs read as one stream, on one worker.
//!
//! ```text
//! cargo run --release --example join_throughput -- --events 10000000
//! cargo run --release --example join_throughput -- --events 10000000 --keys 100000 --bound-ms 5000
//! ```
//!
//! Writes two JSON-lines files of `events / 2` records each (`{"ad":…,"ts":…,"cost":…}`,
//! impressions and clicks, ads drawn uniformly from `--keys`, 1,000 records per second of event
//! time per input, 5 % up to 1 s out of order), then runs: both files as one `UnionSource` →
//! decode each side → timestamps (1 s out-of-orderness) → key by ad → interval join, inner,
//! `click.ts` within `impression.ts ± bound` → a null sink. Prints
//! `interval_join_events_per_sec=<N> peak_rss_mb=<M> pairs=<P>` (events counted over both inputs).
//! The temporal join's figure comes with the temporal join (issue 15).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use ferroflow::prelude::*;
use ferroflow::sink::NullSink;
use ferroflow::source::UnionSource;
use serde::{Deserialize, Serialize};

#[path = "support/events.rs"]
mod events;

/// One side's record.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Ad {
    ad: u64,
    ts: i64,
    cost: u32,
}

struct Args {
    events: u64,
    keys: u64,
    bound_ms: i64,
}

fn args() -> Result<Args, String> {
    let mut a = Args { events: 10_000_000, keys: 100_000, bound_ms: 5_000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: std::num::ParseIntError| format!("{flag}: {e}");
        match flag.as_str() {
            "--events" => a.events = value.parse().map_err(bad)?,
            "--keys" => a.keys = value.parse::<u64>().map_err(bad)?.max(1),
            "--bound-ms" => a.bound_ms = value.parse().map_err(bad)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// Writes `n` records of one input; `seed` makes the two inputs differ.
fn write_input(path: &Path, n: u64, keys: u64, seed: u64) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x = seed;
    let base: i64 = 1_700_000_000_000;
    for i in 0..n {
        // SplitMix64.
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut r = x;
        r = (r ^ (r >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        r = (r ^ (r >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        r ^= r >> 31;
        let mut ts = base + i as i64;
        if (r >> 40) % 100 < 5 {
            ts -= ((r >> 8) % 1_000) as i64;
        }
        writeln!(out, "{{\"ad\":{},\"ts\":{ts},\"cost\":{}}}", r % keys, (r >> 16) % 1_000)?;
    }
    out.flush()
}

fn decode(b: &Bytes) -> Result<Ad, Rejection> {
    ferroflow::json::parse::<Ad>(b)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let tmp = tempfile::tempdir()?;
    let (left, right) = (tmp.path().join("impressions.jsonl"), tmp.path().join("clicks.jsonl"));
    let per_input = args.events / 2;
    write_input(&left, per_input, args.keys, 1)?;
    write_input(&right, per_input, args.keys, 2)?;

    let join =
        IntervalJoin::inner(-args.bound_ms, args.bound_ms, |i: &Ad, c: &Ad| (i.ad, c.ts - i.ts, c.cost))?;
    let job = Stream::<Either<Bytes, Bytes>>::new()
        .try_map(|e: &Either<Bytes, Bytes>| match e {
            Either::Left(b) => decode(b).map(Either::Left),
            Either::Right(b) => decode(b).map(Either::Right),
        })
        .assign_timestamps(
            |e: &Either<Ad, Ad>| e.as_ref().either(|a| a.ts, |a| a.ts),
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(1)),
        )
        .key_by(|e: &Either<Ad, Ad>| Key::from(e.as_ref().either(|a| a.ad, |a| a.ad)))
        .interval_join(join)
        .id("impressions-clicks");

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let sink = NullSink::new();
    let pairs = sink.counter();
    let dlq = CollectSink::new();
    let dead = dlq.handle();
    let source = UnionSource::new(JsonLinesSource::raw([&left]), JsonLinesSource::raw([&right]));
    let t0 = Instant::now();
    let report = runtime.block_on(Runner::default().job(source, job).sink(sink).dead_letters(dlq).run())?;
    let elapsed = t0.elapsed().as_secs_f64();
    let c = &report.counters;
    if c.records_in != per_input * 2 || !c.identity_holds() || !dead.is_empty() {
        return Err(format!("accounting failed ({} dead letters): {c:?}", dead.len()).into());
    }
    println!(
        "interval_join_events_per_sec={:.0} peak_rss_mb={:.0} pairs={} events={} elapsed={elapsed:.2}s",
        c.records_in as f64 / elapsed,
        events::peak_rss_mb(),
        pairs.load(std::sync::atomic::Ordering::Relaxed),
        c.records_in,
    );
    Ok(())
}
