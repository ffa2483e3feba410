//! A crash-and-restore harness shared by the operator property tests: it drives one operator
//! through batches, watermarks, checkpoints and crashes, and what it emits can be compared with an
//! uninterrupted run's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::HashSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use ferroflow_core::metrics::LocalCounters;
use ferroflow_core::state::{MemoryStateBackend, StateBackend};
use ferroflow_core::time::Watermark;
use ferroflow_core::{Context, Operator, Record};
use proptest::prelude::*;

/// One step of a run.
#[derive(Debug, Clone)]
pub enum Step<I> {
    /// A batch of inputs.
    Batch(Vec<I>),
    /// The combined watermark moves to this value (absolute, non-decreasing).
    Watermark(i64),
    /// Snapshot the operator into the backend, then checkpoint the backend.
    Checkpoint,
    /// Lose everything; restore from the last checkpoint and replay from there.
    Crash,
}

/// Runs of up to 40 steps: batches of up to 8 `item`s, watermarks advancing by up to `advance`.
pub fn steps<I: Debug + Clone + 'static>(
    item: impl Strategy<Value = I> + 'static,
    advance: i64,
) -> impl Strategy<Value = Vec<Step<I>>> {
    #[derive(Debug, Clone)]
    enum Raw<I> {
        Batch(Vec<I>),
        Advance(i64),
        Checkpoint,
        Crash,
    }
    let raw = prop_oneof![
        6 => prop::collection::vec(item, 0..8).prop_map(Raw::Batch),
        3 => (0i64..advance).prop_map(Raw::Advance),
        2 => Just(Raw::Checkpoint),
        1 => Just(Raw::Crash),
    ];
    prop::collection::vec(raw, 1..40).prop_map(|raw| {
        let mut wm = -1;
        raw.into_iter()
            .map(|r| match r {
                Raw::Batch(b) => Step::Batch(b),
                Raw::Advance(d) => {
                    wm += d;
                    Step::Watermark(wm)
                }
                Raw::Checkpoint => Step::Checkpoint,
                Raw::Crash => Step::Crash,
            })
            .collect()
    })
}

/// What a run emitted, and the counters of each batch and watermark step.
#[derive(Debug, PartialEq)]
pub struct Outcome<T> {
    pub out: Vec<T>,
    pub counters: Vec<LocalCounters>,
}

impl<T> Default for Outcome<T> {
    fn default() -> Self {
        Self { out: Vec::new(), counters: Vec::new() }
    }
}

/// Opens a fresh, empty backend under `dir`.
pub type Factory = fn(&Path) -> Box<dyn StateBackend>;

pub fn memory(_: &Path) -> Box<dyn StateBackend> {
    Box::new(MemoryStateBackend::new())
}

#[cfg(feature = "rocksdb")]
pub fn rocksdb(dir: &Path) -> Box<dyn StateBackend> {
    use ferroflow_core::state::{RocksDbOptions, RocksDbStateBackend};
    Box::new(RocksDbStateBackend::open(dir, RocksDbOptions::default()).unwrap())
}

/// How to make the operator under test and its records.
pub struct Crashes<'a, O: Operator, I> {
    /// A fresh operator (after a crash too).
    pub new_op: &'a dyn Fn() -> O,
    /// The record of one input.
    pub record: &'a dyn Fn(&I) -> Record<O::In>,
}

struct Checkpoint {
    dir: PathBuf,
    /// Index of the checkpoint step: replay resumes after it.
    step: usize,
    out: usize,
    counted: usize,
}

impl<O: Operator, I> Crashes<'_, O, I> {
    /// Applies one step; checkpoints and crashes are the caller's.
    pub fn apply(&self, op: &mut O, step: &Step<I>, outcome: &mut Outcome<O::Out>) {
        let mut ctx = Context::default();
        let mut buf = Vec::new();
        match step {
            Step::Batch(b) => {
                let mut input: Vec<_> = b.iter().map(self.record).collect();
                op.process_batch(&mut input, &mut ctx, &mut buf);
            }
            Step::Watermark(w) => op.on_watermark(Watermark(*w), &mut ctx, &mut buf),
            Step::Checkpoint | Step::Crash => return,
        }
        outcome.out.extend(buf.into_iter().map(|r| r.payload));
        outcome.counters.push(ctx.counters_mut().clone());
    }

    /// One run that never crashes; the operator as it ends.
    pub fn uninterrupted(&self, steps: &[Step<I>]) -> (Outcome<O::Out>, O) {
        let mut op = (self.new_op)();
        let mut out = Outcome::default();
        for s in steps {
            self.apply(&mut op, s, &mut out);
        }
        (out, op)
    }

    /// One run that checkpoints into backends from `factory` and, at each crash step (once),
    /// restores the last checkpoint into a fresh operator and replays from there (from the start
    /// without one); the operator as it ends.
    pub fn with_crashes(&self, steps: &[Step<I>], factory: Factory, scratch: &Path) -> (Outcome<O::Out>, O) {
        let mut backends = 0;
        let mut fresh_backend = || {
            backends += 1;
            factory(&scratch.join(format!("backend-{backends}")))
        };
        let mut op = (self.new_op)();
        let mut state = fresh_backend();
        let mut out = Outcome::default();
        let mut last: Option<Checkpoint> = None;
        let mut crashed = HashSet::new();
        let mut checkpoints = 0;
        let mut i = 0;
        while i < steps.len() {
            match &steps[i] {
                Step::Checkpoint => {
                    op.snapshot_state(state.as_mut()).unwrap();
                    checkpoints += 1;
                    let dir = scratch.join(format!("checkpoint-{checkpoints}"));
                    state.snapshot(&dir).unwrap();
                    last = Some(Checkpoint { dir, step: i, out: out.out.len(), counted: out.counters.len() });
                }
                Step::Crash if crashed.insert(i) => {
                    // The crashed operator goes first: under a budget, it gives back its share.
                    drop(op);
                    op = (self.new_op)();
                    state = fresh_backend();
                    match &last {
                        Some(cp) => {
                            state.restore(&cp.dir).unwrap();
                            op.restore_state(state.as_ref()).unwrap();
                            out.out.truncate(cp.out);
                            out.counters.truncate(cp.counted);
                            i = cp.step + 1;
                        }
                        None => {
                            out = Outcome::default();
                            i = 0;
                        }
                    }
                    continue;
                }
                step => self.apply(&mut op, step, &mut out),
            }
            i += 1;
        }
        (out, op)
    }
}
