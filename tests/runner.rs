//! Runner tests: file sources, partitions that finish early, backpressure, clean shutdown,
//! idleness with a manual clock, and failing sinks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferroflow::join::Either;
use ferroflow::operator::ProcessOutput;
use ferroflow::sink::{CollectSink, JsonLinesSink, Sink};
use ferroflow::source::{JsonLinesSource, MemorySource, Source, SourceBatch, SourceEvent};
use ferroflow::testing::ScriptedSource;
use ferroflow::time::{ManualClock, Watermark, WatermarkStrategy};
use ferroflow::window::{Count, WindowResult, WindowSpec};
use ferroflow::{
    DeadLetter, DeadLetterReason, JobError, Key, Operator, Record, RetryHint, Runner, RunnerConfig,
    SinkError, SourceError, SourcePosition, Stream,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use common::{wait_until, within};

/// A test event as written in the input files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ev {
    k: String,
    ts: i64,
    #[serde(default)]
    n: u64,
}

fn positions_stream()
-> impl ferroflow::operator::IntoOperator<Op: ferroflow::Operator<In = Ev, Out = (SourcePosition, Ev)>> {
    Stream::<Ev>::new().process(|r: Record<Ev>, out: &mut ProcessOutput<'_, Ev, (SourcePosition, Ev)>| {
        let p = r.position;
        out.emit(r.map_payload(|e| (p, e)));
    })
}

// ---------------------------------------------------------------------------------------------
// (a) JSON-lines file source.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn json_lines_source_decodes_crlf_skips_blank_lines_and_dead_letters_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    // Line 3 is blank, line 4 malformed, line 5 only spaces, line 6 has no final newline.
    let content = concat!(
        "{\"k\":\"a\",\"ts\":1}\r\n",
        "{\"k\":\"b\",\"ts\":2}\r\n",
        "\r\n",
        "{\"k\":\"c\",\"ts\":oops}\r\n",
        "   \r\n",
        "{\"k\":\"d\",\"ts\":6}",
    );
    std::fs::write(&path, content).unwrap();

    let (sink, dlq) = (CollectSink::new(), CollectSink::new());
    let (out, dead) = (sink.handle(), dlq.handle());
    let report = within(
        10,
        "the job",
        Runner::default()
            .job(JsonLinesSource::<Ev>::open([&path]), positions_stream())
            .sink(sink)
            .dead_letters(dlq)
            .run(),
    )
    .await
    .unwrap();

    let out = out.take();
    let got: Vec<(u64, &str, i64)> = out.iter().map(|(p, e)| (p.offset, e.k.as_str(), e.ts)).collect();
    assert_eq!(got, vec![(0, "a", 1), (1, "b", 2), (5, "d", 6)], "offsets are 0-based line indexes");
    assert!(out.iter().all(|(p, _)| p.partition == 0));

    let dead = dead.take();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d.reason, DeadLetterReason::DecodeError);
    assert!(d.detail.starts_with("line 4:"), "detail: {}", d.detail);
    assert_eq!(d.position, SourcePosition::new(0, 3));
    assert_eq!(d.original, Bytes::from_static(b"{\"k\":\"c\",\"ts\":oops}"), "without the CR");

    let c = &report.counters;
    assert!(c.identity_holds(), "{c:?}");
    assert_eq!(c.records_in, 4);
    assert_eq!(c.records_out, 3);
    assert_eq!(c.dead_letters(DeadLetterReason::DecodeError), 1);
    assert_eq!(c.records_dead_lettered, 1);
}

