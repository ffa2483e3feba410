//! Keyed state under a memory budget: more keys than fit spill to the budget's store and come
//! back when used; results, snapshots and restores equal an unbounded run.
#![cfg(feature = "rocksdb")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferroflow::operator::KeyedProcess;
use ferroflow::prelude::*;
use ferroflow::state::{MemoryStateBackend, StateBudget};
use ferroflow::testing::OperatorHarness;

const COUNT: ValueState<u64> = ValueState::new("count");
const RECENT: ListState<u32> = ListState::new("recent");
const BY_DIGIT: MapState<u8, u64> = MapState::new("by-digit");

/// Per key: a count, the last three values, a sum per last digit; emits all three per record.
struct Tally;

impl KeyedFunction for Tally {
    type In = u32;
    type Out = (u64, Vec<u32>, u64);
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(COUNT);
        states.list(RECENT);
        states.map(BY_DIGIT);
    }
    fn process(&mut self, v: u32, ctx: &mut KeyedContext<'_, Self::Out>) -> Result<(), Rejection> {
        let n = ctx.value(COUNT)?.copied().unwrap_or(0) + 1;
        ctx.set_value(COUNT, n)?;
        let mut recent = ctx.list(RECENT)?;
        recent.add(v);
        let mut all: Vec<u32> = recent.iter().copied().collect();
        if all.len() > 3 {
            all.remove(0);
            recent.update(all.clone());
        }
        let mut by_digit = ctx.map(BY_DIGIT)?;
        let digit = (v % 10) as u8;
        let sum = by_digit.get(&digit).copied().unwrap_or(0) + u64::from(v);
        by_digit.put(digit, sum);
        ctx.emit((n, all, sum));
        Ok(())
    }
}

/// `n` records over `keys` keys, spread the way a hash would spread them.
fn input(n: u32, keys: u32) -> Vec<Vec<Record<u32>>> {
    let mut x = 12_345u64;
    let records: Vec<Record<u32>> = (0..n)
        .map(|i| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let mut r = Record::new(i, i64::from(i));
            r.key = Key::from(format!("user-{}", (x >> 33) % u64::from(keys)));
            r
        })
        .collect();
    records.chunks(256).map(<[_]>::to_vec).collect()
}

fn distinct(batches: &[Vec<Record<u32>>]) -> usize {
    batches.iter().flatten().map(|r| r.key.clone()).collect::<std::collections::BTreeSet<_>>().len()
}

type Out = (String, (u64, Vec<u32>, u64));

fn outputs(h: &OperatorHarness<KeyedProcess<Tally>>) -> Vec<Out> {
    h.outputs().iter().map(|r| (r.key.as_str().unwrap().to_owned(), r.payload.clone())).collect()
}

/// Runs `batches` through a harness (under `budget`, if any). With `cuts`, it snapshots into one
/// backend after batch `cuts.0`, goes on, snapshots again after batch `cuts.1` (incrementally:
/// the keys changed since, many of them spilled meanwhile), and goes on in a new harness restored
/// from it. Returns the outputs and the keys held at the end.
fn run(
    batches: &[Vec<Record<u32>>],
    budget: Option<&StateBudget>,
    cuts: Option<(usize, usize)>,
) -> (Vec<Out>, usize) {
    let new = || {
        let mut h = OperatorHarness::new(KeyedProcess::new("tally", Tally));
        if let Some(b) = budget {
            h.attach_budget(b);
        }
        h
    };
    let mut h = new();
    let mut out = Vec::new();
    let mut state = MemoryStateBackend::new();
    for (i, batch) in batches.iter().enumerate() {
        h.process(batch.clone());
        if let Some(b) = budget {
            assert!(
                b.used() <= b.limit(),
                "batch {i}: {} bytes held in memory, budget {}",
                b.used(),
                b.limit()
            );
        }
        match cuts {
            Some((first, _)) if first == i => h.snapshot(&mut state).unwrap(),
            Some((_, second)) if second == i => {
                h.snapshot(&mut state).unwrap();
                out.extend(outputs(&h));
                drop(h);
                h = new();
                h.restore(&state).unwrap();
            }
            _ => {}
        }
    }
    out.extend(outputs(&h));
    (out, h.operator().held().0)
}

#[test]
fn more_keys_than_fit_spill_and_come_back_with_the_unbounded_results() {
    let batches = input(40_000, 6_000);
    let (unbounded, keys) = run(&batches, None, None);
    assert_eq!(keys, 3 * distinct(&batches), "three states per key");
    let dir = tempfile::tempdir().unwrap();
    let budget = StateBudget::open(256 << 10, dir.path().join("spill")).unwrap();
    let (bounded, held) = run(&batches, Some(&budget), None);
    assert_eq!(held, keys, "spilled keys are still held");
    assert!(bounded == unbounded, "the budget changed results");
}

