//! Property test: a dedup step that checkpoints, crashes and restores at random points ends with
//! exactly the output and counters of an uninterrupted run (in-memory and RocksDB state).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Crashes, Outcome as Run, Step, memory};
use ferroflow_core::operator::Dedup;
#[cfg(feature = "rocksdb")]
use ferroflow_core::state::MemoryStateBackend;
use ferroflow_core::{Context, Operator, Record};
use proptest::prelude::*;

type Ev = (String, i64);
type IdFn = for<'a> fn(&'a Ev) -> &'a str;
type Op = Dedup<Ev, IdFn, str>;

fn id_of(e: &Ev) -> &str {
    &e.0
}

fn new_op(ttl_ms: u64) -> Op {
    Dedup::new("prop", Duration::from_millis(ttl_ms), id_of as IdFn)
}

/// Batches of (id, event time).
fn steps() -> impl Strategy<Value = Vec<Step<(u8, i64)>>> {
    common::steps((0u8..12, 0i64..3_000), 400)
}

fn record(&(id, t): &(u8, i64)) -> Record<Ev> {
    Record::new((format!("id-{id}"), t), t)
}

/// What a run produced: records passed on, records counted as duplicates, ids remembered at the end.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    passed: Vec<(String, i64)>,
    deduplicated: u64,
    remembered: usize,
}

impl Outcome {
    fn of(run: Run<Ev>, op: &Op) -> Self {
        let deduplicated = run.counters.iter().map(|c| c.records_deduplicated).sum();
        Self { passed: run.out, deduplicated, remembered: op.remembered() }
    }
}

#[cfg(feature = "rocksdb")]
fn apply(op: &mut Op, step: &Step<(u8, i64)>, out: &mut Outcome) {
    let new_op = || new_op(0);
    let mut run = Run::default();
    Crashes { new_op: &new_op, record: &record }.apply(op, step, &mut run);
    out.deduplicated += run.counters.iter().map(|c| c.records_deduplicated).sum::<u64>();
    out.passed.extend(run.out);
}

fn uninterrupted(ttl_ms: u64, steps: &[Step<(u8, i64)>]) -> Outcome {
    let new_op = || new_op(ttl_ms);
    let (run, op) = Crashes { new_op: &new_op, record: &record }.uninterrupted(steps);
    Outcome::of(run, &op)
}

fn with_crashes(
    ttl_ms: u64,
    steps: &[Step<(u8, i64)>],
    factory: common::Factory,
    scratch: &std::path::Path,
) -> Outcome {
    with_crashes_under(ttl_ms, steps, factory, scratch, &|_| {})
}

/// As [`with_crashes`], with `attach` called on every operator made (to give it a budget).
fn with_crashes_under(
    ttl_ms: u64,
    steps: &[Step<(u8, i64)>],
    factory: common::Factory,
    scratch: &std::path::Path,
    attach: &dyn Fn(&mut Op),
) -> Outcome {
    let new_op = || {
        let mut op = new_op(ttl_ms);
        attach(&mut op);
        op
    };
    let (run, op) = Crashes { new_op: &new_op, record: &record }.with_crashes(steps, factory, scratch);
    Outcome::of(run, &op)
}

#[cfg(feature = "rocksdb")]
use common::rocksdb;

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn restored_memory_state_equals_uninterrupted_run(ttl_ms in 0u64..1_500, steps in steps()) {
        let tmp = tempfile::tempdir().unwrap();
        let expected = uninterrupted(ttl_ms, &steps);
        let got = with_crashes(ttl_ms, &steps, memory, tmp.path());
        prop_assert_eq!(got, expected);
    }
}

#[cfg(feature = "rocksdb")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn restored_rocksdb_state_equals_uninterrupted_run(ttl_ms in 0u64..1_500, steps in steps()) {
        let tmp = tempfile::tempdir().unwrap();
        let expected = uninterrupted(ttl_ms, &steps);
        let got = with_crashes(ttl_ms, &steps, rocksdb, tmp.path());
        prop_assert_eq!(got, expected);
    }
}

