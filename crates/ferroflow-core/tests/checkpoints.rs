//! Checkpoint store, retention, corruption fallback, savepoints and state-format versioning.
//! The S3 test needs a real S3-compatible server: `scripts/services.sh start` starts Garage on
//! 127.0.0.1 and writes the FERROFLOW_S3_* variables the test reads.
#![cfg(all(feature = "checkpoints", feature = "rocksdb"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use ferroflow_core::StateError;
use ferroflow_core::checkpoint::{
    CheckpointConfig, CheckpointCoordinator, CheckpointError, CheckpointMeta, CheckpointStore, EPOCH_SPAN,
    RestoreOutcome, S3Options, coordinator_meta,
};
use ferroflow_core::state::{RocksDbOptions, RocksDbStateBackend, StateBackend};

/// Collects log output in memory.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

fn rocks(dir: &std::path::Path) -> RocksDbStateBackend {
    RocksDbStateBackend::open(dir, RocksDbOptions::default()).unwrap()
}

fn fill(s: &mut dyn StateBackend, from: u32, to: u32, tag: &str) {
    for i in from..to {
        s.put("w", format!("key-{i:06}").as_bytes(), format!("{tag}-{i}").as_bytes()).unwrap();
    }
}

async fn coordinator(
    store: &CheckpointStore,
    scratch: &std::path::Path,
    retain: usize,
) -> CheckpointCoordinator {
    let mut cfg = CheckpointConfig::new("test-job", scratch);
    cfg.retain = retain;
    CheckpointCoordinator::open(store.clone(), cfg).await.unwrap()
}

fn restored_id(o: RestoreOutcome) -> u64 {
    match o {
        RestoreOutcome::Restored(m) => m.id,
        RestoreOutcome::Fresh => panic!("expected a restore"),
    }
}

#[tokio::test]
async fn incremental_checkpoints_share_unchanged_files_and_retention_keeps_restores_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("store").display());
    let store = CheckpointStore::from_url(&url, &S3Options::default()).unwrap();
    let mut state = rocks(&tmp.path().join("db"));
    let mut coord = coordinator(&store, &tmp.path().join("scratch"), 2).await;

    fill(&mut state, 0, 20_000, "v1");
    let first = coord.take(&mut state, coordinator_meta(&[(0, 100)])).await.unwrap();
    fill(&mut state, 0, 200, "v2"); // 1% churn
    let second = coord.take(&mut state, coordinator_meta(&[(0, 200)])).await.unwrap();
    assert!(
        second.bytes_uploaded * 4 < first.bytes_uploaded,
        "incremental checkpoint uploaded {} bytes vs {} for the full one",
        second.bytes_uploaded,
        first.bytes_uploaded
    );
    let shared_before: Vec<_> = store.list("shared/").await.unwrap();
    assert!(!shared_before.is_empty(), "SST files must land under shared/");

    for round in 0..3u32 {
        fill(&mut state, round * 10, round * 10 + 5, "v3");
        coord.take(&mut state, coordinator_meta(&[(0, 300 + u64::from(round))])).await.unwrap();
    }
    let manifests: Vec<_> =
        store.list("checkpoints/").await.unwrap().into_iter().filter(|(k, _)| k.ends_with(".json")).collect();
    assert_eq!(manifests.len(), 2, "retain=2 keeps two manifests: {manifests:?}");
    // Every file a retained manifest references exists; nothing unreferenced is left in shared/.
    let mut referenced = std::collections::BTreeSet::new();
    for m in coord.list_checkpoints().await.unwrap() {
        for f in &m.files {
            assert_eq!(store.size(&f.object).await.unwrap(), Some(f.size), "{} missing", f.object);
            if f.shared {
                referenced.insert(f.object.clone());
            }
        }
    }
    let shared_now: std::collections::BTreeSet<_> =
        store.list("shared/").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(shared_now, referenced, "garbage collection must leave exactly the referenced shared files");

    let mut restored = rocks(&tmp.path().join("db-restored"));
    let mut coord2 = coordinator(&store, &tmp.path().join("scratch2"), 2).await;
    let outcome = coord2.restore_latest(&mut restored).await.unwrap();
    let RestoreOutcome::Restored(m) = outcome else { panic!("expected a restore") };
    assert_eq!(m.source_offsets[&0], 302);
    assert_eq!(restored.get("w", b"key-000021").unwrap(), Some(b"v3-21".to_vec()));
    assert_eq!(restored.get("w", b"key-000150").unwrap(), Some(b"v2-150".to_vec()));
    assert_eq!(restored.get("w", b"key-019999").unwrap(), Some(b"v1-19999".to_vec()));
}

