//! The dead-letter topic: each dead letter becomes one JSON message.
//!
//! The message key is `partition:offset` of the source record (plus a hash of the row for rows
//! the sink refused, which share their window's position), so a consumer of the topic can
//! deduplicate the replays a crash causes (delivery to this topic is at-least-once: dead letters
//! produced after the last checkpoint are produced again when the job replays). Headers carry
//! the reason and the source position for routing without parsing the body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferroflow_core::sink::Sink;
use ferroflow_core::{DeadLetter, DeadLetterReason, SinkError};
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
    /// Envelopes the broker refused as too large (its limit is below the producer's): produced
    /// again without their original bytes at the next flush.
    too_large: Mutex<Vec<Vec<u8>>>,
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
            Err((e, m)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                use rdkafka::message::Message as _;
                if let Ok(mut t) = self.deliveries.too_large.lock() {
                    t.push(m.payload().unwrap_or_default().to_vec());
                }
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
    /// Largest message the producer sends.
    max_message_bytes: usize,
    /// Dead letters cut to fit.
    truncated: u64,
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
            max_message_bytes: config.max_message_bytes(),
            truncated: 0,
        })
    }

    /// Dead letters whose original bytes (or headers) were cut to fit in one message.
    pub fn truncated(&self) -> u64 {
        self.truncated
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
        let key = key_of(dl);
        let partition = dl.position.partition.to_string();
        let offset = dl.position.offset.to_string();
        let mut original = self.stash.as_ref().and_then(|s| s.get(dl.position)).unwrap_or_default();
        let mut header_bytes: usize =
            original.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len())).sum();
        // The message must fit whole: key, our headers, the original headers and the envelope.
        let room = self.max_message_bytes.saturating_sub(key.len() + ENVELOPE_SLACK);
        if header_bytes > room / 2 {
            // Huge original headers: the envelope (reason, position, bytes) matters more.
            original.clear();
            header_bytes = 0;
        }
        self.encode(dl, room.saturating_sub(header_bytes))?;
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
                // Still too large for the producer (its own limit differs from ours): the
                // envelope alone, which always fits.
                Err((e, _))
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge)
                        && (!original.is_empty() || self.scratch.len() > MIN_ENVELOPE) =>
                {
                    original.clear();
                    self.encode(&dl.truncated_to(0), MIN_ENVELOPE)?;
                }
                Err((e, _)) => return Err(KafkaError::client("producing a dead letter", e).into()),
            }
        }
    }

    /// Serializes `dl` into the scratch buffer in at most `room` bytes: when the whole envelope
    /// is larger, the detail is shortened and the original cut (its size and hash kept), so a
    /// record never fails the job for its size.
    fn encode(&mut self, dl: &DeadLetter, room: usize) -> Result<(), SinkError> {
        let write = |buf: &mut Vec<u8>, dl: &DeadLetter| {
            buf.clear();
            serde_json::to_writer(&mut *buf, dl).map_err(|e| SinkError::Encode(e.to_string()))
        };
        write(&mut self.scratch, dl)?;
        if self.scratch.len() <= room {
            return Ok(());
        }
        self.truncated += 1;
        let mut cut = dl.truncated_to(0);
        if cut.detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !cut.detail.is_char_boundary(end) {
                end -= 1;
            }
            cut.detail.truncate(end);
            cut.detail.push_str(" …");
        }
        write(&mut self.scratch, &cut)?;
        let bare = self.scratch.len();
        // Escaping can grow the original up to six-fold (control characters as \u00XX) and base64
        // by a third: shrink until it fits.
        let mut keep = room.saturating_sub(bare);
        while keep > 0 {
            let mut attempt = dl.truncated_to(keep);
            attempt.detail.clone_from(&cut.detail);
            write(&mut self.scratch, &attempt)?;
            if self.scratch.len() <= room {
                break;
            }
            let over = self.scratch.len() - room;
            keep = keep.saturating_sub(over.max(keep / 8).max(1));
        }
        if keep == 0 {
            write(&mut self.scratch, &cut)?;
        }
        tracing::warn!(
            reason = %dl.reason,
            partition = dl.position.partition,
            offset = dl.position.offset,
            original_bytes = dl.original.len(),
            kept = keep,
            "dead letter larger than dead_letters.max_message_bytes; its original bytes were cut"
        );
        Ok(())
    }

    /// Produces again, without original bytes or headers, the envelopes the broker refused as too
    /// large.
    async fn resend_too_large(&mut self) -> Result<bool, SinkError> {
        let refused: Vec<Vec<u8>> =
            self.deliveries.too_large.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        if refused.is_empty() {
            return Ok(false);
        }
        let stash = self.stash.take();
        for body in &refused {
            let dl = match serde_json::from_slice::<DeadLetter>(body) {
                Ok(dl) => dl.truncated_to(0),
                Err(e) => {
                    return Err(SinkError::Encode(format!("a refused dead letter does not parse: {e}")));
                }
            };
            tracing::warn!(
                partition = dl.position.partition,
                offset = dl.position.offset,
                "the broker refused a dead letter as too large; producing it without its original bytes"
            );
            self.truncated += 1;
            let limit = self.max_message_bytes;
            self.max_message_bytes = MIN_ENVELOPE;
            let sent = self.produce(&dl).await;
            self.max_message_bytes = limit;
            sent?;
        }
        self.stash = stash;
        Ok(true)
    }
}

