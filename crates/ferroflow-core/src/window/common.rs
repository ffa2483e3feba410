//! What the window kinds share: the emitter of result rows, revision numbering, the late-record
//! message, the state key codec, and [`WindowState`], the interface the window operator drives
//! aligned (tumbling, sliding) and session windows through.

use super::aggregate::Aggregator;
use super::result::WindowResult;
use super::spec::Window;
use crate::dead_letter::{DeadLetterReason, Rejection};
use crate::error::StateError;
use crate::record::{Key, Record, SourcePosition, Timestamp};
use crate::state::StateBackend;

/// The windows of one kind, as the window operator drives them.
pub(super) trait WindowState<Acc> {
    /// The last watermark they saw.
    fn watermark(&self) -> Timestamp;

    /// Counts the windows' state against `budget`, spilling what does not fit (the default: they
    /// stay in memory, unbounded).
    fn attach(&mut self, budget: &crate::state::StateBudget) {
        let _ = budget;
    }

    /// Called with a batch's records before they are added (under a budget: their spilled state
    /// is read back).
    fn before_batch<T>(&mut self, records: &[Record<T>]) {
        let _ = records;
    }

    /// Called once a batch's records are added and its updates emitted.
    fn after_batch(&mut self) {}

    /// Hands a failure of the state's spill store to the job, which fails before the results go
    /// out (the default: no spill store, no failure).
    fn report_failure(&mut self, ctx: &mut crate::operator::Context) {
        let _ = ctx;
    }

    /// Adds a record to each of its windows that is still open; the rejection when none is (too
    /// late) or when its event time cannot be placed in a window at all (out of range).
    fn add<T, A: Aggregator<T, Acc = Acc>>(&mut self, agg: &A, record: &Record<T>) -> Result<(), Rejection>;

    /// Emits updated rows for fired windows that late records changed in this batch.
    fn flush_updates<A: Aggregator<T, Acc = Acc>, T>(&mut self, agg: &A, out: &mut Emitter<'_, A::Output>);

    /// Fires windows the watermark has passed and drops those past their allowed lateness, the
    /// first chunk of rows now (see [`has_pending`](Self::has_pending)).
    fn on_watermark<A: Aggregator<T, Acc = Acc>, T>(
        &mut self,
        agg: &A,
        watermark: Timestamp,
        out: &mut Emitter<'_, A::Output>,
    );

    /// True while a firing has rows left to emit (it emits a chunk per call).
    fn has_pending(&self) -> bool;

    /// Emits the next chunk of the firing under way.
    fn resume<A: Aggregator<T, Acc = Acc>, T>(&mut self, agg: &A, out: &mut Emitter<'_, A::Output>);

    /// Windows held in state (per key for sessions).
    fn open_windows(&self) -> usize;

    /// Writes what changed since the last snapshot under namespace `ns`.
    fn snapshot(&mut self, ns: &str, state: &mut dyn StateBackend) -> Result<(), StateError>;

    /// Replaces everything with what namespace `ns` of `state` holds.
    fn restore(&mut self, ns: &str, state: &dyn StateBackend) -> Result<(), StateError>;

    /// Drops the state of every key `keep` refuses (a copy of a parallel job keeps its own keys).
    fn retain_keys(&mut self, keep: &dyn Fn(&crate::record::Key) -> bool);
}

/// Pushes window rows as records (event time = the window's last millisecond).
pub(super) struct Emitter<'a, V> {
    pub(super) out: &'a mut Vec<Record<WindowResult<V>>>,
    pub(super) emitted: u64,
    /// The latest window end emitted.
    pub(super) newest_end: Option<Timestamp>,
}

impl<V> Emitter<'_, V> {
    pub fn emit(&mut self, key: Key, window: Window, value: V, revision: u32, is_final: bool) {
        self.emitted += 1;
        self.newest_end = Some(self.newest_end.map_or(window.end, |e| e.max(window.end)));
        self.out.push(Record {
            key: key.clone(),
            event_time: window.max_timestamp(),
            position: SourcePosition::default(),
            payload: WindowResult {
                key,
                window_start: window.start,
                window_end: window.end,
                value,
                revision,
                is_final,
            },
        });
    }
}

/// The revision of the next emission of a row last emitted as `emitted`, recorded as emitted.
pub(super) fn next_revision(emitted: &mut Option<u32>) -> u32 {
    let revision = emitted.map_or(0, |r| r + 1);
    *emitted = Some(revision);
    revision
}

pub(super) fn late_detail(ts: Timestamp, watermark: Timestamp, lateness: i64, window: Window) -> String {
    format!(
        "event time {ts} is too late: watermark {watermark} has passed the end of window [{}, {}) \
         plus allowed lateness {lateness} ms",
        window.start, window.end
    )
}

/// The rejection of a record too late for any of its windows.
pub(super) fn late(ts: Timestamp, watermark: Timestamp, lateness: i64, window: Window) -> Rejection {
    Rejection::new(DeadLetterReason::LateEvent, late_detail(ts, watermark, lateness, window))
}

/// The rejection of a record whose windows (of length `span` ms) would not fit in `i64`.
pub(super) fn out_of_range(ts: Timestamp, span: i64) -> Rejection {
    Rejection::new(
        DeadLetterReason::EventTimeOutOfRange,
        format!(
            "event time {ts} is within {span} ms of the ends of the millisecond range: no window can hold it"
        ),
    )
}

/// The first 16 bytes of `key` as a big-endian number, zero-padded: when two keys' prefixes
/// differ, they order as the keys do; when they are equal, the keys must be compared in full.
pub(super) fn order_prefix(key: &Key) -> u128 {
    let mut buf = [0u8; 16];
    let bytes = key.as_bytes();
    let n = bytes.len().min(16);
    if let (Some(dst), Some(src)) = (buf.get_mut(..n), bytes.get(..n)) {
        dst.copy_from_slice(src);
    }
    u128::from_be_bytes(buf)
}

/// Big-endian with the sign bit flipped, so byte order equals numeric order.
pub(super) fn ordered(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

pub(super) fn unordered(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (u64::from_be_bytes(a) ^ (1 << 63)) as i64
}

pub(super) fn corrupt(what: &str) -> StateError {
    StateError::Corrupt { what: what.to_owned() }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Rows sorted by (prefix, key) come out in key order, whatever the keys' lengths and bytes
        /// (short alphabets make shared prefixes, and keys longer than the prefix, likely).
        #[test]
        fn prefix_then_key_orders_as_keys_do(
            a in proptest::collection::vec(0u8..3, 0..24),
            b in proptest::collection::vec(0u8..3, 0..24),
        ) {
            let (ka, kb) = (Key::from_bytes(&a), Key::from_bytes(&b));
            let by_prefix = order_prefix(&ka).cmp(&order_prefix(&kb)).then_with(|| ka.cmp(&kb));
            prop_assert_eq!(by_prefix, a.cmp(&b));
        }
    }
}