#[tokio::test]
async fn a_corrupt_or_missing_file_falls_back_to_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let url = format!("file://{}", root.display());
    let store = CheckpointStore::from_url(&url, &S3Options::default()).unwrap();
    let mut state = rocks(&tmp.path().join("db"));
    let mut coord = coordinator(&store, &tmp.path().join("scratch"), 5).await;
    fill(&mut state, 0, 1_000, "a");
    let older = coord.take(&mut state, coordinator_meta(&[(0, 1)])).await.unwrap().manifest;
    fill(&mut state, 1_000, 2_000, "b");
    let newest = coord.take(&mut state, coordinator_meta(&[(0, 2)])).await.unwrap().manifest;

    // Truncate a file only the newest checkpoint references.
    let older_objects: std::collections::BTreeSet<_> = older.files.iter().map(|f| f.object.clone()).collect();
    let victim = newest
        .files
        .iter()
        .find(|f| f.shared && f.size > 0 && !older_objects.contains(&f.object))
        .expect("an SST only the newest checkpoint has");
    let path = root.join(&victim.object);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();

    // Capture the logs: the fallback must say which checkpoint was skipped and why.
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt().with_writer(logs.clone()).with_ansi(false).finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let mut restored = rocks(&tmp.path().join("db2"));
    let mut coord2 = coordinator(&store, &tmp.path().join("scratch2"), 5).await;
    assert_eq!(restored_id(coord2.restore_latest(&mut restored).await.unwrap()), older.id);
    drop(guard);
    let text = logs.text();
    assert!(text.contains("falling back to the previous one"), "no fallback warning in logs: {text}");
    assert!(
        text.contains(&victim.object) && text.contains("corrupt"),
        "the warning must name the file: {text}"
    );
    assert_eq!(restored.get("w", b"key-000500").unwrap(), Some(b"a-500".to_vec()));
    assert_eq!(
        restored.get("w", b"key-001500").unwrap(),
        None,
        "state of the skipped checkpoint must not leak"
    );

    // Delete a file of the older one too: no usable checkpoint, and starting empty is refused.
    let older_sst = older.files.iter().find(|f| f.shared).expect("an SST");
    std::fs::remove_file(root.join(&older_sst.object)).unwrap();
    let mut coord3 = coordinator(&store, &tmp.path().join("scratch3"), 5).await;
    let err = coord3.restore_latest(&mut rocks(&tmp.path().join("db3"))).await.unwrap_err();
    assert!(matches!(err, CheckpointError::NoUsableCheckpoint { found: 2, .. }), "{err}");
    assert!(err.to_string().contains("refusing to start empty"), "{err}");

    let mut cfg = CheckpointConfig::new("test-job", tmp.path().join("scratch4"));
    cfg.allow_empty_start = true;
    let mut coord4 = CheckpointCoordinator::open(store, cfg).await.unwrap();
    assert!(matches!(
        coord4.restore_latest(&mut rocks(&tmp.path().join("db4"))).await.unwrap(),
        RestoreOutcome::Fresh
    ));
}

