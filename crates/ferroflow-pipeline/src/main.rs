//! `ferroflow-pipeline`: runs ferroflow jobs and inspects their checkpoints.
//!
//! Longer than most files on purpose: it is the command line, one `clap` struct and one small
//! handler per subcommand (`run`, `file`, `demo`, `checkpoints`); the work itself lives in the library.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use ferroflow_core::Runner;
use ferroflow_core::checkpoint::{CheckpointConfig, CheckpointCoordinator, CheckpointStore, S3Options};
use ferroflow_pipeline::file_job::{self, FileJobConfig};

#[derive(Parser, Debug)]
#[command(name = "ferroflow-pipeline", version, about = "Runs ferroflow jobs and inspects their checkpoints")]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text", env = "FERROFLOW_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the embedded demo: an in-process Kafka (librdkafka's mock cluster) fed with traffic
    /// that includes malformed, contract-violating, duplicate, out-of-order and late events, the
    /// full pipeline with RocksDB state and file:// checkpoints, and ClickHouse if one answers at
    /// --clickhouse-url (otherwise a local file). No external service is needed.
    Demo(DemoArgs),
    /// Runs the Kafka → contract → dedup → windows → ClickHouse job until SIGTERM/SIGINT.
    ///
    /// Settings come from --config (TOML), then FERROFLOW__SECTION__KEY environment variables,
    /// then the flags below; `--print-config` shows the result (secrets masked). See README.
    Run(RunArgs),
    /// Produces generated traffic (the demo's mix, or clean events) to a Kafka topic.
    Generate(GenerateArgs),
    /// Aggregates JSON-lines event files in event-time windows, with checkpoints; resumes from the
    /// newest checkpoint when restarted.
    RunFile(RunFileArgs),
    /// Lists and prints checkpoints and savepoints.
    #[command(subcommand)]
    Checkpoints(CheckpointsCommand),
}

#[derive(Args, Debug, Clone)]
struct StoreArgs {
    /// Checkpoint store: file:///dir, s3://bucket/prefix.
    #[arg(long, env = "FERROFLOW_CHECKPOINT_URL")]
    checkpoints: String,
    /// The pipeline instance whose checkpoints to read (its `instance_id`: they live in
    /// `<checkpoints>/<instance>/`); leave it out for `run-file` checkpoints, which have no
    /// instance folder.
    #[arg(long)]
    instance: Option<String>,
    /// S3 endpoint (MinIO, Garage); AWS_ENDPOINT also works.
    #[arg(long, env = "FERROFLOW_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, env = "FERROFLOW_S3_REGION")]
    s3_region: Option<String>,
    /// S3 access key id (AWS_ACCESS_KEY_ID also works).
    #[arg(long, env = "FERROFLOW_S3_ACCESS_KEY_ID")]
    s3_access_key_id: Option<String>,
    /// S3 secret access key (AWS_SECRET_ACCESS_KEY also works); never logged.
    #[arg(long, env = "FERROFLOW_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    s3_secret_access_key: Option<String>,
}

impl StoreArgs {
    fn s3(&self) -> S3Options {
        S3Options::path_style(
            self.s3_endpoint.clone(),
            self.s3_region.clone(),
            self.s3_access_key_id.clone(),
            self.s3_secret_access_key.clone(),
        )
    }
}