#[tokio::test]
async fn raw_json_lines_keep_positions_through_decode_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, "{\"k\":\"a\",\"ts\":1}\r\n\r\n[1,2\r\n{\"k\":\"b\",\"ts\":2}\r\n").unwrap();
    let stream = Stream::<Bytes>::new().decode_json::<Ev>().process(
        |r: Record<Ev>, out: &mut ProcessOutput<'_, Ev, (SourcePosition, Ev)>| {
            let p = r.position;
            out.emit(r.map_payload(|e| (p, e)));
        },
    );
    let (sink, dlq) = (CollectSink::new(), CollectSink::new());
    let (out, dead) = (sink.handle(), dlq.handle());
    let report = within(
        10,
        "the job",
        Runner::default().job(JsonLinesSource::raw([&path]), stream).sink(sink).dead_letters(dlq).run(),
    )
    .await
    .unwrap();
    let offsets: Vec<u64> = out.take().iter().map(|(p, _)| p.offset).collect();
    assert_eq!(offsets, vec![0, 3]);
    let dead = dead.take();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, DeadLetterReason::DecodeError);
    assert_eq!(dead[0].position, SourcePosition::new(0, 2));
    assert_eq!(dead[0].original, Bytes::from_static(b"[1,2"));
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
    assert_eq!(report.counters.records_in, 3);
}

/// Files larger than the 1 MiB read chunk: lines split across chunks keep their numbers.
#[tokio::test]
async fn json_lines_line_numbers_survive_chunk_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let pad = "x".repeat(97);
    let mut content = String::new();
    let mut bad = Vec::new();
    for line in 1..=30_000u64 {
        if line % 997 == 0 {
            let _ = write!(content, "{{\"k\":\"bad\",\"ts\":{line},\"pad\":\"{pad}\"\r\n");
            bad.push(line);
        } else if line % 1_013 == 0 {
            content.push_str("\r\n");
        } else {
            let _ = write!(content, "{{\"k\":\"{pad}\",\"ts\":{line},\"n\":{line}}}\r\n");
        }
    }
    assert!(content.len() > 3 << 20);
    std::fs::write(&path, &content).unwrap();

    let (sink, dlq) = (CollectSink::new(), CollectSink::new());
    let (out, dead) = (sink.handle(), dlq.handle());
    let report = within(
        60,
        "the job",
        Runner::default()
            .job(JsonLinesSource::<Ev>::open([&path]), positions_stream())
            .sink(sink)
            .dead_letters(dlq)
            .run(),
    )
    .await
    .unwrap();
    let out = out.take();
    let blank = (1..=30_000u64).filter(|l| l % 1_013 == 0 && l % 997 != 0).count();
    assert_eq!(out.len(), 30_000 - bad.len() - blank);
    for (p, e) in &out {
        assert_eq!(p.offset + 1, e.n, "record {e:?} at {p}");
        assert_eq!(e.k, pad);
    }
    let dead = dead.take();
    assert_eq!(dead.iter().map(|d| d.position.offset + 1).collect::<Vec<_>>(), bad);
    for d in &dead {
        let line = d.position.offset + 1;
        assert!(d.detail.starts_with(&format!("line {line}:")), "{}", d.detail);
        assert_eq!(d.original, Bytes::from(format!("{{\"k\":\"bad\",\"ts\":{line},\"pad\":\"{pad}\"")));
    }
    assert!(report.counters.identity_holds());
    assert_eq!(report.counters.records_in, (out.len() + dead.len()) as u64);
}

// ---------------------------------------------------------------------------------------------
// (b) Two files, one much shorter.
// ---------------------------------------------------------------------------------------------

/// Writes `lines` events of key `key` with event times `i * 10` ms, adjacent pairs swapped (so at
/// most 10 ms out of order), padded to about 250 bytes a line.
fn write_ordered_file(path: &Path, key: &str, lines: i64) {
    let pad = "p".repeat(200);
    let mut s = String::new();
    for i in 0..lines {
        let j = if i % 2 == 0 { (i + 1).min(lines - 1) } else { i - 1 };
        let _ = writeln!(s, "{{\"k\":\"{key}\",\"ts\":{},\"pad\":\"{pad}\"}}", j * 10);
    }
    std::fs::write(path, s).unwrap();
}

/// A sink that keeps the batches it received, in order.
#[derive(Debug, Clone)]
struct BatchSink<T>(Arc<Mutex<Vec<Vec<T>>>>);

impl<T> BatchSink<T> {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Vec::new())))
    }
}

impl<T: Send + 'static> Sink<T> for BatchSink<T> {
    async fn write_batch(&mut self, batch: Vec<T>) -> Result<(), SinkError> {
        self.0.lock().unwrap().push(batch);
        Ok(())
    }
}

