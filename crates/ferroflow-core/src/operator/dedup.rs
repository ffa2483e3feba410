//! Drops records whose key was already seen within a time-to-live of event time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::hash_map::Entry;
use std::marker::PhantomData;
use std::time::Duration;

use ahash::AHashMap;

use super::{Context, Operator};
use crate::error::StateError;
use crate::record::{Record, Timestamp};
use crate::state::StateBackend;
use crate::time::Watermark;

/// 128-bit hash of a dedup key: what the operator remembers instead of the key itself.
type IdHash = u128;

/// What is remembered about one id.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The latest event time at which the id was seen.
    at: Timestamp,
    /// Changed since the last snapshot (listed in `Dedup::unsaved`).
    unsaved: bool,
    /// The state backend holds a row for this id (so evicting it must delete that row).
    persisted: bool,
}

/// Drops records whose dedup key was already seen within `ttl` of event time; every dropped record
/// is counted as deduplicated ([`Context::count_deduplicated`]).
///
/// - **Memory:** an id seen at event time `t` is remembered until the watermark reaches `t + ttl`
///   (`t` being the latest event time at which it was seen, duplicates included). Any record that
///   is still on time at that point is more than `ttl` after the sighting, so the id is not needed
///   any more. While it is remembered, a copy is a duplicate whatever its event time, also an older
///   one. A new id whose `t + ttl` the watermark has already reached passes and is not remembered.
/// - **Keys** are reduced to a 128-bit XXH3 hash, stable across processes, platforms and restarts;
///   nothing is allocated per record. Two distinct keys colliding is astronomically unlikely
///   (about 2⁻⁶⁴ even for billions of ids remembered at once).
/// - **Event time** must be set before this step (after `assign_timestamps`).
/// - **State** lives in namespace `dedup/<name>`. A snapshot writes only the ids added or updated
///   since the previous one and deletes the evicted ones, so a checkpoint does not rewrite every id;
///   a restored operator behaves exactly like an uninterrupted one.
///
/// The key function returns a borrow of the payload (`&str`, `&[u8]`, `&String`, `&Bytes`, …);
/// to deduplicate on a key built from several fields, build it in an earlier step.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use ferroflow_core::operator::Dedup;
/// use ferroflow_core::time::Watermark;
/// use ferroflow_core::{Context, Operator, Record};
///
/// let mut op = Dedup::new("ids", Duration::from_secs(60), |id: &String| id.as_str());
/// let mut ctx = Context::default();
/// let mut out = Vec::new();
/// let mut batch = vec![
///     Record::new("a".to_string(), 1_000),
///     Record::new("a".to_string(), 2_000), // a retry: dropped
///     Record::new("b".to_string(), 2_000),
/// ];
/// op.process_batch(&mut batch, &mut ctx, &mut out);
/// assert_eq!(out.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>(), ["a", "b"]);
/// assert_eq!(ctx.counters_mut().records_deduplicated, 1);
///
/// // Once the watermark reaches 2 s + 60 s, "a" is forgotten and passes again.
/// op.on_watermark(Watermark(62_000), &mut ctx, &mut out);
/// out.clear();
/// op.process_batch(&mut vec![Record::new("a".to_string(), 70_000)], &mut ctx, &mut out);
/// assert_eq!(out.len(), 1);
/// ```
pub struct Dedup<T, F, K: ?Sized> {
    ns: String,
    ttl_ms: i64,
    key_fn: F,
    watermark: Timestamp,
    seen: AHashMap<IdHash, Seen>,
    /// Every sighting that extended an id's memory, earliest first: eviction pops from the top.
    /// `(t, h)` with `seen[h].at == t` is the id's live entry; any other is stale (the id was seen
    /// again later, or already evicted) and is skipped when popped. A heap rather than an ordered
    /// set: event times mostly grow, so a push rarely moves, and a re-sighting leaves the old entry
    /// where it is instead of looking it up.
    by_time: BinaryHeap<Reverse<(Timestamp, IdHash)>>,
    /// Ids added or updated since the last snapshot, noted once the operator is checkpointed
    /// (without checkpoints the list would only grow, an entry per new id).
    unsaved: Vec<IdHash>,
    tracking: bool,
    /// Persisted ids evicted since the last snapshot (their rows must be deleted).
    evicted: Vec<IdHash>,
    _t: PhantomData<fn(&T, &K)>,
}

