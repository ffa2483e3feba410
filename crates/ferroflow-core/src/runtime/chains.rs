//! The operator chains a job runs: one for the whole job, or one task per source partition.
//!
//! A partition-scoped job (Kafka Streams' task model) builds one chain per source partition from
//! a factory. Each task keeps its state under its partition's prefix in the shared backend and
//! follows its own partition's watermark, so what a task computes depends only on its partition's
//! records: the same whichever instance runs it, which is what lets partitions move between
//! instances. A task whose partition is idle follows the other tasks' combined watermark instead,
//! so its windows still close.
//!
//! A source of two inputs (a [`UnionSource`](crate::source::UnionSource)) is co-partitioned: the
//! task of partition `p` runs partition `p` of both inputs (the second's is `RIGHT_PARTITIONS + p`),
//! as Kafka Streams runs one task per partition number over every topic it joins. The task's
//! watermark is then the minimum of its two partitions', and its state holds both sides.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::error::{JobError, StateError};
use crate::metrics::PartitionStatus;
use crate::operator::{Context, ExchangeHub, Operator, Signal, key_owner};
use crate::record::{PartitionId, Record};
use crate::state::{PartitionState, StateBackend, delete_partition};
use crate::time::{Watermark, WatermarkCeiling};

/// The live backend (owned by the runner, so `'static`: reborrows in loops keep its type).
pub(crate) type Backend = dyn StateBackend + 'static;

pub(crate) use crate::source::task_of;

/// Builds the chain of one partition's task.
pub(crate) type Factory<C> = Box<dyn FnMut(PartitionId) -> C + Send>;

/// One chain and where its watermark stands: the whole job's, or one partition's task.
pub(crate) struct Task<C: Operator> {
    pub(crate) chain: C,
    /// The watermark this task's chain last received.
    pub(crate) watermark: Watermark,
    /// The task's partition is idle: it follows the other tasks' watermark.
    pub(crate) idle: bool,
    input: Vec<Record<C::In>>,
    /// The highest watermark proposed to the task; it gets the lower of this and the context's
    /// ceiling (what the source's records wait for, a broadcast table's input).
    proposed: Watermark,
}

/// Partition tasks by partition.
pub(crate) type Tasks<C> = BTreeMap<PartitionId, Task<C>>;

impl<C: Operator> Task<C> {
    fn new(chain: C) -> Self {
        Self { chain, watermark: Watermark::MIN, idle: false, input: Vec::new(), proposed: Watermark::MIN }
    }

    /// Delivers the watermark the chain proposed, if it moved, and notes the partition report.
    pub(crate) fn settle(
        &mut self,
        ctx: &mut Context,
        out: &mut Vec<Record<C::Out>>,
        status: &mut BTreeMap<PartitionId, PartitionStatus>,
    ) -> bool {
        match ctx.take_watermark() {
            Some(w) => self.advance(w, ctx, out),
            // The ceiling may have risen since: what was held below it goes through now.
            None if self.proposed > self.watermark => self.advance(self.proposed, ctx, out),
            None => {}
        }
        match ctx.partitions.take() {
            Some(report) => {
                self.idle = !report.is_empty() && report.iter().all(|p| p.idle);
                status.extend(report.into_iter().map(|p| (p.partition, p)));
                true
            }
            None => false,
        }
    }

    /// Delivers a source signal; a tick also moves processing time (processing-time timers).
    pub(crate) fn signal(&mut self, signal: &Signal, ctx: &mut Context, out: &mut Vec<Record<C::Out>>) {
        self.chain.on_signal(signal, ctx);
        if matches!(signal, Signal::Tick) && self.chain.fires_on_processing_time() {
            self.chain.on_processing_time(ctx.processing_time(), ctx, out);
        }
    }

    /// True while the chain holds output back.
    pub(crate) fn pending(&self) -> bool {
        self.chain.has_pending_output()
    }

    /// The chain's next chunk of held-back output, if it holds any.
    pub(crate) fn resume(&mut self, ctx: &mut Context, out: &mut Vec<Record<C::Out>>) {
        if self.chain.has_pending_output() {
            self.chain.resume_output(ctx, out);
        }
    }

