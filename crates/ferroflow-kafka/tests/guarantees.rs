//! The Kafka connectors off the happy path, on librdkafka's mock cluster: rebalances while the job
//! is busy, offsets deleted by retention, and dead letters larger than a message may be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{config, produce_each, read_topic};
use ferroflow_core::sink::Sink;
use ferroflow_core::source::{PartitionLifecycle, Source, SourceEvent};
use ferroflow_core::{DeadLetter, DeadLetterReason, PartitionId, SourceError, SourcePosition};
use ferroflow_kafka::rdkafka::ClientConfig;
use ferroflow_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use ferroflow_kafka::rdkafka::mocking::MockCluster;
use ferroflow_kafka::{DataLossPolicy, DeadLetterTopicConfig, KafkaDeadLetterSink, KafkaError, KafkaSource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_larger_than_a_message_is_cut_to_fit_instead_of_failing() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events.dlq", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let mut sink = KafkaDeadLetterSink::new(&DeadLetterTopicConfig::default(), &brokers).unwrap();
    // A 3 MB record that is not JSON: its envelope cannot go out whole (1 MB per message).
    let huge = Bytes::from("x".repeat(3 << 20));
    let dl = DeadLetter::new(
        DeadLetterReason::DecodeError,
        "expected value at line 1 column 1",
        SourcePosition::new(0, 7),
        huge.clone(),
    );
    let small = DeadLetter::new(
        DeadLetterReason::DecodeError,
        "bad",
        SourcePosition::new(0, 8),
        Bytes::from("{oops"),
    );
    sink.write_batch(vec![dl, small]).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(sink.delivered(), 2);
    assert_eq!(sink.truncated(), 1);

    let got = read_topic(&brokers, "events.dlq", 2, Duration::from_secs(20));
    assert_eq!(got.len(), 2);
    let (key, body) = &got[0];
    assert_eq!(key.as_slice(), b"0:7");
    assert!(body.len() <= 1_000_000, "the message fits: {} bytes", body.len());
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["reason"], "decode_error");
    assert_eq!(v["original_truncated"]["size"], 3 << 20);
    assert_eq!(v["original_truncated"]["xxh3_128"], format!("{:032x}", envelope_hash(&huge)));
    let kept = v["original"].as_str().unwrap();
    assert!(kept.len() > 900_000 && huge.starts_with(kept.as_bytes()), "the start of the original is kept");
    let (_, body) = &got[1];
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["original"], "{oops");
    assert!(v.get("original_truncated").is_none(), "a small dead letter is whole");
}

/// The hash the envelope names, through the engine's own type (no hashing crate in the tests).
fn envelope_hash(bytes: &Bytes) -> u128 {
    let cut = DeadLetter::new(DeadLetterReason::DecodeError, "", SourcePosition::new(0, 0), bytes.clone())
        .truncated_to(0);
    u128::from_str_radix(&cut.original_truncated.unwrap().xxh3_128, 16).unwrap()
}

