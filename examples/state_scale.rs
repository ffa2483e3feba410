//! Keyed state larger than its memory budget: a running aggregate over many keys, with and without
//! a budget; prints throughput, peak memory and what spilled to disk.
//!
//! ```text
//! cargo run --release --example state_scale -- --keys 10000000 --budget-mb 256
//! cargo run --release --example state_scale -- --keys 1000000 --check
//! ```
//!
//! Each event adds its value to its key's running sum (a `keyed_process` step with one value
//! state), keys drawn uniformly at random: the worst case for a cache, every key as likely as any
//! other. Prints `keyed_events_per_sec=<N> peak_rss_mb=<M> state_bytes_on_disk=<D> keys=<K>
//! budget_mb=<B>`. `--check` runs the same input without a budget as well and compares every
//! output (a digest of the sums per key). Dedup on the budget (the other half of issue 14's
//! benchmark) is not measured here yet: dedup keeps its own heap state.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::time::Instant;

use ferroflow::SourceError;
use ferroflow::prelude::*;
use ferroflow::sink::NullSink;
use ferroflow::source::{Source, SourceBatch, SourceEvent};
use ferroflow::state::StateBudget;

#[path = "support/events.rs"]
mod events;

const SUM: ValueState<u64> = ValueState::new("sum");

/// Adds each value to its key's sum; emits the new sum.
struct RunningSum;

impl KeyedFunction for RunningSum {
    type In = (u64, u64);
    type Out = u64;
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(SUM);
    }
    fn process(&mut self, (_, v): (u64, u64), ctx: &mut KeyedContext<'_, u64>) -> Result<(), Rejection> {
        let sum = ctx.value(SUM)?.copied().unwrap_or(0).wrapping_add(v);
        ctx.set_value(SUM, sum)?;
        ctx.emit(sum);
        Ok(())
    }
}

/// `events` values over `keys` keys, made as they are read (no input file, no input in memory).
struct Generated {
    left: u64,
    keys: u64,
    x: u64,
}

impl Source<(u64, u64)> for Generated {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<(u64, u64)>>, SourceError> {
        if self.left == 0 {
            return Ok(None);
        }
        let n = self.left.min(4_096);
        self.left -= n;
        let mut records = Vec::with_capacity(n as usize);
        for _ in 0..n {
            self.x = self.x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            records.push(Record::new(((self.x >> 20) % self.keys, self.x & 0xff), 0));
        }
        Ok(Some(SourceEvent::Batch(SourceBatch { records, ..SourceBatch::default() })))
    }
}

/// Folds every emitted sum into one number, so that two runs can be compared without keeping
/// their outputs.
#[derive(Debug, Default)]
struct Digest {
    sum: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Sink<u64> for Digest {
    async fn write_batch(&mut self, items: Vec<u64>) -> Result<(), ferroflow::SinkError> {
        let folded = items.iter().fold(0u64, |acc, s| acc.wrapping_mul(31).wrapping_add(*s));
        self.sum.fetch_add(folded, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Runs the job; returns (events/s, the digest of its output).
async fn run(
    events: u64,
    keys: u64,
    budget: Option<StateBudget>,
) -> Result<(f64, u64), Box<dyn std::error::Error>> {
    let mut builder = Runner::builder().workers(1);
    if let Some(b) = budget {
        builder = builder.state_budget(b);
    }
    let mut runner = builder.build()?;
    let job = Stream::<(u64, u64)>::new()
        .key_by(|r: &(u64, u64)| Key::from(&r.0.to_be_bytes()[..]))
        .keyed_process(RunningSum)
        .id("sums");
    let digest = Digest::default();
    let folded = digest.sum.clone();
    let start = Instant::now();
    let report = runner
        .job(Generated { left: events, keys, x: 7 }, job)
        .sink(digest)
        .dead_letters(NullSink::new())
        .run()
        .await?;
    let secs = start.elapsed().as_secs_f64();
    if !report.counters.identity_holds() || report.counters.records_processed != events {
        return Err(format!("the job lost records: {:?}", report.counters).into());
    }
    Ok((events as f64 / secs, folded.load(std::sync::atomic::Ordering::Relaxed)))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let keys = arg(&args, "--keys", 10_000_000);
    let events = arg(&args, "--events", keys.saturating_mul(2));
    let budget_mb = arg(&args, "--budget-mb", 256);
    let check = args.iter().any(|a| a == "--check");
    let no_budget = args.iter().any(|a| a == "--no-budget");

    let dir = std::env::temp_dir().join(format!("ferroflow-state-scale-{}", std::process::id()));
    let budget = if no_budget {
        None
    } else {
        Some(StateBudget::open(usize::try_from(budget_mb << 20)?, dir.join("spill"))?)
    };
    let spilled = budget.clone();
    if let (Some(b), true) = (budget.clone(), args.iter().any(|a| a == "--trace")) {
        // Memory over time: what the budget counts against what the process holds.
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(100));
                eprintln!(
                    "budget_used_mb={:.0} store_mb={:.0} rss_mb={:.0} spilled={}",
                    b.used() as f64 / f64::from(1u32 << 20),
                    b.store_memory() as f64 / f64::from(1u32 << 20),
                    events::rss_mb(),
                    b.spilled_keys()
                );
            }
        });
    }
    let (rate, digest) = run(events, keys, budget).await?;
    let on_disk = dir_bytes(&dir.join("spill"));
    println!(
        "keyed_events_per_sec={rate:.0} peak_rss_mb={:.0} state_bytes_on_disk={on_disk} keys={keys} budget_mb={}",
        events::peak_rss_mb(),
        if no_budget { "none".to_owned() } else { budget_mb.to_string() },
    );
    if let Some(b) = &spilled {
        eprintln!("keys written to the spill store: {}", b.spilled_keys());
    }
    if check {
        let (_, unbounded) = run(events, keys, None).await?;
        if unbounded != digest {
            return Err(format!("the budget changed results: digest {digest} against {unbounded}").into());
        }
        println!("check: identical to the run without a budget");
    }
    drop(spilled);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
