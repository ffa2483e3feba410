//! `ferroflow-pipeline`: runs ferroflow jobs and inspects their checkpoints.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use ferroflow_core::checkpoint::{CheckpointConfig, CheckpointCoordinator, CheckpointStore, S3Options};
use ferroflow_core::{Runner, RunnerConfig};
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
    /// Runs the embedded demo: generated traffic with bad, duplicate, out-of-order and late events
    /// through the windowed job, with RocksDB state and local checkpoints. No external service.
    Demo(DemoArgs),
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
        S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
            virtual_hosted_style: false,
        }
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
    /// Events generated per partition.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Partitions (input files).
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Directory for the demo's files (default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
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

fn init_logs(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("--log-format must be text or json, got {other}"),
    }
    Ok(())
}

async fn coordinator(store: &StoreArgs, scratch: &std::path::Path) -> anyhow::Result<CheckpointCoordinator> {
    let s = CheckpointStore::from_url(&store.checkpoints, &store.s3())?;
    Ok(CheckpointCoordinator::open(s, CheckpointConfig::new("cli", scratch)).await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(&cli.log_format)?;
    match cli.command {
        Command::RunFile(a) => run_file(a).await,
        Command::Demo(a) => demo(a).await,
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
    let runner = Runner::new(RunnerConfig::default());
    let handle = runner.shutdown_handle();
    let savepoint = a.savepoint_on_shutdown;
    let on_demand = runner.shutdown_handle();
    tokio::spawn(async move {
        // SIGUSR1 takes a savepoint on demand (`kill -USR1 <pid>`); the job keeps running.
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
            match savepoint {
                Some(name) => handle.stop_with_savepoint(name),
                None => handle.stop(),
            }
        }
    });
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

async fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let dir = match a.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("ferroflow-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (inputs, traffic) =
        ferroflow_pipeline::demo::generate(&dir, a.partitions, a.events, 1_700_000_000_000)?;
    println!(
        "generated {} lines in {} partitions under {} ({} malformed, {} producer retries (the file job does not deduplicate yet), {} far-late)",
        traffic.lines,
        a.partitions,
        dir.display(),
        traffic.malformed,
        traffic.duplicates,
        traffic.late
    );
    let config = FileJobConfig {
        inputs,
        output: dir.join("windows.jsonl"),
        dead_letters: dir.join("dead-letters.jsonl"),
        state_dir: dir.join("state"),
        checkpoint_url: format!("file://{}", dir.join("checkpoints").display()),
        s3: S3Options::default(),
        checkpoint_interval: Duration::from_millis(500),
        window: Duration::from_secs(60),
        allowed_lateness: Duration::from_secs(30),
        out_of_orderness: Duration::from_secs(5),
        pace: Duration::ZERO,
        read_chunk_bytes: 256 << 10,
        memory_state: false,
        from_savepoint: None,
    };
    let runner = Runner::new(RunnerConfig::default());
    let counters = runner.counters();
    let started = std::time::Instant::now();
    let live = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let c = counters.snapshot();
            let rate = c.records_in as f64 / started.elapsed().as_secs_f64().max(1e-3);
            println!(
                "  live: in={} windowed={} dead_letters={} rows={} watermark={} ({:.0} events/s)",
                c.records_in,
                c.records_windowed,
                c.records_dead_lettered,
                c.window_rows_emitted,
                c.watermark,
                rate
            );
        }
    });
    let report = file_job::run(&config, Some(runner)).await?;
    live.abort();
    let c = &report.counters;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "\ndone in {secs:.2}s: {:.0} events/s, {} checkpoints",
        c.records_in as f64 / secs,
        report.checkpoints_taken
    );
    println!(
        "records_in={} windowed={} filtered={} deduplicated={} dead_lettered={} -> identity holds: {}",
        c.records_in,
        c.records_windowed,
        c.records_filtered,
        c.records_deduplicated,
        c.records_dead_lettered,
        c.identity_holds()
    );
    for (reason, n) in &c.dead_letters_by_reason {
        if *n > 0 {
            println!("  dead letters {reason}: {n}");
        }
    }
    let rows = std::fs::read_to_string(&config.output)?;
    println!("latest windows ({} rows in {}):", rows.lines().count(), config.output.display());
    for line in rows.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev() {
        println!("  {line}");
    }
    println!("dead letters: {}  checkpoints: {}", config.dead_letters.display(), config.checkpoint_url);
    Ok(())
}
