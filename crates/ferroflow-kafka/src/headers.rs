//! Original message headers, kept for the dead-letter topic.
//!
//! Records carry only their value; the headers of messages that have any are stashed here by
//! source position when they are read, taken by the dead-letter producer when one of them is
//! dead-lettered (so the envelope on the dead-letter topic keeps the original headers), and
//! forgotten once a checkpoint covers their offsets (every dead letter before a checkpoint has
//! been produced by then). Messages without headers cost nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferroflow_core::{PartitionId, SourcePosition};

/// One header: key and value (`None` for a null value).
pub type HeaderPair = (String, Option<Bytes>);

/// Stashed headers by (partition, offset).
type ByPosition = BTreeMap<(PartitionId, u64), Vec<HeaderPair>>;

/// Headers of messages read but not yet covered by a checkpoint, by source position.
#[derive(Debug, Clone, Default)]
pub struct HeaderStash {
    inner: Arc<Mutex<ByPosition>>,
}

impl HeaderStash {
    /// Remembers the headers of the message at `position`.
    pub fn put(&self, position: SourcePosition, headers: Vec<HeaderPair>) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert((position.partition, position.offset), headers);
        }
    }

    /// The headers of the message at `position`, if it had any (they stay stashed: a replay in
    /// the same process may dead-letter it again).
    pub fn get(&self, position: SourcePosition) -> Option<Vec<HeaderPair>> {
        self.inner.lock().ok()?.get(&(position.partition, position.offset)).cloned()
    }

    /// Forgets headers below `offsets` (per partition: the next offset a checkpoint resumes at).
    pub fn forget_before(&self, offsets: &BTreeMap<PartitionId, u64>) {
        if let Ok(mut m) = self.inner.lock() {
            m.retain(|(p, o), _| offsets.get(p).is_none_or(|next| o >= next));
        }
    }

    /// Messages whose headers are stashed.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |m| m.len())
    }

    /// True when nothing is stashed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
}
