//! The reference job: Kafka → decode → data contract → filter → dedup → event time → key →
//! one-minute tumbling windows → ClickHouse, with dead letters to a Kafka topic.
//!
//! | step | what leaves the stream | where it goes |
//! |------|------------------------|---------------|
//! | decode | bytes that are not JSON | `decode_error` dead letter |
//! | contract | events breaking the JSON Schema | `contract_violation` dead letter, counted per rule |
//! | filter | configured test traffic | counted as filtered |
//! | dedup | resends of an `event_id` within the TTL | counted as deduplicated |
//! | window | events later than the allowed lateness | `late_event` dead letter |
//!
//! Every other event is aggregated; `in = windowed + filtered + deduplicated + dead-lettered`.
//!
//! Past 500 lines because it is the whole job in one place: its rows, its sinks, how it is
//! connected and how it runs, each short; reading the job should not need five files.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferroflow_clickhouse::{ClickHouseSink, TableRow};
use ferroflow_core::checkpoint::{CheckpointConfig, CheckpointStore};
use ferroflow_core::join::{BroadcastJoin, BroadcastTable, Either, TableFeed};
use ferroflow_core::sink::{JsonLinesSink, Sink};
use ferroflow_core::source::Source;
use ferroflow_core::time::WatermarkStrategy;
use ferroflow_core::window::{Stats, StatsValue, WindowResult, WindowSpec};
use ferroflow_core::{
    DeadLetter, DeadLetterReason, JobReport, Key, PartitionId, Runner, SinkError, SourcePosition, Stream,
};
use ferroflow_kafka::{KafkaDeadLetterSink, KafkaSource, SourceStats};
use serde::{Deserialize, Serialize};

use crate::config::{KeyField, OutputKind, PipelineConfig, StateKind};
use crate::contract::{Contract, ContractStats};
pub use crate::distinct::DistinctUsers;
use crate::event::Event;
use crate::users::UserVersion;

/// One row of the result table: one key's aggregates for one window, over one Kafka partition.
///
/// Each partition is aggregated by its own task (which is what lets partitions move between
/// instances with their state); [`WindowTotal`] adds the partitions up, as readers of the table
/// do with [`WindowTotal::query`].
///
/// `version` orders the rows ClickHouse's `ReplacingMergeTree` keeps: `2 × events + is_final`.
/// A window's contents only grow (late events add to them), so the row with the most events is
/// the most complete one, whichever run and revision wrote it; replays after a crash may number
/// revisions differently, but never produce a fuller row than the real final one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct WindowRow {
    /// The Kafka partition the events came from.
    pub partition: u32,
    /// The group key (`event_type` by default).
    pub key: String,
    /// The users' segment at the events' time (the enrichment stage); empty without it.
    pub segment: String,
    /// Window start, seconds since the epoch (`DateTime`).
    pub window_start: u32,
    /// Window end (exclusive), seconds since the epoch.
    pub window_end: u32,
    /// Events in the window.
    pub events: u64,
    /// Sum of `amount`.
    pub amount_sum: f64,
    /// Smallest `amount`.
    pub amount_min: f64,
    /// Largest `amount`.
    pub amount_max: f64,
    /// Distinct `user_id`s (exact).
    pub distinct_users: u64,
    /// Emission number of this window (0 first, +1 per late update or final marker).
    pub revision: u32,
    /// 1 when the window can no longer change.
    pub is_final: u8,
    /// `2 × events + is_final`: the ReplacingMergeTree version.
    pub version: u64,
}