#[test]
fn a_snapshot_with_spilled_keys_restores_to_the_unbounded_results() {
    let batches = input(30_000, 5_000);
    let (unbounded, _) = run(&batches, None, None);
    for cuts in [(10, 20), (30, 80)] {
        let dir = tempfile::tempdir().unwrap();
        let budget = StateBudget::open(200 << 10, dir.path().join("spill")).unwrap();
        let (bounded, held) = run(&batches, Some(&budget), Some(cuts));
        assert_eq!(held, 3 * distinct(&batches), "cuts {cuts:?}");
        assert!(bounded == unbounded, "cuts {cuts:?}: restore under the budget changed results");
    }
}

const ON: ValueState<u32> = ValueState::new("on");

/// Switches its key on (setting a value) and off (clearing it); emits what it found.
struct Toggle;

impl KeyedFunction for Toggle {
    type In = u32;
    type Out = Option<u32>;
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(ON);
    }
    fn process(&mut self, v: u32, ctx: &mut KeyedContext<'_, Option<u32>>) -> Result<(), Rejection> {
        let was = ctx.value(ON)?.copied();
        match was {
            Some(_) => ctx.clear_value(ON)?,
            None => ctx.set_value(ON, v)?,
        }
        ctx.emit(was);
        Ok(())
    }
}

#[test]
fn a_key_cleared_after_it_spilled_does_not_come_back() {
    let batches = input(30_000, 3_000);
    let mut results = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let budget = StateBudget::open(48 << 10, dir.path().join("spill")).unwrap();
    for budgeted in [false, true] {
        let mut h = OperatorHarness::new(KeyedProcess::new("toggle", Toggle));
        if budgeted {
            h.attach_budget(&budget);
        }
        for batch in &batches {
            h.process(batch.clone());
        }
        results.push(h.payloads());
    }
    assert!(budget.spilled_keys() > 1_000, "{} keys spilled", budget.spilled_keys());
    assert!(results[1] == results[0], "a cleared value came back from the spill store");
}

/// More spilled keys than the first Bloom filter holds (it grows), values cleared while spilled,
/// a snapshot and restore in the middle, then the keys of another copy dropped: everything as
/// without a budget.
#[test]
fn many_spilled_keys_through_a_restore_and_a_hand_over_stay_exact() {
    let batches = input(200_000, 120_000);
    let dir = tempfile::tempdir().unwrap();
    let budget = StateBudget::open(256 << 10, dir.path().join("spill")).unwrap();
    let mut results = Vec::new();
    for budgeted in [false, true] {
        let new = || {
            let mut h = OperatorHarness::new(KeyedProcess::new("toggle", Toggle));
            if budgeted {
                h.attach_budget(&budget);
            }
            h
        };
        let mut h = new();
        let mut state = MemoryStateBackend::new();
        let mut out = Vec::new();
        for (i, batch) in batches.iter().enumerate() {
            h.process(batch.clone());
            if i == 100 {
                h.snapshot(&mut state).unwrap();
            }
            if i == 400 {
                h.snapshot(&mut state).unwrap(); // incremental: cleared keys are deleted
                out.extend(h.payloads());
                drop(h);
                h = new();
                h.restore(&state).unwrap();
            }
        }
        out.extend(h.payloads());
        let before = h.operator().held().0;
        h.operator_mut().retain_keys(&|k| k.as_bytes().last().is_some_and(|b| b % 2 == 0));
        results.push((out, before, h.operator().held().0));
    }
    assert!(budget.spilled_keys() > 90_000, "{} keys spilled", budget.spilled_keys());
    assert!(results[1].0 == results[0].0, "the budget changed results");
    assert_eq!(
        (results[1].1, results[1].2),
        (results[0].1, results[0].2),
        "keys held before and after the hand-over"
    );
    assert!(results[0].2 < results[0].1 && results[0].2 > 0);
}

const SEEN: ValueState<u32> = ValueState::new("seen").with_ttl(
    StateTtl::event_time(std::time::Duration::from_millis(2_000))
        .visibility(ferroflow::operator::TtlVisibility::ReturnExpiredIfNotCleanedUp),
);

/// Emits whether the key's value is still there (expired values are returned until the clean-up
/// removes them), then writes it.
struct Seen;

