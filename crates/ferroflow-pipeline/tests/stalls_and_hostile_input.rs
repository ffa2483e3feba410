//! The reference job off the happy path, on librdkafka's in-process mock cluster: a sink outage
//! longer than the idle timeout, a record of several megabytes, and a producer's resend that
//! lands on another partition.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferroflow_core::sink::{CollectSink, Sink};
use ferroflow_core::{DeadLetter, JobCounters, Record, Runner, SinkError, SourcePosition};
use ferroflow_kafka::KafkaSource;
use ferroflow_kafka::rdkafka::mocking::MockCluster;
use ferroflow_pipeline::config::{OutputKind, PipelineConfig};
use ferroflow_pipeline::contract::{Contract, ContractStats};
use ferroflow_pipeline::demo::produce;
use ferroflow_pipeline::job::{TaskSpec, WindowRow};
use ferroflow_pipeline::traffic::{Generated, TrafficConfig};

fn contract() -> Arc<Contract> {
    Arc::new(
        Contract::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts/events.v1.json")).unwrap(),
    )
}

/// Holds every write while closed: a result table that stopped answering.
#[derive(Debug)]
struct GatedSink {
    open: Arc<AtomicBool>,
    rows: CollectSink<WindowRow>,
}

impl Sink<WindowRow> for GatedSink {
    async fn write_batch(&mut self, batch: Vec<WindowRow>) -> Result<(), SinkError> {
        while !self.open.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.rows.write_batch(batch).await
    }
}

async fn wait_for(what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Dead letters by (reason, partition, offset) and the newest row of every window.
type Outcome = (BTreeSet<(String, u32, u64)>, BTreeMap<(String, u32, u32), WindowRow>);

/// Runs the job over `group`'s view of the topic until it has read `total` records, with the
/// result sink closed for `outage` once the job is going.
async fn run(brokers: &str, group: &str, total: u64, outage: Option<Duration>) -> Outcome {
    let mut config = PipelineConfig::default();
    config.kafka.brokers = brokers.into();
    config.kafka.group_id = group.into();
    config.kafka.statistics_interval_ms = 200;
    // A small prefetch: the backlog stays in the broker during the outage, as it does with real
    // volumes, instead of all of it waiting in librdkafka's queue.
    config.kafka.properties.0.insert("queued.max.messages.kbytes".into(), "256".into());
    config.watermarks.idle_timeout_ms = 1_500;
    let spec = TaskSpec::new(&config, contract(), ContractStats::new()).unwrap();
    let source = KafkaSource::new(&config.kafka).unwrap();
    let open = Arc::new(AtomicBool::new(outage.is_none()));
    let rows = CollectSink::new();
    let collected = rows.handle();
    let (dlq, dead) = CollectSink::<DeadLetter>::with_handle();
    let mut runner = Runner::default();
    let (counters, stop): (JobCounters, _) = (runner.counters(), runner.shutdown_handle());
    let sink = GatedSink { open: Arc::clone(&open), rows };
    let job = tokio::spawn(async move {
        runner.job_per_partition(source, move |p| spec.stream(p)).sink(sink).dead_letters(dlq).run().await
    });
    if let Some(outage) = outage {
        // The job reads until its channels are full behind the closed sink, then waits out the
        // outage with part of every partition still in the broker.
        wait_for("the job to start reading", 30, || counters.snapshot().records_in > 0).await;
        tokio::time::sleep(outage).await;
        let read = counters.snapshot().records_in;
        assert!(read + 10_000 < total, "the outage left a backlog: {read} of {total} read");
        open.store(true, Ordering::SeqCst);
    }
    wait_for("every record", 60, || counters.snapshot().records_in >= total).await;
    // Idle partitions close their last windows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.stop();
    let report = job.await.unwrap().unwrap();
    assert!(report.counters.identity_holds());
    let dead = dead
        .take()
        .into_iter()
        .map(|d| (d.reason.code().to_owned(), d.position.partition, d.position.offset))
        .collect();
    let newest = WindowRowsByVersion::of(collected.take());
    (dead, newest.0)
}

/// The newest row (highest `version`) of every window of every partition.
struct WindowRowsByVersion(BTreeMap<(String, u32, u32), WindowRow>);

impl WindowRowsByVersion {
    fn of(rows: Vec<WindowRow>) -> Self {
        let mut out: BTreeMap<(String, u32, u32), WindowRow> = BTreeMap::new();
        for r in rows {
            let k = (r.key.clone(), r.window_start, r.partition);
            if out.get(&k).is_none_or(|old| r.version >= old.version) {
                out.insert(k, r);
            }
        }
        Self(out)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_longer_than_the_idle_timeout_dead_letters_exactly_what_a_run_without_it_does() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    // 20 000 events a partition over 30 minutes of event time: one poll batch (4 096 records of
    // one partition) spans six minutes, far past the two minutes of allowed lateness.
    let traffic = TrafficConfig { partitions: 3, events_per_partition: 20_000, ..Default::default() };
    let events = traffic.generate();
    produce(&brokers, "events", &events).await.unwrap();
    let total = events.len() as u64;

    let (dead, rows) = run(&brokers, "calm", total, None).await;
    assert!(!dead.is_empty() && rows.len() > 100, "the traffic has dead letters and windows");
    let (dead_outage, rows_outage) = run(&brokers, "outage", total, Some(Duration::from_secs(4))).await;
    let extra: Vec<_> = dead_outage.difference(&dead).take(10).collect();
    let missing: Vec<_> = dead.difference(&dead_outage).take(10).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "dead letters differ: extra {extra:?}, missing {missing:?}"
    );
    // Revisions may be numbered differently (where batches were cut decides how late updates
    // coalesce); the contents may not.
    let contents = |rows: &BTreeMap<(String, u32, u32), WindowRow>| -> Vec<_> {
        rows.iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    r.events,
                    r.amount_sum.to_bits(),
                    r.amount_min.to_bits(),
                    r.amount_max.to_bits(),
                    r.distinct_users,
                    r.is_final,
                )
            })
            .collect()
    };
    assert!(contents(&rows_outage) == contents(&rows), "and so do the windows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multi_megabyte_record_becomes_one_cut_dead_letter_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    cluster.create_topic("events.dlq", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let traffic = TrafficConfig { partitions: 1, events_per_partition: 500, ..Default::default() };
    let mut events = traffic.generate();
    // A 3 MB record that is not JSON, among ordinary traffic.
    let huge = Generated {
        partition: 0,
        payload: format!("{{\"blob\": \"{}", "x".repeat(3 << 20)),
        fate: ferroflow_pipeline::traffic::Fate::Malformed,
        fields: None,
    };
    events.insert(100, huge);
    produce_big(&brokers, &events).await;

    let mut config =
        PipelineConfig { pipeline_id: "huge".into(), instance_id: "a".into(), ..Default::default() };
    config.kafka.brokers = brokers.clone();
    config.dead_letters.create_topic = false;
    config.contract.path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts/events.v1.json");
    config.output.kind = OutputKind::File;
    config.output.file = dir.path().join("rows.jsonl");
    config.state.dir = dir.path().join("state");
    config.checkpoints.url = format!("file://{}", dir.path().join("checkpoints").display());
    config.checkpoints.interval_ms = 300;
    let job = ferroflow_pipeline::job::prepare(&config).await.unwrap();
    let runner = ferroflow_pipeline::job::PreparedJob::runner(&config, None).unwrap();
    let (counters, stop) = (runner.counters(), runner.shutdown_handle());
    let handle = tokio::spawn(async move { job.run(&config, runner).await });
    let total = events.len() as u64;
    wait_for("every record", 60, || {
        counters.snapshot().records_in >= total && counters.snapshot().checkpoints_completed >= 2
    })
    .await;
    stop.stop();
    let report = handle.await.unwrap().unwrap();
    assert!(report.counters.identity_holds());

    let dlq = read_dlq(&brokers);
    let cut: Vec<&serde_json::Value> = dlq.iter().filter(|v| v["position"]["offset"] == 100).collect();
    assert_eq!(cut.len(), 1, "exactly one dead letter for the huge record");
    assert_eq!(cut[0]["reason"], "decode_error");
    assert_eq!(cut[0]["original_truncated"]["size"], events[100].payload.len());
    let expected_bad = events
        .iter()
        .filter(|g| {
            matches!(
                g.fate,
                ferroflow_pipeline::traffic::Fate::Malformed
                    | ferroflow_pipeline::traffic::Fate::ContractViolation
            )
        })
        .count();
    let positions: BTreeSet<u64> = dlq.iter().map(|v| v["position"]["offset"].as_u64().unwrap()).collect();
    assert_eq!(positions.len(), expected_bad, "every bad record is on the topic once the job went on");
}

