//! The runner: drives a source through the job's operator chains into sinks on tokio.
//!
//! - [`runner`](Runner): the public type, its job builder, and how a run starts and ends;
//! - `builder`: [`RunnerBuilder`] and [`CheckpointsBuilder`];
//! - `processing`: the processing loop, one handler per event;
//! - `checkpointing`: restore, checkpoints and partition hand-over, behind the `checkpoints` feature;
//! - `chains`: the job's operator chains (one, or one per source partition);
//! - `workers`: the worker threads that run a partition-scoped job's tasks;
//! - `io`: the source and sink task bodies.

mod builder;
mod chains;
mod checkpointing;
mod io;
mod processing;
mod runner;
mod workers;

#[cfg(feature = "checkpoints")]
pub use builder::CheckpointsBuilder;
pub use builder::RunnerBuilder;
pub use runner::{JobBuilder, JobReport, Runner, RunnerConfig, ShutdownHandle, available_cores};
