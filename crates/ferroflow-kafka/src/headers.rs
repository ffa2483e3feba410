//! Original message headers, kept for the dead-letter topic.
//!
//! Records carry only their value; the headers of messages that have any are stashed here by
//! source position when they are read, taken by the dead-letter producer when one of them is
//! dead-lettered (so the envelope on the dead-letter topic keeps the original headers), and
//! forgotten once a checkpoint covers their offsets (every dead letter before a checkpoint has
//! been produced by then) or their partition leaves this instance. Messages without headers cost
//! nothing.
//!
//! The stash holds at most a byte budget: a job without checkpoints, or one whose checkpoints
//! stall, would otherwise grow it for ever. Past the budget the oldest entries go (counted); a
//! dead letter of such a record carries no original headers, everything else about it is kept.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferroflow_core::{PartitionId, SourcePosition};

/// One header: key and value (`None` for a null value).
pub type HeaderPair = (String, Option<Bytes>);

/// Stashed headers by (partition, offset), and the bytes they take.
#[derive(Debug, Default)]
struct Stashed {
    by_position: BTreeMap<(PartitionId, u64), Vec<HeaderPair>>,
    bytes: usize,
}

/// Headers of messages read but not yet covered by a checkpoint, by source position.
///
/// # Examples
/// ```
/// use bytes::Bytes;
/// use ferroflow_core::SourcePosition;
/// use ferroflow_kafka::HeaderStash;
/// let stash = HeaderStash::with_budget(1 << 20);
/// stash.put(SourcePosition::new(0, 5), vec![("trace".into(), Some(Bytes::from("abc")))]);
/// assert_eq!(stash.get(SourcePosition::new(0, 5)).map(|h| h.len()), Some(1));
/// ```
#[derive(Debug, Clone)]
pub struct HeaderStash {
    inner: Arc<Mutex<Stashed>>,
    budget: usize,
    evicted: Arc<AtomicU64>,
}

impl Default for HeaderStash {
    /// A stash of 64 MiB.
    fn default() -> Self {
        Self::with_budget(64 << 20)
    }
}

/// Bytes one stashed entry takes: its keys and values plus the map's own bookkeeping.
fn size_of(headers: &[HeaderPair]) -> usize {
    64 + headers.iter().map(|(k, v)| 32 + k.len() + v.as_ref().map_or(0, Bytes::len)).sum::<usize>()
}

impl HeaderStash {
    /// A stash holding at most `budget` bytes of headers.
    pub fn with_budget(budget: usize) -> Self {
        Self { inner: Arc::default(), budget, evicted: Arc::default() }
    }

    /// Remembers the headers of the message at `position`; drops the oldest entries when the
    /// budget is exceeded.
    pub fn put(&self, position: SourcePosition, headers: Vec<HeaderPair>) {
        let Ok(mut m) = self.inner.lock() else { return };
        m.bytes = m.bytes.saturating_add(size_of(&headers));
        if let Some(old) = m.by_position.insert((position.partition, position.offset), headers) {
            m.bytes = m.bytes.saturating_sub(size_of(&old));
        }
        while m.bytes > self.budget {
            let Some((_, old)) = m.by_position.pop_first() else { break };
            m.bytes = m.bytes.saturating_sub(size_of(&old));
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The headers of the message at `position`, if it had any (they stay stashed: a replay in
    /// the same process may dead-letter it again).
    pub fn get(&self, position: SourcePosition) -> Option<Vec<HeaderPair>> {
        self.inner.lock().ok()?.by_position.get(&(position.partition, position.offset)).cloned()
    }

    /// Forgets headers below `offsets` (per partition: the next offset a checkpoint resumes at).
    pub fn forget_before(&self, offsets: &BTreeMap<PartitionId, u64>) {
        self.forget(|p, o| offsets.get(&p).is_some_and(|next| o < *next));
    }

    /// Forgets every header of `partitions` (they left this instance).
    pub fn forget_partitions(&self, partitions: &[PartitionId]) {
        self.forget(|p, _| partitions.contains(&p));
    }

    fn forget(&self, doomed: impl Fn(PartitionId, u64) -> bool) {
        if let Ok(mut m) = self.inner.lock() {
            let mut freed = 0usize;
            m.by_position.retain(|(p, o), h| {
                let go = doomed(*p, *o);
                if go {
                    freed += size_of(h);
                }
                !go
            });
            m.bytes = m.bytes.saturating_sub(freed);
        }
    }

    /// Messages whose headers are stashed.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |m| m.by_position.len())
    }

    /// True when nothing is stashed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the stashed headers take (approximately).
    pub fn bytes(&self) -> usize {
        self.inner.lock().map_or(0, |m| m.bytes)
    }

    /// Entries dropped to stay within the budget.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_kept_until_a_checkpoint_covers_them() {
        let s = HeaderStash::default();
        s.put(SourcePosition::new(0, 5), vec![("trace".into(), Some(Bytes::from("abc")))]);
        s.put(SourcePosition::new(1, 2), vec![("k".into(), None)]);
        assert_eq!(s.get(SourcePosition::new(0, 5)).map(|h| h.len()), Some(1));
        assert_eq!(s.get(SourcePosition::new(0, 6)), None);
        s.forget_before(&[(0, 6)].into());
        assert_eq!(s.get(SourcePosition::new(0, 5)), None, "covered by the checkpoint");
        assert!(s.get(SourcePosition::new(1, 2)).is_some(), "other partitions untouched");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn the_stash_stays_within_its_budget_without_checkpoints() {
        let s = HeaderStash::with_budget(10_000);
        let value = Bytes::from(vec![b'x'; 100]);
        for o in 0..10_000u64 {
            s.put(SourcePosition::new(0, o), vec![("trace".into(), Some(value.clone()))]);
        }
        assert!(s.bytes() <= 10_000, "{} bytes stashed", s.bytes());
        assert!(s.evicted() > 9_000, "the oldest entries went: {}", s.evicted());
        assert!(s.get(SourcePosition::new(0, 9_999)).is_some(), "the newest entry stays");
        assert!(s.get(SourcePosition::new(0, 0)).is_none(), "the oldest entry went");
    }

    #[test]
    fn a_partition_that_leaves_takes_its_headers_with_it() {
        let s = HeaderStash::default();
        s.put(SourcePosition::new(0, 1), vec![("a".into(), None)]);
        s.put(SourcePosition::new(1, 1), vec![("b".into(), None)]);
        s.forget_partitions(&[1]);
        assert!(s.get(SourcePosition::new(1, 1)).is_none());
        assert!(s.get(SourcePosition::new(0, 1)).is_some());
        assert!(s.bytes() > 0 && s.bytes() < 200, "{}", s.bytes());
    }
}
