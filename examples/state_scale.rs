//! State larger than its memory budget: dedup over many event ids, then a running aggregate over
//! many keys, with and without a budget; prints throughput, peak memory and what spilled to disk.
//!
//! ```text
//! cargo run --release --example state_scale -- --ids 50000000 --keys 10000000 --budget-mb 256
//! cargo run --release --example state_scale -- --ids 50000000 --keys 10000000 --zipf --budget-mb 256
//! cargo run --release --example state_scale -- --keys 10000000 --budget-mb 256
//! cargo run --release --example state_scale -- --ids 2000000 --keys 1000000 --check
//! cargo run --release --example state_scale -- --keys 10000000 --window-ms 3600000 --budget-mb 256
//! cargo run --release --example state_scale -- --keys 10000000 --session-gap-ms 3600000 --budget-mb 256
//! ```
//!
//! With `--ids N`, N distinct event ids plus 1 % repeats (half of an id among the last 10,000,
//! half of any earlier one) go through a dedup step with a TTL of a day of event time (nothing
//! expires within the run: every id stays state), then each new event adds its value to its key's
//! running sum (a `keyed_process` step with one value state). Keys are uniformly random, the
//! worst case for a cache, or with `--zipf` drawn by popularity (a Zipf law, exponent 1: a few keys
//! are busy, most are rare, as users of a service are). Without `--ids`, only the running sum.
//! With `--window-ms W`, a tumbling event-time window of W ms counts and sums each key's values
//! instead of the running sum (watermarks follow the event times: each window fires once the next
//! one starts). With `--session-gap-ms G`, session windows with a gap of G ms instead.
//!
//! Prints `events_per_sec=<N> peak_rss_mb=<M> state_bytes_on_disk=<D>` and what ran.
//! `--check` runs the same input without a budget as well and compares every output (a digest of
//! the sums) and the count of duplicates. `--no-budget` runs unbounded; `--trace` prints memory
//! every 100 ms.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::time::{Duration, Instant};

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
    type In = Event;
    type Out = u64;
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(SUM);
    }
    fn process(
        &mut self,
        Event { value: v, .. }: Event,
        ctx: &mut KeyedContext<'_, u64>,
    ) -> Result<(), Rejection> {
        let sum = ctx.value(SUM)?.copied().unwrap_or(0).wrapping_add(v);
        ctx.set_value(SUM, sum)?;
        ctx.emit(sum);
        Ok(())
    }
}

/// One event: its id (to deduplicate on), the key it adds to and the value it adds.
#[derive(Debug, Clone)]
struct Event {
    id: [u8; 8],
    at: i64,
    key: u64,
    value: u64,
}

/// `events` events, made as they are read (no input file, no input in memory). Without dedup
/// (`ids` = 0), every event is new and its key uniformly random over `keys`. With dedup, 1 % of
/// the events repeat an earlier id (half of them one of the last 10,000, half any earlier one),
/// the others carry a new id, and an id's key is a hash of it: uniform over `keys` again.
/// Event time: one event per millisecond.
struct Generated {
    left: u64,
    keys: u64,
    dedup: bool,
    /// Keys drawn by popularity (Zipf, s = 1) instead of uniformly.
    zipf: bool,
    /// Ids handed out so far.
    ids: u64,
    at: i64,
    x: u64,
}

impl Generated {
    fn next(&mut self) -> u64 {
        self.x = self.x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.x >> 16
    }
}

impl Source<Event> for Generated {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<Event>>, SourceError> {
        if self.left == 0 {
            return Ok(None);
        }
        let n = self.left.min(4_096);
        self.left -= n;
        let mut records = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let r = self.next();
            let (id, key) = if !self.dedup {
                (0, r % self.keys)
            } else {
                let id = if r.is_multiple_of(100) && self.ids > 0 {
                    let back = if (r >> 8) & 1 == 0 { self.ids.min(10_000) } else { self.ids };
                    self.ids - 1 - (r >> 12) % back
                } else {
                    self.ids += 1;
                    self.ids - 1
                };
                (id, mix(id) % self.keys)
            };
            let key = if self.zipf { zipf(self.next(), self.keys) } else { key };
            self.at += 1;
            records.push(Record::new(
                Event { id: id.to_be_bytes(), at: self.at, key, value: r & 0xff },
                self.at,
            ));
        }
        Ok(Some(SourceEvent::Batch(SourceBatch { records, ..SourceBatch::default() })))
    }
}

/// A key of `keys` by popularity: rank `r` is drawn with probability about `1 / (r ln keys)` (a
/// Zipf law with exponent 1, from the inverse of its continuous distribution), then scattered
/// over the key space so that popular keys are not neighbours.
fn zipf(r: u64, keys: u64) -> u64 {
    let u = (r >> 11) as f64 / (1u64 << 37) as f64;
    let rank = ((keys as f64).powf(u) as u64).clamp(1, keys) - 1;
    mix(rank) % keys
}

/// splitmix64's finaliser: spreads consecutive ids over the keys.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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

