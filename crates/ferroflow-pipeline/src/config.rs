//! The pipeline's configuration: a TOML file, then `FERROFLOW__SECTION__KEY` environment
//! variables, then command-line flags, each overriding the one before.
//!
//! Every section is `deny_unknown_fields`: a misspelt key is an error that names it, never a
//! silently ignored setting. Secrets (ClickHouse password, S3 secret key, SASL/SSL properties)
//! print as `***` in `Debug` output and are never logged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferroflow_clickhouse::ClickHouseConfig;
use ferroflow_core::checkpoint::{CheckpointStore, PartitionHandOver, S3Options};
use ferroflow_kafka::{DeadLetterTopicConfig, KafkaSourceConfig};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Version of the job's state layout (the default of `CheckpointConfig`); partitions are only
/// handed over between instances that agree on it.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// The whole pipeline configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Names this pipeline: the checkpoint job id and the prefix of ClickHouse dedup tokens.
    pub pipeline_id: String,
    /// Names this instance among the pipeline's instances in one consumer group; each keeps its
    /// checkpoints in `<checkpoints.url>/<instance_id>/`. Give every running instance its own
    /// (a pod name, a host name); the state of a partition is found by looking through every
    /// instance's folder, so a restarted instance may take a new name. Empty (the default): the
    /// host name and a hash of `state.dir`'s absolute path, unique per host and state directory
    /// and the same across restarts (see [`PipelineConfig::instance`]). Two processes started
    /// with one id fence each other: the newer one runs, the older stops.
    pub instance_id: String,
    /// The input topic and consumer group.
    pub kafka: KafkaSourceConfig,
    /// The dead-letter topic.
    pub dead_letters: DeadLetterTopicConfig,
    /// The data contract events are validated against.
    pub contract: ContractSection,
    /// Which valid events are dropped on purpose (counted as filtered).
    pub filter: FilterSection,
    /// Deduplication of producer retries.
    pub dedup: DedupSection,
    /// Event time: out-of-orderness bound and idleness.
    pub watermarks: WatermarkSection,
    /// The aggregation window.
    pub window: WindowSection,
    /// The users' segment at each event's time, added to the window key (off by default).
    pub enrichment: EnrichmentSection,
    /// The result table.
    pub clickhouse: ClickHouseConfig,
    /// Where results go.
    pub output: OutputSection,
    /// Local state.
    pub state: StateSection,
    /// Threads that process the partitions.
    pub processing: ProcessingSection,
    /// Checkpoints.
    pub checkpoints: CheckpointSection,
    /// The metrics and health endpoint.
    pub http: HttpSection,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            pipeline_id: "events-per-minute".into(),
            instance_id: String::new(),
            kafka: KafkaSourceConfig::default(),
            dead_letters: DeadLetterTopicConfig::default(),
            contract: ContractSection::default(),
            filter: FilterSection::default(),
            dedup: DedupSection::default(),
            watermarks: WatermarkSection::default(),
            window: WindowSection::default(),
            enrichment: EnrichmentSection::default(),
            clickhouse: ClickHouseConfig::default(),
            output: OutputSection::default(),
            state: StateSection::default(),
            processing: ProcessingSection::default(),
            checkpoints: CheckpointSection::default(),
            http: HttpSection::default(),
        }
    }
}

/// The data contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContractSection {
    /// JSON Schema file, compiled once at start-up (a new contract version is a new file).
    pub path: PathBuf,
}

impl Default for ContractSection {
    fn default() -> Self {
        Self { path: PathBuf::from("contracts/events.v1.json") }
    }
}

/// Valid events dropped on purpose, e.g. synthetic test traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSection {
    /// Events whose `user_id` starts with one of these prefixes are dropped (counted as filtered).
    pub drop_user_id_prefixes: Vec<String>,
    /// Events of these `event_type`s are dropped (counted as filtered).
    pub drop_event_types: Vec<String>,
}

impl Default for FilterSection {
    fn default() -> Self {
        Self { drop_user_id_prefixes: vec!["test-".into()], drop_event_types: Vec::new() }
    }
}

