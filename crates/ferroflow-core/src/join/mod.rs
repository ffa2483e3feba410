//! Joins of two inputs on a keyed stream.
//!
//! A job with two inputs reads them as one stream of [`Either`]: `Left` records from one input,
//! `Right` records from the other ([`UnionSource`](crate::source::UnionSource) merges two sources
//! so, each keeping its own partitions and offsets). Keying the merged stream by the join key puts
//! both sides of a key on one step, and that step sees one watermark: the minimum over every
//! partition of both inputs, so neither side's progress runs ahead of the other's.
//!
//! - [`IntervalJoin`]: pairs `l` and `r` of one key with `l.ts + lower <= r.ts <= l.ts + upper`
//!   (Flink's `intervalJoin().between(lower, upper)`, Kafka Streams' `JoinWindows`), inner or left
//!   outer; each side's records wait in keyed state until the watermark passes their interval.
//!
//! Join state is keyed state ([`crate::operator::KeyedProcess`]): it counts against the memory
//! budget and spills beyond it, and checkpoints write only what changed.

mod interval;

pub use either::Either;
pub use interval::IntervalJoin;
