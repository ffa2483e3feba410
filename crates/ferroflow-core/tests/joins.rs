//! The interval and temporal joins: golden cases, oracles (a nested loop, an as-of lookup) under
//! random arrival orders and watermarks, and crashes with restores (and a memory budget) that
//! change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Crashes, Step, memory};
use ferroflow_core::join::{Either, IntervalJoin, TemporalJoin, WindowJoin};
use ferroflow_core::operator::{KeyedFunction, KeyedProcess};
use ferroflow_core::time::Watermark;
use ferroflow_core::window::WindowSpec;
use ferroflow_core::{Context, DeadLetter, DeadLetterReason, Key, Operator, Record};
use proptest::prelude::*;

/// A side's record: (key, event time).
type Side = (u8, i64);
/// A join's row: (key, left time, right time, or none for an unmatched left record).
type Row = (u8, i64, Option<i64>);
/// One input of the property tests: key, right side, event time.
type Ev = (u8, bool, i64);

type Join = KeyedProcess<IntervalJoin<Side, Side, Row>>;
type Temporal = KeyedProcess<TemporalJoin<Side, Side, Row>>;
type Windowed = KeyedProcess<WindowJoin<Side, Side, Row>>;

fn inner(lower: i64, upper: i64) -> Join {
    KeyedProcess::new(
        "join",
        IntervalJoin::inner(lower, upper, |l: &Side, r: &Side| (l.0, l.1, Some(r.1))).unwrap(),
    )
}

fn left_outer(lower: i64, upper: i64) -> Join {
    let join =
        IntervalJoin::left_outer(lower, upper, |l: &Side, r: Option<&Side>| (l.0, l.1, r.map(|r| r.1)));
    KeyedProcess::new("join", join.unwrap().with_input_names("orders", "payments"))
}

fn record(e: &Ev) -> Record<Either<Side, Side>> {
    let side = if e.1 { Either::Right((e.0, e.2)) } else { Either::Left((e.0, e.2)) };
    Record::new(side, e.2).with_key(Key::from(format!("key-{}", e.0)))
}

/// Drives a join by hand: batches and watermarks, collecting rows (with their event time) and
/// dead letters.
struct Driver<F: KeyedFunction<In = Either<Side, Side>, Out = Row>> {
    op: KeyedProcess<F>,
    ctx: Context,
    rows: Vec<(Row, i64)>,
}

impl<F: KeyedFunction<In = Either<Side, Side>, Out = Row>> Driver<F> {
    fn new(op: KeyedProcess<F>) -> Self {
        Self { op, ctx: Context::default(), rows: Vec::new() }
    }

    fn batch(&mut self, evs: &[Ev]) -> Vec<(Row, i64)> {
        let mut input: Vec<_> = evs.iter().map(record).collect();
        let mut out = Vec::new();
        self.op.process_batch(&mut input, &mut self.ctx, &mut out);
        self.keep(out)
    }

    fn watermark(&mut self, w: i64) -> Vec<(Row, i64)> {
        let mut out = Vec::new();
        self.op.on_watermark(Watermark(w), &mut self.ctx, &mut out);
        self.keep(out)
    }

    fn keep(&mut self, out: Vec<Record<Row>>) -> Vec<(Row, i64)> {
        let rows: Vec<_> = out.into_iter().map(|r| (r.payload, r.event_time)).collect();
        self.rows.extend(rows.iter().copied());
        rows
    }

    fn dead_letters(&mut self) -> Vec<DeadLetter> {
        self.ctx.take_dead_letters()
    }
}

