//! Stable operator ids: a savepoint maps state to operators by id, so a job can change around a
//! stateful step (a step inserted before a window) and still resume from it; without ids the
//! restore refuses the savepoint and names the ids instead of dropping the state silently.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use ferroflow::checkpoint::{CheckpointError, CheckpointStore, S3Options};
use ferroflow::prelude::*;
use ferroflow::source::{SourceBatch, SourceEvent};
use ferroflow::window::WindowResult;

/// (user, event time in ms): 10 users, one event every 100 ms, all inside the first minute.
fn records(range: std::ops::Range<u64>) -> Vec<Record<(String, i64)>> {
    range
        .map(|i| {
            let user = format!("u{}", i % 10);
            Record::new((user, (i * 100) as i64), 0).with_position(SourcePosition::new(0, i))
        })
        .collect()
}

/// Delivers its batches, then waits for ever (a stream that has not ended).
struct Open(Vec<SourceEvent<(String, i64)>>);

impl Source<(String, i64)> for Open {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<(String, i64)>>, SourceError> {
        match self.0.pop() {
            Some(ev) => Ok(Some(ev)),
            None => std::future::pending().await,
        }
    }
}

type Rows = Vec<(String, i64, u64)>;

fn sorted(rows: Vec<WindowResult<u64>>) -> Rows {
    let mut rows: Rows = rows.into_iter().map(|r| (r.key.to_string(), r.window_start, r.value)).collect();
    rows.sort();
    rows
}

fn timestamps() -> WatermarkStrategy {
    WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(1))
}

fn minute() -> WindowSpec {
    WindowSpec::tumbling(Duration::from_secs(60)).unwrap()
}

/// Version 1 of the job: count events per user and minute.
fn v1(with_id: bool) -> impl IntoOperator<Op: Operator<In = (String, i64), Out = WindowResult<u64>>> {
    let s = Stream::<(String, i64)>::new()
        .assign_timestamps(|e| e.1, timestamps())
        .key_by(|e| Key::from(e.0.as_str()));
    // Both arms have the same type: `id` returns the stream it was called on.
    let s = s.window(minute(), Count);
    if with_id { s.id("per-user-minute") } else { s }
}

/// Version 2: the same, with a filter inserted before the window.
fn v2(with_id: bool) -> impl IntoOperator<Op: Operator<In = (String, i64), Out = WindowResult<u64>>> {
    let s = Stream::<(String, i64)>::new()
        .filter(|e| !e.0.is_empty())
        .assign_timestamps(|e| e.1, timestamps())
        .key_by(|e| Key::from(e.0.as_str()));
    let s = s.window(minute(), Count);
    if with_id { s.id("per-user-minute") } else { s }
}

fn runner(store: &CheckpointStore, scratch: &std::path::Path, savepoint: Option<&str>) -> CheckpointsBuilder {
    let b = Runner::builder()
        .checkpoint_store(store.clone())
        .scratch_dir(scratch)
        .every(Duration::from_secs(3600));
    match savepoint {
        Some(name) => b.from_savepoint(name),
        None => b,
    }
}

/// Runs version 1 over the first 50 records and stops with savepoint `v1`: its windows are open.
async fn savepoint_of_v1(store: &CheckpointStore, scratch: &std::path::Path, with_id: bool) {
    let mut runner = runner(store, &scratch.join("v1"), None).build().unwrap();
    let (counters, stop) = (runner.counters(), runner.shutdown_handle());
    let batches =
        records(0..50).chunks(10).rev().map(|c| SourceEvent::Batch(SourceBatch::of(c.to_vec()))).collect();
    let job = tokio::spawn(async move {
        let sink = CollectSink::new();
        let rows = sink.handle();
        let report = runner.job(Open(batches), v1(with_id)).sink(sink).discard_dead_letters().run().await;
        (report, rows.take())
    });
    while counters.snapshot().records_in < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.stop_with_savepoint("v1");
    let (report, rows) = tokio::time::timeout(Duration::from_secs(10), job).await.unwrap().unwrap();
    assert!(report.unwrap().stopped_early);
    assert!(rows.is_empty(), "no window closed before the savepoint: its state holds every count");
}

/// What version 1 computes over all 100 records in one run.
async fn uninterrupted() -> Rows {
    let sink = CollectSink::new();
    let rows = sink.handle();
    Runner::default()
        .job(MemorySource::new(records(0..100)), v1(true))
        .sink(sink)
        .discard_dead_letters()
        .run()
        .await
        .unwrap();
    sorted(rows.take())
}

fn store() -> CheckpointStore {
    CheckpointStore::from_url("memory://", &S3Options::default()).unwrap()
}

