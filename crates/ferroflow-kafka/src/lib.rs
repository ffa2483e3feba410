//! Kafka connectors for ferroflow (on librdkafka through `rdkafka`).
//!
//! - [`KafkaSource`]: a consumer-group member that polls in batches on its own thread, gives each
//!   partition its own watermark, resumes from the job's checkpoints (auto-commit is off) and
//!   commits checkpointed offsets back to the group for lag tools.
//! - [`KafkaDeadLetterSink`]: dead letters as JSON envelopes on a topic (default `events.dlq`),
//!   with the original message's headers ([`HeaderStash`]).
//! - [`ensure_topic`]: creates a topic if missing.
//!
//! Every librdkafka property (SASL, SSL, fetch sizes, …) passes through
//! [`KafkaSourceConfig::properties`]; secret values never appear in `Debug` output.
#![deny(missing_docs)]

mod admin;
mod config;
mod dlq;
mod error;
mod headers;
mod poll;
mod rebalance;
mod shared;
mod source;
mod stats;
mod topics;

pub use admin::ensure_topic;
pub use config::{
    Assignment, DataLossPolicy, DeadLetterTopicConfig, KafkaSourceConfig, Properties, StartOffset,
};
pub use dlq::{DeadLetterContext, KafkaDeadLetterSink};
pub use error::KafkaError;
pub use headers::{HeaderPair, HeaderStash};
pub use rebalance::SourceContext;
pub use source::KafkaSource;
pub use stats::{PartitionLag, SourceStats};

/// Re-exported so users of this crate name the same librdkafka types (mock cluster, producers).
pub use rdkafka;
