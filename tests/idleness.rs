//! Idleness off the happy path: judged for every task while batches keep coming, and on the
//! source's own clock, which stands still while the job is blocked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ferroflow::operator::IntoOperator;
use ferroflow::sink::CollectSink;
use ferroflow::source::{SourceEvent, SourceProgress};
use ferroflow::testing::ScriptedSource;
use ferroflow::time::{Clock, ManualClock, WatermarkStrategy};
use ferroflow::window::{Count, WindowResult, WindowSpec};
use ferroflow::{Key, Operator, PartitionId, Runner, RunnerConfig, Stream, Timestamp};
use tokio::sync::Notify;

use common::{wait_until, within};

/// (partition, window start, events) of a row.
type Row = (PartitionId, i64, u64);

/// Each partition's task: event time from the payload, 10 s windows counting events, idle after
/// 5 s.
fn task(p: PartitionId) -> impl IntoOperator<Op: Operator<In = i64, Out = Row>> {
    let strategy =
        WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO).with_idleness(Duration::from_secs(5));
    Stream::<i64>::new()
        .assign_timestamps(|t: &i64| *t, strategy)
        .key_by(|_: &i64| Key::from("k"))
        .window(WindowSpec::tumbling(Duration::from_secs(10)).unwrap(), Count)
        .map(move |r: WindowResult<u64>| (p, r.window_start, r.value))
}

/// Processing time that moves one second every time the runner reads it: each event the job
/// handles is a second later than the one before, however fast the test runs.
#[derive(Debug, Default)]
struct SecondPerRead(AtomicI64);