#[test]
fn pairs_within_the_bounds_join_once_at_the_later_time_whichever_side_comes_first() {
    let mut j = Driver::new(inner(-5, 10));
    // Right first, then left: 12 is within [20 - 5, 20 + 10]? No: 12 < 15.
    assert_eq!(j.batch(&[(1, true, 12), (1, true, 15), (1, true, 30), (1, true, 31)]), []);
    assert_eq!(j.batch(&[(1, false, 20)]), [((1, 20, Some(15)), 20), ((1, 20, Some(30)), 30)]);
    // A later right record finds the waiting left one; another key does not.
    assert_eq!(j.batch(&[(1, true, 25), (2, true, 25)]), [((1, 20, Some(25)), 25)]);
    j.watermark(1_000);
    assert_eq!(j.op.held(), (0, 0), "every record let go once the watermark passed its interval");
    assert_eq!(j.rows.len(), 3, "each pair once");
}

#[test]
fn a_record_at_or_below_the_watermark_is_a_late_dead_letter_naming_its_input() {
    let mut j = Driver::new(left_outer(0, 10));
    j.batch(&[(1, false, 100)]);
    j.watermark(100);
    assert_eq!(j.batch(&[(1, true, 100), (1, false, 50)]), []);
    let dls = j.dead_letters();
    assert_eq!(dls.len(), 2);
    assert!(dls.iter().all(|d| d.reason == DeadLetterReason::LateEvent));
    assert!(dls[0].detail.contains("'payments'"), "{}", dls[0].detail);
    assert!(dls[1].detail.contains("'orders'"), "{}", dls[1].detail);
    // Just above the watermark is on time.
    assert_eq!(j.batch(&[(1, true, 101)]), [((1, 100, Some(101)), 101)]);
    assert_eq!(j.ctx.counters_mut().records_processed, 2);
}

#[test]
fn left_outer_emits_an_unmatched_left_record_only_once_its_interval_has_passed() {
    let mut j = Driver::new(left_outer(0, 10));
    j.batch(&[(1, false, 100), (2, false, 100)]);
    assert_eq!(j.watermark(109), [], "a partner at 110 could still come");
    assert_eq!(j.batch(&[(2, true, 110)]), [((2, 100, Some(110)), 110)]);
    assert_eq!(
        j.watermark(110),
        [((1, 100, None), 110)],
        "key 2 met a partner: no outer row; at the interval's end"
    );
    j.watermark(200);
    assert_eq!(j.batch(&[(3, false, 201)]), []);
    assert_eq!(j.watermark(210), [], "a partner at 211 could still come");
    assert_eq!(j.watermark(211), [((3, 201, None), 211)]);
    // With partners only before it, a left record's interval can be over when it comes: it is
    // emitted at once and not kept.
    let mut j = Driver::new(left_outer(-10, -5));
    j.watermark(200);
    assert_eq!(j.batch(&[(3, false, 203)]), [((3, 203, None), 203)]);
    assert_eq!(j.op.held(), (0, 0));
}

#[test]
fn a_record_waits_until_the_watermark_reaches_the_end_of_its_own_interval_not_a_neighbours() {
    // Timers at 110 and 111 for the left records at 100 and 101; the watermark stops at 110.
    let mut j = Driver::new(inner(0, 10));
    j.batch(&[(1, false, 100), (1, false, 101)]);
    j.watermark(110);
    assert_eq!(j.batch(&[(1, true, 111)]), [((1, 101, Some(111)), 111)]);
    // The same for right records, which wait until `ts - lower`.
    let mut j = Driver::new(inner(-10, 0));
    j.batch(&[(1, true, 100), (1, true, 101)]);
    j.watermark(110);
    assert_eq!(j.batch(&[(1, false, 111)]), [((1, 111, Some(101)), 111)]);
}

#[test]
fn an_inner_join_with_lopsided_waits_lets_go_of_each_side_when_its_own_wait_ends() {
    // Impressions (left) wait an hour for a click, clicks (right) only until their own time.
    let mut j = Driver::new(inner(0, 3_600_000));
    j.batch(&[(1, true, 100), (2, true, 200), (3, false, 150)]);
    j.watermark(200);
    assert_eq!(j.op.held(), (1, 1), "the clicks went at their own time, the impression waits");
    // Waits within a factor of two share one clean-up: a click may stay as long as an
    // impression waits, and goes with the clean-up after that, writes or none.
    let mut j = Driver::new(inner(-5_000, 10_000));
    j.batch(&[(1, true, 100)]);
    j.watermark(10_099);
    assert_eq!(j.op.held(), (1, 0));
    j.watermark(30_000);
    assert_eq!(j.op.held(), (0, 0));
}

