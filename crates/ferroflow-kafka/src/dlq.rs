//! The dead-letter topic: each dead letter becomes one JSON message.
//!
//! The message key is `partition:offset` of the source record, so a consumer of the topic can
//! deduplicate the replays a crash causes (delivery to this topic is at-least-once: dead letters
//! produced after the last checkpoint are produced again when the job replays). Headers carry
//! the reason and the source position for routing without parsing the body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferroflow_core::sink::Sink;
use ferroflow_core::{DeadLetter, SinkError};
use rdkafka::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::DeadLetterTopicConfig;
use crate::error::KafkaError;
use crate::headers::HeaderStash;

/// Delivery results, counted by librdkafka's callback thread.
#[derive(Debug, Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The producer's callbacks.
#[derive(Debug, Default)]
pub struct DeadLetterContext {
    deliveries: Arc<Deliveries>,
}

impl ClientContext for DeadLetterContext {}

impl ProducerContext for DeadLetterContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.deliveries.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.deliveries.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = self.deliveries.last_error.lock() {
                    *l = Some(e.to_string());
                }
            }
        }
    }
}

/// Writes dead letters to a Kafka topic as JSON envelopes.
///
/// `flush` (every checkpoint) waits until the broker acknowledged every message, so a checkpoint
/// never commits past a dead letter that was not stored.
pub struct KafkaDeadLetterSink {
    producer: Arc<ThreadedProducer<DeadLetterContext>>,
    deliveries: Arc<Deliveries>,
    topic: String,
    flush_timeout: Duration,
    produced: u64,
    /// Original headers of source messages, copied onto their dead letters.
    stash: Option<HeaderStash>,
    /// Failures already reported (so one failure fails one flush, not every later one).
    failures_seen: u64,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for KafkaDeadLetterSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDeadLetterSink").field("topic", &self.topic).finish()
    }
}

impl KafkaDeadLetterSink {
    /// Creates the producer (`fallback_brokers` when the config names none).
    pub fn new(config: &DeadLetterTopicConfig, fallback_brokers: &str) -> Result<Self, KafkaError> {
        config.validate()?;
        let context = DeadLetterContext::default();
        let deliveries = Arc::clone(&context.deliveries);
        let producer: ThreadedProducer<DeadLetterContext> = config
            .client_config(fallback_brokers)
            .create_with_context(context)
            .map_err(|e| KafkaError::client("creating the dead-letter producer", e))?;
        Ok(Self {
            producer: Arc::new(producer),
            deliveries,
            topic: config.topic.clone(),
            flush_timeout: Duration::from_millis(config.flush_timeout_ms),
            produced: 0,
            stash: None,
            failures_seen: 0,
            scratch: Vec::with_capacity(1024),
        })
    }

    /// Copies each dead letter's original message headers (from the source's stash) onto its
    /// message on the dead-letter topic, after the `ferroflow.*` headers.
    pub fn with_header_stash(mut self, stash: HeaderStash) -> Self {
        self.stash = Some(stash);
        self
    }

    /// Dead letters acknowledged by the broker so far.
    pub fn delivered(&self) -> u64 {
        self.deliveries.delivered.load(Ordering::Relaxed)
    }

    async fn produce(&mut self, dl: &DeadLetter) -> Result<(), SinkError> {
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, dl).map_err(|e| SinkError::Encode(e.to_string()))?;
        let key = format!("{}:{}", dl.position.partition, dl.position.offset);
        let partition = dl.position.partition.to_string();
        let offset = dl.position.offset.to_string();
        let original = self.stash.as_ref().and_then(|s| s.get(dl.position)).unwrap_or_default();
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(3 + original.len())
                .insert(Header { key: "ferroflow.reason", value: Some(dl.reason.code()) })
                .insert(Header { key: "ferroflow.source.partition", value: Some(partition.as_str()) })
                .insert(Header { key: "ferroflow.source.offset", value: Some(offset.as_str()) });
            for (k, v) in &original {
                headers = headers.insert(Header { key: k.as_str(), value: v.as_deref() });
            }
            let record = BaseRecord::to(&self.topic).key(&key).payload(&self.scratch).headers(headers);
            match self.producer.send(record) {
                Ok(()) => {
                    self.produced += 1;
                    return Ok(());
                }
                // The local queue is full: wait for deliveries to drain it (backpressure).
                Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err((e, _)) => return Err(KafkaError::client("producing a dead letter", e).into()),
            }
        }
    }
}

impl Sink<DeadLetter> for KafkaDeadLetterSink {
    async fn write_batch(&mut self, batch: Vec<DeadLetter>) -> Result<(), SinkError> {
        for dl in &batch {
            self.produce(dl).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let producer = Arc::clone(&self.producer);
        let timeout = self.flush_timeout;
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| KafkaError::Delivery(format!("flush task failed: {e}")))?
            .map_err(|e| KafkaError::client("flushing dead letters", e))?;
        let failed = self.deliveries.failed.load(Ordering::Relaxed);
        if failed > self.failures_seen {
            self.failures_seen = failed;
            let last = self.deliveries.last_error.lock().ok().and_then(|l| l.clone()).unwrap_or_default();
            return Err(KafkaError::Delivery(format!(
                "{failed} dead letter(s) were not acknowledged by the broker (last error: {last}); the job \
                 restarts from its last checkpoint and produces them again"
            ))
            .into());
        }
        Ok(())
    }
}