/// Ten small records, then seven of 900 kB: the mock broker keeps 5 MB per partition, so
/// retention deletes the first records (and two large ones).
fn fill_past_retention(brokers: &str) {
    let mut payloads: Vec<Vec<u8>> = (0..10).map(|i| format!("small-{i}").into_bytes()).collect();
    payloads.extend((0..7).map(|_| vec![b'x'; 900_000]));
    produce_each(brokers, "events", &payloads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_offset_deleted_by_retention_stops_the_source() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    fill_past_retention(&brokers);

    let mut source = KafkaSource::new(&config(&brokers, "events", "loss-fail")).unwrap();
    source.seek(&[(0, 5)].into()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        assert!(Instant::now() < deadline, "the source neither failed nor delivered");
        match tokio::time::timeout(Duration::from_secs(5), source.next_event()).await {
            Ok(Err(e)) => break e,
            Ok(Ok(Some(SourceEvent::Batch(b)))) => {
                panic!("records delivered past the gap: {:?}", b.records.first().map(|r| r.position))
            }
            _ => {}
        }
    };
    let kafka = match &err {
        SourceError::Connector(_) => err.connector_error::<KafkaError>().unwrap(),
        other => panic!("{other}"),
    };
    let KafkaError::DataLoss { partition, expected, delivered, .. } = kafka else { panic!("{kafka}") };
    assert_eq!((*partition, *expected), (0, 5));
    assert!(*delivered > 5, "{kafka}");
    assert!(kafka.to_string().contains("on_data_loss"), "says how to accept it: {kafka}");
    assert_eq!(source.stats().records_lost().get(&0).copied(), Some(*delivered - 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_continue_the_lost_range_is_counted_and_reading_goes_on() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    fill_past_retention(&brokers);

    let mut cfg = config(&brokers, "events", "loss-continue");
    cfg.on_data_loss = DataLossPolicy::Continue;
    let mut source = KafkaSource::new(&cfg).unwrap();
    source.seek(&[(0, 5)].into()).unwrap();
    let got = common::read(&mut source, 1).await;
    let first = got.first().map(|(_, o, _)| *o).expect("records after the gap");
    assert!(first > 5);
    assert_eq!(source.stats().records_lost(), BTreeMap::from([(0, first - 5)]));
}

/// A job stand-in: records which partitions the source asked about and releases revoked
/// partitions only once the test's reader has seen their revocation.
#[derive(Default)]
struct Lifecycle {
    seen_revoked: Mutex<BTreeSet<PartitionId>>,
    changed: Condvar,
    /// Assignments asked about while a revocation of the same partition was not released yet.
    early: Mutex<Vec<PartitionId>>,
    waited: AtomicBool,
}

impl PartitionLifecycle for Lifecycle {
    fn assigning(&self, partitions: &[PartitionId]) -> BTreeMap<PartitionId, u64> {
        if self.waited.load(Ordering::SeqCst) {
            let seen = self.seen_revoked.lock().unwrap();
            self.early.lock().unwrap().extend(partitions.iter().filter(|p| !seen.contains(p)));
        }
        BTreeMap::new()
    }

    fn wait_released(&self, partitions: &[PartitionId], timeout: Duration) -> bool {
        self.waited.store(true, Ordering::SeqCst);
        let seen = self.seen_revoked.lock().unwrap();
        let (seen, _) = self
            .changed
            .wait_timeout_while(seen, timeout, |s| !partitions.iter().all(|p| s.contains(p)))
            .unwrap();
        partitions.iter().all(|p| seen.contains(p))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_while_the_job_is_busy_keeps_librdkafkas_order_and_waits_for_the_release() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    common::produce_to(&brokers, "events", 4, 40_000);

    let mut cfg = config(&brokers, "events", "busy");
    cfg.properties.0.insert("session.timeout.ms".into(), "6000".into());
    cfg.properties.0.insert("heartbeat.interval.ms".into(), "100".into());
    let mut source = KafkaSource::new(&cfg).unwrap();
    let lifecycle = Arc::new(Lifecycle::default());
    source.set_partition_lifecycle(lifecycle.clone());

    // A second member joins once the reader below is busy (slow: the channel stays full).
    let (stop, reading) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let other = {
        let (brokers, stop, reading) = (brokers.clone(), Arc::clone(&stop), Arc::clone(&reading));
        std::thread::spawn(move || {
            while !reading.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "busy")
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "100")
                .create()
                .unwrap();
            c.subscribe(&["events"]).unwrap();
            while !stop.load(Ordering::SeqCst) {
                let _ = c.poll(Duration::from_millis(50));
            }
        })
    };

    let mut assigned: BTreeSet<PartitionId> = BTreeSet::new();
    let mut violations = Vec::new();
    let (mut revocations, mut reassigned_after_revoke) = (0, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !reassigned_after_revoke {
        let Ok(ev) = tokio::time::timeout(Duration::from_secs(5), source.next_event()).await else {
            continue;
        };
        match ev.unwrap().unwrap() {
            SourceEvent::PartitionsAssigned(ps) => {
                reassigned_after_revoke |= revocations > 0;
                assigned.extend(ps);
            }
            SourceEvent::PartitionsRevoked(ps) => {
                revocations += 1;
                for p in &ps {
                    assigned.remove(p);
                }
                // The job has processed everything before the revocation: release.
                lifecycle.seen_revoked.lock().unwrap().extend(ps);
                lifecycle.changed.notify_all();
            }
            SourceEvent::Batch(b) => {
                reading.store(true, Ordering::SeqCst);
                violations
                    .extend(b.records.iter().map(|r| r.position.partition).filter(|p| !assigned.contains(p)));
                // A slow job: the source's channel stays full.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            SourceEvent::PartitionFinished(_) | SourceEvent::Progress(_) => {}
        }
    }
    stop.store(true, Ordering::SeqCst);
    other.join().unwrap();
    assert!(revocations > 0 && reassigned_after_revoke, "the group rebalanced ({revocations} revocations)");
    assert!(
        violations.is_empty(),
        "records of partitions not assigned at that point: {:?}",
        &violations[..violations.len().min(10)]
    );
    assert!(lifecycle.waited.load(Ordering::SeqCst), "the revocation waited for the job");
    assert_eq!(
        *lifecycle.early.lock().unwrap(),
        Vec::<PartitionId>::new(),
        "no assignment decided before its release"
    );
}
