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
//! - [`TemporalJoin`]: each left event with the right input's value for its key that was valid
//!   at the event's time (Flink's event-time temporal join, Kafka Streams' versioned-table join),
//!   or with the latest value seen (`latest`: Kafka Streams' KStream-KTable join).
//! - [`BroadcastJoin`]: each event with a [`BroadcastTable`]'s value valid at its time: a small
//!   table every task holds whole, filled from an input of its own and read again on every start,
//!   so the stream need not be partitioned by its key (Kafka Streams' GlobalKTable, looked up as of
//!   the event's time; the table's input holds the job's watermark back).
//! - [`WindowJoin`]: the pairs of one key in each tumbling, sliding or session window (Flink's
//!   window join), with the window operator's allowed lateness.
//!
//! Join state is keyed state ([`crate::operator::KeyedProcess`]): it counts against the memory
//! budget and spills beyond it, and checkpoints write only what changed.

mod arrivals;
mod broadcast;
mod interval;
mod temporal;
mod window;

pub use broadcast::{
    BroadcastJoin, BroadcastJoinStep, BroadcastTable, DEFAULT_HISTORY, HistoryGone, TableFeed, TableGated,
    TableReader,
};
pub use either::Either;
pub use interval::IntervalJoin;
pub use temporal::TemporalJoin;
pub use window::WindowJoin;

use crate::dead_letter::{DeadLetterReason, Rejection};
use crate::record::Timestamp;

/// What a join makes of a pair (or, outer, of a left record without a partner); `None` emits
/// nothing.
type JoinFn<L, R, O> = Box<dyn FnMut(&L, Option<&R>) -> Option<O> + Send>;

/// The dead letter of a record of `input` that came at or below the watermark.
fn late(join: &str, input: &str, t: Timestamp, watermark: Timestamp) -> Rejection {
    Rejection::new(
        DeadLetterReason::LateEvent,
        format!("input '{input}' of {join}: event time {t} is at or below the watermark {watermark}"),
    )
}
