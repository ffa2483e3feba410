//! The runner: source task → processing loop (the job's chains) → sink tasks, joined by bounded
//! channels (see [`io`](super::io) for the backpressure they give).
//!
//! With checkpointing on, the processing loop takes a checkpoint at a batch boundary every
//! interval: it sends a barrier down both sink channels and waits until the sinks have flushed
//! everything before it, snapshots every operator into the state backend, and has the
//! coordinator upload the state with the source offsets, the watermark and the sink epoch.
//! After a crash the job restores the newest checkpoint, seeks the source to its offsets and
//! replays; outputs between that checkpoint and the crash are produced again, identically.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::chains::Chains;
use super::checkpointing::Checkpointing;
use super::io::{join, run_sink, run_source};
use super::processing::{Exit, JobState, Processing};
use super::workers::{Copies, Outputs, Workers};
use crate::dead_letter::DeadLetter;
use crate::error::{JobError, SourceError};
use crate::metrics::{CountersSnapshot, JobCounters};
use crate::operator::Operator;
use crate::sink::Sink;
use crate::source::{Source, SourceEvent};
use crate::state::StateBudget;
use crate::time::{Clock, SystemClock, Watermark};

/// How the runner behaves.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Batches each channel holds before the sender waits (backpressure). Default 8.
    pub channel_capacity: usize,
    /// How often the processing task wakes up without input to check idleness. Default 200 ms.
    pub tick_interval: Duration,
    /// Processing-time clock (swap in a [`ManualClock`](crate::time::ManualClock) for tests).
    pub clock: Arc<dyn Clock>,
    /// Worker threads that run a partition-scoped job's tasks (at least 1). Default: the cores
    /// this process may use ([`available_cores`]).
    pub workers: usize,
    /// The memory budget of keyed state, if it has one (see [`StateBudget`]). Default: none, the
    /// state is unbounded.
    pub state_budget: Option<StateBudget>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            channel_capacity: 8,
            tick_interval: Duration::from_millis(200),
            clock: Arc::new(SystemClock),
            workers: available_cores(),
            state_budget: None,
        }
    }
}

/// The cores this process may run on: the CPU affinity mask and a cgroup CPU quota (a
/// container's `--cpus`) both count; 1 when it cannot be told.
///
/// # Examples
/// ```
/// assert!(ferroflow_core::runtime::available_cores() >= 1);
/// ```
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Final counters.
    pub counters: CountersSnapshot,
    /// The last watermark ([`Watermark::MAX`] after bounded input).
    pub final_watermark: Watermark,
    /// Checkpoints (and savepoints) taken during the run.
    pub checkpoints_taken: u64,
    /// The checkpoint the run resumed from, if any.
    pub restored_from: Option<u64>,
    /// True when the run stopped on request rather than at the end of input.
    pub stopped_early: bool,
}

/// Asks a running job to stop at the next batch boundary, optionally with a savepoint.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<Option<StopRequest>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StopRequest {
    /// Take a savepoint at the next batch boundary and keep running.
    Savepoint(String),
    Stop,
    StopWithSavepoint(String),
}

impl ShutdownHandle {
    /// Stops after the current batch, taking a final checkpoint if checkpointing is on.
    pub fn stop(&self) {
        self.tx.send_replace(Some(StopRequest::Stop));
    }

    /// Takes the named savepoint at the next batch boundary; the job keeps running.
    pub fn savepoint(&self, name: impl Into<String>) {
        self.tx.send_replace(Some(StopRequest::Savepoint(name.into())));
    }

    /// Stops after the current batch and takes the named savepoint.
    pub fn stop_with_savepoint(&self, name: impl Into<String>) {
        self.tx.send_replace(Some(StopRequest::StopWithSavepoint(name.into())));
    }
}