    pub(crate) fn advance(&mut self, w: Watermark, ctx: &mut Context, out: &mut Vec<Record<C::Out>>) {
        self.proposed = self.proposed.max(w);
        let w = self.proposed.min(ctx.ceiling);
        if w > self.watermark {
            self.watermark = w;
            self.chain.on_watermark(w, ctx, out);
        }
    }
}

enum Mode<C: Operator> {
    Job(Task<C>),
    /// Copies of one job-scoped chain, one per worker, keyed by copy index: each runs a share of
    /// every batch and owns a share of the keys (see [`crate::operator::ExchangeHub`]).
    Copies(Tasks<C>),
    PerPartition {
        factory: Factory<C>,
        tasks: BTreeMap<PartitionId, Task<C>>,
        /// The source announces its partitions (assigned, revoked): records of a partition without
        /// a task are then a broken promise, never a new task. Sources that never announce any
        /// (files, memory) get a task per partition as records show up.
        announced: bool,
    },
}

/// The job's chains and their combined watermark.
pub(crate) struct Chains<C: Operator> {
    mode: Mode<C>,
    /// Every partition's watermark and idleness, as the chains last reported them.
    status: BTreeMap<PartitionId, PartitionStatus>,
    status_changed: bool,
    watermark: Watermark,
    names: Vec<&'static str>,
    state_ids: Vec<String>,
    consumes_records: bool,
    /// Copies: stops their exchanges when a worker stops.
    breaker: Option<Arc<AtomicBool>>,
    /// Copies: the key steps of each copy's chain (each has an exchange).
    key_steps: usize,
    /// Copies: the copies' chains differ (the factory built different chains).
    mismatch: Option<String>,
    /// The limit the source puts on every task's watermark (see [`WatermarkCeiling`]).
    ceiling: Option<WatermarkCeiling>,
}

impl<C: Operator> Chains<C> {
    /// One chain for the whole job.
    pub(crate) fn job(chain: C) -> Self {
        let shape = Shape::of(&chain);
        Self::with_mode(Mode::Job(Task::new(chain)), shape)
    }

    /// One chain per source partition, each built by `factory` when its partition first shows up.
    pub(crate) fn per_partition(mut factory: Factory<C>) -> Self {
        // A throwaway chain names the steps: every task's chain has the same shape.
        let shape = Shape::of(&factory(0));
        Self::with_mode(Mode::PerPartition { factory, tasks: BTreeMap::new(), announced: false }, shape)
    }

    /// Copies of one job-scoped chain, to run on as many workers, connected by the exchanges of
    /// their key steps. `copies` must not be empty.
    pub(crate) fn copies(copies: Vec<C>) -> Option<Self> {
        let shape = Shape::of(copies.first()?);
        let mut hub = ExchangeHub::new(copies.len());
        let mut tasks = Tasks::new();
        let mut steps = None;
        let mut differ = None;
        for (i, mut chain) in copies.into_iter().enumerate() {
            let mut ports = hub.ports(i);
            chain.connect_exchanges(&mut ports);
            let taken = ports.taken();
            // Every copy must take part in the same rounds: a copy with another number of key
            // steps would leave the others waiting.
            if *steps.get_or_insert(taken) != taken {
                differ.get_or_insert(format!(
                    "copy {i} of the job's chain has {taken} key steps, copy 0 has {}: the factory must build the same chain every time",
                    steps.unwrap_or_default()
                ));
            }
            tasks.insert(PartitionId::try_from(i).ok()?, Task::new(chain));
        }
        let mut chains = Self::with_mode(Mode::Copies(tasks), shape);
        chains.breaker = Some(hub.breaker());
        chains.key_steps = steps.unwrap_or_default();
        chains.mismatch = hub.mismatch().map(str::to_owned).or(differ);
        Some(chains)
    }

    /// True when the chain runs as copies on several workers.
    pub(crate) fn copied(&self) -> bool {
        matches!(self.mode, Mode::Copies(_))
    }