async fn produce_big(brokers: &str, events: &[Generated]) {
    use ferroflow_kafka::rdkafka::ClientConfig;
    use ferroflow_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "10000000")
        .create()
        .unwrap();
    for g in events {
        let record =
            FutureRecord::<(), _>::to("events").payload(g.payload.as_bytes()).partition(g.partition as i32);
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }
}

fn read_dlq(brokers: &str) -> Vec<serde_json::Value> {
    use ferroflow_kafka::rdkafka::ClientConfig;
    use ferroflow_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    use ferroflow_kafka::rdkafka::message::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["events.dlq"]).unwrap();
    let mut out = Vec::new();
    let mut quiet = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && (out.is_empty() || quiet.elapsed() <= Duration::from_secs(2)) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            quiet = Instant::now();
            out.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_is_dropped_on_its_own_partition_and_counted_again_on_another() {
    // Deduplication is per partition (README "Delivery guarantees"): a producer's retry lands on
    // the partition of its original when the topic is keyed, and is dropped there; a resend on
    // another partition is a new event to that partition's task.
    let config = PipelineConfig::default();
    let spec = TaskSpec::new(&config, contract(), ContractStats::new()).unwrap();
    let event = |id: &str| {
        Bytes::from(format!(
            "{{\"event_id\": \"{id}\", \"user_id\": \"u1\", \"event_type\": \"view\", \"ts\": 1767225600000, \"amount\": 1}}"
        ))
    };
    let at = |p: u32, o: u64, b: Bytes| Record::new(b, 0).with_position(SourcePosition::new(p, o));
    let records =
        vec![at(0, 0, event("a")), at(0, 1, event("a")), at(1, 0, event("a")), at(1, 1, event("b"))];
    let (sink, rows) = CollectSink::with_handle();
    let report = Runner::default()
        .job_per_partition(ferroflow_core::source::MemorySource::new(records), move |p| spec.stream(p))
        .sink(sink)
        .discard_dead_letters()
        .run()
        .await
        .unwrap();
    assert_eq!(report.counters.records_deduplicated, 1, "the retry on partition 0");
    let by_partition: BTreeMap<u32, u64> =
        WindowRowsByVersion::of(rows.take()).0.values().map(|r| (r.partition, r.events)).collect();
    assert_eq!(by_partition, BTreeMap::from([(0, 1), (1, 2)]), "\"a\" counts once per partition");
}
