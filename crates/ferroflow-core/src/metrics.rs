//! Record accounting: the counters behind the identity
//! `records_in + records_expanded = records_windowed + records_processed + records_out
//!  + records_filtered + records_deduplicated + records_dead_lettered`.
//!
//! Operators count into a plain [`LocalCounters`] (no atomics on the hot path); the runner adds
//! them to the shared [`JobCounters`] once per batch, where metrics exporters and reports read them.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

use crate::dead_letter::DeadLetterReason;

const REASONS: usize = DeadLetterReason::ALL.len();

/// Counters an operator chain updates while it processes one batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LocalCounters {
    /// Source records that entered the job (including those the source itself dead-lettered).
    pub records_in: u64,
    /// Records added by `flat_map` steps beyond one output per input.
    pub records_expanded: u64,
    /// Records accepted by a window operator.
    pub records_windowed: u64,
    /// Records consumed by a keyed process function (what it emits are results, as a window's).
    pub records_processed: u64,
    /// Records that reached the sink of a job without a window.
    pub records_out: u64,
    /// Records dropped on purpose by a filter (or a `flat_map` that returned nothing).
    pub records_filtered: u64,
    /// Records dropped as duplicates.
    pub records_deduplicated: u64,
    /// Dead letters by reason, indexed like [`DeadLetterReason::ALL`].
    pub dead_letters: [u64; REASONS],
    /// Window results emitted (every revision counts).
    pub window_rows_emitted: u64,
    /// The latest window end among the rows emitted in this batch (event time, ms).
    pub newest_window_end: Option<i64>,
    /// The share of the counts above that records of a union's second input make up (counted
    /// only in jobs with two inputs).
    pub second_input: InputCounts,
}

/// One input's share of the accounting terms in a job with two inputs (a
/// [`UnionSource`](crate::source::UnionSource)): each record is counted for the input it was read
/// from, and each input's own identity holds.
///
/// A record that a step turns into another (a map, a join's output row from a keyed function)
/// keeps its source position, so it stays its input's; a join consumes records of both inputs
/// (each counted as processed for its own input) and what it emits are results.
///
/// # Examples
/// ```
/// use ferroflow_core::metrics::InputCounts;
/// let clicks = InputCounts { records_in: 5, records_processed: 4, records_dead_lettered: 1, ..Default::default() };
/// assert!(clicks.identity_holds());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct InputCounts {
    /// Records of the input that entered the job.
    pub records_in: u64,
    /// Records added by `flat_map` steps beyond one per record of the input.
    pub records_expanded: u64,
    /// Records of the input accepted into windows.
    pub records_windowed: u64,
    /// Records of the input consumed by keyed process functions (joins among them).
    pub records_processed: u64,
    /// Records of the input that reached the sink of a job without a window.
    pub records_out: u64,
    /// Records of the input filtered out on purpose.
    pub records_filtered: u64,
    /// Records of the input dropped as duplicates.
    pub records_deduplicated: u64,
    /// Dead letters of records of the input.
    pub records_dead_lettered: u64,
}

impl InputCounts {
    /// True when every record of the input is accounted for (the job's identity, for one input).
    pub fn identity_holds(&self) -> bool {
        self.records_in.checked_add(self.records_expanded)
            == self
                .records_windowed
                .checked_add(self.records_processed)
                .and_then(|n| n.checked_add(self.records_out))
                .and_then(|n| n.checked_add(self.records_filtered))
                .and_then(|n| n.checked_add(self.records_deduplicated))
                .and_then(|n| n.checked_add(self.records_dead_lettered))
    }

    fn terms(&self) -> [u64; 8] {
        [
            self.records_in,
            self.records_expanded,
            self.records_windowed,
            self.records_processed,
            self.records_out,
            self.records_filtered,
            self.records_deduplicated,
            self.records_dead_lettered,
        ]
    }

    fn from_terms(t: [u64; 8]) -> Self {
        let [
            records_in,
            records_expanded,
            records_windowed,
            records_processed,
            records_out,
            records_filtered,
            records_deduplicated,
            records_dead_lettered,
        ] = t;
        Self {
            records_in,
            records_expanded,
            records_windowed,
            records_processed,
            records_out,
            records_filtered,
            records_deduplicated,
            records_dead_lettered,
        }
    }
}

impl LocalCounters {
    /// Total dead letters over every reason.
    pub fn records_dead_lettered(&self) -> u64 {
        self.dead_letters.iter().sum()
    }

    /// Adds one dead letter of `reason`.
    pub fn dead_letter(&mut self, reason: DeadLetterReason) {
        self.dead_letters[reason.index()] += 1;
    }