    /// How many copies of the chain run (copies only; 1 otherwise).
    pub(crate) fn copy_count(&self) -> usize {
        match &self.mode {
            Mode::Copies(tasks) => tasks.len(),
            _ => 1,
        }
    }

    /// How many connected key steps each copy's chain has (copies only).
    pub(crate) fn key_steps(&self) -> usize {
        self.key_steps
    }

    /// The copies' exchange breaker (copies only).
    pub(crate) fn breaker(&self) -> Option<Arc<AtomicBool>> {
        self.breaker.clone()
    }

    /// Why the copies cannot run, if they cannot.
    pub(crate) fn mismatch(&self) -> Option<&str> {
        self.mismatch.as_deref()
    }

    fn with_mode(mode: Mode<C>, shape: Shape) -> Self {
        Self {
            breaker: None,
            key_steps: 0,
            mismatch: None,
            ceiling: None,
            mode,
            status: BTreeMap::new(),
            status_changed: false,
            watermark: Watermark::MIN,
            names: shape.names,
            state_ids: shape.state_ids,
            consumes_records: shape.consumes_records,
        }
    }

    /// Holds every task's watermark at or below `ceiling` (see [`sample_ceiling`](Self::sample_ceiling)).
    pub(crate) fn set_ceiling(&mut self, ceiling: WatermarkCeiling) {
        self.ceiling = Some(ceiling);
    }

    /// The ceiling now, for the context of the event at hand ([`Watermark::MAX`]: none). Read
    /// once per event and handed to every worker with it: copies of a chain must see the same.
    pub(crate) fn sample_ceiling(&self) -> Watermark {
        self.ceiling.as_ref().map_or(Watermark::MAX, WatermarkCeiling::get)
    }

    /// True when each partition has a task of its own.
    pub(crate) fn partitioned(&self) -> bool {
        matches!(self.mode, Mode::PerPartition { .. })
    }

    /// Step names of a chain.
    pub(crate) fn step_names(&self) -> &[&'static str] {
        &self.names
    }

    /// Ids of the stateful steps of a chain (what a checkpoint files their state under).
    pub(crate) fn state_ids(&self) -> Vec<String> {
        self.state_ids.clone()
    }

    /// True when the chains end in a window (results are not source records).
    pub(crate) fn consumes_records(&self) -> bool {
        self.consumes_records
    }

    /// The partitions with a task of their own (`None` for a job-scoped chain).
    #[cfg_attr(not(feature = "checkpoints"), allow(dead_code))]
    pub(crate) fn partitions(&self) -> Option<Vec<PartitionId>> {
        match &self.mode {
            Mode::Job(_) | Mode::Copies(_) => None,
            Mode::PerPartition { tasks, .. } => Some(tasks.keys().copied().collect()),
        }
    }

    /// The combined watermark.
    pub(crate) fn watermark(&self) -> Watermark {
        self.watermark
    }

    /// Some partition was last reported idle: it follows the combined watermark.
    pub(crate) fn any_idle(&self) -> bool {
        self.status.values().any(|s| s.idle)
    }

    /// Starts from `w` (a restored checkpoint's watermark); it never goes back.
    #[cfg_attr(not(feature = "checkpoints"), allow(dead_code))]
    pub(crate) fn resume_at(&mut self, w: Watermark) {
        self.watermark = self.watermark.max(w);
    }

    /// The partition report, when it changed since the last call.
    pub(crate) fn take_status(&mut self) -> Option<Vec<PartitionStatus>> {
        std::mem::take(&mut self.status_changed).then(|| self.status.values().copied().collect())
    }

    /// True while a chain here holds output back (see [`Operator::has_pending_output`]).
    pub(crate) fn has_pending_output(&self) -> bool {
        match &self.mode {
            Mode::Job(task) => task.chain.has_pending_output(),
            Mode::Copies(tasks) | Mode::PerPartition { tasks, .. } => tasks.values().any(Task::pending),
        }
    }

