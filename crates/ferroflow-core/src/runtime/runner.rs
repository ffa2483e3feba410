//! Source task → processing task (the whole chain) → sink tasks, joined by bounded channels.
//!
//! The channels hold at most `channel_capacity` batches each, so a slow sink fills its channel,
//! the processing task waits on it, the source channel fills in turn, and the source stops
//! reading: memory stays bounded and the slowdown propagates to the input instead.
//!
//! With checkpointing on, the processing task takes a checkpoint at a batch boundary every
//! interval: it sends a barrier down both sink channels and waits until the sinks have flushed
//! everything before it, snapshots every operator into the state backend, and has the
//! coordinator upload the state with the source offsets, the watermark and the sink epoch.
//! After a crash the job restores the newest checkpoint, seeks the source to its offsets and
//! replays; outputs between that checkpoint and the crash are produced again, identically.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::tasks::{Backend, Factory, Tasks};
use crate::dead_letter::DeadLetter;
use crate::error::{JobError, SinkError, SourceError};
use crate::metrics::{CountersSnapshot, JobCounters};
use crate::operator::{Context, IntoOperator, Operator, Signal};
use crate::record::{PartitionId, Record};
use crate::sink::Sink;
use crate::source::{CheckpointListener, Source, SourceEvent};
#[cfg(feature = "checkpoints")]
use crate::state::StateBackend;
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
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self { channel_capacity: 8, tick_interval: Duration::from_millis(200), clock: Arc::new(SystemClock) }
    }
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
enum StopRequest {
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

#[cfg(feature = "checkpoints")]
struct Checkpointing {
    coordinator: crate::checkpoint::CheckpointCoordinator,
    state: Box<dyn StateBackend>,
    /// Restore this savepoint instead of the newest checkpoint.
    from_savepoint: Option<String>,
    /// Where partition state moves between instances (partition-scoped jobs).
    hand_over: Option<crate::checkpoint::PartitionHandOver>,
}

/// Runs jobs: one source, one operator chain, a result sink and a dead-letter sink.
///
/// # Examples
/// ```
/// use ferroflow_core::sink::CollectSink;
/// use ferroflow_core::source::MemorySource;
/// use ferroflow_core::{Record, Runner, Stream};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let source = MemorySource::new((0..10i64).map(|i| Record::new(i, i)).collect());
/// let stream = Stream::<i64>::new().filter(|x| x % 2 == 0).map(|x| x * 100);
/// let (sink, dlq) = (CollectSink::new(), CollectSink::new());
/// let out = sink.handle();
/// let report = Runner::default().run(source, stream, sink, dlq).await.unwrap();
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
    #[cfg(feature = "checkpoints")]
    checkpointing: Option<Checkpointing>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("config", &self.config).finish()
    }
}

impl Default for Runner {
    fn default() -> Self {
        Self::new(RunnerConfig::default())
    }
}

/// What travels to a sink task.
enum SinkMsg<T> {
    Batch(Vec<T>),
    /// Flush everything before this point, answer, then begin `next_epoch`.
    Barrier {
        ack: oneshot::Sender<Result<(), SinkError>>,
        next_epoch: u64,
    },
}

impl Runner {
    /// A runner with `config`.
    pub fn new(config: RunnerConfig) -> Self {
        let (tx, rx) = watch::channel(None);
        Self {
            config,
            counters: JobCounters::default(),
            shutdown: ShutdownHandle { tx: Arc::new(tx) },
            shutdown_rx: rx,
            #[cfg(feature = "checkpoints")]
            checkpointing: None,
        }
    }

    /// Turns on periodic checkpoints of `state` through `coordinator`; `run` restores the newest
    /// usable checkpoint before the first record.
    #[cfg(feature = "checkpoints")]
    pub fn with_checkpoints(
        mut self,
        coordinator: crate::checkpoint::CheckpointCoordinator,
        state: Box<dyn StateBackend>,
    ) -> Self {
        self.checkpointing =
            Some(Checkpointing { coordinator, state, from_savepoint: None, hand_over: None });
        self
    }