type CountRow = WindowResult<u64>;

async fn run_two_files(short_ts: &[i64]) -> (Vec<Vec<CountRow>>, Vec<DeadLetter>, ferroflow::JobReport, i64) {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long.jsonl");
    let short = dir.path().join("short.jsonl");
    let lines = 16_000; // ~4 MiB: several read chunks
    write_ordered_file(&long, "long", lines);
    let mut s = String::new();
    for ts in short_ts {
        let _ = writeln!(s, "{{\"k\":\"short\",\"ts\":{ts}}}");
    }
    std::fs::write(&short, s).unwrap();

    let stream = Stream::<Ev>::new()
        .assign_timestamps(
            |e: &Ev| e.ts,
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(20)),
        )
        .key_by(|e: &Ev| Key::from(e.k.as_str()))
        .window(WindowSpec::tumbling(Duration::from_secs(1)).unwrap(), Count);
    let sink = BatchSink::new();
    let batches = Arc::clone(&sink.0);
    let dlq = CollectSink::new();
    let dead = dlq.handle();
    let report = within(
        60,
        "the job",
        Runner::default()
            .job(JsonLinesSource::<Ev>::open([&long, &short]), stream)
            .sink(sink)
            .dead_letters(dlq)
            .run(),
    )
    .await
    .unwrap();
    let batches = std::mem::take(&mut *batches.lock().unwrap());
    (batches, dead.take(), report, lines)
}

fn check_long_rows(rows: &[&CountRow], lines: i64) {
    let got: BTreeMap<i64, u64> =
        rows.iter().filter(|r| r.key == Key::from("long")).map(|r| (r.window_start, r.value)).collect();
    let mut expected: BTreeMap<i64, u64> = BTreeMap::new();
    for i in 0..lines {
        *expected.entry((i * 10).div_euclid(1000) * 1000).or_default() += 1;
    }
    assert_eq!(got, expected);
}

/// The short file is far *ahead* in event time: once it has finished it must not drag the
/// watermark to its own position, or every later record of the long file would be late.
#[tokio::test]
async fn finished_short_partition_does_not_advance_the_watermark() {
    let short: Vec<i64> = (0..5).map(|i| 1_000_000_000 + i).collect();
    let (batches, dead, report, lines) = run_two_files(&short).await;
    assert!(dead.is_empty(), "records of the long file were dead-lettered: {:?}", &dead[..dead.len().min(3)]);
    let c = &report.counters;
    assert!(c.identity_holds(), "{c:?}");
    assert_eq!(c.records_in, lines as u64 + 5);
    assert_eq!(c.records_windowed, lines as u64 + 5);
    let rows: Vec<&CountRow> = batches.iter().flatten().collect();
    check_long_rows(&rows, lines);
    assert_eq!(rows.iter().filter(|r| r.key == Key::from("short")).map(|r| r.value).sum::<u64>(), 5);
    // These windows ended decades before the wall clock: the emission lag says so.
    assert!(c.window_emit_lag_ms > 1_000_000_000, "emission lag {} ms", c.window_emit_lag_ms);
}

/// The short file is *behind* in event time: once it has finished it must stop holding the
/// watermark back, so the long file's windows fire while it is still being read, not all at the
/// end of input.
#[tokio::test]
async fn finished_short_partition_does_not_hold_the_watermark() {
    let (batches, dead, report, lines) = run_two_files(&[0, 1, 2]).await;
    assert!(dead.is_empty(), "{:?}", &dead[..dead.len().min(3)]);
    assert!(report.counters.identity_holds());
    let rows: Vec<&CountRow> = batches.iter().flatten().collect();
    check_long_rows(&rows, lines);
    let before_last: usize = batches[..batches.len() - 1].iter().map(Vec::len).sum();
    assert!(
        batches.len() >= 2 && before_last > 0,
        "every window fired only at the end of input ({} result batches)",
        batches.len()
    );
}

// ---------------------------------------------------------------------------------------------
// (c) Backpressure.
// ---------------------------------------------------------------------------------------------

