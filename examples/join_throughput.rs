//! Join throughput on one worker: an interval join and a temporal join, each of two JSON inputs
//! read as one stream.
//!
//! ```text
//! cargo run --release --example join_throughput -- --events 10000000
//! cargo run --release --example join_throughput -- --events 10000000 --keys 100000 --bound-ms 5000 --table-keys 1000000
//! cargo run --release --example join_throughput -- --events 1000000 --only interval   # one join, for a profile
//! ```
//!
//! Interval join: two JSON-lines files of `events / 2` records each (`{"ad":…,"ts":…,"cost":…}`,
//! impressions and clicks, ads drawn uniformly from `--keys`, 1,000 records per second of event
//! time per input, 5 % up to 1 s out of order), as one `UnionSource` → decode each side →
//! timestamps (1 s out-of-orderness) → key by ad → interval join, inner, `click.ts` within
//! `impression.ts ± bound` → a null sink.
//!
//! Temporal join: `events` records over `--table-keys` keys against a versioned table of
//! `--table-keys` records (one version per key, spread over the same span of event time), left
//! outer: each event with its key's version valid at its time.
//!
//! Broadcast join: the same events against the same table held whole as a broadcast table (the
//! table's input read beside the events, its watermark holding theirs), left outer.
//!
//! Prints `interval_join_events_per_sec=<N> temporal_join_events_per_sec=<M> peak_rss_mb=<R>`
//! (records of both inputs counted), then `broadcast_join_events_per_sec=<B>` (the events only:
//! the table is not a job input), and each join's own line before them.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use ferroflow::Keyed;
use ferroflow::prelude::*;
use ferroflow::sink::NullSink;
use ferroflow::source::UnionSource;
use serde::{Deserialize, Serialize};

#[path = "support/events.rs"]
mod events;

/// The pipeline binary's allocator, as in the other benchmarks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One side's record.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Ad {
    ad: u64,
    ts: i64,
    cost: u32,
}

/// Both inputs' lines, undecoded.
type Raw = Either<Bytes, Bytes>;