impl KeyedFunction for Seen {
    type In = u32;
    type Out = Option<u32>;
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(SEEN);
    }
    fn process(&mut self, v: u32, ctx: &mut KeyedContext<'_, Option<u32>>) -> Result<(), Rejection> {
        let was = ctx.value(SEEN)?.copied();
        ctx.set_value(SEEN, v)?;
        ctx.emit(was);
        Ok(())
    }
}

#[test]
fn the_ttl_clean_up_removes_spilled_values_as_it_removes_those_in_memory() {
    let batches = input(40_000, 4_000);
    let dir = tempfile::tempdir().unwrap();
    let budget = StateBudget::open(64 << 10, dir.path().join("spill")).unwrap();
    let mut results = Vec::new();
    for budgeted in [false, true] {
        let mut h = OperatorHarness::new(KeyedProcess::new("seen", Seen));
        if budgeted {
            h.attach_budget(&budget);
        }
        for batch in &batches {
            h.process(batch.clone());
            let last = batch.last().map_or(0, |r| r.event_time);
            h.advance_watermark(ferroflow::time::Watermark(last));
        }
        results.push((h.payloads(), h.operator().held().0));
    }
    assert!(budget.spilled_keys() > 1_000, "{} keys spilled", budget.spilled_keys());
    let expired_and_returned = results[0].0.iter().filter(|v| v.is_some()).count();
    assert!(expired_and_returned > 0 && expired_and_returned < 40_000);
    assert!(results[1] == results[0], "the clean-up left spilled values that it removed from memory");
}

/// The same job on 2 copies under one budget, through the runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_under_one_budget_give_the_unbounded_results() {
    let values: Vec<(u32, u32)> =
        (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) % 4_000, i)).collect();
    let job = || {
        Stream::<(u32, u32)>::new()
            .key_by(|v: &(u32, u32)| Key::from(format!("k{}", v.0)))
            .map(|v: (u32, u32)| v.1)
            .keyed_process(Tally)
            .id("tally")
    };
    let mut results = Vec::new();
    for budgeted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = Runner::builder().workers(2);
        let budget = StateBudget::open(128 << 10, dir.path().join("spill")).unwrap();
        if budgeted {
            builder = builder.state_budget(budget.clone());
        }
        let mut runner = builder.build().unwrap();
        let (sink, rows) = CollectSink::with_handle();
        let source = MemorySource::of(values.clone()).with_batch_size(500);
        let report = runner.parallel_job(source, job).sink(sink).discard_dead_letters().run().await.unwrap();
        assert!(report.counters.identity_holds());
        assert_eq!(budget.spilled_keys() > 0, budgeted, "keys spilled under the budget only");
        assert_eq!(budget.used(), 0, "the copies are gone: their memory is free again");
        let mut got = rows.take();
        got.sort();
        results.push(got);
    }
    assert_eq!(results[0].len(), 20_000);
    assert!(results[1] == results[0], "the budget changed results");
}

/// Dedup then a keyed tally in one job under a budget that holds a few hundred ids: ids spill,
/// repeats are found on disk, sightings expire in memory and on disk, and the output is the
/// unbounded run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_and_keyed_state_under_one_budget_give_the_unbounded_results() {
    // 30,000 events, one per 10 ms of event time; every seventh repeats an id seen 0.5 to 4 s
    // earlier, so that some repeats fall within the 2 s TTL and some after it.
    let mut x = 99u64;
    let mut events: Vec<(u64, i64)> = Vec::new();
    for i in 0..30_000u64 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let at = i64::try_from(i).unwrap() * 10;
        let id = if i % 7 == 0 && i > 400 { i - 50 - (x >> 33) % 350 } else { i };
        events.push((id, at));
    }
    let job = || {
        Stream::<(u64, i64)>::new()
            .assign_timestamps(|e: &(u64, i64)| e.1, WatermarkStrategy::monotonous())
            .map(|e: (u64, i64)| (format!("event-{}", e.0), e.0))
            .dedup_by(std::time::Duration::from_secs(2), |e: &(String, u64)| e.0.as_str())
            .id("ids")
            .key_by(|e: &(String, u64)| Key::from(format!("k{}", e.1 % 1_000)))
            .map(|e: (String, u64)| u32::try_from(e.1).unwrap_or(u32::MAX))
            .keyed_process(Tally)
            .id("tally")
    };
    let mut results = Vec::new();
    for budgeted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = Runner::builder().workers(1);
        let budget = StateBudget::open(96 << 10, dir.path().join("spill")).unwrap();
        if budgeted {
            builder = builder.state_budget(budget.clone());
        }
        let mut runner = builder.build().unwrap();
        let (sink, rows) = CollectSink::with_handle();
        let source = MemorySource::of(events.clone()).with_batch_size(300);
        let report = runner.job(source, job()).sink(sink).discard_dead_letters().run().await.unwrap();
        assert!(report.counters.identity_holds());
        assert!(report.counters.records_deduplicated > 1_000, "{:?}", report.counters);
        assert_eq!(budget.spilled_keys() > 10_000, budgeted, "ids and keys spilled under the budget only");
        let got = rows.take();
        results.push((got, report.counters.records_deduplicated));
    }
    assert!(results[1] == results[0], "the budget changed results");
}

