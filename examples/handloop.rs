//! The baseline for `throughput`: the same job as one hand-written loop, without ferroflow.
//!
//! ```text
//! cargo run --release --example handloop -- --events 10000000 --keys 100000
//! ```
//!
//! Reads the same generated file (same seed, same bytes) line by line, parses each event with
//! serde_json (fields borrowed from the line), drops test traffic, keeps a watermark 10 s behind
//! the highest event time, counts records whose window has closed as late, and aggregates count,
//! sum, min and max of `amount` per user in 1-minute tumbling windows in a `HashMap`, emitting a
//! window's rows when the watermark passes its end. No checkpoints, no dead-letter records, no
//! metrics: what a straightforward single-threaded program does.
//!
//! `--copies N` runs N such loops at once on N threads, each over the whole file and sharing
//! nothing, and prints their combined rate: what this machine gives the same work on N cores, the
//! ceiling for `throughput --workers N`.
//!
//! The last line printed is `handloop_events_per_sec=<N> peak_rss_mb=<M> copies=<C>`.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

#[path = "support/events.rs"]
mod events;
use events::{RawEvent, generate, peak_rss_mb};

#[derive(Default)]
struct Acc {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

const WINDOW_MS: i64 = 60_000;
const OUT_OF_ORDERNESS_MS: i64 = 10_000;

fn arg(name: &str, default: u64) -> Result<u64, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => {
            args.get(i + 1).and_then(|v| v.parse().ok()).ok_or_else(|| format!("{name} needs a number"))
        }
        None => Ok(default),
    }
}

/// The pipeline binary's allocator (the same for ferroflow and the hand loop).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What one pass of the loop over the file counted.
struct Counts {
    seen: u64,
    bad: u64,
    filtered: u64,
    late: u64,
    rows: u64,
    checksum: f64,
}

/// The whole job, once over the file.
fn run(path: &std::path::Path) -> std::io::Result<Counts> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut line = Vec::with_capacity(512);
    let mut windows: BTreeMap<i64, HashMap<String, Acc>> = BTreeMap::new();
    let (mut seen, mut bad, mut filtered, mut late, mut rows) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut max_ts, mut watermark) = (i64::MIN, i64::MIN);
    let mut checksum = 0.0f64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        seen += 1;
        let Ok(e) = serde_json::from_slice::<RawEvent<'_>>(&line) else {
            bad += 1;
            continue;
        };
        if e.event_type == "test" {
            filtered += 1;
            continue;
        }
        let start = e.ts.div_euclid(WINDOW_MS) * WINDOW_MS;
        if start + WINDOW_MS <= watermark {
            late += 1;
            continue;
        }
        let users = windows.entry(start).or_default();
        let acc = match users.get_mut(e.user_id) {
            Some(acc) => acc,
            None => users.entry(e.user_id.to_owned()).or_insert(Acc {
                count: 0,
                sum: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
            }),
        };
        acc.count += 1;
        acc.sum += e.amount;
        acc.min = acc.min.min(e.amount);
        acc.max = acc.max.max(e.amount);
        if e.ts > max_ts {
            max_ts = e.ts;
            watermark = max_ts.saturating_sub(OUT_OF_ORDERNESS_MS + 1);
            while let Some(entry) = windows.first_entry() {
                if *entry.key() + WINDOW_MS > watermark {
                    break;
                }
                for acc in entry.remove().into_values() {
                    rows += 1;
                    checksum += acc.sum / acc.count as f64 + acc.min + acc.max;
                }
            }
        }
    }
    for users in std::mem::take(&mut windows).into_values() {
        for acc in users.into_values() {
            rows += 1;
            checksum += acc.sum / acc.count as f64 + acc.min + acc.max;
        }
    }
    Ok(Counts { seen, bad, filtered, late, rows, checksum })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events = arg("--events", 1_000_000)?;
    let keys = arg("--keys", 100_000)?.max(1);
    let copies = arg("--copies", 1)?.max(1);
    let tmp = tempfile::tempdir()?;
    let path: PathBuf = tmp.path().join("events.jsonl");
    let (bytes, _) = generate(&path, events, keys)?;

    let t0 = Instant::now();
    // `--copies N` runs N independent loops at once, each over the whole file and sharing nothing:
    // how far this machine scales the same work on N cores, the ceiling for `throughput --workers N`.
    let runs: Vec<std::io::Result<Counts>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..copies).map(|_| s.spawn(|| run(&path))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(std::io::Error::other("a loop panicked"))))
            .collect()
    });
    let elapsed = t0.elapsed();
    let runs = runs.into_iter().collect::<std::io::Result<Vec<Counts>>>()?;
    let mut total = 0u64;
    for c in &runs {
        std::hint::black_box(c.checksum);
        println!(
            "records_in={} filtered={} late={} unparsable={} window_rows={} elapsed={:.3}s mb_per_sec={:.0}",
            c.seen,
            c.filtered,
            c.late,
            c.bad,
            c.rows,
            elapsed.as_secs_f64(),
            bytes as f64 / 1e6 / elapsed.as_secs_f64()
        );
        if c.seen != events {
            return Err(format!("read {} of {events} events", c.seen).into());
        }
        total += c.seen;
    }
    println!(
        "handloop_events_per_sec={:.0} peak_rss_mb={:.0} copies={copies}",
        total as f64 / elapsed.as_secs_f64(),
        peak_rss_mb()
    );
    Ok(())
}
