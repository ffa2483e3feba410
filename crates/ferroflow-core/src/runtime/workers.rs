//! Worker threads of a partition-scoped job: the job's slots.
//!
//! Each worker is an OS thread that runs the tasks of the partitions it was given: it takes
//! their records (decoding included, as the chain's first steps), runs them through the tasks'
//! fused chains, and sends results and dead letters straight to the sink tasks. The processing
//! loop stays the job's one coordinator: it reads the source, notes offsets, splits each batch by
//! partition, and hands every part to the worker that runs the partition's task, in order.
//!
//! The tasks belong to the processing loop's [`Chains`] and are *lent* to the workers while
//! records flow. Anything that needs the tasks themselves (a checkpoint, an assignment, a release,
//! the end of input) first *collects* them: every worker answers once it has finished everything
//! queued before the request and sent its results on, so the tasks come back at one cut of the
//! input. A checkpoint barrier sent to the sinks after that is aligned across every worker (what
//! Flink's aligned barriers give), and the snapshot, the offsets and the sinks' epoch all describe
//! that one cut.
//!
//! Watermarks stay per task. Every worker reports the lowest watermark of its tasks that are not
//! idle, and wakes the coordinator when that changed; the job's watermark is the minimum over
//! workers. A worker that has not reported since it was lent a task holds the job's watermark
//! where it is: the task's own watermark is not known yet. Each worker moves its idle tasks up to
//! the job's watermark it was last told, and the coordinator tells every worker when it moves
//! while some partition is idle, so idle partitions follow also when no more input comes.
//!
//! A job-scoped chain run as copies (`Runner::parallel_job`) uses the same workers, one copy each.
//! Every batch is cut into contiguous shares, one per copy; the copies trade records by key at
//! their key steps (see [`crate::operator::ExchangeHub`]). Their timestamp steps only note the event
//! times of their share; after its share every copy has all copies' notes, in input order, and
//! applies them before anything else, so every copy's watermark moves exactly as one chain's
//! would over the whole batch. When every note is taken before the first key step (timestamps,
//! then `key_by`: the usual shape), the notes travel in that step's round; otherwise the copies
//! meet once more to gather them. In the usual shape a copy keeps rounds in flight: it goes on
//! with its next queued share instead of waiting for the slowest copy, and takes every round in
//! flight before it handles anything else (see [`crate::operator::KeyBy`]). The coordinator never
//! waits for the copies between batches.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};

use super::chains::{Backend, Chains, Tasks};
use super::io::SinkMsg;
use crate::dead_letter::DeadLetter;
use crate::error::JobError;
use crate::metrics::{JobCounters, PartitionStatus};
use crate::operator::originals::SharedOriginals;
use crate::operator::{Context, Gather, Note, Operator, Signal};
use crate::record::{PartitionId, Record};
use crate::time::Watermark;

/// One partition's records of a batch, in order.
type Part<T> = (PartitionId, Vec<Record<T>>);

/// What the workers running copies of one chain share.
pub(super) struct Copies {
    /// Set when a worker stops, so that the others' exchange rounds do not wait for it.
    pub(super) breaker: Arc<AtomicBool>,
    /// The connected key steps of each copy's chain.
    pub(super) key_steps: usize,
}

/// Messages a worker queues for its thread. A part of a batch is a partition's records, in order.
enum Work<C: Operator> {
    /// Runs these tasks from now on (added to the worker's own).
    Lend(Tasks<C>),
    Batch {
        parts: Vec<Part<C::In>>,
        originals: SharedOriginals,
        clocks: Clocks,
    },
    Signal {
        signal: Signal,
        clocks: Clocks,
    },
    /// A copy's share of a batch. The copies then gather every copy's event-time notes on the
    /// batch, in input order, and their watermarks move.
    Share {
        records: Vec<Record<C::In>>,
        originals: SharedOriginals,
        clocks: Clocks,
    },
    /// Returns every task once everything queued before has run and its output is sent.
    Collect(oneshot::Sender<Tasks<C>>),
    /// The job's watermark moved: idle tasks follow it.
    Follow(Clocks),
}

