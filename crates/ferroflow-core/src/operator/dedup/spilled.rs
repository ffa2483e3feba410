//! Dedup ids beyond the memory budget: generations of ids in the spill store, each with a Bloom
//! filter, dropped whole once every id in them has expired.

use std::collections::VecDeque;

use ahash::AHashMap;

use super::rows::{hash, sighting as decode_at};
use super::{IdHash, corrupt};
use crate::error::StateError;
use crate::record::Timestamp;
use crate::state::{BITS_FOR_HALF_PERCENT, KeyFilter, StateBudget};

/// The filters' bits per id (about 0.5 % false positives, per generation: that share of new ids
/// costs a disk read for each live generation).
const FILTER_BITS: usize = BITS_FOR_HALF_PERCENT;
/// The smallest generation, in ids, under a large budget: a filter this size costs about 1.5 MB.
/// Under a small one, generations start at half of the ids it holds.
const MIN_GENERATION: usize = 1 << 20;
/// Generations beyond which a new one opens only when the open one is full (not for time), so
/// that ids with far-apart event times cannot make a filter per id.
const MAX_GENERATIONS: usize = 16;
/// The generation number of pending rows (ids not yet in a checkpoint, kept for the next
/// snapshot), after every real generation.
const PENDING: u32 = u32::MAX;
/// How much more of the budget's excess a dedup step gives up than a keyed table of the same
/// size. An id in memory pays off only if the same id comes again soon (a retry); most ids are
/// seen once, and a spilled one costs a disk read only when its filter says `maybe`. A keyed
/// table's hot keys are read again and again, each miss a disk read. Measured with
/// `examples/state_scale.rs` (50M ids, 10M Zipf keys, 256 MB): 4 gave 577K-583K events/s
/// against 509K-530K for an even share (and 519K-526K when capped at the whole excess). Alone on
/// a budget, a dedup step so spills down to about 60 % of it rather than 90 %: fewer, larger
/// spills.
const SPILL_WEIGHT: usize = 4;

/// Rows: the table's prefix (8 bytes), the generation (4), the id's hash (16).
const ROW: usize = 28;
/// An id in a pending row: its hash (16 bytes), its sighting (8).
const PENDING_ID: usize = 24;

/// One generation: ids spilled over one stretch of event time, in rows of their own.
struct Generation {
    id: u32,
    filter: KeyFilter,
    capacity: usize,
    count: usize,
    /// The earliest and the latest sighting in it: the generation closes once it spans a quarter
    /// of the time-to-live, and is dropped once its latest sighting has expired.
    first_at: Timestamp,
    last_at: Timestamp,
}

/// The ids a dedup step spilled, and what its memory is charged of the budget.
///
/// Ids leave memory earliest-seen first, so each generation holds about one stretch of event
/// time; expiry drops the oldest generations with one range delete, without reading them. An id
/// may have rows in several generations (it spilled, was seen again, and spilled again): the
/// latest sighting among them counts.
pub(super) struct Spilled {
    pub(super) budget: StateBudget,
    prefix: [u8; 8],
    generations: VecDeque<Generation>,
    next_id: u32,
    /// Rows in the live generations.
    rows: usize,
    /// The smallest generation, in ids.
    min_generation: usize,
    /// Pending rows (one per write) since the last snapshot.
    pending_seq: u64,
    /// What the step's memory is charged of the budget now.
    charged: usize,
}

impl Spilled {
    pub(super) fn new(budget: StateBudget) -> Self {
        let prefix = budget.table_prefix();
        // About 200 bytes an id in memory: a generation of half of what fits costs a filter of
        // about 0.4 % of the budget (12 bits an id). Every new id asks every
        // generation's filter, so fewer, larger first generations save a probe per id each.
        let min_generation = (budget.limit() / 200 / 2).clamp(1_024, MIN_GENERATION);
        Self {
            budget,
            prefix,
            generations: VecDeque::new(),
            next_id: 0,
            rows: 0,
            min_generation,
            pending_seq: 0,
            charged: 0,
        }
    }

    /// Rows in the spill store (an id spilled twice has two).
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    /// What the filters hold in memory, bytes.
    pub(super) fn filter_bytes(&self) -> usize {
        self.generations.iter().map(|g| g.filter.bytes()).sum()
    }

    /// Sets the step's charge to `bytes`.
    pub(super) fn charge(&mut self, bytes: usize) {
        if bytes > self.charged {
            self.budget.charge(bytes - self.charged);
        } else {
            self.budget.release(self.charged - bytes);
        }
        self.charged = bytes;
    }

    /// How many bytes the step should spill now (0 within the budget): its share of the excess,
    /// weighed [`SPILL_WEIGHT`] times as much as another table's, at most what it holds.
    pub(super) fn to_spill(&self) -> usize {
        if !self.budget.over() {
            return 0;
        }
        let weighted = self.charged.saturating_mul(SPILL_WEIGHT);
        self.budget.share_of_excess(weighted).min(self.charged)
    }

