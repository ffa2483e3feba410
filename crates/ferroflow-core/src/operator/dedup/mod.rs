//! Drops records whose key was already seen within a time-to-live of event time.

use std::collections::BTreeSet;
use std::collections::hash_map::Entry;
use std::marker::PhantomData;
use std::time::Duration;

use ahash::AHashMap;

use super::{Context, Operator};
use crate::dead_letter::{DeadLetterReason, Rejection};
use crate::error::StateError;
use crate::record::{Record, Timestamp};
use crate::state::{SpillFailure, StateBackend, StateBudget};
use crate::time::Watermark;

mod by_time;
mod rows;
mod spilled;

use by_time::ByTime;
use rows::{
    BUCKET_TAG, LEGACY_TAG, META_KEY, bucket_end, bucket_prefix, bucket_row, parse_bucket_row,
    parse_legacy_row,
};
use spilled::Spilled;

/// 128-bit hash of a dedup key: what the operator remembers instead of the key itself.
type IdHash = u128;

/// What is remembered about one id in memory.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The latest event time at which the id was seen.
    at: Timestamp,
    /// Changed since the last snapshot (listed in `Dedup::unsaved`).
    unsaved: bool,
}

/// What an id in memory costs, as the budget counts it: three slots of the map (see
/// `keyed_state::tier` for why three) and two entries by time (they grow to twice the ids before
/// they are rebuilt).
const ID_COST: usize = 3 * (std::mem::size_of::<(IdHash, Seen)>() + 1) + 2 * std::mem::size_of::<IdHash>();