    /// Lets partitions of a [`run_partitioned`](Self::run_partitioned) job move between
    /// instances with their state (needs checkpoints on, with the coordinator opened on
    /// [`PartitionHandOver::instance_store`](crate::checkpoint::PartitionHandOver::instance_store)):
    /// when the source is assigned a partition, its newest state is found among every instance's
    /// checkpoints and restored before its first record; when a partition is revoked, a checkpoint
    /// is taken for the next owner and the partition's task ends.
    #[cfg(feature = "checkpoints")]
    pub fn with_hand_over(mut self, hand_over: crate::checkpoint::PartitionHandOver) -> Self {
        if let Some(c) = &mut self.checkpointing {
            c.hand_over = Some(hand_over);
        }
        self
    }

    /// Starts from the named savepoint instead of the newest checkpoint (needs checkpoints on).
    #[cfg(feature = "checkpoints")]
    pub fn from_savepoint(mut self, name: impl Into<String>) -> Self {
        if let Some(c) = &mut self.checkpointing {
            c.from_savepoint = Some(name.into());
        }
        self
    }

    /// Live counters (clone it before `run` to watch a running job).
    pub fn counters(&self) -> JobCounters {
        self.counters.clone()
    }

    /// A handle that stops the job from another task (e.g. on SIGTERM).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Runs the job until the source ends (bounded input), a stop is requested, or a component
    /// fails; flushes both sinks before returning.
    pub async fn run<S, J, K, D>(
        &mut self,
        source: S,
        job: J,
        sink: K,
        dead_letters: D,
    ) -> Result<JobReport, JobError>
    where
        J: IntoOperator,
        S: Source<<J::Op as Operator>::In>,
        K: Sink<<J::Op as Operator>::Out>,
        D: Sink<DeadLetter>,
    {
        self.run_tasks(source, Tasks::job(job.into_operator()), sink, dead_letters).await
    }

    /// Runs a partition-scoped job: one chain per source partition, built by `factory` when the
    /// partition first shows up (Kafka Streams' task model).
    ///
    /// Each task keeps its state under its partition in the backend and follows its own
    /// partition's watermark (or, while that partition is idle, the job's), so its results depend
    /// on its partition's records only. That is what lets several instances share the
    /// partitions of a consumer group, with [`with_hand_over`](Self::with_hand_over) moving the
    /// state along. Keyed state is per partition: a key seen in two partitions has two windows.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::sink::CollectSink;
    /// use ferroflow_core::source::MemorySource;
    /// use ferroflow_core::{Record, Runner, SourcePosition, Stream};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let records = (0..6u64).map(|i| Record::new(i, 0).with_position(SourcePosition::new((i % 2) as u32, i))).collect();
    /// // Each partition's task tags what it emits with its partition.
    /// let factory = |p: u32| Stream::<u64>::new().map(move |x| (p, x));
    /// let (sink, dlq) = (CollectSink::new(), CollectSink::new());
    /// let out = sink.handle();
    /// Runner::default().run_partitioned(MemorySource::new(records), factory, sink, dlq).await.unwrap();
    /// let mut got = out.take();
    /// got.sort();
    /// assert_eq!(got, vec![(0, 0), (0, 2), (0, 4), (1, 1), (1, 3), (1, 5)]);
    /// # });
    /// ```
    pub async fn run_partitioned<S, J, F, K, D>(
        &mut self,
        source: S,
        mut factory: F,
        sink: K,
        dead_letters: D,
    ) -> Result<JobReport, JobError>
    where
        F: FnMut(PartitionId) -> J + Send + 'static,
        J: IntoOperator,
        S: Source<<J::Op as Operator>::In>,
        K: Sink<<J::Op as Operator>::Out>,
        D: Sink<DeadLetter>,
    {
        let factory: Factory<J::Op> = Box::new(move |p| factory(p).into_operator());
        self.run_tasks(source, Tasks::per_partition(factory), sink, dead_letters).await
    }