impl<C: Operator> Work<C> {
    fn clocks(&self) -> Option<Clocks> {
        match self {
            Self::Batch { clocks, .. } | Self::Signal { clocks, .. } | Self::Share { clocks, .. } => {
                Some(*clocks)
            }
            Self::Follow(clocks) => Some(*clocks),
            Self::Lend(_) | Self::Collect(_) => None,
        }
    }
}

/// The coordinator's clocks and watermark at the time it queued a message.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clocks {
    pub(super) now_ms: i64,
    pub(super) idle_ms: i64,
    /// The job's watermark: idle tasks follow it.
    pub(super) job_watermark: Watermark,
    /// The watermark ceiling the coordinator read for this event (the same for every worker).
    pub(super) ceiling: Watermark,
}

impl Clocks {
    pub(super) fn of(ctx: &Context, job_watermark: Watermark) -> Self {
        Self { now_ms: ctx.processing_time(), idle_ms: ctx.idle_time(), job_watermark, ceiling: ctx.ceiling }
    }

    fn apply(self, ctx: &mut Context) {
        ctx.set_processing_time(self.now_ms);
        ctx.set_idle_clock(self.idle_ms);
        ctx.ceiling = self.ceiling;
    }
}

/// What a worker last reported.
#[derive(Debug, Default)]
struct Report {
    /// The lowest watermark of its tasks that are not idle (`None`: no such task).
    active: Option<Watermark>,
    /// How many lends of tasks the worker had taken when it reported. A report older than the
    /// last lend does not cover the lent tasks yet: they hold the job's watermark until it does.
    lends: u64,
    /// Partition reports since the coordinator last took them.
    status: Vec<PartitionStatus>,
}

#[derive(Debug, Default)]
struct Shared {
    reports: Mutex<Vec<Report>>,
    /// Woken when a worker's report changed what the job's watermark is made of: the coordinator
    /// then combines the reports, also while the source is quiet, and tells idle tasks.
    reported: tokio::sync::Notify,
    /// Set by a worker that could not do what it was asked; the job stops with it.
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn reports(&self) -> std::sync::MutexGuard<'_, Vec<Report>> {
        // Reports are plain values: one left by a thread that panicked is still whole.
        self.reports.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, detail: String) {
        let mut f = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        f.get_or_insert(detail);
    }
}

/// The processing loop's handle on its workers.
pub(super) struct Workers<C: Operator> {
    senders: Vec<mpsc::Sender<Work<C>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Which worker runs each lent task.
    owner: BTreeMap<PartitionId, usize>,
    /// The tasks are out on the workers.
    lent: bool,
    /// The tasks are copies of one chain, one per worker.
    copies: bool,
    /// Lends sent to each worker (see [`Report::lends`]).
    lends: Vec<u64>,
    /// The highest job watermark each worker was told.
    told: Vec<Watermark>,
    shared: Arc<Shared>,
}

impl<C: Operator> std::fmt::Debug for Workers<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("workers", &self.senders.len()).field("lent", &self.lent).finish()
    }
}

/// What every worker thread sends its output to.
pub(super) struct Outputs<O> {
    pub(super) results: mpsc::Sender<SinkMsg<O>>,
    pub(super) dead_letters: mpsc::Sender<SinkMsg<DeadLetter>>,
    pub(super) counters: JobCounters,
    /// The chains end in a window: their output is not source records.
    pub(super) consumes_records: bool,
    /// The job reads two inputs: counts are also kept per input.
    pub(super) per_input: bool,
}

impl<O> Clone for Outputs<O> {
    fn clone(&self) -> Self {
        Self {
            results: self.results.clone(),
            dead_letters: self.dead_letters.clone(),
            counters: self.counters.clone(),
            consumes_records: self.consumes_records,
            per_input: self.per_input,
        }
    }
}

