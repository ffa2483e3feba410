//! How a keyed step's state is laid out in its namespace of the state backend.
//!
//! Every row starts with a tag byte:
//! - state rows: `CELL_TAG`, the state's name (length byte, then bytes), the key's bytes;
//! - event-time timer rows: `EVENT_TIMER_TAG`, the time (8 bytes, sign bit flipped, so rows sort
//!   by time), the key's bytes; processing-time timers the same under `PROCESSING_TIMER_TAG`;
//! - schema rows: `SCHEMA_TAG`, the state's name: its kind and the structure of its values.

use crate::error::StateError;
use crate::record::{Key, Timestamp};

pub(super) const CELL_TAG: u8 = 1;
pub(super) const EVENT_TIMER_TAG: u8 = 2;
pub(super) const PROCESSING_TIMER_TAG: u8 = 3;
pub(super) const SCHEMA_TAG: u8 = 4;

fn named(buf: &mut Vec<u8>, tag: u8, name: &str) {
    buf.clear();
    buf.push(tag);
    // Names are at most 255 bytes: a table is not created for a longer one.
    buf.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    buf.extend_from_slice(name.as_bytes());
}

pub(super) fn cell_key(buf: &mut Vec<u8>, name: &str, key: &Key) {
    named(buf, CELL_TAG, name);
    buf.extend_from_slice(key.as_bytes());
}

pub(super) fn schema_key(buf: &mut Vec<u8>, name: &str) {
    named(buf, SCHEMA_TAG, name);
}

/// The state's name and the rest of a state or schema row.
pub(super) fn split_named(k: &[u8]) -> Result<(&str, &[u8]), StateError> {
    let corrupt = || StateError::Corrupt { what: "a keyed state row has a malformed key".into() };
    let len = usize::from(*k.get(1).ok_or_else(corrupt)?);
    let end = len.checked_add(2).ok_or_else(corrupt)?;
    let name = std::str::from_utf8(k.get(2..end).ok_or_else(corrupt)?).map_err(|_| corrupt())?;
    Ok((name, k.get(end..).unwrap_or_default()))
}

pub(super) fn timer_key(buf: &mut Vec<u8>, tag: u8, at: Timestamp, key: &Key) {
    buf.clear();
    buf.push(tag);
    buf.extend_from_slice(&(at ^ i64::MIN).to_be_bytes());
    buf.extend_from_slice(key.as_bytes());
}

pub(super) fn split_timer_key(k: &[u8]) -> Result<(Timestamp, Key), StateError> {
    let at = k
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| i64::from_be_bytes(b) ^ i64::MIN)
        .ok_or_else(|| StateError::Corrupt { what: "a timer row is too short".into() })?;
    Ok((at, Key::from(k.get(9..).unwrap_or_default())))
}
