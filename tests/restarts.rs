//! Starting over: a job with no checkpoint to restore starts from nothing, whatever an earlier run
//! (or a crash before the first upload) left in its local RocksDB.
#![cfg(all(feature = "rocksdb", feature = "checkpoints"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ferroflow::prelude::*;
use ferroflow::testing::ScriptedSource;
use ferroflow::window::WindowResult;
use ferroflow::{JobReport, PartitionId};

/// (partition, window start, events).
type Row = (PartitionId, i64, u64);

/// A partition-scoped job over two partitions (one event a second for two minutes, then one that
/// closes every window), with RocksDB state in `dir/state` and checkpoints in `dir/checkpoints`.
async fn run(dir: &Path) -> (Vec<Row>, JobReport) {
    let data: BTreeMap<PartitionId, Vec<i64>> =
        (0..2).map(|p| (p, (0..120).map(|s| s * 1_000).chain([600_000]).collect())).collect();
    let source = ScriptedSource::over(data).assign(vec![0, 1]).read(0, 200).read(1, 200);
    let mut runner = Runner::builder()
        .state(RocksDb::at(dir.join("state")))
        .checkpoints(format!("file://{}", dir.join("checkpoints").display()))
        .every(Duration::from_secs(3_600))
        .build()
        .unwrap();
    let (sink, rows) = CollectSink::with_handle();
    let report = runner
        .job_per_partition(source, |p| {
            Stream::<i64>::new()
                .assign_timestamps(|t: &i64| *t, WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO))
                .key_by(|_: &i64| Key::from("k"))
                .window(WindowSpec::tumbling(Duration::from_secs(10)).unwrap(), Count)
                .id("counts")
                .map(move |r: WindowResult<u64>| (p, r.window_start, r.value))
        })
        .sink(sink)
        .discard_dead_letters()
        .run()
        .await
        .unwrap();
    let mut rows = rows.take();
    rows.sort_unstable();
    (rows, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_checkpoints_starts_over_from_an_empty_backend() {
    let dir = tempfile::tempdir().unwrap();
    let (first, report) = run(dir.path()).await;
    assert_eq!(first.len(), 2 * 13, "12 full windows and the closing one per partition");
    assert!(report.counters.identity_holds() && report.counters.records_dead_lettered == 0);

    // The checkpoints go (an operator starting over, or a crash before the first upload); the
    // local RocksDB still holds the last run's watermarks and windows.
    std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
    let (again, report) = run(dir.path()).await;
    assert_eq!(report.restored_from, None);
    assert_eq!(report.counters.records_dead_lettered, 0, "no record is late against a stale watermark");
    assert_eq!(again, first, "the same results as the first run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_in_use_is_refused_instead_of_wiped() {
    // A second process given the same state directory (a restart while the old one still runs)
    // must not empty the directory under the first.
    let dir = tempfile::tempdir().unwrap();
    let build = || {
        Runner::builder()
            .state(RocksDb::at(dir.path().join("state")))
            .checkpoints(format!("file://{}", dir.path().join("checkpoints").display()))
            .build()
    };
    let first = build().unwrap();
    let err = build().unwrap_err().to_string();
    assert!(err.contains("in use by another process"), "{err}");
    drop(first);
    build().expect("free again once the first is gone");
}