/// What `job` emits over `events` in batches of `batch`, on a runner from `builder`; every
/// record accounted for.
async fn run_job<J>(
    builder: RunnerBuilder,
    events: Vec<(u32, i64)>,
    batch: usize,
    job: J,
) -> Vec<<J::Op as Operator>::Out>
where
    J: IntoOperator,
    J::Op: Operator<In = (u32, i64)> + Send + 'static,
    <J::Op as Operator>::Out: Clone + Send + 'static,
{
    let (sink, rows) = CollectSink::with_handle();
    let source = MemorySource::of(events).with_batch_size(batch);
    let report =
        builder.build().unwrap().job(source, job).sink(sink).discard_dead_letters().run().await.unwrap();
    assert!(report.counters.identity_holds());
    rows.take()
}

/// Sets a timer 1.5 s after each record of a key; when it fires, emits the key's count.
struct Quiet;

impl KeyedFunction for Quiet {
    type In = (u32, i64);
    type Out = (u64, i64);
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(COUNT);
    }
    fn process(&mut self, v: (u32, i64), ctx: &mut KeyedContext<'_, Self::Out>) -> Result<(), Rejection> {
        let n = ctx.value(COUNT)?.copied().unwrap_or(0) + 1;
        ctx.set_value(COUNT, n)?;
        ctx.register_event_time_timer(v.1 + 1_500);
        Ok(())
    }
    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, Self::Out>) -> Result<(), Rejection> {
        let n = ctx.value(COUNT)?.copied().unwrap_or(0);
        ctx.emit((n, ctx.timestamp()));
        Ok(())
    }
}

/// Sliding windows with allowed lateness and a step with timers, under a budget
/// that holds a few hundred slots and timers: window slots and timers spill, late records revise
/// spilled windows, and the rows are the unbounded run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_and_timers_under_one_budget_give_the_unbounded_results() {
    // 40,000 events over 3,000 keys, 5 ms of event time apart, up to 400 ms out of order.
    let mut x = 7u64;
    let events: Vec<(u32, i64)> = (0..40_000i64)
        .map(|i| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let key = u32::try_from((x >> 40) % 3_000).unwrap();
            (key, i * 5 - i64::try_from((x >> 20) % 400).unwrap())
        })
        .collect();
    let spec = WindowSpec::sliding(std::time::Duration::from_secs(2), std::time::Duration::from_secs(1))
        .unwrap()
        .with_allowed_lateness(std::time::Duration::from_millis(300));
    let windows = || {
        Stream::<(u32, i64)>::new()
            .assign_timestamps(
                |e: &(u32, i64)| e.1,
                WatermarkStrategy::bounded_out_of_orderness(std::time::Duration::from_millis(100)),
            )
            .key_by(|e: &(u32, i64)| Key::from(format!("k{}", e.0)))
            .window(spec, ferroflow::window::Count)
            .id("windows")
    };
    let timers = || {
        Stream::<(u32, i64)>::new()
            .assign_timestamps(|e: &(u32, i64)| e.1, WatermarkStrategy::monotonous())
            .key_by(|e: &(u32, i64)| Key::from(format!("k{}", e.0)))
            .keyed_process(Quiet)
            .id("quiet")
    };
    let mut results = Vec::new();
    for budgeted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let budget = StateBudget::open(64 << 10, dir.path().join("spill")).unwrap();
        let builder = || {
            let builder = Runner::builder().workers(1);
            if budgeted { builder.state_budget(budget.clone()) } else { builder }
        };
        // Batches of 650 ms of event time: their watermarks fall anywhere between window ends.
        let mut got: Vec<(String, i64, u64, u32)> = run_job(builder(), events.clone(), 130, windows())
            .await
            .into_iter()
            .map(|r| {
                (String::from_utf8_lossy(r.key.as_bytes()).into_owned(), r.window_start, r.value, r.revision)
            })
            .collect();
        got.sort();
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.1);
        let mut fired = run_job(builder(), sorted, 400, timers()).await;
        fired.sort();
        assert_eq!(budget.spilled_keys() > 1_000, budgeted, "slots and timers spilled under the budget only");
        assert_eq!(budget.used(), 0, "the steps are gone: their memory is free again");
        results.push((got, fired));
    }
    assert!(
        results[0].0.len() > 6_000 && results[0].1.len() > 1_000,
        "{} {}",
        results[0].0.len(),
        results[0].1.len()
    );
    assert!(results[0].0.iter().any(|r| r.3 > 0), "late records revised some windows");
    assert!(results[1] == results[0], "the budget changed results");
}

