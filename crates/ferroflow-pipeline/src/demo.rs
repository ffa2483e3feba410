//! The embedded demo: an in-process Kafka (librdkafka's mock cluster), generated traffic with
//! every kind of bad record, the full pipeline with RocksDB state and `file://` checkpoints, and
//! ClickHouse when one answers (otherwise a local file). It prints a live summary, then checks
//! the results against the traffic's [`Oracle`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferroflow_kafka::rdkafka::ClientConfig;
use ferroflow_kafka::rdkafka::mocking::MockCluster;
use ferroflow_kafka::rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::{OutputKind, PipelineConfig};
use crate::job::WindowTotal;
use crate::traffic::{Generated, Oracle, TrafficConfig, rfc3339};

/// The contract the demo uses when `contracts/` is not next to it.
const EMBEDDED_CONTRACT: &str = include_str!("../../../contracts/events.v1.json");

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Events per partition.
    pub events_per_partition: u64,
    /// Partitions of the demo topic.
    pub partitions: u32,
    /// Working directory (default: a new temporary one).
    pub dir: Option<PathBuf>,
    /// ClickHouse to use if it answers.
    pub clickhouse_url: String,
    /// Address of the metrics endpoint (`127.0.0.1:0` picks a free port).
    pub http_listen: String,
    /// Keep serving `/metrics` this long after the run (for scrapers and dashboards).
    pub linger: Duration,
}

/// Produces `events` to `topic` (each to its partition); returns how many were acknowledged.
pub async fn produce(brokers: &str, topic: &str, events: &[Generated]) -> anyhow::Result<u64> {
    produce_with(brokers, topic, events, 10_000).await
}

/// [`produce`] with at most `batch_messages` messages per record batch.
///
/// Tests that restart consumers at arbitrary offsets use 1: tansu 0.6 returns nothing for a fetch
/// that starts inside a record batch (Kafka returns the batch and the client skips ahead), so
/// with it every offset a consumer may resume at has to start a batch.
pub async fn produce_with(
    brokers: &str,
    topic: &str,
    events: &[Generated],
    batch_messages: usize,
) -> anyhow::Result<u64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", if batch_messages <= 1 { "0" } else { "20" })
        .set("batch.num.messages", batch_messages.max(1).to_string())
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating the traffic producer")?;
    let mut inflight = futures::stream::FuturesUnordered::new();
    let mut acked = 0u64;
    for g in events {
        let record =
            FutureRecord::<(), _>::to(topic).payload(g.payload.as_bytes()).partition(g.partition as i32);
        let fut = producer.send_result(record).map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
        inflight.push(fut);
        if inflight.len() >= 50_000 {
            acked += drain(&mut inflight, 10_000).await?;
        }
    }
    acked += drain(&mut inflight, usize::MAX).await?;
    Ok(acked)
}

async fn drain(
    inflight: &mut futures::stream::FuturesUnordered<ferroflow_kafka::rdkafka::producer::DeliveryFuture>,
    at_most: usize,
) -> anyhow::Result<u64> {
    use futures::StreamExt as _;
    let mut n = 0u64;
    while (n as usize) < at_most {
        let Some(res) = inflight.next().await else { break };
        match res {
            Ok(Ok(_)) => n += 1,
            Ok(Err((e, _))) => anyhow::bail!("a traffic event was not delivered: {e}"),
            Err(_) => anyhow::bail!("the producer was dropped before delivering"),
        }
    }
    Ok(n)
}