impl Clock for SecondPerRead {
    fn now_ms(&self) -> Timestamp {
        self.0.fetch_add(1_000, Ordering::Relaxed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_turns_idle_while_batches_keep_the_channel_full() {
    // Partition 1 delivers once, partition 0 a batch per second of event time for 60 s: the
    // source is always ahead, the channel never empty, and the periodic wake-up (an hour) never
    // comes. Partition 1 must still turn idle after 5 s of processing time and follow partition
    // 0, so both partitions' windows close while the input continues.
    // The job starts idle (the first periodic wake-up, which comes at once, finds nothing to do).
    let go = Arc::new(Notify::new());
    let mut script = ScriptedSource::new().wait(&go).assign(vec![0, 1]).records(vec![rec(1, 0, 1_000)]);
    for s in 0..60u64 {
        script = script.records(vec![rec(0, s, s as i64 * 1_000)]);
    }
    let end = Arc::new(Notify::new());
    let script = script.wait(&end);
    let mut runner = Runner::new(RunnerConfig {
        channel_capacity: 64,
        tick_interval: Duration::from_secs(3_600),
        clock: Arc::new(SecondPerRead::default()),
        ..RunnerConfig::default()
    });
    let (sink, rows) = CollectSink::with_handle();
    let job = tokio::spawn(async move {
        runner.job_per_partition(script, task).sink(sink).discard_dead_letters().run().await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    go.notify_one();
    let closed = within(10, "windows of both partitions closing before the end of input", async {
        loop {
            let got: Vec<Row> = rows.snapshot();
            if got.iter().any(|r| r.0 == 1) && got.iter().any(|r| r.0 == 0) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        closed.contains(&(1, 0, 1)),
        "partition 1's window closed as it followed partition 0: {closed:?}"
    );
    assert!(closed.contains(&(0, 0, 10)), "partition 0's first window closed: {closed:?}");
    end.notify_one();
    let report = within(10, "the job", job).await.unwrap().unwrap();
    assert!(report.counters.identity_holds());
    assert_eq!(report.counters.records_dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_job_does_not_make_partitions_with_data_idle() {
    // Both partitions deliver at source times 0 s and 1 s. Then the job stalls: processing time
    // jumps by ten idle timeouts while the source's clock (it could not read) moves 100 ms.
    // Partition 1's next record, in event time behind partition 0's, must still be on time: its
    // partition never turned idle, so partition 0 alone never moved the watermark past it.
    let clock = ManualClock::new(0);
    let (stalled, resume) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let script = ScriptedSource::new()
        .assign(vec![0, 1])
        .emit(batch_at(0, vec![rec(0, 0, 1_000), rec(1, 0, 1_000)]))
        .emit(batch_at(1_000, vec![rec(0, 1, 5_000), rec(1, 1, 2_000)]))
        .wait(&stalled)
        .emit(batch_at(1_100, vec![rec(0, 2, 30_000)]))
        .emit(batch_at(1_200, vec![rec(1, 2, 3_000)]))
        .emit(SourceEvent::Progress(SourceProgress { time_ms: 1_300, behind: vec![] }))
        .wait(&resume);
    let mut runner = common::runner_on(&clock);
    let counters = runner.counters();
    let (sink, rows) = CollectSink::with_handle();
    let job = tokio::spawn(async move {
        runner.job_per_partition(script, task).sink(sink).discard_dead_letters().run().await
    });
    wait_until(10, "the first batches", || counters.snapshot().records_in >= 4).await;
    // The stall: a minute of processing time passes, periodic wake-ups included.
    clock.set(60_000);
    tokio::time::sleep(Duration::from_millis(50)).await;
    stalled.notify_one();
    wait_until(10, "the batches after the stall", || counters.snapshot().records_in >= 6).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = counters.snapshot();
    assert_eq!(c.records_dead_lettered, 0, "nothing late: no partition with data went idle: {c:?}");
    assert!(c.partitions.iter().all(|p| !p.idle), "{:?}", c.partitions);
    resume.notify_one();
    let report = within(10, "the job", job).await.unwrap().unwrap();
    let mut got = rows.take();
    got.sort_unstable();
    assert_eq!(got, vec![(0, 0, 2), (0, 30_000, 1), (1, 0, 3)]);
    assert!(report.counters.identity_holds());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_the_source_has_not_caught_up_with_never_turns_idle() {
    // Partition 1 sends nothing for 20 s of source time, but the source says it is behind (its
    // data waits in the broker): it does not turn idle, so it does not follow partition 0.
    let script = ScriptedSource::new()
        .assign(vec![0, 1])
        .emit(batch_at(0, vec![rec(0, 0, 1_000), rec(1, 0, 1_000)]))
        .emit(SourceEvent::Progress(SourceProgress { time_ms: 10_000, behind: vec![1] }))
        .emit(SourceEvent::Progress(SourceProgress { time_ms: 18_000, behind: vec![1] }))
        .emit(batch_at(20_000, vec![rec(0, 1, 50_000)]));
    let mut runner = common::runner_on(&ManualClock::new(0));
    let counters = runner.counters();
    let (sink, rows) = CollectSink::with_handle();
    let go = Arc::new(Notify::new());
    let script = script.wait(&go);
    let job = tokio::spawn(async move {
        runner.job_per_partition(script, task).sink(sink).discard_dead_letters().run().await
    });
    wait_until(10, "the batches", || counters.snapshot().records_in >= 3).await;
    let c = counters.snapshot();
    assert!(!c.partitions.iter().any(|p| p.partition == 1 && p.idle), "{:?}", c.partitions);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // 20 s after partition 1's last record, but only 2 s after the source last said it is behind:
    // it holds the job's watermark, and its window stays open (partition 0's own closes).
    assert_eq!(rows.snapshot(), vec![(0, 0, 1)]);
    assert_eq!(counters.snapshot().watermark, 999, "the job's watermark waits for partition 1");
    go.notify_one();
    within(10, "the job", job).await.unwrap().unwrap();
}

fn rec(partition: PartitionId, offset: u64, ts: i64) -> ferroflow::Record<i64> {
    ferroflow::Record::new(ts, 0).with_position(ferroflow::SourcePosition::new(partition, offset))
}

fn batch_at(source_time_ms: i64, records: Vec<ferroflow::Record<i64>>) -> SourceEvent<i64> {
    SourceEvent::Batch(
        ferroflow::source::SourceBatch::of(records)
            .with_progress(SourceProgress { time_ms: source_time_ms, behind: vec![] }),
    )
}

#[test]
fn a_partition_named_active_does_not_make_the_others_idle_before_their_records_count() {
    // The source's report comes with a batch; judging idleness on it, before the batch's records
    // are observed, could idle a partition whose records are in that very batch.
    use ferroflow::operator::AssignTimestamps;
    use ferroflow::{Context, Signal};
    let strategy =
        WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO).with_idleness(Duration::from_secs(5));
    let mut op = AssignTimestamps::new(|t: &i64| *t, strategy);
    let mut ctx = Context::new(0);
    let mut out = Vec::new();
    op.process_batch(&mut vec![rec(0, 0, 20_000), rec(1, 0, 1_000)], &mut ctx, &mut out);
    assert_eq!(ctx.take_watermark(), Some(ferroflow::time::Watermark(999)));
    ctx.set_idle_clock(10_000);
    op.on_signal(&Signal::PartitionsActive(vec![0]), &mut ctx);
    assert_eq!(ctx.take_watermark(), None, "partition 1 is not judged here");
    op.process_batch(&mut vec![rec(1, 1, 2_000)], &mut ctx, &mut out);
    assert_eq!(ctx.take_watermark(), Some(ferroflow::time::Watermark(1_999)), "its record counts first");
}
