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

#[derive(serde::Deserialize)]
struct Line {
    k: String,
    t: i64,
}

/// Copies keep rounds of their key exchange in flight while they run their next shares: a
/// round's records reach the window one batch or more after they were read. A record the window
/// refuses as late must still carry the bytes it was read from in its dead letter (the bytes of
/// its own batch, not of the batch its copy runs when the round is taken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_traded_between_copies_keep_their_source_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    // Time moves 100 ms per line; every fifth line is 5 s behind, late once its window closed.
    let lines: Vec<String> = (0..2_000i64)
        .map(|i| {
            let t = if i % 5 == 4 && i > 100 { i * 100 - 5_000 } else { i * 100 };
            format!(r#"{{"k":"k{}","t":{t},"pad":"{}"}}"#, i % 13, "x".repeat((i % 7) as usize))
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    let job = || {
        Stream::<Line>::new()
            .assign_timestamps(|l: &Line| l.t, WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO))
            .key_by(|l: &Line| Key::from(l.k.as_str()))
            .window(WindowSpec::tumbling(Duration::from_secs(1)).unwrap(), Count)
            .id("counts")
            .map(|r: WindowResult<u64>| r.value)
    };
    let mut late_by_copies = Vec::new();
    for workers in [1, 2] {
        // Small reads: many batches, so that rounds are in flight while later shares run.
        let source = JsonLinesSource::<Line>::open([&path]).with_chunk_size(512);
        let (sink, dlq) = (CollectSink::new(), CollectSink::new());
        let (rows, dead) = (sink.handle(), dlq.handle());
        let mut runner = Runner::builder().workers(workers).build().unwrap();
        let report =
            within(30, "the job", runner.parallel_job(source, job).sink(sink).dead_letters(dlq).run())
                .await
                .unwrap();
        assert!(report.counters.identity_holds(), "{workers} workers: {:?}", report.counters);
        assert!(!rows.take().is_empty());
        let dead = dead.take();
        assert!(dead.len() > 50, "{workers} workers: {} late records", dead.len());
        for d in &dead {
            assert_eq!(d.reason, ferroflow::DeadLetterReason::LateEvent, "{d:?}");
            let line = usize::try_from(d.position.offset).unwrap();
            assert_eq!(
                std::str::from_utf8(&d.original).unwrap(),
                lines[line],
                "{workers} workers: the dead letter of line {line} carries other bytes"
            );
        }
        let mut offsets: Vec<u64> = dead.iter().map(|d| d.position.offset).collect();
        offsets.sort_unstable();
        late_by_copies.push(offsets);
    }
    assert_eq!(late_by_copies[0], late_by_copies[1], "two copies refuse the records one refuses");
}

/// (event time, key, slow): a slow record holds its copy for a while before its key step.
type Ev = (i64, &'static str, bool);

fn ev_at(source_time_ms: i64, records: Vec<(PartitionId, u64, Ev)>) -> ferroflow::source::SourceEvent<Ev> {
    let records = records
        .into_iter()
        .map(|(p, offset, e)| {
            ferroflow::Record::new(e, 0).with_position(ferroflow::SourcePosition::new(p, offset))
        })
        .collect();
    ferroflow::source::SourceEvent::Batch(
        ferroflow::source::SourceBatch::of(records)
            .with_progress(ferroflow::source::SourceProgress { time_ms: source_time_ms, behind: vec![] }),
    )
}

/// A copy that runs ahead of a slow one (rounds in flight) must judge idleness as every copy does:
/// with each round's notes, under the clock of that round's batch. Partition 1 is quiet for 6 s of
/// the source's clock (idle after 5 s) and comes back in the batch at 6 s with a record 9.5 s behind
/// partition 0: seen with its batch, it keeps partition 1 active, holds the watermark and is on
/// time. The copy that owns its key runs its own share of that batch while the other copy is held
/// inside the record; judging idleness then, without the batch's notes, made partition 1 idle,
/// closed the window and refused the record as late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_running_ahead_judges_idleness_with_each_rounds_notes_and_clock() {
    let owned_by = |copy: usize| {
        ["a", "b", "c", "d", "e", "f", "g", "h"]
            .into_iter()
            .find(|k| ferroflow::operator::key_owner(&Key::from(*k), 2) == copy)
            .unwrap()
    };
    let (k0, k1) = (owned_by(0), owned_by(1));
    let script = ScriptedSource::new()
        .assign(vec![0, 1])
        .emit(ev_at(0, vec![(0, 0, (1_000, k0, false)), (1, 0, (1_000, k1, false))]))
        .emit(ev_at(1_000, vec![(0, 1, (2_000, k0, false))]))
        .emit(ev_at(2_000, vec![(0, 2, (3_000, k1, false))]))
        .emit(ev_at(3_000, vec![(0, 3, (11_000, k0, false))]))
        // Copy 0 gets the slow record (the first half of the batch), copy 1 the other.
        .emit(ev_at(6_000, vec![(1, 1, (1_500, k1, true)), (0, 4, (11_500, k0, false))]));
    let job = || {
        let strategy =
            WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO).with_idleness(Duration::from_secs(5));
        Stream::<Ev>::new()
            .map(|e: Ev| {
                if e.2 {
                    std::thread::sleep(Duration::from_millis(300));
                }
                e
            })
            .assign_timestamps(|e: &Ev| e.0, strategy)
            .key_by(|e: &Ev| Key::from(e.1))
            .window(WindowSpec::tumbling(Duration::from_secs(10)).unwrap(), Count)
            .id("counts")
            .map(|r: WindowResult<u64>| {
                (r.key.as_str().unwrap_or_default().to_owned(), r.window_start, r.value)
            })
    };
    let (sink, rows) = CollectSink::with_handle();
    let (dlq, dead) = CollectSink::with_handle();
    let mut runner = Runner::builder().workers(2).build().unwrap();
    let report = within(30, "the job", runner.parallel_job(script, job).sink(sink).dead_letters(dlq).run())
        .await
        .unwrap();
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
    assert_eq!(dead.take(), vec![], "partition 1's record is on time");
    let last: BTreeMap<(String, i64), u64> = rows.take().into_iter().map(|(k, s, n)| ((k, s), n)).collect();
    assert_eq!(
        last.get(&(k1.to_owned(), 0)),
        Some(&3),
        "{k1}'s first window counts partition 1's record: {last:?}"
    );
}