/// Deduplication by `event_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupSection {
    /// How long (event time, ms) an `event_id` is remembered; a resend within it is dropped and
    /// counted as deduplicated. At least `window.size_ms + window.allowed_lateness_ms +
    /// watermarks.out_of_orderness_ms`: a resend arriving after its id was forgotten is then late
    /// for its window and can never be counted twice, whatever the batch boundaries of a replay.
    ///
    /// Ids are remembered per Kafka partition: a resend must land on the partition of its
    /// original (the topic keyed by `user_id` or `event_id`, as producers' retries do), see
    /// README "Delivery guarantees".
    pub ttl_ms: u64,
}

impl Default for DedupSection {
    fn default() -> Self {
        Self { ttl_ms: 10 * 60_000 }
    }
}

/// Watermark generation, one watermark per Kafka partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatermarkSection {
    /// Bounded out-of-orderness: how far behind the newest event time an event may arrive and
    /// still be on time, in ms.
    pub out_of_orderness_ms: u64,
    /// A partition with no records for this long stops holding the watermark back; 0 turns
    /// idleness detection off. Measured on the Kafka source's clock, which stands still while
    /// the job is blocked (a ClickHouse outage, a slow checkpoint), and a partition the source has
    /// not caught up with never counts as idle.
    pub idle_timeout_ms: u64,
    /// Events stamped more than this far ahead of the wall clock (ms) become
    /// `event_time_out_of_range` dead letters instead of moving their partition's watermark
    /// there for good; 0 turns the bound off.
    pub max_time_ahead_ms: u64,
}

impl Default for WatermarkSection {
    fn default() -> Self {
        Self { out_of_orderness_ms: 5_000, idle_timeout_ms: 30_000, max_time_ahead_ms: 3_600_000 }
    }
}

/// Point-in-time enrichment: each event gets its user's segment as it was at the event's time,
/// from a changelog topic every instance reads whole (a broadcast table), and the window key
/// becomes (key, segment). Off by default: the job is then exactly the one without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichmentSection {
    /// Turns the stage on.
    pub enabled: bool,
    /// The users changelog: JSON `{"user_id": "u1", "ts": <ms or RFC 3339>, "segment": "pro"}`,
    /// one record per change (a compacted topic keyed by user), read from its start by every
    /// instance on every start, on the `kafka` section's brokers and properties.
    pub users_topic: String,
    /// How far behind the newest change time a change may arrive, ms.
    pub out_of_orderness_ms: u64,
    /// A users partition silent this long stops holding events back (required: the users topic
    /// is quiet most of the time, and its watermark holds the job's), ms.
    pub idle_timeout_ms: u64,
    /// How far below the slowest partition's watermark old versions are kept, ms.
    pub history_ms: u64,
    /// The segment of an event whose user had none at its time.
    pub unknown_segment: String,
}

impl Default for EnrichmentSection {
    fn default() -> Self {
        Self {
            enabled: false,
            users_topic: "users".into(),
            out_of_orderness_ms: 5_000,
            idle_timeout_ms: 10_000,
            history_ms: 3_600_000,
            unknown_segment: "unknown".into(),
        }
    }
}

/// What events are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyField {
    /// Group by `event_type` (default).
    EventType,
    /// Group by `user_id`.
    UserId,
}

/// The tumbling window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowSection {
    /// Window size in ms (default one minute): whole seconds, since the table stores window
    /// starts in seconds.
    pub size_ms: u64,
    /// How long after a window closes late events still update it, in ms; later ones become
    /// `late_event` dead letters.
    pub allowed_lateness_ms: u64,
    /// The grouping field.
    pub key: KeyField,
}

impl Default for WindowSection {
    fn default() -> Self {
        Self { size_ms: 60_000, allowed_lateness_ms: 120_000, key: KeyField::EventType }
    }
}

/// Where window rows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// ClickHouse (the `[clickhouse]` section).
    Clickhouse,
    /// A JSON-lines file (`output.file`), for the embedded demo.
    File,
    /// ClickHouse if it answers at start-up, otherwise the file.
    Auto,
}

/// The result destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    /// `clickhouse`, `file` or `auto`.
    pub kind: OutputKind,
    /// The JSON-lines file for `file` (and `auto` without ClickHouse).
    pub file: PathBuf,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self { kind: OutputKind::Clickhouse, file: PathBuf::from("ferroflow-windows.jsonl") }
    }
}