impl TableRow for WindowRow {
    fn table_definition() -> &'static str {
        "(partition UInt32, key String, segment String DEFAULT '', window_start DateTime, window_end DateTime, \
         events UInt64, amount_sum Float64, amount_min Float64, amount_max Float64, distinct_users UInt64, \
         revision UInt32, is_final UInt8, version UInt64) ENGINE = ReplacingMergeTree(version) \
         PARTITION BY toYYYYMM(window_start) ORDER BY (key, segment, window_start, partition)"
    }

    fn columns() -> &'static [&'static str] {
        &[
            "partition",
            "key",
            "segment",
            "window_start",
            "window_end",
            "events",
            "amount_sum",
            "amount_min",
            "amount_max",
            "distinct_users",
            "revision",
            "is_final",
            "version",
        ]
    }

    /// Tables created before the enrichment stage: their rows have no segment (the empty one).
    /// Their sorting key lacks it, so the enrichment stage refuses them (see [`prepare`]).
    fn added_columns() -> &'static [(&'static str, &'static str)] {
        &[("segment", "segment String DEFAULT '' AFTER key")]
    }
}

impl WindowRow {
    /// Converts a window result of `partition`'s task; `segmented`: its key holds a segment too
    /// (see [`segmented_key`]).
    pub fn from_result(partition: PartitionId, r: &WindowResult<(StatsValue, u64)>, segmented: bool) -> Self {
        let (stats, users) = &r.value;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let (key, segment) = match segmented {
            true => {
                let (key, segment) = split_segmented_key(r.key.as_bytes());
                (text(key), text(segment))
            }
            false => (text(r.key.as_bytes()), String::new()),
        };
        Self {
            partition,
            key,
            segment,
            window_start: (r.window_start.div_euclid(1000)).clamp(0, i64::from(u32::MAX)) as u32,
            window_end: (r.window_end.div_euclid(1000)).clamp(0, i64::from(u32::MAX)) as u32,
            events: stats.count,
            amount_sum: stats.sum,
            amount_min: stats.min,
            amount_max: stats.max,
            distinct_users: *users,
            revision: r.revision,
            is_final: u8::from(r.is_final),
            version: stats.count * 2 + u64::from(r.is_final),
        }
    }
}

/// The window key of an enriched event: its group key and its segment, the first's length in
/// front (either may hold any byte, a separator could not be told from the data).
///
/// # Examples
/// ```
/// use ferroflow_pipeline::job::{segmented_key, split_segmented_key};
/// let key = segmented_key("purchase", "pro");
/// assert_eq!(split_segmented_key(key.as_bytes()), (&b"purchase"[..], &b"pro"[..]));
/// ```
pub fn segmented_key(key: &str, segment: &str) -> Key {
    let mut bytes = Vec::with_capacity(4 + key.len() + segment.len());
    bytes.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend_from_slice(segment.as_bytes());
    Key::from_bytes(&bytes)
}

/// The group key and the segment of a [`segmented_key`] (a key too short for its length prefix
/// is taken whole as the group key).
pub fn split_segmented_key(bytes: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = bytes.split_first_chunk::<4>() else { return (bytes, &[]) };
    let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX).min(rest.len());
    rest.split_at(len)
}

/// One key's aggregates for one window over every partition: what the result table serves.
///
/// Counts and sums add up; minimum and maximum combine. `distinct_users` adds up the partitions'
/// exact counts, which is exact when each user's events go to one partition — a topic keyed by
/// `user_id`, as producers usually write it (and the generator does); otherwise a user active in
/// two partitions counts twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct WindowTotal {
    /// The group key.
    pub key: String,
    /// The users' segment (empty without the enrichment stage).
    pub segment: String,
    /// Window start, seconds since the epoch.
    pub window_start: u32,
    /// Window end (exclusive), seconds since the epoch.
    pub window_end: u32,
    /// Events in the window.
    pub events: u64,
    /// Sum of `amount`.
    pub amount_sum: f64,
    /// Smallest `amount`.
    pub amount_min: f64,
    /// Largest `amount`.
    pub amount_max: f64,
    /// Distinct `user_id`s (summed over partitions).
    pub distinct_users: u64,
    /// Partitions with events in the window.
    pub partitions: u64,
    /// 1 when every partition's row is final.
    pub is_final: u8,
}

