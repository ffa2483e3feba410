//! Property test: a `keyed_process` step whose timers (and state) run under a memory budget that
//! holds a few timers or none, checkpointing, crashing and restoring at random points, emits
//! exactly what an unbounded uninterrupted run does: each timer fires once, in time order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(feature = "rocksdb")]

mod common;

use common::{Crashes, Step, memory, rocksdb};
use ferroflow_core::operator::{KeyedContext, KeyedFunction, KeyedProcess, StateDeclarations, ValueState};
use ferroflow_core::state::StateBudget;
use ferroflow_core::{Operator, Record, Rejection};
use proptest::prelude::*;

/// (key, event time, delay of the timer it sets).
type Ev = (u8, i64, i64);
/// (key, timer time, records of the key so far, link of a timer chain).
type Fired = (String, i64, u32, u32);

const COUNT: ValueState<u32> = ValueState::new("count");
const ARMED: ValueState<i64> = ValueState::new("armed");
const CHAIN: ValueState<u32> = ValueState::new("chain");
const GRID: i64 = 25;

/// Each record sets a timer about `delay` after it (some in the past: they fire with the next
/// watermark) and, for an even delay, removes the one the key's last record set. A timer that
/// fires sets the next one on the grid, twice in a row (some at or below the watermark being
/// fired, some already set: they fire once).
struct Rearm;

impl KeyedFunction for Rearm {
    type In = Ev;
    type Out = Fired;

    fn declare(&self, states: &mut StateDeclarations) {
        states.value(COUNT);
        states.value(ARMED);
        states.value(CHAIN);
    }

    fn process(&mut self, (_, t, delay): Ev, ctx: &mut KeyedContext<'_, Fired>) -> Result<(), Rejection> {
        let n = ctx.value(COUNT)?.copied().unwrap_or(0) + 1;
        ctx.set_value(COUNT, n)?;
        if delay % 2 == 0
            && let Some(previous) = ctx.value(ARMED)?.copied()
        {
            ctx.delete_event_time_timer(previous);
        }
        // On a 25 ms grid, so that timers of a key often meet.
        let at = (t + delay).div_euclid(GRID) * GRID;
        ctx.register_event_time_timer(at);
        ctx.set_value(ARMED, at)?;
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, Fired>) -> Result<(), Rejection> {
        let n = ctx.value(COUNT)?.copied().unwrap_or(0);
        let link = ctx.value(CHAIN)?.copied().unwrap_or(0) + 1;
        let key = String::from_utf8_lossy(ctx.key().as_bytes()).into_owned();
        ctx.emit((key, ctx.timestamp(), n, link));
        if link <= 2 {
            ctx.set_value(CHAIN, link)?;
            ctx.register_event_time_timer(ctx.timestamp() + GRID);
        } else {
            ctx.clear_value(CHAIN)?;
        }
        Ok(())
    }
}

fn record(e: &Ev) -> Record<Ev> {
    Record::new(*e, e.1).with_key(format!("key-{}", e.0))
}

fn steps() -> impl Strategy<Value = Vec<Step<Ev>>> {
    common::steps((0u8..40, 0i64..3_000, -40i64..600), 300)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn under_a_tiny_budget_restored_timers_fire_as_in_the_unbounded_uninterrupted_run(
        limit in prop_oneof![Just(0usize), 1_000usize..20_000],
        steps in steps(),
        rocks in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let budget = StateBudget::open(limit, tmp.path().join("spill")).unwrap();
        let unbounded = || KeyedProcess::new("rearm", Rearm);
        let (expected, _) = Crashes { new_op: &unbounded, record: &record }.uninterrupted(&steps);
        let bounded = || {
            let mut op = KeyedProcess::new("rearm", Rearm);
            op.attach_budget(&budget);
            op
        };
        let factory = if rocks { rocksdb } else { memory };
        let (got, op) = Crashes { new_op: &bounded, record: &record }.with_crashes(&steps, factory, tmp.path());
        prop_assert_eq!(got, expected);
        drop(op);
        prop_assert_eq!(budget.used(), 0, "a dropped step gives back what it charged");
    }
}