#[test]
fn the_end_of_time_lets_go_of_every_record_even_just_after_a_clean_up() {
    let mut j = Driver::new(inner(-10, 10));
    j.batch(&[(1, false, i64::MAX - 5)]);
    j.watermark(i64::MAX - 1);
    j.watermark(i64::MAX);
    assert_eq!(j.op.held(), (0, 0));
}

#[test]
fn negative_bounds_join_partners_before_the_left_record() {
    let mut j = Driver::new(inner(-20, -10));
    assert_eq!(j.batch(&[(1, true, 85), (1, true, 90), (1, true, 95)]), []);
    assert_eq!(
        j.batch(&[(1, false, 105)]),
        [((1, 105, Some(85)), 105), ((1, 105, Some(90)), 105), ((1, 105, Some(95)), 105)]
    );
    assert_eq!(j.batch(&[(1, false, 111)]), [((1, 111, Some(95)), 111)]);
}

#[test]
fn absurd_times_and_bounds_neither_overflow_nor_lose_pairs() {
    let mut j = Driver::new(inner(i64::MIN / 2, i64::MAX / 2));
    j.batch(&[(1, false, i64::MAX - 1), (1, true, i64::MIN + 1), (1, true, i64::MAX)]);
    j.batch(&[(1, false, i64::MIN + 2)]);
    let mut rows: Vec<_> = j.rows.iter().map(|r| r.0).collect();
    rows.sort();
    assert_eq!(rows, [(1, i64::MIN + 2, Some(i64::MIN + 1)), (1, i64::MAX - 1, Some(i64::MAX))]);
    j.watermark(i64::MAX);
    assert_eq!(j.op.held(), (0, 0), "the end of time lets every record go");
    assert!(IntervalJoin::<Side, Side, Row>::inner(1, 0, |_, r| (0, 0, Some(r.1))).is_err());
}

#[test]
fn near_the_end_of_time_a_gap_below_the_lower_bound_is_no_pair_and_outer_rows_still_come() {
    let mut j = Driver::new(left_outer(10, 20));
    // 5 ms apart, and the lower bound is 10: no pair, although `ts + lower` is beyond i64::MAX.
    j.batch(&[(1, true, i64::MAX), (1, false, i64::MAX - 5), (2, false, i64::MAX - 1)]);
    assert_eq!(j.batch(&[(3, true, i64::MAX - 3), (3, false, i64::MAX - 30)]), []);
    let mut rows = j.watermark(i64::MAX);
    rows.sort();
    let expected = [
        ((1, i64::MAX - 5, None), i64::MAX),
        ((2, i64::MAX - 1, None), i64::MAX),
        ((3, i64::MAX - 30, None), i64::MAX - 10),
    ];
    assert_eq!(rows, expected);
    assert_eq!(j.op.held(), (0, 0));
}

fn temporal(outer: bool) -> Temporal {
    let join = if outer {
        TemporalJoin::left_outer(|l: &Side, r: Option<&Side>| (l.0, l.1, r.map(|r| r.1)))
    } else {
        TemporalJoin::inner(|l: &Side, r: &Side| (l.0, l.1, Some(r.1)))
    };
    KeyedProcess::new("temporal", join.with_input_names("events", "users"))
}

#[test]
fn an_event_takes_the_version_valid_at_its_time_even_one_that_came_after_it() {
    let mut j = Driver::new(temporal(true));
    j.batch(&[(1, true, 100), (1, false, 150), (1, true, 200), (2, false, 150)]);
    assert_eq!(j.batch(&[(1, true, 140), (1, false, 210)]), [], "events wait for the watermark");
    assert_eq!(j.watermark(150), [((1, 150, Some(140)), 150), ((2, 150, None), 150)]);
    assert_eq!(j.watermark(300), [((1, 210, Some(200)), 210)]);
    assert_eq!(j.op.held(), (1, 0), "one version left: the one valid now");
}

