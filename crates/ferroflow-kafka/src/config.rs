//! Settings of the Kafka source and the dead-letter producer: what the pipeline's TOML holds.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::error::KafkaError;

/// Where to start reading a partition the restored checkpoint does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartOffset {
    /// The oldest retained message (default: a fresh job sees everything).
    #[default]
    Earliest,
    /// Only messages produced after the job starts.
    Latest,
}

/// How partitions are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    /// The consumer group protocol: instances with the same `group_id` split the partitions and
    /// rebalance when one joins or leaves (default).
    #[default]
    Group,
    /// This instance reads every partition of the topic itself (as Flink's Kafka source does):
    /// no rebalances, and a restarted instance resumes at once without waiting for the group to
    /// notice the old one is gone. New partitions are picked up within 10 s. Offsets are still
    /// committed under `group_id` for lag tools.
    AllPartitions,
}

/// What the source does when a partition cannot resume where its checkpoint says: the records in
/// between were deleted by retention (or the topic was recreated), and librdkafka's
/// `auto.offset.reset` would silently jump over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataLossPolicy {
    /// Stop the job with [`KafkaError::DataLoss`](crate::KafkaError::DataLoss) (default): someone
    /// decides, e.g. restores an older savepoint, or sets `continue` to accept the loss.
    #[default]
    Fail,
    /// Log the skipped range as an error, count it in `ferroflow_source_records_lost_total` and go
    /// on from where the partition now starts.
    Continue,
}

/// librdkafka properties passed through verbatim (`security.protocol`, `sasl.*`, `ssl.*`, …).
///
/// Values of secret-looking keys (passwords, keys, JAAS configs, tokens) print as `***` so the
/// configuration can be logged.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Properties(pub BTreeMap<String, String>);

impl Properties {
    /// True for keys whose values must never be logged.
    pub fn is_secret(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        ["password", "secret", "jaas", "key.pem", "keystore", "token", "ssl.key", "credentials"]
            .iter()
            .any(|s| k.contains(s))
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.0 {
            if Self::is_secret(k) {
                m.entry(k, &"***");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

/// The Kafka source: consumer group, topic, batching and pass-through properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSourceConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// Consumer group: instances with the same group share the topic's partitions.
    pub group_id: String,
    /// The topic to read.
    pub topic: String,
    /// A second topic read with `topic` by the same consumer, co-partitioned with it (same
    /// partition count, same partitioner for the join key): the second input of a job per
    /// partition. Its partition `p` is the job's
    /// [`RIGHT_PARTITIONS`](ferroflow_core::source::RIGHT_PARTITIONS)` + p`. The consumer then uses
    /// the `range` assignor, which gives partition `p` of both topics to the same member.
    pub co_topic: Option<String>,
    /// Most records delivered in one batch.
    pub batch_max_records: usize,
    /// Longest a partial batch waits for more records, in milliseconds.
    pub batch_max_wait_ms: u64,
    /// Where partitions the checkpoint does not know start.
    pub start_offset: StartOffset,
    /// `group` (share partitions with other instances) or `all_partitions` (read them all).
    pub assignment: Assignment,
    /// Commit checkpointed offsets to the group after every checkpoint (for lag tools; the job
    /// itself resumes from its checkpoints).
    pub commit_offsets: bool,
    /// librdkafka statistics interval, ms (feeds the consumer-lag metrics; 0 = off).
    pub statistics_interval_ms: u64,
    /// `fail` (default) or `continue` when a partition cannot resume at its checkpointed offset
    /// because retention deleted the records there (see [`DataLossPolicy`]).
    pub on_data_loss: DataLossPolicy,
    /// Most bytes of original message headers kept for dead letters of records not yet covered
    /// by a checkpoint; beyond it the oldest are dropped (counted) and their dead letters carry
    /// no original headers.
    pub header_stash_max_bytes: usize,
    /// Extra librdkafka consumer properties, passed through (SASL, SSL, fetch sizes, …).
    pub properties: Properties,
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "ferroflow".into(),
            topic: "events".into(),
            co_topic: None,
            batch_max_records: 4096,
            batch_max_wait_ms: 50,
            start_offset: StartOffset::Earliest,
            assignment: Assignment::Group,
            commit_offsets: true,
            statistics_interval_ms: 1000,
            on_data_loss: DataLossPolicy::Fail,
            header_stash_max_bytes: 64 << 20,
            properties: Properties::default(),
        }
    }
}

/// The consumer's assignor property; a source of two topics needs `range`.
const ASSIGNOR: &str = "partition.assignment.strategy";

/// Properties the source sets itself; overriding them would break the delivery guarantee.
const RESERVED_CONSUMER: [&str; 4] =
    ["enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers"];

impl KafkaSourceConfig {
    /// Checks the settings; the error names the bad one.
    pub fn validate(&self) -> Result<(), KafkaError> {
        let bad = |setting: &str, problem: &str| {
            Err(KafkaError::Config { setting: setting.into(), problem: problem.into() })
        };
        if self.brokers.trim().is_empty() {
            return bad("kafka.brokers", "must list at least one host:port");
        }
        if self.group_id.trim().is_empty() {
            return bad("kafka.group_id", "must not be empty");
        }
        if self.topic.trim().is_empty() {
            return bad("kafka.topic", "must not be empty");
        }
        if let Some(co) = &self.co_topic {
            if co.trim().is_empty() || co == &self.topic {
                return bad("kafka.co_topic", "must name a topic other than `topic`");
            }
            if self.assignment != Assignment::Group {
                return bad(
                    "kafka.co_topic",
                    "needs `assignment = \"group\"`: it pairs partitions through the group's assignor",
                );
            }
            if self.properties.0.get("group.protocol").is_some_and(|v| v.trim() != "classic") {
                return bad(
                    "kafka.properties.\"group.protocol\"",
                    "must be `classic` with a `co_topic`: the broker-side protocol assigns incrementally and may move one topic's partition alone",
                );
            }
            if self.properties.0.get(ASSIGNOR).is_some_and(|v| v.trim() != "range") {
                return bad(
                    &format!("kafka.properties.\"{ASSIGNOR}\""),
                    "must be `range` with a `co_topic`: other assignors may give partition p of the two topics to different members",
                );
            }
        }
        if self.batch_max_records == 0 {
            return bad("kafka.batch_max_records", "must be at least 1");
        }
        for key in self.properties.0.keys() {
            if RESERVED_CONSUMER.contains(&key.as_str()) {
                return bad(
                    &format!("kafka.properties.\"{key}\""),
                    "is set by ferroflow (offsets come from checkpoints); use the dedicated setting",
                );
            }
        }
        Ok(())
    }

