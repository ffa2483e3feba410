//! Errors of the Kafka connectors.

use ferroflow_core::error::ConnectorError;
use ferroflow_core::{ErrorDomain, RetryHint, SinkError, SourceError};

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
    /// A partition could not resume where its checkpoint says: the broker no longer has the
    /// records there (retention deleted them, or the topic was recreated).
    #[error(
        "partition {partition} of {topic} should resume at offset {expected} but the broker delivered \
         offset {delivered} first ({detail}); records would be skipped or read twice, so the job stops. \
         Restore an older savepoint, or set kafka.on_data_loss = \"continue\" to accept it"
    )]
    DataLoss {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// Where the checkpoint says it resumes.
        expected: u64,
        /// The first offset the broker delivered.
        delivered: u64,
        /// What the broker's log start says about the gap.
        detail: String,
    },
}

impl KafkaError {
    pub(crate) fn client(operation: &'static str, source: rdkafka::error::KafkaError) -> Self {
        KafkaError::Client { operation, source }
    }

    /// A bad setting or lost data is the user's to decide; the rest come from the brokers or the
    /// network.
    pub fn domain(&self) -> ErrorDomain {
        match self {
            KafkaError::Config { .. } | KafkaError::DataLoss { .. } => ErrorDomain::User,
            KafkaError::Client { .. } | KafkaError::Delivery(_) => ErrorDomain::External,
        }
    }

    /// A bad setting or lost data fails the same way again; client and delivery failures may pass.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            KafkaError::Config { .. } | KafkaError::DataLoss { .. } => RetryHint::NoRetry,
            KafkaError::Client { .. } | KafkaError::Delivery(_) => RetryHint::WithBackoff,
        }
    }
}

impl ConnectorError for KafkaError {
    fn domain(&self) -> ErrorDomain {
        KafkaError::domain(self)
    }

    fn retry_hint(&self) -> RetryHint {
        KafkaError::retry_hint(self)
    }
}

/// Kept whole: `SourceError::connector_error::<KafkaError>()` gives it back.
impl From<KafkaError> for SourceError {
    fn from(e: KafkaError) -> Self {
        SourceError::connector(e)
    }
}

/// Kept whole: `SinkError::connector_error::<KafkaError>()` gives it back.
impl From<KafkaError> for SinkError {
    fn from(e: KafkaError) -> Self {
        SinkError::connector(e)
    }
}
