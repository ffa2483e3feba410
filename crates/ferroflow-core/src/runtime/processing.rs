//! The processing loop: one task that takes source events, runs them through the job's chains,
//! sends results and dead letters on to the sink tasks, and takes checkpoints at batch
//! boundaries. Each kind of event has its handler; how the loop ends is an [`Exit`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::chains::Chains;
use super::checkpointing::{Checkpointing, Resumed};
use super::io::{SinkMsg, barrier};
use super::runner::StopRequest;
use super::workers::{Clocks, Outputs, Workers};
use crate::dead_letter::DeadLetter;
use crate::error::JobError;
use crate::metrics::JobCounters;
use crate::operator::{Context, Operator, Signal};
use crate::record::{PartitionId, Record, SourcePosition};
use crate::source::{CheckpointListener, SourceBatch, SourceEvent, SourceProgress};
use crate::time::{Clock, Watermark};

/// Offsets, watermark and epoch of a run: what a checkpoint records besides the state.
pub(crate) struct JobState {
    /// Next offset to read, per partition.
    pub(crate) offsets: BTreeMap<PartitionId, u64>,
    pub(crate) watermark: Watermark,
    /// The sink epoch in progress (a checkpoint closes it).
    pub(crate) epoch: u64,
    pub(crate) checkpoints_taken: u64,
    /// The source's listener for completed checkpoints.
    #[cfg_attr(not(feature = "checkpoints"), allow(dead_code))]
    pub(crate) listener: Option<Arc<dyn CheckpointListener>>,
}

impl JobState {
    /// The state of a run that starts at `resumed` (or from nothing).
    pub(crate) fn new(resumed: Option<&Resumed>, listener: Option<Arc<dyn CheckpointListener>>) -> Self {
        let mut job = Self {
            offsets: BTreeMap::new(),
            watermark: Watermark::MIN,
            epoch: 0,
            checkpoints_taken: 0,
            listener,
        };
        if let Some(r) = resumed {
            job.offsets.clone_from(&r.offsets);
            job.watermark = Watermark(r.watermark);
            job.epoch = r.epoch + 1;
        }
        job
    }

    fn note_positions(&mut self, positions: impl Iterator<Item = SourcePosition>) {
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

    /// A released partition of a partition-scoped job is no longer this run's to record.
    pub(crate) fn forget_partitions<C: Operator>(&mut self, chains: &Chains<C>, partitions: &[PartitionId]) {
        if chains.partitioned() {
            for p in partitions {
                self.offsets.remove(p);
            }
        }
    }
}

/// Why the loop ended.
pub(super) enum Exit {
    /// Every partition ended (bounded input): the final watermark went through.
    EndOfInput,
    /// A stop was requested.
    Stopped(StopRequest),
    /// A sink task ended early: it failed, its error is its task's result.
    SinkGone,
    /// The source failed (its channel closed without the end marker): not the end of input.
    SourceFailed,
    /// Processing or a checkpoint failed.
    Failed(JobError),
}

/// What woke the loop up.
enum Wake<T> {
    Request(StopRequest),
    SinkGone,
    SourceFailed,
    Source(SourceEvent<T>),
    End,
    Tick,
    /// A worker's report changed.
    Reports,
}

/// The processing loop of one run.
pub(super) struct Processing<'r, C: Operator> {
    pub(super) chains: Chains<C>,
    pub(super) job: JobState,
    pub(super) checkpointing: Option<&'r mut Checkpointing>,
    pub(super) counters: &'r JobCounters,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) out_tx: mpsc::Sender<SinkMsg<C::Out>>,
    pub(super) dlq_tx: mpsc::Sender<SinkMsg<DeadLetter>>,
    /// The worker threads that run a partition-scoped job's tasks (`None`: the chain runs here).
    pub(super) workers: Option<Workers<C>>,
    ctx: Context,
    input: Vec<Record<C::In>>,
    output: Vec<Record<C::Out>>,
    /// Partitions revoked this event, released after its output and a checkpoint.
    revoked: Option<Vec<PartitionId>>,
    savepoint_now: Option<String>,
    last_checkpoint: Instant,
    /// How far the idleness clock must move between two idleness checks of every task.
    tick_ms: i64,
    /// The idleness clock at the last check.
    last_tick: i64,
}

