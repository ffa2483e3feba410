//! A split-block Bloom filter: the filter in front of spilled state, one cache line per lookup.
//!
//! Every spilled-state lookup asks a filter first (most new dedup ids and new keys were never
//! spilled), and a dedup step asks one filter per generation of spilled ids, so this sits on the
//! hot path of every record. A classic Bloom filter touches up to `k` random cache lines per
//! lookup and exactly `k` per insert, and its early exit makes each lookup wait for the line
//! before. This one (the layout of Parquet's and Impala's filters) keeps all `k` = 8 bits of an
//! item in one 32-byte block, one bit per 32-bit word, and tests them without a branch, so that
//! the lookups of a batch overlap in the CPU instead of queueing.

/// Bits per item for about 0.55 % false positives (measured: 0.54 %).
pub(crate) const BITS_FOR_HALF_PERCENT: usize = 12;
/// Bits per item for under 1 % false positives (measured: 0.82 %).
pub(crate) const BITS_FOR_ONE_PERCENT: usize = 11;

/// Odd constants that pick each word's bit from the item's hash (Parquet's).
const SALT: [u32; 8] =
    [0x47b6_137b, 0x4497_4d91, 0x8824_ad5b, 0xa2b7_289d, 0x7054_95c7, 0x2df1_424b, 0x9efc_4947, 0x5c6b_fb31];

/// A fixed hasher for byte strings: filters are rebuilt, never stored, but a fixed seed makes
/// runs (and their false positives) repeatable.
const HASHER: ahash::RandomState = ahash::RandomState::with_seeds(
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
);

/// A set that may answer `maybe` for an item never put in it, never `no` for one that was.
///
/// Items are 64-bit hashes that are uniform already ([`KeyFilter::insert_hash`]), or byte strings
/// hashed here ([`KeyFilter::insert`]).
#[derive(Debug, Clone)]
pub(crate) struct KeyFilter {
    blocks: Vec<Block>,
}

/// 256 bits, aligned so that a block never straddles two cache lines.
#[derive(Debug, Clone, Copy)]
#[repr(align(32))]
struct Block([u32; 8]);

impl KeyFilter {
    /// A filter for `items` items at `bits_per_item` bits each (one block at least).
    pub(crate) fn new(items: usize, bits_per_item: usize) -> Self {
        let blocks = items.saturating_mul(bits_per_item).div_ceil(256).max(1);
        Self { blocks: vec![Block([0; 8]); blocks] }
    }

    /// What the filter holds in memory, bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.blocks.len().saturating_mul(32)
    }

    /// Puts a uniform 64-bit hash in.
    pub(crate) fn insert_hash(&mut self, hash: u64) {
        let i = self.block(hash);
        if let Some(block) = self.blocks.get_mut(i) {
            for (word, mask) in block.0.iter_mut().zip(masks(hash)) {
                *word |= mask;
            }
        }
    }

    /// `false` if the hash was never put in; `true` if it was, or by chance.
    pub(crate) fn contains_hash(&self, hash: u64) -> bool {
        let Some(block) = self.blocks.get(self.block(hash)) else { return true };
        // Branch-free on purpose: see the module's note.
        block.0.iter().zip(masks(hash)).fold(true, |all, (word, mask)| all & (word & mask != 0))
    }

    /// Puts a byte string in.
    pub(crate) fn insert(&mut self, item: &[u8]) {
        self.insert_hash(HASHER.hash_one(item));
    }

    /// `false` if the byte string was never put in; `true` if it was, or by chance.
    pub(crate) fn contains(&self, item: &[u8]) -> bool {
        self.contains_hash(HASHER.hash_one(item))
    }

    /// The block of a hash: its high half, scaled to the number of blocks (no division).
    fn block(&self, hash: u64) -> usize {
        let scaled = (hash >> 32).wrapping_mul(self.blocks.len() as u64) >> 32;
        usize::try_from(scaled).unwrap_or(0)
    }
}

/// One bit per word, picked by the hash's low half.
fn masks(hash: u64) -> [u32; 8] {
    let low = hash as u32;
    SALT.map(|salt| 1u32 << (low.wrapping_mul(salt) >> 27))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mixer so that test items are uniform hashes, as the filter's callers give it.
    fn mix(i: u64) -> u64 {
        let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn false_positive_rate(bits_per_item: usize) -> f64 {
        let items = 200_000u64;
        let mut f = KeyFilter::new(items as usize, bits_per_item);
        for i in 0..items {
            f.insert_hash(mix(i));
        }
        assert!((0..items).all(|i| f.contains_hash(mix(i))), "a filter must never say no to what it holds");
        let probes = 1_000_000u64;
        let hits = (items..items + probes).filter(|&i| f.contains_hash(mix(i))).count();
        hits as f64 / probes as f64
    }

    #[test]
    fn false_positives_stay_near_their_targets() {
        let half = false_positive_rate(BITS_FOR_HALF_PERCENT);
        let one = false_positive_rate(BITS_FOR_ONE_PERCENT);
        assert!(half > 0.0 && half < 0.006, "12 bits per item: {half}");
        assert!(one < 0.01 && one > half, "11 bits per item: {one}");
    }

    #[test]
    fn byte_strings_are_found_and_others_mostly_not() {
        let mut f = KeyFilter::new(10_000, BITS_FOR_ONE_PERCENT);
        for i in 0..10_000u32 {
            f.insert(format!("user-{i}").as_bytes());
        }
        assert!((0..10_000u32).all(|i| f.contains(format!("user-{i}").as_bytes())));
        let hits = (10_000..110_000u32).filter(|i| f.contains(format!("user-{i}").as_bytes())).count();
        assert!(hits < 1_500, "{hits} of 100,000 absent strings said maybe");
    }

    #[test]
    fn an_empty_filter_holds_nothing() {
        let f = KeyFilter::new(0, BITS_FOR_ONE_PERCENT);
        assert_eq!(f.bytes(), 32);
        assert!(!(0..1_000).any(|i| f.contains_hash(mix(i))));
    }
}