impl<T, F, K> Dedup<T, F, K>
where
    K: AsRef<[u8]> + ?Sized,
    F: for<'a> FnMut(&'a T) -> &'a K,
{
    /// Drops records whose `key_fn(payload)` was seen within `ttl` of event time (millisecond
    /// precision; a `ttl` beyond `i64::MAX` ms is capped). `name` must be unique among the job's
    /// dedup steps and stable across upgrades: the state namespace is `dedup/<name>`.
    pub fn new(name: impl AsRef<str>, ttl: Duration, key_fn: F) -> Self {
        Self {
            ns: format!("dedup/{}", name.as_ref()),
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            key_fn,
            watermark: i64::MIN,
            seen: AHashMap::new(),
            by_time: BinaryHeap::new(),
            unsaved: Vec::new(),
            tracking: false,
            evicted: Vec::new(),
            _t: PhantomData,
        }
    }
}

impl<T, F, K: ?Sized> Dedup<T, F, K> {
    /// The state namespace, `dedup/<name>`.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The id (`name`) the state is kept under.
    pub fn id(&self) -> &str {
        self.ns.strip_prefix("dedup/").unwrap_or(&self.ns)
    }

    /// The time-to-live in milliseconds.
    pub fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    /// Number of ids currently remembered.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// The last watermark this operator saw.
    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }

    fn mark_unsaved(unsaved: &mut Vec<IdHash>, tracking: bool, h: IdHash, s: &mut Seen) {
        if tracking && !s.unsaved {
            s.unsaved = true;
            unsaved.push(h);
        }
    }
}

impl<T, F, K: ?Sized> std::fmt::Debug for Dedup<T, F, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("ns", &self.ns)
            .field("ttl_ms", &self.ttl_ms)
            .field("watermark", &self.watermark)
            .field("remembered", &self.seen.len())
            .finish_non_exhaustive()
    }
}

/// The hash a dedup key is remembered by. XXH3 is specified and seedless here, so the value is the
/// same in every process and on every platform: state restored elsewhere still matches.
#[inline]
fn id_hash(key: &[u8]) -> IdHash {
    xxhash_rust::xxh3::xxh3_128(key)
}

impl<T, F, K> super::StatefulOperator for Dedup<T, F, K>
where
    T: Send + 'static,
    K: AsRef<[u8]> + ?Sized + 'static,
    F: for<'a> FnMut(&'a T) -> &'a K + Send + 'static,
{
    fn set_id(&mut self, id: String) {
        self.ns = format!("dedup/{id}");
    }
}