impl<C: Operator> Workers<C> {
    /// Starts `n` worker threads, each with a queue of `capacity` messages. For copies of a chain,
    /// `n` is the number of copies, and a worker that stops sets their breaker.
    pub(super) fn start(
        n: usize,
        capacity: usize,
        outputs: &Outputs<C::Out>,
        copies: Option<Copies>,
    ) -> Result<Self, JobError> {
        let n = n.max(1);
        let key_steps = copies.as_ref().map_or(0, |c| c.key_steps);
        let breaker = copies.map(|c| c.breaker);
        let copies = breaker.is_some();
        let gather = breaker.as_ref().map(|b| Gather::new(n, Arc::clone(b)));
        let shared = Arc::new(Shared::default());
        shared.reports().resize_with(n, Report::default);
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for index in 0..n {
            let (tx, rx) = mpsc::channel(capacity.max(1));
            let worker = Worker::<C>::new(
                index,
                outputs.clone(),
                Arc::clone(&shared),
                breaker.clone(),
                gather.clone(),
                key_steps,
            );
            let thread = std::thread::Builder::new()
                .name(format!("ferroflow-worker-{index}"))
                .spawn(move || worker.run(rx))
                .map_err(|e| JobError::Task {
                    task: "workers",
                    detail: format!("cannot start a worker thread: {e}"),
                })?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Self {
            senders,
            threads,
            owner: BTreeMap::new(),
            lent: false,
            copies,
            lends: vec![0; n],
            told: vec![Watermark::MIN; n],
            shared,
        })
    }

    /// True while the tasks are out on the workers.
    pub(super) fn lent(&self) -> bool {
        self.lent
    }

    /// Sends every task of `chains` to its worker; a task seen for the first time goes to the
    /// worker with the fewest.
    pub(super) async fn lend(&mut self, chains: &mut Chains<C>) -> Result<(), JobError> {
        if self.lent {
            return Ok(());
        }
        let Some(tasks) = chains.take_tasks() else { return Ok(()) };
        self.owner.retain(|p, _| tasks.contains_key(p));
        let mut shares: Vec<Tasks<C>> = (0..self.senders.len()).map(|_| Tasks::new()).collect();
        for (p, task) in tasks {
            // Copy i runs on worker i: each worker must hold exactly one, as its exchange rounds
            // wait for every copy.
            let w = match self.copies {
                true => usize::try_from(p).unwrap_or(usize::MAX),
                false => self.owner_of(p),
            };
            if let Some(share) = shares.get_mut(w) {
                share.insert(p, task);
            }
        }
        self.lent = true;
        for (w, share) in shares.into_iter().enumerate() {
            if !share.is_empty() {
                self.send(w, Work::Lend(share)).await?;
            }
        }
        Ok(())
    }

    /// Takes every task back, once each worker has run everything queued before, and the
    /// workers' last reports with them.
    pub(super) async fn collect(&mut self, chains: &mut Chains<C>) -> Result<(), JobError> {
        if !self.lent {
            return Ok(());
        }
        let mut replies = Vec::with_capacity(self.senders.len());
        for w in 0..self.senders.len() {
            let (tx, rx) = oneshot::channel();
            self.send(w, Work::Collect(tx)).await?;
            replies.push(rx);
        }
        for rx in replies {
            let tasks = rx.await.map_err(|_| self.gone())?;
            chains.put_tasks(tasks);
        }
        self.lent = false;
        self.check()?;
        self.absorb_reports(chains);
        Ok(())
    }