/// Which state backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// RocksDB on local disk (default).
    Rocksdb,
    /// In memory, snapshotted whole at checkpoints.
    Memory,
}

/// Local state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSection {
    /// `rocksdb` or `memory`.
    pub backend: StateKind,
    /// Local directory for RocksDB and checkpoint scratch files.
    pub dir: PathBuf,
    /// Memory that state may hold, in MB, before it spills to a scratch store in `dir/spill`
    /// (0, the default: unbounded). Dedup's ids use it; window state does not yet.
    pub memory_budget_mb: u64,
}

impl Default for StateSection {
    fn default() -> Self {
        Self { backend: StateKind::Rocksdb, dir: PathBuf::from("ferroflow-state"), memory_budget_mb: 0 }
    }
}

/// Threads that process the partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessingSection {
    /// Worker threads that run the partitions' tasks (decode, contract, dedup, windows): each
    /// partition runs on one of them. 0 (the default): the cores this process may use (CPU
    /// affinity and a container's CPU quota count).
    pub workers: usize,
}

impl ProcessingSection {
    /// The worker threads to start.
    pub fn workers(&self) -> usize {
        match self.workers {
            0 => ferroflow_core::runtime::available_cores(),
            n => n,
        }
    }
}

/// Checkpoints.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Store URL: `file:///dir` or `s3://bucket/prefix`.
    pub url: String,
    /// Time between checkpoints, ms. Results reach ClickHouse at least this often.
    pub interval_ms: u64,
    /// Checkpoints kept (savepoints are never deleted).
    pub retain: usize,
    /// S3 endpoint (MinIO, Garage); empty for AWS.
    pub s3_endpoint: Option<String>,
    /// S3 region.
    pub s3_region: Option<String>,
    /// S3 access key id.
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key; never logged.
    pub s3_secret_access_key: Option<String>,
}

impl std::fmt::Debug for CheckpointSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSection")
            .field("url", &self.url)
            .field("interval_ms", &self.interval_ms)
            .field("retain", &self.retain)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field("s3_secret_access_key", &self.s3_secret_access_key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            url: "file:///tmp/ferroflow-checkpoints".into(),
            interval_ms: 5_000,
            retain: 3,
            s3_endpoint: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
        }
    }
}

impl CheckpointSection {
    /// The object-store settings.
    pub fn s3(&self) -> S3Options {
        S3Options::path_style(
            self.s3_endpoint.clone(),
            self.s3_region.clone(),
            self.s3_access_key_id.clone(),
            self.s3_secret_access_key.clone(),
        )
    }
}

/// The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Listen address (`127.0.0.1:0` picks a free port, printed at start-up).
    pub listen: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9464".into() }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigLoadError {
    /// The file, an environment variable or a flag holds a bad or unknown key or value.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ConfigLoadError {
    /// Always [`ferroflow_core::ErrorDomain::User`]: the configuration must be fixed.
    pub fn domain(&self) -> ferroflow_core::ErrorDomain {
        ferroflow_core::ErrorDomain::User
    }

    /// Always [`ferroflow_core::RetryHint::NoRetry`].
    pub fn retry_hint(&self) -> ferroflow_core::RetryHint {
        ferroflow_core::RetryHint::NoRetry
    }
}

