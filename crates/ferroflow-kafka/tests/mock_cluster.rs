//! The Kafka connectors against librdkafka's in-process mock cluster (fast; the end-to-end tests
//! in ferroflow-pipeline use a real broker).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{PARTITIONS, config, produce, read};
use ferroflow_core::sink::Sink;
use ferroflow_core::source::Source;
use ferroflow_core::{DeadLetter, DeadLetterReason, SourcePosition};
use ferroflow_kafka::rdkafka::ClientConfig;
use ferroflow_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use ferroflow_kafka::rdkafka::message::{Headers, Message};
use ferroflow_kafka::rdkafka::mocking::MockCluster;
use ferroflow_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use ferroflow_kafka::{DeadLetterTopicConfig, KafkaDeadLetterSink, KafkaSource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_every_partition_in_batches_exactly_once() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", PARTITIONS, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "events", 3000);

    let mut source = KafkaSource::new(&config(&brokers, "events", "g1")).unwrap();
    let got = read(&mut source, 3000).await;
    assert_eq!(got.len(), 3000, "every record is delivered");
    let positions: BTreeSet<(u32, u64)> = got.iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(positions.len(), 3000, "no record is delivered twice");
    let payloads: BTreeSet<Bytes> = got.iter().map(|(_, _, b)| b.clone()).collect();
    assert!(payloads.contains(&Bytes::from("message-2999")));
    assert!(source.stats().batches() < 3000, "records arrive in batches, not one by one");
    assert_eq!(source.stats().records(), 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_checkpointed_offsets_not_from_the_group() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", PARTITIONS, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "events", 300); // 100 per partition, offsets 0..100

    let mut source = KafkaSource::new(&config(&brokers, "events", "g2")).unwrap();
    let resume: BTreeMap<u32, u64> = [(0, 40), (1, 100), (2, 0)].into();
    source.seek(&resume).unwrap();
    let got = read(&mut source, 160).await;
    // Nothing more arrives once the expected records are in.
    let extra = tokio::time::timeout(Duration::from_millis(700), read(&mut source, 1)).await;
    assert!(extra.map(|v| v.is_empty()).unwrap_or(true), "no records beyond the resume points");
    let by_partition: BTreeMap<u32, Vec<u64>> = got.iter().fold(BTreeMap::new(), |mut m, (p, o, _)| {
        m.entry(*p).or_insert_with(Vec::new).push(*o);
        m
    });
    assert_eq!(by_partition.get(&0).map(|v| (v.len(), v[0])), Some((60, 40)));
    assert_eq!(by_partition.get(&1), None);
    assert_eq!(by_partition.get(&2).map(|v| (v.len(), v[0])), Some((100, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_follow_checkpoints() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", PARTITIONS, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "events", 30);
    let mut source = KafkaSource::new(&config(&brokers, "events", "g3")).unwrap();
    let _ = read(&mut source, 30).await;
    let listener = source.checkpoint_listener().expect("commits are on by default");
    listener.checkpoint_complete(1, &[(0, 7), (1, 9), (2, 10)].into());
    assert_eq!(source.stats().commits(), (1, 0), "the commit is counted when handed to the client");
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(200), source.next_event()).await;
    }
    let checker: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "g3").create().unwrap();
    let mut tpl = ferroflow_kafka::rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition("events", p);
    }
    let committed = checker.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
    let offsets: Vec<i64> = committed.elements().iter().map(|e| e.offset().to_raw().unwrap_or(-1)).collect();
    assert_eq!(offsets, vec![7, 9, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_land_on_the_topic_as_json_with_reason_headers() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events.dlq", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let mut sink = KafkaDeadLetterSink::new(&DeadLetterTopicConfig::default(), &brokers).unwrap();
    let dls: Vec<DeadLetter> = (0..50)
        .map(|i| {
            DeadLetter::new(
                DeadLetterReason::ContractViolation,
                format!("minimum:/amount: -{i} is less than 0"),
                SourcePosition::new(2, i),
                Bytes::from(format!("{{\"amount\": -{i}}}")),
            )
        })
        .collect();
    sink.write_batch(dls).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(sink.delivered(), 50);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["events.dlq"]).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 50 && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let reason = m.headers().unwrap().iter().find(|h| h.key == "ferroflow.reason").unwrap();
            assert_eq!(reason.value, Some(&b"contract_violation"[..]));
            assert_eq!(m.key(), Some(format!("2:{}", body["position"]["offset"]).as_bytes()));
            seen.push(body);
        }
    }
    assert_eq!(seen.len(), 50);
    assert_eq!(seen[7]["reason"], "contract_violation");
    assert_eq!(seen[7]["original"], "{\"amount\": -7}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_partitions_mode_reads_every_partition_without_the_group_and_resumes_at_once() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", PARTITIONS, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "events", 300);
    let mut config = config(&brokers, "events", "g4");
    config.assignment = ferroflow_kafka::Assignment::AllPartitions;

    let mut first = KafkaSource::new(&config).unwrap();
    first.seek(&[(0, 90)].into()).unwrap();
    let got = read(&mut first, 210).await;
    assert_eq!(got.len(), 210, "partition 0 from 90, the others from the start");
    assert!(got.iter().all(|(p, o, _)| *p != 0 || *o >= 90));
    drop(first);

    // A second instance of the same group gets every partition too: no group protocol involved.
    let started = Instant::now();
    let mut second = KafkaSource::new(&config).unwrap();
    second.seek(&[(0, 100), (1, 100), (2, 99)].into()).unwrap();
    let got = read(&mut second, 1).await;
    assert_eq!(got.iter().map(|(p, o, _)| (*p, *o)).collect::<Vec<_>>(), vec![(2, 99)]);
    assert!(started.elapsed() < Duration::from_secs(10), "a restarted instance resumes at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_the_original_message_headers() {
    use ferroflow_kafka::rdkafka::message::{Header, OwnedHeaders};
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    cluster.create_topic("events.dlq", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    producer
        .send(
            BaseRecord::<(), _>::to("events").payload("{not json").partition(0).headers(
                OwnedHeaders::new()
                    .insert(Header { key: "trace-id", value: Some("t-42") })
                    .insert(Header { key: "tenant", value: Some("acme") }),
            ),
        )
        .unwrap();
    producer.send(BaseRecord::<(), _>::to("events").payload("{}").partition(0)).unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let mut source = KafkaSource::new(&config(&brokers, "events", "g5")).unwrap();
    let got = read(&mut source, 2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(source.header_stash().len(), 1, "only the message with headers is stashed");

    let mut sink = KafkaDeadLetterSink::new(&DeadLetterTopicConfig::default(), &brokers)
        .unwrap()
        .with_header_stash(source.header_stash());
    let dl = |offset| {
        DeadLetter::new(DeadLetterReason::DecodeError, "bad", SourcePosition::new(0, offset), Bytes::new())
    };
    sink.write_batch(vec![dl(0), dl(1)]).await.unwrap();
    sink.flush().await.unwrap();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dlq-headers")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["events.dlq"]).unwrap();
    let mut seen: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let hs = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or(b"")).into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            seen.insert(body["position"]["offset"].as_u64().unwrap(), hs);
        }
    }
    let with = &seen[&0];
    assert!(with.contains(&("trace-id".into(), "t-42".into())), "{with:?}");
    assert!(with.contains(&("tenant".into(), "acme".into())), "{with:?}");
    assert!(with.contains(&("ferroflow.reason".into(), "decode_error".into())), "{with:?}");
    assert!(
        !seen[&1].iter().any(|(k, _)| k == "trace-id"),
        "a message without headers gets only ferroflow's"
    );

    // A completed checkpoint past the message forgets its headers.
    source.checkpoint_listener().unwrap().checkpoint_complete(1, &[(0, 2)].into());
    assert!(source.header_stash().is_empty());
}