/// Runs jobs: one source, one operator chain (or one per source partition), a result sink and a
/// dead-letter sink.
///
/// Build one with [`Runner::builder`] (checkpoints and state are set there), then name the
/// job's parts: [`job`](Runner::job) or [`job_per_partition`](Runner::job_per_partition), then
/// [`sink`](JobBuilder::sink), [`dead_letters`](JobBuilder::dead_letters) and
/// [`run`](JobBuilder::run).
///
/// # Examples
/// ```
/// use ferroflow_core::prelude::*;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let source = MemorySource::new((0..10i64).map(|i| Record::new(i, i)).collect());
/// let stream = Stream::<i64>::new().filter(|x| x % 2 == 0).map(|x| x * 100);
/// let (sink, dead_letters) = (CollectSink::new(), CollectSink::new());
/// let out = sink.handle();
/// let report = Runner::default().job(source, stream).sink(sink).dead_letters(dead_letters).run().await.unwrap();
/// assert_eq!(out.take(), vec![0, 200, 400, 600, 800]);
/// assert_eq!(report.counters.records_filtered, 5);
/// assert!(report.counters.identity_holds());
/// # });
/// ```
pub struct Runner {
    config: RunnerConfig,
    counters: JobCounters,
    shutdown: ShutdownHandle,
    shutdown_rx: watch::Receiver<Option<StopRequest>>,
    checkpointing: Option<Checkpointing>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("config", &self.config)
            .field("checkpointing", &self.checkpointing)
            .finish()
    }
}

impl Default for Runner {
    fn default() -> Self {
        Self::new(RunnerConfig::default())
    }
}

impl Runner {
    /// A runner with `config` and no checkpoints (see [`Runner::builder`] for checkpoints).
    pub fn new(config: RunnerConfig) -> Self {
        Self::assemble(config, None)
    }

    /// Starts building a runner: channel sizes, clock, state backend and checkpoints.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use ferroflow_core::prelude::*;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let runner = Runner::builder()
    ///     .checkpoints(format!("file://{}", dir.path().display()))
    ///     .every(Duration::from_secs(10))
    ///     .build()
    ///     .unwrap();
    /// # let _ = runner;
    /// ```
    pub fn builder() -> super::RunnerBuilder {
        super::RunnerBuilder::default()
    }

    pub(super) fn assemble(config: RunnerConfig, checkpointing: Option<Checkpointing>) -> Self {
        let (tx, rx) = watch::channel(None);
        let counters = JobCounters::default();
        if let Some(budget) = &config.state_budget {
            counters.watch_budget(budget.clone());
        }
        Self {
            config,
            counters,
            shutdown: ShutdownHandle { tx: Arc::new(tx) },
            shutdown_rx: rx,
            checkpointing,
        }
    }

    /// Live counters (clone it before running to watch a running job).
    pub fn counters(&self) -> JobCounters {
        self.counters.clone()
    }

    /// A handle that stops the job from another task (e.g. on SIGTERM).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// A job with one chain over the whole source; name its sinks next.
    pub fn job<S, J>(&mut self, source: S, job: J) -> JobBuilder<'_, S, J::Op>
    where
        J: crate::operator::IntoOperator,
        S: Source<<J::Op as Operator>::In>,
    {
        let op = self.budgeted(job.into_operator());
        JobBuilder::new(self, source, Chains::job(op))
    }

    /// `op`, its keyed state counted against the runner's budget, if it has one.
    fn budgeted<O: Operator>(&self, mut op: O) -> O {
        if let Some(budget) = &self.config.state_budget {
            op.attach_budget(budget);
        }
        op
    }

