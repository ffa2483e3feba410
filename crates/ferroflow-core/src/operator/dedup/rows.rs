//! How dedup's checkpoint rows are laid out.
//!
//! Ids are kept in buckets by the time they were last seen, an eighth of the time-to-live wide, so
//! that the ids that expire together go with one prefix delete instead of one delete per id. A
//! bucket is named by its last possible sighting, not by a number: a restore with another TTL
//! (other bucket widths) still drops each old bucket only once everything in it has expired.

use super::{IdHash, corrupt};
use crate::error::StateError;
use crate::record::Timestamp;

/// The watermark, so records already past their memory are treated the same after a restore.
pub(super) const META_KEY: &[u8] = b"\x00meta";
/// Rows of the first format: the tag, then the id hash (16 bytes, big-endian); the value is the
/// event time at which the id was last seen (8 bytes, big-endian). Read, no longer written.
pub(super) const LEGACY_TAG: u8 = 1;
/// Rows: the tag, the bucket's last possible sighting (8 bytes, order-preserving), the id hash
/// (16 bytes); the value is the event time at which the id was last seen (8 bytes).
pub(super) const BUCKET_TAG: u8 = 2;

/// The last sighting that shares a bucket with `at`, for a time-to-live of `ttl_ms`.
pub(super) fn bucket_end(at: Timestamp, ttl_ms: i64) -> Timestamp {
    let width = (ttl_ms / 8).max(1);
    at.div_euclid(width).saturating_mul(width).saturating_add(width - 1)
}

/// An `i64` as bytes that sort like the numbers.
fn ordered(t: Timestamp) -> [u8; 8] {
    (t.cast_unsigned() ^ (1 << 63)).to_be_bytes()
}

fn from_ordered(b: [u8; 8]) -> Timestamp {
    (u64::from_be_bytes(b) ^ (1 << 63)).cast_signed()
}

/// The prefix of every row in the bucket that ends at `end`.
pub(super) fn bucket_prefix(end: Timestamp) -> [u8; 9] {
    let mut p = [0u8; 9];
    p[0] = BUCKET_TAG;
    p[1..].copy_from_slice(&ordered(end));
    p
}

pub(super) fn bucket_row(end: Timestamp, h: IdHash) -> [u8; 25] {
    let mut row = [0u8; 25];
    row[..9].copy_from_slice(&bucket_prefix(end));
    row[9..].copy_from_slice(&h.to_be_bytes());
    row
}

/// (bucket end, id hash, last sighting) of a bucket row.
pub(super) fn parse_bucket_row(
    key: &[u8],
    value: &[u8],
) -> Result<(Timestamp, IdHash, Timestamp), StateError> {
    let end = key
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(from_ordered)
        .ok_or_else(|| corrupt("dedup bucket row is not 25 bytes"))?;
    let h = hash(key.get(9..)).ok_or_else(|| corrupt("dedup bucket row is not 25 bytes"))?;
    Ok((end, h, sighting(value)?))
}

/// (id hash, last sighting) of a row of the first format.
pub(super) fn parse_legacy_row(key: &[u8], value: &[u8]) -> Result<(IdHash, Timestamp), StateError> {
    let h = hash(key.get(1..)).ok_or_else(|| corrupt("dedup entry key is not 17 bytes"))?;
    Ok((h, sighting(value)?))
}

/// An id's hash from its 16 bytes.
pub(super) fn hash(b: Option<&[u8]>) -> Option<IdHash> {
    b.and_then(|b| <[u8; 16]>::try_from(b).ok()).map(u128::from_be_bytes)
}

/// A sighting's time from its 8 bytes.
pub(super) fn sighting(value: &[u8]) -> Result<Timestamp, StateError> {
    <[u8; 8]>::try_from(value).map(i64::from_be_bytes).map_err(|_| corrupt("a dedup sighting is not 8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_ends_cover_each_sighting_and_sort_like_time() {
        for ttl in [1, 7, 100, 86_400_000, i64::MAX] {
            for at in [i64::MIN, -1_001, -1, 0, 1, 999, 1_000, i64::MAX - 1, i64::MAX] {
                let end = bucket_end(at, ttl);
                assert!(end >= at, "ttl {ttl}, at {at}: bucket ends at {end}");
                assert!(end - at < (ttl / 8).max(1), "ttl {ttl}, at {at}: bucket ends at {end}");
            }
        }
        let mut rows: Vec<[u8; 25]> =
            [5, -5, i64::MIN, 0, i64::MAX].iter().map(|&e| bucket_row(e, 1)).collect();
        rows.sort();
        let ends: Vec<Timestamp> =
            rows.iter().map(|r| from_ordered(r[1..9].try_into().unwrap_or_default())).collect();
        assert_eq!(ends, [i64::MIN, -5, 0, 5, i64::MAX]);
    }
}
