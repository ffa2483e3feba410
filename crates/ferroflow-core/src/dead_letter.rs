//! Dead letters: the one envelope for every record that cannot go on, with the reason, the source
//! position and the original bytes, so nothing is ever dropped silently.

use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::record::{SourcePosition, Timestamp};

/// Why a record was dead-lettered. Serialized as a stable snake_case code (`decode_error`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// The bytes could not be decoded (malformed JSON, wrong types).
    DecodeError,
    /// The record decoded but broke the data contract.
    ContractViolation,
    /// The record arrived after its windows were closed and their allowed lateness had passed.
    LateEvent,
    /// The sink refused the record permanently.
    SinkRejected,
    /// A user processing step rejected the record.
    ProcessingError,
    /// The record's event time is outside the range the engine can place in windows (within a
    /// window size of the ends of `i64`): a hostile or corrupt timestamp, never arithmetic on it.
    EventTimeOutOfRange,
}

impl DeadLetterReason {
    /// Every reason, in a stable order (for metrics and reports).
    pub const ALL: [DeadLetterReason; 6] = [
        DeadLetterReason::DecodeError,
        DeadLetterReason::ContractViolation,
        DeadLetterReason::LateEvent,
        DeadLetterReason::SinkRejected,
        DeadLetterReason::ProcessingError,
        DeadLetterReason::EventTimeOutOfRange,
    ];

    /// The stable code used in envelopes, logs and metric labels.
    pub const fn code(self) -> &'static str {
        match self {
            DeadLetterReason::DecodeError => "decode_error",
            DeadLetterReason::ContractViolation => "contract_violation",
            DeadLetterReason::LateEvent => "late_event",
            DeadLetterReason::SinkRejected => "sink_rejected",
            DeadLetterReason::ProcessingError => "processing_error",
            DeadLetterReason::EventTimeOutOfRange => "event_time_out_of_range",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A record that cannot go on, with everything needed to inspect and replay it.
///
/// # Examples
/// ```
/// use bytes::Bytes;
/// use ferroflow_core::{DeadLetter, DeadLetterReason, SourcePosition};
/// let dl = DeadLetter::new(
///     DeadLetterReason::DecodeError,
///     "line 3: expected value at column 1",
///     SourcePosition::new(0, 2),
///     Bytes::from_static(b"{oops"),
/// );
/// let json = serde_json::to_value(&dl).unwrap();
/// assert_eq!(json["reason"], "decode_error");
/// assert_eq!(json["original"], "{oops");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Machine-readable reason.
    pub reason: DeadLetterReason,
    /// Human-readable detail: what exactly was wrong.
    pub detail: String,
    /// Where the record was read from.
    pub position: SourcePosition,
    /// Event time, when it was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<Timestamp>,
    /// The original bytes: UTF-8 text as a string, anything else base64-encoded (see `original_encoding`).
    #[serde(with = "original_bytes")]
    #[serde(flatten)]
    pub original: Bytes,
    /// Set when `original` holds only the start of the record's bytes: the whole did not fit in
    /// a dead-letter message (see [`DeadLetter::truncated_to`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_truncated: Option<TruncatedOriginal>,
}

/// What a truncated dead letter says about the bytes it no longer holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruncatedOriginal {
    /// Size of the whole original, bytes.
    pub size: u64,
    /// XXH3-128 of the whole original, 32 hex digits: finds the record again at its source.
    pub xxh3_128: String,
}

impl DeadLetter {
    /// Builds a dead letter.
    pub fn new(
        reason: DeadLetterReason,
        detail: impl Into<String>,
        position: SourcePosition,
        original: Bytes,
    ) -> Self {
        Self { reason, detail: detail.into(), position, event_time: None, original, original_truncated: None }
    }

    /// The same dead letter with at most the first `keep` bytes of the original (cut at a UTF-8
    /// character boundary when the original is text), and the whole original's size and hash.
    /// Unchanged when the original already fits.
    ///
    /// # Examples
    /// ```
    /// use bytes::Bytes;
    /// use ferroflow_core::{DeadLetter, DeadLetterReason, SourcePosition};
    /// let big = Bytes::from("é".repeat(1_000)); // 2 000 bytes of text
    /// let dl = DeadLetter::new(DeadLetterReason::DecodeError, "not JSON", SourcePosition::new(0, 1), big);
    /// let cut = dl.truncated_to(101);
    /// assert_eq!(cut.original.len(), 100, "cut at a character boundary");
    /// let t = cut.original_truncated.unwrap();
    /// assert_eq!(t.size, 2_000);
    /// assert_eq!(t.xxh3_128.len(), 32);
    /// ```
    pub fn truncated_to(&self, keep: usize) -> Self {
        if self.original.len() <= keep {
            return self.clone();
        }
        let whole = self.original_truncated.clone().unwrap_or_else(|| TruncatedOriginal {
            size: self.original.len() as u64,
            xxh3_128: format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&self.original)),
        });
        let mut end = keep;
        if std::str::from_utf8(&self.original).is_ok() {
            while end > 0 && (self.original[end] & 0b1100_0000) == 0b1000_0000 {
                end -= 1;
            }
        }
        let mut cut = self.clone();
        cut.original = self.original.slice(..end);
        cut.original_truncated = Some(whole);
        cut
    }

    /// Sets the event time.
    pub fn with_event_time(mut self, event_time: Timestamp) -> Self {
        self.event_time = Some(event_time);
        self
    }
}

/// Serializes the original bytes as `original` (UTF-8) plus `original_encoding` (`utf8` or `base64`).
mod original_bytes {
    use super::*;
    use serde::ser::SerializeMap;

    pub fn serialize<S: serde::Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                map.serialize_entry("original", text)?;
                map.serialize_entry("original_encoding", "utf8")?;
            }
            Err(_) => {
                map.serialize_entry("original", &base64::engine::general_purpose::STANDARD.encode(bytes))?;
                map.serialize_entry("original_encoding", "base64")?;
            }
        }
        map.end()
    }

    #[derive(Deserialize)]
    struct Encoded {
        original: String,
        #[serde(default)]
        original_encoding: Option<String>,
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let enc = Encoded::deserialize(d)?;
        match enc.original_encoding.as_deref() {
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(enc.original.as_bytes())
                .map(Bytes::from)
                .map_err(serde::de::Error::custom),
            _ => Ok(Bytes::from(enc.original)),
        }
    }
}

/// Why a processing step refused a record: a reason and a detail, before the engine adds the
/// position and the original bytes to make a [`DeadLetter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Machine-readable reason.
    pub reason: DeadLetterReason,
    /// Human-readable detail.
    pub detail: String,
}

impl Rejection {
    /// Builds a rejection.
    pub fn new(reason: DeadLetterReason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }

    /// A decode failure.
    pub fn decode(detail: impl Into<String>) -> Self {
        Self::new(DeadLetterReason::DecodeError, detail)
    }

    /// A contract violation.
    pub fn contract(detail: impl Into<String>) -> Self {
        Self::new(DeadLetterReason::ContractViolation, detail)
    }
}