    async fn run_tasks<S, C, K, D>(
        &mut self,
        mut source: S,
        mut tasks: Tasks<C>,
        sink: K,
        dead_letters: D,
    ) -> Result<JobReport, JobError>
    where
        C: Operator,
        S: Source<C::In>,
        K: Sink<C::Out>,
        D: Sink<DeadLetter>,
    {
        let hooks = self.install_hand_over(&tasks, &mut source);
        let restored = self.restore(&mut tasks, &mut source, hooks.as_deref()).await?;
        self.drive(source, tasks, sink, dead_letters, restored, hooks).await
    }

    #[cfg(feature = "checkpoints")]
    fn install_hand_over<C: Operator, S: Source<C::In>>(
        &mut self,
        tasks: &Tasks<C>,
        source: &mut S,
    ) -> Option<Arc<HandOver>> {
        let cp = self.checkpointing.as_ref()?;
        let hand_over = cp.hand_over.clone().filter(|_| tasks.partitioned())?;
        let hooks = Arc::new(super::handover::HandOverHooks::new(
            tokio::runtime::Handle::current(),
            hand_over,
            &cp.coordinator.config().local_dir,
        ));
        let lifecycle: Arc<dyn crate::source::PartitionLifecycle> = hooks.clone();
        source.set_partition_lifecycle(lifecycle).then_some(hooks)
    }

    #[cfg(not(feature = "checkpoints"))]
    fn install_hand_over<C: Operator, S: Source<C::In>>(
        &mut self,
        _tasks: &Tasks<C>,
        _source: &mut S,
    ) -> Option<Arc<HandOver>> {
        None
    }

    #[cfg(feature = "checkpoints")]
    async fn restore<C: Operator, S: Source<C::In>>(
        &mut self,
        tasks: &mut Tasks<C>,
        source: &mut S,
        hooks: Option<&HandOver>,
    ) -> Result<Option<Resumed>, JobError> {
        use crate::checkpoint::RestoreOutcome;
        let started = Instant::now();
        let Some(cp) = &mut self.checkpointing else { return Ok(None) };
        let manifest = match cp.from_savepoint.take() {
            Some(name) => Some(cp.coordinator.restore_savepoint(&name, cp.state.as_mut()).await?),
            None => match cp.coordinator.restore_latest(cp.state.as_mut()).await? {
                RestoreOutcome::Fresh => None,
                RestoreOutcome::Restored(m) => Some(*m),
            },
        };
        let Some(m) = manifest else { return Ok(None) };
        tasks.restore(cp.state.as_mut())?;
        tasks.resume_at(Watermark(m.watermark));
        source.seek(&m.source_offsets)?;
        if let Some(h) = hooks {
            h.set_live(m.source_offsets.iter().map(|(p, o)| (*p, *o)));
        }
        self.counters.record_restore(started.elapsed());
        self.counters.set_state_stats(cp.state.stats());
        Ok(Some(Resumed { id: m.id, offsets: m.source_offsets, watermark: m.watermark, epoch: m.sink_epoch }))
    }

    #[cfg(not(feature = "checkpoints"))]
    async fn restore<C: Operator, S: Source<C::In>>(
        &mut self,
        _tasks: &mut Tasks<C>,
        _source: &mut S,
        _hooks: Option<&HandOver>,
    ) -> Result<Option<Resumed>, JobError> {
        Ok(None)
    }

    /// The live state backend, when checkpointing is on.
    fn state(&mut self) -> Option<&mut Backend> {
        #[cfg(feature = "checkpoints")]
        {
            self.checkpointing.as_mut().map(|c| &mut *c.state)
        }
        #[cfg(not(feature = "checkpoints"))]
        {
            None
        }
    }

    fn checkpointing_enabled(&self) -> Option<Duration> {
        #[cfg(feature = "checkpoints")]
        {
            self.checkpointing.as_ref().map(|c| c.coordinator.config().interval)
        }
        #[cfg(not(feature = "checkpoints"))]
        {
            None
        }
    }

