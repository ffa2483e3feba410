//! Topic administration the pipeline, the demo and the tests need.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Properties;
use crate::error::KafkaError;

/// Creates `topic` with `partitions` partitions unless it exists (an existing topic is left as is).
pub async fn ensure_topic(
    brokers: &str,
    properties: &Properties,
    topic: &str,
    partitions: i32,
) -> Result<(), KafkaError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in &properties.0 {
        config.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|e| KafkaError::client("creating the admin client", e))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results =
        admin.create_topics([&new], &opts).await.map_err(|e| KafkaError::client("creating a topic", e))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, partitions, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(KafkaError::Config {
                    setting: format!("topic {t}"),
                    problem: format!("cannot be created: {code}"),
                });
            }
        }
    }
    Ok(())
}
