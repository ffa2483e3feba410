//! What windows to build: kind, sizes and allowed lateness, validated when the job is built.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, duration_ms, non_negative_ms, positive_ms};
use crate::record::Timestamp;

/// A half-open interval of event time, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    /// Inclusive start, ms since epoch.
    pub start: Timestamp,
    /// Exclusive end, ms since epoch.
    pub end: Timestamp,
}

impl Window {
    /// The last event time inside the window.
    pub fn max_timestamp(&self) -> Timestamp {
        self.end.saturating_sub(1)
    }
}

/// The window kinds, with sizes in milliseconds (all validated positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowKind {
    /// Fixed, non-overlapping windows aligned to the epoch.
    Tumbling {
        /// Window length.
        size_ms: i64,
    },
    /// Fixed windows of `size_ms` starting every `slide_ms`; a record belongs to `size / slide` windows.
    Sliding {
        /// Window length.
        size_ms: i64,
        /// Distance between window starts.
        slide_ms: i64,
    },
    /// Per-key windows that close after a gap of inactivity; overlapping sessions merge.
    Session {
        /// Inactivity gap.
        gap_ms: i64,
    },
}

/// A validated window definition: its kind plus allowed lateness.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use ferroflow_core::window::WindowSpec;
/// let spec = WindowSpec::tumbling(Duration::from_secs(60))?
///     .with_allowed_lateness(Duration::from_secs(10));
/// assert_eq!(spec.allowed_lateness_ms(), 10_000);
/// assert!(WindowSpec::tumbling(Duration::ZERO).is_err());
/// # Ok::<(), ferroflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    kind: WindowKind,
    allowed_lateness_ms: i64,
}

impl WindowSpec {
    /// Tumbling windows of `size`.
    pub fn tumbling(size: Duration) -> Result<Self, ConfigError> {
        Self::from_kind(WindowKind::Tumbling { size_ms: duration_ms(size) })
    }

    /// Sliding windows of `size` every `slide`.
    pub fn sliding(size: Duration, slide: Duration) -> Result<Self, ConfigError> {
        Self::from_kind(WindowKind::Sliding { size_ms: duration_ms(size), slide_ms: duration_ms(slide) })
    }

    /// Session windows closing after `gap` without records for the key.
    pub fn session(gap: Duration) -> Result<Self, ConfigError> {
        Self::from_kind(WindowKind::Session { gap_ms: duration_ms(gap) })
    }

    /// Validates a kind given in milliseconds.
    pub fn from_kind(kind: WindowKind) -> Result<Self, ConfigError> {
        match kind {
            WindowKind::Tumbling { size_ms } => {
                positive_ms("window size", size_ms)?;
            }
            WindowKind::Sliding { size_ms, slide_ms } => {
                positive_ms("window size", size_ms)?;
                positive_ms("window slide", slide_ms)?;
                if slide_ms > size_ms {
                    return Err(ConfigError::Invalid(format!(
                        "window slide ({slide_ms} ms) must not exceed window size ({size_ms} ms): \
                         records between windows would belong to no window"
                    )));
                }
            }
            WindowKind::Session { gap_ms } => {
                positive_ms("session gap", gap_ms)?;
            }
        }
        Ok(Self { kind, allowed_lateness_ms: 0 })
    }