    fn take(&mut self) -> LocalCounters {
        std::mem::take(self)
    }
}

/// The job's shared counters, cheap to clone and read from any thread.
///
/// # Examples
/// ```
/// use ferroflow_core::JobCounters;
/// let c = JobCounters::default();
/// let snap = c.snapshot();
/// assert!(snap.identity_holds());
/// ```
#[derive(Debug, Clone, Default)]
pub struct JobCounters {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    records_in: AtomicU64,
    records_expanded: AtomicU64,
    records_windowed: AtomicU64,
    records_processed: AtomicU64,
    records_out: AtomicU64,
    records_filtered: AtomicU64,
    records_deduplicated: AtomicU64,
    /// The second input's share of the terms (in [`InputCounts::terms`] order).
    second_input: [AtomicU64; 8],
    /// The job reads two inputs: snapshots split the terms by input.
    two_inputs: std::sync::atomic::AtomicBool,
    dead_letters: [AtomicU64; REASONS],
    window_rows_emitted: AtomicU64,
    watermark: AtomicI64,
    batches: AtomicU64,
    checkpoints_completed: AtomicU64,
    checkpoint_failures: AtomicU64,
    checkpoint_bytes_uploaded: AtomicU64,
    last_checkpoint_unix_ms: AtomicI64,
    last_checkpoint_duration_us: AtomicU64,
    last_checkpoint_bytes: AtomicU64,
    partitions: std::sync::Mutex<Vec<PartitionStatus>>,
    /// The most recent checkpoint durations, numbered by `checkpoints_completed`.
    recent_checkpoints: std::sync::Mutex<std::collections::VecDeque<(u64, std::time::Duration)>>,
    restore_duration_us: AtomicU64,
    window_emit_lag_ms: AtomicI64,
    operators: std::sync::Mutex<Vec<OperatorCount>>,
    state: std::sync::Mutex<Option<crate::state::StateStats>>,
    budget: std::sync::Mutex<Option<crate::state::StateBudget>>,
}

/// Records that entered and left one step of a chain.
///
/// A filter's `records_in - records_out` is what it dropped; a window's `records_out` counts result
/// rows, not records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StepCount {
    /// Records handed to the step.
    pub records_in: u64,
    /// Records the step passed on (results, for a window).
    pub records_out: u64,
}

/// Records in and out of one step of the job's operator chain, with the step's place and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorCount {
    /// Position in the chain, from 0 (the source input).
    pub index: usize,
    /// The operator's name (`filter`, `dedup`, `window`, …).
    pub name: &'static str,
    /// What went in and out.
    #[serde(flatten)]
    pub records: StepCount,
}

/// Checkpoint durations kept for exporters that build histograms (they read them at least this
/// often, in checkpoints).
const RECENT_CHECKPOINTS: usize = 256;

/// One source partition's event-time progress, as the watermark generator last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: crate::record::PartitionId,
    /// Its own watermark (ms; `i64::MIN` before its first record, `i64::MAX` once finished).
    pub watermark: i64,
    /// True while it is idle and does not hold the combined watermark back.
    pub idle: bool,
}