/// The message key: `partition:offset` of the source record. Rows the sink refused share their
/// window's position, so theirs adds a hash of the row, which keeps keys unique for consumers that
/// deduplicate by key (or a compacted topic).
fn key_of(dl: &DeadLetter) -> String {
    match dl.reason {
        DeadLetterReason::SinkRejected => format!(
            "{}:{}:{:016x}",
            dl.position.partition,
            dl.position.offset,
            xxhash_rust::xxh3::xxh3_64(&dl.original)
        ),
        _ => format!("{}:{}", dl.position.partition, dl.position.offset),
    }
}

/// Room kept for our own headers and the message's framing.
const ENVELOPE_SLACK: usize = 1024;

/// Longest detail kept in a dead letter that had to be cut.
const MAX_DETAIL: usize = 4096;

/// An envelope without original bytes or headers fits in this (the detail is at most
/// [`MAX_DETAIL`]).
const MIN_ENVELOPE: usize = 8192;

impl Sink<DeadLetter> for KafkaDeadLetterSink {
    async fn write_batch(&mut self, batch: Vec<DeadLetter>) -> Result<(), SinkError> {
        for dl in &batch {
            self.produce(dl).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        // Envelopes the broker refused as too large go out once more without their original;
        // refused again, the topic cannot hold dead letters at all: a setting to fix.
        for round in 0..3 {
            let producer = Arc::clone(&self.producer);
            let timeout = self.flush_timeout;
            tokio::task::spawn_blocking(move || producer.flush(timeout))
                .await
                .map_err(|e| KafkaError::Delivery(format!("flush task failed: {e}")))?
                .map_err(|e| KafkaError::client("flushing dead letters", e))?;
            if round == 2 && self.deliveries.too_large.lock().is_ok_and(|t| !t.is_empty()) {
                return Err(KafkaError::Config {
                    setting: format!("the max.message.bytes of topic {}", self.topic),
                    problem: format!(
                        "the broker refuses dead letters even without their original bytes (at most {MIN_ENVELOPE} \
                         bytes); raise the topic's max.message.bytes"
                    ),
                }
                .into());
            }
            if !self.resend_too_large().await? {
                break;
            }
        }
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ferroflow_core::{DeadLetter, DeadLetterReason, SourcePosition};

    use super::key_of;

    #[test]
    fn refused_rows_of_one_window_keep_keys_of_their_own() {
        let at = SourcePosition::new(u32::MAX, 1_767_225_600_000);
        let row = |k: &str| {
            DeadLetter::new(DeadLetterReason::SinkRejected, "refused", at, Bytes::from(k.to_owned()))
        };
        assert_ne!(key_of(&row("{\"key\":\"a\"}")), key_of(&row("{\"key\":\"b\"}")));
        assert!(key_of(&row("x")).starts_with("4294967295:1767225600000:"));
        let source =
            DeadLetter::new(DeadLetterReason::DecodeError, "bad", SourcePosition::new(2, 7), Bytes::new());
        assert_eq!(key_of(&source), "2:7");
    }
}