    /// Runs a job-scoped chain as one copy per worker ([`RunnerBuilder::workers`](super::RunnerBuilder::workers)),
    /// like a Flink job with parallelism N: `factory` builds each copy. Every batch is cut into
    /// one contiguous share per copy; at each [`key_by`](crate::Stream::key_by) the copies hand
    /// every record to the copy that owns its key (a hash of the key), so a key's windows live in
    /// one copy and see its records in input order. Timestamp steps share their notes, so every
    /// copy's watermark is the one a single chain would have: results, dead letters and counts do
    /// not depend on the number of workers. A checkpoint holds every copy's keys; a restore gives
    /// each copy the keys it owns, also with a different number of workers.
    ///
    /// The source need not be partitioned by key (it is for [`job_per_partition`](Self::job_per_partition)).
    /// A chain with a step whose state is not split by the record key (a
    /// [`dedup_by`](crate::Stream::dedup_by)) runs as one copy, with a warning. With one worker
    /// this is [`job`](Self::job) with `factory()`.
    ///
    /// As with Flink's keyed streams, the copies rely on the chain's shape:
    /// - steps between a `key_by` and the stateful step after it keep each record's key (a
    ///   [`process`](crate::Stream::process) that sets another key needs a `key_by` after it);
    /// - closures that keep state of their own (a counter in a `map`) get one instance per copy;
    /// - a user operator with per-key state implements
    ///   [`Operator::retain_keys`](crate::Operator::retain_keys) and snapshots only the keys it holds;
    /// - one [`assign_timestamps`](crate::Stream::assign_timestamps), before any window.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use ferroflow_core::prelude::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let clicks: Vec<Record<(String, i64)>> = (0..1_000u64)
    ///     .map(|i| Record::new((format!("user-{}", i % 7), i as i64 * 100), 0).with_position(SourcePosition::new(0, i)))
    ///     .collect();
    /// let per_minute = || {
    ///     Stream::<(String, i64)>::new()
    ///         .assign_timestamps(|c| c.1, WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5)))
    ///         .key_by(|c| Key::from(c.0.as_str()))
    ///         .window(WindowSpec::tumbling(Duration::from_secs(60)).unwrap(), Count)
    ///         .id("clicks-per-minute")
    /// };
    /// let sink = CollectSink::new();
    /// let rows = sink.handle();
    /// let mut runner = Runner::builder().workers(2).build().unwrap();
    /// runner.parallel_job(MemorySource::new(clicks), per_minute).sink(sink).discard_dead_letters().run().await.unwrap();
    /// let rows = rows.take();
    /// assert_eq!(rows.iter().map(|r| r.value).sum::<u64>(), 1_000);
    /// assert_eq!(rows.len(), 7 * 2, "7 users, 2 minutes");
    /// # });
    /// ```
    pub fn parallel_job<S, J, F>(&mut self, source: S, mut factory: F) -> JobBuilder<'_, S, J::Op>
    where
        F: FnMut() -> J,
        J: crate::operator::IntoOperator,
        S: Source<<J::Op as Operator>::In>,
    {
        let first = self.budgeted(factory().into_operator());
        let n = self.config.workers.max(1);
        if n > 1 && !first.splits_by_key() {
            tracing::warn!(
                workers = n,
                "the job has a step whose state is not split by the record key (a dedup): it runs as one copy"
            );
        }
        if n == 1 || !first.splits_by_key() {
            return JobBuilder::new(self, source, Chains::job(first));
        }
        let mut copies = Vec::with_capacity(n);
        copies.push(first);
        copies.extend((1..n).map(|_| self.budgeted(factory().into_operator())));
        match Chains::copies(copies) {
            Some(chains) => JobBuilder::new(self, source, chains),
            // Only for more copies than partition ids: run one.
            None => {
                let op = self.budgeted(factory().into_operator());
                JobBuilder::new(self, source, Chains::job(op))
            }
        }
    }

    /// A partition-scoped job: one chain per source partition, built by `factory` when the
    /// partition first shows up (Kafka Streams' task model); name its sinks next.
    ///
    /// Each task keeps its state under its partition in the backend and follows its own
    /// partition's watermark (or, while that partition is idle, the job's), so its results depend
    /// on its partition's records only. That is what lets several instances share the
    /// partitions of a consumer group, with [`CheckpointsBuilder::instance`](super::CheckpointsBuilder::instance)
    /// moving the state along. Keyed state is per partition: a key seen in two partitions has two
    /// windows.
    ///
    /// Over a [`UnionSource`](crate::source::UnionSource) the job is co-partitioned: partition `p`'s
    /// task runs partition `p` of both inputs (Kafka Streams' rule for joined topics), with the
    /// minimum of their watermarks and both sides' state under one prefix. The inputs must
    /// announce the same partition numbers, or the job fails at the start with what to change;
    /// both topics must also put a key in the same partition number (same partitioner and count).
    /// Such a job runs as one instance for now (the hand-over moves one partition at a time).
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::prelude::*;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let records = (0..6u64).map(|i| Record::new(i, 0).with_position(SourcePosition::new((i % 2) as u32, i))).collect();
    /// // Each partition's task tags what it emits with its partition.
    /// let factory = |p: u32| Stream::<u64>::new().map(move |x| (p, x));
    /// let sink = CollectSink::new();
    /// let out = sink.handle();
    /// Runner::default()
    ///     .job_per_partition(MemorySource::new(records), factory)
    ///     .sink(sink)
    ///     .dead_letters(CollectSink::new())
    ///     .run()
    ///     .await
    ///     .unwrap();
    /// let mut got = out.take();
    /// got.sort();
    /// assert_eq!(got, vec![(0, 0), (0, 2), (0, 4), (1, 1), (1, 3), (1, 5)]);
    /// # });
    /// ```
    pub fn job_per_partition<S, J, F>(&mut self, source: S, mut factory: F) -> JobBuilder<'_, S, J::Op>
    where
        F: FnMut(crate::record::PartitionId) -> J + Send + 'static,
        J: crate::operator::IntoOperator,
        S: Source<<J::Op as Operator>::In>,
    {
        let budget = self.config.state_budget.clone();
        let factory: super::chains::Factory<J::Op> = Box::new(move |p| {
            let mut op = factory(p).into_operator();
            if let Some(budget) = &budget {
                op.attach_budget(budget);
            }
            op
        });
        JobBuilder::new(self, source, Chains::per_partition(factory))
    }

