//! Partition-scoped jobs: one task per source partition with its own watermark, idle partitions
//! following the job, and partition state handed over between two instances through their
//! checkpoints when partitions move.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferroflow::checkpoint::{CheckpointStore, S3Options};
use ferroflow::join::IntervalJoin;
use ferroflow::operator::IntoOperator;
use ferroflow::prelude::Either;
use ferroflow::sink::CollectSink;
use ferroflow::source::RIGHT_PARTITIONS;
use ferroflow::state::MemoryStateBackend;
use ferroflow::testing::ScriptedSource;
use ferroflow::time::{ManualClock, WatermarkStrategy};
use ferroflow::window::{Count, WindowResult, WindowSpec};
use ferroflow::{Key, Operator, PartitionId, Runner, RunnerConfig, Stream};
use tokio::sync::Notify;

use common::{wait_until, within};

/// (partition, window start, events) of a row.
type Row = (PartitionId, i64, u64);

/// Each partition's task: event time from the payload, 10 s windows counting events, rows
/// tagged with the partition.
fn task(p: PartitionId, idleness: Option<Duration>) -> impl IntoOperator<Op: Operator<In = i64, Out = Row>> {
    let mut strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO);
    if let Some(t) = idleness {
        strategy = strategy.with_idleness(t);
    }
    Stream::<i64>::new()
        .assign_timestamps(|t: &i64| *t, strategy)
        .key_by(|_: &i64| Key::from("k"))
        .window(WindowSpec::tumbling(Duration::from_secs(10)).unwrap(), Count)
        .map(move |r: WindowResult<u64>| (p, r.window_start, r.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_partition_follows_its_own_watermark_and_an_idle_one_follows_the_job() {
    let clock = ManualClock::new(0);
    let data =
        BTreeMap::from([(0, (1..=9).map(|i| i * 1_000).chain([15_000, 16_000]).collect()), (1, vec![2_000])]);
    let (go, end) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let source =
        ScriptedSource::over(data).assign(vec![0, 1]).read(0, 10).read(1, 1).wait(&go).read(0, 1).wait(&end);
    let mut runner = common::runner_on(&clock);
    let counters = runner.counters();
    let sink = CollectSink::new();
    let rows = sink.handle();
    let job = tokio::spawn(async move {
        runner
            .job_per_partition(source, |p| task(p, Some(Duration::from_secs(1))))
            .sink(sink)
            .dead_letters(CollectSink::new())
            .run()
            .await
    });

    // Partition 0's own watermark (14 999) closes its first window at once; with one chain for the
    // job, partition 1 (at 1 999) would hold it back.
    within(10, "partition 0's window", async {
        while rows.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(rows.take(), vec![(0, 0, 9)]);
    // The job's watermark is the minimum over tasks: partition 1's, once its worker has reported.
    wait_until(10, "the job's watermark at partition 1's", || counters.snapshot().watermark == 1_999).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(rows.is_empty(), "partition 1 is not idle yet: its window stays open");
    assert_eq!(counters.snapshot().watermark, 1_999, "the job's watermark stays the minimum over tasks");

    // Partition 0 delivers again at 600 ms; at 1 100 ms partition 1 has been silent for 1.1 s
    // (idle), partition 0 for 0.5 s. Idle, partition 1 follows the job's watermark (partition
    // 0's), and its window closes.
    clock.set(600);
    go.notify_one();
    within(10, "the second batch", async {
        while counters.snapshot().records_in < 12 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    clock.set(1_100);
    within(10, "partition 1's window", async {
        while rows.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(rows.take(), vec![(1, 0, 1)]);
    assert_eq!(counters.snapshot().watermark, 15_999);
    let idle: Vec<bool> = counters.snapshot().partitions.iter().map(|p| p.idle).collect();
    assert_eq!(idle, vec![false, true], "the report covers both tasks");

    end.notify_one();
    let report = within(10, "the job", job).await.unwrap().unwrap();
    assert_eq!(rows.take(), vec![(0, 10_000, 2)], "end of input closes the rest");
    assert!(report.counters.identity_holds());
}

/// A partition whose first records are still on their way through another worker holds the job's
/// watermark: its task starts below any watermark, whether or not its worker has reported yet.
/// Partition 1's worker is held inside its first record while partition 0 runs ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_its_worker_has_not_reported_on_holds_the_job_watermark() {
    let open = Arc::new(AtomicBool::new(false));
    let data = BTreeMap::from([(0, (1..=9).map(|i| i * 1_000).chain([15_000]).collect()), (1, vec![2_000])]);
    let end = Arc::new(Notify::new());
    let source = ScriptedSource::over(data).assign(vec![0, 1]).read(1, 1).read(0, 10).wait(&end);
    let mut runner = Runner::new(RunnerConfig {
        workers: 2,
        tick_interval: Duration::from_millis(5),
        ..RunnerConfig::default()
    });
    let counters = runner.counters();
    let (sink, rows) = CollectSink::with_handle();
    let job_gate = Arc::clone(&open);
    let job = tokio::spawn(async move {
        runner
            .job_per_partition(source, move |p| {
                let gate = Arc::clone(&job_gate);
                Stream::<i64>::new()
                    .map(move |t: i64| {
                        while p == 1 && !gate.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        t
                    })
                    .assign_timestamps(
                        |t: &i64| *t,
                        WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO),
                    )
                    .key_by(|_: &i64| Key::from("k"))
                    .window(WindowSpec::tumbling(Duration::from_secs(10)).unwrap(), Count)
                    .map(move |r: WindowResult<u64>| (p, r.window_start, r.value))
            })
            .sink(sink)
            .discard_dead_letters()
            .run()
            .await
    });

    wait_until(10, "partition 0's window", || !rows.is_empty()).await;
    assert_eq!(rows.take(), vec![(0, 0, 9)]);
    // Ticks pass: the coordinator takes the workers' reports many times over.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held_back = counters.snapshot().watermark;
    assert!(
        held_back < 1_999,
        "partition 1 holds the job's watermark before its worker reports: {held_back}"
    );
    open.store(true, Ordering::Release);
    wait_until(10, "partition 1's record", || counters.snapshot().watermark == 1_999).await;

    end.notify_one();
    let report = within(10, "the job", job).await.unwrap().unwrap();
    assert!(report.counters.identity_holds());
}

/// Instance `name` of a partition-scoped job on the shared checkpoint base.
fn instance(base: &CheckpointStore, name: &str, scratch: &std::path::Path) -> Runner {
    Runner::builder()
        .workers(2) // hand-over with several workers per instance
        .checkpoint_store(base.clone())
        .job_id("job")
        .scratch_dir(scratch.join(name))
        .every(Duration::from_secs(3600)) // only the revoke and the end checkpoint
        .instance(name)
        .state(MemoryStateBackend::new())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_partitions_continue_on_another_instance_from_their_checkpointed_state() {
    let scratch = tempfile::tempdir().unwrap();
    let base = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
    // One event a second for a minute per partition, then one that closes every window.
    let data: BTreeMap<PartitionId, Vec<i64>> =
        (0..2).map(|p| (p, (0..60).map(|s| s * 1_000).chain([200_000]).collect())).collect();

    // The reference: one instance reads everything.
    let (sink, rows) = {
        let s = CollectSink::new();
        let h = s.handle();
        (s, h)
    };
    let all = ScriptedSource::over(data.clone()).assign(vec![0, 1]).read(0, 100).read(1, 100);
    Runner::default()
        .job_per_partition(all, |p| task(p, None))
        .sink(sink)
        .dead_letters(CollectSink::new())
        .run()
        .await
        .unwrap();
    let mut expected = rows.take();
    expected.sort_unstable();
    assert_eq!(expected.len(), 2 * 7, "6 full windows and the closing one per partition");

    // Instance a reads part of each partition, mid-window, then the group takes both away.
    let (sink, rows_a) = {
        let s = CollectSink::new();
        let h = s.handle();
        (s, h)
    };
    let script =
        ScriptedSource::over(data.clone()).assign(vec![0, 1]).read(0, 25).read(1, 37).revoke(vec![0, 1]);
    let report_a = instance(&base, "a", scratch.path())
        .job_per_partition(script, |p| task(p, None))
        .sink(sink)
        .dead_letters(CollectSink::new())
        .run()
        .await
        .unwrap();
    assert!(report_a.checkpoints_taken >= 1, "the revoke took a checkpoint");

    // Instance b is assigned both: it finds a's checkpoint and resumes from it, state included.
    let (sink, rows_b) = {
        let s = CollectSink::new();
        let h = s.handle();
        (s, h)
    };
    let source_b = ScriptedSource::over(data.clone()).assign(vec![0, 1]).read(0, 100).read(1, 100);
    let answers = source_b.hook_answers();
    let report_b = instance(&base, "b", scratch.path())
        .job_per_partition(source_b, |p| task(p, None))
        .sink(sink)
        .dead_letters(CollectSink::new())
        .run()
        .await
        .unwrap();
    assert_eq!(*answers.lock().unwrap(), vec![BTreeMap::from([(0, 25), (1, 37)])], "resumed at a's offsets");
    assert_eq!(report_b.restored_from, None, "b had no checkpoint of its own");

    // Together they emitted exactly the reference rows: the window that was half done when the
    // partitions moved (20–30 s of partition 0, 30–40 s of partition 1) counts events from both.
    let mut together: Vec<Row> = rows_a.take().into_iter().chain(rows_b.take()).collect();
    together.sort_unstable();
    assert_eq!(together, expected);
    assert_eq!(report_a.counters.records_in + report_b.counters.records_in, 2 * 61);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_a_revoked_partition_stop_the_job_instead_of_rebuilding_its_task() {
    let scratch = tempfile::tempdir().unwrap();
    let base = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
    let data: BTreeMap<PartitionId, Vec<i64>> = BTreeMap::from([(0, (0..20).map(|s| s * 1_000).collect())]);
    // A broken source: partition 0's records keep coming after its revocation.
    let script = ScriptedSource::over(data).assign(vec![0]).read(0, 10).revoke(vec![0]).read(0, 10);
    let err = within(
        10,
        "the job",
        instance(&base, "a", scratch.path())
            .job_per_partition(script, |p| task(p, None))
            .sink(CollectSink::new())
            .dead_letters(CollectSink::new())
            .run(),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("partition 0 offset 10") && text.contains("not assigned"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_assigned_back_resumes_from_the_state_it_was_released_with() {
    let scratch = tempfile::tempdir().unwrap();
    let base = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
    let data: BTreeMap<PartitionId, Vec<i64>> =
        BTreeMap::from([(0, (0..60).map(|s| s * 1_000).chain([200_000]).collect())]);
    let reference = {
        let (sink, rows) = CollectSink::with_handle();
        let all = ScriptedSource::over(data.clone()).assign(vec![0]).read(0, 100);
        Runner::default()
            .job_per_partition(all, |p| task(p, None))
            .sink(sink)
            .discard_dead_letters()
            .run()
            .await
            .unwrap();
        rows.take()
    };
    // Revoked at 20 (a checkpoint there), assigned back, revoked at 50, assigned back again: the
    // second return must start from the state released at 50, not from the older checkpoint at
    // 20, which is all a hand-over decided before the job had released the partition could see.
    let script = ScriptedSource::over(data)
        .assign(vec![0])
        .read(0, 20)
        .revoke(vec![0])
        .assign(vec![0])
        .read(0, 30)
        .revoke(vec![0])
        .assign(vec![0])
        .read(0, 100);
    let answers = script.hook_answers();
    let (sink, rows) = CollectSink::with_handle();
    let report = within(
        20,
        "the job",
        instance(&base, "a", scratch.path())
            .job_per_partition(script, |p| task(p, None))
            .sink(sink)
            .discard_dead_letters()
            .run(),
    )
    .await
    .unwrap();
    assert_eq!(
        *answers.lock().unwrap(),
        vec![BTreeMap::new(), BTreeMap::from([(0, 20)]), BTreeMap::from([(0, 50)])],
        "each return resumes where the partition was released"
    );
    assert_eq!(report.counters.records_in, 61, "nothing read twice");
    assert_eq!(rows.take(), reference);
}

/// A job-scoped chain (one watermark over every partition) loses a partition that held its
/// watermark back: the watermark moves at the revocation and windows fire there. Their rows must
/// reach the sink like any others; a window that fired into nothing would never be emitted again.
/// The same for the chain run as two copies on two workers.
#[tokio::test]
async fn windows_fired_by_a_revocation_reach_the_sink() {
    for copies in [None, Some(2)] {
        // Partition 0 runs ahead to 10 minutes; partition 1 stays at the start and holds the watermark.
        let data = BTreeMap::from([(0, (0..600i64).map(|s| s * 1_000).collect()), (1, vec![0i64])]);
        let source = ScriptedSource::over(data).assign(vec![0, 1]).read(1, 1).read(0, 600).revoke(vec![1]);
        let stream = || {
            Stream::<i64>::new()
                .assign_timestamps(|t: &i64| *t, WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO))
                .key_by(|t: &i64| Key::from(format!("k{}", t % 3).as_str()))
                .window(WindowSpec::tumbling(Duration::from_secs(60)).unwrap(), Count)
                .id("counts")
        };
        let (sink, rows) = CollectSink::with_handle();
        let report = match copies {
            None => Runner::default().job(source, stream()).sink(sink).discard_dead_letters().run().await,
            Some(n) => {
                let mut runner = Runner::builder().workers(n).build().unwrap();
                within(
                    30,
                    "the job",
                    runner.parallel_job(source, stream).sink(sink).discard_dead_letters().run(),
                )
                .await
            }
        };
        let report = report.unwrap();
        assert!(report.counters.identity_holds(), "{:?}", report.counters);
        let mut per_minute = BTreeMap::new();
        for r in rows.take() {
            let r: WindowResult<u64> = r;
            *per_minute.entry(r.window_start).or_insert(0u64) += r.value;
        }
        // Ten windows; the first has partition 1's event too. The last one closes at the end of input.
        let expected: BTreeMap<i64, u64> =
            (0..10).map(|m| (m * 60_000, if m == 0 { 61 } else { 60 })).collect();
        assert_eq!(per_minute, expected, "copies: {copies:?}");
    }
}

#[tokio::test]
async fn a_job_per_partition_over_a_union_refuses_to_run_as_one_of_several_instances() {
    // The inputs of a union change hands independently; task p's two partitions must move together.
    let scratch = tempfile::tempdir().unwrap();
    let base = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
    let one = || ScriptedSource::<i64>::new().assign(vec![0]).finish(0);
    let source = ferroflow::source::UnionSource::new(one(), one());
    let err = instance(&base, "a", scratch.path())
        .job_per_partition(source, |_| Stream::<Either<i64, i64>>::new())
        .sink(CollectSink::new())
        .discard_dead_letters()
        .run()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("one consumer-group member reads both inputs"), "{err}");
}

/// (task, view time, click time) of a joined pair.
type Pair = (PartitionId, i64, i64);

/// Partition `p`'s task of a co-partitioned join: views (left) joined with the clicks (right)
/// 0–5 s after them; every event of both inputs has key `a`, its value is its time.
fn co_partitioned_join(p: PartitionId) -> impl IntoOperator<Op: Operator<In = Either<i64, i64>, Out = Pair>> {
    let join = IntervalJoin::inner(0, 5_000, |l: &i64, r: &i64| (*l, *r)).unwrap();
    Stream::<Either<i64, i64>>::new()
        .assign_timestamps(
            |e| e.as_ref().either(|l| *l, |r| *r),
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(1)),
        )
        .key_by(|_| Key::from("a"))
        .interval_join(join)
        .map(move |(l, r)| (p, l, r))
}

/// A view a second for a minute in partitions 0 and 1 of the first input, a click 1.5 s after
/// each in the same partitions of the second; then an event on each that closes every interval.
fn views_and_clicks() -> BTreeMap<PartitionId, Vec<Either<i64, i64>>> {
    let mut data = BTreeMap::new();
    for p in 0..2 {
        let views = (0..60).map(|s| Either::Left(s * 1_000)).chain([Either::Left(200_000)]);
        let clicks = (0..60).map(|s| Either::Right(s * 1_000 + 1_500)).chain([Either::Right(200_000)]);
        data.insert(p, views.collect());
        data.insert(RIGHT_PARTITIONS + p, clicks.collect());
    }
    data
}

/// The pairs of [`co_partitioned_join`] over `data`, by a nested loop over each task's inputs.
fn nested_loop(data: &BTreeMap<PartitionId, Vec<Either<i64, i64>>>) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for (&p, views) in data.range(..RIGHT_PARTITIONS) {
        let clicks = data.get(&(RIGHT_PARTITIONS + p)).map_or(&[][..], Vec::as_slice);
        for v in views.iter().filter_map(|e| e.as_ref().left()) {
            for c in clicks.iter().filter_map(|e| e.as_ref().right()) {
                if *v <= *c && *c <= v + 5_000 {
                    pairs.push((p, *v, *c));
                }
            }
        }
    }
    pairs.sort_unstable();
    pairs
}

/// Runs the co-partitioned join over `source` as `runner`'s job: its pairs, sorted, and report.
async fn run_join(
    mut runner: Runner,
    source: ScriptedSource<Either<i64, i64>>,
) -> (Vec<Pair>, ferroflow::JobReport) {
    let (sink, rows) = CollectSink::with_handle();
    let report = within(
        30,
        "the job",
        runner.job_per_partition(source, co_partitioned_join).sink(sink).discard_dead_letters().run(),
    )
    .await
    .unwrap();
    let mut rows = rows.take();
    rows.sort_unstable();
    (rows, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_co_partitioned_join_moves_to_another_instance_with_both_inputs_and_its_buffered_sides() {
    let scratch = tempfile::tempdir().unwrap();
    let base = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
    let (r0, r1) = (RIGHT_PARTITIONS, RIGHT_PARTITIONS + 1);
    let all = vec![0, 1, r0, r1];
    let read_all =
        |s: ScriptedSource<Either<i64, i64>>| s.read(0, 100).read(r0, 100).read(1, 100).read(r1, 100);

    // The reference: one instance reads everything of a source of two inputs.
    let reference = ScriptedSource::over(views_and_clicks()).with_inputs(2).assign(all.clone());
    let (expected, _) = run_join(Runner::default(), read_all(reference)).await;
    assert_eq!(expected, nested_loop(&views_and_clicks()), "the reference run is a correct join");

    // Instance a reads each input of each task to a different point (views buffered waiting for
    // their clicks, clicks ahead of their views), then the group moves task 1 to instance b.
    let a = ScriptedSource::over(views_and_clicks())
        .with_inputs(2)
        .assign(all.clone())
        .read(0, 25)
        .read(r0, 30)
        .read(1, 37)
        .read(r1, 20)
        .revoke(vec![1, r1])
        .read(0, 100)
        .read(r0, 100);
    let (rows_a, report_a) = run_join(instance(&base, "a", scratch.path()), a).await;
    assert!(report_a.checkpoints_taken >= 1, "the revoke took a checkpoint");

    // Instance b is assigned task 1: both of its partitions resume where a released them, and
    // the views a buffered join with clicks b reads.
    let b = ScriptedSource::over(views_and_clicks())
        .with_inputs(2)
        .assign(vec![1, r1])
        .read(1, 100)
        .read(r1, 100);
    let answers = b.hook_answers();
    let (rows_b, report_b) = run_join(instance(&base, "b", scratch.path()), b).await;
    assert_eq!(*answers.lock().unwrap(), vec![BTreeMap::from([(1, 37), (r1, 20)])], "resumed at a's offsets");
    assert!(rows_b.iter().all(|r| r.0 == 1), "b ran task 1 only: {rows_b:?}");
    assert!(
        rows_b.iter().any(|&(_, view, click)| view < 20_000 && click >= 21_500),
        "a buffered view joins in b"
    );

    let mut together: Vec<Pair> = rows_a.into_iter().chain(rows_b).collect();
    together.sort_unstable();
    assert_eq!(together, expected, "exactly the pairs of one uninterrupted run");
    assert_eq!(report_a.counters.records_in + report_b.counters.records_in, 4 * 61, "nothing read twice");
    assert!(report_b.counters.identity_holds(), "{:?}", report_b.counters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_co_partitioned_task_assigned_back_resumes_both_inputs_from_its_released_state() {
    let scratch = tempfile::tempdir().unwrap();
    let base = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
    let r0 = RIGHT_PARTITIONS;
    let data: BTreeMap<PartitionId, Vec<Either<i64, i64>>> =
        views_and_clicks().into_iter().filter(|(p, _)| p % RIGHT_PARTITIONS == 0).collect();
    let reference =
        ScriptedSource::over(data.clone()).with_inputs(2).assign(vec![0, r0]).read(0, 100).read(r0, 100);
    let (expected, _) = run_join(Runner::default(), reference).await;
    assert_eq!(expected, nested_loop(&data));
    // Revoked twice and assigned back each time: every return starts from the state released
    // last, for both inputs of the task.
    let script = ScriptedSource::over(data)
        .with_inputs(2)
        .assign(vec![0, r0])
        .read(0, 20)
        .read(r0, 10)
        .revoke(vec![0, r0])
        .assign(vec![0, r0])
        .read(r0, 25)
        .revoke(vec![0, r0])
        .assign(vec![0, r0])
        .read(0, 100)
        .read(r0, 100);
    let answers = script.hook_answers();
    let (rows, report) = run_join(instance(&base, "a", scratch.path()), script).await;
    assert_eq!(
        *answers.lock().unwrap(),
        vec![BTreeMap::new(), BTreeMap::from([(0, 20), (r0, 10)]), BTreeMap::from([(0, 20), (r0, 35)])],
        "each return resumes both inputs where the task was released"
    );
    assert_eq!(report.counters.records_in, 2 * 61, "nothing read twice");
    assert_eq!(rows, expected);
}

/// A task carried here and then taken from another instance's checkpoint that does not hold one
/// of its partitions (a member the group had expelled wrote it while still running) restarts that
/// partition from its start. The offset recorded for it before must not survive into the next
/// checkpoint: the next owner would resume there and skip what was read again below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_taken_from_a_checkpoint_without_it_starts_over_and_forgets_its_old_offset() {
    let scratch = tempfile::tempdir().unwrap();
    let base = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
    let r1 = RIGHT_PARTITIONS + 1;
    let data: BTreeMap<PartitionId, Vec<Either<i64, i64>>> =
        views_and_clicks().into_iter().filter(|(p, _)| p % RIGHT_PARTITIONS == 1).collect();

    // Instance a reads task 1 to views 41 and clicks 5, releases it, and later gets it back.
    let go = Arc::new(Notify::new());
    let a = ScriptedSource::over(data.clone())
        .with_inputs(2)
        .assign(vec![1, r1])
        .read(1, 41)
        .read(r1, 5)
        .revoke(vec![1, r1])
        .wait(&go)
        .assign(vec![1, r1])
        .read(r1, 2);
    let a_answers = a.hook_answers();
    let run_a = tokio::spawn(run_join(instance(&base, "a", scratch.path()), a));
    let hand_over = ferroflow::checkpoint::PartitionHandOver::new(base.clone(), "probe", 1);
    within(10, "a's release", async {
        while hand_over.locate(&[1]).await.unwrap().get(&1).is_none_or(|l| l.offset != 41) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // Meanwhile an expelled member, z, ran the views' partition alone from a's checkpoint.
    let z = ScriptedSource::over(data.clone()).with_inputs(2).assign(vec![1]).read(1, 4);
    run_join(instance(&base, "z", scratch.path()), z).await;

    // a takes task 1 from z's newer checkpoint, which has no clicks offset: clicks start over.
    go.notify_one();
    within(30, "instance a", run_a).await.unwrap();
    assert_eq!(a_answers.lock().unwrap().last(), Some(&BTreeMap::from([(1, 45)])));

    // The next owner resumes the clicks where a read them to the second time, not at 5.
    let b = ScriptedSource::over(data).with_inputs(2).assign(vec![1, r1]);
    let b_answers = b.hook_answers();
    run_join(instance(&base, "b", scratch.path()), b).await;
    assert_eq!(*b_answers.lock().unwrap(), vec![BTreeMap::from([(1, 45), (r1, 2)])]);
}