/// Produces `total` one-record batches as fast as it is asked, noting how far ahead of the sink it
/// gets.
struct CountingSource {
    announced: bool,
    total: usize,
    produced: Arc<AtomicUsize>,
    written: Arc<AtomicUsize>,
    max_ahead: Arc<AtomicUsize>,
}

impl Source<u64> for CountingSource {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<u64>>, SourceError> {
        if !self.announced {
            self.announced = true;
            return Ok(Some(SourceEvent::PartitionsAssigned(vec![0])));
        }
        let n = self.produced.load(Ordering::SeqCst);
        if n == self.total {
            return Ok(None);
        }
        self.produced.store(n + 1, Ordering::SeqCst);
        let ahead = n + 1 - self.written.load(Ordering::SeqCst);
        self.max_ahead.fetch_max(ahead, Ordering::SeqCst);
        let record = Record::new(n as u64, n as i64).with_position(SourcePosition::new(0, n as u64));
        Ok(Some(SourceEvent::Batch(SourceBatch::of(vec![record]))))
    }
}

/// Sleeps in every write (much longer in the first), then counts the batch as written.
struct SlowSink {
    written: Arc<AtomicUsize>,
    items: Arc<Mutex<Vec<u64>>>,
}

impl Sink<u64> for SlowSink {
    async fn write_batch(&mut self, batch: Vec<u64>) -> Result<(), SinkError> {
        let first = self.written.load(Ordering::SeqCst) == 0;
        tokio::time::sleep(Duration::from_millis(if first { 300 } else { 5 })).await;
        self.items.lock().unwrap().extend(batch);
        self.written.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sink_holds_the_source_back() {
    let cap = 2;
    let total = 60;
    let (produced, written, max_ahead) = (Arc::default(), Arc::default(), Arc::default());
    let source = CountingSource {
        announced: false,
        total,
        produced: Arc::clone(&produced),
        written: Arc::clone(&written),
        max_ahead: Arc::clone(&max_ahead),
    };
    let items = Arc::default();
    let sink = SlowSink { written: Arc::clone(&written), items: Arc::clone(&items) };
    let mut runner = Runner::new(RunnerConfig { channel_capacity: cap, ..RunnerConfig::default() });
    let stream = Stream::<u64>::new().map(|x| x);
    let job = tokio::spawn(async move {
        runner.job(source, stream).sink(sink).dead_letters(CollectSink::new()).run().await
    });

    // While the sink sits in its first (long) write, the source fills the pipeline and must stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(written.load(Ordering::SeqCst), 0, "the first write is still sleeping");
    let while_blocked = produced.load(Ordering::SeqCst);

    let report = within(30, "the job", job).await.unwrap().unwrap();
    // In flight at most: one batch in the sink's write, `cap` in the task→sink channel, one in the
    // processing task (waiting to send), `cap` in the source→task channel, and one the source has
    // produced and is waiting to send: 2 * cap + 3 (= 7 for cap = 2, about 3 * cap).
    let bound = 2 * cap + 3;
    assert!(while_blocked <= bound, "source produced {while_blocked} batches while the sink wrote none");
    let max_ahead = max_ahead.load(Ordering::SeqCst);
    assert!(max_ahead <= bound, "the source got {max_ahead} batches ahead of the sink (bound {bound})");
    assert!(max_ahead > 2 * cap, "the pipeline never filled up ({max_ahead}): the test measured nothing");
    assert_eq!(*items.lock().unwrap(), (0..total as u64).collect::<Vec<_>>());
    assert_eq!(report.counters.records_out, total as u64);
    assert!(report.counters.identity_holds());
}

// ---------------------------------------------------------------------------------------------
// (d) Clean shutdown: file sinks are complete when `run` returns.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn file_sinks_hold_every_row_and_dead_letter_when_run_returns() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let pad = "q".repeat(100);
    let mut s = String::new();
    let mut expected: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let lines = 30_000i64;
    for i in 0..lines {
        let k = format!("user-{}", i % 97);
        let ts = i * 7;
        *expected.entry((k.clone(), ts.div_euclid(1_000) * 1_000)).or_default() += 1;
        let _ = writeln!(s, "{{\"k\":\"{k}\",\"ts\":{ts},\"pad\":\"{pad}\"}}");
        if i % 10_000 == 5 {
            s.push_str("{not json\n");
        }
    }
    // Far behind the watermark by now, and in a later read chunk than the records that moved it.
    s.push_str("{\"k\":\"user-1\",\"ts\":3}\n");
    assert!(s.len() > 3 << 20);
    std::fs::write(&input, s).unwrap();

    let out_path = dir.path().join("rows.jsonl");
    let dlq_path = dir.path().join("dead.jsonl");
    let sink = JsonLinesSink::create(&out_path).await.unwrap();
    let dlq = JsonLinesSink::create(&dlq_path).await.unwrap();
    let stream = Stream::<Ev>::new()
        .assign_timestamps(
            |e: &Ev| e.ts,
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(100)),
        )
        .key_by(|e: &Ev| Key::from(e.k.as_str()))
        .window(WindowSpec::tumbling(Duration::from_secs(1)).unwrap(), Count);
    let report = within(
        60,
        "the job",
        Runner::default()
            .job(JsonLinesSource::<Ev>::open([&input]), stream)
            .sink(sink)
            .dead_letters(dlq)
            .run(),
    )
    .await
    .unwrap();

