//! End-to-end benchmark: Kafka → pipeline → ClickHouse against the local servers.
//!
//! Produces `--events` clean events to a new topic, drains the topic with a plain batch
//! consumer (the ceiling: how fast this machine reads the broker), then runs the pipeline on the
//! same topic until ClickHouse holds every closed window, and prints
//! `e2e_events_per_sec=<N> raw_consume_events_per_sec=<M> workers=<W>`.
//!
//! ```text
//! eval "$(scripts/services.sh env)"
//! cargo run --release -p ferroflow-pipeline --example e2e_bench -- --events 5000000
//! ```
//!
//! With `--mock` the broker is librdkafka's in-process mock cluster (no server, no broker
//! bottleneck) and rows go to a file: the figure is the pipeline itself (decode, contract, dedup,
//! windows, checkpoints), measured until every event has run through its partition's task.
//! `--workers N` sets the worker threads (default: one per core), `--partitions P` the topic's
//! partitions (default 3, 4 with `--mock`).
//!
//! ```text
//! cargo run --release -p ferroflow-pipeline --example e2e_bench -- --mock --events 3000000 --workers 1
//! ```
//!
//! With `--memory` no broker is involved at all: the generated messages are handed to the
//! pipeline's own partition tasks (decode + data contract, filters, event time, dedup, windows,
//! the pipeline's checkpoints every 5 s to a local store) from memory, and rows go to a null sink.
//! That is the pipeline's processing rate on `--workers` threads, whatever the broker can serve;
//! it prints `e2e_memory_events_per_sec=<N> workers=<W> partitions=<P>`.
//!
//! ```text
//! cargo run --release -p ferroflow-pipeline --example e2e_bench -- --memory --events 3000000 --workers 1
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

#[path = "../../../examples/support/cpu.rs"]
mod cpu;

use ferroflow_kafka::Assignment;
use ferroflow_kafka::rdkafka::ClientConfig;
use ferroflow_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use ferroflow_kafka::rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use ferroflow_pipeline::config::{OutputKind, PipelineConfig};
use ferroflow_pipeline::traffic::{Oracle, TrafficConfig};

const ROUND_EVENTS: u64 = 500_000;

