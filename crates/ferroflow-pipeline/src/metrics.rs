//! Prometheus metrics of the pipeline, served at `/metrics`.
//!
//! The engine, the Kafka source, the contract and the sink each keep their own lock-free
//! counters; this module copies them into Prometheus metrics when scraped, so the hot path
//! never touches the registry. Names and meanings are listed in `docs/metrics.md`.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use ferroflow_clickhouse::SinkStats;
use ferroflow_core::JobCounters;
use ferroflow_kafka::SourceStats;
use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::contract::ContractStats;
use crate::users::UserVersion;
use ferroflow_core::join::BroadcastTable;

/// Where the figures come from.
#[derive(Debug, Clone, Default)]
pub struct MetricSources {
    /// Engine counters (records, dead letters, watermark, checkpoints).
    pub job: JobCounters,
    /// The Kafka source, when the job reads Kafka.
    pub kafka: Option<SourceStats>,
    /// Contract violations per rule.
    pub contract: Option<ContractStats>,
    /// The ClickHouse sink, when results go there.
    pub sink: Option<SinkStats>,
    /// The users table of the enrichment stage, when it is on.
    pub users: Option<BroadcastTable<UserVersion>>,
}

/// The registry and the metrics it holds.
#[derive(Debug)]
pub struct PipelineMetrics {
    registry: Registry,
    sources: MetricSources,
    m: Mutex<Metrics>,
}

#[derive(Debug)]
struct Metrics {
    records_in: IntCounter,
    records_windowed: IntCounter,
    records_processed: IntCounter,
    records_filtered: IntCounter,
    records_deduplicated: IntCounter,
    dead_letters: IntCounterVec,
    window_rows: IntCounter,
    batches: IntCounter,
    watermark: IntGauge,
    watermark_lag: Gauge,
    identity_gap: IntGauge,
    partition_watermark: IntGaugeVec,
    idle_partitions: IntGauge,
    window_emit_lag: Gauge,
    checkpoints: IntCounter,
    checkpoint_failures: IntCounter,
    checkpoint_bytes: IntCounter,
    checkpoint_last_ts: Gauge,
    checkpoint_last_duration: Gauge,
    checkpoint_duration: prometheus::Histogram,
    /// Checkpoints already observed into `checkpoint_duration`.
    checkpoint_seen: std::sync::atomic::AtomicU64,
    restore_duration: Gauge,
    checkpoint_last_bytes: IntGauge,
    operator_in: IntCounterVec,
    operator_out: IntCounterVec,
    state: IntGaugeVec,
    kafka_records: IntCounter,
    kafka_bytes: IntCounter,
    kafka_lag: IntGaugeVec,
    kafka_blocked: Gauge,
    kafka_commits: IntCounterVec,
    records_lost: IntCounterVec,
    kafka_stray: IntCounter,
    kafka_offset_gaps: IntCounter,
    headers_evicted: IntCounter,
    contract_violations: IntCounterVec,
    sink_rows: IntCounter,
    sink_batches: IntCounter,
    sink_retries: IntCounter,
    sink_errors: IntCounterVec,
    sink_rejected: IntCounter,
    sink_latency_avg: GaugeVec,
    sink_latency: prometheus::Histogram,
    /// Inserts already observed into `sink_latency`.
    sink_seen: std::sync::atomic::AtomicU64,
    users_versions: IntGauge,
    users_watermark: IntGauge,
    users_late: IntCounter,
    users_unreadable: IntCounter,
}

/// Registers a metric and hands it back.
fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> Result<M, prometheus::Error> {
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> Result<prometheus::Histogram, prometheus::Error> {
    reg(r, prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(name, help).buckets(buckets))?)
}

