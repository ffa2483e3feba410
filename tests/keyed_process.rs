//! `keyed_process`: user functions with per-key value state and event-time timers, pushed through
//! the operator harness and a whole job, with snapshot and restore in the middle of pending timers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferroflow::prelude::*;
use ferroflow::state::MemoryStateBackend;
use ferroflow::testing::OperatorHarness;
use proptest::prelude::*;

/// A heartbeat: (device, event time).
type Beat = (&'static str, i64);

#[path = "../examples/absence.rs"]
mod absence_example;
use absence_example::{Absence, SILENCE_MS};

/// The example, run as it is: its own check of the silences it reports.
#[test]
fn the_absence_example_reports_each_silence_once() {
    absence_example::main().unwrap();
}

fn absence() -> impl IntoOperator<Op: Operator<In = Beat, Out = (String, i64)>> {
    Stream::<Beat>::new()
        .assign_timestamps(|b: &Beat| b.1, WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO))
        .key_by(|b: &Beat| Key::from(b.0))
        .keyed_process(Absence)
        .id("absence")
}

/// `f` on integers that are their own event times, all under one key.
fn one_key<F: KeyedFunction<In = i64>>(f: F) -> impl IntoOperator<Op: Operator<In = i64, Out = F::Out>> {
    Stream::<i64>::new()
        .assign_timestamps(|v: &i64| *v, WatermarkStrategy::monotonous())
        .key_by(|_: &i64| Key::from("k"))
        .keyed_process(f)
}

fn beats(list: &[Beat]) -> Vec<Record<Beat>> {
    list.iter().map(|b| Record::new(*b, 0)).collect()
}

#[test]
fn a_device_silent_for_five_minutes_is_reported_once_with_its_last_beat() {
    let mut h = OperatorHarness::new(absence());
    let m = 60_000; // one minute
    h.process(beats(&[("a", m), ("b", 3 * m / 2), ("a", 3 * m)]));
    assert!(h.payloads().is_empty());
    // Watermark 9 min - 1 ms: a's timer at 8 min fires (its first one, at 6 min, was replaced),
    // and b's at 6.5 min.
    h.process(beats(&[("c", 9 * m)]));
    assert_eq!(h.payloads(), vec![("b".to_owned(), 3 * m / 2), ("a".to_owned(), 3 * m)], "time order");
    h.process(beats(&[("a", 19 * m / 2)]));
    h.process(beats(&[("c", 20 * m)]));
    assert_eq!(
        h.payloads()[2..],
        [("c".to_owned(), 9 * m), ("a".to_owned(), 19 * m / 2)],
        "c's beat 11 min after its last reports that silence; a came back and went silent again"
    );
    assert_eq!(h.counters().records_processed, 6);
    assert!(h.dead_letters().is_empty());
}

/// Registers the same timer twice per record: it fires once.
struct Twice;
const SEEN: ValueState<u32> = ValueState::new("seen");

impl KeyedFunction for Twice {
    type In = i64;
    type Out = (i64, u32);
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(SEEN);
    }
    fn process(&mut self, t: i64, ctx: &mut KeyedContext<'_, (i64, u32)>) -> Result<(), Rejection> {
        let n = ctx.value(SEEN)?.copied().unwrap_or(0) + 1;
        ctx.set_value(SEEN, n)?;
        ctx.register_event_time_timer(t / 1_000 * 1_000 + 999);
        ctx.register_event_time_timer(t / 1_000 * 1_000 + 999);
        Ok(())
    }
    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, (i64, u32)>) -> Result<(), Rejection> {
        let n = ctx.value(SEEN)?.copied().unwrap_or(0);
        ctx.emit((ctx.timestamp(), n));
        Ok(())
    }
}

#[test]
fn a_timer_registered_twice_for_one_key_and_time_fires_once() {
    let job = one_key(Twice);
    let mut h = OperatorHarness::new(job);
    h.process((0..10).map(|i| Record::new(i * 100, 0)).collect());
    h.process(vec![Record::new(5_000, 0)]);
    // The batch's record runs before its watermark: the timer sees 11 records.
    assert_eq!(h.payloads(), vec![(999, 11)], "one timer for (k, 999), fired once");
}

/// Declares no state: a restore of the absence job's checkpoint is refused, naming its state.
struct Forgetful;
impl KeyedFunction for Forgetful {
    type In = Beat;
    type Out = (String, i64);
    fn process(&mut self, _beat: Beat, _ctx: &mut KeyedContext<'_, (String, i64)>) -> Result<(), Rejection> {
        Ok(())
    }
}