#[test]
fn the_inner_temporal_join_emits_nothing_for_an_event_without_a_version_and_late_records_are_dead_letters() {
    let mut j = Driver::new(temporal(false));
    j.batch(&[(1, false, 100), (2, true, 50), (2, false, 100)]);
    assert_eq!(j.watermark(100), [((2, 100, Some(50)), 100)]);
    assert_eq!(j.batch(&[(2, true, 100), (2, false, 90)]), []);
    let dls = j.dead_letters();
    assert_eq!(dls.len(), 2);
    assert!(dls[0].detail.contains("'users'") && dls[1].detail.contains("'events'"), "{dls:?}");
    assert!(dls.iter().all(|d| d.reason == DeadLetterReason::LateEvent));
}

#[test]
fn the_latest_value_lookup_joins_at_once_in_arrival_order() {
    let latest = TemporalJoin::left_outer(|l: &Side, r: Option<&Side>| (l.0, l.1, r.map(|r| r.1))).latest();
    let mut j = Driver::new(KeyedProcess::new("latest", latest));
    assert_eq!(j.batch(&[(1, false, 10)]), [((1, 10, None), 10)]);
    j.watermark(1_000);
    // Neither input is late in processing order; a version replaces the previous one, whatever
    // its time.
    assert_eq!(
        j.batch(&[(1, true, 500), (1, false, 20), (1, true, 5), (1, false, 30)]),
        [((1, 20, Some(500)), 20), ((1, 30, Some(5)), 30)]
    );
    assert!(j.dead_letters().is_empty());
}

/// The rows an as-of join must emit: each on-time event with its key's latest on-time version at
/// or before its time (left outer: `None` without one).
fn as_of(steps: &[Step<Ev>], outer: bool) -> Vec<Row> {
    let (events, versions) = on_time(steps);
    let mut rows: Vec<Row> = events
        .iter()
        .filter_map(|e| {
            let valid = versions.iter().filter(|v| v.0 == e.0 && v.2 <= e.2).map(|v| v.2).max();
            (valid.is_some() || outer).then_some((e.0, e.2, valid))
        })
        .collect();
    rows.sort();
    rows
}

fn window_join(size: i64, slide: i64, lateness: i64) -> Windowed {
    let ms = |v: i64| std::time::Duration::from_millis(v as u64);
    let spec = WindowSpec::sliding(ms(size), ms(slide)).unwrap().with_allowed_lateness(ms(lateness));
    let join = WindowJoin::new(spec, |l: &Side, r: &Side| (l.0, l.1, Some(r.1))).unwrap();
    KeyedProcess::new("window", join.with_input_names("orders", "payments"))
}

#[test]
fn a_window_join_pairs_records_of_one_window_when_it_fires_at_its_last_millisecond() {
    let mut j = Driver::new(window_join(100, 100, 0));
    assert_eq!(j.batch(&[(1, false, 10), (1, true, 90), (1, true, 100), (2, true, 50)]), []);
    assert_eq!(j.watermark(99), [((1, 10, Some(90)), 99)]);
    assert_eq!(j.batch(&[(1, false, 150)]), []);
    assert_eq!(j.watermark(199), [((1, 150, Some(100)), 199)]);
    assert_eq!(j.op.held(), (0, 0));
}

#[test]
fn a_sliding_window_join_pairs_in_every_window_holding_both() {
    let mut j = Driver::new(window_join(100, 50, 0));
    j.batch(&[(1, false, 60), (1, true, 80), (1, true, 120)]);
    let mut rows = j.watermark(1_000);
    rows.sort();
    // [0, 100): 60 and 80; [50, 150): 60, 80 and 120; [100, 200): 120 alone.
    assert_eq!(rows, [((1, 60, Some(80)), 99), ((1, 60, Some(80)), 149), ((1, 60, Some(120)), 149)]);
}

