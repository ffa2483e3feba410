//! The broadcast table join: events enriched with the version of a table every task holds whole,
//! as of their time (late ones at once); the table's input holds the job's watermark back, idles,
//! ends, fails; partitions move between instances and jobs restore with events waiting; and, for
//! any arrival order of the events (the table's within its bound), on one worker or two, as one
//! chain, per partition or as copies keyed across workers, the rows equal an as-of oracle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{wait_until, within};
use ferroflow::error::{RetryHint, SourceError};
use ferroflow::join::TableFeed;
use ferroflow::prelude::*;
use ferroflow::source::{MemorySource, Source, SourceBatch, SourceEvent};
use ferroflow::state::MemoryStateBackend;
use ferroflow::testing::{OperatorHarness, ScriptedSource};
use ferroflow::time::{ManualClock, Watermark};
use proptest::prelude::*;
use tokio::sync::Notify;

#[path = "../examples/user_segments.rs"]
mod user_segments_example;

#[test]
fn the_user_segments_example_counts_views_by_the_segment_of_their_time() {
    user_segments_example::main().unwrap();
}

/// A click: (user, event time).
type Click = (String, i64);
/// A version of a user's tier: (user, valid from, tier).
type Tier = (String, i64, String);
/// A click with the user's tier then.
type Row = (String, i64, Option<String>);

fn click(user: &str, t: i64, partition: PartitionId, offset: u64) -> Record<Click> {
    Record::new((user.to_owned(), t), 0).with_position(SourcePosition::new(partition, offset))
}

fn tier(user: &str, t: i64, name: &str, offset: u64) -> Record<Tier> {
    Record::new((user.to_owned(), t, name.to_owned()), 0).with_position(SourcePosition::new(0, offset))
}

/// Clicks with the tier of their user at their time.
fn tiered(
    tiers: &BroadcastTable<Tier>,
    bound_ms: u64,
) -> impl IntoOperator<Op: Operator<In = Click, Out = Row>> + use<> {
    let join = BroadcastJoin::left_outer(tiers, |c: &Click, t: Option<&Tier>| {
        (c.0.clone(), c.1, t.map(|t| t.2.clone()))
    });
    Stream::<Click>::new()
        .assign_timestamps(
            |c| c.1,
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(bound_ms)),
        )
        .key_by(|c| Key::from(c.0.as_str()))
        .broadcast_join(join)
        .id("tiered-clicks")
}

fn feed<S: Source<Tier>>(
    tiers: &BroadcastTable<Tier>,
    source: S,
    strategy: WatermarkStrategy,
) -> TableFeed<Tier> {
    tiers.loaded_from(source, |t| Key::from(t.0.as_str()), |t| t.1, strategy)
}

/// A running job of tiered clicks: its table, the job, its rows and its counters.
type Running = (
    BroadcastTable<Tier>,
    tokio::task::JoinHandle<Result<JobReport, JobError>>,
    ferroflow::sink::Collected<Row>,
    ferroflow::metrics::JobCounters,
);

