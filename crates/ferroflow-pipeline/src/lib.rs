//! The reference ferroflow pipeline.
//!
//! The Kafka → data contract → dedup → event-time windows → ClickHouse job ([`job`]), its
//! configuration ([`config`]), operations endpoint ([`http`], [`metrics`]), the embedded demo
//! and the traffic generator with its oracle ([`traffic`]); plus the file job used by the crash
//! tests.
#![deny(missing_docs)]

pub mod config;
#[cfg(feature = "testcontainers")]
pub mod containers;
pub mod contract;
pub mod contract_plan;
pub mod demo;
pub mod distinct;
pub mod event;
pub mod file_job;
pub mod http;
pub mod job;
pub mod metrics;
pub mod paced;
pub mod traffic;
pub mod users;

pub use ferroflow_core as core;