#[test]
fn a_checkpoint_with_a_state_the_function_does_not_declare_is_refused_by_name() {
    let mut h = OperatorHarness::new(absence());
    h.process(beats(&[("a", 1_000)]));
    let mut state = MemoryStateBackend::new();
    h.snapshot(&mut state).unwrap();
    let forgetful = Stream::<Beat>::new()
        .assign_timestamps(|b: &Beat| b.1, WatermarkStrategy::monotonous())
        .key_by(|b: &Beat| Key::from(b.0))
        .keyed_process(Forgetful)
        .id("absence");
    let err = OperatorHarness::new(forgetful).restore(&state).unwrap_err();
    assert!(err.to_string().contains("'last-heartbeat'"), "{err}");
}

/// Outputs of the absence job over `input` (in batches of `batch`). With `cuts`, it snapshots
/// into one backend after batch `cuts.0` and keeps going, then snapshots again after batch
/// `cuts.1` (writing only what changed: fired timers and cleared values are deleted) and goes on
/// in a new harness restored from that backend.
fn run_absence(input: &[Beat], batch: usize, cuts: Option<(usize, usize)>) -> Vec<(String, i64)> {
    let mut h = OperatorHarness::new(absence());
    let mut state = MemoryStateBackend::new();
    let mut out = Vec::new();
    for (i, chunk) in input.chunks(batch.max(1)).enumerate() {
        h.process(beats(chunk));
        match cuts {
            Some((first, _)) if first == i => h.snapshot(&mut state).unwrap(),
            Some((_, second)) if second == i => {
                h.snapshot(&mut state).unwrap();
                out.extend(h.payloads());
                h = OperatorHarness::new(absence());
                h.restore(&state).unwrap();
            }
            _ => {}
        }
    }
    h.process(beats(&[("zz-end", i64::MAX / 2)]));
    out.extend(h.payloads());
    out.retain(|(d, _)| d != "zz-end");
    out
}

const DEVICES: [&str; 4] = ["a", "b", "c", "d"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Snapshot and restore in the middle of pending timers and state: the restored run reports
    /// exactly what an uninterrupted one does, each silence once.
    #[test]
    fn restoring_between_batches_equals_an_uninterrupted_run(
        gaps in proptest::collection::vec((0usize..4, 0i64..4 * 60_000), 1..60),
        batch in 1usize..8,
        first in 0usize..10,
        later in 0usize..10,
    ) {
        let mut t = 0i64;
        let input: Vec<Beat> = gaps.iter().map(|&(d, gap)| { t += gap; (DEVICES[d], t) }).collect();
        let whole = run_absence(&input, batch, None);
        prop_assert_eq!(&run_absence(&input, batch, Some((first, first + later))), &whole);
        // An oracle: a device is reported for a beat iff the next beat of the same device comes
        // 5 s or more later (or never).
        let mut expected: Vec<(String, i64)> = Vec::new();
        for (i, (d, at)) in input.iter().enumerate() {
            let next = input[i + 1..].iter().find(|(e, _)| e == d).map(|(_, t)| *t);
            if next.is_none_or(|n| n >= at + SILENCE_MS) {
                expected.push(((*d).to_owned(), *at));
            }
        }
        let (mut got, mut expected) = (whole, expected);
        got.sort();
        expected.sort();
        prop_assert_eq!(got, expected);
    }
}

#[tokio::test]
async fn a_job_with_timers_accounts_for_every_record() {
    let m = 60_000;
    let input: Vec<Beat> = vec![("a", m), ("b", 2 * m), ("a", 4 * m), ("b", 12 * m), ("a", 30 * m)];
    let source = MemorySource::of(input.iter().copied()).with_batch_size(2);
    let (sink, rows) = CollectSink::with_handle();
    let mut runner = Runner::builder().workers(1).build().unwrap();
    let report = runner.job(source, absence()).sink(sink).discard_dead_letters().run().await.unwrap();
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
    assert_eq!(report.counters.records_processed, 5);
    let mut got = rows.take();
    got.sort();
    // At the end of input the watermark reaches the end of time: every pending timer fires.
    assert_eq!(
        got,
        vec![
            ("a".to_owned(), 4 * m),
            ("a".to_owned(), 30 * m),
            ("b".to_owned(), 2 * m),
            ("b".to_owned(), 12 * m)
        ]
    );
}

/// The absence job as copies on 2 and 3 workers (records traded by key, each copy's timers for
/// the keys it owns) reports what one chain reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_report_the_silences_one_chain_reports() {
    let m = 60_000;
    let devices = ["a", "b", "c", "d", "e", "f", "g"];
    let input: Vec<Beat> = (0..600i64)
        .map(|i| (devices[(i * 7 % 11 % 7) as usize], i * m / 3 + (i % 5) * m * (i % 3)))
        .collect();
    let mut results = Vec::new();
    for workers in [1, 2, 3] {
        let source = MemorySource::of(input.clone()).with_batch_size(16);
        let (sink, rows) = CollectSink::with_handle();
        let mut runner = Runner::builder().workers(workers).build().unwrap();
        let report =
            runner.parallel_job(source, absence).sink(sink).discard_dead_letters().run().await.unwrap();
        assert!(report.counters.identity_holds(), "{workers} workers: {:?}", report.counters);
        let mut got = rows.take();
        got.sort();
        assert!(got.len() > 20, "{workers} workers: {} silences", got.len());
        results.push(got);
    }
    assert_eq!(results[1], results[0], "2 copies");
    assert_eq!(results[2], results[0], "3 copies");
}

