//! Everything a job needs, in one import: `use ferroflow::prelude::*;`.
//!
//! The stream builder, records and keys, event time, window specs and the built-in aggregators,
//! joins, the built-in sources and sinks, the runner and its builders, dead letters, the errors, and
//! `std::time::Duration` (every window and watermark setting takes one).
//!
//! # Examples
//! ```
//! use ferroflow_core::prelude::*;
//! let job = Stream::<i64>::new().filter(|x| *x > 0);
//! # let _ = job;
//! ```

pub use std::time::Duration;

pub use crate::dead_letter::{DeadLetter, DeadLetterReason, Rejection};
pub use crate::error::{ConfigError, ErrorDomain, JobError, RetryHint, SinkError, SourceError};
pub use crate::join::{BroadcastJoin, BroadcastTable, Either, IntervalJoin, TemporalJoin, WindowJoin};
pub use crate::operator::{
    Context, IntoOperator, KeyedContext, KeyedFunction, ListState, MapState, Operator, ProcessOutput,
    StateDeclarations, StateTtl, TimeDomain, ValueState,
};
pub use crate::record::{Key, PartitionId, Record, SourcePosition, Timestamp};
#[cfg(feature = "checkpoints")]
pub use crate::runtime::CheckpointsBuilder;
pub use crate::runtime::{JobBuilder, JobReport, Runner, RunnerBuilder, RunnerConfig, ShutdownHandle};
pub use crate::sink::{CollectSink, DiscardDeadLetters, JsonLinesSink, NullSink, Sink, SplitSink};
pub use crate::source::{JsonLinesSource, MemorySource, Source};
pub use crate::state::MemoryStateBackend;
#[cfg(feature = "rocksdb")]
pub use crate::state::RocksDb;
pub use crate::stream::Stream;
pub use crate::time::{Watermark, WatermarkStrategy};
pub use crate::window::{Avg, Count, Max, Min, Stats, StatsValue, Sum, WindowResult, WindowSpec};