impl<T, F, K> Operator for Dedup<T, F, K>
where
    T: Send + 'static,
    K: AsRef<[u8]> + ?Sized + 'static,
    F: for<'a> FnMut(&'a T) -> &'a K + Send + 'static,
{
    type In = T;
    type Out = T;

    #[inline]
    fn process_batch(&mut self, input: &mut Vec<Record<T>>, ctx: &mut Context, out: &mut Vec<Record<T>>) {
        let mut dropped = 0u64;
        for r in input.drain(..) {
            let h = id_hash((self.key_fn)(&r.payload).as_ref());
            let t = r.event_time;
            match self.seen.entry(h) {
                Entry::Occupied(mut e) => {
                    dropped += 1;
                    let s = e.get_mut();
                    if t > s.at {
                        // Seen again later: remembered for `ttl` from this sighting.
                        self.by_time.push(Reverse((t, h)));
                        s.at = t;
                        Self::mark_unsaved(&mut self.unsaved, self.tracking, h, s);
                    }
                }
                Entry::Vacant(e) => {
                    // Already past its memory: remembering it would only last until the next
                    // watermark, and would make the outcome depend on when that comes.
                    if t.saturating_add(self.ttl_ms) > self.watermark {
                        e.insert(Seen { at: t, unsaved: self.tracking, persisted: false });
                        self.by_time.push(Reverse((t, h)));
                        if self.tracking {
                            self.unsaved.push(h);
                        }
                    }
                    out.push(r);
                }
            }
        }
        ctx.count_deduplicated(dropped);
        // An id seen again and again before the watermark moves leaves one stale entry per
        // sighting: rebuild from the live entries once stale ones outnumber them, so the heap stays
        // within twice the remembered ids (amortised: a rebuild follows at least as many pushes).
        if self.by_time.len() > 2 * self.seen.len() + STALE_SLACK {
            self.by_time = self.seen.iter().map(|(h, s)| Reverse((s.at, *h))).collect();
        }
    }

    fn on_watermark(&mut self, watermark: Watermark, _ctx: &mut Context, _out: &mut Vec<Record<T>>) {
        if watermark.0 <= self.watermark {
            return;
        }
        self.watermark = watermark.0;
        while let Some(&Reverse((t, h))) = self.by_time.peek() {
            if t.saturating_add(self.ttl_ms) > watermark.0 {
                break;
            }
            self.by_time.pop();
            if let Entry::Occupied(e) = self.seen.entry(h)
                && e.get().at == t
                && e.remove().persisted
            {
                self.evicted.push(h);
            }
        }
    }

    /// Writes what changed since the last snapshot: evicted ids are deleted, added or updated ones
    /// written; the rest of the state is not touched.
    fn snapshot_state(&mut self, state: &mut dyn StateBackend) -> Result<(), StateError> {
        state.put(&self.ns, META_KEY, &self.watermark.to_be_bytes())?;
        let mut key = [0u8; 17];
        key[0] = ENTRY_TAG;
        if !self.tracking {
            // The first snapshot writes every id. It removes no rows: the backend starts empty or
            // restored (which starts the noting).
            self.evicted.clear();
            self.unsaved = self.seen.keys().copied().collect();
            self.tracking = true;
        }
        // Deletes first: an id evicted and seen again since the last snapshot is written below.
        for h in self.evicted.drain(..) {
            key[1..].copy_from_slice(&h.to_be_bytes());
            state.delete(&self.ns, &key)?;
        }
        for h in self.unsaved.drain(..) {
            // Ids added and evicted again in between are gone from `seen`: nothing to write.
            if let Some(s) = self.seen.get_mut(&h) {
                key[1..].copy_from_slice(&h.to_be_bytes());
                state.put(&self.ns, &key, &s.at.to_be_bytes())?;
                s.unsaved = false;
                s.persisted = true;
            }
        }
        Ok(())
    }

    fn restore_state(&mut self, state: &dyn StateBackend) -> Result<(), StateError> {
        self.seen.clear();
        self.by_time.clear();
        self.unsaved.clear();
        self.evicted.clear();
        self.tracking = true;
        self.watermark = match state.get(&self.ns, META_KEY)? {
            Some(b) => i64::from_be_bytes(
                b.as_slice().try_into().map_err(|_| corrupt("dedup watermark has the wrong length"))?,
            ),
            None => i64::MIN,
        };
        let mut restored = Vec::new();
        for kv in state.scan_prefix(&self.ns, &[ENTRY_TAG])? {
            let (k, v) = kv?;
            let h = k
                .get(1..)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(u128::from_be_bytes)
                .ok_or_else(|| corrupt("dedup entry key is not 17 bytes"))?;
            let at = <[u8; 8]>::try_from(v.as_slice())
                .map(i64::from_be_bytes)
                .map_err(|_| corrupt("dedup entry value is not 8 bytes"))?;
            self.seen.insert(h, Seen { at, unsaved: false, persisted: true });
            restored.push(Reverse((at, h)));
        }
        self.by_time = BinaryHeap::from(restored);
        Ok(())
    }

    fn state_ids(&self, ids: &mut Vec<String>) {
        ids.push(self.id().to_owned());
    }

    /// Its state is per dedup key, not per record key: copies split by record key would each
    /// see only some of an id's records.
    fn splits_by_key(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "dedup"
    }
}

/// The watermark, so records already past their memory are treated the same after a restore.
const META_KEY: &[u8] = b"\x00meta";
/// Entries: the tag, then the id hash (16 bytes, big-endian); the value is the event time at which
/// the id was last seen (8 bytes, big-endian).
const ENTRY_TAG: u8 = 1;
/// Stale eviction entries tolerated beyond twice the remembered ids before the heap is rebuilt
/// (keeps small operators from rebuilding on every batch).
const STALE_SLACK: usize = 1024;