    #[allow(clippy::too_many_lines)]
    async fn drive<S, C, K, D>(
        &mut self,
        source: S,
        mut tasks: Tasks<C>,
        sink: K,
        dead_letters: D,
        resumed: Option<Resumed>,
        hooks: Option<Arc<HandOver>>,
    ) -> Result<JobReport, JobError>
    where
        C: Operator,
        S: Source<C::In>,
        K: Sink<C::Out>,
        D: Sink<DeadLetter>,
    {
        let cap = self.config.channel_capacity.max(1);
        let listener = source.checkpoint_listener();
        let first_epoch = resumed.as_ref().map_or(0, |r| r.epoch + 1);
        // `None` on this channel is the source's explicit end of input; the channel closing
        // without it means the source failed (its error comes from the task's result).
        let (src_tx, mut src_rx) = mpsc::channel::<Option<SourceEvent<C::In>>>(cap);
        let (out_tx, out_rx) = mpsc::channel::<SinkMsg<C::Out>>(cap);
        let (dlq_tx, dlq_rx) = mpsc::channel::<SinkMsg<DeadLetter>>(cap);

        let source_task: JoinHandle<Result<(), SourceError>> = tokio::spawn(run_source(source, src_tx));
        let idle = self.config.tick_interval;
        let sink_task = tokio::spawn(run_sink(sink, out_rx, first_epoch, idle));
        let dlq_task = tokio::spawn(run_sink(dead_letters, dlq_rx, first_epoch, idle));

        let mut job = JobState {
            offsets: BTreeMap::new(),
            watermark: Watermark::MIN,
            epoch: 0,
            checkpoints_taken: 0,
            listener,
        };
        let restored_from = resumed.as_ref().map(|r| r.id);
        if let Some(r) = resumed {
            job.offsets = r.offsets;
            job.watermark = Watermark(r.watermark);
            job.epoch = first_epoch;
        }
        self.counters.set_watermark(job.watermark.0);
        let clock = Arc::clone(&self.config.clock);
        let counts_out = !tasks.consumes_records();
        self.counters.set_operators(tasks.step_names());
        let mut ctx = Context::new(clock.now_ms());
        let mut input: Vec<Record<C::In>> = Vec::new();
        let mut revoked: Option<Vec<PartitionId>> = None;
        let mut output: Vec<Record<C::Out>> = Vec::new();
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let checkpoint_every = self.checkpointing_enabled();
        let mut last_checkpoint = Instant::now();
        let mut shutdown = self.shutdown_rx.clone();
        let mut stop: Option<StopRequest> = None;
        let mut failure: Option<JobError> = None;
        let mut sink_gone = false;
        let mut source_failed = false;
        let mut savepoint_now: Option<String> = None;

        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    match shutdown.borrow_and_update().clone() {
                        Some(StopRequest::Savepoint(name)) => savepoint_now = Some(name),
                        other => stop = other,
                    }
                    None
                }
                // A sink task that ended early failed: stop now, even if the source is quiet.
                _ = out_tx.closed() => { sink_gone = true; None }
                _ = dlq_tx.closed() => { sink_gone = true; None }
                ev = src_rx.recv() => match ev {
                    Some(ev) => Some(ev),
                    None => { source_failed = true; None }
                },
                _ = ticker.tick() => None,
            };
            if stop.is_some() || sink_gone || source_failed {
                // A failed source is not the end of input: no final watermark, no checkpoint.
                break;
            }
            ctx.set_processing_time(clock.now_ms());
            let mut end = false;
            let handled = match event {
                Some(None) => {
                    end = true;
                    tasks
                        .signal(&Signal::EndOfInput, self.state(), &mut ctx, &mut output)
                        .map_err(JobError::from)
                }
                None => {
                    tasks.signal(&Signal::Tick, self.state(), &mut ctx, &mut output).map_err(JobError::from)
                }
                Some(Some(SourceEvent::Batch(batch))) => {
                    ctx.counters.records_in += (batch.records.len() + batch.dead_letters.len()) as u64;
                    job.note_positions(batch.records.iter().map(|r| r.position));
                    job.note_positions(batch.dead_letters.iter().map(|d| d.position));
                    for dl in batch.dead_letters {
                        ctx.dead_letter(dl);
                    }
                    input = batch.records;
                    tasks.process(&mut input, self.state(), &mut ctx, &mut output).map_err(JobError::from)
                }
                Some(Some(SourceEvent::PartitionsAssigned(ps))) => {
                    self.start_partitions(&ps, hooks.as_deref(), &mut job).and_then(|()| {
                        tasks
                            .signal(&Signal::PartitionsAssigned(ps), self.state(), &mut ctx, &mut output)
                            .map_err(JobError::from)
                    })
                }
                Some(Some(SourceEvent::PartitionsRevoked(ps))) => {
                    // Released after this batch's output and a checkpoint, below.
                    revoked = Some(ps);
                    Ok(())
                }
                Some(Some(SourceEvent::PartitionFinished(p))) => tasks
                    .signal(&Signal::PartitionFinished(p), self.state(), &mut ctx, &mut output)
                    .map_err(JobError::from),
            };
            if let Err(e) = handled {
                failure = Some(e);
                break;
            }
            if tasks.watermark() > job.watermark {
                job.watermark = tasks.watermark();
                self.counters.set_watermark(job.watermark.0);
            }
            if counts_out {
                ctx.counters.records_out += output.len() as u64;
            }
            let mut downstream_closed = false;
            if !output.is_empty() {
                let batch: Vec<C::Out> = output.drain(..).map(|r| r.payload).collect();
                downstream_closed |= out_tx.send(SinkMsg::Batch(batch)).await.is_err();
            }
            if !ctx.dead_letters.is_empty() {
                downstream_closed |= dlq_tx.send(SinkMsg::Batch(ctx.take_dead_letters())).await.is_err();
            }
            self.counters.absorb(&mut ctx.counters);
            self.counters.absorb_steps(&mut ctx.steps);
            if let Some(p) = tasks.take_status() {
                self.counters.set_partitions(p);
            }
            if downstream_closed {
                sink_gone = true;
                break;
            }
            if let Some(name) = savepoint_now.take().filter(|n| {
                let on = checkpoint_every.is_some();
                if !on {
                    tracing::warn!(savepoint = %n, "savepoint requested but checkpointing is not configured; ignored");
                }
                on
            }) {
                if let Err(e) = self.checkpoint(&mut tasks, &mut job, &out_tx, &dlq_tx, Some(&name)).await {
                    failure = Some(e);
                    break;
                }
            }
            if let Some(ps) = revoked.take() {
                let released = self.release_partitions(
                    &mut tasks,
                    &ps,
                    &mut job,
                    &out_tx,
                    &dlq_tx,
                    hooks.as_deref(),
                    &mut ctx,
                );
                if let Err(e) = released.await {
                    failure = Some(e);
                    break;
                }
                if checkpoint_every.is_some() {
                    last_checkpoint = Instant::now();
                }
            }
            let due = checkpoint_every.is_some_and(|every| last_checkpoint.elapsed() >= every);
            if due || (end && checkpoint_every.is_some()) {
                if let Err(e) = self.drop_superseded(hooks.as_deref(), &mut job).await {
                    failure = Some(e);
                    break;
                }
                if let Err(e) = self.checkpoint(&mut tasks, &mut job, &out_tx, &dlq_tx, None).await {
                    failure = Some(e);
                    break;
                }
                last_checkpoint = Instant::now();
            }
            if end {
                break;
            }
        }
        if failure.is_none() {
            if let Some(req) = &stop {
                let name = match req {
                    StopRequest::Stop | StopRequest::Savepoint(_) => None,
                    StopRequest::StopWithSavepoint(n) => Some(n.as_str()),
                };
                if checkpoint_every.is_some() || name.is_some() {
                    if let Err(e) = self.checkpoint(&mut tasks, &mut job, &out_tx, &dlq_tx, name).await {
                        failure = Some(e);
                    }
                }
            }
        }
        drop(out_tx);
        drop(dlq_tx);
        drop(src_rx);
        drop(input);
        let stopped_before_end = stop.is_some() || sink_gone || failure.is_some() || source_failed;
        if stopped_before_end {
            // The source may be waiting for input that never comes; it has nothing left to deliver.
            source_task.abort();
        }

        let sink_res = join("sink", sink_task).await;
        let dlq_res = join("dead-letter sink", dlq_task).await;
        let src_res = source_task.await;
        sink_res??;
        dlq_res??;
        if let Some(e) = failure {
            return Err(e);
        }
        match src_res {
            Ok(r) => r?,
            Err(e) if e.is_cancelled() && stopped_before_end => {}
            Err(e) => return Err(JobError::Task { task: "source", detail: e.to_string() }),
        }
        Ok(JobReport {
            counters: self.counters.snapshot(),
            final_watermark: job.watermark,
            checkpoints_taken: job.checkpoints_taken,
            restored_from,
            stopped_early: stop.is_some(),
        })
    }

    /// Gives up revoked partitions: a checkpoint first (it holds their state and offsets for the
    /// next owner), then their tasks end. With hand-over hooks their state stays in the backend
    /// until the next periodic checkpoint, in case the group assigns them straight back.
    #[allow(clippy::too_many_arguments)]
    async fn release_partitions<C: Operator>(
        &mut self,
        tasks: &mut Tasks<C>,
        partitions: &[PartitionId],
        job: &mut JobState,
        out_tx: &mpsc::Sender<SinkMsg<C::Out>>,
        dlq_tx: &mpsc::Sender<SinkMsg<DeadLetter>>,
        hooks: Option<&HandOver>,
        ctx: &mut Context,
    ) -> Result<(), JobError> {
        if tasks.partitioned() && self.checkpointing_enabled().is_some() {
            self.checkpoint(tasks, job, out_tx, dlq_tx, None).await?;
        }
        let offsets: Vec<(PartitionId, u64)> =
            partitions.iter().filter_map(|p| job.offsets.get(p).map(|o| (*p, *o))).collect();
        match hooks {
            // Carried (state and offset in every checkpoint) until another instance's checkpoint
            // supersedes them: until then, this instance's checkpoints may be the only place
            // their state is.
            Some(h) => {
                tasks.release(partitions, None, ctx)?;
                h.set_live(offsets);
            }
            None => {
                tasks.release(partitions, self.state(), ctx)?;
                if tasks.partitioned() {
                    for p in partitions {
                        job.offsets.remove(p);
                    }
                }
            }
        }
        tracing::info!(?partitions, "partitions released");
        Ok(())
    }

    /// Starts newly assigned partitions from the state their hand-over decided on.
    #[cfg(feature = "checkpoints")]
    fn start_partitions(
        &mut self,
        partitions: &[PartitionId],
        hooks: Option<&HandOver>,
        job: &mut JobState,
    ) -> Result<(), JobError> {
        use super::handover::Start;
        let Some(h) = hooks else { return Ok(()) };
        if let Some(detail) = h.failure() {
            return Err(JobError::Task { task: "partition hand-over", detail });
        }
        let starts = h.take_starts(partitions);
        h.forget_live(partitions);
        let Some(state) = self.state() else { return Ok(()) };
        let mut opened: Vec<(Arc<super::handover::ScratchDir>, Box<dyn StateBackend>)> = Vec::new();
        for (p, start) in starts {
            match start {
                Start::Live { offset } => {
                    job.offsets.insert(p, offset);
                }
                Start::Fetched { dir, offset, from } => {
                    let i = match opened.iter().position(|(d, _)| Arc::ptr_eq(d, &dir)) {
                        Some(i) => i,
                        None => {
                            let mut scratch = state.open_scratch(&dir.backend())?;
                            scratch.restore(&dir.files())?;
                            opened.push((Arc::clone(&dir), scratch));
                            opened.len() - 1
                        }
                    };
                    let keys = crate::state::copy_partition(opened[i].1.as_ref(), state, p)?;
                    tracing::info!(partition = p, from = %from, offset, keys, "partition state handed over");
                    job.offsets.insert(p, offset);
                }
            }
        }
        Ok(())
    }

    #[cfg(not(feature = "checkpoints"))]
    fn start_partitions(
        &mut self,
        _partitions: &[PartitionId],
        _hooks: Option<&HandOver>,
        _job: &mut JobState,
    ) -> Result<(), JobError> {
        Ok(())
    }

    /// Stops carrying released partitions that another instance has checkpointed since.
    #[cfg(feature = "checkpoints")]
    async fn drop_superseded(
        &mut self,
        hooks: Option<&HandOver>,
        job: &mut JobState,
    ) -> Result<(), JobError> {
        let Some(h) = hooks else { return Ok(()) };
        let done = match h.take_superseded().await {
            Ok(done) => done,
            Err(e) => {
                // Carrying a partition a little longer costs only space.
                tracing::warn!(error = %e, "cannot tell whether released partitions moved on; carrying them");
                return Ok(());
            }
        };
        if let Some(state) = self.state() {
            for p in &done {
                crate::state::delete_partition(state, *p)?;
                job.offsets.remove(p);
            }
        }
        if !done.is_empty() {
            tracing::info!(partitions = ?done, "released partitions now checkpointed elsewhere; their state is dropped here");
        }
        Ok(())
    }

    #[cfg(not(feature = "checkpoints"))]
    async fn drop_superseded(
        &mut self,
        _hooks: Option<&HandOver>,
        _job: &mut JobState,
    ) -> Result<(), JobError> {
        Ok(())
    }

    /// Barrier → flush sinks → snapshot operators → upload. `savepoint` names a savepoint instead.
    async fn checkpoint<C: Operator>(
        &mut self,
        tasks: &mut Tasks<C>,
        job: &mut JobState,
        out_tx: &mpsc::Sender<SinkMsg<C::Out>>,
        dlq_tx: &mpsc::Sender<SinkMsg<DeadLetter>>,
        savepoint: Option<&str>,
    ) -> Result<(), JobError> {
        // Everything emitted before the barrier must be durable before the checkpoint commits.
        let next_epoch = job.epoch + 1;
        barrier(out_tx, "sink", next_epoch).await?;
        barrier(dlq_tx, "dead-letter sink", next_epoch).await?;
        #[cfg(feature = "checkpoints")]
        {
            use crate::checkpoint::CheckpointMeta;
            let Some(cp) = &mut self.checkpointing else {
                return Err(JobError::Task {
                    task: "checkpoint",
                    detail: "a savepoint was requested but checkpointing is not configured".into(),
                });
            };
            tasks.snapshot(cp.state.as_mut())?;
            let meta = CheckpointMeta {
                source_offsets: job.offsets.clone(),
                watermark: job.watermark.0,
                sink_epoch: job.epoch,
                metadata: tasks
                    .partitions()
                    .map(|ps| {
                        let list: Vec<String> = ps.iter().map(ToString::to_string).collect();
                        (crate::checkpoint::OWNED_PARTITIONS.to_owned(), list.join(","))
                    })
                    .into_iter()
                    .collect(),
            };
            let result = match savepoint {
                Some(name) => cp.coordinator.savepoint(name, cp.state.as_mut(), meta).await,
                None => cp.coordinator.take(cp.state.as_mut(), meta).await,
            };
            let taken = match result {
                Ok(t) => t,
                Err(e) => {
                    self.counters.record_checkpoint_failure();
                    return Err(e.into());
                }
            };
            self.counters.record_checkpoint(taken.duration, taken.bytes_uploaded);
            self.counters.set_state_stats(cp.state.stats());
            job.checkpoints_taken += 1;
            job.epoch = next_epoch;
            if let Some(l) = &job.listener {
                l.checkpoint_complete(taken.manifest.id, &taken.manifest.source_offsets);
            }
            Ok(())
        }
        #[cfg(not(feature = "checkpoints"))]
        {
            let _ = (tasks, job, savepoint);
            Ok(())
        }
    }
}