    fn row(&self, generation: u32, h: IdHash) -> [u8; ROW] {
        let mut row = [0u8; ROW];
        row[..8].copy_from_slice(&self.prefix);
        row[8..12].copy_from_slice(&generation.to_be_bytes());
        row[12..].copy_from_slice(&h.to_be_bytes());
        row
    }

    /// The latest sighting of `h` on disk, if any (expired ones included: the caller decides).
    pub(super) fn lookup(&self, h: IdHash) -> Result<Option<Timestamp>, StateError> {
        let mut latest = None;
        for g in self.generations.iter().rev() {
            if !g.filter.contains_hash(fingerprint(h)) {
                continue;
            }
            if let Some(v) = self.budget.get(&self.row(g.id, h))? {
                let at = decode_at(&v)?;
                latest = Some(latest.map_or(at, |l: Timestamp| l.max(at)));
            }
        }
        Ok(latest)
    }

    /// The latest sighting on disk of each id in `ids` that has one, read in one batch (expired
    /// ones included: the caller decides), into `found`; an id whose rows cannot be read gets the
    /// error's text. Ids the filters rule out (most new ids) get no entry.
    pub(super) fn lookup_many(
        &self,
        ids: &[IdHash],
        found: &mut AHashMap<IdHash, Result<Option<Timestamp>, String>>,
    ) {
        let mut rows: Vec<([u8; ROW], IdHash)> = Vec::new();
        for &h in ids {
            for g in &self.generations {
                if g.filter.contains_hash(fingerprint(h)) {
                    rows.push((self.row(g.id, h), h));
                }
            }
        }
        if rows.is_empty() {
            return;
        }
        rows.sort_unstable_by_key(|r| r.0);
        let keys: Vec<&[u8; ROW]> = rows.iter().map(|r| &r.0).collect();
        self.budget.multi_get(&keys, &mut |i, value| {
            let Some(&(_, h)) = rows.get(i) else { return };
            let read = value.and_then(|v| v.map(decode_at).transpose());
            let entry = found.entry(h).or_insert(Ok(None));
            match (read, &mut *entry) {
                (Ok(Some(at)), Ok(latest)) => *latest = Some(latest.map_or(at, |l| l.max(at))),
                (Err(e), _) => *entry = Err(e.to_string()),
                _ => {}
            }
        });
    }

    /// Writes `ids` (hash, last sighting, not yet in a checkpoint), earliest first, to the spill
    /// store; those not yet in a checkpoint are also noted among the pending rows, for the next
    /// snapshot (so that memory does not grow with the time between checkpoints). On error nothing
    /// is counted as spilled: the caller keeps them in memory.
    pub(super) fn write(&mut self, ids: &[(IdHash, Timestamp, bool)], ttl_ms: i64) -> Result<(), StateError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Which generation each id goes to, opening new ones as the open one fills up or would
        // span more than a quarter of the time-to-live (so that expiry frees the disk in steps of
        // about that; past MAX_GENERATIONS, only a full one opens another).
        let span = (ttl_ms / 4).max(1);
        let mut placed = Vec::with_capacity(ids.len());
        let mut open = self.generations.back().map(|g| (g.id, g.count, g.capacity, g.first_at, g.last_at));
        let mut opened: Vec<(u32, usize, Timestamp)> = Vec::new();
        for &(h, at, _) in ids {
            let fits = open.is_some_and(|(_, count, capacity, first, last)| {
                let crowded = self.generations.len().saturating_add(opened.len()) >= MAX_GENERATIONS;
                count < capacity && (crowded || last.max(at).saturating_sub(first.min(at)) <= span)
            });
            if !fits {
                // Sized from the one before: twice it when it filled up (the state grows), a
                // quarter more when it closed on time (the state holds steady).
                let capacity = match open {
                    Some((_, count, capacity, ..)) if count >= capacity => capacity.saturating_mul(2),
                    Some((_, count, ..)) => count.saturating_add(count / 4),
                    None => 0,
                }
                .max(self.min_generation);
                let id = self.next_id.wrapping_add(u32::try_from(opened.len()).unwrap_or(u32::MAX));
                opened.push((id, capacity, at));
                open = Some((id, 0, capacity, at, at));
            }
            if let Some(o) = &mut open {
                o.1 = o.1.saturating_add(1);
                o.3 = o.3.min(at);
                o.4 = o.4.max(at);
                placed.push((o.0, h, at));
            }
        }
        // Rows of generations hold the sighting; one pending row holds every unsaved (hash,
        // sighting) of this write, 24 bytes each (one memtable insert, not one per id).
        let mut rows: Vec<([u8; ROW], [u8; 8])> = Vec::with_capacity(placed.len());
        for &(g, h, at) in &placed {
            rows.push((self.row(g, h), at.to_be_bytes()));
        }
        rows.sort_unstable_by_key(|r| r.0);
        let mut unsaved = Vec::new();
        for &(h, at, _) in ids.iter().filter(|id| id.2) {
            unsaved.extend_from_slice(&h.to_be_bytes());
            unsaved.extend_from_slice(&at.to_be_bytes());
        }
        let pending = self.pending_row(self.pending_seq);
        let mut puts: Vec<(&[u8; ROW], &[u8])> = rows.iter().map(|(k, v)| (k, &v[..])).collect();
        if !unsaved.is_empty() {
            puts.push((&pending, &unsaved));
        }
        self.budget.write_ordered(&[], &puts)?;
        if !unsaved.is_empty() {
            self.pending_seq = self.pending_seq.saturating_add(1);
        }