impl WindowTotal {
    /// The query that reads the table's totals, one row per key, segment and window, in this
    /// struct's field order (`FINAL` keeps each partition's newest row first).
    pub fn query(table: &str) -> String {
        format!(
            "SELECT key, segment, toUInt32(window_start), toUInt32(any(window_end)), sum(events), sum(amount_sum), \
             min(amount_min), max(amount_max), sum(distinct_users), count(), min(is_final) \
             FROM {table} FINAL GROUP BY key, segment, window_start"
        )
    }

    /// Adds up rows (keeping each partition's highest `version`, as `FINAL` does), by (key,
    /// segment, window start).
    pub fn of_rows<'a>(
        rows: impl IntoIterator<Item = &'a WindowRow>,
    ) -> BTreeMap<(String, String, u32), WindowTotal> {
        let mut newest: BTreeMap<(String, String, u32, u32), &WindowRow> = BTreeMap::new();
        for r in rows {
            let e =
                newest.entry((r.key.clone(), r.segment.clone(), r.window_start, r.partition)).or_insert(r);
            if r.version >= e.version {
                *e = r;
            }
        }
        let mut out: BTreeMap<(String, String, u32), WindowTotal> = BTreeMap::new();
        for ((key, segment, start, _), r) in newest {
            let t = out.entry((key.clone(), segment.clone(), start)).or_insert_with(|| WindowTotal {
                key,
                segment,
                window_start: start,
                window_end: r.window_end,
                events: 0,
                amount_sum: 0.0,
                amount_min: f64::INFINITY,
                amount_max: f64::NEG_INFINITY,
                distinct_users: 0,
                partitions: 0,
                is_final: 1,
            });
            t.events += r.events;
            t.amount_sum += r.amount_sum;
            t.amount_min = t.amount_min.min(r.amount_min);
            t.amount_max = t.amount_max.max(r.amount_max);
            t.distinct_users += r.distinct_users;
            t.partitions += 1;
            t.is_final = t.is_final.min(r.is_final);
        }
        out
    }
}

fn event_id(e: &Event) -> &str {
    &e.event_id
}

/// What every partition's task is built from: the configuration, checked once.
#[derive(Clone)]
pub struct TaskSpec {
    contract: Arc<Contract>,
    contract_stats: ContractStats,
    drop_prefixes: Vec<String>,
    drop_types: BTreeSet<String>,
    key_field: KeyField,
    watermarks: WatermarkStrategy,
    window: WindowSpec,
    dedup_ttl: Duration,
    /// The enrichment stage's table and the segment of users without one.
    users: Option<(BroadcastTable<UserVersion>, Arc<str>)>,
}

impl std::fmt::Debug for TaskSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSpec")
            .field("window", &self.window)
            .field("watermarks", &self.watermarks)
            .finish()
    }
}