    /// The next chunk of every chain that holds output back.
    pub(crate) fn resume_output(&mut self, ctx: &mut Context, out: &mut Vec<Record<C::Out>>) {
        match &mut self.mode {
            Mode::Job(task) => task.resume(ctx, out),
            Mode::Copies(tasks) | Mode::PerPartition { tasks, .. } => {
                tasks.values_mut().for_each(|t| t.resume(ctx, out));
            }
        }
    }

    /// Takes every partition task out (to run them on worker threads); `None` for a job-scoped
    /// chain, which stays here.
    pub(crate) fn take_tasks(&mut self) -> Option<Tasks<C>> {
        match &mut self.mode {
            Mode::Job(_) => None,
            Mode::Copies(tasks) | Mode::PerPartition { tasks, .. } => Some(std::mem::take(tasks)),
        }
    }

    /// Puts partition tasks back (from worker threads).
    pub(crate) fn put_tasks(&mut self, back: Tasks<C>) {
        if let Mode::Copies(tasks) | Mode::PerPartition { tasks, .. } = &mut self.mode {
            tasks.extend(back);
        }
    }

    /// Builds the task of a partition whose first record just arrived while the tasks are out on
    /// worker threads (restored from its prefix of `state`); refused once the source announces
    /// its partitions, as in [`process`](Self::process).
    pub(crate) fn new_task(
        &mut self,
        at: crate::record::SourcePosition,
        state: Option<&mut Backend>,
    ) -> Result<Task<C>, JobError> {
        let Mode::PerPartition { factory, announced, .. } = &mut self.mode else {
            return Err(JobError::Task {
                task: "workers",
                detail: "a job-scoped chain has no partition tasks".into(),
            });
        };
        if *announced {
            return Err(not_assigned(at));
        }
        let task = task_of(at.partition);
        let mut chain = factory(task);
        if let Some(state) = state {
            chain.restore_state(&PartitionState::reader(state, task))?;
        }
        Ok(Task::new(chain))
    }

    /// Takes what worker threads reported: each worker's lowest watermark among its tasks that
    /// are not idle (`None`: no such task), and partition reports. The combined watermark moves
    /// as [`combine`](Self::combine) moves it; the workers advance their idle tasks to it.
    pub(crate) fn absorb_reports(
        &mut self,
        active: impl Iterator<Item = Option<Watermark>>,
        status: impl Iterator<Item = PartitionStatus>,
    ) {
        if let Some(w) = active.flatten().min() {
            self.watermark = self.watermark.max(w);
        }
        for s in status {
            self.status.insert(s.partition, s);
            self.status_changed = true;
        }
    }

    /// Runs a batch through the chains (each record to its partition's task).
    pub(crate) fn process(
        &mut self,
        records: &mut Vec<Record<C::In>>,
        mut state: Option<&mut Backend>,
        ctx: &mut Context,
        out: &mut Vec<Record<C::Out>>,
    ) -> Result<(), JobError> {
        match &mut self.mode {
            Mode::Job(task) => {
                task.chain.process_batch(records, ctx, out);
                self.status_changed |= task.settle(ctx, out, &mut self.status);
            }
            Mode::Copies(_) => {
                return Err(JobError::Task {
                    task: "workers",
                    detail: "copies of a chain run on worker threads, each with its share".into(),
                });
            }
            Mode::PerPartition { factory, tasks, announced } => {
                for r in records.drain(..) {
                    let p = task_of(r.position.partition);
                    let task = match tasks.get_mut(&p) {
                        Some(t) => t,
                        None if *announced => return Err(not_assigned(r.position)),
                        None => create(tasks, factory, p, state.as_deref_mut())?,
                    };
                    task.input.push(r);
                }
                for task in tasks.values_mut().filter(|t| !t.input.is_empty()) {
                    let mut input = std::mem::take(&mut task.input);
                    task.chain.process_batch(&mut input, ctx, out);
                    task.input = input;
                    self.status_changed |= task.settle(ctx, out, &mut self.status);
                }
            }
        }
        self.combine(ctx, out);
        Ok(())
    }

