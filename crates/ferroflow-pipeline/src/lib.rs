//! The reference ferroflow pipeline.
//!
//! Today it holds the file job (JSON-lines events → event-time windows → JSON-lines results, with
//! RocksDB state and checkpoints) and the checkpoint tooling behind the `ferroflow-pipeline`
//! binary; the Kafka → ClickHouse job builds on the same pieces.
#![deny(missing_docs)]

pub mod demo;
pub mod event;
pub mod file_job;
pub mod paced;

pub use ferroflow_core as core;
