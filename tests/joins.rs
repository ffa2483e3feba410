//! Jobs with two inputs through the runner: each input's partitions hold the watermark the join
//! step sees, until the input ends or goes idle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::{wait_until, within};
use ferroflow::metrics::InputCounts;
use ferroflow::prelude::*;
use ferroflow::source::{RIGHT_PARTITIONS, UnionSource};
use ferroflow::testing::ScriptedSource;
use ferroflow::time::ManualClock;
use tokio::sync::Notify;

#[path = "../examples/ad_clicks.rs"]
mod ad_clicks_example;

#[test]
fn the_ad_clicks_example_joins_impressions_with_their_clicks() {
    ad_clicks_example::main().unwrap();
}

type Ev = Either<(String, i64), (String, i64)>;

fn at(e: Either<i64, i64>, partition: u32, offset: u64) -> Record<Ev> {
    let e = e.map_either(|t| ("a".to_owned(), t), |t| ("a".to_owned(), t));
    Record::new(e, 0).with_position(SourcePosition::new(partition, offset))
}

#[tokio::test]
async fn a_record_is_late_only_behind_the_lower_of_both_inputs_watermarks() {
    let right = RIGHT_PARTITIONS;
    let source = ScriptedSource::new()
        .assign(vec![0, right])
        .records(vec![at(Either::Left(10_000), 0, 0), at(Either::Right(50_000), right, 0)])
        // Behind its own input's watermark (49 s), not behind the left input's (9 s): on time.
        .records(vec![at(Either::Right(12_000), right, 1)])
        .records(vec![at(Either::Left(60_000), 0, 1)])
        // Behind both (the left input's is now 59 s, the right's 49 s): late.
        .records(vec![at(Either::Right(30_000), right, 2)])
        .finish(0)
        .finish(right);
    let join = IntervalJoin::inner(0, 5_000, |l: &(String, i64), r: &(String, i64)| (l.1, r.1)).unwrap();
    let job = Stream::<Ev>::new()
        .assign_timestamps(
            |e| e.as_ref().either(|l| l.1, |r| r.1),
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(1)),
        )
        .key_by(|e| Key::from(e.as_ref().either(|l| &l.0, |r| &r.0)))
        .interval_join(join.with_input_names("views", "clicks"));
    let (sink, rows) = CollectSink::with_handle();
    let (dead_letters, dead) = CollectSink::with_handle();
    let report =
        Runner::default().job(source, job).sink(sink).dead_letters(dead_letters).run().await.unwrap();
    assert_eq!(rows.take(), [(10_000, 12_000)]);
    let dead: Vec<DeadLetter> = dead.take();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, DeadLetterReason::LateEvent);
    assert!(dead[0].detail.contains("'clicks'"), "{}", dead[0].detail);
    assert_eq!(dead[0].position, SourcePosition::new(right, 2));
    assert_eq!(report.counters.records_in, 5);
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
}

#[tokio::test]
async fn each_input_of_a_union_accounts_for_its_own_records() {
    let source = UnionSource::new(MemorySource::of([1u64, 2, 3, 4]), MemorySource::of([10u64, 11, 12]));
    // The second input's odd records are filtered out, its 12 refused; each of the first's
    // becomes two.
    let job = Stream::<Either<u64, u64>>::new()
        .filter(|e: &Either<u64, u64>| !matches!(e, Either::Right(x) if x % 2 == 1))
        .try_map(|e: &Either<u64, u64>| match e {
            Either::Right(12) => Err(Rejection::decode("twelve")),
            other => Ok(*other),
        })
        .flat_map(|e: Either<u64, u64>| match e {
            Either::Left(x) => vec![x, x],
            Either::Right(x) => vec![x],
        });
    let (sink, rows) = CollectSink::with_handle();
    let report = Runner::default().job(source, job).sink(sink).discard_dead_letters().run().await.unwrap();
    assert_eq!(rows.len(), 9);
    let first = InputCounts { records_in: 4, records_expanded: 4, records_out: 8, ..Default::default() };
    let second = InputCounts {
        records_in: 3,
        records_filtered: 1,
        records_dead_lettered: 1,
        records_out: 1,
        ..Default::default()
    };
    assert_eq!(report.counters.inputs, Some([first, second]));
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
}