    /// Delivers a source signal (assignment, end of input, idleness tick).
    pub(crate) fn signal(
        &mut self,
        signal: &Signal,
        mut state: Option<&mut Backend>,
        ctx: &mut Context,
        out: &mut Vec<Record<C::Out>>,
    ) -> Result<(), StateError> {
        match &mut self.mode {
            Mode::Job(task) => {
                task.signal(signal, ctx, out);
                self.status_changed |= task.settle(ctx, out, &mut self.status);
            }
            // Copies take their signals on their workers, all at once: run one after another here,
            // a copy whose watermark moved would wait in a key step's round for the others.
            Mode::Copies(_) => return Err(copies_run_on_workers()),
            Mode::PerPartition { factory, tasks, announced } => match signal {
                Signal::PartitionsAssigned(ps) => {
                    *announced = true;
                    for &p in ps {
                        let t = task_of(p);
                        if !tasks.contains_key(&t) {
                            create(tasks, factory, t, state.as_deref_mut())?;
                        }
                        if let Some(task) = tasks.get_mut(&t) {
                            task.chain.on_signal(&Signal::PartitionsAssigned(vec![p]), ctx);
                            self.status_changed |= task.settle(ctx, out, &mut self.status);
                        }
                    }
                }
                Signal::PartitionFinished(p) => {
                    if let Some(task) = tasks.get_mut(&task_of(*p)) {
                        task.chain.on_signal(signal, ctx);
                        self.status_changed |= task.settle(ctx, out, &mut self.status);
                    }
                }
                // Releasing revoked partitions goes through `release`, after a checkpoint.
                Signal::PartitionsRevoked(_) => {}
                Signal::PartitionsActive(ps) => {
                    for p in ps {
                        if let Some(task) = tasks.get_mut(&task_of(*p)) {
                            task.chain.on_signal(&Signal::PartitionsActive(vec![*p]), ctx);
                            self.status_changed |= task.settle(ctx, out, &mut self.status);
                        }
                    }
                }
                Signal::EndOfInput | Signal::Tick => {
                    for task in tasks.values_mut() {
                        task.signal(signal, ctx, out);
                        self.status_changed |= task.settle(ctx, out, &mut self.status);
                    }
                }
            },
        }
        self.combine(ctx, out);
        Ok(())
    }

