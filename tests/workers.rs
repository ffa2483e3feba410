//! Worker threads: a partition-scoped job runs its partitions' tasks on several threads, and a
//! checkpoint is still one cut across all of them.
#![cfg(feature = "checkpoints")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferroflow::checkpoint::CheckpointStore;
use ferroflow::prelude::*;
use ferroflow::testing::ScriptedSource;
use ferroflow::window::WindowResult;
use ferroflow::{JobReport, PartitionId};
use tokio::sync::Notify;

use common::{wait_until, within};

/// (partition, window start) → events, from the last row of each window.
type Counts = BTreeMap<(PartitionId, i64), u64>;

const PARTITIONS: u32 = 4;
const EVENTS: usize = 600;

/// Every partition: one event every 100 ms of event time, then one far ahead that closes every
/// window. Partition `p` has `p + 1` events per timestamp so that partitions differ.
fn data() -> BTreeMap<PartitionId, Vec<i64>> {
    (0..PARTITIONS)
        .map(|p| {
            let times = (0..EVENTS as i64).map(|i| i / i64::from(p + 1) * 100).chain([10_000_000]);
            (p, times.collect())
        })
        .collect()
}

/// Reads every partition in small interleaved batches (uneven, so workers get uneven work).
fn script(source: ScriptedSource<i64>) -> ScriptedSource<i64> {
    let mut s = source.assign((0..PARTITIONS).collect());
    for round in 0..=(EVENTS / 3) {
        for p in 0..PARTITIONS {
            s = s.read(p, 3 + (round + p as usize) % 5);
        }
    }
    s
}

fn job(p: PartitionId) -> impl IntoOperator<Op: Operator<In = i64, Out = (PartitionId, i64, u64)>> {
    Stream::<i64>::new()
        .assign_timestamps(|t: &i64| *t, WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO))
        .key_by(|_: &i64| Key::from("k"))
        .window(WindowSpec::tumbling(Duration::from_secs(1)).unwrap(), Count)
        .id("counts")
        .map(move |r: WindowResult<u64>| (p, r.window_start, r.value))
}

fn counts(rows: &[(PartitionId, i64, u64)]) -> Counts {
    rows.iter().map(|&(p, start, n)| ((p, start), n)).collect()
}

async fn run(runner: &mut Runner, source: ScriptedSource<i64>) -> (Vec<(PartitionId, i64, u64)>, JobReport) {
    let (sink, rows) = CollectSink::with_handle();
    let report = runner.job_per_partition(source, job).sink(sink).discard_dead_letters().run().await.unwrap();
    (rows.take(), report)
}

fn runner(store: &CheckpointStore, workers: usize) -> Runner {
    Runner::builder()
        .workers(workers)
        .checkpoint_store(store.clone())
        .every(Duration::from_millis(1))
        .build()
        .unwrap()
}

/// Starts a first run on two workers (checkpoints every 1 ms, a source that never ends), waits
/// until it has read all `all` records with checkpoints taken while records were in flight, then
/// kills it: a crash, no final checkpoint. Returns its checkpoint store and the rows it emitted.
async fn crashed_first_run<R, F, Fut>(all: u64, start: F) -> (CheckpointStore, ferroflow::sink::Collected<R>)
where
    R: Send + 'static,
    F: FnOnce(Runner, ScriptedSource<i64>, CollectSink<R>) -> Fut,
    Fut: std::future::Future<Output = Result<JobReport, ferroflow::JobError>> + Send + 'static,
{
    let store = CheckpointStore::from_url("memory://", &Default::default()).unwrap();
    let never = Arc::new(Notify::new());
    let first = runner(&store, 2);
    let counters = first.counters();
    let (sink, rows) = CollectSink::with_handle();
    let killed = tokio::spawn(start(first, script(ScriptedSource::over(data())).wait(&never), sink));
    wait_until(30, "the first run reads everything", || counters.snapshot().records_in == all).await;
    let taken = counters.snapshot().checkpoints_completed;
    assert!(taken >= 2, "checkpoints were taken while records were in flight: {taken}");
    killed.abort();
    assert!(killed.await.unwrap_err().is_cancelled());
    (store, rows)
}

