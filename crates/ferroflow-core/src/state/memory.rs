//! The in-memory state backend: ordered maps, snapshots as one checksummed file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::{PrefixIter, StateBackend};
use crate::error::StateError;

/// Name of the snapshot file inside a snapshot directory.
const SNAPSHOT_FILE: &str = "memory-state.bin";
/// Identifies the file and its format version.
const MAGIC: &[u8; 8] = b"FFMEM001";

type Namespace = BTreeMap<Vec<u8>, Vec<u8>>;

/// State held in ordered in-memory maps, one per namespace.
///
/// Snapshots are a single file: a magic/version header, the contents encoded with `postcard`, and a
/// CRC32 of the contents, so a truncated or corrupt snapshot is detected on restore.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryStateBackend {
    namespaces: BTreeMap<String, Namespace>,
}

impl MemoryStateBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys across namespaces.
    pub fn len(&self) -> usize {
        self.namespaces.values().map(BTreeMap::len).sum()
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn range_of<'a>(ns: &'a Namespace, prefix: &[u8]) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> + 'a {
    use std::ops::Bound;
    let start = Bound::Included(prefix.to_vec());
    let end = match prefix_end(prefix) {
        Some(e) => Bound::Excluded(e),
        None => Bound::Unbounded,
    };
    ns.range::<Vec<u8>, _>((start, end))
}

impl StateBackend for MemoryStateBackend {
    fn namespaces(&self) -> Result<Vec<String>, StateError> {
        Ok(self.namespaces.keys().cloned().collect())
    }

    fn open_scratch(&self, _dir: &Path) -> Result<Box<dyn StateBackend>, StateError> {
        Ok(Box::new(MemoryStateBackend::new()))
    }

    fn clear(&mut self) -> Result<(), StateError> {
        self.namespaces.clear();
        Ok(())
    }

    fn stats(&self) -> super::StateStats {
        let maps = self.namespaces.values();
        super::StateStats {
            keys: self.len() as u64,
            live_bytes: maps.flat_map(|m| m.iter()).map(|(k, v)| (k.len() + v.len()) as u64).sum(),
            memtable_bytes: 0,
            block_cache_bytes: 0,
        }
    }

    fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.namespaces.get(ns).and_then(|m| m.get(key)).cloned())
    }

    fn put(&mut self, ns: &str, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.namespaces.entry(ns.to_owned()).or_default().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, ns: &str, key: &[u8]) -> Result<(), StateError> {
        if let Some(m) = self.namespaces.get_mut(ns) {
            m.remove(key);
        }
        Ok(())
    }

    fn delete_prefix(&mut self, ns: &str, prefix: &[u8]) -> Result<(), StateError> {
        if let Some(m) = self.namespaces.get_mut(ns) {
            let doomed: Vec<Vec<u8>> = range_of(m, prefix).map(|(k, _)| k.clone()).collect();
            for k in doomed {
                m.remove(&k);
            }
        }
        Ok(())
    }

    fn scan_prefix<'a>(&'a self, ns: &str, prefix: &[u8]) -> Result<PrefixIter<'a>, StateError> {
        match self.namespaces.get(ns) {
            Some(m) => Ok(Box::new(range_of(m, prefix).map(|(k, v)| Ok((k.clone(), v.clone()))))),
            None => Ok(Box::new(std::iter::empty())),
        }
    }

    fn snapshot(&mut self, dir: &Path) -> Result<(), StateError> {
        std::fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
        let body = postcard::to_stdvec(&self.namespaces)
            .map_err(|e| StateError::Backend(format!("cannot encode memory state: {e}")))?;
        let path = dir.join(SNAPSHOT_FILE);
        let mut file = std::fs::File::create(&path).map_err(|e| StateError::io(&path, e))?;
        let crc = crc32fast::hash(&body);
        file.write_all(MAGIC)
            .and_then(|_| file.write_all(&body))
            .and_then(|_| file.write_all(&crc.to_le_bytes()))
            .and_then(|_| file.sync_all())
            .map_err(|e| StateError::io(&path, e))
    }

    fn restore(&mut self, dir: &Path) -> Result<(), StateError> {
        let path = dir.join(SNAPSHOT_FILE);
        let bytes = std::fs::read(&path).map_err(|e| StateError::io(&path, e))?;
        let corrupt = |what: &str| StateError::Corrupt { what: format!("{}: {what}", path.display()) };
        if bytes.len() < MAGIC.len() + 4 {
            return Err(corrupt("file too short"));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("not a memory-state snapshot of a supported version"));
        }
        let (body, crc_bytes) = bytes[MAGIC.len()..].split_at(bytes.len() - MAGIC.len() - 4);
        let mut crc = [0u8; 4];
        crc.copy_from_slice(crc_bytes);
        if crc32fast::hash(body) != u32::from_le_bytes(crc) {
            return Err(corrupt("checksum mismatch"));
        }
        self.namespaces = postcard::from_bytes(body).map_err(|e| corrupt(&e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_scan_respects_bounds_and_namespaces() -> Result<(), StateError> {
        let mut s = MemoryStateBackend::new();
        s.put("a", &[1, 255], b"x")?;
        s.put("a", &[1, 255, 0], b"y")?;
        s.put("a", &[2], b"z")?;
        s.put("b", &[1, 0], b"other")?;
        let got: Vec<_> = s.scan_prefix("a", &[1, 255])?.collect::<Result<_, _>>()?;
        assert_eq!(got.len(), 2);
        s.delete_prefix("a", &[1])?;
        assert_eq!(s.get("a", &[2])?, Some(b"z".to_vec()));
        assert_eq!(s.get("a", &[1, 255])?, None);
        assert_eq!(s.get("b", &[1, 0])?, Some(b"other".to_vec()));
        Ok(())
    }

    #[test]
    fn snapshot_round_trips_and_detects_corruption() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut s = MemoryStateBackend::new();
        s.put("w", b"k", b"v")?;
        s.snapshot(dir.path())?;
        let mut r = MemoryStateBackend::new();
        r.restore(dir.path())?;
        assert_eq!(r, s);

        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path)?;
        let n = bytes.len();
        bytes[n - 6] ^= 0xff;
        std::fs::write(&path, &bytes)?;
        let err = MemoryStateBackend::new().restore(dir.path());
        assert!(matches!(err, Err(StateError::Corrupt { .. })), "{err:?}");
        Ok(())
    }
}