#[tokio::test]
async fn each_input_accounts_for_its_duplicates_and_windowed_records() {
    let ids = |ids: &[&str]| MemorySource::of(ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    let source = UnionSource::new(ids(&["a", "b", "b", "c"]), ids(&["x", "x", "y"]));
    let job = Stream::<Either<String, String>>::new()
        .assign_timestamps(|_| 1_000, WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO))
        .dedup_by(Duration::from_secs(60), |e: &Either<String, String>| {
            e.as_ref().either(String::as_str, String::as_str)
        })
        .key_by(|_| Key::from("all"))
        .window(WindowSpec::tumbling(Duration::from_secs(10)).unwrap(), Count);
    let (sink, rows) = CollectSink::with_handle();
    let report = Runner::default().job(source, job).sink(sink).discard_dead_letters().run().await.unwrap();
    assert_eq!(rows.take().iter().map(|r| r.value).collect::<Vec<_>>(), [5]);
    let first =
        InputCounts { records_in: 4, records_deduplicated: 1, records_windowed: 3, ..Default::default() };
    let second =
        InputCounts { records_in: 3, records_deduplicated: 1, records_windowed: 2, ..Default::default() };
    assert_eq!(report.counters.inputs, Some([first, second]));
}

/// A view or click of key `a` at time `t`, read from partition `p` of its own input.
fn ad(p: PartitionId, t: i64, offset: u64) -> Record<(String, i64)> {
    Record::new(("a".to_owned(), t), 0).with_position(SourcePosition::new(p, offset))
}

/// Partition `p`'s task: views joined with the clicks 0-5 s after them, tagged with `p`.
fn co_partitioned_join(
    p: PartitionId,
) -> impl IntoOperator<Op: Operator<In = Ev, Out = (PartitionId, i64, i64)>> {
    let join = IntervalJoin::inner(0, 5_000, |l: &(String, i64), r: &(String, i64)| (l.1, r.1)).unwrap();
    Stream::<Ev>::new()
        .assign_timestamps(
            |e| e.as_ref().either(|l| l.1, |r| r.1),
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(1)),
        )
        .key_by(|e| Key::from(e.as_ref().either(|l| &l.0, |r| &r.0)))
        .interval_join(join)
        .map(move |(l, r)| (p, l, r))
}

/// Runs [`co_partitioned_join`] per partition over `views` and `clicks`: its rows, sorted, and
/// how the run ended.
async fn run_co_partitioned(
    runner: &mut Runner,
    views: ScriptedSource<(String, i64)>,
    clicks: ScriptedSource<(String, i64)>,
) -> (Vec<(PartitionId, i64, i64)>, Result<JobReport, JobError>) {
    let (sink, rows) = CollectSink::with_handle();
    let report = runner
        .job_per_partition(UnionSource::new(views, clicks), co_partitioned_join)
        .sink(sink)
        .discard_dead_letters()
        .run()
        .await;
    let mut rows = rows.take();
    rows.sort_unstable();
    (rows, report)
}

#[tokio::test]
async fn a_job_per_partition_joins_partition_p_of_one_input_with_partition_p_of_the_other() {
    for workers in [1, 2] {
        // Key `a` in both partitions of both inputs: a task must see its own partition of each.
        let views = ScriptedSource::new()
            .assign(vec![0, 1])
            .records(vec![ad(0, 1_000, 0), ad(1, 2_000, 0)])
            .finish(0)
            .finish(1);
        let clicks = ScriptedSource::new()
            .assign(vec![0, 1])
            .records(vec![ad(0, 1_500, 0), ad(1, 2_500, 0), ad(0, 2_200, 1)])
            .finish(0)
            .finish(1);
        let mut runner = Runner::builder().workers(workers).build().unwrap();
        let (rows, report) = run_co_partitioned(&mut runner, views, clicks).await;
        let report = report.unwrap();
        assert_eq!(rows, [(0, 1_000, 1_500), (0, 1_000, 2_200), (1, 2_000, 2_500)], "{workers} workers");
        let views = InputCounts { records_in: 2, records_processed: 2, ..Default::default() };
        let clicks = InputCounts { records_in: 3, records_processed: 3, ..Default::default() };
        assert_eq!(report.counters.inputs, Some([views, clicks]), "{workers} workers");
        // One watermark per partition of each input, two tasks.
        let partitions: Vec<u32> = report.counters.partitions.iter().map(|s| s.partition).collect();
        assert_eq!(partitions, [0, 1, RIGHT_PARTITIONS, RIGHT_PARTITIONS + 1]);
        assert!(report.counters.identity_holds(), "{:?}", report.counters);
    }
}

#[tokio::test]
async fn a_job_per_partition_over_inputs_with_other_partitions_fails_and_says_how_to_fix_it() {
    let views = ScriptedSource::new().assign(vec![0, 1, 2]).records(vec![ad(2, 1_000, 0)]).finish(2);
    let clicks = ScriptedSource::new().assign(vec![0, 1]).records(vec![ad(0, 1_500, 0)]).finish(0);
    let (rows, report) = run_co_partitioned(&mut Runner::default(), views, clicks).await;
    let message = report.unwrap_err().to_string();
    assert!(message.contains("not co-partitioned"), "{message}");
    assert!(message.contains("only in the first: [2]"), "{message}");
    assert!(message.contains("--partitions"), "{message}");
    assert!(rows.is_empty(), "nothing joined before the check");
}

