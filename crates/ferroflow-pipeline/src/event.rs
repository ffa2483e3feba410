//! The pipeline's input event and its decoding.

use bytes::Bytes;
use ferroflow_core::{OriginalBytes, Rejection};
use serde::{Deserialize, Serialize};

/// An input event, as the data contract describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id (producers' retries resend the same id).
    pub event_id: String,
    /// The acting user.
    pub user_id: String,
    /// What happened (`purchase`, `view`, …).
    pub event_type: String,
    /// Event time in ms since the epoch.
    pub ts: i64,
    /// Amount of money involved.
    pub amount: f64,
    /// The original bytes, kept for dead letters.
    #[serde(skip)]
    pub raw: Bytes,
}

impl OriginalBytes for Event {
    fn original_bytes(&self) -> Bytes {
        self.raw.clone()
    }
}

impl Event {
    /// Decodes one JSON event, keeping its bytes.
    pub fn decode(line: &Bytes) -> Result<Event, Rejection> {
        let mut e: Event = serde_json::from_slice(line).map_err(|e| Rejection::decode(e.to_string()))?;
        e.raw = line.clone();
        Ok(e)
    }
}
