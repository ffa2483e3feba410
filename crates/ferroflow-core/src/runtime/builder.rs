//! Builds a [`Runner`]: channel sizes and clock, then, optionally, state and checkpoints.
//!
//! Settings that only make sense with checkpoints (the interval, a savepoint to start from, the
//! instance of a job run as several) exist only on [`CheckpointsBuilder`], which
//! [`RunnerBuilder::checkpoints`] returns: they cannot be set in an order that ignores them.

use std::sync::Arc;
use std::time::Duration;

use super::runner::{Runner, RunnerConfig};
use crate::error::{ConfigError, JobError};
use crate::state::{StateBackend, StateBackendSpec};
use crate::time::Clock;

/// Builds a [`Runner`]; see [`Runner::builder`].
#[must_use = "a builder does nothing until build()"]
#[derive(Default)]
pub struct RunnerBuilder {
    config: RunnerConfig,
    state: Option<Box<dyn StateSpec>>,
}

impl std::fmt::Debug for RunnerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerBuilder")
            .field("config", &self.config)
            .field("state", &self.state.is_some())
            .finish()
    }
}

/// A state backend to open when the runner is built.
#[cfg_attr(not(feature = "checkpoints"), allow(dead_code))]
trait StateSpec: Send {
    fn open(self: Box<Self>) -> Result<Box<dyn StateBackend>, JobError>;
}

impl<S: StateBackendSpec + Send> StateSpec for S {
    fn open(self: Box<Self>) -> Result<Box<dyn StateBackend>, JobError> {
        Ok((*self).open_backend()?)
    }
}

impl RunnerBuilder {
    /// Batches each channel holds before its sender waits (backpressure). Default 8.
    pub fn channel_capacity(mut self, batches: usize) -> Self {
        self.config.channel_capacity = batches;
        self
    }

    /// How often the processing loop wakes up without input to check idleness. Default 200 ms.
    pub fn tick_interval(mut self, every: Duration) -> Self {
        self.config.tick_interval = every;
        self
    }

    /// Bounds the memory of keyed state (`keyed_process` states and dedup ids) in this runner's
    /// jobs: what does not fit spills to the budget's local store (see [`StateBudget`](crate::state::StateBudget)).
    /// Default: unbounded.
    pub fn state_budget(mut self, budget: crate::state::StateBudget) -> Self {
        self.config.state_budget = Some(budget);
        self
    }

    /// The processing-time clock (a [`ManualClock`](crate::time::ManualClock) in tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.config.clock = clock;
        self
    }

    /// Worker threads that run a partition-scoped job's tasks
    /// ([`Runner::job_per_partition`](super::Runner::job_per_partition)): each partition's task
    /// runs on one of them, and a checkpoint is one cut across all. Default: the cores this
    /// process may use ([`available_cores`](super::available_cores)); `build` refuses 0.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::prelude::*;
    /// let runner = Runner::builder().workers(2).build().unwrap();
    /// # let _ = runner;
    /// assert!(Runner::builder().workers(0).build().is_err());
    /// ```
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers;
        self
    }

    /// Where operator state is snapshotted for checkpoints: [`MemoryStateBackend`](crate::state::MemoryStateBackend)
    /// (the default) or [`RocksDb::at(dir)`](crate::state::RocksDb::at) (feature `rocksdb`), or
    /// any opened [`StateBackend`]. Needs [`checkpoints`](Self::checkpoints): without them state
    /// is never snapshotted, and `build` refuses it.
    pub fn state(mut self, state: impl StateBackendSpec + Send + 'static) -> Self {
        self.state = Some(Box::new(state));
        self
    }

    /// Turns on checkpoints to the store at `url`: `file:///abs/dir`, `s3://bucket/prefix`
    /// (endpoint, region and credentials from the `AWS_*` variables or
    /// [`CheckpointsBuilder::s3`]) or `memory://` (tests). The run restores the newest usable
    /// checkpoint before its first record.
    #[cfg(feature = "checkpoints")]
    pub fn checkpoints(self, url: impl Into<String>) -> CheckpointsBuilder {
        CheckpointsBuilder::new(self, Target::Url(url.into()))
    }

    /// Turns on checkpoints to an opened store (e.g. one shared by tests).
    #[cfg(feature = "checkpoints")]
    pub fn checkpoint_store(self, store: crate::checkpoint::CheckpointStore) -> CheckpointsBuilder {
        CheckpointsBuilder::new(self, Target::Store(store))
    }

    /// The runner, without checkpoints.
    pub fn build(self) -> Result<Runner, JobError> {
        self.check()?;
        if self.state.is_some() {
            return Err(ConfigError::Invalid(
                "a state backend was set without checkpoints: it would never be written; add .checkpoints(url) or drop .state(..)"
                    .into(),
            )
            .into());
        }
        Ok(Runner::assemble(self.config, None))
    }
}