#[cfg(feature = "checkpoints")]
type HandOver = super::handover::HandOverHooks;

/// Without checkpoints there is nothing to hand over.
#[cfg(not(feature = "checkpoints"))]
#[derive(Debug)]
enum HandOver {}

#[cfg(not(feature = "checkpoints"))]
impl HandOver {
    fn set_live(&self, _: Vec<(PartitionId, u64)>) {}
}

struct Resumed {
    id: u64,
    offsets: BTreeMap<PartitionId, u64>,
    watermark: i64,
    epoch: u64,
}

struct JobState {
    /// Next offset to read, per partition.
    offsets: BTreeMap<PartitionId, u64>,
    watermark: Watermark,
    epoch: u64,
    checkpoints_taken: u64,
    /// The source's listener for completed checkpoints.
    #[cfg_attr(not(feature = "checkpoints"), allow(dead_code))]
    listener: Option<std::sync::Arc<dyn CheckpointListener>>,
}

impl JobState {
    fn note_positions(&mut self, positions: impl Iterator<Item = crate::record::SourcePosition>) {
        let mut last: Option<(PartitionId, u64)> = None;
        for p in positions {
            match &mut last {
                Some((part, max)) if *part == p.partition => *max = (*max).max(p.offset),
                _ => {
                    if let Some((part, max)) = last {
                        self.note(part, max);
                    }
                    last = Some((p.partition, p.offset));
                }
            }
        }
        if let Some((part, max)) = last {
            self.note(part, max);
        }
    }