/// A job on two workers is killed after checkpoints taken while both had work queued; the next
/// run resumes from the last of them. Every window then ends with the count an uninterrupted run
/// on one worker gives, and no record before the checkpoint's offsets is read again: the
/// offsets, the state of both workers' tasks and the sink epoch were one cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_on_two_workers_resumes_from_one_consistent_cut() {
    let reference = {
        let (rows, report) =
            run(&mut Runner::builder().workers(1).build().unwrap(), script(ScriptedSource::over(data())))
                .await;
        assert!(report.counters.identity_holds());
        counts(&rows)
    };
    let all = u64::from(PARTITIONS) * (EVENTS as u64 + 1);
    assert_eq!(reference.values().sum::<u64>(), all, "every event is counted in a window");

    let (store, first_rows) = crashed_first_run(all, |mut first, source, sink| async move {
        first.job_per_partition(source, job).sink(sink).discard_dead_letters().run().await
    })
    .await;

    let mut second = runner(&store, 2);
    let (rows, report) =
        within(30, "the resumed run", run(&mut second, script(ScriptedSource::over(data())))).await;
    let resumed_from = report.restored_from.expect("the second run resumes from a checkpoint");
    assert!(report.counters.records_in < all, "records before checkpoint {resumed_from} were read again");

    // The second run's rows win: they are what the first run's would have been from its cut on.
    let mut got = counts(&first_rows.take());
    got.extend(counts(&rows));
    assert_eq!(got, reference);
}

/// The keyed job run as copies: a key from the event time, so that every copy owns some keys.
fn keyed_job() -> impl IntoOperator<Op: Operator<In = i64, Out = (String, i64, u64)>> {
    Stream::<i64>::new()
        .assign_timestamps(|t: &i64| *t, WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO))
        .key_by(|t: &i64| Key::from(format!("k{}", (t / 100) % 7).as_str()))
        .window(WindowSpec::tumbling(Duration::from_secs(1)).unwrap(), Count)
        .id("counts")
        .map(|r: WindowResult<u64>| (r.key.as_str().unwrap_or_default().to_owned(), r.window_start, r.value))
}

type KeyCounts = BTreeMap<(String, i64), u64>;

async fn run_copies(runner: &mut Runner, source: ScriptedSource<i64>) -> (KeyCounts, JobReport) {
    let (sink, rows) = CollectSink::with_handle();
    let report =
        runner.parallel_job(source, keyed_job).sink(sink).discard_dead_letters().run().await.unwrap();
    (rows.take().into_iter().map(|(k, start, n)| ((k, start), n)).collect(), report)
}

/// A keyed job-scoped chain on two copies (records traded by key between two workers) is killed
/// after checkpoints; the next run resumes on three copies. Every copy restores the whole
/// checkpoint and keeps the keys it now owns: every window ends with the count of an
/// uninterrupted single-copy run, none is lost and none doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_job_on_two_copies_resumes_on_three() {
    let (reference, report) =
        run_copies(&mut Runner::builder().workers(1).build().unwrap(), script(ScriptedSource::over(data())))
            .await;
    assert!(report.counters.identity_holds());
    let all = u64::from(PARTITIONS) * (EVENTS as u64 + 1);
    assert_eq!(reference.values().sum::<u64>(), all, "every event is counted in a window");
    assert!(reference.keys().map(|(k, _)| k).collect::<std::collections::BTreeSet<_>>().len() >= 7);

    let (same, report) =
        run_copies(&mut Runner::builder().workers(3).build().unwrap(), script(ScriptedSource::over(data())))
            .await;
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
    assert_eq!(same, reference, "three copies give what one gives");

    let (store, first_rows) = crashed_first_run(all, |mut first, source, sink| async move {
        first.parallel_job(source, keyed_job).sink(sink).discard_dead_letters().run().await
    })
    .await;

    let mut second = runner(&store, 3);
    let (rows, report) =
        within(30, "the resumed run", run_copies(&mut second, script(ScriptedSource::over(data())))).await;
    assert!(report.restored_from.is_some(), "the second run resumes from a checkpoint");
    assert!(report.counters.records_in < all, "records before the checkpoint were read again");
    let mut got: KeyCounts = first_rows.take().into_iter().map(|(k, start, n)| ((k, start), n)).collect();
    got.extend(rows);
    assert_eq!(got, reference);
}