struct Args {
    events: u64,
    keys: u64,
    bound_ms: i64,
    table_keys: u64,
    /// Run only this join (`interval`, `temporal` or `broadcast`), for profiling one of them.
    only: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a =
        Args { events: 10_000_000, keys: 100_000, bound_ms: 5_000, table_keys: 1_000_000, only: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: std::num::ParseIntError| format!("{flag}: {e}");
        match flag.as_str() {
            "--events" => a.events = value.parse().map_err(bad)?,
            "--keys" => a.keys = value.parse::<u64>().map_err(bad)?.max(1),
            "--bound-ms" => a.bound_ms = value.parse().map_err(bad)?,
            "--table-keys" => a.table_keys = value.parse::<u64>().map_err(bad)?.max(1),
            "--only" if ["interval", "temporal", "broadcast"].contains(&value.as_str()) => {
                a.only = Some(value)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// Writes `n` records of one input, 1,000 per second of event time (`step_ms` ms apart, from the
/// same start for every input); `seed` makes the inputs differ.
fn write_input(path: &Path, n: u64, keys: u64, seed: u64, step_ms: f64) -> std::io::Result<()> {
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
        let mut ts = base + (i as f64 * step_ms) as i64;
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

/// Runs `job` over `left` and `right` as one union; returns (records in per second, rows out).
fn run<J>(left: &Path, right: &Path, job: J) -> Result<(f64, u64), Box<dyn std::error::Error>>
where
    J: IntoOperator,
    J::Op: Operator<In = Either<Bytes, Bytes>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let sink = NullSink::new();
    let rows = sink.counter();
    let dlq = CollectSink::new();
    let dead = dlq.handle();
    let source = UnionSource::new(JsonLinesSource::raw([left]), JsonLinesSource::raw([right]));
    let t0 = Instant::now();
    let report = runtime.block_on(Runner::default().job(source, job).sink(sink).dead_letters(dlq).run())?;
    let elapsed = t0.elapsed().as_secs_f64();
    let c = &report.counters;
    if !c.identity_holds() || !dead.is_empty() {
        return Err(format!("accounting failed ({} dead letters): {c:?}", dead.len()).into());
    }
    let rows = rows.load(std::sync::atomic::Ordering::Relaxed);
    println!("records_in={} rows={rows} elapsed={elapsed:.2}s", c.records_in);
    Ok((c.records_in as f64 / elapsed, rows))
}

/// Runs the events of `events` joined with a broadcast table read from `table`; returns (events
/// per second, table load included, rows out).
fn run_broadcast(events: &Path, table: &Path) -> Result<(f64, u64), Box<dyn std::error::Error>> {
    use ferroflow::source::DecodedSource;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let sink = NullSink::new();
    let rows = sink.counter();
    let versions = BroadcastTable::new("table");
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(1));
    let source = versions
        .loaded_from(
            DecodedSource::new(JsonLinesSource::raw([table]), decode),
            |a| Key::from(a.ad),
            |a| a.ts,
            strategy,
        )
        .gating(JsonLinesSource::raw([events]));
    let join = BroadcastJoin::left_outer(&versions, |e: &Ad, v: Option<&Ad>| (e.ad, v.map(|v| v.cost)));
    let job = Stream::<Bytes>::new()
        .try_map(decode)
        .assign_timestamps(|a: &Ad| a.ts, strategy)
        .key_by(|a: &Ad| Key::from(a.ad))
        .broadcast_join(join)
        .id("events-with-table");
    let t0 = Instant::now();
    let report =
        runtime.block_on(Runner::default().job(source, job).sink(sink).discard_dead_letters().run())?;
    let elapsed = t0.elapsed().as_secs_f64();
    let c = &report.counters;
    if !c.identity_holds() || c.records_dead_lettered > 0 {
        return Err(format!("accounting failed: {c:?}").into());
    }
    let rows = rows.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "records_in={} table_versions={} rows={rows} elapsed={elapsed:.2}s",
        c.records_in,
        versions.versions()
    );
    Ok((c.records_in as f64 / elapsed, rows))
}

/// Both sides decoded, with timestamps, keyed by ad.
fn decoded() -> Stream<Raw, impl Operator<In = Raw, Out = Either<Ad, Ad>>, Keyed> {
    Stream::<Either<Bytes, Bytes>>::new()
        .try_map(|e: &Either<Bytes, Bytes>| match e {
            Either::Left(b) => decode(b).map(Either::Left),
            Either::Right(b) => decode(b).map(Either::Right),
        })
        .assign_timestamps(
            |e: &Either<Ad, Ad>| e.as_ref().either(|a| a.ts, |a| a.ts),
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(1)),
        )
        .key_by(|e: &Either<Ad, Ad>| Key::from(e.as_ref().either(|a| a.ad, |a| a.ad)))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let runs = |join: &str| args.only.as_deref().is_none_or(|o| o == join);
    let tmp = tempfile::tempdir()?;
    let (left, right) = (tmp.path().join("impressions.jsonl"), tmp.path().join("clicks.jsonl"));
    let per_input = args.events / 2;
    let mut interval = 0.0;
    if runs("interval") {
        write_input(&left, per_input, args.keys, 1, 1.0)?;
        write_input(&right, per_input, args.keys, 2, 1.0)?;
        let join =
            IntervalJoin::inner(-args.bound_ms, args.bound_ms, |i: &Ad, c: &Ad| (i.ad, c.ts - i.ts, c.cost))?;
        let job = decoded().interval_join(join).id("impressions-clicks");
        let pairs;
        (interval, pairs) = run(&left, &right, job)?;
        println!("interval_join: pairs={pairs}");
    }

    let (events, table) = (tmp.path().join("events.jsonl"), tmp.path().join("table.jsonl"));
    write_input(&events, args.events, args.table_keys, 3, 1.0)?;
    // The table's versions spread over the events' span of event time.
    write_input(&table, args.table_keys, args.table_keys, 4, args.events as f64 / args.table_keys as f64)?;
    let mut temporal = 0.0;
    if runs("temporal") {
        let join = TemporalJoin::left_outer(|e: &Ad, v: Option<&Ad>| (e.ad, v.map(|v| v.cost)));
        let job = decoded().temporal_join(join).id("events-with-table");
        let rows;
        (temporal, rows) = run(&events, &table, job)?;
        println!("temporal_join: rows={rows}");
    }
    if args.only.is_none() {
        println!(
            "interval_join_events_per_sec={interval:.0} temporal_join_events_per_sec={temporal:.0} peak_rss_mb={:.0}",
            events::peak_rss_mb(),
        );
    }
    if runs("broadcast") {
        let (broadcast, rows) = run_broadcast(&events, &table)?;
        println!("broadcast_join: rows={rows}");
        println!("broadcast_join_events_per_sec={broadcast:.0}");
    }
    Ok(())
}