impl PipelineConfig {
    /// Loads `file` (optional), then `FERROFLOW__…` environment variables, then `overrides`
    /// (command-line flags, as a partial document of the same shape), and validates the result.
    pub fn load(file: Option<&Path>, overrides: &serde_json::Value) -> Result<Self, ConfigLoadError> {
        let mut fig = Figment::from(Serialized::defaults(PipelineConfig::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigLoadError::Invalid(format!("config file {} does not exist", f.display())));
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig.merge(Env::prefixed("FERROFLOW__").split("__").lowercase(true));
        if overrides.as_object().is_some_and(|o| !o.is_empty()) {
            fig = fig.merge(Serialized::defaults(overrides));
        }
        let config: PipelineConfig = fig.extract().map_err(|e| ConfigLoadError::Invalid(describe(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), ConfigLoadError> {
        let bad = |s: &str| Err(ConfigLoadError::Invalid(s.to_string()));
        self.kafka.validate().map_err(|e| ConfigLoadError::Invalid(e.to_string()))?;
        self.dead_letters.validate().map_err(|e| ConfigLoadError::Invalid(e.to_string()))?;
        if self.pipeline_id.is_empty()
            || !self.pipeline_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad("pipeline_id must be non-empty and use only letters, digits, '-' or '_'");
        }
        if !self.instance_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return bad(
                "instance_id must use only letters, digits, '-', '_' or '.' (empty: derived from the host name)",
            );
        }
        if self.window.size_ms == 0 || !self.window.size_ms.is_multiple_of(1000) {
            return bad(
                "window.size_ms must be a positive whole number of seconds (a multiple of 1000): the result \
                 table stores window starts in seconds, so shorter or fractional windows would share rows",
            );
        }
        let needed = self
            .window
            .size_ms
            .saturating_add(self.window.allowed_lateness_ms)
            .saturating_add(self.watermarks.out_of_orderness_ms);
        if self.dedup.ttl_ms < needed {
            return Err(ConfigLoadError::Invalid(format!(
                "dedup.ttl_ms = {} is shorter than window.size_ms + window.allowed_lateness_ms + \
                 watermarks.out_of_orderness_ms = {needed}: a resend arriving after its id is forgotten could \
                 still be counted in its window, differently on every replay; raise dedup.ttl_ms to at least {needed}",
                self.dedup.ttl_ms
            )));
        }
        if self.checkpoints.interval_ms == 0 {
            return bad("checkpoints.interval_ms must be greater than 0");
        }
        if self.kafka.topic == self.dead_letters.topic {
            return bad("dead_letters.topic must differ from kafka.topic");
        }
        let e = &self.enrichment;
        if e.enabled {
            if e.users_topic.is_empty()
                || e.users_topic == self.kafka.topic
                || e.users_topic == self.dead_letters.topic
            {
                return bad(
                    "enrichment.users_topic must be set and differ from kafka.topic and dead_letters.topic",
                );
            }
            if e.unknown_segment.is_empty() {
                return bad(
                    "enrichment.unknown_segment must not be empty: it would read as the job without the stage",
                );
            }
            let needed = self
                .window
                .size_ms
                .saturating_add(self.window.allowed_lateness_ms)
                .saturating_add(self.watermarks.out_of_orderness_ms);
            if e.history_ms < needed {
                return Err(ConfigLoadError::Invalid(format!(
                    "enrichment.history_ms = {} is shorter than window.size_ms + window.allowed_lateness_ms + \
                     watermarks.out_of_orderness_ms = {needed}: a late event the window still takes could find its \
                     user's segment of that time gone; raise it to at least {needed}",
                    e.history_ms
                )));
            }
            if e.idle_timeout_ms == 0 {
                return bad(
                    "enrichment.idle_timeout_ms must be greater than 0: the users topic is quiet most of the time, \
                     and without idleness its watermark would hold every window back",
                );
            }
        }
        Ok(())
    }

    /// Where partition state is found and handed over: every instance's folder under
    /// `checkpoints.url`, this instance writing to `<instance>/`.
    pub fn hand_over(&self) -> Result<PartitionHandOver, ferroflow_core::checkpoint::CheckpointError> {
        let base = CheckpointStore::from_url(&self.checkpoints.url, &self.checkpoints.s3())?;
        Ok(PartitionHandOver::new(base, self.instance(), STATE_FORMAT_VERSION))
    }

    /// This instance's id: `instance_id`, or when it is empty `<host name>-<8 hex digits>` from
    /// the absolute path of `state.dir`. Unique per host and state directory (two instances on
    /// one host need their own state directories anyway) and the same across restarts on the
    /// same host, so an unset id never makes two instances share a checkpoint folder.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_pipeline::config::PipelineConfig;
    /// let mut a = PipelineConfig::default();
    /// a.state.dir = "/var/lib/ferroflow/a".into();
    /// let mut b = a.clone();
    /// b.state.dir = "/var/lib/ferroflow/b".into();
    /// assert_ne!(a.instance(), b.instance());
    /// assert_eq!(a.instance(), a.clone().instance(), "stable");
    /// a.instance_id = "web-1".into();
    /// assert_eq!(a.instance(), "web-1");
    /// ```
    pub fn instance(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        let dir = std::path::absolute(&self.state.dir).unwrap_or_else(|_| self.state.dir.clone());
        let hash = crc32fast::hash(dir.to_string_lossy().as_bytes());
        format!("{}-{hash:08x}", ferroflow_core::checkpoint::host_name())
    }

    /// The checkpoint interval.
    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoints.interval_ms)
    }
}