/// Orders (left: key, time) priced with the rate (right: key, time, rate) valid at their time.
type Priced = (i64, Option<u32>);

/// Runs a temporal join of `orders` (waiting on `end` after its records) and `rates` through a
/// union with 1 s idleness on a manual clock; returns the job, its rows and its counters.
fn priced_orders(
    orders: ScriptedSource<(String, i64)>,
    rates: ScriptedSource<(String, i64, u32)>,
    clock: &ManualClock,
) -> (
    tokio::task::JoinHandle<Result<JobReport, JobError>>,
    ferroflow::sink::Collected<Priced>,
    ferroflow::metrics::JobCounters,
) {
    let join =
        TemporalJoin::left_outer(|o: &(String, i64), r: Option<&(String, i64, u32)>| (o.1, r.map(|r| r.2)));
    let job = Stream::<Either<(String, i64), (String, i64, u32)>>::new()
        .assign_timestamps(
            |e| e.as_ref().either(|o| o.1, |r| r.1),
            WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO).with_idleness(Duration::from_secs(1)),
        )
        .key_by(|e| Key::from(e.as_ref().either(|o| &o.0, |r| &r.0)))
        .temporal_join(join.with_input_names("orders", "rates"));
    let mut runner = common::runner_on(clock);
    let counters = runner.counters();
    let (sink, rows) = CollectSink::with_handle();
    let job = tokio::spawn(async move {
        runner.job(UnionSource::new(orders, rates), job).sink(sink).discard_dead_letters().run().await
    });
    (job, rows, counters)
}

fn order(t: i64, offset: u64) -> Record<(String, i64)> {
    Record::new(("EUR".to_owned(), t), 0).with_position(SourcePosition::new(0, offset))
}

fn rate(t: i64, rate: u32) -> Record<(String, i64, u32)> {
    Record::new(("EUR".to_owned(), t, rate), 0).with_position(SourcePosition::new(0, 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_table_input_ends_early_the_orders_join_as_their_own_watermark_passes() {
    let end = Arc::new(Notify::new());
    let orders =
        ScriptedSource::new().assign(vec![0]).records(vec![order(2_000, 0), order(5_000, 1)]).wait(&end);
    let rates = ScriptedSource::new().assign(vec![0]).records(vec![rate(1_000, 7)]).finish(0);
    let clock = ManualClock::new(0);
    let (job, rows, counters) = priced_orders(orders, rates, &clock);
    // The rates input has ended: only the orders' watermark (just below 5 s) holds the join back.
    wait_until(10, "the order at 2 s", || rows.len() == 1).await;
    assert_eq!(rows.take(), [(2_000, Some(7))]);
    assert_eq!(counters.snapshot().watermark, 4_999);
    end.notify_one();
    let report = within(10, "the job", job).await.unwrap().unwrap();
    assert_eq!(rows.take(), [(5_000, Some(7))], "the last order goes at the end of input");
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_table_input_holds_the_orders_back_until_it_is_idle() {
    let (more, end, rates_end) = (Arc::new(Notify::new()), Arc::new(Notify::new()), Arc::new(Notify::new()));
    let orders = ScriptedSource::new()
        .assign(vec![0])
        .records(vec![order(2_000, 0), order(5_000, 1)])
        .wait(&more)
        .records(vec![order(6_000, 2)])
        .wait(&end)
        .finish(0);
    let rates =
        ScriptedSource::new().assign(vec![0]).records(vec![rate(1_000, 7)]).wait(&rates_end).finish(0);
    let clock = ManualClock::new(0);
    let (job, rows, counters) = priced_orders(orders, rates, &clock);
    wait_until(10, "both inputs' records", || counters.snapshot().records_in == 3).await;
    clock.set(600);
    more.notify_one();
    wait_until(10, "the third order", || counters.snapshot().records_in == 4).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // ~20 ticks
    assert!(rows.is_empty(), "the rates input is not idle yet: a rate on its way may still come");
    assert_eq!(counters.snapshot().watermark, 999);
    // Silent for 1.1 s: idle; the orders' own watermark (just below 6 s) is the join's.
    clock.set(1_100);
    wait_until(10, "the orders before 6 s", || rows.len() == 2).await;
    assert_eq!(rows.take(), [(2_000, Some(7)), (5_000, Some(7))]);
    assert_eq!(counters.snapshot().watermark, 5_999);
    end.notify_one();
    rates_end.notify_one();
    let report = within(10, "the job", job).await.unwrap().unwrap();
    assert_eq!(rows.take(), [(6_000, Some(7))]);
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
}