/// Records of one partition in a row in `--memory` mode.
const RUN: usize = 500;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The pipeline binary's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--memory") {
        return memory_bench().await;
    }
    let mock = std::env::args().any(|a| a == "--mock");
    let events = arg("--events", 5_000_000);
    let workers = usize::try_from(arg("--workers", 0))?;
    let partitions = u32::try_from(arg("--partitions", if mock { 4 } else { 3 }))?.max(1);
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let topic = format!("bench_events_{stamp}");
    let table = format!("bench_windows_{stamp}");
    let ch_url = std::env::var("FERROFLOW_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let cluster = match mock {
        true => {
            let cluster = ferroflow_kafka::rdkafka::mocking::MockCluster::new(1)?;
            cluster.create_topic(&topic, partitions as i32, 1)?;
            cluster.create_topic(&format!("{topic}.dlq"), 1, 1)?;
            Some(cluster)
        }
        false => None,
    };
    let brokers = match &cluster {
        Some(c) => c.bootstrap_servers(),
        None => std::env::var("FERROFLOW_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
    };
    if !mock {
        ferroflow_kafka::ensure_topic(&brokers, &Default::default(), &topic, partitions as i32).await?;
    }

    // Produce in rounds of disjoint event time, keeping only the expected window count.
    let rounds = events.div_ceil(ROUND_EVENTS).max(1);
    let mut produced = 0u64;
    let mut expected_windows = 0usize;
    let started = Instant::now();
    for r in 0..rounds {
        let t = TrafficConfig {
            partitions,
            events_per_partition: (ROUND_EVENTS / u64::from(partitions))
                .min((events - produced) / u64::from(partitions))
                .max(1),
            start_ms: 1_767_225_600_000 + r as i64 * 60 * 60_000,
            dirty: false,
            seed: r,
            ..Default::default()
        };
        let batch = t.generate();
        // One final row per partition with events in a window (each partition has its own task).
        for p in 0..partitions {
            let part: Vec<_> = batch.iter().filter(|g| g.partition == p).cloned().collect();
            expected_windows +=
                Oracle::of(&part, 60_000).windows_ending_by(t.last_closed_window_end(), 60_000).len();
        }
        produced += ferroflow_pipeline::demo::produce(&brokers, &topic, &batch).await?;
        if produced >= events {
            break;
        }
    }
    println!("produced {produced} events to {topic} in {:.1}s", started.elapsed().as_secs_f64());

    // The ceiling: a plain consumer draining the topic in batches.
    // The mock broker gives a manually assigned consumer nothing; there the pipeline alone is
    // measured, as a group member.
    let raw = match mock {
        true => f64::NAN,
        false => raw_consume(&brokers, &topic, partitions, produced)?,
    };
    if !mock {
        println!("raw consumer drained {produced} events in {raw:.2}s");
    }

    let mut config = PipelineConfig { pipeline_id: format!("bench{stamp}"), ..Default::default() };
    config.kafka.brokers = brokers.clone();
    config.kafka.topic = topic.clone();
    config.kafka.group_id = format!("{topic}-pipeline");
    config.kafka.assignment = Assignment::AllPartitions;
    config.dead_letters.topic = format!("{topic}.dlq");
    config.contract.path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts/events.v1.json");
    config.clickhouse.url = ch_url.clone();
    config.clickhouse.table = table.clone();
    config.processing.workers = workers;
    let dir = std::env::temp_dir().join(format!("ferroflow-bench-{stamp}"));
    std::fs::create_dir_all(&dir)?;
    if mock {
        // The mock broker serves fetches to group members; a manual assignment gets nothing.
        config.kafka.assignment = Assignment::Group;
        config.dead_letters.create_topic = false;
        config.output.kind = OutputKind::File;
        config.output.file = dir.join("windows.jsonl");
    } else {
        config.output.kind = OutputKind::Clickhouse;
    }
    config.state.dir = dir.join("state");
    config.checkpoints.url = format!("file://{}", dir.join("checkpoints").display());
    config.checkpoints.interval_ms = 5_000;
    config.http.listen = "127.0.0.1:0".into();

    let job = ferroflow_pipeline::job::prepare(&config).await?;
    let runner = ferroflow_pipeline::job::PreparedJob::runner(&config, None)?;
    let counters = runner.counters();
    let stop = runner.shutdown_handle();
    let started = Instant::now();
    let cfg = config.clone();
    let kafka_for_report = job.handles.kafka.clone();
    let handle = tokio::spawn(async move { job.run(&cfg, runner).await });
    let client = clickhouse::Client::default()
        .with_url(&ch_url)
        .with_compression(clickhouse::Compression::None)
        .with_validation(false);
    let sql = format!("SELECT count() FROM {table} FINAL WHERE is_final = 1");
    let mut consumed_at = None;
    let mut last_report = Instant::now();
    let e2e = loop {
        tokio::time::sleep(Duration::from_millis(if mock { 5 } else { 50 })).await;
        // Counted as each partition's task takes them: every event has run through the job.
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!("… {} of {produced} events in", counters.snapshot().records_in);
        }
        if counters.snapshot().records_in < produced {
            continue;
        }
        consumed_at.get_or_insert_with(|| started.elapsed().as_secs_f64());
        if mock {
            break started.elapsed().as_secs_f64();
        }
        let n: u64 = client.query(&sql).fetch_one().await.unwrap_or(0);
        if n as usize >= expected_windows {
            break started.elapsed().as_secs_f64();
        }
    };
    stop.stop();
    let report = handle.await??;
    assert!(report.counters.identity_holds());
    let c = &report.counters;
    assert_eq!(c.records_windowed, produced, "clean traffic: every event is windowed");
    let rows = match mock {
        true => format!("{} window rows to a file", c.window_rows_emitted),
        false => format!("{expected_windows} final window rows in ClickHouse"),
    };
    println!(
        "pipeline: {produced} events consumed in {:.2}s, {rows} after {e2e:.2}s \
         ({} checkpoints, source waited {:.2}s on the job)",
        consumed_at.unwrap_or(e2e),
        report.checkpoints_taken,
        kafka_for_report.blocked_seconds()
    );
    println!(
        "e2e_events_per_sec={:.0} raw_consume_events_per_sec={:.0} workers={}",
        produced as f64 / e2e,
        produced as f64 / raw,
        config.processing.workers()
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The pipeline's partition tasks on generated messages handed over from memory.
async fn memory_bench() -> anyhow::Result<()> {
    use std::sync::Arc;

    use bytes::Bytes;
    use ferroflow_core::prelude::*;
    use ferroflow_pipeline::contract::{Contract, ContractStats};
    use ferroflow_pipeline::job::TaskSpec;

    let events = arg("--events", 3_000_000);
    let workers = match usize::try_from(arg("--workers", 0))? {
        0 => ferroflow_core::runtime::available_cores(),
        n => n,
    };
    let partitions = u32::try_from(arg("--partitions", 4))?.max(1);
    let batch = usize::try_from(arg("--batch", 2_000))?.max(1);
    let started = Instant::now();
    let mut records = Vec::with_capacity(usize::try_from(events)?);
    let mut next_offset = vec![0u64; partitions as usize];
    let rounds = events.div_ceil(ROUND_EVENTS).max(1);
    for r in 0..rounds {
        let left = events.saturating_sub(records.len() as u64);
        if left == 0 {
            break;
        }
        let t = TrafficConfig {
            partitions,
            events_per_partition: (ROUND_EVENTS.min(left) / u64::from(partitions)).max(1),
            start_ms: 1_767_225_600_000 + r as i64 * 60 * 60_000,
            dirty: false,
            seed: r,
            ..Default::default()
        };
        // The generator lists each partition's events in turn; a consumer hands out runs of every
        // partition interleaved (as a broker's fetches do), so that every partition's task has work.
        let mut by_partition: Vec<std::collections::VecDeque<Record<Bytes>>> =
            (0..partitions).map(|_| Default::default()).collect();
        for g in t.generate() {
            let offset = &mut next_offset[g.partition as usize];
            by_partition[g.partition as usize].push_back(
                Record::new(Bytes::from(g.payload), 0)
                    .with_position(SourcePosition::new(g.partition, *offset)),
            );
            *offset += 1;
        }
        while by_partition.iter().any(|q| !q.is_empty()) {
            for q in &mut by_partition {
                let run = q.len().min(RUN);
                records.extend(q.drain(..run));
            }
        }
    }
    let produced = records.len() as u64;
    let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
    println!(
        "generated {produced} messages ({:.1} MB) over {partitions} partitions in {:.1}s",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let config = PipelineConfig::default();
    let contract = Arc::new(Contract::load(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts/events.v1.json"),
    )?);
    let spec = TaskSpec::new(&config, contract, ContractStats::new())?;
    let dir = tempfile::tempdir()?;
    let mut runner = Runner::builder()
        .workers(workers)
        .checkpoints(format!("file://{}", dir.path().join("checkpoints").display()))
        .job_id("e2e-memory")
        .scratch_dir(dir.path().join("scratch"))
        .every(Duration::from_secs(5))
        .state(ferroflow_core::state::MemoryStateBackend::new())
        .build()?;
    let sink = NullSink::new();
    // Built before the clock starts: cutting the messages into batches is the benchmark's set-up,
    // not the pipeline's work.
    let source = MemorySource::new(records).with_batch_size(batch);
    let (t0, cpu0) = (Instant::now(), cpu::process_cpu_seconds());
    let report = runner
        .job_per_partition(source, move |p| spec.stream(p))
        .sink(sink)
        .discard_dead_letters()
        .run()
        .await?;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu_seconds = cpu::process_cpu_seconds() - cpu0;
    let c = &report.counters;
    anyhow::ensure!(c.identity_holds(), "accounting: {c:?}");
    anyhow::ensure!(c.records_in == produced, "{} of {produced} messages in", c.records_in);
    println!(
        "records_in={} windowed={} deduplicated={} filtered={} dead_lettered={} window_rows={} checkpoints={} elapsed={elapsed:.2}s",
        c.records_in,
        c.records_windowed,
        c.records_deduplicated,
        c.records_filtered,
        c.records_dead_lettered,
        c.window_rows_emitted,
        report.checkpoints_taken
    );
    println!("{}", cpu::usage_line(cpu_seconds, elapsed, produced));
    println!(
        "e2e_memory_events_per_sec={:.0} workers={workers} partitions={partitions}",
        produced as f64 / elapsed
    );
    Ok(())
}

fn raw_consume(brokers: &str, topic: &str, partitions: u32, expected: u64) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-raw"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0usize;
    while n < expected {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                use ferroflow_kafka::rdkafka::Message as _;
                bytes += m.payload().map_or(0, <[u8]>::len);
                n += 1;
            }
            Some(Err(e)) => eprintln!("raw consumer: {e}"),
            None => {}
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("raw consumer read only {n} of {expected} in 10 minutes");
        }
    }
    std::hint::black_box(bytes);
    Ok(started.elapsed().as_secs_f64())
}