    /// The librdkafka consumer configuration.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // Only ever used when an offset is out of range (a new partition's start is set
            // explicitly from `start_offset`): resetting to the log start makes the first message
            // tell how many records retention deleted, which the source then reports.
            .set("auto.offset.reset", "earliest");
        if self.statistics_interval_ms > 0 {
            c.set("statistics.interval.ms", self.statistics_interval_ms.to_string());
        }
        if self.co_topic.is_some() {
            c.set(ASSIGNOR, "range");
        }
        for (k, v) in &self.properties.0 {
            c.set(k, v);
        }
        c
    }
}

/// Smallest `dead_letters.max_message_bytes`: a dead letter without its original bytes and
/// headers (reason, detail, position) always fits.
pub const MIN_DEAD_LETTER_BYTES: usize = 16 << 10;

/// The dead-letter producer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterTopicConfig {
    /// `bootstrap.servers` (empty: the source's brokers).
    pub brokers: String,
    /// The dead-letter topic.
    pub topic: String,
    /// Longest a checkpoint waits for dead letters to be acknowledged, in milliseconds.
    pub flush_timeout_ms: u64,
    /// Create the topic at start-up when it does not exist (with `partitions` partitions).
    pub create_topic: bool,
    /// Partitions of the topic when it is created.
    pub partitions: i32,
    /// Largest dead-letter message produced, bytes (librdkafka's `message.max.bytes`, unless
    /// `properties` sets that). A larger envelope carries only the start of the original bytes,
    /// with the whole original's size and hash; a record never stops the job for its size.
    pub max_message_bytes: usize,
    /// Extra librdkafka producer properties, passed through.
    pub properties: Properties,
}

impl Default for DeadLetterTopicConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic: "events.dlq".into(),
            flush_timeout_ms: 30_000,
            create_topic: true,
            partitions: 1,
            max_message_bytes: 1_000_000,
            properties: Properties::default(),
        }
    }
}

impl DeadLetterTopicConfig {
    /// Checks the settings; the error names the bad one.
    pub fn validate(&self) -> Result<(), KafkaError> {
        if self.topic.trim().is_empty() {
            return Err(KafkaError::Config {
                setting: "dead_letters.topic".into(),
                problem: "must not be empty".into(),
            });
        }
        if self.max_message_bytes() < MIN_DEAD_LETTER_BYTES {
            return Err(KafkaError::Config {
                setting: "dead_letters.max_message_bytes".into(),
                problem: format!(
                    "must be at least {MIN_DEAD_LETTER_BYTES} (room for the envelope without its original bytes)"
                ),
            });
        }
        Ok(())
    }

    /// The largest message the producer sends: `properties."message.max.bytes"` when set, else
    /// `max_message_bytes`.
    pub fn max_message_bytes(&self) -> usize {
        self.properties
            .0
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(self.max_message_bytes)
    }

    /// The librdkafka producer configuration (`fallback_brokers` when `brokers` is empty).
    pub fn client_config(&self, fallback_brokers: &str) -> ClientConfig {
        let brokers = if self.brokers.trim().is_empty() { fallback_brokers } else { &self.brokers };
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers)
            // Retries must not reorder or duplicate dead letters of one partition.
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .set("compression.type", "lz4")
            .set("message.max.bytes", self.max_message_bytes.to_string());
        for (k, v) in &self.properties.0 {
            c.set(k, v);
        }
        c
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_in_debug_output() {
        let mut p = BTreeMap::new();
        p.insert("sasl.password".to_string(), "hunter2".to_string());
        p.insert("sasl.username".to_string(), "alice".to_string());
        let text = format!("{:?}", Properties(p));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("alice"), "{text}");
    }

    #[test]
    fn reserved_properties_are_refused_by_name() {
        let mut c = KafkaSourceConfig::default();
        c.properties.0.insert("enable.auto.commit".into(), "true".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("enable.auto.commit"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = serde_json::from_str::<KafkaSourceConfig>(r#"{"topik": "x"}"#).unwrap_err().to_string();
        assert!(e.contains("topik"), "{e}");
    }
}