/// What the process holds now and at most since the last reset, MB (Linux: `/proc/self/status`).
#[cfg(target_os = "linux")]
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap()
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Counts per key, over `keys` keys, each seen twice in a shuffled order; returns a digest of the
/// counts emitted and how much the process's peak memory rose over what it held at the start, MB.
#[cfg(target_os = "linux")]
fn count_keys(keys: u64, budget: Option<&StateBudget>) -> (u64, f64) {
    use ferroflow::Operator;
    // Start the peak over from what the process holds now (Linux 4.0 and later).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (start, _) = rss_mb();
    let mut op = KeyedProcess::new("counts", Count);
    if let Some(b) = budget {
        op.attach_budget(b);
    }
    let mut ctx = ferroflow::Context::default();
    let (mut input, mut out) = (Vec::with_capacity(4_096), Vec::with_capacity(4_096));
    let mut digest = 0u64;
    for i in 0..keys * 2 {
        // A bijection of 0..2^k over the events, folded onto the keys: every key twice.
        let k = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % (keys * 2) / 2;
        let mut r = Record::new(0u32, 0);
        r.key = Key::from(&k.to_be_bytes()[..]);
        input.push(r);
        if input.len() == 4_096 || i + 1 == keys * 2 {
            op.process_batch(&mut input, &mut ctx, &mut out);
            digest = out.drain(..).fold(digest, |d, r| d.wrapping_mul(31).wrapping_add(r.payload));
        }
    }
    let (_, peak) = rss_mb();
    (digest, peak - start)
}

const ONE: ValueState<u64> = ValueState::new("count");

/// A count per key.
struct Count;

impl KeyedFunction for Count {
    type In = u32;
    type Out = u64;
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(ONE);
    }
    fn process(&mut self, _: u32, ctx: &mut KeyedContext<'_, u64>) -> Result<(), Rejection> {
        let n = ctx.value(ONE)?.copied().unwrap_or(0) + 1;
        ctx.set_value(ONE, n)?;
        ctx.emit(n);
        Ok(())
    }
}

/// The spill store's own memory, outside the budget (README, "State larger than memory"): two
/// memtables of 16 MB, a block cache of 8 MB, the index and filter blocks of its files, and the
/// allocator's slack.
#[cfg(target_os = "linux")]
const SPILL_STORE_OVERHEAD_MB: f64 = 64.0;

/// Peak memory under a budget stays within the budget plus the spill store's own memory, where the
/// same job without a budget takes several times that.
#[cfg(target_os = "linux")]
#[test]
fn peak_memory_stays_within_the_budget_plus_the_spill_stores_own() {
    const KEYS: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let budget = StateBudget::open(16 << 20, dir.path().join("spill")).unwrap();
    let (bounded, bounded_mb) = count_keys(KEYS, Some(&budget));
    assert!(budget.spilled_keys() > KEYS / 2, "{} keys spilled", budget.spilled_keys());
    drop(budget);
    let (unbounded, unbounded_mb) = count_keys(KEYS, None);
    println!(
        "peak memory over the start: {bounded_mb:.0} MB under a 16 MB budget, {unbounded_mb:.0} MB without"
    );
    assert_eq!(bounded, unbounded, "the budget changed results");
    // A process's peak memory is the job's alone only when the test has the process to itself:
    // nextest runs each test in a process of its own, `cargo test` runs them side by side.
    if std::env::var_os("NEXTEST").is_none() {
        println!("not under nextest: the peak memory bounds are not checked");
        return;
    }
    assert!(bounded_mb <= 16.0 + SPILL_STORE_OVERHEAD_MB, "{bounded_mb:.0} MB at peak under a 16 MB budget");
    assert!(unbounded_mb > 2.0 * bounded_mb, "without a budget the job takes {unbounded_mb:.0} MB");
}