#[test]
fn a_late_record_within_the_lateness_pairs_at_once_and_one_beyond_it_is_a_dead_letter() {
    let mut j = Driver::new(window_join(100, 100, 50));
    j.batch(&[(1, false, 10), (1, true, 20)]);
    assert_eq!(j.watermark(120), [((1, 10, Some(20)), 99)]);
    // Only the new pairs: (10, 95), and (30, 20), (30, 95).
    assert_eq!(j.batch(&[(1, true, 95)]), [((1, 10, Some(95)), 99)]);
    assert_eq!(j.batch(&[(1, false, 30)]), [((1, 30, Some(20)), 99), ((1, 30, Some(95)), 99)]);
    // A key the window had nothing of when it fired: its late records pair at once too.
    assert_eq!(j.batch(&[(2, false, 50), (2, true, 60)]), [((2, 50, Some(60)), 99)]);
    j.watermark(149);
    assert_eq!(j.batch(&[(1, true, 40)]), []);
    let dls = j.dead_letters();
    assert_eq!(dls.len(), 1);
    assert!(dls[0].detail.contains("'payments'"), "{}", dls[0].detail);
    assert_eq!(j.op.held(), (0, 0), "the window went at 99 + 50");
    // The watermark exactly at the window's last millisecond: it has fired.
    let mut j = Driver::new(window_join(100, 100, 50));
    j.watermark(99);
    assert_eq!(j.batch(&[(3, false, 10), (3, true, 20)]), [((3, 10, Some(20)), 99)]);
}

fn session_join(gap: i64, lateness: i64) -> Windowed {
    let ms = |v: i64| std::time::Duration::from_millis(v as u64);
    let spec = WindowSpec::session(ms(gap)).unwrap().with_allowed_lateness(ms(lateness));
    let join = WindowJoin::new(spec, |l: &Side, r: &Side| (l.0, l.1, Some(r.1))).unwrap();
    KeyedProcess::new("sessions", join.with_input_names("orders", "payments"))
}

#[test]
fn a_session_join_pairs_the_records_of_both_inputs_that_form_one_session() {
    let mut j = Driver::new(session_join(10, 0));
    // [0, 15) holds 0 and 5; 30 opens [30, 40) of its own.
    assert_eq!(j.batch(&[(1, false, 0), (1, true, 5), (1, true, 30)]), []);
    assert_eq!(j.watermark(14), [((1, 0, Some(5)), 14)]);
    // A left record at 22 touches [30, 40) (not [0, 15), already gone): [22, 40).
    assert_eq!(j.batch(&[(1, false, 22)]), []);
    assert_eq!(j.watermark(38), []);
    assert_eq!(j.watermark(39), [((1, 22, Some(30)), 39)]);
    assert_eq!(j.op.held(), (0, 0));
    // Records exactly a gap apart share a session.
    j.batch(&[(2, false, 100), (2, true, 110)]);
    assert_eq!(j.watermark(1_000), [((2, 100, Some(110)), 119)]);
}