fn corrupt(what: &str) -> StateError {
    StateError::Corrupt { what: what.to_owned() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::state::MemoryStateBackend;

    type Ev = (&'static str, i64);
    type IdFn = for<'a> fn(&'a Ev) -> &'a str;
    type Op = Dedup<Ev, IdFn, str>;

    fn id_of(e: &Ev) -> &str {
        e.0
    }

    fn op(ttl_ms: u64) -> Op {
        Dedup::new("t", Duration::from_millis(ttl_ms), id_of as IdFn)
    }

    /// Runs one batch; returns the ids that passed.
    fn run(op: &mut Op, ctx: &mut Context, events: &[(&'static str, i64)]) -> Vec<(&'static str, i64)> {
        let mut input: Vec<_> = events.iter().map(|e| Record::new(*e, e.1)).collect();
        let mut out = Vec::new();
        op.process_batch(&mut input, ctx, &mut out);
        assert!(input.is_empty(), "input drained");
        out.into_iter().map(|r| r.payload).collect()
    }

    fn wm(op: &mut Op, ctx: &mut Context, w: i64) {
        let mut out = Vec::new();
        op.on_watermark(Watermark(w), ctx, &mut out);
        assert!(out.is_empty(), "dedup emits nothing on watermarks");
    }

    #[test]
    fn duplicate_within_ttl_is_dropped_and_counted() {
        let mut d = op(1_000);
        let mut ctx = Context::default();
        let passed = run(&mut d, &mut ctx, &[("a", 100), ("b", 100), ("a", 900), ("a", 50)]);
        assert_eq!(passed, vec![("a", 100), ("b", 100)]);
        assert_eq!(ctx.counters.records_deduplicated, 2, "the later and the older copy are duplicates");
        let passed = run(&mut d, &mut ctx, &[("b", 1_050), ("c", 1_050)]);
        assert_eq!(passed, vec![("c", 1_050)], "duplicates across batches too");
        assert_eq!(ctx.counters.records_deduplicated, 3);
        assert_eq!(ctx.counters.records_filtered, 0, "duplicates are not counted as filtered");
    }

    #[test]
    fn id_is_forgotten_once_the_watermark_reaches_last_sighting_plus_ttl() {
        let mut d = op(1_000);
        let mut ctx = Context::default();
        run(&mut d, &mut ctx, &[("a", 100), ("a", 400)]);
        wm(&mut d, &mut ctx, 1_399);
        assert_eq!(d.remembered(), 1, "seen again at 400: remembered until 1400");
        assert!(run(&mut d, &mut ctx, &[("a", 1_390)]).is_empty(), "still a duplicate");
        // The drop at 1390 extended the memory to 2390.
        wm(&mut d, &mut ctx, 2_389);
        assert_eq!(d.remembered(), 1);
        wm(&mut d, &mut ctx, 2_390);
        assert_eq!(d.remembered(), 0, "forgotten at last sighting + ttl");
        assert_eq!(run(&mut d, &mut ctx, &[("a", 2_500)]), vec![("a", 2_500)], "passes again");
        assert_eq!(ctx.counters.records_deduplicated, 2);
    }

    #[test]
    fn older_copy_stays_a_duplicate_while_remembered() {
        let mut d = op(100);
        let mut ctx = Context::default();
        run(&mut d, &mut ctx, &[("a", 10_000)]);
        wm(&mut d, &mut ctx, 9_000);
        assert!(run(&mut d, &mut ctx, &[("a", 1)]).is_empty(), "far older copy is still a duplicate");
        assert_eq!(d.remembered(), 1);
        wm(&mut d, &mut ctx, 10_100);
        assert_eq!(d.remembered(), 0, "the older copy did not change when it is forgotten");
    }

    #[test]
    fn repeated_sightings_keep_the_eviction_heap_bounded() {
        let mut d = op(1_000_000);
        let mut ctx = Context::default();
        for t in 1..=20_000 {
            run(&mut d, &mut ctx, &[("a", t), ("b", t)]);
        }
        assert_eq!(d.remembered(), 2);
        assert!(
            d.by_time.len() <= 2 * 2 + STALE_SLACK + 2,
            "heap holds {} entries for 2 ids",
            d.by_time.len()
        );
        wm(&mut d, &mut ctx, 1_019_999);
        assert_eq!(d.remembered(), 2, "last seen at 20000: remembered until 1020000");
        wm(&mut d, &mut ctx, 1_020_000);
        assert_eq!(d.remembered(), 0);
        assert!(d.by_time.is_empty());
    }

    #[test]
    fn new_id_already_past_its_memory_passes_without_being_remembered() {
        let mut d = op(100);
        let mut ctx = Context::default();
        wm(&mut d, &mut ctx, 1_000);
        let passed = run(&mut d, &mut ctx, &[("a", 900), ("a", 900), ("b", 901), ("b", 901)]);
        assert_eq!(passed, vec![("a", 900), ("a", 900), ("b", 901)], "900 + 100 <= 1000; 901 + 100 > 1000");
        assert_eq!(d.remembered(), 1);
    }

    #[test]
    fn snapshot_writes_only_changes_and_deletes_evicted_ids() {
        let mut d = op(100);
        let mut ctx = Context::default();
        let mut state = MemoryStateBackend::new();
        run(&mut d, &mut ctx, &[("a", 0), ("b", 50)]);
        d.snapshot_state(&mut state).unwrap();
        assert_eq!(state.scan_prefix("dedup/t", &[ENTRY_TAG]).unwrap().count(), 2);

        // A backend that records writes: only the change since the last snapshot is written.
        run(&mut d, &mut ctx, &[("c", 60), ("a", 0)]);
        wm(&mut d, &mut ctx, 100);
        let mut probe = Probe::default();
        d.snapshot_state(&mut probe).unwrap();
        assert_eq!(probe.puts, 2, "the watermark and c; a's copy at the same time changed nothing");
        assert_eq!(probe.deletes, 1, "a was evicted at 0 + 100");

        let mut again = Probe::default();
        d.snapshot_state(&mut again).unwrap();
        assert_eq!((again.puts, again.deletes), (1, 0), "nothing changed: only the watermark");
    }

    #[test]
    fn without_checkpoints_no_change_list_grows() {
        let mut d = op(100);
        let mut ctx = Context::default();
        let ids: Vec<(&'static str, i64)> =
            (0..1_000).map(|i| (&*Box::leak(format!("id-{i}").into_boxed_str()), 10)).collect();
        run(&mut d, &mut ctx, &ids);
        assert_eq!(d.unsaved.len(), 0, "nothing would ever read it");
        // The first snapshot writes every id all the same.
        let mut state = MemoryStateBackend::new();
        d.snapshot_state(&mut state).unwrap();
        assert_eq!(state.scan_prefix("dedup/t", &[ENTRY_TAG]).unwrap().count(), 1_000);
        run(&mut d, &mut ctx, &[("new", 20)]);
        assert_eq!(d.unsaved.len(), 1, "noted once checkpointed");
    }

    #[test]
    fn restored_operator_continues_like_the_original() {
        let mut d = op(100);
        let mut ctx = Context::default();
        let mut state = MemoryStateBackend::new();
        run(&mut d, &mut ctx, &[("a", 0), ("b", 50)]);
        d.snapshot_state(&mut state).unwrap();
        run(&mut d, &mut ctx, &[("c", 60)]);
        wm(&mut d, &mut ctx, 100);
        d.snapshot_state(&mut state).unwrap();

        let mut r = op(100);
        r.restore_state(&state).unwrap();
        assert_eq!((r.remembered(), r.watermark()), (2, 100), "b and c; a evicted");
        for d in [&mut d, &mut r] {
            let mut ctx = Context::default();
            let passed = run(d, &mut ctx, &[("a", 120), ("b", 120), ("c", 120), ("z", 0)]);
            assert_eq!(passed, vec![("a", 120), ("z", 0)]);
        }
    }

    #[test]
    fn corrupt_entry_is_a_corrupt_state_error() {
        let mut state = MemoryStateBackend::new();
        state.put("dedup/t", &[ENTRY_TAG, 1, 2], &[0; 8]).unwrap();
        let err = op(1).restore_state(&state).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn key_hash_is_stable() {
        // Persisted state depends on this value: it must never change.
        assert_eq!(id_hash(b"event-1"), xxhash_rust::xxh3::xxh3_128(b"event-1"));
        assert_eq!(id_hash(b"event-1"), 0x8d1b_58c2_7df8_3bf1_d7bf_f319_1c74_e56b_u128);
    }

    /// Counts writes, stores nothing.
    #[derive(Debug, Default)]
    struct Probe {
        puts: usize,
        deletes: usize,
    }

    impl StateBackend for Probe {
        fn get(&self, _: &str, _: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
            Ok(None)
        }
        fn put(&mut self, _: &str, _: &[u8], _: &[u8]) -> Result<(), StateError> {
            self.puts += 1;
            Ok(())
        }
        fn delete(&mut self, _: &str, _: &[u8]) -> Result<(), StateError> {
            self.deletes += 1;
            Ok(())
        }
        fn delete_prefix(&mut self, _: &str, _: &[u8]) -> Result<(), StateError> {
            Ok(())
        }
        fn scan_prefix<'a>(&'a self, _: &str, _: &[u8]) -> Result<crate::state::PrefixIter<'a>, StateError> {
            Ok(Box::new(std::iter::empty()))
        }
        fn snapshot(&mut self, _: &std::path::Path) -> Result<(), StateError> {
            Ok(())
        }
        fn restore(&mut self, _: &std::path::Path) -> Result<(), StateError> {
            Ok(())
        }
    }
}
