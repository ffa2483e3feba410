//! ferroflow: embedded event-time stream processing for Rust services.
//!
//! This facade re-exports [`ferroflow_core`] (always) and the reference pipeline (feature `pipeline`).
//! See the crate README for a quickstart.
#![deny(missing_docs)]

pub use ferroflow_core::*;

/// The reference Kafka -> ClickHouse pipeline (feature `pipeline`).
#[cfg(feature = "pipeline")]
pub use ferroflow_pipeline as pipeline;