impl TaskSpec {
    /// Checks the configuration's window and watermark settings.
    pub fn new(
        config: &PipelineConfig,
        contract: Arc<Contract>,
        contract_stats: ContractStats,
    ) -> Result<Self, ferroflow_core::ConfigError> {
        let mut watermarks = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(
            config.watermarks.out_of_orderness_ms,
        ));
        if config.watermarks.idle_timeout_ms > 0 {
            watermarks = watermarks.with_idleness(Duration::from_millis(config.watermarks.idle_timeout_ms));
        }
        if config.watermarks.max_time_ahead_ms > 0 {
            watermarks =
                watermarks.with_max_time_ahead(Duration::from_millis(config.watermarks.max_time_ahead_ms));
        }
        let window = WindowSpec::tumbling(Duration::from_millis(config.window.size_ms))?
            .with_allowed_lateness(Duration::from_millis(config.window.allowed_lateness_ms));
        Ok(Self {
            contract,
            contract_stats,
            drop_prefixes: config.filter.drop_user_id_prefixes.clone(),
            drop_types: config.filter.drop_event_types.iter().cloned().collect(),
            key_field: config.window.key,
            watermarks,
            window,
            dedup_ttl: Duration::from_millis(config.dedup.ttl_ms),
            users: None,
        })
    }

    /// Adds the enrichment stage: events get their user's segment from `users` (fed by
    /// [`crate::users::feed`] gating the job's source), and the window key becomes (key, segment).
    pub fn with_users(mut self, users: BroadcastTable<UserVersion>, unknown_segment: &str) -> Self {
        self.users = Some((users, Arc::from(unknown_segment)));
        self
    }

    /// The operator chain of `partition`'s task.
    pub fn stream(
        &self,
        partition: PartitionId,
    ) -> impl ferroflow_core::operator::IntoOperator<Op: ferroflow_core::Operator<In = Bytes, Out = WindowRow>>
    + use<> {
        let (contract, contract_stats) = (Arc::clone(&self.contract), self.contract_stats.clone());
        let (drop_prefixes, drop_types) = (self.drop_prefixes.clone(), self.drop_types.clone());
        let key_field = self.key_field;
        let valid = Stream::<Bytes>::new()
            .try_map(move |b: &Bytes| Event::decode_checked(b, &contract, &contract_stats))
            .filter(move |e: &Event| {
                !drop_types.contains(&e.event_type)
                    && !drop_prefixes.iter().any(|p| e.user_id.starts_with(p.as_str()))
            })
            .assign_timestamps(|e: &Event| e.ts, self.watermarks)
            // After event time is set: ids are forgotten by event time, deterministically on replay.
            .dedup_by(self.dedup_ttl, event_id)
            .id("dedup-event-id");
        fn group(key_field: KeyField, e: &Event) -> &str {
            match key_field {
                KeyField::EventType => e.event_type.as_str(),
                KeyField::UserId => e.user_id.as_str(),
            }
        }
        let aggregates = || (Stats::of(|e: &Event| e.amount), DistinctUsers);
        match &self.users {
            None => Either::Left(
                valid
                    .key_by(move |e: &Event| Key::from(group(key_field, e)))
                    .window(self.window, aggregates())
                    .id("windows")
                    .map(move |r: WindowResult<(StatsValue, u64)>| {
                        WindowRow::from_result(partition, &r, false)
                    })
                    .into_operator(),
            ),
            Some((users, unknown)) => {
                let unknown = Arc::clone(unknown);
                let window = self.window;
                let with_segment =
                    BroadcastJoin::left_outer(users, move |e: &Event, u: Option<&UserVersion>| {
                        let key =
                            segmented_key(group(key_field, e), u.map_or(&*unknown, |u| u.segment.as_str()));
                        (e.clone(), key)
                    })
                    .with_input_name("events")
                    // The window's rule, applied where the event's bytes and counts are at hand.
                    .late_when(move |t, w| window.is_late(t, w));
                Either::Right(
                    valid
                        .key_by(|e: &Event| Key::from(e.user_id.as_str()))
                        .broadcast_join(with_segment)
                        .id("users-segment")
                        .key_by(|(_, key): &(Event, Key)| key.clone())
                        .map(|(e, _): (Event, Key)| e)
                        .window(self.window, aggregates())
                        // Its own id: a checkpoint of the job without the stage holds windows by
                        // plain keys, which must not be read as keys with a segment.
                        .id("windows-by-segment")
                        .map(move |r: WindowResult<(StatsValue, u64)>| {
                            WindowRow::from_result(partition, &r, true)
                        })
                        .into_operator(),
                )
            }
        }
    }
}

/// Where window rows go: ClickHouse, or a JSON-lines file (the demo without ClickHouse).
#[derive(Debug)]
pub enum ResultTarget {
    /// The ClickHouse table.
    ClickHouse(Box<ClickHouseSink<WindowRow>>),
    /// A JSON-lines file.
    File(JsonLinesSink),
}