/// Ids spilled per write: a write sorts its rows and holds them with the ids, about 100 bytes per
/// id; spilling a tenth of a large budget at once would hold that much again for a moment.
const SPILL_CHUNK: usize = 1 << 16;

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
/// - **State** lives in namespace `dedup/<name>`, in buckets of an eighth of the TTL by sighting
///   time. A snapshot writes only the ids added or seen again since the previous one, and drops
///   the buckets whose every sighting has expired, so a checkpoint does not rewrite every id; a
///   restored operator behaves exactly like an uninterrupted one.
/// - **Under a memory budget** ([`StateBudget`]) the ids seen earliest spill to the budget's store
///   once the process is over it, in generations with a Bloom filter each: a new id, the common
///   case, is answered from the filters without reading the disk. A record whose lookup on disk
///   fails goes to the dead letters, not through.
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
    /// Every sighting that extended an id's memory, in buckets by time: eviction and spilling take
    /// the earliest bucket first. An id whose last sighting is not in the bucket it is found in
    /// (seen again later, evicted or spilled) is skipped there.
    by_time: ByTime,
    /// Ids added or updated since the last snapshot, noted once the operator is checkpointed
    /// (without checkpoints the list would only grow, an entry per new id).
    unsaved: Vec<IdHash>,
    tracking: bool,
    /// The checkpoint's buckets that hold rows, by their last possible sighting.
    buckets: BTreeSet<Timestamp>,
    /// The latest sighting among rows of the first checkpoint format (a row per id, no bucket),
    /// kept until all of them have expired.
    legacy: Option<Timestamp>,
    /// Ids beyond the memory budget, once the step runs under one.
    spilled: Option<Spilled>,
    /// A spill-store failure outside a record: reported to the job at once, and every snapshot
    /// fails until a restore.
    failure: SpillFailure,
    /// Scratch of a batch under a budget: each record's id hash, and what the disk holds of the
    /// ids not in memory.
    hashes: Vec<IdHash>,
    on_disk: AHashMap<IdHash, Result<Option<Timestamp>, String>>,
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
            by_time: ByTime::new(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
            unsaved: Vec::new(),
            tracking: false,
            buckets: BTreeSet::new(),
            legacy: None,
            spilled: None,
            failure: SpillFailure::default(),
            hashes: Vec::new(),
            on_disk: AHashMap::new(),
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

    /// Number of ids held in memory (under a budget, more may have spilled). An id whose memory
    /// ended stays until the rest of its time bucket (a sixty-fourth of the TTL, at most a
    /// minute) ends too, but is not a duplicate any more.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// Rows of spilled ids in the budget's store (0 without a budget; expired ones stay until
    /// their whole generation has expired).
    pub fn spilled(&self) -> usize {
        self.spilled.as_ref().map_or(0, Spilled::rows)
    }

    /// The last watermark this operator saw.
    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }

    /// What the step holds in memory, as the budget counts it.
    fn memory(&self) -> usize {
        let spilled = self.spilled.as_ref().map_or(0, Spilled::filter_bytes);
        self.seen
            .len()
            .saturating_mul(ID_COST)
            .saturating_add(spilled)
            .saturating_add(self.unsaved.len().saturating_mul(std::mem::size_of::<IdHash>()))
    }

    /// Charges the budget for what the step holds, and spills its share of any excess.
    fn settle(&mut self) -> Result<(), StateError> {
        let memory = self.memory();
        let Some(spilled) = &mut self.spilled else { return Ok(()) };
        spilled.charge(memory);
        let want = spilled.to_spill();
        if want == 0 {
            return Ok(());
        }
        self.spill(want.div_ceil(ID_COST))?;
        // A map never gives memory back by itself: once its filters take most of the step's share
        // it holds a few ids in a table sized for millions, memory the budget does not count and
        // a cache miss for every id looked up.
        let len = self.seen.len();
        if self.seen.capacity() > len.max(1 << 12).saturating_mul(4) {
            self.seen.shrink_to(len.saturating_mul(2));
        }
        let memory = self.memory();
        if let Some(spilled) = &mut self.spilled {
            spilled.charge(memory);
        }
        Ok(())
    }

    /// Moves the `n` ids seen earliest from memory to the spill store (those whose memory ended
    /// just go), in chunks of [`SPILL_CHUNK`]: what a write needs besides the ids (their rows,
    /// sorted) stays small however much spills at once. Each chunk's write comes first: a failed
    /// one keeps its ids in memory (earlier chunks are on disk).
    fn spill(&mut self, n: usize) -> Result<(), StateError> {
        let mut left = n;
        while left > 0 {
            let chunk = left.min(SPILL_CHUNK);
            if !self.spill_chunk(chunk)? {
                break;
            }
            left -= chunk;
        }
        Ok(())
    }

    /// Spills up to `n` ids; false when fewer were left in memory.
    fn spill_chunk(&mut self, n: usize) -> Result<bool, StateError> {
        let Some(spilled) = &mut self.spilled else { return Ok(false) };
        let mut taken = Vec::with_capacity(n.min(self.seen.len()));
        while taken.len() < n {
            let Some((start, mut ids)) = self.by_time.pop_first() else { break };
            let end = self.by_time.end(start);
            while taken.len() < n
                && let Some(h) = ids.pop()
            {
                if let Entry::Occupied(e) = self.seen.entry(h)
                    && e.get().at <= end
                {
                    let s = e.remove();
                    if s.at.saturating_add(self.ttl_ms) > self.watermark {
                        taken.push((h, s));
                    }
                }
            }
            self.by_time.put_back_first(start, ids);
        }
        // Ids not yet in a checkpoint are noted in the spill store for the next snapshot.
        let ids: Vec<(IdHash, Timestamp, bool)> = taken.iter().map(|(h, s)| (*h, s.at, s.unsaved)).collect();
        if let Err(e) = spilled.write(&ids, self.ttl_ms) {
            for (h, s) in taken {
                self.by_time.push(s.at, h);
                self.seen.insert(h, s);
            }
            return Err(e);
        }
        Ok(taken.len() == n)
    }

    /// Remembers a sighting read from a checkpoint (an id may have rows in several buckets: the
    /// latest counts).
    fn restore_one(&mut self, h: IdHash, at: Timestamp) -> Result<(), StateError> {
        // Held as long as an uninterrupted run holds it: until its whole time bucket expired.
        if self.by_time.end_of(at).saturating_add(self.ttl_ms) <= self.watermark {
            return Ok(());
        }
        // Spilled meanwhile with the same or a later sighting (rows come in bucket order, which
        // is time order only while the TTL stays the same): memory must not hold an older one.
        if !self.seen.contains_key(&h)
            && let Some(spilled) = &self.spilled
            && spilled.lookup(h)?.is_some_and(|on_disk| on_disk >= at)
        {
            return Ok(());
        }
        match self.seen.entry(h) {
            Entry::Occupied(mut e) => {
                if at > e.get().at {
                    e.get_mut().at = at;
                    self.by_time.push(at, h);
                }
            }
            Entry::Vacant(e) => {
                e.insert(Seen { at, unsaved: false });
                self.by_time.push(at, h);
            }
        }
        Ok(())
    }
}

