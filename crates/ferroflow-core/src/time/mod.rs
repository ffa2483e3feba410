//! Event time: watermarks per partition, idleness, and the processing-time clock.

mod clock;
mod watermark;

pub use clock::{Clock, ManualClock, SystemClock};
pub use watermark::{Watermark, WatermarkStrategy, WatermarkTracker};
