//! Helpers shared by the mock-cluster tests: producing test messages, reading a source, a
//! source configuration.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferroflow_core::source::{Source, SourceEvent};
use ferroflow_kafka::rdkafka::ClientConfig;
use ferroflow_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use ferroflow_kafka::{KafkaSource, KafkaSourceConfig};

pub const PARTITIONS: i32 = 3;

pub fn produce(brokers: &str, topic: &str, n: usize) {
    produce_to(brokers, topic, PARTITIONS, n);
}

/// Reads until `n` records arrived (or 30 s passed); returns (partition, offset, payload) triples.
pub async fn read(source: &mut KafkaSource, n: usize) -> Vec<(u32, u64, Bytes)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < n && Instant::now() < deadline {
        let ev = tokio::time::timeout(Duration::from_secs(5), source.next_event()).await;
        if let Ok(Ok(Some(SourceEvent::Batch(b)))) = ev {
            out.extend(b.records.into_iter().map(|r| (r.position.partition, r.position.offset, r.payload)));
        }
    }
    out
}

pub fn config(brokers: &str, topic: &str, group: &str) -> KafkaSourceConfig {
    KafkaSourceConfig {
        brokers: brokers.into(),
        topic: topic.into(),
        group_id: group.into(),
        batch_max_records: 500,
        ..Default::default()
    }
}

/// Reads a topic from the beginning until `n` messages arrived and nothing new came for a second
/// (or `timeout` passed); returns each message's key and payload.
pub fn read_topic(brokers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<(Vec<u8>, Vec<u8>)> {
    use ferroflow_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    use ferroflow_kafka::rdkafka::message::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{topic}-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("fetch.message.max.bytes", "10000000")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut quiet = Instant::now();
    while Instant::now() < deadline && !(out.len() >= n && quiet.elapsed() > Duration::from_secs(1)) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            quiet = Instant::now();
            out.push((m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec()));
        }
    }
    out
}

/// Produces `payloads` to partition 0 of `topic`, each in its own request (its own record batch
/// on the broker), with room for messages of up to 10 MB.
pub fn produce_each(brokers: &str, topic: &str, payloads: &[Vec<u8>]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "10000000")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for p in payloads {
        producer.send(BaseRecord::<(), _>::to(topic).payload(p).partition(0)).unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
    }
}

/// Produces `n` messages round-robin over `partitions` partitions of `topic`.
pub fn produce_to(brokers: &str, topic: &str, partitions: i32, n: usize) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    for i in 0..n {
        let payload = format!("message-{i}");
        let partition = (i % partitions as usize) as i32;
        while producer.send(BaseRecord::<(), _>::to(topic).payload(&payload).partition(partition)).is_err() {
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}