/// The newest row of every window of every partition a run emitted (highest `version`), by
/// (key, segment, window start, partition), kept by the demo to show and check its results.
pub type ResultTap = Arc<Mutex<BTreeMap<(String, String, u32, u32), WindowRow>>>;

/// Rows ClickHouse refused, as `sink_rejected` dead letters waiting to be produced (filled by
/// the sink's rejection callback, drained by [`ResultSink`] after every call into the sink).
pub type RejectedRows = Arc<Mutex<Vec<DeadLetter>>>;

/// The job's result sink: a target plus an optional tap, and the producer of `sink_rejected`
/// dead letters.
///
/// Refused rows are produced after each call into the target and flushed with it: a checkpoint
/// barrier completes only once they are acknowledged (at-least-once, like every other dead
/// letter), and at most one call's refusals wait in memory.
#[derive(Debug)]
pub struct ResultSink {
    target: ResultTarget,
    tap: Option<ResultTap>,
    rejected: RejectedRows,
    rejected_sink: KafkaDeadLetterSink,
}

impl ResultSink {
    /// Produces the rows the target refused since the last call.
    async fn produce_rejected(&mut self) -> Result<(), SinkError> {
        let refused =
            std::mem::take(&mut *self.rejected.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if refused.is_empty() {
            return Ok(());
        }
        self.rejected_sink.write_batch(refused).await
    }
}

impl Sink<WindowRow> for ResultSink {
    async fn write_batch(&mut self, batch: Vec<WindowRow>) -> Result<(), SinkError> {
        if let Some(tap) = &self.tap
            && let Ok(mut t) = tap.lock()
        {
            for r in &batch {
                let key = (r.key.clone(), r.segment.clone(), r.window_start, r.partition);
                let e = t.entry(key).or_insert_with(|| r.clone());
                if r.version >= e.version {
                    *e = r.clone();
                }
            }
        }
        match &mut self.target {
            ResultTarget::ClickHouse(s) => s.write_batch(batch).await?,
            ResultTarget::File(s) => s.write_batch(batch).await?,
        }
        self.produce_rejected().await
    }
    async fn flush(&mut self) -> Result<(), SinkError> {
        match &mut self.target {
            ResultTarget::ClickHouse(s) => s.flush().await?,
            ResultTarget::File(s) => Sink::<WindowRow>::flush(s).await?,
        }
        self.produce_rejected().await?;
        self.rejected_sink.flush().await
    }
    async fn on_idle(&mut self) -> Result<(), SinkError> {
        match &mut self.target {
            ResultTarget::ClickHouse(s) => s.on_idle().await?,
            ResultTarget::File(s) => Sink::<WindowRow>::on_idle(s).await?,
        }
        self.produce_rejected().await
    }
    fn begin_epoch(&mut self, epoch: u64) {
        match &mut self.target {
            ResultTarget::ClickHouse(s) => s.begin_epoch(epoch),
            ResultTarget::File(s) => Sink::<WindowRow>::begin_epoch(s, epoch),
        }
    }
}

/// Result rows carry this partition in their dead letters (they come from windows, not from one
/// source record); the offset is the window start in ms.
pub const RESULT_ROW_PARTITION: PartitionId = PartitionId::MAX;

/// Everything a running job exposes for metrics and the demo's summary.
#[derive(Debug, Clone)]
pub struct JobHandles {
    /// Kafka source counters.
    pub kafka: SourceStats,
    /// Contract violations by rule.
    pub contract: ContractStats,
    /// The ClickHouse sink's counters, when results go there.
    pub sink: Option<ferroflow_clickhouse::SinkStats>,
    /// True when results go to ClickHouse, false for the file.
    pub to_clickhouse: bool,
    /// The users table, when the enrichment stage is on.
    pub users: Option<BroadcastTable<UserVersion>>,
}

/// A job ready to run.
#[derive(Debug)]
pub struct PreparedJob {
    /// Handles for metrics.
    pub handles: JobHandles,
    source: KafkaSource,
    sink: ResultSink,
    dlq: KafkaDeadLetterSink,
    contract: Arc<Contract>,
    /// The enrichment stage's table and its input.
    users: Option<(BroadcastTable<UserVersion>, TableFeed<UserVersion>)>,
}

/// Connects everything (contract, Kafka, ClickHouse or file, checkpoint store) and restores
/// nothing yet: `run` does.
pub async fn prepare(config: &PipelineConfig) -> anyhow::Result<PreparedJob> {
    use anyhow::Context as _;
    let contract = Arc::new(
        Contract::load(&config.contract.path)
            .with_context(|| format!("loading the data contract {}", config.contract.path.display()))?,
    );
    let contract_stats = ContractStats::new();
    let source = KafkaSource::new(&config.kafka)?;
    if config.dead_letters.create_topic {
        let brokers = if config.dead_letters.brokers.is_empty() {
            &config.kafka.brokers
        } else {
            &config.dead_letters.brokers
        };
        ferroflow_kafka::ensure_topic(
            brokers,
            &config.dead_letters.properties,
            &config.dead_letters.topic,
            config.dead_letters.partitions,
        )
        .await
        .context("creating the dead-letter topic")?;
    }
    let dlq = KafkaDeadLetterSink::new(&config.dead_letters, &config.kafka.brokers)?
        .with_header_stash(source.header_stash());

    // Rows ClickHouse refuses permanently become `sink_rejected` dead letters on the same topic,
    // through their own producer, flushed with the result sink at every checkpoint barrier.
    let rejected_rows = RejectedRows::default();
    let rejected_sink = KafkaDeadLetterSink::new(&config.dead_letters, &config.kafka.brokers)?;
    let pending = Arc::clone(&rejected_rows);
    let rejected: ferroflow_clickhouse::RejectedFn<WindowRow> =
        Arc::new(move |row: &WindowRow, why: &str| {
            let original = serde_json::to_vec(row).unwrap_or_default();
            let dl = DeadLetter::new(
                DeadLetterReason::SinkRejected,
                format!("ClickHouse refused the row: {why}"),
                SourcePosition::new(RESULT_ROW_PARTITION, u64::from(row.window_start) * 1000),
                Bytes::from(original),
            );
            pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(dl);
        });

    // Dedup tokens are prefixed with the pipeline's and the instance's ids, whatever the
    // [clickhouse] section says: instances number their epochs independently.
    let mut ch_config = config.clickhouse.clone();
    ch_config.pipeline_id = format!("{}-{}", config.pipeline_id, config.instance());
    let sink = match config.output.kind {
        OutputKind::Clickhouse => {
            ResultTarget::ClickHouse(Box::new(ClickHouseSink::connect(ch_config, rejected).await?))
        }
        OutputKind::File => ResultTarget::File(JsonLinesSink::append(&config.output.file).await?),
        OutputKind::Auto => {
            let mut quick = ch_config;
            quick.startup_timeout_ms = quick.startup_timeout_ms.min(2_000);
            match ClickHouseSink::connect(quick, rejected).await {
                Ok(s) => ResultTarget::ClickHouse(Box::new(s)),
                Err(e) => {
                    tracing::info!(
                        url = %config.clickhouse.url,
                        reason = %e,
                        file = %config.output.file.display(),
                        "ClickHouse did not answer; writing window rows to a file instead"
                    );
                    ResultTarget::File(JsonLinesSink::append(&config.output.file).await?)
                }
            }
        }
    };
    let (sink_stats, to_clickhouse) = match &sink {
        ResultTarget::ClickHouse(s) => (Some(s.stats()), true),
        ResultTarget::File(_) => (None, false),
    };
    let users = match config.enrichment.enabled {
        true => {
            if let ResultTarget::ClickHouse(s) = &sink
                && !sorts_by_segment(s.table_engine())
            {
                anyhow::bail!(
                    "enrichment is on, but the ClickHouse table {}.{} was created before it: its sorting key \
                     ({}) lacks `segment`, so rows of one key and window in different segments would replace \
                     each other. Point clickhouse.table at a new table (the job creates it), or move the rows \
                     to a table created with the job's definition",
                    config.clickhouse.database,
                    config.clickhouse.table,
                    s.table_engine()
                );
            }
            let table = crate::users::table(config);
            let feed = crate::users::feed(config, &table).context("connecting to the users topic")?;
            Some((table, feed))
        }
        false => None,
    };
    let sink = ResultSink { target: sink, tap: None, rejected: rejected_rows, rejected_sink };
    Ok(PreparedJob {
        handles: JobHandles {
            kafka: source.stats(),
            contract: contract_stats,
            sink: sink_stats,
            to_clickhouse,
            users: users.as_ref().map(|(table, _)| table.clone()),
        },
        source,
        sink,
        dlq,
        contract,
        users,
    })
}

impl PreparedJob {
    /// Keeps the newest row of every window in memory (unbounded: for demos and tests).
    pub fn tap_results(&mut self) -> ResultTap {
        let tap = ResultTap::default();
        self.sink.tap = Some(Arc::clone(&tap));
        tap
    }

