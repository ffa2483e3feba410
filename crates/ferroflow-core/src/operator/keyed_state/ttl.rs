//! Time to live of a state's values, as Flink's `StateTtlConfig` defines it, in processing time
//! or event time.

use std::time::Duration;

use crate::record::Timestamp;

/// The clock a time to live is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlTime {
    /// Processing time (Flink's only TTL time): a value written at processing time `t` expires at
    /// `t + ttl`. Not reproducible on a replay.
    ProcessingTime,
    /// Event time: a value written by a record (or a timer) with event time `t` expires once the
    /// step's watermark reaches `t + ttl`. A replay expires the same values.
    EventTime,
}

/// When a value's time to live starts again (Flink's `UpdateType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlUpdate {
    /// When the value is created or written (Flink's default, `OnCreateAndWrite`).
    OnCreateAndWrite,
    /// Also when it is read (`OnReadAndWrite`).
    OnReadAndWrite,
}

/// Whether a read sees a value that expired but was not removed yet (Flink's
/// `StateVisibility`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlVisibility {
    /// Never (Flink's default, `NeverReturnExpired`): an expired value reads as absent, and the
    /// read removes it.
    NeverReturnExpired,
    /// Until the periodic clean-up removes it (`ReturnExpiredIfNotCleanedUp`).
    ReturnExpiredIfNotCleanedUp,
}

/// How long a state's values live after they were last written (or read), in which clock, and
/// whether expired values are still returned.
///
/// Expired values are removed when they are read, and by a clean-up that runs as the state's
/// clock moves (at watermarks for event time, at the runner's ticks for processing time), at
/// most every quarter of the time to live. A list's elements and a map's entries expire one by
/// one.
///
/// # Examples
/// ```
/// use ferroflow_core::operator::{StateTtl, TtlUpdate, TtlVisibility};
/// use std::time::Duration;
/// let ttl = StateTtl::processing_time(Duration::from_secs(600))
///     .update(TtlUpdate::OnReadAndWrite)
///     .visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp);
/// assert_eq!(ttl.ttl(), Duration::from_secs(600));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTtl {
    ttl: Duration,
    time: TtlTime,
    update: TtlUpdate,
    visibility: TtlVisibility,
}

impl StateTtl {
    /// Values live `ttl` of processing time after they were last written.
    pub const fn processing_time(ttl: Duration) -> Self {
        Self::new(ttl, TtlTime::ProcessingTime)
    }

    /// Values live until the watermark is `ttl` past the event time that last wrote them.
    pub const fn event_time(ttl: Duration) -> Self {
        Self::new(ttl, TtlTime::EventTime)
    }

    const fn new(ttl: Duration, time: TtlTime) -> Self {
        Self { ttl, time, update: TtlUpdate::OnCreateAndWrite, visibility: TtlVisibility::NeverReturnExpired }
    }

    /// When the time to live starts again.
    pub const fn update(self, update: TtlUpdate) -> Self {
        Self { update, ..self }
    }

    /// Whether expired values that were not removed yet are returned.
    pub const fn visibility(self, visibility: TtlVisibility) -> Self {
        Self { visibility, ..self }
    }

    /// How long values live.
    pub const fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The clock it is measured in.
    pub const fn time(&self) -> TtlTime {
        self.time
    }

    fn ttl_ms(&self) -> Timestamp {
        Timestamp::try_from(self.ttl.as_millis()).unwrap_or(Timestamp::MAX)
    }

    /// The time a write (or a refreshing read) at `now` stamps a value with.
    pub(super) fn stamp(&self, now: &Now) -> Timestamp {
        match self.time {
            TtlTime::ProcessingTime => now.processing,
            TtlTime::EventTime => now.event,
        }
    }

    /// The time expiry is judged at.
    fn current(&self, now: &Now) -> Timestamp {
        match self.time {
            TtlTime::ProcessingTime => now.processing,
            TtlTime::EventTime => now.watermark,
        }
    }

    /// A value stamped `at` has expired at `now`.
    pub(super) fn expired(&self, at: Timestamp, now: &Now) -> bool {
        at.saturating_add(self.ttl_ms()) <= self.current(now)
    }

    /// Reads never see expired values.
    pub(super) fn hides_expired(&self) -> bool {
        self.visibility == TtlVisibility::NeverReturnExpired
    }

    pub(super) fn refresh_on_read(&self) -> bool {
        self.update == TtlUpdate::OnReadAndWrite
    }

    /// An event-time TTL whose watermark reached the end of time: every value has expired.
    pub(super) fn at_end_of_time(&self, now: &Now) -> bool {
        self.time == TtlTime::EventTime && now.watermark == Timestamp::MAX
    }

    /// A whole time to live has passed since the clean-up at `last`: every value it kept has
    /// expired since, and the next one runs whether writes have paid for it or not.
    pub(super) fn overdue(&self, last: Option<Timestamp>, now: &Now) -> bool {
        last.is_none_or(|last| self.current(now).saturating_sub(last) >= self.ttl_ms())
    }

    /// A clean-up last run at `last` runs again at `now` (every quarter of the time to live).
    pub(super) fn sweep_due(&self, last: Option<Timestamp>, now: &Now) -> bool {
        let every = (self.ttl_ms() / 4).max(1);
        last.is_none_or(|last| self.current(now).saturating_sub(last) >= every)
    }

    pub(super) fn sweep_time(&self, now: &Now) -> Timestamp {
        self.current(now)
    }
}

/// The clocks a state access is judged by.
#[derive(Debug, Clone, Copy)]
pub(in crate::operator) struct Now {
    /// The event time of the record or event-time timer being handled (the watermark while a
    /// processing-time timer fires): what event-time TTL stamps writes with.
    pub(in crate::operator) event: Timestamp,
    /// The step's watermark.
    pub(in crate::operator) watermark: Timestamp,
    /// Processing time.
    pub(in crate::operator) processing: Timestamp,
}