#[cfg(feature = "rocksdb")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Under a budget that holds a few ids or none, ids spill, come back and expire on disk, and
    /// through crashes the output is still exactly the unbounded uninterrupted run's.
    #[test]
    fn under_a_tiny_budget_restored_state_equals_the_unbounded_uninterrupted_run(
        ttl_ms in 0u64..1_500,
        limit in prop_oneof![Just(0usize), 2_000usize..40_000],
        steps in steps(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let budget = ferroflow_core::state::StateBudget::open(limit, tmp.path().join("spill")).unwrap();
        let expected = uninterrupted(ttl_ms, &steps);
        let attach = |op: &mut Op| op.attach_budget(&budget);
        let got = with_crashes_under(ttl_ms, &steps, memory, tmp.path(), &attach);
        prop_assert!(
            limit > 0 || expected.passed.is_empty() || budget.spilled_keys() > 0,
            "nothing spilled under a budget of 0 bytes"
        );
        prop_assert_eq!((got.passed, got.deduplicated), (expected.passed, expected.deduplicated));
    }
}

/// The accounting identity holds through a job run: every input is passed on or deduplicated.
#[test]
fn dedup_in_a_stream_counts_every_dropped_record() {
    use ferroflow_core::Stream;
    use ferroflow_core::time::WatermarkStrategy;

    let mut job = Stream::<Ev>::new()
        .assign_timestamps(|e: &Ev| e.1, WatermarkStrategy::monotonous())
        .dedup_by(Duration::from_secs(10), |e: &Ev| e.0.as_str())
        .into_operator();
    let mut input: Vec<_> = [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("c", 5)]
        .iter()
        .map(|(id, t)| Record::new((id.to_string(), *t), 0))
        .collect();
    let (mut ctx, mut out) = (Context::default(), Vec::new());
    job.process_batch(&mut input, &mut ctx, &mut out);
    let passed: Vec<_> = out.iter().map(|r| (r.payload.0.as_str(), r.event_time)).collect();
    assert_eq!(passed, vec![("a", 1), ("b", 2), ("c", 5)]);
    let c = ctx.counters_mut();
    assert_eq!(c.records_deduplicated, 2);
    assert_eq!(c.records_filtered, 0);
}

/// An id that spilled, was seen again later and sits in memory at the snapshot has two sightings
/// in one checkpoint bucket: the later one must be what the checkpoint keeps.
#[cfg(feature = "rocksdb")]
#[test]
fn a_spilled_id_seen_again_keeps_its_latest_sighting_through_a_restore() {
    let tmp = tempfile::tempdir().unwrap();
    // Room for the first generation's filter and a handful of ids.
    let budget = ferroflow_core::state::StateBudget::open(4_000, tmp.path().join("spill")).unwrap();
    let mut op = new_op(8_000); // checkpoint buckets 1 s wide
    op.attach_budget(&budget);
    let mut state = MemoryStateBackend::new();
    op.snapshot_state(&mut state).unwrap(); // from here on, changes are noted
    let mut out = Outcome::default();
    let mut batch: Vec<(u8, i64)> = vec![(0, 100)];
    batch.extend((1..40).map(|i| (i, 200 + i64::from(i))));
    apply(&mut op, &Step::Batch(batch), &mut out);
    assert!(op.spilled() > 0, "the earliest ids spilled, id-0 among them");
    apply(&mut op, &Step::Batch(vec![(0, 500)]), &mut out);
    assert_eq!(out.deduplicated, 1, "found on disk");
    assert!(op.remembered() > 0, "the latest ids, id-0 among them, are in memory");
    op.snapshot_state(&mut state).unwrap();

    let mut restored = new_op(8_000);
    restored.restore_state(&state).unwrap();
    let mut after = Outcome::default();
    // 100 + 8000 has passed, 500 + 8000 has not: id-0 is still a duplicate.
    apply(&mut restored, &Step::Watermark(8_200), &mut after);
    apply(&mut restored, &Step::Batch(vec![(0, 8_300)]), &mut after);
    assert_eq!((after.passed.len(), after.deduplicated), (0, 1), "{after:?}");
}
