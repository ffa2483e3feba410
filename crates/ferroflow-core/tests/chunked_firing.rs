//! A firing larger than one chunk: a window (or keyed process) that fires for more keys than
//! `OUTPUT_CHUNK` emits one chunk per call and holds the rest back until asked, with nothing lost,
//! nothing twice, in the same order as all at once, and every step after it sees the rows before
//! the watermark that closes them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use ferroflow_core::operator::{Chain, KeyBy, OUTPUT_CHUNK};
use ferroflow_core::time::Watermark;
use ferroflow_core::window::{Count, WindowOperator, WindowResult, WindowSpec};
use ferroflow_core::{Context, Key, Operator, Record};

/// Keys in the test: a firing of them takes three chunks and a bit.
const KEYS: usize = 3 * OUTPUT_CHUNK + 123;

/// Two records per key, at times spread over `0..50` ms.
fn records() -> Vec<Record<u32>> {
    (0..KEYS)
        .flat_map(|i| {
            let key = Key::from(format!("key-{i:06}"));
            [(i % 50) as i64, (i * 7 % 50) as i64].map(|t| Record::new(0u32, t).with_key(key.clone()))
        })
        .collect()
}

/// Feeds `records` in batches, fires the watermark `w`, and takes the firing chunk by chunk:
/// every chunk holds at most `OUTPUT_CHUNK` rows.
fn fire_in_chunks<O: Operator<In = u32>>(
    op: &mut O,
    records: Vec<Record<u32>>,
    w: i64,
) -> (Vec<Record<O::Out>>, usize, Context) {
    let mut ctx = Context::default();
    let mut out = Vec::new();
    for chunk in records.chunks(10_000) {
        op.process_batch(&mut chunk.to_vec(), &mut ctx, &mut out);
    }
    assert!(out.is_empty(), "nothing fires before the watermark");
    let mut all = Vec::new();
    let mut chunks = 0;
    op.on_watermark(Watermark(w), &mut ctx, &mut out);
    loop {
        assert!(out.len() <= OUTPUT_CHUNK, "a chunk of {} rows", out.len());
        chunks += 1;
        all.append(&mut out);
        if !op.has_pending_output() {
            break;
        }
        op.resume_output(&mut ctx, &mut out);
    }
    (all, chunks, ctx)
}

fn specs() -> Vec<(&'static str, WindowSpec, u64)> {
    vec![
        ("tumbling", WindowSpec::tumbling(Duration::from_millis(10)).unwrap(), 1),
        ("sliding", WindowSpec::sliding(Duration::from_millis(20), Duration::from_millis(10)).unwrap(), 2),
        ("session", WindowSpec::session(Duration::from_millis(3)).unwrap(), 1),
    ]
}

/// The rows of one firing: chunks of at most `OUTPUT_CHUNK` rows, at least four of them.
fn fire_rows(op: &mut WindowOperator<u32, Count>, name: &str) -> Vec<WindowResult<u64>> {
    let (rows, chunks, mut ctx) = fire_in_chunks(op, records(), 1_000);
    assert!(chunks >= 4, "{name}: {chunks} chunks for {} rows", rows.len());
    assert_eq!(ctx.counters_mut().window_rows_emitted, rows.len() as u64, "{name}");
    rows.into_iter().map(|r| r.payload).collect()
}

/// Every kind of window: the firing comes out in chunks, each (key, window) once, in (window end,
/// key) order, counting every record.
#[test]
fn a_firing_of_many_keys_comes_out_in_chunks_once_each_and_in_order() {
    for (name, spec, windows_per_record) in specs() {
        let rows = fire_rows(&mut WindowOperator::new("w", spec, Count), name);
        let total: u64 = rows.iter().map(|r| r.value).sum();
        assert_eq!(total, 2 * KEYS as u64 * windows_per_record, "{name}: every record counted once");
        let distinct: BTreeSet<(&Key, i64)> = rows.iter().map(|r| (&r.key, r.window_start)).collect();
        assert_eq!(distinct.len(), rows.len(), "{name}: a (key, window) emitted twice");
        assert!(
            rows.windows(2).all(|p| (p[0].window_end, &p[0].key) <= (p[1].window_end, &p[1].key)),
            "{name}: rows out of (window end, key) order"
        );
    }
}

/// Under a budget that spills most slots, a chunk can end in the middle of a window's spilled
/// rows: the next one reads on from there, and the rows equal the unbounded firing's.
#[cfg(feature = "rocksdb")]
#[test]
fn a_budgeted_firing_in_chunks_emits_the_rows_of_the_unbounded_one() {
    for (name, spec, _) in specs() {
        let unbounded = fire_rows(&mut WindowOperator::new("w", spec, Count), name);
        let tmp = tempfile::tempdir().unwrap();
        let budget = ferroflow_core::state::StateBudget::open(256 * 1024, tmp.path().join("spill")).unwrap();
        let mut op = WindowOperator::new("w", spec, Count);
        op.attach_budget(&budget);
        let bounded = fire_rows(&mut op, name);
        assert!(budget.spilled_keys() > 0, "{name}: nothing spilled");
        assert!(bounded == unbounded, "{name}: the budgeted firing differs from the unbounded one");
    }
}

/// A window after a window: the second gets every row of the first's firing before the watermark
/// that closes its own window, also when the first emits them over several chunks (else the rows
/// of the later chunks would be late for it).
#[test]
fn a_step_after_a_chunked_firing_sees_the_watermark_after_all_of_its_rows() {
    let tumbling = WindowSpec::tumbling(Duration::from_millis(100)).unwrap();
    let first = WindowOperator::new("per-key", tumbling, Count);
    let all = KeyBy::new(|_: &WindowResult<u64>| Key::from("all"));
    let second = WindowOperator::new("keys", tumbling, Count);
    let mut chain = Chain::new(Chain::new(first, all), second);
    let (out, chunks, mut ctx) = fire_in_chunks(&mut chain, records(), 99);
    assert!(chunks >= 4, "{chunks} chunks");
    let late = ctx.take_dead_letters();
    assert!(late.is_empty(), "{} rows of the first window were late for the second", late.len());
    let values: Vec<u64> = out.iter().map(|r| r.payload.value).collect();
    assert_eq!(values, vec![KEYS as u64], "one row counting every key's row");
}