impl<'r, C: Operator> Processing<'r, C> {
    pub(super) fn new(
        chains: Chains<C>,
        job: JobState,
        checkpointing: Option<&'r mut Checkpointing>,
        counters: &'r JobCounters,
        clock: Arc<dyn Clock>,
        outputs: Outputs<C::Out>,
        workers: Option<Workers<C>>,
    ) -> Self {
        let Outputs { results: out_tx, dead_letters: dlq_tx, per_input, .. } = outputs;
        let mut ctx = Context::new(clock.now_ms());
        if per_input {
            ctx.count_per_input();
            counters.set_two_inputs();
        }
        let last_tick = ctx.idle_time();
        Self {
            chains,
            job,
            checkpointing,
            counters,
            clock,
            out_tx,
            dlq_tx,
            workers,
            ctx,
            input: Vec::new(),
            output: Vec::new(),
            revoked: None,
            savepoint_now: None,
            last_checkpoint: Instant::now(),
            tick_ms: 200,
            last_tick,
        }
    }

    /// Runs until the input ends, a stop is requested or something fails.
    pub(super) async fn run(
        &mut self,
        src_rx: &mut mpsc::Receiver<Option<SourceEvent<C::In>>>,
        shutdown: &mut watch::Receiver<Option<StopRequest>>,
        tick: std::time::Duration,
    ) -> Exit {
        self.counters.set_watermark(self.job.watermark.0);
        self.counters.set_operators(self.chains.step_names());
        // At most every 100 ms of the idleness clock, also when the periodic wake-up is rarer.
        self.tick_ms = i64::try_from(tick.as_millis()).unwrap_or(i64::MAX).clamp(1, 100);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                biased;
                _ = shutdown.changed() => match shutdown.borrow_and_update().clone() {
                    Some(req) => Wake::Request(req),
                    None => Wake::Tick,
                },
                // A sink task that ended early failed: stop now, even if the source is quiet.
                _ = self.out_tx.closed() => Wake::SinkGone,
                _ = self.dlq_tx.closed() => Wake::SinkGone,
                ev = src_rx.recv() => match ev {
                    Some(Some(ev)) => Wake::Source(ev),
                    Some(None) => Wake::End,
                    None => Wake::SourceFailed,
                },
                () = reported(self.workers.as_ref()) => Wake::Reports,
                _ = ticker.tick() => Wake::Tick,
            };
            if let Some(exit) = self.handle(wake).await {
                return exit;
            }
        }
    }

    /// Handles one wake-up; `Some` ends the loop.
    async fn handle(&mut self, wake: Wake<C::In>) -> Option<Exit> {
        self.ctx.set_processing_time(self.clock.now_ms());
        self.ctx.ceiling = self.chains.sample_ceiling();
        let end = matches!(wake, Wake::End);
        let handled = match wake {
            Wake::Request(StopRequest::Savepoint(name)) => {
                self.savepoint_now = Some(name);
                Ok(())
            }
            Wake::Request(req) => return Some(Exit::Stopped(req)),
            Wake::SinkGone => return Some(Exit::SinkGone),
            Wake::SourceFailed => return Some(Exit::SourceFailed),
            Wake::End => self.signal(&Signal::EndOfInput).await,
            Wake::Tick => self.tick().await,
            Wake::Reports => Ok(()),
            Wake::Source(SourceEvent::Progress(p)) => self.on_progress(p).await,
            Wake::Source(SourceEvent::Batch(batch)) => self.on_batch(batch).await,
            Wake::Source(SourceEvent::PartitionsAssigned(ps)) => self.on_assigned(ps).await,
            Wake::Source(SourceEvent::PartitionsRevoked(ps)) => {
                // Released after this event's output and a checkpoint, below.
                self.revoked = Some(ps);
                Ok(())
            }
            Wake::Source(SourceEvent::PartitionFinished(p)) => {
                self.signal(&Signal::PartitionFinished(p)).await
            }
        };
        // Every task's idleness is checked as the idleness clock moves, also when batches keep
        // coming and the periodic wake-up never gets its turn.
        let handled = match handled {
            Ok(()) => self.maybe_tick().await,
            Err(e) => Err(e),
        };
        let handled = handled.and_then(|()| self.take_worker_reports());
        if handled.is_ok() {
            self.follow().await;
        }
        if let Err(e) = handled {
            return Some(Exit::Failed(e));
        }
        // A step's state failed: none of this event's results go out.
        if let Some(e) = self.ctx.take_state_failure() {
            return Some(Exit::Failed(e.into()));
        }
        if !self.emit().await {
            return Some(Exit::SinkGone);
        }
        // A step's state failed while a firing went out in chunks: the rest does not.
        if let Some(e) = self.ctx.take_state_failure() {
            return Some(Exit::Failed(e.into()));
        }
        if let Err(e) = self.after_event(end).await {
            return Some(Exit::Failed(e));
        }
        end.then_some(Exit::EndOfInput)
    }

    async fn signal(&mut self, signal: &Signal) -> Result<(), JobError> {
        if self.workers.is_some() {
            self.drain_pending().await?;
        }
        if let Some(workers) = self.workers.as_mut().filter(|_| self.chains.copied()) {
            // Every copy sees every signal, on its worker: a copy's key step may trade records as
            // the watermark moves, so the copies must not run one after another here.
            let clocks = Clocks::of(&self.ctx, self.chains.watermark());
            workers.broadcast(&mut self.chains, signal, clocks).await?;
            if matches!(signal, Signal::EndOfInput) {
                // The final watermark and results are in once the copies come back.
                workers.collect(&mut self.chains).await?;
            }
            return Ok(());
        }
        if let Some(workers) = self.workers.as_mut() {
            if workers.lent() && matches!(signal, Signal::Tick | Signal::PartitionsActive(_)) {
                let clocks = Clocks::of(&self.ctx, self.chains.watermark());
                return workers.signal(signal, clocks).await;
            }
            workers.collect(&mut self.chains).await?;
        }
        let state = self.checkpointing.as_deref_mut().map(Checkpointing::state);
        Ok(self.chains.signal(signal, state, &mut self.ctx, &mut self.output)?)
    }

    /// Checks every task's idleness once the idleness clock moved by the tick interval.
    async fn maybe_tick(&mut self) -> Result<(), JobError> {
        if self.ctx.idle_time().saturating_sub(self.last_tick) >= self.tick_ms {
            self.tick().await?;
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), JobError> {
        self.last_tick = self.ctx.idle_time();
        self.signal(&Signal::Tick).await
    }

    /// Takes the combined watermark and partition reports from the worker threads, and stops the
    /// job if one of them failed.
    fn take_worker_reports(&mut self) -> Result<(), JobError> {
        if let Some(workers) = &self.workers {
            workers.check()?;
            workers.absorb_reports(&mut self.chains);
        }
        Ok(())
    }

    /// Tells the workers' idle tasks the job's watermark once it moved (advisory: never fails).
    async fn follow(&mut self) {
        if let Some(workers) = self.workers.as_mut() {
            let clocks = Clocks::of(&self.ctx, self.chains.watermark());
            workers.follow(self.chains.any_idle(), clocks).await;
        }
    }

    /// Takes the tasks back from the worker threads, at a cut after everything handed to them.
    async fn collect(&mut self) -> Result<(), JobError> {
        match self.workers.as_mut() {
            Some(workers) => workers.collect(&mut self.chains).await,
            None => Ok(()),
        }
    }

    /// The source's clock moved; partitions it has not caught up with stay active.
    async fn on_progress(&mut self, progress: SourceProgress) -> Result<(), JobError> {
        self.ctx.set_idle_clock(progress.time_ms);
        if progress.behind.is_empty() {
            return Ok(());
        }
        self.signal(&Signal::PartitionsActive(progress.behind)).await
    }

    async fn on_batch(&mut self, mut batch: SourceBatch<C::In>) -> Result<(), JobError> {
        if let Some(p) = batch.progress.take() {
            self.on_progress(p).await?;
        }
        self.job.note_positions(batch.records.iter().map(|r| r.position));
        self.job.note_positions(batch.dead_letters.iter().map(|d| d.position));
        // The workers count the records they run; the source's own dead letters are counted here.
        let running_here = if self.workers.is_some() { 0 } else { batch.records.len() };
        self.ctx.counters.records_in += (running_here + batch.dead_letters.len()) as u64;
        let second_here =
            if self.workers.is_some() { 0 } else { self.ctx.second_input_share(&batch.records) };
        let second_dead = batch.dead_letters.iter().filter(|d| self.ctx.is_second_input(d.position)).count();
        self.ctx.count_second_input(|c| &mut c.records_in, second_here + second_dead as u64);
        for dl in batch.dead_letters {
            self.ctx.dead_letter(dl);
        }
        if self.workers.is_some() {
            self.drain_pending().await?;
        }
        if let Some(workers) = self.workers.as_mut() {
            let clocks = Clocks::of(&self.ctx, self.chains.watermark());
            let originals = Arc::new(batch.originals);
            if self.chains.copied() {
                return workers.share(&mut self.chains, batch.records, originals, clocks).await;
            }
            let state = self.checkpointing.as_deref_mut().map(Checkpointing::state);
            return workers.route(&mut self.chains, batch.records, originals, clocks, state).await;
        }
        self.input = batch.records;
        self.ctx.set_originals(batch.originals);
        let state = self.checkpointing.as_deref_mut().map(Checkpointing::state);
        let processed = self.chains.process(&mut self.input, state, &mut self.ctx, &mut self.output);
        self.ctx.clear_originals();
        processed
    }

    async fn on_assigned(&mut self, partitions: Vec<PartitionId>) -> Result<(), JobError> {
        if let Some(cp) = self.checkpointing.as_deref_mut() {
            cp.start_partitions(&partitions, &mut self.job)?;
        }
        self.signal(&Signal::PartitionsAssigned(partitions)).await
    }

    /// Sends this event's results and dead letters on and moves its counters to the job's;
    /// false when a sink task is gone. A chain that fired more rows than one chunk gives the
    /// rest chunk by chunk, each sent before the next is made (the channel's backpressure then
    /// bounds what a large firing holds in memory); a state failure stops it before the chunk
    /// it spoiled goes out.
    async fn emit(&mut self) -> bool {
        loop {
            if !self.emit_chunk().await {
                return false;
            }
            if !self.chains.has_pending_output() || self.ctx.state_failure.is_some() {
                return true;
            }
            self.chains.resume_output(&mut self.ctx, &mut self.output);
            if self.ctx.state_failure.is_some() {
                return true;
            }
        }
    }

    /// Sends on what a chain here fired, chunk by chunk, before its task leaves for a worker
    /// thread or a snapshot: a firing under way never travels or goes into a checkpoint.
    async fn drain_pending(&mut self) -> Result<(), JobError> {
        if !self.chains.has_pending_output() {
            return Ok(());
        }
        self.emit_now("a firing went out").await
    }

    /// Sends what is ready now (outside the end of an event), or the job's failure: a step's
    /// state failure (before or while it goes out), or a sink gone while `during`.
    async fn emit_now(&mut self, during: &str) -> Result<(), JobError> {
        if let Some(e) = self.ctx.take_state_failure() {
            return Err(e.into());
        }
        if !self.emit().await {
            return Err(JobError::Task { task: "sink", detail: format!("a sink stopped while {during}") });
        }
        match self.ctx.take_state_failure() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn emit_chunk(&mut self) -> bool {
        if self.chains.watermark() > self.job.watermark {
            self.job.watermark = self.chains.watermark();
            self.counters.set_watermark(self.job.watermark.0);
        }
        if !self.chains.consumes_records() {
            self.ctx.counters.records_out += self.output.len() as u64;
            let second = self.ctx.second_input_share(&self.output);
            self.ctx.count_second_input(|c| &mut c.records_out, second);
        }
        let mut open = true;
        if !self.output.is_empty() {
            let batch: Vec<C::Out> = self.output.drain(..).map(|r| r.payload).collect();
            open &= self.out_tx.send(SinkMsg::Batch(batch)).await.is_ok();
            shrink_output(&mut self.output);
        }
        if !self.ctx.dead_letters.is_empty() {
            open &= self.dlq_tx.send(SinkMsg::Batch(self.ctx.take_dead_letters())).await.is_ok();
        }
        self.counters.absorb(&mut self.ctx.counters);
        self.counters.absorb_steps(&mut self.ctx.steps);
        if let Some(p) = self.chains.take_status() {
            self.counters.set_partitions(p);
        }
        open
    }

    /// Checkpoint work at the batch boundary: a requested savepoint, releasing revoked
    /// partitions, and the periodic (or final) checkpoint.
    async fn after_event(&mut self, end: bool) -> Result<(), JobError> {
        let checkpoints = self.checkpointing.as_ref().map(|c| c.interval());
        if let Some(name) = self.savepoint_now.take() {
            match checkpoints {
                Some(_) => self.checkpoint(Some(&name)).await?,
                None => {
                    tracing::warn!(savepoint = %name, "savepoint requested but checkpointing is not configured; ignored");
                }
            }
        }
        if let Some(ps) = self.revoked.take() {
            self.release(&ps).await?;
        }
        let due = checkpoints.is_some_and(|every| self.last_checkpoint.elapsed() >= every);
        if due || (end && checkpoints.is_some()) {
            if let Some(cp) = self.checkpointing.as_deref_mut() {
                cp.drop_superseded(&mut self.job).await?;
            }
            self.checkpoint(None).await?;
        }
        Ok(())
    }

    /// Gives up revoked partitions: a checkpoint first (it holds their state and offsets for the
    /// next owner), then their tasks end.
    async fn release(&mut self, partitions: &[PartitionId]) -> Result<(), JobError> {
        self.collect().await?;
        self.drain_pending().await?;
        if self.chains.partitioned() && self.checkpointing.is_some() {
            self.checkpoint(None).await?;
        }
        if let Some(workers) = self.workers.as_mut().filter(|_| self.chains.copied()) {
            // Copies leave the revoked partitions on their workers; what fires goes out from there.
            let clocks = Clocks::of(&self.ctx, self.chains.watermark());
            let signal = Signal::PartitionsRevoked(partitions.to_vec());
            workers.broadcast(&mut self.chains, &signal, clocks).await?;
            tracing::info!(?partitions, "partitions released");
            return Ok(());
        }
        let out = &mut self.output;
        match self.checkpointing.as_deref_mut() {
            Some(cp) => cp.release(&mut self.chains, partitions, &mut self.job, &mut self.ctx, out)?,
            None => {
                self.chains.release(partitions, None, &mut self.ctx, out)?;
                self.job.forget_partitions(&self.chains, partitions);
            }
        }
        tracing::info!(?partitions, "partitions released");
        // Windows the revocation fired go out now: a stop or checkpoint may follow before the
        // next event.
        self.emit_now("partitions were released").await?;
        Ok(())
    }

    /// Barrier → flush sinks → snapshot operators → upload; `savepoint` names a savepoint instead.
    async fn checkpoint(&mut self, savepoint: Option<&str>) -> Result<(), JobError> {
        if self.checkpointing.is_none() {
            return Err(JobError::Task {
                task: "checkpoint",
                detail: "a savepoint was requested but checkpointing is not configured".into(),
            });
        }
        // The tasks come back from the workers once they have sent on everything they were
        // handed: the barrier below then follows every worker's output (an aligned cut).
        if let Some(workers) = self.workers.as_mut() {
            workers.collect(&mut self.chains).await?;
        }
        // A firing under way goes out whole before the barrier: the snapshot sees it done.
        self.drain_pending().await?;
        // Everything emitted before the barrier must be durable before the checkpoint commits.
        let next_epoch = self.job.epoch + 1;
        barrier(&self.out_tx, "sink", next_epoch).await?;
        barrier(&self.dlq_tx, "dead-letter sink", next_epoch).await?;
        let Some(cp) = self.checkpointing.as_deref_mut() else { return Ok(()) };
        cp.take(&mut self.chains, &mut self.job, savepoint, self.counters).await?;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// The final checkpoint (or savepoint) of a requested stop.
    pub(super) async fn on_stop(&mut self, request: &StopRequest) -> Result<(), JobError> {
        let name = match request {
            StopRequest::Stop | StopRequest::Savepoint(_) => None,
            StopRequest::StopWithSavepoint(n) => Some(n.as_str()),
        };
        if self.checkpointing.is_some() || name.is_some() {
            self.checkpoint(name).await?;
        }
        Ok(())
    }
}

/// Gives back the room of an output buffer that a large batch grew (a firing's chunks refill it).
pub(super) fn shrink_output<T>(output: &mut Vec<T>) {
    let keep = crate::operator::OUTPUT_CHUNK.saturating_mul(2);
    if output.capacity() > keep.saturating_mul(2) {
        output.shrink_to(keep);
    }
}

/// Resolves when a worker's report changed; never without workers.
async fn reported<C: Operator>(workers: Option<&Workers<C>>) {
    match workers {
        Some(w) => w.reported().await,
        None => std::future::pending().await,
    }
}
