//! The reference job with `state.memory_budget_mb`: dedup's ids spill to `state.dir/spill`, and
//! the windows, dead letters and counters are those of the same job without a budget.
#![cfg(feature = "rocksdb")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ferroflow_kafka::rdkafka::mocking::MockCluster;
use ferroflow_pipeline::config::{OutputKind, PipelineConfig};
use ferroflow_pipeline::job::WindowRow;
use ferroflow_pipeline::traffic::TrafficConfig;

/// What a run produced: the newest row of every window, the counters that say where records went
/// (in, windowed, filtered, deduplicated, dead-lettered), and ids written to the spill store.
type Outcome = (BTreeMap<(String, u32, u32), WindowRow>, [u64; 5], u64);

async fn run(brokers: &str, dir: &Path, budget_mb: u64, total: u64) -> Outcome {
    let mut config =
        PipelineConfig { pipeline_id: "budget".into(), instance_id: "a".into(), ..Default::default() };
    config.kafka.brokers = brokers.into();
    config.kafka.group_id = format!("budget-{budget_mb}");
    config.dead_letters.create_topic = false;
    config.contract.path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts/events.v1.json");
    config.output.kind = OutputKind::File;
    config.output.file = dir.join("rows.jsonl");
    config.state.dir = dir.join("state");
    config.state.memory_budget_mb = budget_mb;
    // Watermarks from the data alone: both runs close the same windows, whatever the timing.
    config.watermarks.idle_timeout_ms = 0;
    config.checkpoints.url = format!("file://{}", dir.join("checkpoints").display());
    config.checkpoints.interval_ms = 500;
    let job = ferroflow_pipeline::job::prepare(&config).await.unwrap();
    let runner = ferroflow_pipeline::job::PreparedJob::runner(&config, None).unwrap();
    let (counters, stop) = (runner.counters(), runner.shutdown_handle());
    let handle = tokio::spawn(async move { job.run(&config, runner).await });
    let deadline = Instant::now() + Duration::from_secs(90);
    while counters.snapshot().records_in < total || counters.snapshot().checkpoints_completed < 2 {
        assert!(Instant::now() < deadline, "the job read {} of {total}", counters.snapshot().records_in);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.stop();
    let report = handle.await.unwrap().unwrap();
    let c = &report.counters;
    assert!(c.identity_holds(), "{c:?}");
    let mut newest: BTreeMap<(String, u32, u32), WindowRow> = BTreeMap::new();
    for line in std::fs::read_to_string(dir.join("rows.jsonl")).unwrap_or_default().lines() {
        let r: WindowRow = serde_json::from_str(line).unwrap();
        let k = (r.key.clone(), r.window_start, r.partition);
        if newest.get(&k).is_none_or(|old| r.version >= old.version) {
            newest.insert(k, r);
        }
    }
    let counts = [
        c.records_in,
        c.records_windowed,
        c.records_filtered,
        c.records_deduplicated,
        c.records_dead_lettered,
    ];
    (newest, counts, c.state_budget.map_or(0, |b| b.spilled_keys))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_megabyte_budget_spills_dedup_ids_and_changes_no_result() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 2, 1).unwrap();
    cluster.create_topic("events.dlq", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    // About 20,000 ids per partition: about 3 MB of ids in memory, three times the budget.
    let traffic = TrafficConfig { partitions: 2, events_per_partition: 20_000, ..Default::default() };
    let events = traffic.generate();
    let total = ferroflow_pipeline::demo::produce(&brokers, "events", &events).await.unwrap();

    let unbounded_dir = tempfile::tempdir().unwrap();
    let unbounded = run(&brokers, unbounded_dir.path(), 0, total).await;
    let budget_dir = tempfile::tempdir().unwrap();
    let budgeted = run(&brokers, budget_dir.path(), 1, total).await;

    assert!(!unbounded_dir.path().join("state/spill").exists(), "no spill store without a budget");
    assert!(budget_dir.path().join("state/spill").exists());
    assert!(budgeted.2 > 10_000, "ids spilled under the budget: {}", budgeted.2);
    assert!(unbounded.1[3] > 100, "the traffic has resends: {:?}", unbounded.1);
    assert!(unbounded.0.len() > 10, "windows closed: {}", unbounded.0.len());
    assert_eq!(budgeted.1, unbounded.1, "counters: in, windowed, filtered, deduplicated, dead letters");
    // Revisions may be numbered differently (where batches were cut decides how late updates
    // coalesce); the contents may not.
    let contents = |rows: &BTreeMap<(String, u32, u32), WindowRow>| -> Vec<_> {
        rows.iter()
            .map(|(k, r)| {
                let figures =
                    [r.events, r.amount_sum.to_bits(), r.amount_min.to_bits(), r.amount_max.to_bits()];
                (k.clone(), figures, r.distinct_users, r.is_final)
            })
            .collect()
    };
    assert!(contents(&budgeted.0) == contents(&unbounded.0), "the budget changed window rows");
}