/// Figment's error with every problem and the key it concerns.
fn describe(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|one| {
            let path = one.path.join(".");
            if path.is_empty() { one.to_string() } else { format!("{path}: {one}") }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load_toml(text: &str) -> Result<PipelineConfig, ConfigLoadError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        PipelineConfig::load(Some(&p), &serde_json::json!({}))
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let e = load_toml("[kafka]\nbrokerz = \"x:1\"\n").unwrap_err().to_string();
        assert!(e.contains("brokerz"), "{e}");
        let e = load_toml("[windw]\nsize_ms = 1\n").unwrap_err().to_string();
        assert!(e.contains("windw"), "{e}");
    }

    #[test]
    fn file_then_flags_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "pipeline_id = \"p1\"\n[kafka]\ntopic = \"in\"\n[window]\nsize_ms = 30000\n")
            .unwrap();
        let c = PipelineConfig::load(Some(&p), &serde_json::json!({"kafka": {"topic": "flag"}})).unwrap();
        assert_eq!(c.pipeline_id, "p1");
        assert_eq!(c.window.size_ms, 30_000);
        assert_eq!(c.kafka.topic, "flag");
        assert_eq!(c.kafka.group_id, "ferroflow", "untouched keys keep their defaults");
    }

    #[test]
    fn secrets_do_not_appear_in_debug_output() {
        let c = load_toml("[checkpoints]\ns3_secret_access_key = \"s3cr3t\"\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n").unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("s3cr3t") && !text.contains("hunter2"), "{text}");
    }

    #[test]
    fn the_shipped_configuration_files_load() {
        for f in ["pipeline.example.toml", "compose-pipeline.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config").join(f);
            let c = PipelineConfig::load(Some(&path), &serde_json::json!({}));
            assert!(c.is_ok(), "{f}: {:?}", c.err());
        }
    }

    #[test]
    fn a_window_that_is_not_whole_seconds_is_refused() {
        // The table stores window starts in seconds: 1.5 s windows would share rows.
        let e = load_toml("[window]\nsize_ms = 1500\n").unwrap_err().to_string();
        assert!(e.contains("window.size_ms") && e.contains("multiple of 1000"), "{e}");
        assert!(load_toml("[window]\nsize_ms = 2000\n").is_ok());
    }

    #[test]
    fn a_dedup_ttl_shorter_than_a_window_and_its_lateness_is_refused() {
        let e = load_toml("[dedup]\nttl_ms = 60000\n").unwrap_err().to_string();
        // 60 000 + 120 000 + 5 000 with the default window, lateness and out-of-orderness.
        assert!(e.contains("dedup.ttl_ms") && e.contains("185000"), "{e}");
        assert!(load_toml("[dedup]\nttl_ms = 185000\n").is_ok());
    }

    #[test]
    fn an_unset_instance_id_is_derived_and_differs_per_state_directory() {
        let a = load_toml("[state]\ndir = \"/srv/a\"\n").unwrap();
        let b = load_toml("[state]\ndir = \"/srv/b\"\n").unwrap();
        assert!(a.instance_id.is_empty());
        assert_ne!(a.instance(), b.instance(), "two instances on one host never share a folder");
        assert!(a.instance().starts_with(&ferroflow_core::checkpoint::host_name()));
        let named = load_toml("instance_id = \"web-1\"\n").unwrap();
        assert_eq!(named.instance(), "web-1");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let e = load_toml("[window]\nsize_ms = 0\n").unwrap_err().to_string();
        assert!(e.contains("window.size_ms"), "{e}");
        let e = load_toml("[dead_letters]\ntopic = \"events\"\n").unwrap_err().to_string();
        assert!(e.contains("dead_letters.topic"), "{e}");
    }
}