#[derive(Args, Debug)]
struct RunFileArgs {
    /// Input JSON-lines files (one partition each).
    #[arg(long = "input", required = true)]
    inputs: Vec<PathBuf>,
    /// Where window rows are appended.
    #[arg(long)]
    output: PathBuf,
    /// Where dead letters are appended.
    #[arg(long)]
    dead_letters: PathBuf,
    /// Local state directory.
    #[arg(long)]
    state_dir: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    /// Milliseconds between checkpoints.
    #[arg(long, default_value_t = 10_000)]
    checkpoint_interval_ms: u64,
    /// Tumbling window size in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    window_ms: u64,
    /// Allowed lateness in milliseconds.
    #[arg(long, default_value_t = 0)]
    allowed_lateness_ms: u64,
    /// Bounded out-of-orderness in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    out_of_orderness_ms: u64,
    /// Pause after each input batch, in milliseconds (slows the job down for demos and tests).
    #[arg(long, default_value_t = 0)]
    pace_ms: u64,
    /// Bytes read from an input file per batch.
    #[arg(long, default_value_t = 1 << 20)]
    read_chunk_bytes: usize,
    /// Use in-memory state instead of RocksDB.
    #[arg(long)]
    memory_state: bool,
    /// Start from this savepoint instead of the newest checkpoint.
    #[arg(long)]
    from_savepoint: Option<String>,
    /// On SIGTERM/SIGINT, stop with a savepoint of this name (otherwise a final checkpoint).
    /// SIGUSR1 takes a savepoint named `manual-<ms>` at any time without stopping.
    #[arg(long)]
    savepoint_on_shutdown: Option<String>,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Events generated per partition. (At 100 000 per partition the in-process cluster was seen
    /// to drop the oldest messages before they were read; stay well below.)
    #[arg(long, default_value_t = 30_000)]
    events: u64,
    /// Partitions of the demo topic.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Directory for the demo's state, checkpoints and files (default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// ClickHouse to write to if it answers (otherwise window rows go to a file in --dir).
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    /// Address of /metrics, /healthz, /readyz and /status (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    http_listen: String,
    /// Keep serving /metrics for this many seconds after the run ends.
    #[arg(long, default_value_t = 0)]
    linger_secs: u64,
}

#[derive(Args, Debug, Default)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "FERROFLOW_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (kafka.brokers).
    #[arg(long)]
    brokers: Option<String>,
    /// Input topic (kafka.topic).
    #[arg(long)]
    topic: Option<String>,
    /// Consumer group (kafka.group_id).
    #[arg(long)]
    group_id: Option<String>,
    /// This instance's name among the pipeline's instances (instance_id); each running instance
    /// needs its own.
    #[arg(long)]
    instance_id: Option<String>,
    /// Dead-letter topic (dead_letters.topic).
    #[arg(long)]
    dlq_topic: Option<String>,
    /// ClickHouse HTTP URL (clickhouse.url).
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// Result table (clickhouse.table).
    #[arg(long)]
    clickhouse_table: Option<String>,
    /// Checkpoint store URL (checkpoints.url): file:///dir or s3://bucket/prefix.
    #[arg(long)]
    checkpoint_url: Option<String>,
    /// Milliseconds between checkpoints (checkpoints.interval_ms).
    #[arg(long)]
    checkpoint_interval_ms: Option<u64>,
    /// Local state directory (state.dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Worker threads that process the partitions (processing.workers; 0: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Memory for dedup state in MB before it spills to disk (state.memory_budget_mb; 0: unbounded).
    #[arg(long)]
    state_memory_budget_mb: Option<u64>,
    /// Address of /metrics, /healthz, /readyz, /status (http.listen).
    #[arg(long)]
    http_listen: Option<String>,
    /// Start from this savepoint instead of the newest checkpoint.
    #[arg(long)]
    from_savepoint: Option<String>,
    /// On SIGTERM/SIGINT, stop with a savepoint of this name (otherwise a final checkpoint).
    #[arg(long)]
    savepoint_on_shutdown: Option<String>,
    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    print_config: bool,
}

impl RunArgs {
    /// The flags that were given, as a partial configuration document.
    fn overrides(&self) -> serde_json::Value {
        let mut v = serde_json::json!({});
        let mut put = |section: Option<&str>, key: &str, value: serde_json::Value| {
            let target = match section {
                Some(sec) => &mut v[sec],
                None => &mut v,
            };
            target[key] = value;
        };
        if let Some(x) = &self.brokers {
            put(Some("kafka"), "brokers", x.clone().into());
        }
        if let Some(x) = &self.topic {
            put(Some("kafka"), "topic", x.clone().into());
        }
        if let Some(x) = &self.group_id {
            put(Some("kafka"), "group_id", x.clone().into());
        }
        if let Some(x) = &self.instance_id {
            put(None, "instance_id", x.clone().into());
        }
        if let Some(x) = &self.dlq_topic {
            put(Some("dead_letters"), "topic", x.clone().into());
        }
        if let Some(x) = &self.clickhouse_url {
            put(Some("clickhouse"), "url", x.clone().into());
        }
        if let Some(x) = &self.clickhouse_table {
            put(Some("clickhouse"), "table", x.clone().into());
        }
        if let Some(x) = &self.checkpoint_url {
            put(Some("checkpoints"), "url", x.clone().into());
        }
        if let Some(x) = self.checkpoint_interval_ms {
            put(Some("checkpoints"), "interval_ms", x.into());
        }
        if let Some(x) = self.workers {
            put(Some("processing"), "workers", x.into());
        }
        if let Some(x) = self.state_memory_budget_mb {
            put(Some("state"), "memory_budget_mb", x.into());
        }
        if let Some(x) = &self.state_dir {
            put(Some("state"), "dir", x.display().to_string().into());
        }
        if let Some(x) = &self.http_listen {
            put(Some("http"), "listen", x.clone().into());
        }
        v
    }
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "FERROFLOW_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic to produce to (created with --partitions if missing).
    #[arg(long, default_value = "events")]
    topic: String,
    /// Partitions.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Events per partition.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Only valid events (no malformed, contract-violating, test, duplicate or late ones).
    #[arg(long)]
    clean: bool,
    /// Keep producing: repeat with fresh event ids and later event times every round.
    #[arg(long)]
    repeat: bool,
    /// Pause between rounds with --repeat, milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pause_ms: u64,
    /// Also produce the users changelog that goes with each round's events to this topic (one
    /// partition, created if missing), for the enrichment stage (`[enrichment]`).
    #[arg(long)]
    users_topic: Option<String>,
}