#[test]
fn a_late_merge_into_a_fired_session_emits_only_the_new_pairs_and_bridges_sessions() {
    let mut j = Driver::new(session_join(10, 20));
    j.batch(&[(1, false, 0), (1, true, 5)]);
    assert_eq!(j.watermark(14), [((1, 0, Some(5)), 14)]);
    // 12 extends the fired [0, 15) to [0, 22): it fires again at 21, with the new pair only.
    assert_eq!(j.batch(&[(1, true, 12)]), []);
    assert_eq!(j.watermark(21), [((1, 0, Some(12)), 21)]);
    // Two fired sessions of key 2 without pairs, [0, 10) and [18, 28); a late 9 bridges them into
    // [0, 28), which the watermark has passed: the pairs across them go out at once.
    j.batch(&[(2, false, 0), (2, true, 18)]);
    assert_eq!(j.watermark(27), []);
    let mut rows = j.batch(&[(2, false, 9)]);
    rows.sort();
    assert_eq!(rows, [((2, 0, Some(18)), 27), ((2, 9, Some(18)), 27)]);
    // Past the allowed lateness of its own session: a dead letter naming its input, even though
    // it touches [0, 28), still held until 47.
    assert_eq!(j.watermark(40), []);
    assert_eq!(j.batch(&[(2, true, 3)]), []);
    let dls = j.dead_letters();
    assert_eq!(dls.len(), 1);
    assert_eq!(dls[0].reason, DeadLetterReason::LateEvent);
    assert!(dls[0].detail.contains("'payments'"), "{}", dls[0].detail);
    j.watermark(47);
    assert_eq!(j.op.held(), (0, 0));
    // A time no session can hold.
    assert_eq!(j.batch(&[(3, false, i64::MAX - 1)]), []);
    assert_eq!(j.dead_letters()[0].reason, DeadLetterReason::EventTimeOutOfRange);
}

/// The rows a session join must emit, by a model that keeps, per key, sessions of record indices
/// and the set of pairs emitted so far: every session the watermark has passed emits its pairs
/// not in the set.
fn session_pairs(steps: &[Step<Ev>], gap: i64, lateness: i64) -> Vec<Row> {
    use std::collections::BTreeSet;
    let mut watermark = i64::MIN;
    let mut records: Vec<Ev> = Vec::new();
    // (start, end exclusive, record indices)
    let mut sessions: Vec<(i64, i64, Vec<usize>)> = Vec::new();
    let mut emitted: BTreeSet<(usize, usize)> = BTreeSet::new();
    let fire = |sessions: &[(i64, i64, Vec<usize>)],
                records: &[Ev],
                watermark: i64,
                emitted: &mut BTreeSet<(usize, usize)>| {
        for (_, _, ids) in sessions.iter().filter(|s| s.1 - 1 <= watermark) {
            for &l in ids.iter().filter(|&&i| !records[i].1) {
                for &r in ids.iter().filter(|&&i| records[i].1) {
                    emitted.insert((l, r));
                }
            }
        }
    };
    for s in steps {
        match s {
            Step::Batch(b) => {
                for e in b {
                    if e.2 + gap - 1 + lateness <= watermark {
                        continue;
                    }
                    records.push(*e);
                    let id = records.len() - 1;
                    let (mut start, mut end, mut ids) = (e.2, e.2 + gap, vec![id]);
                    sessions.retain(|(s, en, is)| {
                        let touches = records[is[0]].0 == e.0 && *s <= e.2 + gap && e.2 <= *en;
                        if touches {
                            start = start.min(*s);
                            end = end.max(*en);
                            ids.extend(is);
                        }
                        !touches
                    });
                    sessions.push((start, end, ids));
                    fire(&sessions, &records, watermark, &mut emitted);
                }
            }
            Step::Watermark(w) => {
                watermark = watermark.max(*w);
                fire(&sessions, &records, watermark, &mut emitted);
                sessions.retain(|s| (s.1 - 1).saturating_add(lateness) > watermark);
            }
            Step::Checkpoint | Step::Crash => {}
        }
    }
    let mut rows: Vec<Row> =
        emitted.iter().map(|&(l, r)| (records[l].0, records[l].2, Some(records[r].2))).collect();
    rows.sort();
    rows
}