#[tokio::test]
async fn savepoints_survive_retention_and_state_format_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
    let mut state = rocks(&tmp.path().join("db"));
    let mut coord = coordinator(&store, &tmp.path().join("scratch"), 1).await;
    fill(&mut state, 0, 100, "sp");
    coord.savepoint("before-upgrade", &mut state, CheckpointMeta::default()).await.unwrap();
    for i in 0..4 {
        fill(&mut state, 0, 100, &format!("later{i}"));
        coord.take(&mut state, CheckpointMeta::default()).await.unwrap();
    }
    let mut restored = rocks(&tmp.path().join("db2"));
    let m = coord.restore_savepoint("before-upgrade", &mut restored).await.unwrap();
    assert_eq!(m.name.as_deref(), Some("before-upgrade"));
    assert_eq!(restored.get("w", b"key-000007").unwrap(), Some(b"sp-7".to_vec()));

    // A job expecting format 2 refuses format-1 state without a migration...
    let mut cfg = CheckpointConfig::new("test-job", tmp.path().join("s2"));
    cfg.state_format_version = 2;
    let mut v2 = CheckpointCoordinator::open(store.clone(), cfg.clone()).await.unwrap();
    let err = v2.restore_savepoint("before-upgrade", &mut rocks(&tmp.path().join("db3"))).await.unwrap_err();
    assert!(matches!(err, CheckpointError::IncompatibleFormat { found: 1, expected: 2, .. }), "{err}");

    // ...and upgrades it with one.
    cfg.migration = Some(Arc::new(|from: u32, s: &mut dyn StateBackend| -> Result<(), StateError> {
        assert_eq!(from, 1);
        s.put("w", b"migrated", b"yes")
    }));
    let mut v2 = CheckpointCoordinator::open(store, cfg).await.unwrap();
    let mut upgraded = rocks(&tmp.path().join("db4"));
    v2.restore_savepoint("before-upgrade", &mut upgraded).await.unwrap();
    assert_eq!(upgraded.get("w", b"migrated").unwrap(), Some(b"yes".to_vec()));
}

