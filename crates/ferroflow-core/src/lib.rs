//! # ferroflow-core
//!
//! The event-time engine behind ferroflow: records with keys, event time and source positions;
//! operators chained batch-at-a-time inside one task; per-partition watermarks with idleness;
//! keyed tumbling, sliding and session windows with allowed lateness; dead letters for everything
//! that cannot go on; a state backend trait; and a tokio runner with bounded channels.
//!
//! ```
//! use std::time::Duration;
//! use ferroflow_core::prelude::*;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let clicks = vec![("alice", 1_000i64), ("bob", 2_000), ("alice", 61_000)];
//! let source = MemorySource::new(clicks.into_iter().map(|c| Record::new(c, 0)).collect());
//! let stream = Stream::<(&str, i64)>::new()
//!     .assign_timestamps(|c| c.1, WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5)))
//!     .key_by(|c| Key::from(c.0))
//!     .window(WindowSpec::tumbling(Duration::from_secs(60)).unwrap(), Count)
//!     .id("clicks-per-minute");
//! let (sink, dead_letters) = (CollectSink::new(), CollectSink::new());
//! let rows = sink.handle();
//! Runner::default().job(source, stream).sink(sink).dead_letters(dead_letters).run().await.unwrap();
//! assert_eq!(rows.take().len(), 3);   // alice [0,60s): 1, bob [0,60s): 1, alice [60s,120s): 1
//! # });
//! ```
#![deny(missing_docs)]

#[cfg(feature = "checkpoints")]
pub mod checkpoint;
pub mod dead_letter;
pub mod error;
pub mod join;
pub mod json;
pub mod metrics;
pub mod operator;
pub mod prelude;
pub mod record;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod state;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod window;

pub use dead_letter::{DeadLetter, DeadLetterReason, Rejection, TruncatedOriginal};
pub use error::{ConfigError, ErrorDomain, JobError, RetryHint, SinkError, SourceError, StateError};
pub use metrics::{CountersSnapshot, JobCounters, LocalCounters, OperatorCount, PartitionStatus, StepCount};
pub use operator::{Context, Operator, Signal};
pub use record::{Key, PartitionId, Record, SourcePosition, Timestamp};
pub use runtime::{JobBuilder, JobReport, Runner, RunnerBuilder, RunnerConfig, ShutdownHandle};
pub use stream::{Keyed, Stream, Then, Unkeyed};