    /// Restores, then runs the job until the source ends (bounded input), a stop is requested,
    /// or a component fails; flushes both sinks before returning.
    async fn run_chains<S, C, K, D>(
        &mut self,
        mut source: S,
        mut chains: Chains<C>,
        sink: K,
        dead_letters: D,
    ) -> Result<JobReport, JobError>
    where
        C: Operator,
        S: Source<C::In>,
        K: Sink<C::Out>,
        D: Sink<DeadLetter>,
    {
        if let Some(m) = chains.mismatch() {
            return Err(crate::error::ConfigError::Invalid(m.to_owned()).into());
        }
        let two_inputs = source.inputs() > 1;
        if chains.partitioned() && two_inputs {
            // Partition p's task runs partition p of both inputs: when the job runs as several
            // instances, both must change hands together, with the task's state.
            let instances = self.checkpointing.as_ref().is_some_and(|c| c.runs_as_instances());
            if instances && !source.assigns_inputs_together() {
                return Err(crate::error::ConfigError::Invalid(
                    "a job per partition over two inputs runs as several instances only when one \
                     consumer-group member reads both inputs, so that partition p of both moves between \
                     instances together (a `KafkaSource` with `co_topic`); the inputs of a `UnionSource` \
                     change hands independently: run one instance, or use `Runner::job`"
                        .into(),
                )
                .into());
            }
            source.require_co_partitioning();
        }
        if let Some(ceiling) = source.watermark_ceiling() {
            chains.set_ceiling(ceiling);
        }
        let ids = chains.state_ids();
        if let Some(dup) = ids.iter().enumerate().find_map(|(i, id)| ids[..i].contains(id).then_some(id)) {
            return Err(crate::error::ConfigError::Invalid(format!(
                "two stateful steps have the id `{dup}`: they would share one state namespace; give each its own `.id(..)`"
            ))
            .into());
        }
        let resumed = match self.checkpointing.as_mut() {
            Some(cp) => cp.restore(&mut chains, &mut source, &self.counters).await?,
            None => None,
        };
        let restored_from = resumed.as_ref().map(|r| r.id);
        let job = JobState::new(resumed.as_ref(), source.checkpoint_listener());

        let cap = self.config.channel_capacity.max(1);
        let (src_tx, mut src_rx) = mpsc::channel::<Option<SourceEvent<C::In>>>(cap);
        let (out_tx, out_rx) = mpsc::channel(cap);
        let (dlq_tx, dlq_rx) = mpsc::channel(cap);
        let source_task: JoinHandle<Result<(), SourceError>> = tokio::spawn(run_source(source, src_tx));
        let idle = self.config.tick_interval;
        let sink_task = tokio::spawn(run_sink(sink, out_rx, job.epoch, idle));
        let dlq_task = tokio::spawn(run_sink(dead_letters, dlq_rx, job.epoch, idle));

        let clock = Arc::clone(&self.config.clock);
        let mut shutdown = self.shutdown_rx.clone();
        let outputs = Outputs {
            results: out_tx,
            dead_letters: dlq_tx,
            counters: self.counters.clone(),
            consumes_records: chains.consumes_records(),
            per_input: two_inputs,
        };
        let workers = if chains.partitioned() {
            Some(Workers::start(self.config.workers, cap, &outputs, None)?)
        } else if let Some(breaker) = chains.breaker() {
            Some(Workers::start(
                chains.copy_count(),
                cap,
                &outputs,
                Some(Copies { breaker, key_steps: chains.key_steps() }),
            )?)
        } else {
            None
        };
        let mut processing = Processing::new(
            chains,
            job,
            self.checkpointing.as_mut(),
            &self.counters,
            clock,
            outputs,
            workers,
        );
        let exit = processing.run(&mut src_rx, &mut shutdown, self.config.tick_interval).await;
        let ended = matches!(exit, Exit::EndOfInput);
        let (failure, stopped) = match exit {
            Exit::Stopped(req) => (processing.on_stop(&req).await.err(), true),
            Exit::Failed(e) => (Some(e), false),
            Exit::EndOfInput | Exit::SinkGone | Exit::SourceFailed => (None, false),
        };
        let Processing { job, out_tx, dlq_tx, workers, .. } = processing;
        drop((out_tx, dlq_tx, src_rx));
        if !ended {
            // The source may be waiting for input that never comes; it has nothing left to deliver.
            source_task.abort();
        }
        // The workers finish what they were handed and drop their ends of the sink channels.
        let workers_res = match workers {
            Some(w) => w.finish().await,
            None => Ok(()),
        };

        let sink_res = join("sink", sink_task).await;
        let dlq_res = join("dead-letter sink", dlq_task).await;
        let src_res = source_task.await;
        sink_res??;
        dlq_res??;
        if let Some(e) = failure {
            return Err(e);
        }
        workers_res?;
        match src_res {
            Ok(r) => r?,
            Err(e) if e.is_cancelled() && !ended => {}
            Err(e) => return Err(JobError::Task { task: "source", detail: e.to_string() }),
        }
        Ok(JobReport {
            counters: self.counters.snapshot(),
            final_watermark: job.watermark,
            checkpoints_taken: job.checkpoints_taken,
            restored_from,
            stopped_early: stopped,
        })
    }
}

