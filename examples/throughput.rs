//! Throughput benchmark: JSON lines → parse → filter → key_by → 1-minute tumbling window
//! (count, sum, min, max) → null sink.
//!
//! ```text
//! cargo run --release --example throughput -- --events 10000000 --keys 100000 --workers 2
//! ```
//!
//! The input file (~200-byte JSON events, deterministic seed, 5% of events out of order by up to
//! 5 s) is generated first, outside the timed section, into a temporary directory (or `--file`).
//! Events are parsed with [`ferroflow::json::parse`] (sonic-rs), strings borrowed from the line;
//! the hand-written baseline (`handloop`) parses the same struct with serde_json.
//! The timed section runs the whole job through the [`Runner`]: the source reads the file in 1 MiB
//! chunks on the runtime's blocking pool; the processing task cuts every batch into one share per
//! worker (`--workers`, default: the available cores), and each worker thread runs a copy of the
//! chain (parsing, filtering, watermarks) on its share, trades records by key with the other
//! copies, and windows the keys it owns ([`Runner::parallel_job`]). With `--workers 1` the chain
//! runs in the processing task itself. `--threads` sizes the tokio runtime (default 1);
//! `--chunk-kb` how much of the file one read takes, which is one batch (default 1024).
//!
//! The last line printed is `throughput_events_per_sec=<N> peak_rss_mb=<M> workers=<W>`.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use ferroflow::prelude::*;
use serde::Serialize;

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/events.rs"]
mod events;
use events::{RawEvent, generate, peak_rss_mb};

/// What flows after parsing: fixed-size, no heap.
#[derive(Debug, Clone, Serialize)]
struct Purchase {
    user: Key,
    ts: i64,
    amount: f64,
    test_traffic: bool,
}

struct Args {
    events: u64,
    keys: u64,
    threads: usize,
    workers: usize,
    file: Option<PathBuf>,
    /// `none` (no checkpoints), `memory` or `rocksdb`: state checkpointed to a local `file://` store.
    state: String,
    checkpoint_interval_ms: u64,
    /// How much of the file one read takes (one batch): `--chunk-kb`, default 1024.
    chunk_kb: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        events: 1_000_000,
        keys: 100_000,
        threads: 1,
        workers: ferroflow::runtime::available_cores(),
        file: None,
        state: "none".into(),
        checkpoint_interval_ms: 2_000,
        chunk_kb: 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => args.events = value()?.parse().map_err(|e| format!("--events: {e}"))?,
            "--keys" => args.keys = value()?.parse().map_err(|e| format!("--keys: {e}"))?,
            "--threads" => args.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--chunk-kb" => args.chunk_kb = value()?.parse().map_err(|e| format!("--chunk-kb: {e}"))?,
            "--workers" => args.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--file" => args.file = Some(PathBuf::from(value()?)),
            "--state" => args.state = value()?,
            "--checkpoint-interval-ms" => {
                args.checkpoint_interval_ms =
                    value()?.parse().map_err(|e| format!("--checkpoint-interval-ms: {e}"))?
            }
            "--bench" => {} // passed by `cargo bench`-style runners
            other => {
                return Err(format!(
                    "unknown flag {other}; use --events N --keys K [--workers W] [--threads T] [--file PATH]"
                ));
            }
        }
    }
    if args.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    if args.keys == 0 {
        return Err("--keys must be at least 1".into());
    }
    Ok(args)
}

/// The pipeline binary's allocator (the same for ferroflow and the hand loop).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let tmp = tempfile::tempdir()?;
    let path = args.file.clone().unwrap_or_else(|| tmp.path().join("events.jsonl"));
    let started = Instant::now();
    let (bytes, tests) = generate(&path, args.events, args.keys)?;
    println!(
        "generated {} events ({:.1} MB, avg {:.0} B/event, {} test traffic) in {:.1?}",
        args.events,
        bytes as f64 / 1e6,
        bytes as f64 / args.events.max(1) as f64,
        tests,
        started.elapsed()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .max_blocking_threads(2)
        .enable_all()
        .build()?;

    let minute = WindowSpec::tumbling(Duration::from_secs(60))?;
    let stream = || {
        Stream::<Bytes>::new()
            .try_map(|line: &Bytes| {
                let e: RawEvent<'_> = ferroflow::json::parse(line)?;
                Ok::<_, Rejection>(Purchase {
                    user: Key::from(e.user_id),
                    ts: e.ts,
                    amount: e.amount,
                    test_traffic: e.event_type == "test",
                })
            })
            .filter(|p| !p.test_traffic)
            .assign_timestamps(|p| p.ts, WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(10)))
            .key_by(|p| p.user.clone())
            .window(minute, Stats::of(|p: &Purchase| p.amount))
            .id("purchases-per-minute")
    };

    let sink = NullSink::new();
    let rows = sink.counter();
    let dlq = CollectSink::new();
    let dead = dlq.handle();
    let mut runner = if args.state == "none" {
        Runner::builder().workers(args.workers).build()?
    } else {
        let checkpoints = Runner::builder()
            .workers(args.workers)
            .checkpoints(format!("file://{}", tmp.path().join("checkpoints").display()))
            .job_id("throughput")
            .scratch_dir(tmp.path().join("scratch"))
            .every(Duration::from_millis(args.checkpoint_interval_ms));
        match args.state.as_str() {
            "memory" => checkpoints.state(ferroflow::state::MemoryStateBackend::new()).build()?,
            #[cfg(feature = "rocksdb")]
            "rocksdb" => {
                checkpoints.state(ferroflow::state::RocksDb::at(tmp.path().join("rocksdb"))).build()?
            }
            other => return Err(format!("--state must be none, memory or rocksdb, got {other}").into()),
        }
    };
    let source = JsonLinesSource::raw([&path]).with_chunk_size(args.chunk_kb.saturating_mul(1024));
    let (t0, cpu0) = (Instant::now(), cpu::process_cpu_seconds());
    let report = runtime.block_on(runner.parallel_job(source, stream).sink(sink).dead_letters(dlq).run())?;
    let elapsed = t0.elapsed();
    let cpu_seconds = cpu::process_cpu_seconds() - cpu0;

    let c = &report.counters;
    let eps = c.records_in as f64 / elapsed.as_secs_f64();
    println!(
        "records_in={} windowed={} filtered={} dead_lettered={} window_rows={} identity_holds={}",
        c.records_in,
        c.records_windowed,
        c.records_filtered,
        c.records_dead_lettered,
        rows.load(std::sync::atomic::Ordering::Relaxed),
        c.identity_holds()
    );
    if !dead.is_empty() {
        println!("dead letters: {} (first: {:?})", dead.len(), dead.take().first().map(|d| d.detail.clone()));
    }
    println!(
        "elapsed={:.3}s mb_per_sec={:.0} state={} checkpoints={}",
        elapsed.as_secs_f64(),
        bytes as f64 / 1e6 / elapsed.as_secs_f64(),
        args.state,
        report.checkpoints_taken
    );
    println!("{}", cpu::usage_line(cpu_seconds, elapsed.as_secs_f64(), c.records_in));
    if c.records_in != args.events || !c.identity_holds() {
        return Err(format!("accounting failed: {c:?}").into());
    }
    println!(
        "throughput_events_per_sec={:.0} peak_rss_mb={:.0} workers={}",
        eps,
        peak_rss_mb(),
        args.workers
    );
    Ok(())
}