fn s3_from_env() -> Option<(String, S3Options)> {
    let endpoint = std::env::var("FERROFLOW_S3_ENDPOINT").ok()?;
    let bucket = std::env::var("FERROFLOW_S3_BUCKET").ok()?;
    let opts = S3Options {
        endpoint: Some(endpoint),
        region: std::env::var("FERROFLOW_S3_REGION").ok(),
        access_key_id: std::env::var("FERROFLOW_S3_ACCESS_KEY_ID").ok(),
        secret_access_key: std::env::var("FERROFLOW_S3_SECRET_ACCESS_KEY").ok(),
        virtual_hosted_style: false,
    };
    let prefix = format!(
        "test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    Some((format!("s3://{bucket}/{prefix}"), opts))
}

#[tokio::test]
#[ignore = "needs a real S3 server: run scripts/services.sh start and export its env (scripts/test.sh does)"]
async fn checkpoints_land_in_a_real_s3_server_and_restore_from_it() {
    let (url, opts) = s3_from_env().expect("FERROFLOW_S3_* not set: run scripts/services.sh start");
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::from_url(&url, &opts).unwrap();
    let mut state = rocks(&tmp.path().join("db"));
    let mut coord = coordinator(&store, &tmp.path().join("scratch"), 2).await;
    fill(&mut state, 0, 5_000, "s3");
    let taken = coord.take(&mut state, coordinator_meta(&[(3, 33)])).await.unwrap();

    // List the bucket: the manifest and every file it names are there.
    let listed: std::collections::BTreeMap<_, _> = store.list("").await.unwrap().into_iter().collect();
    let manifest_key = format!("checkpoints/{:020}.json", taken.manifest.id);
    assert!(listed.contains_key(&manifest_key), "manifest missing from bucket: {listed:?}");
    for f in &taken.manifest.files {
        assert_eq!(listed.get(&f.object), Some(&f.size), "{} missing or wrong size", f.object);
    }
    assert!(listed.keys().any(|k| k.starts_with("shared/") && k.ends_with(".sst")), "no SST in bucket");

    let mut restored = rocks(&tmp.path().join("db2"));
    let mut coord2 = coordinator(&store, &tmp.path().join("scratch2"), 2).await;
    let RestoreOutcome::Restored(m) = coord2.restore_latest(&mut restored).await.unwrap() else { panic!() };
    assert_eq!(m.source_offsets[&3], 33);
    assert_eq!(restored.get("w", b"key-004999").unwrap(), Some(b"s3-4999".to_vec()));
}

/// A job stopped with a savepoint and restarted from it produces exactly the rows of one
/// uninterrupted run (rows before the stop + rows after the restart), with the source resumed at
/// the savepoint's offsets.
#[tokio::test]
async fn stop_with_savepoint_then_resume_from_it_matches_an_uninterrupted_run() {
    use std::time::Duration;

    use ferroflow_core::sink::CollectSink;
    use ferroflow_core::source::MemorySource;
    use ferroflow_core::time::WatermarkStrategy;
    use ferroflow_core::window::{Count, WindowSpec};
    use ferroflow_core::{Key, Record, Runner, SourcePosition, Stream};

    let records = |range: std::ops::Range<u64>| -> Vec<Record<(String, i64)>> {
        range
            .map(|i| {
                Record::new((format!("k{}", i % 3), i as i64 * 1_000), 0)
                    .with_position(SourcePosition::new(0, i))
            })
            .collect()
    };
    let job = || {
        Stream::<(String, i64)>::new()
            .assign_timestamps(|e| e.1, WatermarkStrategy::monotonous())
            .key_by(|e| Key::from(e.0.as_str()))
            .window(WindowSpec::tumbling(Duration::from_secs(10)).unwrap(), Count)
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();

    // Uninterrupted reference.
    let sink = CollectSink::new();
    let all_rows = sink.handle();
    Runner::default()
        .job(MemorySource::new(records(0..100)).with_batch_size(10), job())
        .sink(sink)
        .dead_letters(CollectSink::new())
        .run()
        .await
        .unwrap();
    let mut expected: Vec<_> =
        all_rows.take().into_iter().map(|r| (r.key.to_string(), r.window_start, r.value)).collect();
    expected.sort();

    // First run: the source delivers 50 records, then waits; the stop takes a savepoint.
    let mut runner = Runner::builder()
        .checkpoint_store(store.clone())
        .config(CheckpointConfig::new("sp", tmp.path().join("a")))
        .state(rocks(&tmp.path().join("db1")))
        .build()
        .unwrap();
    let handle = runner.shutdown_handle();
    let sink = CollectSink::new();
    let first_rows = sink.handle();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    struct Chan(tokio::sync::mpsc::Receiver<ferroflow_core::source::SourceEvent<(String, i64)>>);
    impl ferroflow_core::source::Source<(String, i64)> for Chan {
        async fn next_event(
            &mut self,
        ) -> Result<Option<ferroflow_core::source::SourceEvent<(String, i64)>>, ferroflow_core::SourceError>
        {
            match self.0.recv().await {
                Some(e) => Ok(Some(e)),
                None => std::future::pending().await,
            }
        }
    }
    for chunk in records(0..50).chunks(10) {
        tx.send(ferroflow_core::source::SourceEvent::Batch(ferroflow_core::source::SourceBatch::of(
            chunk.to_vec(),
        )))
        .await
        .unwrap();
    }
    let run = tokio::spawn(async move {
        let report = runner.job(Chan(rx), job()).sink(sink).dead_letters(CollectSink::new()).run().await;
        (report, runner)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle.stop_with_savepoint("before-upgrade");
    let (report, _runner) = tokio::time::timeout(Duration::from_secs(10), run).await.unwrap().unwrap();
    let report = report.unwrap();
    assert!(report.stopped_early);
    drop(tx);

    // Second run from the savepoint over the full input: the first 50 records are skipped.
    let mut runner = Runner::builder()
        .checkpoint_store(store)
        .config(CheckpointConfig::new("sp", tmp.path().join("b")))
        .state(rocks(&tmp.path().join("db2")))
        .from_savepoint("before-upgrade")
        .build()
        .unwrap();
    let sink = CollectSink::new();
    let second_rows = sink.handle();
    let report = runner
        .job(MemorySource::new(records(0..100)).with_batch_size(10), job())
        .sink(sink)
        .dead_letters(CollectSink::new())
        .run()
        .await
        .unwrap();
    assert!(report.restored_from.is_some());
    assert_eq!(report.counters.records_in, 50, "the savepoint's offsets must be honoured");
    assert!(report.counters.restore_duration_us > 0, "the restore is timed");
    let durations = runner.counters().checkpoint_durations_after(0);
    assert_eq!(durations.len() as u64, report.checkpoints_taken, "every checkpoint's duration is kept");
    assert_eq!(durations.last().map(|(n, _)| *n), Some(report.counters.checkpoints_completed));
    let mut got: Vec<_> = first_rows
        .take()
        .into_iter()
        .chain(second_rows.take())
        .map(|r| (r.key.to_string(), r.window_start, r.value))
        .collect();
    got.sort();
    assert_eq!(got, expected);
}

#[test]
fn rocksdb_reports_keys_live_sst_bytes_and_block_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let mut state = rocks(&tmp.path().join("db"));
    assert_eq!(state.stats().live_bytes, 0, "nothing flushed yet");
    fill(&mut state, 0, 5_000, "v");
    let before_flush = state.stats();
    assert!(before_flush.keys > 0, "the estimate counts the memtable: {before_flush:?}");
    assert!(before_flush.memtable_bytes > 0, "{before_flush:?}");
    // A snapshot flushes the memtable into SSTs; reads then go through the block cache.
    state.snapshot(&tmp.path().join("snap")).unwrap();
    assert_eq!(state.get("w", b"key-000042").unwrap(), Some(b"v-42".to_vec()));
    let after = state.stats();
    assert!(after.live_bytes > 10_000, "5000 keys flushed to SSTs: {after:?}");
    assert!(after.block_cache_bytes > 0, "a read from an SST fills the block cache: {after:?}");
    assert!((4_000..=6_000).contains(&after.keys), "estimate near 5000: {after:?}");
}

/// Every file of every manifest in `store` exists with its recorded size and CRC.
async fn every_manifest_is_whole(store: &CheckpointStore, coord: &mut CheckpointCoordinator) -> usize {
    let manifests = coord.list_checkpoints().await.unwrap();
    for m in &manifests {
        for f in &m.files {
            let data = store
                .get(&f.object)
                .await
                .unwrap_or_else(|e| panic!("{}: {} is gone: {e}", m.label(), f.object));
            assert_eq!(
                (data.len() as u64, crc32fast::hash(&data)),
                (f.size, f.crc32),
                "{}: {}",
                m.label(),
                f.object
            );
        }
    }
    manifests.len()
}

#[tokio::test]
async fn a_second_writer_fences_the_first_and_every_checkpoint_stays_restorable() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("store").display());
    let store = CheckpointStore::from_url(&url, &S3Options::default()).unwrap();

    // Writer a: two checkpoints.
    let mut a = coordinator(&store, &tmp.path().join("scratch-a"), 2).await;
    let mut state_a = rocks(&tmp.path().join("db-a"));
    fill(&mut state_a, 0, 5_000, "a1");
    a.take(&mut state_a, coordinator_meta(&[(0, 10)])).await.unwrap();
    fill(&mut state_a, 0, 100, "a2");
    let a_last = a.take(&mut state_a, coordinator_meta(&[(0, 20)])).await.unwrap().manifest;

    // Writer b (the same instance started again while a still runs) claims the folder and
    // restores a's newest checkpoint.
    let mut b = coordinator(&store, &tmp.path().join("scratch-b"), 2).await;
    let claim = b.claim().await.unwrap().clone();
    assert!(claim.epoch > a.writer().unwrap().epoch, "b's epoch is newer: {claim:?}");
    let mut state_b = rocks(&tmp.path().join("db-b"));
    assert_eq!(restored_id(b.restore_latest(&mut state_b).await.unwrap()), a_last.id);

    // a is fenced: its next checkpoint fails, naming both writers, and writes no manifest.
    fill(&mut state_a, 0, 100, "a3");
    let err = a.take(&mut state_a, coordinator_meta(&[(0, 30)])).await.unwrap_err();
    assert!(matches!(err, CheckpointError::Fenced { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("epoch {}", claim.epoch)) && text.contains("instance id"), "{text}");
    assert_eq!(err.retry_hint(), ferroflow_core::RetryHint::NoRetry);

    // b checkpoints on, garbage-collecting beyond retain = 2: nothing any remaining manifest
    // names is ever deleted, and a's checkpoints go only by retention, never by overwriting.
    for round in 0..4u32 {
        fill(&mut state_b, round * 10, round * 10 + 500, "b");
        let m = b.take(&mut state_b, coordinator_meta(&[(0, 40 + u64::from(round))])).await.unwrap().manifest;
        assert!(m.id > a_last.id && m.id / EPOCH_SPAN == claim.epoch, "b's ids carry its epoch: {}", m.id);
        assert_eq!(every_manifest_is_whole(&store, &mut b).await, 2);
    }

    // A fresh reader restores b's newest state.
    let mut reader = coordinator(&store, &tmp.path().join("scratch-r"), 2).await;
    let mut restored = rocks(&tmp.path().join("db-r"));
    let RestoreOutcome::Restored(m) = reader.restore_latest(&mut restored).await.unwrap() else {
        panic!("nothing restored")
    };
    assert_eq!(m.source_offsets[&0], 43);
    assert_eq!(restored.get("w", b"key-000030").unwrap(), Some(b"b-30".to_vec()));
    assert_eq!(
        restored.get("w", b"key-004000").unwrap(),
        Some(b"a1-4000".to_vec()),
        "a's state lives on in b's"
    );
}

#[tokio::test]
async fn two_writers_racing_for_one_folder_never_overwrite_each_others_checkpoints() {
    // Both claim before either writes (two pods started with one instance id): the newer claim
    // wins, the older writer commits nothing, and the folder holds only whole checkpoints.
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("store").display());
    let store = CheckpointStore::from_url(&url, &S3Options::default()).unwrap();
    let mut a = coordinator(&store, &tmp.path().join("scratch-a"), 2).await;
    let mut b = coordinator(&store, &tmp.path().join("scratch-b"), 2).await;
    a.claim().await.unwrap();
    b.claim().await.unwrap();
    let (mut sa, mut sb) = (rocks(&tmp.path().join("db-a")), rocks(&tmp.path().join("db-b")));
    fill(&mut sa, 0, 1_000, "a");
    fill(&mut sb, 0, 1_000, "b");
    assert!(matches!(
        a.take(&mut sa, coordinator_meta(&[(0, 1)])).await,
        Err(CheckpointError::Fenced { .. })
    ));
    b.take(&mut sb, coordinator_meta(&[(0, 2)])).await.unwrap();
    b.take(&mut sb, coordinator_meta(&[(0, 3)])).await.unwrap();
    assert_eq!(every_manifest_is_whole(&store, &mut b).await, 2);
    let mut restored = rocks(&tmp.path().join("db-r"));
    let mut reader = coordinator(&store, &tmp.path().join("scratch-r"), 2).await;
    reader.restore_latest(&mut restored).await.unwrap();
    assert_eq!(restored.get("w", b"key-000001").unwrap(), Some(b"b-1".to_vec()));
}