impl JobCounters {
    /// Adds a batch's local counts and resets them.
    pub fn absorb(&self, local: &mut LocalCounters) {
        let l = local.take();
        let s = &self.inner;
        let add = |a: &AtomicU64, v: u64| {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&s.records_in, l.records_in);
        add(&s.records_expanded, l.records_expanded);
        add(&s.records_windowed, l.records_windowed);
        add(&s.records_processed, l.records_processed);
        add(&s.records_out, l.records_out);
        add(&s.records_filtered, l.records_filtered);
        add(&s.records_deduplicated, l.records_deduplicated);
        for (a, v) in s.dead_letters.iter().zip(l.dead_letters) {
            add(a, v);
        }
        for (a, v) in s.second_input.iter().zip(l.second_input.terms()) {
            add(a, v);
        }
        add(&s.window_rows_emitted, l.window_rows_emitted);
        if let Some(end) = l.newest_window_end {
            // Event-time lag of emitted windows: how long after its end (by the wall clock) a
            // window's row left the job.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            s.window_emit_lag_ms.store(now.saturating_sub(end), Ordering::Relaxed);
        }
        s.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes that the job reads two inputs: snapshots then split the accounting by input (the
    /// runner does this at the start).
    pub fn set_two_inputs(&self) {
        self.inner.two_inputs.store(true, Ordering::Relaxed);
    }

    /// Records the job's current combined watermark.
    pub fn set_watermark(&self, watermark: i64) {
        self.inner.watermark.store(watermark, Ordering::Relaxed);
    }

    /// Records a completed checkpoint (or savepoint): its duration and bytes uploaded.
    pub fn record_checkpoint(&self, duration: std::time::Duration, bytes_uploaded: u64) {
        let s = &self.inner;
        let n = s.checkpoints_completed.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut r) = s.recent_checkpoints.lock() {
            if r.len() == RECENT_CHECKPOINTS {
                r.pop_front();
            }
            r.push_back((n, duration));
        }
        s.checkpoint_bytes_uploaded.fetch_add(bytes_uploaded, Ordering::Relaxed);
        s.last_checkpoint_bytes.store(bytes_uploaded, Ordering::Relaxed);
        s.last_checkpoint_duration_us.store(duration.as_micros() as u64, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        s.last_checkpoint_unix_ms.store(now, Ordering::Relaxed);
    }

    /// Durations of the checkpoints numbered after `seen` (1-based count of completed
    /// checkpoints), oldest first, with their numbers: how exporters feed a histogram.
    pub fn checkpoint_durations_after(&self, seen: u64) -> Vec<(u64, std::time::Duration)> {
        self.inner
            .recent_checkpoints
            .lock()
            .map(|r| r.iter().filter(|(n, _)| *n > seen).copied().collect())
            .unwrap_or_default()
    }

    /// Records how long restoring the last checkpoint took (state download, open, operator
    /// restore, source seek).
    pub fn record_restore(&self, duration: std::time::Duration) {
        self.inner.restore_duration_us.store(duration.as_micros() as u64, Ordering::Relaxed);
    }

    /// Replaces the per-partition watermark report.
    pub fn set_partitions(&self, partitions: Vec<PartitionStatus>) {
        if let Ok(mut p) = self.inner.partitions.lock() {
            *p = partitions;
        }
    }

    /// Names the steps of the job's chain (the runner does this once, before the first batch).
    pub fn set_operators(&self, names: &[&'static str]) {
        if let Ok(mut ops) = self.inner.operators.lock() {
            *ops = names
                .iter()
                .enumerate()
                .map(|(index, name)| OperatorCount { index, name, records: StepCount::default() })
                .collect();
        }
    }

    /// Adds a batch's per-step counts and zeroes them in place (no allocation per batch).
    pub fn absorb_steps(&self, steps: &mut [StepCount]) {
        if steps.iter().all(|s| s.records_in == 0 && s.records_out == 0) {
            return;
        }
        if let Ok(mut ops) = self.inner.operators.lock() {
            for (i, step) in steps.iter_mut().enumerate() {
                if let Some(op) = ops.get_mut(i) {
                    op.records.records_in += step.records_in;
                    op.records.records_out += step.records_out;
                }
                *step = StepCount::default();
            }
        }
    }

    /// Records the state backend's size figures.
    pub fn set_state_stats(&self, stats: crate::state::StateStats) {
        if let Ok(mut s) = self.inner.state.lock() {
            *s = Some(stats);
        }
    }

    /// Reports `budget`'s figures in every snapshot from now on.
    pub fn watch_budget(&self, budget: crate::state::StateBudget) {
        if let Ok(mut b) = self.inner.budget.lock() {
            *b = Some(budget);
        }
    }

    /// Records a checkpoint that failed.
    pub fn record_checkpoint_failure(&self) {
        self.inner.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy of every counter (each read is atomic; the set is not).
    pub fn snapshot(&self) -> CountersSnapshot {
        let s = &self.inner;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut dead_letters = [0u64; REASONS];
        for (d, a) in dead_letters.iter_mut().zip(&s.dead_letters) {
            *d = get(a);
        }
        CountersSnapshot {
            records_in: get(&s.records_in),
            records_expanded: get(&s.records_expanded),
            records_windowed: get(&s.records_windowed),
            records_processed: get(&s.records_processed),
            records_out: get(&s.records_out),
            records_filtered: get(&s.records_filtered),
            records_deduplicated: get(&s.records_deduplicated),
            dead_letters_by_reason: DeadLetterReason::ALL
                .iter()
                .zip(dead_letters)
                .map(|(r, n)| (r.code(), n))
                .collect(),
            records_dead_lettered: dead_letters.iter().sum(),
            window_rows_emitted: get(&s.window_rows_emitted),
            watermark: s.watermark.load(Ordering::Relaxed),
            batches: get(&s.batches),
            checkpoints_completed: get(&s.checkpoints_completed),
            checkpoint_failures: get(&s.checkpoint_failures),
            checkpoint_bytes_uploaded: get(&s.checkpoint_bytes_uploaded),
            last_checkpoint_unix_ms: s.last_checkpoint_unix_ms.load(Ordering::Relaxed),
            last_checkpoint_duration_us: get(&s.last_checkpoint_duration_us),
            last_checkpoint_bytes: get(&s.last_checkpoint_bytes),
            partitions: s.partitions.lock().map(|p| p.clone()).unwrap_or_default(),
            restore_duration_us: get(&s.restore_duration_us),
            window_emit_lag_ms: s.window_emit_lag_ms.load(Ordering::Relaxed),
            operators: s.operators.lock().map(|o| o.clone()).unwrap_or_default(),
            state: s.state.lock().ok().and_then(|st| *st),
            state_budget: s.budget.lock().ok().and_then(|b| b.as_ref().map(crate::state::StateBudget::stats)),
            inputs: s.two_inputs.load(Ordering::Relaxed).then(|| {
                let second = InputCounts::from_terms(s.second_input.each_ref().map(get));
                let total = [
                    get(&s.records_in),
                    get(&s.records_expanded),
                    get(&s.records_windowed),
                    get(&s.records_processed),
                    get(&s.records_out),
                    get(&s.records_filtered),
                    get(&s.records_deduplicated),
                    dead_letters.iter().sum(),
                ];
                let mut first = [0u64; 8];
                for ((f, t), s) in first.iter_mut().zip(total).zip(second.terms()) {
                    *f = t.saturating_sub(s);
                }
                [InputCounts::from_terms(first), second]
            }),
        }
    }
}

/// A copy of the job counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    /// Source records that entered the job.
    pub records_in: u64,
    /// Extra records produced by `flat_map` steps.
    pub records_expanded: u64,
    /// Records accepted into windows.
    pub records_windowed: u64,
    /// Records consumed by keyed process functions.
    pub records_processed: u64,
    /// Records that reached the sink of a job without a window.
    pub records_out: u64,
    /// Records filtered out on purpose.
    pub records_filtered: u64,
    /// Records dropped as duplicates.
    pub records_deduplicated: u64,
    /// Dead letters by reason code.
    pub dead_letters_by_reason: Vec<(&'static str, u64)>,
    /// Total dead letters.
    pub records_dead_lettered: u64,
    /// Window results emitted, every revision counted.
    pub window_rows_emitted: u64,
    /// The job's combined watermark (`i64::MIN` before the first one).
    pub watermark: i64,
    /// Batches processed.
    pub batches: u64,
    /// Checkpoints and savepoints completed by this process.
    pub checkpoints_completed: u64,
    /// Checkpoints that failed.
    pub checkpoint_failures: u64,
    /// Bytes uploaded by all checkpoints.
    pub checkpoint_bytes_uploaded: u64,
    /// Wall-clock time of the last completed checkpoint, ms since the epoch (0: none yet).
    pub last_checkpoint_unix_ms: i64,
    /// Duration of the last checkpoint, µs.
    pub last_checkpoint_duration_us: u64,
    /// Bytes uploaded by the last checkpoint.
    pub last_checkpoint_bytes: u64,
    /// Per-partition watermarks and idleness (empty for jobs without `assign_timestamps`).
    pub partitions: Vec<PartitionStatus>,
    /// How long the restore at start-up took, µs (0: started fresh).
    pub restore_duration_us: u64,
    /// Wall clock minus the end of the newest window emitted, at its emission, ms (0: none yet).
    pub window_emit_lag_ms: i64,
    /// Records in and out of each step of the operator chain.
    pub operators: Vec<OperatorCount>,
    /// The state backend's size figures, read after the last checkpoint or restore (`None`
    /// without checkpointing).
    pub state: Option<crate::state::StateStats>,
    /// The state memory budget's figures, now (`None` without a budget).
    pub state_budget: Option<crate::state::BudgetStats>,
    /// Each input's share of the accounting terms, in a job with two inputs (`None` otherwise).
    pub inputs: Option<[InputCounts; 2]>,
}

impl CountersSnapshot {
    /// Dead letters of one reason.
    pub fn dead_letters(&self, reason: DeadLetterReason) -> u64 {
        self.dead_letters_by_reason.iter().find(|(c, _)| *c == reason.code()).map_or(0, |(_, n)| *n)
    }

    /// True when every record that came in is accounted for:
    /// `in + expanded == windowed + processed + out + filtered + deduplicated + dead_lettered`.
    /// In a job with two inputs it also holds for each input's share ([`inputs`](Self::inputs)).
    pub fn identity_holds(&self) -> bool {
        self.inputs.is_none_or(|inputs| inputs.iter().all(InputCounts::identity_holds))
            && self.records_in + self.records_expanded
                == self.records_windowed
                    + self.records_processed
                    + self.records_out
                    + self.records_filtered
                    + self.records_deduplicated
                    + self.records_dead_lettered
    }
}
