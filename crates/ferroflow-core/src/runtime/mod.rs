//! The runner: drives a source through an operator chain into sinks on tokio.

mod runner;

pub use runner::{JobReport, Runner, RunnerConfig, ShutdownHandle};