    /// Hands a batch's records to the workers running their partitions' tasks, keeping each
    /// partition's order; a partition seen for the first time gets its task built here.
    pub(super) async fn route(
        &mut self,
        chains: &mut Chains<C>,
        records: Vec<Record<C::In>>,
        originals: SharedOriginals,
        clocks: Clocks,
        mut state: Option<&mut Backend>,
    ) -> Result<(), JobError> {
        self.lend(chains).await?;
        let mut parts: Vec<Vec<Part<C::In>>> = (0..self.senders.len()).map(|_| Vec::new()).collect();
        let mut new_tasks: Vec<Tasks<C>> = (0..self.senders.len()).map(|_| Tasks::new()).collect();
        let mut last: Option<(PartitionId, usize, usize)> = None; // partition, worker, part index
        for r in records {
            let p = super::chains::task_of(r.position.partition);
            let (w, i) = match last {
                Some((lp, w, i)) if lp == p => (w, i),
                _ => {
                    let w = match self.owner.get(&p) {
                        Some(&w) => w,
                        None => {
                            let task = chains.new_task(r.position, state.as_deref_mut())?;
                            let w = self.owner_of(p);
                            if let Some(n) = new_tasks.get_mut(w) {
                                n.insert(p, task);
                            }
                            w
                        }
                    };
                    let Some(worker_parts) = parts.get_mut(w) else { return Err(self.gone()) };
                    let i = match worker_parts.iter().position(|(q, _)| *q == p) {
                        Some(i) => i,
                        None => {
                            worker_parts.push((p, Vec::new()));
                            worker_parts.len() - 1
                        }
                    };
                    last = Some((p, w, i));
                    (w, i)
                }
            };
            if let Some((_, part)) = parts.get_mut(w).and_then(|ps| ps.get_mut(i)) {
                part.push(r);
            }
        }
        for (w, (parts, tasks)) in parts.into_iter().zip(new_tasks).enumerate() {
            if !tasks.is_empty() {
                self.send(w, Work::Lend(tasks)).await?;
            }
            if !parts.is_empty() {
                self.send(w, Work::Batch { parts, originals: Arc::clone(&originals), clocks }).await?;
            }
        }
        Ok(())
    }

    /// Runs a batch on the copies of a chain: a contiguous share each, in one message per worker.
    pub(super) async fn share(
        &mut self,
        chains: &mut Chains<C>,
        records: Vec<Record<C::In>>,
        originals: SharedOriginals,
        clocks: Clocks,
    ) -> Result<(), JobError> {
        self.lend(chains).await?;
        let n = self.senders.len();
        let mut shares = Vec::with_capacity(n);
        let per = records.len().div_ceil(n);
        let mut rest = records;
        for i in (1..n).rev() {
            let at = i.saturating_mul(per).min(rest.len());
            shares.push(rest.split_off(at));
        }
        shares.push(rest);
        shares.reverse();
        for (w, records) in shares.into_iter().enumerate() {
            let originals = Arc::clone(&originals);
            self.send(w, Work::Share { records, originals, clocks }).await?;
        }
        Ok(())
    }

    /// Sends a signal to every copy of a chain (they all see the same signals, in the same order).
    pub(super) async fn broadcast(
        &mut self,
        chains: &mut Chains<C>,
        signal: &Signal,
        clocks: Clocks,
    ) -> Result<(), JobError> {
        self.lend(chains).await?;
        for w in 0..self.senders.len() {
            self.send(w, Work::Signal { signal: signal.clone(), clocks }).await?;
        }
        Ok(())
    }

    /// Sends a tick or the source's list of partitions it is behind on to the workers that run
    /// the tasks concerned.
    pub(super) async fn signal(&mut self, signal: &Signal, clocks: Clocks) -> Result<(), JobError> {
        match signal {
            Signal::PartitionsActive(ps) => {
                let mut by_worker: BTreeMap<usize, Vec<PartitionId>> = BTreeMap::new();
                for p in ps {
                    if let Some(&w) = self.owner.get(&super::chains::task_of(*p)) {
                        by_worker.entry(w).or_default().push(*p);
                    }
                }
                for (w, ps) in by_worker {
                    self.send(w, Work::Signal { signal: Signal::PartitionsActive(ps), clocks }).await?;
                }
            }
            other => {
                for w in 0..self.senders.len() {
                    self.send(w, Work::Signal { signal: other.clone(), clocks }).await?;
                }
            }
        }
        Ok(())
    }

    /// Moves the workers' reports into `chains` (combined watermark, partition reports) and
    /// fails when a worker did.
    pub(super) fn absorb_reports(&self, chains: &mut Chains<C>) {
        let mut reports = self.shared.reports();
        // A worker that has not reported since its last lend runs tasks whose watermark it has not
        // told yet: a new partition's task starts below any, so it holds the minimum (as a Flink
        // split holds its reader's watermark until it emits one or goes idle).
        let active: Vec<Option<Watermark>> = reports
            .iter()
            .zip(&self.lends)
            .map(|(r, &sent)| if r.lends == sent { r.active } else { Some(Watermark::MIN) })
            .collect();
        let status: Vec<PartitionStatus> = reports.iter_mut().flat_map(|r| r.status.drain(..)).collect();
        drop(reports);
        chains.absorb_reports(active.into_iter(), status.into_iter());
    }