impl<T, F, K: ?Sized> std::fmt::Debug for Dedup<T, F, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("ns", &self.ns)
            .field("ttl_ms", &self.ttl_ms)
            .field("watermark", &self.watermark)
            .field("remembered", &self.seen.len())
            .field("spilled", &self.spilled())
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
        let mut second_dropped = 0u64;
        let (ttl, watermark, tracking) = (self.ttl_ms, self.watermark, self.tracking);
        // Under a budget, the ids not in memory are looked up on disk first, all in one read
        // (memory cannot lose an id within a batch: spilling and eviction come after it).
        self.hashes.clear();
        self.on_disk.clear();
        if let Some(spilled) = self.spilled.as_ref().filter(|s| s.rows() > 0) {
            for r in input.iter() {
                let h = id_hash((self.key_fn)(&r.payload).as_ref());
                self.hashes.push(h);
            }
            let seen = &self.seen;
            let live = |h: &IdHash| seen.get(h).is_some_and(|s| s.at.saturating_add(ttl) > watermark);
            let mut missing: Vec<IdHash> = self.hashes.iter().copied().filter(|h| !live(h)).collect();
            // An id repeated within the batch is read once.
            missing.sort_unstable();
            missing.dedup();
            spilled.lookup_many(&missing, &mut self.on_disk);
        }
        for (i, r) in input.drain(..).enumerate() {
            let h = match self.hashes.get(i) {
                Some(h) => *h,
                None => id_hash((self.key_fn)(&r.payload).as_ref()),
            };
            let t = r.event_time;
            // In memory and not yet expired (an expired id waits for its bucket to go).
            let in_memory = match self.seen.entry(h) {
                Entry::Occupied(e) if e.get().at.saturating_add(ttl) > watermark => Some(e),
                _ => None,
            };
            if let Some(mut e) = in_memory {
                dropped += 1;
                second_dropped += u64::from(ctx.is_second_input(r.position));
                let s = e.get_mut();
                if t > s.at {
                    // Seen again later: remembered for `ttl` from this sighting.
                    self.by_time.push(t, h);
                    s.at = t;
                    if tracking && !s.unsaved {
                        s.unsaved = true;
                        self.unsaved.push(h);
                    }
                }
                continue;
            }
            // Not in memory: spilled, or new (the filters answer most new ids).
            let found = self.on_disk.get(&h).cloned().unwrap_or(Ok(None));
            let on_disk = match found {
                Ok(found) => found.filter(|at| at.saturating_add(ttl) > watermark),
                Err(err) => {
                    let detail = format!("dedup state of step '{}': {err}", self.ns);
                    let rejection = Rejection::new(DeadLetterReason::ProcessingError, detail);
                    ctx.reject(r.position, Some(t), rejection);
                    continue;
                }
            };
            let remember = match on_disk {
                // Back to memory, as retries of it are likely: with this sighting if it is the
                // latest (to be checkpointed), else with the one on disk (already noted).
                Some(at) => {
                    dropped += 1;
                    second_dropped += u64::from(ctx.is_second_input(r.position));
                    Some((t.max(at), tracking && t > at))
                }
                // Already past its memory: remembering it would only last until the next
                // watermark, and would make the outcome depend on when that comes.
                None => (t.saturating_add(ttl) > watermark).then_some((t, tracking)),
            };
            if let Some((at, unsaved)) = remember {
                self.seen.insert(h, Seen { at, unsaved });
                self.by_time.push(at, h);
                if unsaved {
                    self.unsaved.push(h);
                }
            }
            if on_disk.is_none() {
                out.push(r);
            }
        }
        ctx.count_deduplicated(dropped);
        ctx.count_second_input(|c| &mut c.records_deduplicated, second_dropped);
        // An id seen again and again before the watermark moves leaves one stale entry per
        // sighting: rebuild from the live entries once stale ones outnumber them, so the heap stays
        // within twice the remembered ids (amortised: a rebuild follows at least as many pushes).
        if self.by_time.len() > 2 * self.seen.len() + STALE_SLACK {
            self.by_time.rebuild(self.seen.iter().map(|(h, s)| (s.at, *h)));
        }
        if let Err(e) = self.settle() {
            self.failure.set(e);
        }
        self.failure.report(ctx);
    }

    fn on_watermark(&mut self, watermark: Watermark, ctx: &mut Context, _out: &mut Vec<Record<T>>) {
        if watermark.0 <= self.watermark {
            return;
        }
        self.watermark = watermark.0;
        // Buckets whose every sighting has expired go whole; ids in them seen again later stay.
        while let Some(start) = self.by_time.first_start() {
            let end = self.by_time.end(start);
            if end.saturating_add(self.ttl_ms) > watermark.0 {
                break;
            }
            for h in self.by_time.pop_first().map(|(_, ids)| ids).unwrap_or_default() {
                if let Entry::Occupied(e) = self.seen.entry(h)
                    && e.get().at <= end
                {
                    e.remove();
                }
            }
        }
        let expired = self.spilled.as_mut().map_or(Ok(()), |s| s.expire(watermark.0, self.ttl_ms));
        if let Err(e) = expired.and_then(|()| self.settle()) {
            self.failure.set(e);
        }
        self.failure.report(ctx);
    }

    fn attach_budget(&mut self, budget: &StateBudget) {
        if self.spilled.is_none() {
            self.spilled = Some(Spilled::new(budget.clone()));
        }
    }

    /// Writes what changed since the last snapshot: added or updated ids, and drops the buckets
    /// whose every sighting has expired; the rest of the state is not touched.
    fn snapshot_state(&mut self, state: &mut dyn StateBackend) -> Result<(), StateError> {
        self.failure.check()?;
        let (ns, ttl, watermark) = (&self.ns, self.ttl_ms, self.watermark);
        state.put(ns, META_KEY, &watermark.to_be_bytes())?;
        let expired = |last: Timestamp| last.saturating_add(ttl) <= watermark;
        while let Some(&end) = self.buckets.first()
            && expired(end)
        {
            state.delete_large_prefix(ns, &bucket_prefix(end))?;
            self.buckets.pop_first();
        }
        if self.legacy.is_some_and(expired) {
            state.delete_large_prefix(ns, &[LEGACY_TAG])?;
            self.legacy = None;
        }
        let buckets = &mut self.buckets;
        let mut put = |h: IdHash, at: Timestamp| -> Result<(), StateError> {
            let end = bucket_end(at, ttl);
            buckets.insert(end);
            state.put(ns, &bucket_row(end, h), &at.to_be_bytes())
        };
        if !self.tracking {
            // The first snapshot writes every id, spilled ones included; from then on, changes.
            self.unsaved = self.seen.keys().copied().collect();
            if let Some(s) = &self.spilled {
                s.for_each_live(watermark, ttl, &mut put)?;
            }
            self.tracking = true;
        }
        // Spilled ids first, then memory: where an id's rows meet in one bucket, memory holds its
        // latest sighting, and it is written last.
        if let Some(s) = &mut self.spilled {
            s.drain_pending(&mut |h, at| if expired(at) { Ok(()) } else { put(h, at) })?;
        }
        for h in self.unsaved.drain(..) {
            // Ids added and evicted or spilled again in between are not in `seen`.
            if let Some(s) = self.seen.get_mut(&h) {
                s.unsaved = false;
                if !expired(s.at) {
                    put(h, s.at)?;
                }
            }
        }
        // The list of changes is empty again: so is its charge.
        let memory = self.memory();
        if let Some(s) = &mut self.spilled {
            s.charge(memory);
        }
        Ok(())
    }

    fn restore_state(&mut self, state: &dyn StateBackend) -> Result<(), StateError> {
        self.seen.clear();
        self.by_time.clear();
        self.unsaved.clear();
        self.buckets.clear();
        self.legacy = None;
        self.failure.clear();
        self.tracking = true;
        if let Some(s) = &mut self.spilled {
            s.reset()?;
        }
        self.watermark = match state.get(&self.ns, META_KEY)? {
            Some(b) => i64::from_be_bytes(
                b.as_slice().try_into().map_err(|_| corrupt("dedup watermark has the wrong length"))?,
            ),
            None => i64::MIN,
        };
        let mut read = 0usize;
        for kv in state.scan_prefix(&self.ns, &[LEGACY_TAG])? {
            let (k, v) = kv?;
            let (h, at) = parse_legacy_row(&k, &v)?;
            self.legacy = Some(self.legacy.map_or(at, |l| l.max(at)));
            self.restore_one(h, at)?;
            read += 1;
            if read.is_multiple_of(RESTORE_CHUNK) {
                self.settle()?;
            }
        }
        for kv in state.scan_prefix(&self.ns, &[BUCKET_TAG])? {
            let (k, v) = kv?;
            let (end, h, at) = parse_bucket_row(&k, &v)?;
            self.buckets.insert(end);
            self.restore_one(h, at)?;
            read += 1;
            if read.is_multiple_of(RESTORE_CHUNK) {
                // Under a budget, restoring spills as it goes: memory stays within it.
                self.settle()?;
            }
        }
        self.settle()
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

/// Stale eviction entries tolerated beyond twice the remembered ids before the heap is rebuilt
/// (keeps small operators from rebuilding on every batch).
const STALE_SLACK: usize = 1024;
/// Rows restored between two checks of the budget.
const RESTORE_CHUNK: usize = 1 << 16;

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
        assert_eq!(run(&mut d, &mut ctx, &[("a", 2_500)]), vec![("a", 2_500)], "forgotten: passes again");
        assert_eq!(ctx.counters.records_deduplicated, 2);
        // Its memory goes with the rest of its time bucket (1000 / 64 = 15 ms wide).
        wm(&mut d, &mut ctx, 3_499);
        assert_eq!(d.remembered(), 1);
        wm(&mut d, &mut ctx, 3_500 + 14);
        assert_eq!(d.remembered(), 0);
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
        assert_eq!(run(&mut d, &mut ctx, &[("a", 20_000)]), vec![("a", 20_000)], "forgotten");
        // The memory goes with the time bucket (15,625 ms wide: 15,625..=31,249).
        wm(&mut d, &mut ctx, 1_031_248);
        assert_eq!(d.remembered(), 2);
        wm(&mut d, &mut ctx, 1_031_249);
        assert_eq!(d.remembered(), 0);
        assert_eq!(d.by_time.len(), 0);
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
    fn snapshot_writes_only_changes_and_drops_expired_buckets() {
        let mut d = op(800);
        let mut ctx = Context::default();
        let mut state = MemoryStateBackend::new();
        run(&mut d, &mut ctx, &[("a", 0), ("b", 500)]);
        d.snapshot_state(&mut state).unwrap();
        assert_eq!(state.scan_prefix("dedup/t", &[BUCKET_TAG]).unwrap().count(), 2);

        // A backend that records writes: only the change since the last snapshot is written.
        run(&mut d, &mut ctx, &[("c", 600), ("a", 0)]);
        wm(&mut d, &mut ctx, 898);
        let mut probe = Probe::default();
        d.snapshot_state(&mut probe).unwrap();
        assert_eq!(probe.puts, 2, "the watermark and c; a's copy at the same time changed nothing");
        assert_eq!(probe.prefix_deletes, 0, "a's bucket (0..99) expires at 99 + 800");

        wm(&mut d, &mut ctx, 899);
        let mut again = Probe::default();
        d.snapshot_state(&mut again).unwrap();
        assert_eq!((again.puts, again.prefix_deletes), (1, 1), "the watermark; a's bucket goes whole");

        d.snapshot_state(&mut state).unwrap();
        let rows: Vec<_> =
            state.scan_prefix("dedup/t", &[BUCKET_TAG]).unwrap().map(|kv| kv.unwrap()).collect();
        assert_eq!(rows.len(), 2, "b and c stay, a's row is gone: {rows:?}");
    }

    #[test]
    fn rows_of_the_first_format_are_read_and_dropped_once_all_expired() {
        let mut state = MemoryStateBackend::new();
        let mut key = vec![LEGACY_TAG];
        key.extend_from_slice(&id_hash(b"old").to_be_bytes());
        state.put("dedup/t", &key, &50i64.to_be_bytes()).unwrap();
        state.put("dedup/t", META_KEY, &10i64.to_be_bytes()).unwrap();
        let mut d = op(100);
        d.restore_state(&state).unwrap();
        let mut ctx = Context::default();
        assert!(run(&mut d, &mut ctx, &[("old", 60)]).is_empty(), "a duplicate of the restored id");
        wm(&mut d, &mut ctx, 149);
        d.snapshot_state(&mut state).unwrap();
        assert_eq!(state.scan_prefix("dedup/t", &[LEGACY_TAG]).unwrap().count(), 1, "still live at 149");
        wm(&mut d, &mut ctx, 160);
        d.snapshot_state(&mut state).unwrap();
        assert_eq!(state.scan_prefix("dedup/t", &[LEGACY_TAG]).unwrap().count(), 0, "expired at 150");
        assert_eq!(run(&mut d, &mut ctx, &[("old", 300)]), vec![("old", 300)]);
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
        assert_eq!(state.scan_prefix("dedup/t", &[BUCKET_TAG]).unwrap().count(), 1_000);
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
        for tag in [LEGACY_TAG, BUCKET_TAG] {
            let mut state = MemoryStateBackend::new();
            state.put("dedup/t", &[tag, 1, 2], &[0; 8]).unwrap();
            let err = op(1).restore_state(&state).unwrap_err();
            assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
        }
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
        prefix_deletes: usize,
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
        fn delete_large_prefix(&mut self, _: &str, _: &[u8]) -> Result<(), StateError> {
            self.prefix_deletes += 1;
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

    /// Once the budget leaves the step room for a few ids only (another step took the rest),
    /// the map of ids in memory gives its table back instead of keeping one sized for all it held.
    #[cfg(feature = "rocksdb")]
    #[test]
    fn the_id_map_shrinks_when_its_ids_spill() {
        type Owned = Dedup<(String, i64), fn(&(String, i64)) -> &str, str>;
        let tmp = tempfile::tempdir().unwrap();
        let budget = StateBudget::open(64 << 20, tmp.path().join("spill")).unwrap();
        let mut d: Owned = Dedup::new("t", Duration::from_secs(3_600), |e: &(String, i64)| e.0.as_str());
        d.attach_budget(&budget);
        let mut ctx = Context::default();
        let mut out = Vec::new();
        let mut input: Vec<_> = (0..200_000).map(|i| Record::new((format!("id-{i}"), i), i)).collect();
        d.process_batch(&mut input, &mut ctx, &mut out);
        assert_eq!(out.len(), 200_000);
        let held = d.seen.capacity();
        assert!(d.seen.len() == 200_000 && held >= 200_000, "within the budget, every id stays in memory");
        // Another step takes nearly all of the budget: this one must spill almost everything.
        budget.charge((64 << 20) - 100 * ID_COST);
        for i in 0..20 {
            let mut input = vec![Record::new((format!("late-{i}"), 200_000), 200_000)];
            d.process_batch(&mut input, &mut ctx, &mut out);
        }
        assert!(d.spilled() > 150_000, "the ids spilled: {}", d.spilled());
        assert!(
            d.seen.capacity() <= d.seen.len().max(1 << 12).saturating_mul(4),
            "{} ids in memory keep a table of {} (it held {held})",
            d.seen.len(),
            d.seen.capacity()
        );
    }
}