/// The rows a window join must emit: for each window, every pair of one key among the records
/// the window took (it had not passed its allowed lateness when they came).
fn windowed_pairs(steps: &[Step<Ev>], size: i64, slide: i64, lateness: i64) -> Vec<Row> {
    let mut watermark = i64::MIN;
    // (record, window start) for each window that took it.
    let mut taken: Vec<(Ev, i64)> = Vec::new();
    for s in steps {
        match s {
            Step::Batch(b) => {
                for e in b {
                    let last = e.2 - e.2.rem_euclid(slide);
                    let starts = (0..).map(|k| last - k * slide).take_while(|s| *s > e.2 - size);
                    taken.extend(starts.filter(|s| s + size - 1 + lateness > watermark).map(|s| (*e, s)));
                }
            }
            Step::Watermark(w) => watermark = watermark.max(*w),
            Step::Checkpoint | Step::Crash => {}
        }
    }
    let mut rows = Vec::new();
    for (l, ws) in taken.iter().filter(|(e, _)| !e.1) {
        for (r, _) in taken.iter().filter(|(e, s)| e.1 && e.0 == l.0 && s == ws) {
            rows.push((l.0, l.2, Some(r.2)));
        }
    }
    rows.sort();
    rows
}

/// The rows a join must emit: every pair of one key within the bounds (left outer: and every
/// left record without one), among the records that were on time when they came.
/// The records that were on time when they came (above the watermark), in arrival order: left
/// ones, right ones.
fn on_time(steps: &[Step<Ev>]) -> (Vec<Ev>, Vec<Ev>) {
    let mut watermark = i64::MIN;
    let mut on_time = Vec::new();
    for s in steps {
        match s {
            Step::Batch(b) => on_time.extend(b.iter().filter(|e| e.2 > watermark).copied()),
            Step::Watermark(w) => watermark = watermark.max(*w),
            Step::Checkpoint | Step::Crash => {}
        }
    }
    on_time.into_iter().partition(|e| !e.1)
}

fn oracle(steps: &[Step<Ev>], lower: i64, upper: i64, outer: bool) -> Vec<Row> {
    let (lefts, rights) = on_time(steps);
    let mut rows = Vec::new();
    for l in &lefts {
        let partners: Vec<Row> = rights
            .iter()
            .filter(|r| r.0 == l.0 && l.2 + lower <= r.2 && r.2 <= l.2 + upper)
            .map(|r| (l.0, l.2, Some(r.2)))
            .collect();
        if partners.is_empty() && outer {
            rows.push((l.0, l.2, None));
        }
        rows.extend(partners);
    }
    rows.sort();
    rows
}

/// The join's rows (sorted) equal `oracle`, nothing waits after the last watermark, and a run
/// with crashes and restores from memory checkpoints emits what the uninterrupted one does.
fn equals_oracle_and_survives_crashes<F>(
    new_op: &dyn Fn() -> KeyedProcess<F>,
    steps: &[Step<Ev>],
    oracle: Vec<Row>,
) -> Result<(), TestCaseError>
where
    F: KeyedFunction<In = Either<Side, Side>, Out = Row>,
{
    let crashes = Crashes { new_op, record: &record };
    let (expected, op) = crashes.uninterrupted(steps);
    let mut rows = expected.out.clone();
    rows.sort();
    prop_assert_eq!(rows, oracle);
    prop_assert_eq!(op.held(), (0, 0), "nothing waits after the last watermark");
    let tmp = tempfile::tempdir().unwrap();
    let (got, _) = crashes.with_crashes(steps, memory, tmp.path());
    prop_assert_eq!(got, expected);
    Ok(())
}

/// Under a memory budget of `limit` bytes (RocksDB checkpoints, crashes and restores), the join
/// emits what the unbounded uninterrupted run does, and gives back every byte it charged.
#[cfg(feature = "rocksdb")]
fn budgeted_equals_unbounded<F>(
    new_op: &dyn Fn() -> KeyedProcess<F>,
    steps: &[Step<Ev>],
    limit: usize,
) -> Result<(), TestCaseError>
where
    F: KeyedFunction<In = Either<Side, Side>, Out = Row>,
{
    use ferroflow_core::state::StateBudget;
    let (expected, _) = Crashes { new_op, record: &record }.uninterrupted(steps);
    let tmp = tempfile::tempdir().unwrap();
    let budget = StateBudget::open(limit, tmp.path().join("spill")).unwrap();
    let bounded = || {
        let mut op = new_op();
        op.attach_budget(&budget);
        op
    };
    let (got, op) =
        Crashes { new_op: &bounded, record: &record }.with_crashes(steps, common::rocksdb, tmp.path());
    prop_assert_eq!(got, expected);
    drop(op);
    prop_assert_eq!(budget.used(), 0, "a dropped step gives back what it charged");
    Ok(())
}