/// What to run.
#[derive(Debug, Clone, Copy)]
struct Shape {
    events: u64,
    keys: u64,
    /// Deduplicate on the event ids first.
    dedup: bool,
    /// Keys by popularity, not uniformly.
    zipf: bool,
    /// A tumbling window this long (ms) instead of the running sum.
    window_ms: u64,
    /// Session windows with this gap (ms) instead of the running sum.
    session_gap_ms: u64,
}

/// Runs the job; returns (events/s, the digest of its output, records deduplicated).
async fn run(
    shape: Shape,
    budget: Option<StateBudget>,
) -> Result<(f64, u64, u64), Box<dyn std::error::Error>> {
    let Shape { events, keys, dedup, zipf, window_ms, session_gap_ms } = shape;
    let mut builder = Runner::builder().workers(1);
    if let Some(b) = budget {
        builder = builder.state_budget(b);
    }
    let mut runner = builder.build()?;
    let digest = Digest::default();
    let folded = digest.sum.clone();
    let source = Generated { left: events, keys, dedup, zipf, ids: 0, at: 0, x: 7 };
    let by_key = |e: &Event| Key::from(&e.key.to_be_bytes()[..]);
    let start = Instant::now();
    let report = if window_ms > 0 || session_gap_ms > 0 {
        let spec = if session_gap_ms > 0 {
            WindowSpec::session(Duration::from_millis(session_gap_ms))?
        } else {
            WindowSpec::tumbling(Duration::from_millis(window_ms))?
        };
        let head =
            Stream::<Event>::new().assign_timestamps(|e: &Event| e.at, WatermarkStrategy::monotonous());
        // Each row folds into the digest by its key, window and count.
        let row = |r: WindowResult<(u64, f64)>| {
            let key =
                r.key.as_bytes().iter().fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(*b)));
            mix(key ^ r.window_start as u64).wrapping_add(r.value.0)
        };
        let sum = Sum::of(|e: &Event| e.value as f64);
        if dedup {
            let job = head
                .dedup_by(Duration::from_secs(86_400), |e: &Event| &e.id)
                .id("ids")
                .key_by(by_key)
                .window(spec, (Count, sum))
                .id("windows")
                .map(row);
            runner.job(source, job).sink(digest).dead_letters(NullSink::new()).run().await?
        } else {
            let job = head.key_by(by_key).window(spec, (Count, sum)).id("windows").map(row);
            runner.job(source, job).sink(digest).dead_letters(NullSink::new()).run().await?
        }
    } else if dedup {
        // A day of event time: at one event per millisecond, no id expires within the run.
        let job = Stream::<Event>::new()
            .dedup_by(Duration::from_secs(86_400), |e: &Event| &e.id)
            .id("ids")
            .key_by(by_key)
            .keyed_process(RunningSum)
            .id("sums");
        runner.job(source, job).sink(digest).dead_letters(NullSink::new()).run().await?
    } else {
        let job = Stream::<Event>::new().key_by(by_key).keyed_process(RunningSum).id("sums");
        runner.job(source, job).sink(digest).dead_letters(NullSink::new()).run().await?
    };
    let secs = start.elapsed().as_secs_f64();
    let c = &report.counters;
    let consumed = c.records_processed.saturating_add(c.records_windowed);
    if !c.identity_holds() || consumed.saturating_add(c.records_deduplicated) != events {
        return Err(format!("the job lost records: {c:?}").into());
    }
    Ok((events as f64 / secs, folded.load(std::sync::atomic::Ordering::Relaxed), c.records_deduplicated))
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
    let ids = arg(&args, "--ids", 0);
    // With dedup: each id once, and 1 % repeats on top.
    let events =
        arg(&args, "--events", if ids > 0 { ids.saturating_add(ids / 99) } else { keys.saturating_mul(2) });
    let zipf = args.iter().any(|a| a == "--zipf");
    let window_ms = arg(&args, "--window-ms", 0);
    let session_gap_ms = arg(&args, "--session-gap-ms", 0);
    let shape = Shape { events, keys, dedup: ids > 0, zipf, window_ms, session_gap_ms };
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
    let (rate, digest, deduplicated) = run(shape, budget).await?;
    let on_disk = dir_bytes(&dir.join("spill"));
    println!(
        "events_per_sec={rate:.0} peak_rss_mb={:.0} state_bytes_on_disk={on_disk} events={events} ids={} \
         deduplicated={deduplicated} keys={keys} key_spread={} budget_mb={} window_ms={window_ms} session_gap_ms={session_gap_ms}",
        events::peak_rss_mb(),
        events.saturating_sub(deduplicated),
        if zipf { "zipf" } else { "uniform" },
        if no_budget { "none".to_owned() } else { budget_mb.to_string() },
    );
    if let Some(b) = &spilled {
        eprintln!("keys written to the spill store: {}", b.spilled_keys());
    }
    if check {
        let (_, unbounded, unbounded_deduplicated) = run(shape, None).await?;
        if (unbounded, unbounded_deduplicated) != (digest, deduplicated) {
            return Err(format!("the budget changed results: digest {digest} against {unbounded}").into());
        }
        println!("check: identical to the run without a budget");
    }
    drop(spilled);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