    /// Gives up partitions that moved to another instance: their tasks end and their state is
    /// deleted from `state` (the checkpoint taken just before holds it for the next owner). A
    /// job-scoped chain's watermark may move as they leave: what fires goes to `out`.
    pub(crate) fn release(
        &mut self,
        partitions: &[PartitionId],
        state: Option<&mut Backend>,
        ctx: &mut Context,
        out: &mut Vec<Record<C::Out>>,
    ) -> Result<(), StateError> {
        match &mut self.mode {
            // The revoked partitions leave the watermark's minimum: it may move, and windows fire
            // into `out` (their rows are not emitted again).
            Mode::Job(task) => {
                task.chain.on_signal(&Signal::PartitionsRevoked(partitions.to_vec()), ctx);
                self.status_changed |= task.settle(ctx, out, &mut self.status);
            }
            // As for signals: the runner sends copies the revocation on their workers.
            Mode::Copies(_) => return Err(copies_run_on_workers()),
            Mode::PerPartition { tasks, announced, .. } => {
                *announced = true;
                // A task goes with either of its partitions: co-partitioned inputs are assigned
                // and revoked together (a record of the other one would then be refused).
                let gone: std::collections::BTreeSet<PartitionId> =
                    partitions.iter().map(|&p| task_of(p)).collect();
                for &t in &gone {
                    tasks.remove(&t);
                    self.status.retain(|&p, _| task_of(p) != t);
                    self.status_changed = true;
                }
                if let Some(state) = state {
                    for &t in &gone {
                        delete_partition(state, t)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes every chain's state into `state` (each task under its partition's prefix).
    #[cfg_attr(not(feature = "checkpoints"), allow(dead_code))]
    pub(crate) fn snapshot(&mut self, state: &mut dyn StateBackend) -> Result<(), StateError> {
        match &mut self.mode {
            Mode::Job(task) => task.chain.snapshot_state(state),
            // Each copy writes its own keys; what they share (the watermark tracker, a window's
            // watermark) is the same in every copy.
            Mode::Copies(tasks) => {
                for task in tasks.values_mut() {
                    task.chain.snapshot_state(state)?;
                }
                Ok(())
            }
            Mode::PerPartition { tasks, .. } => {
                for (&p, task) in tasks.iter_mut() {
                    task.chain.snapshot_state(&mut PartitionState::writer(state, p))?;
                }
                Ok(())
            }
        }
    }

    /// Restores the job's chain from `state`; partition tasks restore themselves when created.
    #[cfg_attr(not(feature = "checkpoints"), allow(dead_code))]
    pub(crate) fn restore(&mut self, state: &mut dyn StateBackend) -> Result<(), StateError> {
        match &mut self.mode {
            Mode::Job(task) => task.chain.restore_state(state),
            // Every copy reads the whole state, then keeps the keys it owns: the number of copies
            // may differ from the run that wrote the checkpoint.
            Mode::Copies(tasks) => {
                let copies = tasks.len();
                for (i, task) in tasks.values_mut().enumerate() {
                    task.chain.restore_state(state)?;
                    task.chain.retain_keys(&|k| key_owner(k, copies) == i);
                }
                Ok(())
            }
            Mode::PerPartition { .. } => Ok(()),
        }
    }

    /// The combined watermark: the minimum over tasks that are not idle. Idle tasks then follow
    /// it, so their windows close with the rest of the job.
    fn combine(&mut self, ctx: &mut Context, out: &mut Vec<Record<C::Out>>) {
        match &mut self.mode {
            Mode::Job(task) => self.watermark = self.watermark.max(task.watermark),
            Mode::Copies(tasks) => {
                if let Some(w) = tasks.values().map(|t| t.watermark).min() {
                    self.watermark = self.watermark.max(w);
                }
            }
            Mode::PerPartition { tasks, .. } => {
                let Some(active) = tasks.values().filter(|t| !t.idle).map(|t| t.watermark).min() else {
                    return; // every task idle (or none): nothing moves, as with a single chain
                };
                self.watermark = self.watermark.max(active);
                let w = self.watermark;
                for task in tasks.values_mut().filter(|t| t.idle) {
                    task.advance(w, ctx, out);
                }
            }
        }
    }
}

/// What every chain of a job has in common.
struct Shape {
    names: Vec<&'static str>,
    state_ids: Vec<String>,
    consumes_records: bool,
}

impl Shape {
    fn of<C: Operator>(chain: &C) -> Self {
        let mut names = Vec::with_capacity(chain.steps());
        chain.step_names(&mut names);
        let mut state_ids = Vec::new();
        chain.state_ids(&mut state_ids);
        Self { names, state_ids, consumes_records: chain.consumes_records() }
    }
}

/// Copies of a chain run only on their workers, all at once (see [`Chains::copies`]).
#[cold]
fn copies_run_on_workers() -> StateError {
    StateError::Backend(
        "copies of a chain take signals on their worker threads, not one after another".into(),
    )
}

/// Builds partition `p`'s task, restored from its prefix of `state` when there is one.
fn create<'t, C: Operator>(
    tasks: &'t mut BTreeMap<PartitionId, Task<C>>,
    factory: &mut Factory<C>,
    p: PartitionId,
    state: Option<&mut Backend>,
) -> Result<&'t mut Task<C>, StateError> {
    let mut chain = factory(p);
    if let Some(state) = state {
        chain.restore_state(&PartitionState::reader(state, p))?;
    }
    Ok(tasks.entry(p).or_insert(Task::new(chain)))
}

/// A record of a partition this instance does not hold: the source delivered it after the
/// partition was revoked (or before it was assigned). Processing it would rebuild the partition's
/// task from stale state while another instance owns it.
#[cold]
fn not_assigned(at: crate::record::SourcePosition) -> JobError {
    JobError::Task {
        task: "source",
        detail: format!(
            "record at partition {} offset {} arrived while the partition is not assigned to this \
             instance: the source broke its promise to deliver a partition's records only between its \
             assignment and its revocation",
            at.partition, at.offset
        ),
    }
}
