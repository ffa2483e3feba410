//! The row a window emits.

use serde::{Deserialize, Serialize};

use crate::record::{Key, Timestamp};

/// One key's aggregate for one window, as emitted.
///
/// `revision` starts at 0 when the window fires and grows by one with each re-emission (a late
/// update, or the final marker). `is_final` says no further revision will follow. Downstream
/// stores keep, per `(key, window_start)`, the row with the highest revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowResult<V> {
    /// The group key.
    pub key: Key,
    /// Window start (inclusive), ms since epoch.
    pub window_start: Timestamp,
    /// Window end (exclusive), ms since epoch.
    pub window_end: Timestamp,
    /// The aggregate.
    pub value: V,
    /// 0 on first emission, +1 per update.
    pub revision: u32,
    /// True when the value can no longer change.
    pub is_final: bool,
}
