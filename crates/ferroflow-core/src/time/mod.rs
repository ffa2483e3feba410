//! Event time: watermarks per partition, idleness, and the processing-time clock.

mod ceiling;
mod clock;
mod watermark;

pub use ceiling::WatermarkCeiling;
pub use clock::{Clock, ManualClock, SystemClock};
pub use watermark::{TrackerSnapshot, Watermark, WatermarkStrategy, WatermarkTracker};
