//! Scaling out: a second instance joins the consumer group mid-stream, the group moves partitions
//! to it, their state follows them through the checkpoint store, and the two instances' rows
//! together equal the oracle exactly. Runs on librdkafka's in-process mock cluster (real group
//! protocol, no external service).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ferroflow_core::{JobCounters, JobReport, ShutdownHandle};
use ferroflow_kafka::rdkafka::mocking::MockCluster;
use ferroflow_pipeline::config::{OutputKind, PipelineConfig};
use ferroflow_pipeline::demo::produce;
use ferroflow_pipeline::job::{ResultTap, WindowRow, WindowTotal, prepare};
use ferroflow_pipeline::traffic::{Generated, Oracle, TrafficConfig};

const PARTITIONS: u32 = 4;

fn config(dir: &Path, brokers: &str, instance: &str) -> PipelineConfig {
    let mut c = PipelineConfig {
        pipeline_id: "rebalance".into(),
        instance_id: instance.into(),
        ..Default::default()
    };
    c.kafka.brokers = brokers.into();
    c.kafka.group_id = "rebalance".into();
    // The mock cluster completes a rebalance only after the session timeout: keep it short.
    c.kafka.properties.0.insert("session.timeout.ms".into(), "6000".into());
    c.kafka.properties.0.insert("heartbeat.interval.ms".into(), "500".into());
    c.dead_letters.create_topic = false; // the mock cluster has it already
    c.contract.path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts/events.v1.json");
    c.output.kind = OutputKind::File;
    c.output.file = dir.join(format!("{instance}.jsonl"));
    c.state.dir = dir.join(instance);
    c.checkpoints.url = format!("file://{}", dir.join("checkpoints").display());
    c.checkpoints.interval_ms = 500;
    c.processing.workers = 2; // hand-over with several workers per instance
    c
}

struct Instance {
    counters: JobCounters,
    stop: ShutdownHandle,
    tap: ResultTap,
    job: tokio::task::JoinHandle<anyhow::Result<JobReport>>,
}

async fn start(config: PipelineConfig) -> Instance {
    let mut job = prepare(&config).await.unwrap();
    let tap = job.tap_results();
    let runner = ferroflow_pipeline::job::PreparedJob::runner(&config, None).unwrap();
    let (counters, stop) = (runner.counters(), runner.shutdown_handle());
    let job = tokio::spawn(async move { job.run(&config, runner).await });
    Instance { counters, stop, tap, job }
}

async fn wait_for(what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn owned(c: &JobCounters) -> Vec<u32> {
    c.snapshot().partitions.iter().map(|p| p.partition).collect()
}

fn rows(tap: &ResultTap) -> Vec<WindowRow> {
    tap.lock().unwrap().values().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_instance_takes_over_partitions_with_their_state() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", PARTITIONS as i32, 1).unwrap();
    cluster.create_topic("events.dlq", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();

    let traffic = TrafficConfig { partitions: PARTITIONS, events_per_partition: 3_000, ..Default::default() };
    let all = traffic.generate();
    // Each partition's first half now, the rest after the second instance joined: the windows in
    // the middle are half done when their partitions move.
    let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
    let (first, second): (Vec<Generated>, Vec<Generated>) = all.iter().cloned().partition(|g| {
        let n = seen.entry(g.partition).or_default();
        *n += 1;
        *n <= 1_500
    });
    produce(&brokers, "events", &first).await.unwrap();

    let a = start(config(dir.path(), &brokers, "a")).await;
    wait_for("instance a reads the first half", 60, || {
        a.counters.snapshot().records_in >= first.len() as u64
    })
    .await;
    assert_eq!(owned(&a.counters), vec![0, 1, 2, 3], "alone, a reads every partition");
    // A checkpoint after the first half, so the hand-over has a recent one to start from.
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    let b = start(config(dir.path(), &brokers, "b")).await;
    wait_for("the group to split the partitions", 60, || {
        let (oa, ob) = (owned(&a.counters), owned(&b.counters));
        !oa.is_empty() && !ob.is_empty() && oa.len() + ob.len() == PARTITIONS as usize
    })
    .await;
    let moved = owned(&b.counters);
    produce(&brokers, "events", &second).await.unwrap();

    let window_ms = 60_000;
    let expected = Oracle::of(&all, window_ms).windows_ending_by(traffic.last_closed_window_end(), window_ms);
    let matches = || {
        let got = WindowTotal::of_rows(rows(&a.tap).iter().chain(rows(&b.tap).iter()));
        expected.iter().all(|((key, start), w)| {
            got.get(&(key.clone(), String::new(), (start / 1000) as u32)).is_some_and(|t| {
                t.events == w.count
                    && t.amount_sum == w.sum
                    && t.amount_min == w.min
                    && t.amount_max == w.max
                    && t.distinct_users == w.users.len() as u64
                    && t.is_final == 1
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !matches() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.stop.stop();
    b.stop.stop();
    let report_a = a.job.await.unwrap().unwrap();
    let report_b = b.job.await.unwrap().unwrap();
    let got = WindowTotal::of_rows(rows(&a.tap).iter().chain(rows(&b.tap).iter()));
    let differ: Vec<_> = expected
        .iter()
        .filter(|((key, start), w)| {
            got.get(&(key.clone(), String::new(), (start / 1000) as u32)).is_none_or(|t| {
                t.events != w.count || t.distinct_users != w.users.len() as u64 || t.is_final != 1
            })
        })
        .map(|(k, w)| {
            format!(
                "{k:?}: expected {} events, got {:?}",
                w.count,
                got.get(&(k.0.clone(), String::new(), (k.1 / 1000) as u32))
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} windows differ:\n{}",
        differ.len(),
        expected.len(),
        differ.join("\n")
    );
    assert!(matches(), "sums, minima and maxima match too");

    // b resumed the moved partitions where a's checkpoint left them, not from the beginning.
    let moved_events = all.iter().filter(|g| moved.contains(&g.partition)).count() as u64;
    assert!(
        report_b.counters.records_in < moved_events,
        "b read {} records of its partitions' {moved_events}: it should have started mid-stream",
        report_b.counters.records_in
    );
    assert!(report_a.counters.identity_holds() && report_b.counters.identity_holds());
}