    /// Waits until a worker's report changed what the job's watermark is made of.
    pub(super) async fn reported(&self) {
        self.shared.reported.notified().await;
    }

    /// Tells every worker the job's watermark when it moved past what they were told and some
    /// partition is idle: idle tasks follow it, also when no more input comes.
    pub(super) async fn follow(&mut self, any_idle: bool, clocks: Clocks) {
        if !self.lent || self.copies || !any_idle {
            return;
        }
        for w in 0..self.senders.len() {
            if self.told.get(w).is_some_and(|&t| t < clocks.job_watermark)
                && self.send(w, Work::Follow(clocks)).await.is_err()
            {
                // A worker that stopped (a sink is gone, or it failed) ends the job through the
                // loop's own checks, with its cause; an advisory message must not replace that
                // cause with "a worker thread stopped".
                break;
            }
        }
    }

    /// The failure a worker reported, if any.
    pub(super) fn check(&self) -> Result<(), JobError> {
        let failure = self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match failure {
            Some(detail) => Err(JobError::Task { task: "worker", detail }),
            None => Ok(()),
        }
    }

    /// Lets the workers finish what is queued and waits for their threads to end.
    pub(super) async fn finish(self) -> Result<(), JobError> {
        let Self { senders, threads, .. } = self;
        drop(senders);
        let joined = tokio::task::spawn_blocking(move || {
            threads.into_iter().map(std::thread::JoinHandle::join).filter_map(Result::err).count()
        })
        .await
        .map_err(|e| JobError::Task { task: "worker", detail: e.to_string() })?;
        if joined > 0 {
            return Err(JobError::Task {
                task: "worker",
                detail: format!("{joined} worker thread(s) panicked"),
            });
        }
        Ok(())
    }

    fn owner_of(&mut self, p: PartitionId) -> usize {
        let n = self.senders.len();
        if let Some(&w) = self.owner.get(&p) {
            return w;
        }
        let mut load = vec![0usize; n];
        for &w in self.owner.values() {
            if let Some(l) = load.get_mut(w) {
                *l += 1;
            }
        }
        let w = (0..n).min_by_key(|&w| (load[w], w)).unwrap_or(0);
        self.owner.insert(p, w);
        w
    }

    async fn send(&mut self, w: usize, work: Work<C>) -> Result<(), JobError> {
        let lend = matches!(work, Work::Lend(_));
        if let (Some(c), Some(t)) = (work.clocks(), self.told.get_mut(w)) {
            *t = (*t).max(c.job_watermark);
        }
        let tx = self.senders.get(w).ok_or_else(|| self.gone())?;
        tx.send(work).await.map_err(|_| self.gone())?;
        if lend && let Some(n) = self.lends.get_mut(w) {
            *n = n.wrapping_add(1);
        }
        Ok(())
    }

    fn gone(&self) -> JobError {
        match self.check() {
            Err(e) => e,
            // A worker ends early only when a sink is gone (its error is the sink's) or it panicked.
            Ok(()) => JobError::Task { task: "worker", detail: "a worker thread stopped".into() },
        }
    }
}

/// One worker thread's own state.
struct Worker<C: Operator> {
    index: usize,
    tasks: Tasks<C>,
    ctx: Context,
    out: Vec<Record<C::Out>>,
    status: BTreeMap<PartitionId, PartitionStatus>,
    outputs: Outputs<C::Out>,
    shared: Arc<Shared>,
    /// Copies: set when this worker stops, so that the others' exchange rounds do not wait for it.
    breaker: Option<Arc<AtomicBool>>,
    /// Copies: where they gather their event-time notes after each share, and the round.
    gather: Option<Arc<Gather<Note>>>,
    gather_round: u64,
    /// Every copy's notes on the last share, in input order.
    notes: Vec<Note>,
    /// Copies: the chain takes every note before its first key step, whose round trades them
    /// (decided from the chain's shape at the first share).
    notes_at_exchange: Option<bool>,
    /// Copies: the connected key steps of the chain. With exactly one, taking every note, that
    /// step is pipelined (see [`Context::pipelined`]).
    key_steps: usize,
    /// Copies: the key step keeps a round in flight (decided from the chain's shape).
    pipelined: Option<bool>,
    /// Copies: the key step holds rounds in flight, which must be taken before anything but the
    /// next share runs.
    in_flight: bool,
    /// Lends taken so far (see [`Report::lends`]).
    lends: u64,
    /// Whether each partition was idle in this worker's last report of it.
    idle_told: BTreeMap<PartitionId, bool>,
}