    /// Late records up to `lateness` behind the watermark still update their windows.
    pub fn with_allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness_ms = duration_ms(lateness);
        self
    }

    /// Sets allowed lateness from configured milliseconds, rejecting negative values.
    pub fn with_allowed_lateness_ms(mut self, lateness_ms: i64) -> Result<Self, ConfigError> {
        self.allowed_lateness_ms = non_negative_ms("allowed lateness", lateness_ms)?;
        Ok(self)
    }

    /// The window kind.
    pub fn kind(&self) -> WindowKind {
        self.kind
    }

    /// Allowed lateness in milliseconds.
    pub fn allowed_lateness_ms(&self) -> i64 {
        self.allowed_lateness_ms
    }

    /// True when a record at `t` would be late for these windows at `watermark`: every window
    /// it belongs to (a session: the one it opens) ends, plus the allowed lateness, at or before
    /// the watermark. A step before the window (a join) can refuse such a record itself, where
    /// its bytes and counts are still at hand.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use ferroflow_core::window::WindowSpec;
    /// let spec = WindowSpec::tumbling(Duration::from_secs(60)).unwrap().with_allowed_lateness(Duration::from_secs(10));
    /// assert!(!spec.is_late(30_000, 69_998), "window [0, 60 s) takes it until its end plus 10 s");
    /// assert!(spec.is_late(30_000, 69_999));
    /// ```
    pub fn is_late(&self, t: Timestamp, watermark: Timestamp) -> bool {
        let end = match self.kind {
            WindowKind::Tumbling { size_ms } => {
                t.saturating_sub(t.rem_euclid(size_ms.max(1))).saturating_add(size_ms)
            }
            WindowKind::Sliding { size_ms, slide_ms } => {
                t.saturating_sub(t.rem_euclid(slide_ms.max(1))).saturating_add(size_ms)
            }
            WindowKind::Session { gap_ms } => t.saturating_add(gap_ms),
        };
        end.saturating_sub(1).saturating_add(self.allowed_lateness_ms) <= watermark
    }
}

/// The window kind as written in configuration files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKindConfig {
    /// Tumbling windows (`size_ms`).
    Tumbling,
    /// Sliding windows (`size_ms`, `slide_ms`).
    Sliding,
    /// Session windows (`gap_ms`).
    Session,
}

/// Window settings as read from configuration; [`WindowConfig::build`] validates them.
///
/// # Examples
/// ```
/// use ferroflow_core::window::WindowConfig;
/// let cfg: WindowConfig = serde_json::from_str(
///     r#"{"kind":"tumbling","size_ms":60000,"allowed_lateness_ms":-5}"#).unwrap();
/// let err = cfg.build().unwrap_err();
/// assert!(err.to_string().contains("allowed lateness must not be negative"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Which kind of window.
    pub kind: WindowKindConfig,
    /// Window length in ms (tumbling, sliding).
    #[serde(default)]
    pub size_ms: Option<i64>,
    /// Distance between window starts in ms (sliding).
    #[serde(default)]
    pub slide_ms: Option<i64>,
    /// Inactivity gap in ms (session).
    #[serde(default)]
    pub gap_ms: Option<i64>,
    /// Allowed lateness in ms (default 0).
    #[serde(default)]
    pub allowed_lateness_ms: i64,
}

impl WindowConfig {
    /// Validates the settings into a [`WindowSpec`].
    pub fn build(&self) -> Result<WindowSpec, ConfigError> {
        let need = |v: Option<i64>, name: &str| {
            v.ok_or_else(|| ConfigError::Invalid(format!("{name} is required for {:?} windows", self.kind)))
        };
        let kind = match self.kind {
            WindowKindConfig::Tumbling => WindowKind::Tumbling { size_ms: need(self.size_ms, "size_ms")? },
            WindowKindConfig::Sliding => WindowKind::Sliding {
                size_ms: need(self.size_ms, "size_ms")?,
                slide_ms: need(self.slide_ms, "slide_ms")?,
            },
            WindowKindConfig::Session => WindowKind::Session { gap_ms: need(self.gap_ms, "gap_ms")? },
        };
        WindowSpec::from_kind(kind)?.with_allowed_lateness_ms(self.allowed_lateness_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn invalid_specs_are_rejected_with_the_setting_named() {
        let e = WindowSpec::sliding(Duration::from_secs(1), Duration::from_secs(2)).unwrap_err();
        assert!(e.to_string().contains("slide"), "{e}");
        let e = WindowSpec::session(Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("session gap"), "{e}");
        let cfg = WindowConfig {
            kind: WindowKindConfig::Sliding,
            size_ms: Some(10),
            slide_ms: None,
            gap_ms: None,
            allowed_lateness_ms: 0,
        };
        assert!(cfg.build().unwrap_err().to_string().contains("slide_ms is required"));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn unknown_config_keys_are_rejected() {
        let r: Result<WindowConfig, _> = serde_json::from_str(r#"{"kind":"tumbling","size":5}"#);
        assert!(r.unwrap_err().to_string().contains("unknown field `size`"));
    }
}
