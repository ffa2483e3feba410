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

    let store = CheckpointStore::from_url("memory://", &Default::default()).unwrap();
    let never = Arc::new(Notify::new());
    let mut first = runner(&store, 2);
    let counters = first.counters();
    let (sink, first_rows) = CollectSink::with_handle();
    let source = script(ScriptedSource::over(data())).wait(&never);
    let killed = tokio::spawn(async move {
        first.job_per_partition(source, job).sink(sink).discard_dead_letters().run().await
    });
    wait_until(30, "the first run reads everything", || counters.snapshot().records_in == all).await;
    let taken = counters.snapshot().checkpoints_completed;
    assert!(taken >= 2, "checkpoints were taken while records were in flight: {taken}");
    killed.abort(); // a crash: no final checkpoint
    assert!(killed.await.unwrap_err().is_cancelled());

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
