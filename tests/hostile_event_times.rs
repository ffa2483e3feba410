//! Hostile event times. Far ahead of processing time: refused by the watermark generator before
//! they move the watermark. At the ends of the millisecond range: every window kind turns them into
//! `event_time_out_of_range` dead letters instead of overflowing (a panic in debug builds, and in
//! release a wrapped window start and a loop over ~2^64/slide windows: a hang).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use ferroflow::prelude::*;
use ferroflow::testing::OperatorHarness;
use ferroflow::window::WindowResult;

const HOSTILE: [i64; 4] = [i64::MIN, i64::MIN + 5, i64::MAX - 1, i64::MAX];

fn specs() -> Vec<WindowSpec> {
    let s = Duration::from_secs;
    vec![
        WindowSpec::tumbling(s(60)).unwrap(),
        WindowSpec::sliding(s(60), s(10)).unwrap(),
        WindowSpec::session(s(30)).unwrap(),
    ]
}

/// Records at `times`, at offsets 0, 1, 2, … of partition 0, all under one key.
fn records(times: &[i64]) -> Vec<Record<i64>> {
    times
        .iter()
        .zip(0u64..)
        .map(|(&t, o)| Record::new(t, t).with_position(SourcePosition::new(0, o)).with_key("k"))
        .collect()
}

#[test]
fn the_window_operator_dead_letters_event_times_it_cannot_place() {
    for spec in specs() {
        let job = Stream::<i64>::new().key_by(|_| Key::from("k")).window(spec, Count);
        let mut h = OperatorHarness::new(job);
        let mut times = vec![1_000];
        times.extend(HOSTILE);
        h.process(records(&times));
        let dead: Vec<(DeadLetterReason, u64, Option<i64>)> =
            h.dead_letters().iter().map(|d| (d.reason, d.position.offset, d.event_time)).collect();
        let expected: Vec<_> = HOSTILE
            .iter()
            .zip(1u64..)
            .map(|(&t, o)| (DeadLetterReason::EventTimeOutOfRange, o, Some(t)))
            .collect();
        assert_eq!(dead, expected, "{spec:?}");
        assert_eq!(h.counters().records_windowed, 1, "{spec:?}: the record at 1 s is windowed");
        h.advance_watermark(Watermark::MAX); // no watermark generator in this chain
        let rows: Vec<(i64, u64)> =
            h.payloads().iter().map(|r: &WindowResult<u64>| (r.window_start, r.value)).collect();
        assert!(!rows.is_empty() && rows.iter().all(|r| r.1 == 1), "{spec:?}: {rows:?}");
    }
}

#[tokio::test]
async fn a_job_fed_hostile_event_times_finishes_and_accounts_for_them() {
    for spec in specs() {
        let stream = Stream::<i64>::new()
            .assign_timestamps(|t| *t, WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5)))
            .key_by(|_| Key::from("k"))
            .window(spec, Count);
        let mut times = vec![1_000, 2_000];
        times.extend(HOSTILE);
        let (sink, rows) = CollectSink::with_handle();
        let (dlq, dead) = CollectSink::with_handle();
        let mut runner = Runner::default();
        let run = runner.job(MemorySource::new(records(&times)), stream).sink(sink).dead_letters(dlq).run();
        let report = tokio::time::timeout(Duration::from_secs(10), run).await.expect("the job ends").unwrap();
        assert!(report.counters.identity_holds(), "{spec:?}: {:?}", report.counters);
        let dead = dead.take();
        assert_eq!(dead.len(), HOSTILE.len(), "{spec:?}: {dead:?}");
        assert!(dead.iter().all(|d| d.reason == DeadLetterReason::EventTimeOutOfRange), "{spec:?}: {dead:?}");
        assert_eq!(report.counters.dead_letters(DeadLetterReason::EventTimeOutOfRange), HOSTILE.len() as u64);
        let rows = rows.take();
        assert!(rows.iter().any(|r| r.value == 2), "{spec:?}: the two real events are counted: {rows:?}");
    }
}

#[test]
fn an_event_stamped_years_ahead_is_dead_lettered_and_never_moves_the_watermark() {
    // Processing time is 2026-12-02; one producer's clock (or a unit mix-up: seconds read as ms
    // of another era) stamps an event in 2036. Without a bound its partition's watermark jumps ten
    // years ahead for good and every later event is late.
    let now = 1_796_204_800_000; // 2026-12-02T00:00:00Z
    let ten_years = 10 * 365 * 86_400_000;
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5))
        .with_max_time_ahead(Duration::from_secs(3_600));
    let job = Stream::<i64>::new()
        .assign_timestamps(|t| *t, strategy)
        .key_by(|_| Key::from("k"))
        .window(WindowSpec::tumbling(Duration::from_secs(60)).unwrap(), Count);
    let mut h = OperatorHarness::new(job);
    h.set_processing_time(now);
    h.process(records(&[now - 60_000, now + ten_years, now - 59_000, now - 58_000]));
    let dead: Vec<(DeadLetterReason, u64)> =
        h.dead_letters().iter().map(|d| (d.reason, d.position.offset)).collect();
    assert_eq!(dead, vec![(DeadLetterReason::EventTimeOutOfRange, 1)], "only the one ten years ahead");
    assert!(
        h.dead_letters()[0].detail.contains("ahead of processing time"),
        "{}",
        h.dead_letters()[0].detail
    );
    assert_eq!(h.counters().records_windowed, 3);
    assert!(h.watermark().0 < now, "the watermark stays behind now: {:?}", h.watermark());
    // A later event is still on time; one 59 minutes ahead is within the bound.
    let later = |t: i64, o: u64| Record::new(t, t).with_position(SourcePosition::new(0, o)).with_key("k");
    h.process(vec![later(now - 57_000, 4), later(now + 3_599_000, 5)]);
    assert_eq!(h.counters().records_windowed, 5);
    assert_eq!(h.dead_letters().len(), 1, "nothing else dead-lettered");
}
