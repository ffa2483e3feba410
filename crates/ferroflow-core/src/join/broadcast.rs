//! A broadcast table: a versioned table every task of a job instance holds whole, filled from an
//! input of its own, and the join that looks events up in it as of their time.

mod feed;
mod lookup;
mod table;

pub use feed::{TableFeed, TableGated};
pub use lookup::BroadcastJoin;
pub use table::{BroadcastTable, DEFAULT_HISTORY, HistoryGone, TableReader};

/// The step [`Stream::broadcast_join`](crate::Stream::broadcast_join) appends.
pub type BroadcastJoinStep<L, V, O> = crate::operator::KeyedProcess<BroadcastJoin<L, V, O>>;