/// Refuses odd values; counts the others.
struct Picky;
const KEPT: ValueState<u64> = ValueState::new("kept");

impl KeyedFunction for Picky {
    type In = i64;
    type Out = u64;
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(KEPT);
    }
    fn process(&mut self, v: i64, ctx: &mut KeyedContext<'_, u64>) -> Result<(), Rejection> {
        if v % 2 != 0 {
            return Err(Rejection::new(DeadLetterReason::ProcessingError, format!("{v} is odd")));
        }
        let n = ctx.value(KEPT)?.copied().unwrap_or(0) + 1;
        ctx.set_value(KEPT, n)?;
        ctx.emit(n);
        Ok(())
    }
}

#[test]
fn a_rejected_record_is_a_dead_letter_and_not_also_processed() {
    let job = one_key(Picky);
    let mut h = OperatorHarness::new(job);
    h.process((0..10).map(|v| Record::new(v, 0)).collect());
    let c = h.counters();
    assert_eq!((c.records_processed, c.records_dead_lettered()), (5, 5), "each of the 10 counted once");
    assert_eq!(h.payloads(), vec![1, 2, 3, 4, 5]);
    assert!(h.dead_letters().iter().all(|d| d.detail.contains("is odd")));
}

/// Counts records in a state it forgot to declare.
struct Undeclared;
const NOT_DECLARED: ValueState<u64> = ValueState::new("not-declared");

impl KeyedFunction for Undeclared {
    type In = i64;
    type Out = u64;
    fn process(&mut self, _v: i64, ctx: &mut KeyedContext<'_, u64>) -> Result<(), Rejection> {
        ctx.set_value(NOT_DECLARED, 1)?;
        ctx.emit(1);
        Ok(())
    }
}

#[test]
fn a_state_used_without_being_declared_fails_at_the_first_record_not_at_the_first_restore() {
    let job = one_key(Undeclared);
    let mut h = OperatorHarness::new(job);
    h.process(vec![Record::new(1, 0)]);
    assert!(h.payloads().is_empty(), "what a refused record emitted is dropped");
    let dead = h.dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].detail.contains("'not-declared' is not declared"), "{}", dead[0].detail);
}

/// On each timer, registers a timer at its own time again (a time the watermark reached).
struct Again;
const FIRED: ValueState<u32> = ValueState::new("fired");

impl KeyedFunction for Again {
    type In = i64;
    type Out = (i64, u32);
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(FIRED);
    }
    fn process(&mut self, t: i64, ctx: &mut KeyedContext<'_, (i64, u32)>) -> Result<(), Rejection> {
        ctx.register_event_time_timer(t);
        Ok(())
    }
    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, (i64, u32)>) -> Result<(), Rejection> {
        let n = ctx.value(FIRED)?.copied().unwrap_or(0) + 1;
        ctx.set_value(FIRED, n)?;
        ctx.emit((ctx.timestamp(), n));
        ctx.register_event_time_timer(ctx.timestamp());
        Ok(())
    }
}

#[test]
fn a_timer_that_registers_its_own_time_again_fires_once_per_watermark() {
    let job = one_key(Again);
    let mut h = OperatorHarness::new(job);
    h.process(vec![Record::new(1_000, 0)]);
    h.process(vec![Record::new(2_000, 0)]);
    h.process(vec![Record::new(3_000, 0)]);
    assert_eq!(h.payloads(), vec![(1_000, 1), (1_000, 2), (2_000, 3)], "once per watermark, not for ever");
}

/// Copies of a job snapshot their own keys into one backend, one after the other: the first
/// snapshot of one copy must not remove the rows another copy has just written.
#[test]
fn copies_snapshotting_into_one_backend_keep_each_others_state() {
    let m = 60_000;
    let mut state = MemoryStateBackend::new();
    for device in ["a", "b"] {
        let mut copy = OperatorHarness::new(absence());
        copy.process(beats(&[(device, m)]));
        copy.snapshot(&mut state).unwrap();
    }
    let mut restored = OperatorHarness::new(absence());
    restored.restore(&state).unwrap();
    restored.process(beats(&[("c", 20 * m)]));
    let mut got = restored.payloads();
    got.sort();
    assert_eq!(got, vec![("a".to_owned(), m), ("b".to_owned(), m)], "both copies' timers and values survive");
}
