//! The bytes the records of the current batch were read from, so that any step that refuses a
//! record can put them in its dead letter without the record (or the user's type) carrying them.

use ahash::AHashMap;
use bytes::Bytes;

use crate::record::SourcePosition;

/// Below this many entries a lookup scans; above, the first lookup builds an index.
const SCAN_LIMIT: usize = 16;

/// The current batch's source bytes by position. Dead letters are rare, so nothing is indexed
/// until the first lookup of a batch.
/// A batch's source bytes; shared, so that worker threads running parts of one batch each look
/// up their records' bytes without copying the list.
pub(crate) type SharedOriginals = std::sync::Arc<Vec<(SourcePosition, Bytes)>>;

#[derive(Debug, Default)]
pub(crate) struct Originals {
    entries: SharedOriginals,
    index: Option<AHashMap<SourcePosition, usize>>,
}

impl Originals {
    /// Holds `entries` for the batch about to run (the previous batch's are dropped).
    pub(crate) fn set(&mut self, entries: Vec<(SourcePosition, Bytes)>) {
        self.set_shared(std::sync::Arc::new(entries));
    }

    /// Holds `entries`, shared with other parts of the same batch.
    pub(crate) fn set_shared(&mut self, entries: SharedOriginals) {
        self.entries = entries;
        self.index = None;
    }

    /// The batch's bytes, shared.
    pub(crate) fn shared(&self) -> SharedOriginals {
        std::sync::Arc::clone(&self.entries)
    }

    /// Drops the batch's bytes.
    pub(crate) fn clear(&mut self) {
        if !self.entries.is_empty() {
            self.entries = SharedOriginals::default();
        }
        self.index = None;
    }

    /// The bytes read at `position`, or empty bytes when the source gave none.
    pub(crate) fn get(&mut self, position: SourcePosition) -> Bytes {
        if self.entries.len() <= SCAN_LIMIT {
            return self
                .entries
                .iter()
                .find(|(p, _)| *p == position)
                .map(|(_, b)| b.clone())
                .unwrap_or_default();
        }
        let entries = &self.entries;
        let index =
            self.index.get_or_insert_with(|| entries.iter().enumerate().map(|(i, (p, _))| (*p, i)).collect());
        index.get(&position).and_then(|&i| self.entries.get(i)).map(|(_, b)| b.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bytes_by_position_with_and_without_an_index() {
        for n in [3u64, 100] {
            let mut o = Originals::default();
            o.set(
                (0..n)
                    .map(|i| (SourcePosition::new((i % 2) as u32, i), Bytes::from(format!("r{i}"))))
                    .collect(),
            );
            let last = SourcePosition::new(((n - 1) % 2) as u32, n - 1);
            assert_eq!(o.get(last), Bytes::from(format!("r{}", n - 1)));
            assert_eq!(o.get(SourcePosition::new(0, 1)), Bytes::new(), "position 1 is on partition 1");
            o.clear();
            assert_eq!(o.get(SourcePosition::new(0, 0)), Bytes::new());
        }
    }
}