impl RunnerBuilder {
    fn check(&self) -> Result<(), JobError> {
        if self.config.workers == 0 {
            return Err(ConfigError::Invalid("workers must be at least 1".into()).into());
        }
        Ok(())
    }
}

#[cfg(feature = "checkpoints")]
enum Target {
    Url(String),
    Store(crate::checkpoint::CheckpointStore),
}

/// A runner with checkpoints being built; see [`RunnerBuilder::checkpoints`].
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use ferroflow_core::prelude::*;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let url = format!("file://{}", dir.path().join("checkpoints").display());
/// let job = || Stream::<i64>::new()
///     .assign_timestamps(|x| *x, WatermarkStrategy::monotonous())
///     .key_by(|_| Key::from("all"))
///     .window(WindowSpec::tumbling(Duration::from_millis(10)).unwrap(), Count)
///     .id("per-10ms");
/// let records = (0..100i64).map(|i| Record::new(i, 0).with_position(SourcePosition::new(0, i as u64))).collect();
/// let mut runner = Runner::builder().checkpoints(&url).every(Duration::from_millis(1)).build().unwrap();
/// let report = runner.job(MemorySource::new(records), job()).sink(CollectSink::new()).discard_dead_letters().run().await.unwrap();
/// assert!(report.checkpoints_taken >= 1);
///
/// // A second run resumes after the last record: nothing is read twice.
/// let mut again = Runner::builder().checkpoints(&url).build().unwrap();
/// let report = again.job(MemorySource::new(Vec::new()), job()).sink(CollectSink::new()).discard_dead_letters().run().await.unwrap();
/// assert!(report.restored_from.is_some());
/// # });
/// ```
#[cfg(feature = "checkpoints")]
#[must_use = "a builder does nothing until build()"]
pub struct CheckpointsBuilder {
    runner: RunnerBuilder,
    target: Target,
    config: Option<crate::checkpoint::CheckpointConfig>,
    job_id: Option<String>,
    interval: Option<Duration>,
    retain: Option<usize>,
    scratch_dir: Option<std::path::PathBuf>,
    s3: crate::checkpoint::S3Options,
    from_savepoint: Option<String>,
    instance: Option<String>,
    allow_non_restored_state: bool,
}

#[cfg(feature = "checkpoints")]
impl std::fmt::Debug for CheckpointsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointsBuilder")
            .field("job_id", &self.job_id)
            .field("interval", &self.interval)
            .field("from_savepoint", &self.from_savepoint)
            .field("instance", &self.instance)
            .finish()
    }
}

#[cfg(feature = "checkpoints")]
impl CheckpointsBuilder {
    fn new(runner: RunnerBuilder, target: Target) -> Self {
        Self {
            runner,
            target,
            config: None,
            job_id: None,
            interval: None,
            retain: None,
            scratch_dir: None,
            s3: crate::checkpoint::S3Options::default(),
            from_savepoint: None,
            instance: None,
            allow_non_restored_state: false,
        }
    }

    /// Time between periodic checkpoints. Default 10 s.
    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Periodic checkpoints kept in the store. Default 3.
    pub fn retain(mut self, checkpoints: usize) -> Self {
        self.retain = Some(checkpoints);
        self
    }

