//! ferroflow: embedded event-time stream processing for Rust services.
//!
//! This facade re-exports [`ferroflow_core`] (always) and the reference pipeline (feature `pipeline`).
//! See the crate README for a quickstart; `use ferroflow::prelude::*;` is the one import a job needs.
#![deny(missing_docs)]

pub use ferroflow_core::*;

/// The README's Rust code blocks, run as doctests so that the README cannot drift from the API.
#[cfg(all(doctest, feature = "rocksdb", feature = "checkpoints"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The reference Kafka -> ClickHouse pipeline (feature `pipeline`).
#[cfg(feature = "pipeline")]
pub use ferroflow_pipeline as pipeline;