/// Runs the demo to completion.
#[allow(clippy::print_stdout)]
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("ferroflow-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let contract_path = dir.join("events.v1.json");
    std::fs::write(&contract_path, EMBEDDED_CONTRACT)?;

    let cluster = MockCluster::new(1).context("starting the in-process Kafka cluster")?;
    cluster.create_topic("events", opts.partitions as i32, 1)?;
    cluster.create_topic("events.dlq", 1, 1)?;
    let brokers = cluster.bootstrap_servers();

    let mut config = PipelineConfig { pipeline_id: "demo".into(), ..Default::default() };
    config.kafka.brokers = brokers.clone();
    config.kafka.group_id = "ferroflow-demo".into();
    // The in-process cluster has the topics already (and does not serve topic creation).
    config.dead_letters.create_topic = false;
    config.contract.path = contract_path;
    config.output.kind = OutputKind::Auto;
    config.output.file = dir.join("windows.jsonl");
    config.clickhouse.url = opts.clickhouse_url.clone();
    config.clickhouse.table = "demo_event_windows".into();
    config.state.dir = dir.join("state");
    config.checkpoints.url = format!("file://{}", dir.join("checkpoints").display());
    config.checkpoints.interval_ms = 1_000;
    config.http.listen = opts.http_listen.clone();

    let traffic = TrafficConfig {
        partitions: opts.partitions,
        events_per_partition: opts.events_per_partition,
        out_of_orderness_ms: config.watermarks.out_of_orderness_ms as i64,
        allowed_lateness_ms: config.window.allowed_lateness_ms as i64,
        ..Default::default()
    };
    let main = traffic.generate();
    let late = traffic.too_late(20);
    let total = (main.len() + late.len()) as u64;
    println!(
        "ferroflow demo: {} events in {} partitions on an in-process Kafka ({brokers}), state and checkpoints in {}",
        total,
        opts.partitions,
        dir.display()
    );

    let mut job = crate::job::prepare(&config).await?;
    let tap = job.tap_results();
    let runner = crate::job::PreparedJob::runner(&config, None)?;
    let counters = runner.counters();
    let stop = runner.shutdown_handle();
    let (endpoint, addr) = crate::job::serve_endpoint(&config, &job.handles, counters.clone()).await?;
    println!("metrics: http://{addr}/metrics  status: http://{addr}/status");
    crate::job::mark_ready_when_running(Arc::clone(&endpoint), counters.clone());
    println!(
        "results go to {}",
        if job.handles.to_clickhouse {
            format!("ClickHouse at {} (table {})", config.clickhouse.url, config.clickhouse.table)
        } else {
            format!("{} (no ClickHouse answered at {})", config.output.file.display(), config.clickhouse.url)
        }
    );

    let handles = job.handles.clone();
    let contract_stats = job.handles.contract.clone();
    let producer_brokers = brokers.clone();
    let partitions = opts.partitions;
    let main_len = main.len() as u64;
    let c2 = counters.clone();
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed_flag = Arc::clone(&failed);
    let feeder = tokio::spawn(async move {
        let res = async {
            // Traffic arrives over a few seconds, every partition advancing together.
            let rounds = 20;
            let mut by_partition: Vec<Vec<Generated>> = vec![Vec::new(); partitions as usize];
            for g in main {
                by_partition[g.partition as usize].push(g);
            }
            for r in 0..rounds {
                let mut slice = Vec::new();
                for events in &by_partition {
                    let (from, to) = (events.len() * r / rounds, events.len() * (r + 1) / rounds);
                    slice.extend_from_slice(&events[from..to]);
                }
                produce(&producer_brokers, "events", &slice).await?;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            // Far-late events only make sense once the watermark has moved past them.
            while c2.snapshot().records_in < main_len {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            produce(&producer_brokers, "events", &late).await
        }
        .await;
        if res.is_err() {
            failed_flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        res
    });

    let started = Instant::now();
    let live_counters = counters.clone();
    let live_tap = Arc::clone(&tap);
    let live = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = 0u64;
        loop {
            tick.tick().await;
            let c = live_counters.snapshot();
            let wm =
                if c.watermark > 0 && c.watermark < i64::MAX { rfc3339(c.watermark) } else { "-".into() };
            let dl: Vec<String> = c
                .dead_letters_by_reason
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            println!(
                "[{:>4.0}s] {:>8} events/s  in={} windowed={} filtered={} dedup={} watermark={wm} dlq[{}] lag={}",
                started.elapsed().as_secs_f64(),
                c.records_in - last,
                c.records_in,
                c.records_windowed,
                c.records_filtered,
                c.records_deduplicated,
                dl.join(" "),
                handles.kafka.lag().values().map(|l| l.lag).sum::<i64>(),
            );
            last = c.records_in;
            if let Ok(t) = live_tap.lock() {
                let totals = WindowTotal::of_rows(t.values());
                if let Some(((key, _, _), row)) = totals.iter().max_by_key(|((_, _, ws), _)| *ws) {
                    println!(
                        "        latest window: {key} @ {} events={} sum={} users={} partitions={}{}",
                        rfc3339(i64::from(row.window_start) * 1000),
                        row.events,
                        row.amount_sum,
                        row.distinct_users,
                        row.partitions,
                        if row.is_final == 1 { " final" } else { "" }
                    );
                }
            }
        }
    });
    let stopper_counters = counters.clone();
    let stopper = tokio::spawn(async move {
        // Stop once everything produced was consumed, or at once if the feeder failed.
        while stopper_counters.snapshot().records_in < total
            && !failed.load(std::sync::atomic::Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.stop();
    });

    let report = job.run(&config, runner).await;
    live.abort();
    stopper.abort();
    let report = report?;
    feeder.await.context("the traffic feeder stopped")??;

    let c = &report.counters;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "\ndone in {secs:.1}s with {} checkpoints (the generator is paced; README has throughput figures)",
        report.checkpoints_taken
    );
    println!(
        "in={} = windowed {} + filtered {} + deduplicated {} + dead-lettered {}  -> accounting identity holds: {}",
        c.records_in,
        c.records_windowed,
        c.records_filtered,
        c.records_deduplicated,
        c.records_dead_lettered,
        c.identity_holds()
    );
    for (reason, n) in &c.dead_letters_by_reason {
        if *n > 0 {
            println!("  dead letters {reason}: {n} (on topic events.dlq)");
        }
    }
    for (rule, n) in contract_stats.snapshot() {
        println!("  contract rule {rule}: {n}");
    }

    let mut all = traffic.generate();
    all.extend(traffic.too_late(20));
    let oracle = Oracle::of(&all, config.window.size_ms as i64);
    let expected = oracle.windows_ending_by(traffic.last_closed_window_end(), config.window.size_ms as i64);
    let got = tap.lock().map(|t| WindowTotal::of_rows(t.values())).unwrap_or_default();
    let mismatches = expected
        .iter()
        .filter(|((key, ws), w)| {
            let Ok(ws32) = u32::try_from(ws / 1000) else { return true };
            // The demo runs without the enrichment stage: every segment is empty.
            got.get(&(key.clone(), String::new(), ws32)).is_none_or(|r| {
                r.events != w.count
                    || r.amount_sum != w.sum
                    || r.distinct_users != w.users.len() as u64
                    || r.is_final != 1
            })
        })
        .count();
    println!(
        "{} closed windows; {} differ from the oracle computed from the generated traffic",
        expected.len(),
        mismatches
    );
    println!("checkpoints: {}", config.checkpoints.url);
    if !opts.linger.is_zero() {
        println!("serving /metrics for {:.0}s more", opts.linger.as_secs_f64());
        tokio::time::sleep(opts.linger).await;
    }
    if mismatches > 0 || !c.identity_holds() {
        anyhow::bail!("the demo's results do not match the oracle");
    }
    Ok(())
}