    /// Names the job in manifests. Default `ferroflow-job`.
    pub fn job_id(mut self, id: impl Into<String>) -> Self {
        self.job_id = Some(id.into());
        self
    }

    /// Local scratch directory for snapshots and downloads. Default: a directory named after the
    /// job and the process under the system's temporary directory.
    pub fn scratch_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.scratch_dir = Some(dir.into());
        self
    }

    /// Endpoint, region and credentials of an `s3://` store given by URL (path-style by default,
    /// as MinIO and Garage need); a store opened with `checkpoint_store` has its own.
    pub fn s3(mut self, options: crate::checkpoint::S3Options) -> Self {
        self.s3 = options;
        self
    }

    /// Every other checkpoint setting (format version, migration, empty start), at once; the
    /// builder's own settings (interval, retention, job id, scratch directory), set before or
    /// after, apply on top.
    pub fn config(mut self, config: crate::checkpoint::CheckpointConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Starts from the named savepoint instead of the newest checkpoint.
    pub fn from_savepoint(mut self, name: impl Into<String>) -> Self {
        self.from_savepoint = Some(name.into());
        self
    }

    /// Starts even if the checkpoint holds state of operators the job no longer has (their state
    /// is then not restored). Default false: such a restore fails and names the ids, as Flink's
    /// does without `--allowNonRestoredState`.
    pub fn allow_non_restored_state(mut self, allow: bool) -> Self {
        self.allow_non_restored_state = allow;
        self
    }

    /// This runner is instance `id` of a partition-scoped job run by several (one consumer
    /// group): its checkpoints go to `<store>/<id>/`, and when the source is assigned a
    /// partition its newest state is found among every instance's checkpoints and restored
    /// before its first record; a revoked partition is checkpointed for its next owner.
    pub fn instance(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(id.into());
        self
    }

    /// The state backend (see [`RunnerBuilder::state`]).
    pub fn state(mut self, state: impl StateBackendSpec + Send + 'static) -> Self {
        self.runner.state = Some(Box::new(state));
        self
    }

    /// Bounds the memory of keyed state (see [`RunnerBuilder::state_budget`]).
    pub fn state_budget(mut self, budget: crate::state::StateBudget) -> Self {
        self.runner = self.runner.state_budget(budget);
        self
    }

    /// The runner. Opens the store and the state backend; the store is listed when the job runs.
    pub fn build(self) -> Result<Runner, JobError> {
        use crate::checkpoint::{CheckpointConfig, CheckpointStore};
        self.runner.check()?;
        let store = match self.target {
            Target::Url(url) => CheckpointStore::from_url(&url, &self.s3)?,
            Target::Store(store) => store,
        };
        let mut config = self.config.unwrap_or_else(|| {
            let job_id = self.job_id.clone().unwrap_or_else(|| "ferroflow-job".into());
            let scratch = std::env::temp_dir().join(format!("ferroflow-{job_id}-{}", std::process::id()));
            CheckpointConfig::new(job_id, scratch)
        });
        if let Some(id) = self.job_id {
            config.job_id = id;
        }
        if let Some(dir) = self.scratch_dir {
            config.local_dir = dir;
        }
        if let Some(every) = self.interval {
            config.interval = every;
        }
        if let Some(n) = self.retain {
            config.retain = n;
        }
        if config.interval.is_zero() {
            return Err(ConfigError::NotPositive { name: "checkpoint interval", value_ms: 0 }.into());
        }
        let state = match self.runner.state {
            Some(spec) => spec.open()?,
            None => Box::new(crate::state::MemoryStateBackend::new()),
        };
        let settings = super::checkpointing::CheckpointSettings {
            store,
            config,
            state,
            from_savepoint: self.from_savepoint,
            instance: self.instance,
            allow_non_restored_state: self.allow_non_restored_state,
        };
        Ok(Runner::assemble(self.runner.config, Some(super::checkpointing::Checkpointing::new(settings))))
    }
}