    /// The runner for this job: checkpoints to `checkpoints.url` as instance `instance_id`, with
    /// the configured state backend, starting from `from_savepoint` when given. Take its counters
    /// and shutdown handle before [`run`](Self::run).
    pub fn runner(config: &PipelineConfig, from_savepoint: Option<String>) -> anyhow::Result<Runner> {
        let base = CheckpointStore::from_url(&config.checkpoints.url, &config.checkpoints.s3())?;
        let mut cp = CheckpointConfig::new(config.pipeline_id.clone(), config.state.dir.join("scratch"));
        cp.state_format_version = crate::config::STATE_FORMAT_VERSION;
        let state =
            crate::file_job::open_state(&config.state.dir, config.state.backend == StateKind::Memory)?;
        let mut builder = Runner::builder()
            .workers(config.processing.workers())
            .checkpoint_store(base)
            .config(cp)
            .every(config.checkpoint_interval())
            .retain(config.checkpoints.retain.max(1))
            .scratch_dir(config.state.dir.join("scratch"))
            .instance(config.instance())
            .state(state);
        if let Some(name) = from_savepoint {
            builder = builder.from_savepoint(name);
        }
        if config.state.memory_budget_mb > 0 {
            use anyhow::Context as _;
            let bytes =
                usize::try_from(config.state.memory_budget_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
            let budget = ferroflow_core::state::StateBudget::open(bytes, config.state.dir.join("spill"))
                .context("state.memory_budget_mb: cannot open the spill store")?;
            builder = builder.state_budget(budget);
        }
        Ok(builder.build()?)
    }

    /// Restores the newest checkpoint (or the runner's savepoint), then runs until `runner`'s
    /// shutdown handle stops it. `runner` comes from [`PreparedJob::runner`].
    pub async fn run(self, config: &PipelineConfig, mut runner: Runner) -> anyhow::Result<JobReport> {
        let spec = TaskSpec::new(config, Arc::clone(&self.contract), self.handles.contract.clone())?;
        let report = match self.users {
            None => run_tasks(&mut runner, self.source, spec, self.sink, self.dlq).await,
            Some((table, feed)) => {
                let spec = spec.with_users(table, &config.enrichment.unknown_segment);
                run_tasks(&mut runner, feed.gating(self.source), spec, self.sink, self.dlq).await
            }
        };
        Ok(report?)
    }
}

/// Runs a task per partition of `source` until it ends or the runner is stopped.
async fn run_tasks<S: Source<Bytes>>(
    runner: &mut Runner,
    source: S,
    spec: TaskSpec,
    sink: ResultSink,
    dlq: KafkaDeadLetterSink,
) -> Result<JobReport, ferroflow_core::JobError> {
    runner.job_per_partition(source, move |p| spec.stream(p)).sink(sink).dead_letters(dlq).run().await
}

/// True when a table's engine clause (`system.tables.engine_full`) sorts by `segment`: rows of
/// different segments are then kept apart by ReplacingMergeTree.
///
/// # Examples
/// ```
/// use ferroflow_pipeline::job::sorts_by_segment;
/// assert!(sorts_by_segment("ReplacingMergeTree(version) ORDER BY (key, segment, window_start, partition) SETTINGS index_granularity = 8192"));
/// assert!(!sorts_by_segment("ReplacingMergeTree(version) ORDER BY (key, window_start, partition) SETTINGS segment = 1"));
/// ```
pub fn sorts_by_segment(engine_full: &str) -> bool {
    let Some(at) = engine_full.find("ORDER BY") else { return false };
    let order = &engine_full[at..];
    let order = order.find(" SETTINGS").map_or(order, |end| &order[..end]);
    order.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|word| word == "segment")
}

/// Starts the HTTP endpoint for a job (metrics from the engine, Kafka, the contract and the sink);
/// returns it with the address it listens on.
pub async fn serve_endpoint(
    config: &PipelineConfig,
    handles: &JobHandles,
    counters: ferroflow_core::JobCounters,
) -> anyhow::Result<(Arc<crate::http::Endpoint>, std::net::SocketAddr)> {
    use crate::metrics::{MetricSources, PipelineMetrics};
    let metrics = PipelineMetrics::new(MetricSources {
        job: counters.clone(),
        kafka: Some(handles.kafka.clone()),
        contract: Some(handles.contract.clone()),
        sink: handles.sink.clone(),
        users: handles.users.clone(),
    })?;
    let h = handles.clone();
    let status = crate::http::StatusFn(Box::new(move || status_document(&counters, &h)));
    let endpoint =
        Arc::new(crate::http::Endpoint { metrics, ready: std::sync::atomic::AtomicBool::new(false), status });
    let addr = crate::http::serve(&config.http.listen, Arc::clone(&endpoint)).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz and /status");
    Ok((endpoint, addr))
}

/// The `/status` document: the engine's counters, the accounting identity, Kafka and sink figures.
pub fn status_document(counters: &ferroflow_core::JobCounters, h: &JobHandles) -> serde_json::Value {
    let c = counters.snapshot();
    let lag: BTreeMap<String, i64> = h.kafka.lag().into_iter().map(|(p, l)| (p.to_string(), l.lag)).collect();
    serde_json::json!({
        "counters": c,
        "identity_holds": c.identity_holds(),
        "kafka": {
            "records": h.kafka.records(),
            "bytes": h.kafka.bytes(),
            "lag": lag,
            "backpressure_seconds": h.kafka.blocked_seconds(),
        },
        "contract_violations": h.contract.snapshot(),
        "sink": h.sink.as_ref().map(|s| {
            let st = s.snapshot();
            serde_json::json!({
                "rows_written": st.rows_written,
                "batches_written": st.batches_written,
                "retries": st.retries,
                "rows_rejected": st.rows_rejected,
            })
        }),
        "output": if h.to_clickhouse { "clickhouse" } else { "file" },
        "enrichment": h.users.as_ref().map(|users| serde_json::json!({
            "versions": users.versions(),
            "watermark": users.watermark().0,
            "complete": users.is_complete(),
            "late_versions": users.late_versions(),
            "unreadable": users.unreadable(),
        })),
    })
}

/// Marks `endpoint` ready once the runner's loop is running: the checkpoint has been restored
/// and the source is being read (the loop counts a batch per iteration, ticks included).
pub fn mark_ready_when_running(endpoint: Arc<crate::http::Endpoint>, counters: ferroflow_core::JobCounters) {
    tokio::spawn(async move {
        while counters.snapshot().batches == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        endpoint.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}