impl<C: Operator> Drop for Worker<C> {
    fn drop(&mut self) {
        // Also on a panic: the thread unwinds through here.
        if let Some(b) = &self.breaker {
            b.store(true, Ordering::Release);
        }
    }
}

impl<C: Operator> Worker<C> {
    fn new(
        index: usize,
        outputs: Outputs<C::Out>,
        shared: Arc<Shared>,
        breaker: Option<Arc<AtomicBool>>,
        gather: Option<Arc<Gather<Note>>>,
        key_steps: usize,
    ) -> Self {
        let mut ctx = Context::new(0);
        if outputs.per_input {
            ctx.count_per_input();
        }
        Self {
            index,
            tasks: Tasks::new(),
            ctx,
            out: Vec::new(),
            status: BTreeMap::new(),
            outputs,
            shared,
            breaker,
            gather,
            gather_round: 0,
            notes: Vec::new(),
            notes_at_exchange: None,
            key_steps,
            pipelined: None,
            in_flight: false,
            lends: 0,
            idle_told: BTreeMap::new(),
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Work<C>>) {
        while let Some(work) = self.next(&mut rx) {
            let clocks = match work {
                Work::Lend(tasks) => {
                    self.tasks.extend(tasks);
                    self.lends = self.lends.wrapping_add(1);
                    // The lent tasks' watermarks are known now: a worker that gets no records
                    // for a while must not hold the job's watermark until then.
                    self.report();
                    continue;
                }
                Work::Collect(reply) => {
                    self.report();
                    // The coordinator's view of the tasks' partitions changes while it holds them.
                    self.idle_told.clear();
                    let _ = reply.send(std::mem::take(&mut self.tasks));
                    continue;
                }
                Work::Batch { parts, originals, clocks } => {
                    clocks.apply(&mut self.ctx);
                    self.ctx.set_shared_originals(originals);
                    for (p, records) in parts {
                        self.process(p, records);
                    }
                    self.ctx.clear_originals();
                    clocks
                }
                Work::Signal { signal, clocks } => {
                    clocks.apply(&mut self.ctx);
                    self.signal(&signal);
                    clocks
                }
                Work::Share { records, originals, clocks } => {
                    clocks.apply(&mut self.ctx);
                    self.ctx.set_shared_originals(originals);
                    self.run_share(records);
                    self.ctx.clear_originals();
                    clocks
                }
                Work::Follow(clocks) => {
                    clocks.apply(&mut self.ctx);
                    clocks
                }
            };
            self.follow(clocks.job_watermark);
            if !self.emit() {
                return; // a sink is gone: its task reports why
            }
            self.report();
        }
    }

    /// The next message. With rounds in flight, only a share that is already queued runs before
    /// they are taken: anything else (a signal, a checkpoint's collect, the end) and an empty
    /// queue take them first, so they see the worker as if every share had run to its end.
    fn next(&mut self, rx: &mut mpsc::Receiver<Work<C>>) -> Option<Work<C>> {
        if !self.in_flight {
            return rx.blocking_recv();
        }
        let queued = match rx.try_recv() {
            Ok(work @ Work::Share { .. }) => return Some(work),
            Ok(work) => Some(work),
            Err(_) => None,
        };
        self.take_in_flight();
        if !self.emit() {
            return None; // a sink is gone: its task reports why
        }
        self.report();
        queued.or_else(|| rx.blocking_recv())
    }

    /// Takes the rounds in flight through the rest of the chain, one at a time and in order (see
    /// [`Context::draining`]).
    fn take_in_flight(&mut self) {
        self.ctx.draining = true;
        while std::mem::take(&mut self.in_flight) {
            // Sets `in_flight` again while rounds remain; a failed share leaves it unset.
            self.run_share(Vec::new());
        }
        self.ctx.draining = false;
        self.ctx.clear_originals();
    }

    fn process(&mut self, p: PartitionId, mut records: Vec<Record<C::In>>) {
        let Some(task) = self.tasks.get_mut(&p) else {
            // Cannot happen: the coordinator lends a partition's task before its first records.
            // Stopping keeps the records unacknowledged: the job restarts from its checkpoint.
            self.shared.fail(format!(
                "worker {} got {} records of partition {p} without its task",
                self.index,
                records.len()
            ));
            return;
        };
        self.ctx.counters.records_in += records.len() as u64;
        let second = self.ctx.second_input_share(&records);
        self.ctx.count_second_input(|c| &mut c.records_in, second);
        task.chain.process_batch(&mut records, &mut self.ctx, &mut self.out);
        task.settle(&mut self.ctx, &mut self.out, &mut self.status);
    }

    /// Runs a copy's share of a batch, then gathers every copy's event-time notes on the batch and
    /// moves the copy's watermark with them.
    fn run_share(&mut self, mut records: Vec<Record<C::In>>) {
        let (Some(task), Some(gather)) = (self.tasks.values_mut().next(), self.gather.as_ref()) else {
            // Cannot happen: copies are lent before their first share.
            self.shared
                .fail(format!("worker {} got a share of a batch without a copy of the chain", self.index));
            return;
        };
        self.ctx.counters.records_in += records.len() as u64;
        let second = self.ctx.second_input_share(&records);
        self.ctx.count_second_input(|c| &mut c.records_in, second);
        // Every note taken before the first key step: its round trades them (the same for every
        // copy: it depends on the chain's shape only). Otherwise the copies meet once more.
        let at_exchange = *self.notes_at_exchange.get_or_insert_with(|| notes_at_exchange(&task.chain));
        self.ctx.observing = true;
        self.ctx.notes_at_exchange = at_exchange;
        self.ctx.notes_traded = false;
        // One key step, trading every note, with nothing upstream that emits on a watermark: it can
        // keep a round in flight across shares. With more key steps, each later one would trade
        // in rounds of its own, which every copy must run in step; a step upstream that emits
        // on a watermark would send records into the exchange between shares.
        let key_steps = self.key_steps;
        self.ctx.pipelined = *self.pipelined.get_or_insert_with(|| {
            at_exchange && key_steps == 1 && !task.chain.emits_before_exchange(&mut false)
        });
        task.chain.process_batch(&mut records, &mut self.ctx, &mut self.out);
        self.ctx.observing = false;
        let pipelined = std::mem::take(&mut self.ctx.pipelined);
        self.in_flight = pipelined && std::mem::take(&mut self.ctx.round_in_flight);
        // Pipelined, a batch moves the watermark only with the round it took: that round's notes,
        // under the clocks of its own share (the key step set them), as every copy applies them.
        // Judging idleness without them, or under a later clock, would differ between copies.
        let moves_watermark = !pipelined || std::mem::take(&mut self.ctx.round_taken);
        let gathered = match at_exchange {
            true if self.ctx.notes_traded && self.ctx.observations.is_empty() => {
                std::mem::swap(&mut self.notes, &mut self.ctx.traded_notes);
                Ok(())
            }
            true => {
                self.shared.fail(format!(
                    "worker {}: the chain's event-time notes were not all traded at its key step",
                    self.index
                ));
                return;
            }
            false => {
                let round = self.gather_round;
                self.gather_round = round.wrapping_add(1);
                gather.gather(self.index, round, &mut self.ctx.observations, &mut self.notes)
            }
        };
        if std::mem::take(&mut self.ctx.exchange_broken) || gathered.is_err() {
            self.shared.fail("a worker thread stopped while the copies traded records by key".into());
            return;
        }
        if moves_watermark {
            task.chain.observe_event_times(&self.notes, &mut self.ctx);
            task.settle(&mut self.ctx, &mut self.out, &mut self.status);
        }
    }

    fn signal(&mut self, signal: &Signal) {
        match signal {
            // Partition tasks each take their own partition; a copy of a chain takes them all.
            Signal::PartitionsActive(ps) if self.breaker.is_none() => {
                for p in ps {
                    if let Some(task) = self.tasks.get_mut(&super::chains::task_of(*p)) {
                        task.chain.on_signal(&Signal::PartitionsActive(vec![*p]), &mut self.ctx);
                        task.settle(&mut self.ctx, &mut self.out, &mut self.status);
                    }
                }
            }
            other => {
                for task in self.tasks.values_mut() {
                    task.signal(other, &mut self.ctx, &mut self.out);
                    task.settle(&mut self.ctx, &mut self.out, &mut self.status);
                }
            }
        }
    }

    /// Idle tasks follow the job's watermark, so their windows close with the rest of the job.
    /// Copies do not: their watermarks move together from the same notes, and a copy with rounds
    /// in flight must not follow one that is rounds ahead of it.
    fn follow(&mut self, job: Watermark) {
        if self.breaker.is_some() {
            return;
        }
        for task in self.tasks.values_mut().filter(|t| t.idle) {
            task.advance(job, &mut self.ctx, &mut self.out);
        }
    }

    /// Sends results and dead letters on and adds the counters to the job's; false when a sink
    /// task is gone or a step's state failed (the job fails with it).
    fn emit(&mut self) -> bool {
        // A large firing goes out chunk by chunk, each sent before the next is made (see
        // `Processing::emit`).
        loop {
            if !self.emit_chunk() {
                return false;
            }
            let mut pending = self.tasks.values_mut().filter(|t| t.pending()).peekable();
            if pending.peek().is_none() {
                return true;
            }
            for task in pending {
                task.resume(&mut self.ctx, &mut self.out);
            }
        }
    }

    fn emit_chunk(&mut self) -> bool {
        // A step's state failed: none of these results go out, and the job fails.
        if let Some(e) = self.ctx.take_state_failure() {
            self.shared.fail(format!("worker {}: {e}", self.index));
            return false;
        }
        let o = &self.outputs;
        if !o.consumes_records {
            self.ctx.counters.records_out += self.out.len() as u64;
            let second = self.ctx.second_input_share(&self.out);
            self.ctx.count_second_input(|c| &mut c.records_out, second);
        }
        let mut open = true;
        if !self.out.is_empty() {
            let batch: Vec<C::Out> = self.out.drain(..).map(|r| r.payload).collect();
            open &= o.results.blocking_send(SinkMsg::Batch(batch)).is_ok();
            super::processing::shrink_output(&mut self.out);
        }
        if !self.ctx.dead_letters.is_empty() {
            open &= o.dead_letters.blocking_send(SinkMsg::Batch(self.ctx.take_dead_letters())).is_ok();
        }
        o.counters.absorb(&mut self.ctx.counters);
        o.counters.absorb_steps(&mut self.ctx.steps);
        open
    }

    fn report(&mut self) {
        let active = self.tasks.values().filter(|t| !t.idle).map(|t| t.watermark).min();
        let mut reports = self.shared.reports();
        // Partition reports come with every watermark proposal, mostly unchanged: only a partition
        // turning idle or active again is worth waking the coordinator for. Waking it for every
        // report kept it ticking (and a reading clock moving) while nothing changed.
        let mut changed = false;
        for s in self.status.values() {
            changed |= self.idle_told.insert(s.partition, s.idle) != Some(s.idle);
        }
        if let Some(r) = reports.get_mut(self.index) {
            changed |= r.active != active || r.lends != self.lends;
            r.active = active;
            r.lends = self.lends;
            r.status.extend(std::mem::take(&mut self.status).into_values());
        }
        drop(reports);
        // Copies move their watermarks together, with every batch: nothing waits on their reports.
        if changed && self.breaker.is_none() {
            self.shared.reported.notify_one();
        }
    }
}

/// True when every event-time note of `chain` is taken before its first connected key step, so
/// that step's round trades the copies' notes.
fn notes_at_exchange<C: Operator>(chain: &C) -> bool {
    let mut exchanged = false;
    let after = chain.notes_after_exchange(&mut exchanged);
    exchanged && !after
}
