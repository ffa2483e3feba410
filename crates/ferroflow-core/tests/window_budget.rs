//! Property test: tumbling, sliding and session windows under a memory budget that holds a few slots or
//! none, checkpointing, crashing and restoring at random points, emit exactly the rows and counters
//! of an unbounded uninterrupted run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(feature = "rocksdb")]

mod common;

use std::time::Duration;

use common::{Crashes, Step, memory, rocksdb};
use ferroflow_core::state::StateBudget;
use ferroflow_core::window::{Count, Sum, WindowOperator, WindowSpec};
use ferroflow_core::{Operator, Record};
use proptest::prelude::*;

/// (key, event time, value).
type Ev = (u8, i64, i64);
type Agg = (Count, Sum<Ev, fn(&Ev) -> f64>);
type Op = WindowOperator<Ev, Agg>;

fn value(e: &Ev) -> f64 {
    e.2 as f64
}

fn new_op(spec: WindowSpec) -> Op {
    WindowOperator::new("windows", spec, (Count, Sum::of(value as fn(&Ev) -> f64)))
}

fn record(e: &Ev) -> Record<Ev> {
    Record::new(*e, e.1).with_key(format!("key-{}", e.0))
}

fn spec() -> impl Strategy<Value = WindowSpec> {
    let tumbling = (20u64..600).prop_map(|size| WindowSpec::tumbling(Duration::from_millis(size)).unwrap());
    let sliding = (1u64..5, 20u64..200).prop_map(|(times, slide)| {
        WindowSpec::sliding(Duration::from_millis(slide * times), Duration::from_millis(slide)).unwrap()
    });
    let session = (10u64..300).prop_map(|gap| WindowSpec::session(Duration::from_millis(gap)).unwrap());
    let lateness = 0u64..800;
    (prop_oneof![tumbling, sliding, session], lateness)
        .prop_map(|(spec, lateness)| spec.with_allowed_lateness(Duration::from_millis(lateness)))
}

fn steps() -> impl Strategy<Value = Vec<Step<Ev>>> {
    common::steps((0u8..40, 0i64..3_000, -5i64..5), 400)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn under_a_tiny_budget_restored_windows_equal_the_unbounded_uninterrupted_run(
        spec in spec(),
        limit in prop_oneof![Just(0usize), 2_000usize..40_000],
        steps in steps(),
        rocks in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let budget = StateBudget::open(limit, tmp.path().join("spill")).unwrap();
        let unbounded = || new_op(spec);
        let (expected, _) = Crashes { new_op: &unbounded, record: &record }.uninterrupted(&steps);
        let bounded = || {
            let mut op = new_op(spec);
            op.attach_budget(&budget);
            op
        };
        let factory = if rocks { rocksdb } else { memory };
        let (got, _) = Crashes { new_op: &bounded, record: &record }.with_crashes(&steps, factory, tmp.path());
        prop_assert!(
            limit > 0 || expected.out.is_empty() || budget.spilled_keys() > 0,
            "nothing spilled under a budget of 0 bytes"
        );
        prop_assert_eq!(got, expected);
    }
}

/// A window fires with some of its keys in memory and the rest spilled: the rows come out in key
/// order, merged, as from the unbounded run.
#[test]
fn a_window_half_in_memory_fires_its_rows_in_key_order() {
    let spec = WindowSpec::tumbling(Duration::from_millis(1_000)).unwrap();
    let batch: Vec<Ev> = (0..40u8).map(|k| (k, i64::from(k) * 10, 1)).collect();
    let steps = vec![Step::Batch(batch), Step::Watermark(999)];
    let tmp = tempfile::tempdir().unwrap();
    let budget = StateBudget::open(4_000, tmp.path().join("spill")).unwrap();
    let unbounded = || new_op(spec);
    let (expected, _) = Crashes { new_op: &unbounded, record: &record }.uninterrupted(&steps[..1]);
    assert!(expected.out.is_empty());
    let bounded = || {
        let mut op = new_op(spec);
        op.attach_budget(&budget);
        op
    };
    let crashes = Crashes { new_op: &bounded, record: &record };
    let (mut got, mut op) = crashes.uninterrupted(&steps[..1]);
    assert!(budget.spilled_keys() > 0 && budget.used() > 0, "some slots spilled, some stayed");
    crashes.apply(&mut op, &steps[1], &mut got);
    let (expected, _) = Crashes { new_op: &unbounded, record: &record }.uninterrupted(&steps);
    assert_eq!(got.out.len(), 40);
    assert_eq!(got, expected);
}
