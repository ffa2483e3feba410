//! The runner: drives a source through an operator chain into sinks on tokio.

#[cfg(feature = "checkpoints")]
mod handover;
mod runner;
mod tasks;

pub use runner::{JobReport, Runner, RunnerConfig, ShutdownHandle};