    // Read right after `run` returned, with no other synchronisation.
    let rows: Vec<CountRow> = std::fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dead: Vec<DeadLetter> = std::fs::read_to_string(&dlq_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let c = &report.counters;
    assert!(c.identity_holds(), "{c:?}");
    assert_eq!(rows.len() as u64, c.window_rows_emitted);
    assert_eq!(dead.len() as u64, c.records_dead_lettered);
    let got: BTreeMap<(String, i64), u64> =
        rows.iter().map(|r| ((r.key.to_string(), r.window_start), r.value)).collect();
    assert_eq!(got, expected);
    assert_eq!(
        dead.iter().map(|d| (d.reason, d.position.offset)).collect::<Vec<_>>(),
        vec![
            (DeadLetterReason::DecodeError, 6),
            (DeadLetterReason::DecodeError, 10_007),
            (DeadLetterReason::DecodeError, 20_008),
            (DeadLetterReason::LateEvent, lines as u64 + 3),
        ]
    );
    assert_eq!(dead[0].original, Bytes::from_static(b"{not json"));
}

// ---------------------------------------------------------------------------------------------
// (e) Idleness through the runner, with a manual clock.
// ---------------------------------------------------------------------------------------------

fn batch_of(partition: u32, first_offset: u64, times: &[i64]) -> SourceEvent<i64> {
    let records = times
        .iter()
        .enumerate()
        .map(|(i, &ts)| {
            Record::new(ts, 0).with_position(SourcePosition::new(partition, first_offset + i as u64))
        })
        .collect();
    SourceEvent::Batch(SourceBatch::of(records))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_partition_stops_holding_the_watermark() {
    let clock = ManualClock::new(0);
    let (go, end) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let first: Vec<i64> = (1..=9).map(|i| i * 1_000).chain([15_000]).collect();
    let source = ScriptedSource::new()
        .assign(vec![0, 1])
        .emit(batch_of(0, 0, &first))
        .wait(&go)
        .emit(batch_of(0, first.len() as u64, &[16_000]))
        .wait(&end);
    let stream = Stream::<i64>::new()
        .assign_timestamps(
            |t: &i64| *t,
            WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO).with_idleness(Duration::from_secs(1)),
        )
        .key_by(|_: &i64| Key::from("k"))
        .window(WindowSpec::tumbling(Duration::from_secs(10)).unwrap(), Count);
    let mut runner = common::runner_on(&clock);
    let counters = runner.counters();
    let sink = CollectSink::new();
    let rows = sink.handle();
    let job = tokio::spawn(async move {
        runner.job(source, stream).sink(sink).dead_letters(CollectSink::new()).run().await
    });

    // Partition 1 is registered and partition 0's first batch is processed at processing time 0.
    wait_until(10, "the first batch", || counters.snapshot().records_in == 10).await;
    // Partition 0 delivers again at 600 ms: neither partition has been silent for 1 s.
    clock.set(600);
    go.notify_one();
    wait_until(10, "the second batch", || counters.snapshot().records_in == 11).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // ~20 ticks
    assert!(rows.is_empty(), "partition 1 is not idle yet, so it must hold the watermark back");
    assert_eq!(counters.snapshot().watermark, i64::MIN);

    // At 1 100 ms partition 1 has been silent for 1.1 s (idle), partition 0 only for 0.5 s.
    clock.set(1_100);
    wait_until(10, "the first window to fire on a tick", || !rows.is_empty()).await;
    assert_eq!(counters.snapshot().watermark, 15_999);
    let fired = rows.take();
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!((fired[0].window_start, fired[0].window_end, fired[0].value), (0, 10_000, 9));
    assert_eq!(counters.snapshot().records_in, 11, "the window fired before the end of input");

    end.notify_one();
    let report = within(10, "the job", job).await.unwrap().unwrap();
    assert_eq!(report.final_watermark, Watermark::MAX);
    let rest = rows.take();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!((rest[0].window_start, rest[0].value), (10_000, 2));
    assert!(report.counters.identity_holds());
}

// ---------------------------------------------------------------------------------------------
// (f) A failing sink fails the job instead of hanging it.
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct FailingSink;

impl<T: Send + 'static> Sink<T> for FailingSink {
    async fn write_batch(&mut self, _batch: Vec<T>) -> Result<(), SinkError> {
        Err(SinkError::External { message: "downstream refused".into(), retry: RetryHint::NoRetry })
    }
}

