//! Keyed event-time windows: tumbling, sliding (hopping) and session, with incremental aggregation
//! and allowed lateness.
//!
//! A window `[start, end)` fires when the watermark reaches `end - 1` and emits one
//! [`WindowResult`] per key with `revision` 0. While the watermark is below `end - 1 + lateness`, a
//! late record still updates the window and the key's row is emitted again with the next revision.
//! When the watermark reaches `end - 1 + lateness` the window's state is dropped; with a non-zero
//! lateness a last row with `is_final = true` marks each key's value as settled (with zero lateness
//! the first row is already final). A record whose windows are all past that point goes to the
//! dead-letter output with reason `late_event`.
//!
//! Session windows differ by one millisecond: since a record exactly at a session's `end` still
//! joins it (touching sessions merge, as in Flink), a session is complete when the watermark reaches
//! `end` and is dropped at `end + lateness` (see the `session` module).

mod aggregate;
mod aligned;
mod common;
mod operator;
mod result;
mod session;
mod spec;
mod spill;

pub use aggregate::{Aggregator, Avg, Count, Max, Min, Stats, StatsValue, Sum};
pub use operator::WindowOperator;
pub use result::WindowResult;
pub use spec::{Window, WindowConfig, WindowKind, WindowKindConfig, WindowSpec};