/// A job being named: its source and chains are set, its sinks come next.
///
/// [`run`](JobBuilder::run) exists once both the result sink and the dead letters are named:
/// [`dead_letters`](JobBuilder::dead_letters) with a sink, or
/// [`discard_dead_letters`](JobBuilder::discard_dead_letters) to say on purpose that they are only
/// counted and logged.
#[must_use = "a job does nothing until it runs"]
pub struct JobBuilder<'r, S, C: Operator, K = (), D = ()> {
    runner: &'r mut Runner,
    source: S,
    chains: Chains<C>,
    sink: K,
    dead_letters: D,
}

impl<S, C: Operator, K, D> std::fmt::Debug for JobBuilder<'_, S, C, K, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobBuilder").field("steps", &self.chains.step_names()).finish()
    }
}

impl<'r, S, C: Operator> JobBuilder<'r, S, C> {
    fn new(runner: &'r mut Runner, source: S, chains: Chains<C>) -> Self {
        Self { runner, source, chains, sink: (), dead_letters: () }
    }
}

impl<'r, S, C: Operator, D> JobBuilder<'r, S, C, (), D> {
    /// Where the job's results go.
    pub fn sink<K: Sink<C::Out>>(self, sink: K) -> JobBuilder<'r, S, C, K, D> {
        let Self { runner, source, chains, dead_letters, .. } = self;
        JobBuilder { runner, source, chains, sink, dead_letters }
    }
}

impl<'r, S, C: Operator, K> JobBuilder<'r, S, C, K, ()> {
    /// Where records that cannot go on go, each with its reason and source position.
    pub fn dead_letters<D: Sink<DeadLetter>>(self, dead_letters: D) -> JobBuilder<'r, S, C, K, D> {
        let Self { runner, source, chains, sink, .. } = self;
        JobBuilder { runner, source, chains, sink, dead_letters }
    }

    /// Keeps no dead letters: each is still counted (by reason, in the counters and metrics) and
    /// logged at `warn`, then dropped. For jobs whose input cannot be wrong (tests, generated
    /// data); anything else should keep them with [`dead_letters`](Self::dead_letters).
    pub fn discard_dead_letters(self) -> JobBuilder<'r, S, C, K, crate::sink::DiscardDeadLetters> {
        self.dead_letters(crate::sink::DiscardDeadLetters)
    }
}

impl<S, C, K, D> JobBuilder<'_, S, C, K, D>
where
    C: Operator,
    S: Source<C::In>,
    K: Sink<C::Out>,
    D: Sink<DeadLetter>,
{
    /// Restores the newest checkpoint (or the configured savepoint) when checkpoints are on, then
    /// runs until the source ends (bounded input), a stop is requested, or a component fails;
    /// flushes both sinks before returning.
    pub async fn run(self) -> Result<JobReport, JobError> {
        let Self { runner, source, chains, sink, dead_letters } = self;
        runner.run_chains(source, chains, sink, dead_letters).await
    }
}