#[derive(Subcommand, Debug)]
enum CheckpointsCommand {
    /// Lists retained checkpoints and all savepoints.
    List(ListArgs),
    /// Prints one manifest as JSON.
    Show(ShowArgs),
}

#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args, Debug)]
struct ShowArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Checkpoint id (default: the newest).
    #[arg(long)]
    id: Option<u64>,
    /// Savepoint name (instead of a checkpoint id).
    #[arg(long, conflicts_with = "id")]
    savepoint: Option<String>,
}

fn init_logs(format: &str, default_filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A line when each checkpoint and sink-flush span closes, with its fields and duration.
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("--log-format must be text or json, got {other}"),
    }
    Ok(())
}

async fn coordinator(store: &StoreArgs, scratch: &std::path::Path) -> anyhow::Result<CheckpointCoordinator> {
    let mut s = CheckpointStore::from_url(&store.checkpoints, &store.s3())?;
    if let Some(instance) = &store.instance {
        s = s.child(instance);
    }
    Ok(CheckpointCoordinator::open(s, CheckpointConfig::new("cli", scratch)).await?)
}

/// The binary's allocator: glibc's malloc cost a third of a worker's time when one thread frees what
/// another allocated (message payloads), see docs/adr/0003-task-and-thread-model.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo prints its own live summary; its logs only say what goes wrong.
    let default_filter = if matches!(cli.command, Command::Demo(_)) { "warn" } else { "info" };
    init_logs(&cli.log_format, default_filter)?;
    match cli.command {
        Command::RunFile(a) => run_file(a).await,
        Command::Demo(a) => {
            ferroflow_pipeline::demo::run(ferroflow_pipeline::demo::DemoOptions {
                events_per_partition: a.events,
                partitions: a.partitions,
                dir: a.dir,
                clickhouse_url: a.clickhouse_url,
                http_listen: a.http_listen,
                linger: Duration::from_secs(a.linger_secs),
            })
            .await
        }
        Command::Run(a) => run_job(a).await,
        Command::Generate(a) => generate(a).await,
        Command::Checkpoints(CheckpointsCommand::List(a)) => {
            let scratch = tempfile_dir()?;
            let mut c = coordinator(&a.store, &scratch).await?;
            for m in c.list_checkpoints().await? {
                println!(
                    "checkpoint {:>6}  created_at_ms={}  files={}  state_bytes={}  watermark={}  offsets={:?}",
                    m.id,
                    m.created_at_ms,
                    m.files.len(),
                    m.state_bytes(),
                    m.watermark,
                    m.source_offsets
                );
            }
            for m in c.list_savepoints().await? {
                println!(
                    "savepoint  {:>6}  name={}  created_at_ms={}  files={}  state_bytes={}",
                    m.id,
                    m.name.as_deref().unwrap_or("?"),
                    m.created_at_ms,
                    m.files.len(),
                    m.state_bytes()
                );
            }
            Ok(())
        }
        Command::Checkpoints(CheckpointsCommand::Show(a)) => {
            let scratch = tempfile_dir()?;
            let mut c = coordinator(&a.store, &scratch).await?;
            let manifest = match (&a.savepoint, a.id) {
                (Some(name), _) => {
                    c.list_savepoints().await?.into_iter().find(|m| m.name.as_deref() == Some(name))
                }
                (None, Some(id)) => c.list_checkpoints().await?.into_iter().find(|m| m.id == id),
                (None, None) => c.list_checkpoints().await?.into_iter().last(),
            }
            .context("no such checkpoint or savepoint")?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
            Ok(())
        }
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ferroflow-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

async fn run_file(a: RunFileArgs) -> anyhow::Result<()> {
    let config = FileJobConfig {
        inputs: a.inputs,
        output: a.output,
        dead_letters: a.dead_letters,
        state_dir: a.state_dir,
        checkpoint_url: a.store.checkpoints.clone(),
        s3: a.store.s3(),
        checkpoint_interval: Duration::from_millis(a.checkpoint_interval_ms),
        window: Duration::from_millis(a.window_ms),
        allowed_lateness: Duration::from_millis(a.allowed_lateness_ms),
        out_of_orderness: Duration::from_millis(a.out_of_orderness_ms),
        pace: Duration::from_millis(a.pace_ms),
        read_chunk_bytes: a.read_chunk_bytes,
        memory_state: a.memory_state,
        from_savepoint: a.from_savepoint,
    };
    let runner = file_job::runner(&config)?;
    install_signal_handlers(&runner, a.savepoint_on_shutdown);
    let report = file_job::run(&config, Some(runner)).await?;
    println!("{}", serde_json::to_string(&report.counters)?);
    tracing::info!(
        checkpoints = report.checkpoints_taken,
        restored_from = ?report.restored_from,
        stopped_early = report.stopped_early,
        "job finished"
    );
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

/// Installs SIGTERM/SIGINT (stop, with a final checkpoint or a savepoint) and SIGUSR1 (savepoint,
/// keep running) handlers for `runner`.
fn install_signal_handlers(runner: &Runner, savepoint_on_shutdown: Option<String>) {
    let handle = runner.shutdown_handle();
    let on_demand = runner.shutdown_handle();
    tokio::spawn(async move {
        let Ok(mut usr1) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        else {
            return;
        };
        while usr1.recv().await.is_some() {
            let name = format!(
                "manual-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            );
            tracing::info!(savepoint = %name, "SIGUSR1: taking a savepoint");
            on_demand.savepoint(name);
        }
    });
    tokio::spawn(async move {
        if wait_for_signal().await.is_ok() {
            tracing::info!("shutdown requested: finishing the batch, then checkpointing");
            match savepoint_on_shutdown {
                Some(name) => handle.stop_with_savepoint(name),
                None => handle.stop(),
            }
        }
    });
}

async fn run_job(a: RunArgs) -> anyhow::Result<()> {
    use ferroflow_pipeline::config::PipelineConfig;
    let config = PipelineConfig::load(a.config.as_deref(), &a.overrides())?;
    if a.print_config {
        println!("{config:#?}");
        return Ok(());
    }
    tracing::info!(pipeline = %config.pipeline_id, instance = %config.instance(), topic = %config.kafka.topic, "starting");
    let job = ferroflow_pipeline::job::prepare(&config).await?;
    let runner = ferroflow_pipeline::job::PreparedJob::runner(&config, a.from_savepoint.clone())?;
    let (endpoint, _addr) =
        ferroflow_pipeline::job::serve_endpoint(&config, &job.handles, runner.counters()).await?;
    install_signal_handlers(&runner, a.savepoint_on_shutdown.clone());
    ferroflow_pipeline::job::mark_ready_when_running(std::sync::Arc::clone(&endpoint), runner.counters());
    let report = job.run(&config, runner).await?;
    println!("{}", serde_json::to_string(&report.counters)?);
    tracing::info!(
        checkpoints = report.checkpoints_taken,
        restored_from = ?report.restored_from,
        stopped_early = report.stopped_early,
        identity_holds = report.counters.identity_holds(),
        "job finished"
    );
    Ok(())
}

async fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    use ferroflow_pipeline::traffic::TrafficConfig;
    ferroflow_kafka::ensure_topic(&a.brokers, &Default::default(), &a.topic, a.partitions as i32).await?;
    if let Some(users) = &a.users_topic {
        ferroflow_kafka::ensure_topic(&a.brokers, &Default::default(), users, 1).await?;
    }
    let mut round = 0u64;
    loop {
        let traffic = TrafficConfig {
            partitions: a.partitions,
            events_per_partition: a.events,
            seed: 7 + round,
            start_ms: 1_767_225_600_000 + round as i64 * 40 * 60_000,
            dirty: !a.clean,
            ..Default::default()
        };
        if let Some(users) = &a.users_topic {
            // Before the events: the changes of their time are in the table when they come.
            let changes: Vec<ferroflow_pipeline::traffic::Generated> = traffic
                .user_changes()
                .iter()
                .map(|c| ferroflow_pipeline::traffic::Generated {
                    partition: 0,
                    payload: c.payload(),
                    fate: ferroflow_pipeline::traffic::Fate::Windowed,
                    fields: None,
                })
                .collect();
            let n = ferroflow_pipeline::demo::produce(&a.brokers, users, &changes).await?;
            println!("produced {n} user changes to {users} (round {round})");
        }
        let events = traffic.generate();
        let n = ferroflow_pipeline::demo::produce(&a.brokers, &a.topic, &events).await?;
        println!("produced {n} events to {} (round {round})", a.topic);
        if !a.repeat {
            return Ok(());
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(a.pause_ms)).await;
    }
}