fn steps() -> impl Strategy<Value = Vec<Step<Ev>>> {
    common::steps((0u8..4, any::<bool>(), 0i64..120), 16).prop_map(|mut s| {
        // The end of input: every interval passes.
        s.push(Step::Watermark(i64::MAX));
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_join_equals_a_nested_loop_over_the_on_time_records_and_crashes_change_nothing(
        steps in steps(),
        lower in -12i64..8,
        width in 0i64..16,
        outer in any::<bool>(),
    ) {
        let upper = lower + width;
        equals_oracle_and_survives_crashes(&|| if outer { left_outer(lower, upper) } else { inner(lower, upper) }, &steps, oracle(&steps, lower, upper, outer))?;
    }
}

#[cfg(feature = "rocksdb")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn under_a_tiny_budget_with_crashes_the_join_emits_what_the_unbounded_run_does(
        steps in steps(),
        limit in prop_oneof![Just(0usize), 500usize..8_000],
        outer in any::<bool>(),
    ) {
        budgeted_equals_unbounded(&|| if outer { left_outer(-6, 6) } else { inner(-6, 6) }, &steps, limit)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_temporal_join_equals_an_as_of_lookup_over_the_on_time_records_and_crashes_change_nothing(
        steps in steps(),
        outer in any::<bool>(),
    ) {
        let new_op = || temporal(outer);
        let crashes = Crashes { new_op: &new_op, record: &record };
        let (expected, op) = crashes.uninterrupted(&steps);
        let mut rows = expected.out.clone();
        rows.sort();
        prop_assert_eq!(rows, as_of(&steps, outer));
        prop_assert!(op.held().0 <= 4, "at most one version per key after the last watermark: {:?}", op.held());
        let tmp = tempfile::tempdir().unwrap();
        let (got, _) = crashes.with_crashes(&steps, memory, tmp.path());
        prop_assert_eq!(got, expected);
    }
}

#[cfg(feature = "rocksdb")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn under_a_tiny_budget_with_crashes_the_temporal_join_emits_what_the_unbounded_run_does(
        steps in steps(),
        limit in prop_oneof![Just(0usize), 500usize..8_000],
    ) {
        budgeted_equals_unbounded(&|| temporal(true), &steps, limit)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_window_join_equals_the_pairs_of_each_window_and_crashes_change_nothing(
        steps in steps(),
        size in 5i64..60,
        slide_part in 1i64..=4,
        lateness in prop_oneof![Just(0i64), 1i64..40],
    ) {
        let slide = (size / slide_part).max(1);
        equals_oracle_and_survives_crashes(&|| window_join(size, slide, lateness), &steps, windowed_pairs(&steps, size, slide, lateness))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_session_join_equals_a_model_of_merging_sessions_and_crashes_change_nothing(
        steps in steps(),
        gap in 1i64..30,
        lateness in prop_oneof![Just(0i64), 1i64..40],
    ) {
        equals_oracle_and_survives_crashes(&|| session_join(gap, lateness), &steps, session_pairs(&steps, gap, lateness))?;
    }
}

#[cfg(feature = "rocksdb")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn under_a_tiny_budget_with_crashes_the_session_join_emits_what_the_unbounded_run_does(
        steps in steps(),
        limit in prop_oneof![Just(0usize), 500usize..8_000],
    ) {
        budgeted_equals_unbounded(&|| session_join(7, 10), &steps, limit)?;
    }
}
