//! Test harnesses for jobs and operators (feature `testing`), the shape of Flink's
//! `OneInputStreamOperatorTestHarness`: push records, signals and watermarks into an operator
//! chain and look at what it emitted and what state it keeps; or play a script of source events
//! through the whole [`Runner`](crate::Runner).
//!
//! - [`OperatorHarness`] drives a chain exactly as the runner's processing loop does: after each
//!   batch or signal, a watermark the chain proposed is delivered to it if it moved forward.
//! - [`ScriptedSource`] plays source events in order and can wait for the test between them.
//!
//! The engine's own golden, property and runner tests use both.

mod harness;
mod scripted;

pub use harness::{Emitted, OperatorHarness};
pub use scripted::{HookAnswers, Script, ScriptedSource};
