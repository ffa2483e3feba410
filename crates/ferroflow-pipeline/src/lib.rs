//! The reference ferroflow pipeline: Kafka -> data contract -> dedup -> event-time windows -> ClickHouse.
//!
//! This crate is a placeholder until the pipeline issue lands; it re-exports the core so the workspace
//! shape is final from the start.
#![deny(missing_docs)]

pub use ferroflow_core as core;