fn assert_sink_error(res: Result<ferroflow::JobReport, JobError>) {
    match res {
        Err(JobError::Sink(SinkError::External { message, .. })) => assert_eq!(message, "downstream refused"),
        other => panic!("expected the sink's error, got {other:?}"),
    }
}

#[tokio::test]
async fn failing_sink_fails_a_bounded_job() {
    let source = MemorySource::new((0..1_000i64).map(|i| Record::new(i, i)).collect()).with_batch_size(10);
    let mut runner = Runner::new(RunnerConfig { channel_capacity: 2, ..RunnerConfig::default() });
    let res = within(
        10,
        "the job",
        runner
            .job(source, Stream::<i64>::new().map(|x| x + 1))
            .sink(FailingSink)
            .dead_letters(CollectSink::new())
            .run(),
    )
    .await;
    assert_sink_error(res);
}

/// A source that never ends and always has data.
struct EndlessSource(u64);

impl Source<u64> for EndlessSource {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<u64>>, SourceError> {
        self.0 += 1;
        let r = Record::new(self.0, 0).with_position(SourcePosition::new(0, self.0));
        Ok(Some(SourceEvent::Batch(SourceBatch::of(vec![r]))))
    }
}

#[tokio::test]
async fn failing_sink_fails_an_unbounded_job() {
    let mut runner = Runner::new(RunnerConfig { channel_capacity: 2, ..RunnerConfig::default() });
    let res = within(
        10,
        "the job",
        runner
            .job(EndlessSource(0), Stream::<u64>::new())
            .sink(FailingSink)
            .dead_letters(CollectSink::new())
            .run(),
    )
    .await;
    assert_sink_error(res);
}

/// An unbounded source that has nothing more to deliver after its first batch (a quiet topic).
#[tokio::test]
async fn failing_sink_fails_the_job_even_when_the_source_goes_quiet() {
    let source =
        ScriptedSource::new().assign(vec![0]).emit(batch_of(0, 0, &[1, 2, 3])).wait(&Arc::new(Notify::new())); // never notified
    let mut runner = Runner::new(RunnerConfig {
        channel_capacity: 2,
        tick_interval: Duration::from_millis(10),
        ..RunnerConfig::default()
    });
    let res = within(
        10,
        "the job",
        runner.job(source, Stream::<i64>::new()).sink(FailingSink).dead_letters(CollectSink::new()).run(),
    )
    .await;
    assert_sink_error(res);
}