/// Runs the tiered clicks over `clicks`, the table fed from `versions` by `strategy`, the runner
/// and the table on `clock`.
fn spawn_tiered<S: Source<Tier>>(
    clicks: ScriptedSource<Click>,
    versions: S,
    strategy: WatermarkStrategy,
    clock: &ManualClock,
) -> Running {
    let tiers = BroadcastTable::new("tiers").with_clock(Arc::new(clock.clone()));
    let source = feed(&tiers, versions, strategy).gating(clicks);
    let mut runner = common::runner_on(clock);
    let counters = runner.counters();
    let (sink, rows) = CollectSink::with_handle();
    let job = tiered(&tiers, 0);
    let job =
        tokio::spawn(async move { runner.job(source, job).sink(sink).discard_dead_letters().run().await });
    (tiers, job, rows, counters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_waits_until_the_table_has_every_version_up_to_its_time() {
    let (clicks_end, more, tiers_end) =
        (Arc::new(Notify::new()), Arc::new(Notify::new()), Arc::new(Notify::new()));
    let clicks = ScriptedSource::new()
        .assign(vec![0])
        .records(vec![click("u1", 2_000, 0, 0), click("u1", 5_000, 0, 1)])
        .wait(&clicks_end)
        .finish(0);
    let versions = ScriptedSource::new()
        .assign(vec![0])
        .records(vec![tier("u1", 1_000, "free", 0)])
        .wait(&more)
        .records(vec![tier("u1", 1_500, "pro", 1)])
        .wait(&tiers_end)
        .finish(0);
    let clock = ManualClock::new(0);
    let (tiers, job, rows, counters) =
        spawn_tiered(clicks, versions, WatermarkStrategy::monotonous(), &clock);

    wait_until(10, "both clicks", || counters.snapshot().records_in == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // ~20 ticks
    assert!(rows.is_empty(), "a version before 2 s may still come");
    assert_eq!(counters.snapshot().watermark, 999, "held at the table's watermark, not the clicks' 4 999");

    more.notify_one();
    wait_until(10, "the second version", || tiers.versions() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rows.is_empty(), "the table's watermark (1 499) is still below the click at 2 s");

    tiers_end.notify_one();
    wait_until(10, "the click at 2 s", || rows.len() == 1).await;
    assert_eq!(rows.take(), [("u1".to_owned(), 2_000, Some("pro".to_owned()))], "the version that came last");
    assert_eq!(counters.snapshot().watermark, 4_999, "the table is complete: the clicks' own watermark");

    clicks_end.notify_one();
    let report = within(10, "the job", job).await.unwrap().unwrap();
    assert_eq!(rows.take(), [("u1".to_owned(), 5_000, Some("pro".to_owned()))]);
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
    assert_eq!(tiers.late_versions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_table_holds_nothing_back_and_a_version_after_it_counts_as_late() {
    let (clicks_more, clicks_end, tiers_more, tiers_end) =
        (Arc::new(Notify::new()), Arc::new(Notify::new()), Arc::new(Notify::new()), Arc::new(Notify::new()));
    let clicks = ScriptedSource::new()
        .assign(vec![0])
        .records(vec![click("u1", 2_000, 0, 0), click("u1", 5_000, 0, 1)])
        .wait(&clicks_more)
        .records(vec![click("u1", 9_000, 0, 2)])
        .wait(&clicks_end)
        .finish(0);
    let versions = ScriptedSource::new()
        .assign(vec![0])
        .records(vec![tier("u1", 1_000, "free", 0)])
        .wait(&tiers_more)
        .records(vec![tier("u1", 1_500, "pro", 1)])
        .wait(&tiers_end)
        .finish(0);
    let clock = ManualClock::new(0);
    let idle = WatermarkStrategy::monotonous().with_idleness(Duration::from_secs(1));
    let (tiers, job, rows, counters) = spawn_tiered(clicks, versions, idle, &clock);

    wait_until(10, "both clicks", || counters.snapshot().records_in == 2).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(rows.is_empty(), "the table is not idle yet");
    // Silent for 1.1 s on the table's clock: idle, and the clicks' own watermark holds.
    clock.set(1_100);
    wait_until(10, "the click at 2 s", || rows.len() == 1).await;
    assert_eq!(rows.take(), [("u1".to_owned(), 2_000, Some("free".to_owned()))]);
    assert_eq!(counters.snapshot().watermark, 4_999);

    // A version at 1.5 s after the click at 2 s joined: kept for what comes, counted as late.
    tiers_more.notify_one();
    wait_until(10, "the version at 1.5 s", || tiers.versions() == 2).await;
    assert_eq!(tiers.late_versions(), 1);
    clock.set(2_500); // idle again
    clicks_more.notify_one();
    wait_until(10, "the click at 5 s", || rows.len() == 1).await;
    assert_eq!(rows.take(), [("u1".to_owned(), 5_000, Some("pro".to_owned()))], "it sees the late version");
    tiers_end.notify_one();
    clicks_end.notify_one();
    let report = within(10, "the job", job).await.unwrap().unwrap();
    assert_eq!(rows.take(), [("u1".to_owned(), 9_000, Some("pro".to_owned()))]);
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_input_without_partitions_holds_nothing_back_after_an_idle_timeout() {
    let (never, end) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let clicks =
        ScriptedSource::new().assign(vec![0]).records(vec![click("u1", 2_000, 0, 0)]).wait(&end).finish(0);
    let clock = ManualClock::new(0);
    let empty = ScriptedSource::<Tier>::new().wait(&never); // a topic that is missing
    let idle = WatermarkStrategy::monotonous().with_idleness(Duration::from_secs(1));
    let (_tiers, job, rows, counters) = spawn_tiered(clicks, empty, idle, &clock);
    wait_until(10, "the click", || counters.snapshot().records_in == 1).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(counters.snapshot().watermark, i64::MIN, "held while the table may still get partitions");
    clock.set(1_100);
    wait_until(10, "the clicks' own watermark", || counters.snapshot().watermark == 1_999).await;
    end.notify_one();
    let report = within(10, "the job", job).await.unwrap().unwrap();
    assert_eq!(rows.take(), [("u1".to_owned(), 2_000, None)]);
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
}

#[tokio::test]
async fn an_event_behind_the_watermark_joins_at_once_with_the_version_of_its_time() {
    let clicks = ScriptedSource::new()
        .assign(vec![0])
        .records(vec![click("u1", 5_000, 0, 0)])
        .records(vec![click("u1", 1_000, 0, 1)])
        .finish(0);
    let tiers = BroadcastTable::new("tiers");
    let versions = [("u1".to_owned(), 0, "free".to_owned()), ("u1".to_owned(), 3_000, "pro".to_owned())];
    let source = feed(&tiers, MemorySource::of(versions), WatermarkStrategy::monotonous()).gating(clicks);
    let join = BroadcastJoin::inner(&tiers, |c: &Click, t: &Tier| (c.1, t.2.clone()));
    let job = Stream::<Click>::new()
        .assign_timestamps(|c| c.1, WatermarkStrategy::monotonous())
        .key_by(|c| Key::from(c.0.as_str()))
        .broadcast_join(join);
    let (sink, rows) = CollectSink::with_handle();
    let (dlq, dead) = CollectSink::<DeadLetter>::with_handle();
    let report = Runner::default().job(source, job).sink(sink).dead_letters(dlq).run().await.unwrap();
    let mut rows = rows.take();
    rows.sort();
    assert_eq!(
        rows,
        [(1_000, "free".to_owned()), (5_000, "pro".to_owned())],
        "the late click: the version at 1 s"
    );
    assert!(dead.take().is_empty(), "a step after the join judges lateness");
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
}

/// A table input that fails after its first version.
struct Failing(bool);

impl Source<Tier> for Failing {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<Tier>>, SourceError> {
        if std::mem::replace(&mut self.0, true) {
            return Err(SourceError::External {
                message: "users topic gone".into(),
                retry: RetryHint::WithBackoff,
            });
        }
        Ok(Some(SourceEvent::Batch(SourceBatch::of(vec![tier("u1", 1_000, "free", 0)]))))
    }
}

#[tokio::test]
async fn the_table_input_failing_fails_the_job_with_its_error() {
    let wait = Arc::new(Notify::new());
    let clicks = ScriptedSource::new().assign(vec![0]).records(vec![click("u1", 2_000, 0, 0)]).wait(&wait);
    let tiers = BroadcastTable::new("tiers");
    let source = feed(&tiers, Failing(false), WatermarkStrategy::monotonous()).gating(clicks);
    let (sink, rows) = CollectSink::with_handle();
    let err = within(
        10,
        "the job",
        Runner::default().job(source, tiered(&tiers, 0)).sink(sink).discard_dead_letters().run(),
    )
    .await
    .unwrap_err();
    // The clicks wait for more: the error must not wait for their next record.
    drop(wait);
    assert!(err.to_string().contains("users topic gone"), "{err}");
    assert!(rows.is_empty(), "nothing joined against a table that never got its watermark");
}

#[test]
fn a_snapshot_while_events_wait_restores_to_the_same_rows() {
    let tiers: BroadcastTable<Tier> = BroadcastTable::new("tiers");
    for (t, name) in [(1_000, "free"), (3_000, "pro")] {
        tiers.insert(Key::from("u1"), t, ("u1".to_owned(), t, name.to_owned()));
    }
    let events = || vec![click("u1", 2_000, 0, 0), click("u1", 4_000, 0, 1), click("u1", 500, 0, 2)];
    let keyed = |recs: Vec<Record<Click>>| -> Vec<Record<Click>> {
        recs.into_iter()
            .map(|r| {
                let key = Key::from(r.payload.0.as_str());
                Record::new(r.payload.clone(), r.payload.1).with_key(key).with_position(r.position)
            })
            .collect()
    };
    let op = || {
        ferroflow::operator::KeyedProcess::new(
            "tiered",
            BroadcastJoin::left_outer(&tiers, |c: &Click, t: Option<&Tier>| (c.1, t.map(|t| t.2.clone()))),
        )
    };
    let mut whole = OperatorHarness::new(op());
    whole.process(keyed(events())).advance_watermark(Watermark::MAX);

    let mut first = OperatorHarness::new(op());
    first.process(keyed(events()));
    assert!(first.outputs().is_empty(), "every event waits for the watermark");
    let mut state = MemoryStateBackend::new();
    first.snapshot(&mut state).unwrap();
    drop(first);
    let mut second = OperatorHarness::new(op());
    second.restore(&state).unwrap();
    second.advance_watermark(Watermark::MAX);
    assert_eq!(second.payloads(), whole.payloads());
    assert_eq!(
        second.payloads(),
        [(500, None), (2_000, Some("free".to_owned())), (4_000, Some("pro".to_owned()))]
    );
}

/// Instance `name` of a partition-scoped job on the shared checkpoint base (checkpoints only at
/// revocations and at the end).
fn instance(base: &ferroflow::checkpoint::CheckpointStore, name: &str, scratch: &std::path::Path) -> Runner {
    Runner::builder()
        .workers(2)
        .checkpoint_store(base.clone())
        .job_id("job")
        .scratch_dir(scratch.join(name))
        .every(Duration::from_secs(3600))
        .instance(name)
        .state(MemoryStateBackend::new())
        .build()
        .unwrap()
}

/// Runs the tiered clicks per partition over `clicks`, the table filled from `versions` by a
/// table of this run's own: its rows.
async fn run_instance(
    runner: &mut Runner,
    clicks: ScriptedSource<Click>,
    versions: Vec<Tier>,
) -> (Vec<Row>, JobReport) {
    let tiers = BroadcastTable::new("tiers");
    let source = feed(&tiers, MemorySource::of(versions), WatermarkStrategy::monotonous()).gating(clicks);
    let (sink, rows) = CollectSink::with_handle();
    let report = runner
        .job_per_partition(source, move |_| tiered(&tiers, 5_000))
        .sink(sink)
        .discard_dead_letters()
        .run()
        .await
        .unwrap();
    (rows.take(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_waiting_in_a_revoked_partition_join_on_the_next_instance_with_its_own_table() {
    let scratch = tempfile::tempdir().unwrap();
    let base = ferroflow::checkpoint::CheckpointStore::from_url("memory://", &Default::default()).unwrap();
    // A click a second per partition for a minute (users u0 and u1 alternating).
    let data: BTreeMap<PartitionId, Vec<Click>> = (0..2)
        .map(|p| (p, (0..60).map(|s| (format!("u{}", s % 2), s * 1_000 + i64::from(p))).collect()))
        .collect();
    let versions: Vec<Tier> =
        [("u0", 0, "free"), ("u1", 0, "free"), ("u0", 20_000, "pro"), ("u1", 33_000, "pro")]
            .into_iter()
            .map(|(u, t, n)| (u.to_owned(), t, n.to_owned()))
            .collect();

    let all =
        ScriptedSource::over(data.clone()).assign(vec![0, 1]).read(0, 100).read(1, 100).finish(0).finish(1);
    let (mut expected, _) = run_instance(&mut Runner::default(), all, versions.clone()).await;
    expected.sort();
    assert_eq!(expected.len(), 120);

    // Instance a reads part of each partition: the last 5 s of each wait in the join when both
    // partitions are taken away.
    let script =
        ScriptedSource::over(data.clone()).assign(vec![0, 1]).read(0, 25).read(1, 37).revoke(vec![0, 1]);
    let (rows_a, report_a) =
        run_instance(&mut instance(&base, "a", scratch.path()), script, versions.clone()).await;
    assert!(report_a.checkpoints_taken >= 1, "the revoke took a checkpoint");
    assert!(rows_a.len() < 25 + 37, "some clicks were still waiting: {}", rows_a.len());

    let source_b =
        ScriptedSource::over(data.clone()).assign(vec![0, 1]).read(0, 100).read(1, 100).finish(0).finish(1);
    let answers = source_b.hook_answers();
    let (rows_b, _) = run_instance(&mut instance(&base, "b", scratch.path()), source_b, versions).await;
    assert_eq!(*answers.lock().unwrap(), vec![BTreeMap::from([(0, 25), (1, 37)])], "resumed at a's offsets");
    let mut together: Vec<Row> = rows_a.into_iter().chain(rows_b).collect();
    together.sort();
    assert_eq!(together, expected, "every click once, with the tier of its time");
}

/// A runner checkpointing to `base` as job `job` (only when stopped), ticking every 5 ms.
fn checkpointed(
    base: &ferroflow::checkpoint::CheckpointStore,
    scratch: &std::path::Path,
    name: &str,
) -> Runner {
    Runner::builder()
        .tick_interval(Duration::from_millis(5))
        .checkpoint_store(base.clone())
        .job_id("job")
        .scratch_dir(scratch.join(name))
        .every(Duration::from_secs(3600))
        .state(MemoryStateBackend::new())
        .build()
        .unwrap()
}

/// Starts the tiered clicks on `runner` over `clicks`, with a table of its own fed from
/// `versions` (monotonous): the running job, its rows, its counters and its stop handle.
fn start_on<S: Source<Tier>>(
    mut runner: Runner,
    clicks: ScriptedSource<Click>,
    versions: S,
) -> (
    tokio::task::JoinHandle<Result<JobReport, JobError>>,
    ferroflow::sink::Collected<Row>,
    ferroflow::metrics::JobCounters,
    ferroflow::ShutdownHandle,
) {
    let tiers = BroadcastTable::new("tiers");
    let source = feed(&tiers, versions, WatermarkStrategy::monotonous()).gating(clicks);
    let (counters, stop) = (runner.counters(), runner.shutdown_handle());
    let (sink, rows) = CollectSink::with_handle();
    let job = tiered(&tiers, 0);
    let job =
        tokio::spawn(async move { runner.job(source, job).sink(sink).discard_dead_letters().run().await });
    (job, rows, counters, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restore_events_held_by_the_table_join_once_it_catches_up_without_new_events() {
    let scratch = tempfile::tempdir().unwrap();
    let base = ferroflow::checkpoint::CheckpointStore::from_url("memory://", &Default::default()).unwrap();
    // First run: the clicks' watermark reaches 4 999, the table holds the job at 999; stopped.
    let quiet = Arc::new(Notify::new());
    let clicks =
        ScriptedSource::over(BTreeMap::from([(0, vec![("u1".to_owned(), 2_000), ("u1".to_owned(), 5_000)])]))
            .assign(vec![0])
            .read(0, 2)
            .wait(&quiet);
    let held = ScriptedSource::new().assign(vec![0]).records(vec![tier("u1", 1_000, "free", 0)]).wait(&quiet);
    let (job, rows, counters, stop) = start_on(checkpointed(&base, scratch.path(), "first"), clicks, held);
    wait_until(10, "both clicks", || counters.snapshot().records_in == 2).await;
    wait_until(10, "the table's watermark", || counters.snapshot().watermark == 999).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(counters.snapshot().watermark, 999, "held by the table");
    stop.stop();
    within(10, "the first run", job).await.unwrap().unwrap();
    assert!(rows.is_empty());

    // Second run: no click comes any more; the table reloads and is complete, and the clicks'
    // restored watermark (4 999) lets the click at 2 s go.
    let clicks =
        ScriptedSource::over(BTreeMap::from([(0, vec![("u1".to_owned(), 2_000), ("u1".to_owned(), 5_000)])]))
            .assign(vec![0])
            .read(0, 2)
            .wait(&quiet);
    let versions = MemorySource::of([("u1".to_owned(), 1_000, "free".to_owned())]);
    let (job, rows, _, stop) = start_on(checkpointed(&base, scratch.path(), "second"), clicks, versions);
    wait_until(10, "the click at 2 s", || rows.len() == 1).await;
    assert_eq!(rows.take(), [("u1".to_owned(), 2_000, Some("free".to_owned()))]);
    stop.stop();
    let report = within(10, "the second run", job).await.unwrap().unwrap();
    assert!(report.restored_from.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restore_a_late_event_waits_for_the_reloading_table_instead_of_joining_a_half_table() {
    let scratch = tempfile::tempdir().unwrap();
    let base = ferroflow::checkpoint::CheckpointStore::from_url("memory://", &Default::default()).unwrap();
    let data = BTreeMap::from([(
        0,
        vec![("u1".to_owned(), 2_000), ("u1".to_owned(), 5_000), ("u1".to_owned(), 1_500)],
    )]);
    let versions = || vec![tier("u1", 1_000, "free", 0), tier("u1", 1_200, "pro", 1)];
    let quiet = Arc::new(Notify::new());

    // First run: the table is complete, the job's watermark reaches 4 999; stopped.
    let clicks = ScriptedSource::over(data.clone()).assign(vec![0]).read(0, 2).wait(&quiet);
    let table = ScriptedSource::new().assign(vec![0]).records(versions()).finish(0);
    let (job, rows, counters, stop) = start_on(checkpointed(&base, scratch.path(), "first"), clicks, table);
    wait_until(10, "the click at 2 s", || rows.len() == 1).await;
    wait_until(10, "the watermark", || counters.snapshot().watermark == 4_999).await;
    stop.stop();
    within(10, "the first run", job).await.unwrap().unwrap();

    // Second run: a click at 1.5 s, behind the restored watermark, while the table reloads.
    let (go, quiet2) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let clicks = ScriptedSource::over(data).assign(vec![0]).read(0, 3).wait(&quiet2);
    let table = ScriptedSource::new().assign(vec![0]).wait(&go).records(versions()).finish(0);
    let (job, rows, counters, stop) = start_on(checkpointed(&base, scratch.path(), "second"), clicks, table);
    wait_until(10, "the click at 1.5 s", || counters.snapshot().records_in == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rows.is_empty(), "the table has no version yet: {:?}", rows.take());
    go.notify_one();
    wait_until(10, "the click at 1.5 s joined", || rows.len() == 1).await;
    assert_eq!(rows.take(), [("u1".to_owned(), 1_500, Some("pro".to_owned()))]);
    stop.stop();
    within(10, "the second run", job).await.unwrap().unwrap();
}

// For any arrival order of the clicks (versions within their bound): the rows equal an as-of
// oracle.

/// A generated case: clicks (user, time, partition) in any arrival order, and versions (user,
/// time, tier) in arrival order within the table's bound of out-of-orderness.
#[derive(Debug, Clone)]
struct Case {
    clicks: Vec<(u8, i64, PartitionId)>,
    versions: Vec<(u8, i64, u8)>,
    bound: i64,
}

fn within_bound(mut items: Vec<(i64, i64)>, bound: i64) -> Vec<usize> {
    // (time, delay): arrival at time + delay, ties by time: each item is at most `bound` behind
    // the highest time before it.
    items.iter_mut().for_each(|(_, d)| *d = (*d).rem_euclid(bound + 1));
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| (items[i].0 + items[i].1, items[i].0));
    order
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((0u8..4, 0i64..5_000, 0u32..3, 0i64..6_000), 1..60),
        prop::collection::vec((0u8..4, 0i64..5_000, 0u8..5, 0i64..1_000), 0..30),
        0i64..300,
    )
        .prop_map(|(clicks, versions, bound)| {
            // Clicks in any order (late ones join at once); versions within the bound.
            let order = within_bound(clicks.iter().map(|c| (c.1, c.3)).collect(), 5_000);
            let clicks = order.into_iter().map(|i| (clicks[i].0, clicks[i].1, clicks[i].2)).collect();
            let order = within_bound(versions.iter().map(|v| (v.1, v.3)).collect(), bound);
            let versions = order.into_iter().map(|i| (versions[i].0, versions[i].1, versions[i].2)).collect();
            Case { clicks, versions, bound }
        })
}

fn user(u: u8) -> String {
    format!("u{u}")
}

/// For each click, the latest version of its user at or before its time (the last to arrive of
/// those at one time wins, as it replaces the others).
fn oracle(case: &Case) -> Vec<Row> {
    let mut rows: Vec<Row> = case
        .clicks
        .iter()
        .map(|&(u, t, _)| {
            let mut valid: Option<(i64, u8)> = None;
            for &(vu, vt, tier) in &case.versions {
                if vu == u && vt <= t && valid.is_none_or(|(at, _)| vt >= at) {
                    valid = Some((vt, tier));
                }
            }
            (user(u), t, valid.map(|(_, tier)| format!("t{tier}")))
        })
        .collect();
    rows.sort();
    rows
}

/// A source that takes `1 ms` before each event: the table loads slower than the clicks arrive,
/// so only the watermark's wait keeps an event from joining before its versions are in.
struct Slow<S>(S);

impl<T: Send + 'static, S: Source<T>> Source<T> for Slow<S> {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<T>>, SourceError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.next_event().await
    }
}

/// How a case's job runs: one chain, one per partition, or copies on every worker keyed across.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Job,
    PerPartition,
    Parallel,
}

fn run_case(case: &Case, workers: usize, mode: Mode) -> (Vec<Row>, JobReport) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut offsets: BTreeMap<PartitionId, u64> = BTreeMap::new();
        let clicks: Vec<Record<Click>> = case
            .clicks
            .iter()
            .map(|&(u, t, p)| {
                let offset = offsets.entry(p).or_default();
                *offset += 1;
                click(&user(u), t, p, *offset - 1)
            })
            .collect();
        let partitions: Vec<PartitionId> = offsets.keys().copied().collect();
        let mut script = ScriptedSource::new().assign(partitions.clone());
        for chunk in clicks.chunks(7) {
            script = script.records(chunk.to_vec());
        }
        for p in partitions {
            script = script.finish(p);
        }
        let versions: Vec<Record<Tier>> = case
            .versions
            .iter()
            .enumerate()
            .map(|(i, &(u, t, n))| tier(&user(u), t, &format!("t{n}"), i as u64))
            .collect();
        let mut table = ScriptedSource::new().assign(vec![0]);
        for chunk in versions.chunks(3) {
            table = table.records(chunk.to_vec());
        }
        let table = table.finish(0);
        let tiers = BroadcastTable::new("tiers");
        let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(case.bound as u64));
        let source = feed(&tiers, Slow(table), strategy).gating(script);
        let bound = case.bound as u64;
        let mut runner = Runner::builder().workers(workers).build().unwrap();
        let (sink, rows) = CollectSink::with_handle();
        let report = match mode {
            Mode::PerPartition => {
                let tiers = tiers.clone();
                runner
                    .job_per_partition(source, move |_| tiered(&tiers, bound))
                    .sink(sink)
                    .discard_dead_letters()
                    .run()
                    .await
            }
            Mode::Parallel => {
                let tiers = tiers.clone();
                runner
                    .parallel_job(source, move || tiered(&tiers, bound))
                    .sink(sink)
                    .discard_dead_letters()
                    .run()
                    .await
            }
            Mode::Job => {
                runner.job(source, tiered(&tiers, bound)).sink(sink).discard_dead_letters().run().await
            }
        }
        .unwrap();
        let mut rows = rows.take();
        rows.sort();
        (rows, report)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn the_broadcast_join_equals_an_as_of_oracle(
        case in case(),
        workers in 1usize..=2,
        mode in prop::sample::select(vec![Mode::Job, Mode::PerPartition, Mode::Parallel]),
    ) {
        let (rows, report) = run_case(&case, workers, mode);
        prop_assert_eq!(report.counters.records_dead_lettered, 0, "late clicks join at once");
        prop_assert!(report.counters.identity_holds(), "{:?}", report.counters);
        prop_assert_eq!(rows, oracle(&case));
    }
}