#[tokio::test]
async fn with_ids_a_step_inserted_before_the_window_resumes_from_the_savepoint() {
    let (store, scratch) = (store(), tempfile::tempdir().unwrap());
    savepoint_of_v1(&store, scratch.path(), true).await;

    let mut runner = runner(&store, &scratch.path().join("v2"), Some("v1")).build().unwrap();
    let sink = CollectSink::new();
    let rows = sink.handle();
    let report = runner
        .job(MemorySource::new(records(0..100)), v2(true))
        .sink(sink)
        .discard_dead_letters()
        .run()
        .await
        .unwrap();
    assert_eq!(report.counters.records_in, 50, "resumed after the savepoint's offsets");
    let expected = uninterrupted().await;
    assert_eq!(expected.len(), 10, "one window per user");
    assert!(expected.iter().all(|r| r.2 == 10), "{expected:?}");
    assert_eq!(
        sorted(rows.take()),
        expected,
        "the counts of the first 50 records came back with the window's state"
    );
}

#[tokio::test]
async fn without_ids_the_restore_refuses_the_savepoint_and_names_the_ids() {
    let (store, scratch) = (store(), tempfile::tempdir().unwrap());
    savepoint_of_v1(&store, scratch.path(), false).await;

    let mut runner = runner(&store, &scratch.path().join("v2"), Some("v1")).build().unwrap();
    let err = runner
        .job(MemorySource::new(records(0..100)), v2(false))
        .sink(CollectSink::new())
        .discard_dead_letters()
        .run()
        .await
        .unwrap_err();
    match &err {
        JobError::Checkpoint(CheckpointError::UnmatchedState { unmatched, job, .. }) => {
            assert_eq!(unmatched, &["window#3".to_string()], "the savepoint's id");
            assert_eq!(job, &["window#4".to_string()], "the job's id, shifted by the inserted step");
        }
        other => panic!("expected UnmatchedState, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("window#3") && message.contains("window#4"), "{message}");
    assert!(message.contains("allow_non_restored_state"), "the message says how to proceed: {message}");
    assert_eq!(err.retry_hint(), RetryHint::NoRetry);
}

#[tokio::test]
async fn allowing_non_restored_state_starts_the_window_empty() {
    let (store, scratch) = (store(), tempfile::tempdir().unwrap());
    savepoint_of_v1(&store, scratch.path(), false).await;

    let mut runner = runner(&store, &scratch.path().join("v2"), Some("v1"))
        .allow_non_restored_state(true)
        .build()
        .unwrap();
    let sink = CollectSink::new();
    let rows = sink.handle();
    runner
        .job(MemorySource::new(records(0..100)), v2(false))
        .sink(sink)
        .discard_dead_letters()
        .run()
        .await
        .unwrap();
    let rows = sorted(rows.take());
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(|r| r.2 == 5), "only the records after the savepoint are counted: {rows:?}");
}

#[tokio::test]
async fn two_stateful_steps_with_one_id_are_refused_before_the_run() {
    let job = Stream::<(String, i64)>::new()
        .assign_timestamps(|e| e.1, timestamps())
        .dedup_by(Duration::from_secs(60), |e: &(String, i64)| e.0.as_str())
        .id("same")
        .key_by(|e| Key::from(e.0.as_str()))
        .window(minute(), Count)
        .id("same");
    let err = Runner::default()
        .job(MemorySource::new(records(0..10)), job)
        .sink(CollectSink::new())
        .discard_dead_letters()
        .run()
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("`same`"), "{err}");
}

#[tokio::test]
async fn a_checkpoint_without_operator_ids_is_refused_for_a_stateful_job() {
    use ferroflow::checkpoint::{CheckpointConfig, CheckpointCoordinator, coordinator_meta};
    use ferroflow::state::MemoryStateBackend;
    let (store, scratch) = (store(), tempfile::tempdir().unwrap());
    // A checkpoint as written before ids were recorded: offsets and state, no `operators.ids`.
    let mut old = CheckpointCoordinator::open(
        store.clone(),
        CheckpointConfig::new("ferroflow-job", scratch.path().join("old")),
    )
    .await
    .unwrap();
    old.take(&mut MemoryStateBackend::new(), coordinator_meta(&[(0, 50)])).await.unwrap();

    let mut fresh = runner(&store, &scratch.path().join("new"), None).build().unwrap();
    let err = fresh
        .job(MemorySource::new(records(0..100)), v1(true))
        .sink(CollectSink::new())
        .discard_dead_letters()
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, JobError::Checkpoint(CheckpointError::UnmatchedState { unmatched, .. }) if unmatched[0].contains("not recorded")),
        "{err:?}"
    );
    // Said on purpose, the job starts from the checkpoint's offsets with empty state.
    let mut allowed =
        runner(&store, &scratch.path().join("new2"), None).allow_non_restored_state(true).build().unwrap();
    let report = allowed
        .job(MemorySource::new(records(0..100)), v1(true))
        .sink(CollectSink::new())
        .discard_dead_letters()
        .run()
        .await
        .unwrap();
    assert_eq!(report.counters.records_in, 50);
}