#[tokio::test]
async fn failing_dead_letter_sink_fails_the_job() {
    let source = MemorySource::new((0..100i64).map(|i| Record::new(i, i)).collect()).with_batch_size(10);
    let stream = Stream::<i64>::new().try_map(|x: &i64| {
        if x % 7 == 0 { Err(ferroflow::Rejection::contract("multiple of 7")) } else { Ok(*x) }
    });
    let mut runner = Runner::new(RunnerConfig { channel_capacity: 2, ..RunnerConfig::default() });
    let res = within(
        10,
        "the job",
        runner.job(source, stream).sink(CollectSink::new()).dead_letters(FailingSink).run(),
    )
    .await;
    assert_sink_error(res);
}

/// Yields one batch, then fails like a broker refusing authentication.
struct FailingSource {
    sent: bool,
}

impl Source<i64> for FailingSource {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<i64>>, ferroflow::SourceError> {
        if self.sent {
            return Err(ferroflow::SourceError::External {
                message: "authentication failed".into(),
                retry: ferroflow::RetryHint::NoRetry,
            });
        }
        self.sent = true;
        let records = (0..10).map(|i| Record::new(i, i * 1_000)).collect();
        Ok(Some(SourceEvent::Batch(SourceBatch::of(records))))
    }
}

#[tokio::test]
async fn a_failing_source_is_not_the_end_of_input() {
    let stream = Stream::<i64>::new()
        .assign_timestamps(|x: &i64| x * 1_000, WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO))
        .key_by(|_: &i64| ferroflow::Key::from("k"))
        .window(WindowSpec::tumbling(Duration::from_secs(60)).unwrap(), Count);
    let (sink, dlq) = (CollectSink::new(), CollectSink::new());
    let out = sink.handle();
    let err = within(
        10,
        "the failed job",
        Runner::default().job(FailingSource { sent: false }, stream).sink(sink).dead_letters(dlq).run(),
    )
    .await
    .expect_err("the source's error is the job's error");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    // End of input would have fired the open window with the maximum watermark; a failure must not.
    assert!(out.take().is_empty(), "no window may be finalised by a failed source");
}

#[tokio::test]
async fn per_partition_watermarks_are_reported_in_the_counters() {
    let records: Vec<Record<i64>> = (0..20)
        .map(|i| Record::new(i, 0).with_position(SourcePosition::new((i % 2) as u32, (i / 2) as u64)))
        .collect();
    let source = MemorySource::new(records).with_batch_size(4);
    let stream = Stream::<i64>::new()
        .assign_timestamps(|x: &i64| x * 1_000, WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO));
    let runner = Runner::default();
    let counters = runner.counters();
    let mut runner = runner;
    let report = runner
        .job(source, stream)
        .sink(CollectSink::new())
        .dead_letters(CollectSink::new())
        .run()
        .await
        .unwrap();
    let parts = &report.counters.partitions;
    assert_eq!(parts.iter().map(|p| p.partition).collect::<Vec<_>>(), vec![0, 1], "{parts:?}");
    assert!(parts.iter().all(|p| p.watermark == i64::MAX && !p.idle), "finished partitions: {parts:?}");
    assert_eq!(counters.snapshot().partitions, *parts, "the live counters hold the same report");
}

#[tokio::test]
async fn every_step_of_the_chain_reports_records_in_and_out() {
    let records = (0..10i64).map(|i| Record::new(Ev { k: "k".into(), ts: i, n: i as u64 }, i)).collect();
    let stream = Stream::<Ev>::new()
        .filter(|e| e.n % 2 == 0)
        .map(|e| Ev { n: e.n * 100, ..e })
        .assign_timestamps(|e| e.ts, WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO))
        .key_by(|e| Key::from(e.k.as_str()))
        .window(WindowSpec::tumbling(Duration::from_millis(5)).unwrap(), Count);
    let (sink, dlq) = (CollectSink::new(), CollectSink::new());
    let report = within(
        10,
        "job",
        Runner::default().job(MemorySource::new(records), stream).sink(sink).dead_letters(dlq).run(),
    )
    .await
    .unwrap();
    let steps: Vec<(&str, u64, u64)> = report
        .counters
        .operators
        .iter()
        .map(|o| (o.name, o.records.records_in, o.records.records_out))
        .collect();
    // 10 in, the 5 even ones pass the filter, two 5 ms windows hold them: two result rows.
    assert_eq!(
        steps,
        vec![
            ("source", 10, 10),
            ("filter", 10, 5),
            ("map", 5, 5),
            ("assign_timestamps", 5, 5),
            ("key_by", 5, 5),
            ("window", 5, 2)
        ]
    );
    assert!(report.counters.identity_holds());
}