/// Observes durations numbered after the last one seen, and remembers the newest number.
fn observe_new(
    h: &prometheus::Histogram,
    seen: &std::sync::atomic::AtomicU64,
    new: Vec<(u64, std::time::Duration)>,
) {
    for (n, d) in new {
        h.observe(d.as_secs_f64());
        seen.store(n, std::sync::atomic::Ordering::Relaxed);
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    reg(r, IntCounter::new(name, help)?)
}

impl PipelineMetrics {
    /// Builds the registry (with the process collector: CPU, RSS, open fds).
    pub fn new(sources: MetricSources) -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        let m = Metrics {
            records_in: counter(&r, "ferroflow_records_in_total", "Source records that entered the job.")?,
            records_windowed: counter(
                &r,
                "ferroflow_records_windowed_total",
                "Records accepted into windows.",
            )?,
            records_processed: counter(
                &r,
                "ferroflow_records_processed_total",
                "Records taken by a join (the enrichment stage) on their way to the windows.",
            )?,
            records_filtered: counter(
                &r,
                "ferroflow_records_filtered_total",
                "Records dropped by a filter rule.",
            )?,
            records_deduplicated: counter(
                &r,
                "ferroflow_records_deduplicated_total",
                "Records dropped as duplicates of an event_id seen within the TTL.",
            )?,
            dead_letters: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ferroflow_dead_letters_total",
                        "Records sent to the dead-letter topic, by reason.",
                    ),
                    &["reason"],
                )?,
            )?,
            window_rows: counter(
                &r,
                "ferroflow_window_rows_emitted_total",
                "Window results emitted (every revision counted).",
            )?,
            batches: counter(&r, "ferroflow_batches_total", "Batches processed.")?,
            watermark: reg(
                &r,
                IntGauge::new(
                    "ferroflow_watermark_ms",
                    "The job's combined event-time watermark, ms since the epoch.",
                )?,
            )?,
            watermark_lag: reg(
                &r,
                Gauge::new("ferroflow_watermark_lag_seconds", "Wall clock minus the watermark, seconds.")?,
            )?,
            identity_gap: reg(
                &r,
                IntGauge::new(
                    "ferroflow_accounting_gap_records",
                    "records_in - (windowed + filtered + deduplicated + dead-lettered): 0 when every record is accounted for.",
                )?,
            )?,
            partition_watermark: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "ferroflow_partition_watermark_ms",
                        "Each source partition's own watermark, ms since the epoch (partitions with data).",
                    ),
                    &["partition"],
                )?,
            )?,
            window_emit_lag: reg(
                &r,
                Gauge::new(
                    "ferroflow_window_emit_lag_seconds",
                    "Event-time lag of emitted windows: wall clock at emission minus the newest emitted window's end.",
                )?,
            )?,
            idle_partitions: reg(
                &r,
                IntGauge::new(
                    "ferroflow_idle_partitions",
                    "Source partitions currently idle (not holding the watermark back).",
                )?,
            )?,
            checkpoints: counter(&r, "ferroflow_checkpoints_total", "Checkpoints and savepoints completed.")?,
            checkpoint_failures: counter(
                &r,
                "ferroflow_checkpoint_failures_total",
                "Checkpoints that failed.",
            )?,
            checkpoint_bytes: counter(
                &r,
                "ferroflow_checkpoint_uploaded_bytes_total",
                "Bytes uploaded to the checkpoint store.",
            )?,
            checkpoint_last_ts: reg(
                &r,
                Gauge::new(
                    "ferroflow_last_checkpoint_timestamp_seconds",
                    "Wall-clock time of the last completed checkpoint (0: none yet).",
                )?,
            )?,
            checkpoint_last_duration: reg(
                &r,
                Gauge::new("ferroflow_last_checkpoint_duration_seconds", "Duration of the last checkpoint.")?,
            )?,
            checkpoint_duration: histogram(
                &r,
                "ferroflow_checkpoint_duration_seconds",
                "Checkpoint duration: state snapshot and upload, until the manifest is written.",
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )?,
            checkpoint_seen: std::sync::atomic::AtomicU64::new(0),
            restore_duration: reg(
                &r,
                Gauge::new(
                    "ferroflow_restore_duration_seconds",
                    "How long restoring the checkpoint at start-up took (0: started fresh).",
                )?,
            )?,
            checkpoint_last_bytes: reg(
                &r,
                IntGauge::new(
                    "ferroflow_last_checkpoint_size_bytes",
                    "Bytes uploaded by the last checkpoint.",
                )?,
            )?,
            operator_in: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ferroflow_operator_records_in_total",
                        "Records handed to each step of the operator chain.",
                    ),
                    &["index", "operator"],
                )?,
            )?,
            operator_out: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ferroflow_operator_records_out_total",
                        "Records each step of the operator chain passed on (result rows, for a window).",
                    ),
                    &["index", "operator"],
                )?,
            )?,
            state: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "ferroflow_state",
                        "State backend size after the last checkpoint: keys (RocksDB estimate), \
                         live_sst_bytes, memtable_bytes, block_cache_bytes; with \
                         state.memory_budget_mb, now: budget_limit_bytes, budget_used_bytes, \
                         spilled_keys, spill_store_memory_bytes.",
                    ),
                    &["figure"],
                )?,
            )?,
            kafka_records: counter(&r, "ferroflow_kafka_records_consumed_total", "Records read from Kafka.")?,
            kafka_bytes: counter(
                &r,
                "ferroflow_kafka_bytes_consumed_total",
                "Payload bytes read from Kafka.",
            )?,
            kafka_lag: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "ferroflow_kafka_consumer_lag_records",
                        "High watermark minus the consumer's position, per partition.",
                    ),
                    &["partition"],
                )?,
            )?,
            kafka_blocked: reg(
                &r,
                Gauge::new(
                    "ferroflow_source_backpressure_seconds_total",
                    "Time the source waited for the job to take a batch (backpressure).",
                )?,
            )?,
            kafka_commits: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ferroflow_kafka_offset_commits_total",
                        "Offset commits after checkpoints, by result.",
                    ),
                    &["result"],
                )?,
            )?,
            records_lost: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ferroflow_source_records_lost_total",
                        "Offsets skipped because retention had deleted them when the partition resumed \
                         (kafka.on_data_loss = \"continue\"; by default the job stops instead).",
                    ),
                    &["partition"],
                )?,
            )?,
            kafka_stray: counter(
                &r,
                "ferroflow_kafka_stray_messages_total",
                "Messages of partitions no longer assigned here, dropped unread (their new owner reads them).",
            )?,
            kafka_offset_gaps: counter(
                &r,
                "ferroflow_kafka_offset_gaps_total",
                "Offsets skipped where a partition resumed while the log still held them (transaction \
                 markers or compaction; on a topic with neither, worth a look).",
            )?,
            headers_evicted: counter(
                &r,
                "ferroflow_dead_letter_headers_evicted_total",
                "Original message headers dropped to stay within kafka.header_stash_max_bytes.",
            )?,
            contract_violations: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("ferroflow_contract_violations_total", "Data-contract violations, by rule."),
                    &["rule"],
                )?,
            )?,
            sink_rows: counter(&r, "ferroflow_sink_rows_written_total", "Rows inserted into ClickHouse.")?,
            sink_batches: counter(&r, "ferroflow_sink_batches_total", "Inserts into ClickHouse.")?,
            sink_retries: counter(
                &r,
                "ferroflow_sink_retries_total",
                "Insert attempts retried after a transient error.",
            )?,
            sink_errors: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("ferroflow_sink_errors_total", "Insert attempts that failed, by class."),
                    &["class"],
                )?,
            )?,
            sink_rejected: counter(
                &r,
                "ferroflow_sink_rows_rejected_total",
                "Rows ClickHouse refused permanently (sent to the dead-letter topic).",
            )?,
            sink_latency_avg: reg(
                &r,
                GaugeVec::new(
                    Opts::new("ferroflow_sink_insert_latency_seconds", "Insert latency: last and mean."),
                    &["stat"],
                )?,
            )?,
            sink_latency: histogram(
                &r,
                "ferroflow_sink_insert_duration_seconds",
                "Duration of successful ClickHouse inserts (retries excluded).",
                vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )?,
            sink_seen: std::sync::atomic::AtomicU64::new(0),
            users_versions: reg(
                &r,
                IntGauge::new(
                    "ferroflow_enrichment_table_versions",
                    "Versions the enrichment stage's users table holds (over every user).",
                )?,
            )?,
            users_watermark: reg(
                &r,
                IntGauge::new(
                    "ferroflow_enrichment_table_watermark_ms",
                    "How far the users table lets the job's watermark go (its input's watermark), ms since the epoch; unchanged while it holds nothing back.",
                )?,
            )?,
            users_late: counter(
                &r,
                "ferroflow_enrichment_late_versions_total",
                "Users changes that came after events of their time were joined (kept for later events).",
            )?,
            users_unreadable: counter(
                &r,
                "ferroflow_enrichment_unreadable_total",
                "Users changelog messages the table could not decode (logged with their position).",
            )?,
        };
        Ok(Self { registry: r, sources, m: Mutex::new(m) })
    }

    /// Copies every source into the metrics and renders the text exposition format.
    pub fn render(&self) -> String {
        if let Ok(m) = self.m.lock() {
            self.refresh(&m);
        }
        let mut buf = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn refresh(&self, m: &Metrics) {
        let set = |c: &IntCounter, v: u64| {
            let cur = c.get();
            if v >= cur {
                c.inc_by(v - cur);
            } else {
                c.reset();
                c.inc_by(v);
            }
        };
        let s = self.sources.job.snapshot();
        set(&m.records_in, s.records_in);
        set(&m.records_windowed, s.records_windowed);
        set(&m.records_processed, s.records_processed);
        set(&m.records_filtered, s.records_filtered);
        set(&m.records_deduplicated, s.records_deduplicated);
        for (reason, n) in &s.dead_letters_by_reason {
            set(&m.dead_letters.with_label_values(&[reason]), *n);
        }
        set(&m.window_rows, s.window_rows_emitted);
        set(&m.batches, s.batches);
        if s.watermark > i64::MIN && s.watermark < i64::MAX {
            m.watermark.set(s.watermark);
            m.watermark_lag.set((now_ms() - s.watermark) as f64 / 1000.0);
        }
        let accounted = s.records_windowed
            + s.records_processed
            + s.records_out
            + s.records_filtered
            + s.records_deduplicated
            + s.records_dead_lettered;
        m.identity_gap.set((s.records_in + s.records_expanded) as i64 - accounted as i64);
        m.partition_watermark.reset();
        for p in &s.partitions {
            if p.watermark > i64::MIN && p.watermark < i64::MAX {
                m.partition_watermark.with_label_values(&[&p.partition.to_string()]).set(p.watermark);
            }
        }
        m.window_emit_lag.set(s.window_emit_lag_ms as f64 / 1000.0);
        m.idle_partitions.set(s.partitions.iter().filter(|p| p.idle).count() as i64);
        set(&m.checkpoints, s.checkpoints_completed);
        set(&m.checkpoint_failures, s.checkpoint_failures);
        set(&m.checkpoint_bytes, s.checkpoint_bytes_uploaded);
        m.checkpoint_last_ts.set(s.last_checkpoint_unix_ms as f64 / 1000.0);
        m.checkpoint_last_duration.set(s.last_checkpoint_duration_us as f64 / 1e6);
        let seen = m.checkpoint_seen.load(std::sync::atomic::Ordering::Relaxed);
        observe_new(
            &m.checkpoint_duration,
            &m.checkpoint_seen,
            self.sources.job.checkpoint_durations_after(seen),
        );
        m.restore_duration.set(s.restore_duration_us as f64 / 1e6);
        m.checkpoint_last_bytes.set(s.last_checkpoint_bytes as i64);
        for op in &s.operators {
            let labels = [op.index.to_string(), op.name.to_owned()];
            let labels = [labels[0].as_str(), labels[1].as_str()];
            set(&m.operator_in.with_label_values(&labels), op.records.records_in);
            set(&m.operator_out.with_label_values(&labels), op.records.records_out);
        }
        let gauge = |figure: &str, v: u64| m.state.with_label_values(&[figure]).set(v as i64);
        if let Some(st) = s.state {
            gauge("keys", st.keys);
            gauge("live_sst_bytes", st.live_bytes);
            gauge("memtable_bytes", st.memtable_bytes);
            gauge("block_cache_bytes", st.block_cache_bytes);
        }
        if let Some(b) = s.state_budget {
            gauge("budget_limit_bytes", b.limit_bytes);
            gauge("budget_used_bytes", b.used_bytes);
            gauge("spilled_keys", b.spilled_keys);
            gauge("spill_store_memory_bytes", b.store_memory_bytes);
        }

        if let Some(k) = &self.sources.kafka {
            set(&m.kafka_records, k.records());
            set(&m.kafka_bytes, k.bytes());
            m.kafka_blocked.set(k.blocked_seconds());
            let (ok, failed) = k.commits();
            set(&m.kafka_commits.with_label_values(&["ok"]), ok);
            set(&m.kafka_commits.with_label_values(&["failed"]), failed);
            m.kafka_lag.reset();
            for (p, lag) in k.lag() {
                m.kafka_lag.with_label_values(&[&p.to_string()]).set(lag.lag);
            }
            for (p, n) in k.records_lost() {
                set(&m.records_lost.with_label_values(&[&p.to_string()]), n);
            }
            set(&m.kafka_stray, k.stray_messages());
            set(&m.kafka_offset_gaps, k.offset_gaps());
            set(&m.headers_evicted, k.headers_evicted());
        }
        if let Some(users) = &self.sources.users {
            m.users_versions.set(i64::try_from(users.versions()).unwrap_or(i64::MAX));
            let w = users.watermark().0;
            if w > i64::MIN && w < i64::MAX {
                m.users_watermark.set(w);
            }
            set(&m.users_late, users.late_versions());
            set(&m.users_unreadable, users.unreadable());
        }
        if let Some(c) = &self.sources.contract {
            for (rule, n) in c.snapshot() {
                set(&m.contract_violations.with_label_values(&[&rule]), n);
            }
        }
        if let Some(k) = &self.sources.sink {
            let st = k.snapshot();
            set(&m.sink_rows, st.rows_written);
            set(&m.sink_batches, st.batches_written);
            set(&m.sink_retries, st.retries);
            set(&m.sink_errors.with_label_values(&["transient"]), st.errors_transient);
            set(&m.sink_errors.with_label_values(&["permanent"]), st.errors_permanent);
            set(&m.sink_errors.with_label_values(&["fatal"]), st.errors_fatal);
            set(&m.sink_rejected, st.rows_rejected);
            m.sink_latency_avg.with_label_values(&["last"]).set(st.last_insert_latency_us as f64 / 1e6);
            let mean = st.insert_latency_sum_us as f64 / st.insert_latency_count.max(1) as f64 / 1e6;
            m.sink_latency_avg.with_label_values(&["mean"]).set(mean);
            let seen = m.sink_seen.load(std::sync::atomic::Ordering::Relaxed);
            observe_new(&m.sink_latency, &m.sink_seen, k.insert_latencies_after(seen));
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
