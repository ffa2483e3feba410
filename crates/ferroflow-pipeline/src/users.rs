//! The users changelog of the enrichment stage: one record per change of a user's segment, read
//! whole into a broadcast table by every instance.

use std::time::Duration;

use bytes::Bytes;
use ferroflow_core::join::{BroadcastTable, TableFeed};
use ferroflow_core::source::DecodedSource;
use ferroflow_core::time::WatermarkStrategy;
use ferroflow_core::{Key, Rejection};
use ferroflow_kafka::{Assignment, KafkaError, KafkaSource, StartOffset};
use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;

/// A user's segment from `ts` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserVersion {
    /// The user.
    pub user_id: String,
    /// From when the segment holds, ms since the epoch (epoch milliseconds or an RFC 3339
    /// date-time string, as events' `ts`).
    #[serde(deserialize_with = "crate::event::de_ts")]
    pub ts: i64,
    /// The segment (`free`, `pro`, …).
    pub segment: String,
}

impl UserVersion {
    /// Decodes one change; unknown fields are ignored.
    ///
    /// # Examples
    /// ```
    /// use bytes::Bytes;
    /// use ferroflow_pipeline::users::UserVersion;
    /// let change = Bytes::from_static(br#"{"user_id":"u1","ts":"1970-01-01T00:00:02Z","segment":"pro"}"#);
    /// assert_eq!(UserVersion::decode(&change).unwrap().ts, 2_000);
    /// assert!(UserVersion::decode(&Bytes::from_static(b"{}")).is_err());
    /// ```
    pub fn decode(bytes: &Bytes) -> Result<UserVersion, Rejection> {
        serde_json::from_slice(bytes).map_err(|e| Rejection::decode(format!("users changelog: {e}")))
    }
}

/// The users table of a pipeline with the enrichment stage, history as configured.
pub fn table(config: &PipelineConfig) -> BroadcastTable<UserVersion> {
    BroadcastTable::new("users").with_history(Duration::from_millis(config.enrichment.history_ms))
}

/// The users topic as the table's input: every partition from the start, on the `kafka`
/// section's brokers and properties, committing nothing (the table is read again on every start).
pub fn feed(
    config: &PipelineConfig,
    users: &BroadcastTable<UserVersion>,
) -> Result<TableFeed<UserVersion>, KafkaError> {
    let e = &config.enrichment;
    let mut kafka = config.kafka.clone();
    kafka.topic = e.users_topic.clone();
    kafka.assignment = Assignment::AllPartitions;
    kafka.start_offset = StartOffset::Earliest;
    kafka.commit_offsets = false;
    kafka.group_id = format!("{}-users-{}", config.kafka.group_id, config.instance());
    // A change stamped far ahead would move the table's watermark there for good (and every
    // later change would be late): refused as the events' are, by `watermarks.max_time_ahead_ms`.
    let ahead = i64::try_from(config.watermarks.max_time_ahead_ms).unwrap_or(i64::MAX);
    let decode = move |bytes: &Bytes| {
        let change = UserVersion::decode(bytes)?;
        let latest = wall_clock_ms().saturating_add(ahead);
        match ahead > 0 && change.ts > latest {
            true => Err(Rejection::new(
                ferroflow_core::DeadLetterReason::EventTimeOutOfRange,
                format!("users changelog: ts {} is more than {ahead} ms ahead of the wall clock", change.ts),
            )),
            false => Ok(change),
        }
    };
    let source = DecodedSource::new(KafkaSource::new(&kafka)?, decode);
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(e.out_of_orderness_ms))
        .with_idleness(Duration::from_millis(e.idle_timeout_ms));
    Ok(users.loaded_from(source, |u| Key::from(u.user_id.as_str()), |u| u.ts, strategy))
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
