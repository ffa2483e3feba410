//! The file job: JSON-lines events → decode → event time → key by event type → tumbling windows
//! (count, sum, min, max of `amount`) → JSON-lines results, with state checkpointed to object
//! storage so a killed run resumes exactly where its last checkpoint left off.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use ferroflow_core::checkpoint::S3Options;
use ferroflow_core::sink::JsonLinesSink;
use ferroflow_core::source::JsonLinesSource;
use ferroflow_core::state::StateBackend;
use ferroflow_core::time::WatermarkStrategy;
use ferroflow_core::window::{Stats, WindowSpec};
use ferroflow_core::{JobReport, Key, Runner, Stream};

use crate::event::Event;
use crate::paced::Paced;

/// Settings of a file job run.
#[derive(Debug, Clone)]
pub struct FileJobConfig {
    /// Input files, one partition each.
    pub inputs: Vec<PathBuf>,
    /// Window rows are appended here (JSON lines).
    pub output: PathBuf,
    /// Dead letters are appended here (JSON lines).
    pub dead_letters: PathBuf,
    /// Local state and scratch directory.
    pub state_dir: PathBuf,
    /// Checkpoint store URL (`file:///…`, `s3://bucket/prefix`).
    pub checkpoint_url: String,
    /// S3 settings when the URL is `s3://`.
    pub s3: S3Options,
    /// Time between checkpoints.
    pub checkpoint_interval: Duration,
    /// Tumbling window size.
    pub window: Duration,
    /// Allowed lateness.
    pub allowed_lateness: Duration,
    /// Bounded out-of-orderness of the watermarks.
    pub out_of_orderness: Duration,
    /// Pause after each source batch (0 = full speed).
    pub pace: Duration,
    /// Bytes read from an input file per batch.
    pub read_chunk_bytes: usize,
    /// Use in-memory state instead of RocksDB.
    pub memory_state: bool,
    /// Start from this savepoint instead of the newest checkpoint.
    pub from_savepoint: Option<String>,
}

/// Opens the configured state backend.
pub fn open_state(dir: &std::path::Path, memory: bool) -> anyhow::Result<Box<dyn StateBackend>> {
    #[cfg(feature = "rocksdb")]
    if !memory {
        use ferroflow_core::state::{RocksDbOptions, RocksDbStateBackend};
        // Emptied: the job's state comes from its checkpoint, whatever a crash left on disk.
        return Ok(Box::new(RocksDbStateBackend::open_empty(
            dir.join("rocksdb"),
            RocksDbOptions::default(),
        )?));
    }
    let _ = (dir, memory);
    Ok(Box::new(ferroflow_core::state::MemoryStateBackend::new()))
}

/// The file job's runner: checkpoints to `checkpoint_url` with the configured state, starting
/// from `from_savepoint` when given. Take its counters and shutdown handle before [`run`].
pub fn runner(config: &FileJobConfig) -> anyhow::Result<Runner> {
    let mut builder = Runner::builder()
        .checkpoints(&config.checkpoint_url)
        .s3(config.s3.clone())
        .job_id("file-job")
        .every(config.checkpoint_interval)
        .scratch_dir(config.state_dir.join("scratch"))
        .state(open_state(&config.state_dir, config.memory_state)?);
    if let Some(name) = &config.from_savepoint {
        builder = builder.from_savepoint(name.clone());
    }
    Ok(builder.build()?)
}

/// Runs the job to the end of its input (or until `runner`'s shutdown handle stops it); `runner`
/// comes from [`runner`] (the default when `None`).
pub async fn run(config: &FileJobConfig, runner: Option<Runner>) -> anyhow::Result<JobReport> {
    let mut runner = match runner {
        Some(r) => r,
        None => self::runner(config)?,
    };
    let stream = Stream::<Bytes>::new()
        .try_map(Event::decode)
        .assign_timestamps(
            |e: &Event| e.ts,
            WatermarkStrategy::bounded_out_of_orderness(config.out_of_orderness),
        )
        .key_by(|e: &Event| Key::from(e.event_type.as_str()))
        .window(
            WindowSpec::tumbling(config.window)?.with_allowed_lateness(config.allowed_lateness),
            Stats::of(|e: &Event| e.amount),
        )
        .id("per-type");
    let source = Paced::new(
        JsonLinesSource::raw(&config.inputs).with_chunk_size(config.read_chunk_bytes),
        config.pace,
    );
    let sink = JsonLinesSink::append(&config.output).await?;
    let dlq = JsonLinesSink::append(&config.dead_letters).await?;
    Ok(runner.job(source, stream).sink(sink).dead_letters(dlq).run().await?)
}