        for (id, capacity, first_at) in opened {
            let filter = KeyFilter::new(capacity, FILTER_BITS);
            self.generations.push_back(Generation {
                id,
                filter,
                capacity,
                count: 0,
                first_at,
                last_at: first_at,
            });
            self.next_id = id.wrapping_add(1);
        }
        for (g, h, at) in placed {
            if let Some(gen_) = self.generations.iter_mut().rev().find(|x| x.id == g) {
                gen_.filter.insert_hash(fingerprint(h));
                gen_.count = gen_.count.saturating_add(1);
                gen_.first_at = gen_.first_at.min(at);
                gen_.last_at = gen_.last_at.max(at);
            }
        }
        self.rows = self.rows.saturating_add(ids.len());
        Ok(())
    }

    /// Drops the generations whose every sighting has expired at `watermark` (any of them: one
    /// held up by a sighting far in the future does not hold up the others).
    pub(super) fn expire(&mut self, watermark: Timestamp, ttl_ms: i64) -> Result<(), StateError> {
        while let Some(i) =
            self.generations.iter().position(|g| g.last_at.saturating_add(ttl_ms) <= watermark)
        {
            let (id, count) = self.generations.get(i).map_or((0, 0), |g| (g.id, g.count));
            // Past the generation's last row (the largest hash, then one byte more), before the
            // next generation's first.
            let mut to = self.row(id, IdHash::MAX).to_vec();
            to.push(0);
            self.budget.delete_range(&self.row(id, 0), &to)?;
            self.rows = self.rows.saturating_sub(count);
            self.generations.remove(i);
        }
        Ok(())
    }

    /// Calls `f` with each (hash, sighting) spilled since the last call, before it was in a
    /// checkpoint, and forgets them.
    pub(super) fn drain_pending(
        &mut self,
        f: &mut dyn FnMut(IdHash, Timestamp) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        if self.pending_seq == 0 {
            return Ok(());
        }
        let start = self.pending_row(0);
        self.budget.for_each(&start[..12], &mut |_, v| {
            if v.len() % PENDING_ID != 0 {
                return Err(corrupt("a pending dedup row is not a whole number of 24-byte ids"));
            }
            for id in v.chunks_exact(PENDING_ID) {
                let h = hash(id.get(..16)).ok_or_else(|| corrupt("a pending dedup id is not 24 bytes"))?;
                f(h, decode_at(id.get(16..).unwrap_or_default())?)?;
            }
            Ok(())
        })?;
        let mut end = self.pending_row(u64::MAX).to_vec();
        end.push(0);
        self.budget.delete_range(&start, &end)?;
        self.pending_seq = 0;
        Ok(())
    }

    /// The `seq`-th pending row: after every generation's rows (zeros pad it to a row's length).
    fn pending_row(&self, seq: u64) -> [u8; ROW] {
        let mut row = [0u8; ROW];
        row[..8].copy_from_slice(&self.prefix);
        row[8..12].copy_from_slice(&PENDING.to_be_bytes());
        row[12..20].copy_from_slice(&seq.to_be_bytes());
        row
    }

    /// Calls `f` with each spilled (hash, sighting) that has not expired at `watermark`.
    pub(super) fn for_each_live(
        &self,
        watermark: Timestamp,
        ttl_ms: i64,
        f: &mut dyn FnMut(IdHash, Timestamp) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        self.budget.for_each(&self.prefix, &mut |row, v| {
            if row.get(8..12) == Some(&PENDING.to_be_bytes()[..]) {
                return Ok(()); // pending rows repeat rows of generations
            }
            let h = hash(row.get(12..)).ok_or_else(|| corrupt("a spilled dedup row is not 28 bytes"))?;
            let at = decode_at(v)?;
            if at.saturating_add(ttl_ms) > watermark { f(h, at) } else { Ok(()) }
        })
    }

    /// Forgets every spilled id.
    pub(super) fn reset(&mut self) -> Result<(), StateError> {
        self.budget.clear(&self.prefix)?;
        self.generations.clear();
        self.rows = 0;
        self.pending_seq = 0;
        Ok(())
    }
}

impl Drop for Spilled {
    fn drop(&mut self) {
        // The budget and its store outlive the step: give back its memory and its disk.
        self.charge(0);
        if !self.generations.is_empty()
            && let Err(e) = self.budget.clear(&self.prefix)
        {
            tracing::warn!(error = %e, "cannot remove a dropped dedup step's spilled ids");
        }
    }
}

/// The filters' hash of an id: its hash is uniform already.
fn fingerprint(h: IdHash) -> u64 {
    (h as u64) ^ ((h >> 64) as u64)
}