    fn note(&mut self, partition: PartitionId, offset: u64) {
        let next = self.offsets.entry(partition).or_insert(0);
        *next = (*next).max(offset.saturating_add(1));
    }
}

async fn barrier<T>(
    tx: &mpsc::Sender<SinkMsg<T>>,
    task: &'static str,
    next_epoch: u64,
) -> Result<(), JobError> {
    let (ack_tx, ack_rx) = oneshot::channel();
    let gone = || JobError::Task { task, detail: "stopped before acknowledging a checkpoint barrier".into() };
    tx.send(SinkMsg::Barrier { ack: ack_tx, next_epoch }).await.map_err(|_| gone())?;
    ack_rx.await.map_err(|_| gone())?.map_err(JobError::Sink)
}

async fn join<R>(task: &'static str, handle: JoinHandle<R>) -> Result<R, JobError> {
    handle.await.map_err(|e| JobError::Task { task, detail: e.to_string() })
}

async fn run_source<T, S: Source<T>>(
    mut source: S,
    tx: mpsc::Sender<Option<SourceEvent<T>>>,
) -> Result<(), SourceError> {
    // An error returns before the end marker is sent: the processing task sees the channel
    // close without it and stops without finalising anything.
    while let Some(ev) = source.next_event().await? {
        if tx.send(Some(ev)).await.is_err() {
            return Ok(()); // the processing task stopped; its error is reported there
        }
    }
    let _ = tx.send(None).await;
    Ok(())
}

async fn run_sink<T, K: Sink<T>>(
    mut sink: K,
    mut rx: mpsc::Receiver<SinkMsg<T>>,
    first_epoch: u64,
    idle: Duration,
) -> Result<(), SinkError> {
    sink.begin_epoch(first_epoch);
    loop {
        let msg = match tokio::time::timeout(idle, rx.recv()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(_) => {
                sink.on_idle().await?;
                continue;
            }
        };
        match msg {
            SinkMsg::Batch(batch) => sink.write_batch(batch).await?,
            SinkMsg::Barrier { ack, next_epoch } => {
                let res = sink.flush().await;
                let failed = res.as_ref().err().map(ToString::to_string);
                let _ = ack.send(res);
                if let Some(message) = failed {
                    return Err(SinkError::External { message, retry: crate::error::RetryHint::WithBackoff });
                }
                sink.begin_epoch(next_epoch);
            }
        }
    }
    sink.flush().await
}
