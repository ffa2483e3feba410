//! Errors of the Kafka connectors.

use ferroflow_core::{RetryHint, SinkError, SourceError};

/// What went wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// A setting is invalid.
    #[error("invalid setting {setting}: {problem}")]
    Config {
        /// The setting, as written in the configuration file.
        setting: String,
        /// What is wrong with it.
        problem: String,
    },
    /// librdkafka refused or failed an operation.
    #[error(
        "kafka {operation} failed: {source} (check the brokers are reachable and the settings match them)"
    )]
    Client {
        /// What was being done.
        operation: &'static str,
        /// The librdkafka error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Producing dead letters failed.
    #[error("dead-letter delivery failed: {0}")]
    Delivery(String),
}

impl KafkaError {
    pub(crate) fn client(operation: &'static str, source: rdkafka::error::KafkaError) -> Self {
        KafkaError::Client { operation, source }
    }

    fn retry(&self) -> RetryHint {
        match self {
            KafkaError::Config { .. } => RetryHint::NoRetry,
            KafkaError::Client { .. } | KafkaError::Delivery(_) => RetryHint::WithBackoff,
        }
    }
}

impl From<KafkaError> for SourceError {
    fn from(e: KafkaError) -> Self {
        let retry = e.retry();
        SourceError::External { message: e.to_string(), retry }
    }
}

impl From<KafkaError> for SinkError {
    fn from(e: KafkaError) -> Self {
        let retry = e.retry();
        SinkError::External { message: e.to_string(), retry }
    }
}