#[tokio::test]
async fn a_split_sink_sends_each_row_of_one_job_to_one_of_two_sinks() {
    let records =
        (0..20i64).map(|i| Record::new(Ev { k: format!("k{}", i % 3), ts: i, n: i as u64 }, i)).collect();
    let stream = Stream::<Ev>::new()
        .assign_timestamps(|e| e.ts, WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO))
        .key_by(|e| Key::from(e.k.as_str()))
        .window(WindowSpec::tumbling(Duration::from_millis(10)).unwrap(), Count);
    // Busy windows (more than 3 records) become alert texts; every other row goes on as it is.
    let (alerts, alerts_seen) = CollectSink::with_handle();
    let (rows, rows_seen) = CollectSink::with_handle();
    let route = |r: WindowResult<u64>| {
        if r.value > 3 {
            ferroflow::join::Either::Left(format!("{:?} {}", r.key, r.window_start))
        } else {
            ferroflow::join::Either::Right(r)
        }
    };
    let sink = ferroflow::sink::SplitSink::new(route, alerts, rows);
    let report = within(
        10,
        "job",
        Runner::default().job(MemorySource::new(records), stream).sink(sink).discard_dead_letters().run(),
    )
    .await
    .unwrap();
    let (alerts, rows): (Vec<String>, Vec<WindowResult<u64>>) = (alerts_seen.take(), rows_seen.take());
    // Windows [0, 10) and [10, 20) of 3 keys: 10 records each, split 4/3/3 among the keys.
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r.value == 3));
    assert!(report.counters.identity_holds());
}

/// Counts per key and 10 s window, with or without a filter in front (a stage a setting turns
/// on), as one job type.
fn counts(skip_empty: bool) -> impl Operator<In = (String, i64), Out = WindowResult<u64>> {
    let window = || WindowSpec::tumbling(Duration::from_secs(10)).unwrap();
    let timestamps = || WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO);
    match skip_empty {
        true => Either::Left(
            Stream::<(String, i64)>::new()
                .filter(|e: &(String, i64)| !e.0.is_empty())
                .assign_timestamps(|e: &(String, i64)| e.1, timestamps())
                .key_by(|e: &(String, i64)| Key::from(e.0.as_str()))
                .window(window(), Count)
                .id("counts")
                .into_operator(),
        ),
        false => Either::Right(
            Stream::<(String, i64)>::new()
                .assign_timestamps(|e: &(String, i64)| e.1, timestamps())
                .key_by(|e: &(String, i64)| Key::from(e.0.as_str()))
                .window(window(), Count)
                .id("counts")
                .into_operator(),
        ),
    }
}

#[tokio::test]
async fn a_job_chosen_at_run_time_runs_the_chain_it_holds_with_its_state_and_accounting() {
    let events =
        || MemorySource::of([("a".to_owned(), 1_000), (String::new(), 2_000), ("a".to_owned(), 3_000)]);
    for skip_empty in [true, false] {
        let (sink, rows) = CollectSink::with_handle();
        let report = Runner::default()
            .job(events(), counts(skip_empty))
            .sink(sink)
            .discard_dead_letters()
            .run()
            .await
            .unwrap();
        let mut got: Vec<(String, u64)> =
            rows.take().into_iter().map(|r| (r.key.to_string(), r.value)).collect();
        got.sort();
        let expected = match skip_empty {
            true => vec![("a".to_owned(), 2)],
            false => vec![(String::new(), 1), ("a".to_owned(), 2)],
        };
        assert_eq!(got, expected);
        assert_eq!(report.counters.records_filtered, u64::from(skip_empty));
        assert!(report.counters.identity_holds(), "{:?}", report.counters);
    }
}
