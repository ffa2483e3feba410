//! A limit the job's watermark may not pass, set by something outside the job's inputs.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::Watermark;

/// The highest watermark a job may reach for now, moved by something the job's records wait
/// for: a [`BroadcastTable`](crate::join::BroadcastTable)'s input, whose versions must have
/// arrived before an event that looks them up may fire.
///
/// A source hands one to the runner ([`Source::watermark_ceiling`](crate::source::Source)); the
/// runner holds every task's watermark at or below it, and lets the watermark follow as the ceiling
/// rises (after each batch and on every periodic tick). A ceiling may come down again (a table
/// input that was idle delivers again): a watermark never goes back, so it then stays where it
/// stands until the ceiling passes it. Several ceilings combine by minimum.
///
/// # Examples
/// ```
/// use ferroflow_core::time::{Watermark, WatermarkCeiling};
/// let (ceiling, set) = WatermarkCeiling::new();
/// assert_eq!(ceiling.get(), Watermark::MIN);
/// set(Watermark(1_000));
/// assert_eq!(ceiling.get(), Watermark(1_000));
/// let (other, set_other) = WatermarkCeiling::new();
/// set_other(Watermark(500));
/// assert_eq!(ceiling.and(&other).get(), Watermark(500), "the lower of the two");
/// ```
#[derive(Debug, Clone)]
pub struct WatermarkCeiling {
    limits: Vec<Arc<AtomicI64>>,
}

impl WatermarkCeiling {
    /// A ceiling at [`Watermark::MIN`], and the function that moves it.
    pub fn new() -> (Self, impl Fn(Watermark) + Send + Sync + 'static) {
        let limit = Arc::new(AtomicI64::new(i64::MIN));
        let set = {
            let limit = Arc::clone(&limit);
            move |w: Watermark| limit.store(w.0, Ordering::Release)
        };
        (Self { limits: vec![limit] }, set)
    }

    /// The ceiling now: the lowest of its limits.
    #[inline]
    pub fn get(&self) -> Watermark {
        Watermark(self.limits.iter().map(|l| l.load(Ordering::Acquire)).min().unwrap_or(i64::MAX))
    }

    /// Both ceilings at once: the lower of the two holds.
    pub fn and(&self, other: &WatermarkCeiling) -> WatermarkCeiling {
        let mut limits = self.limits.clone();
        limits.extend(other.limits.iter().cloned());
        WatermarkCeiling { limits }
    }

    /// The lower of two optional ceilings (either may be absent).
    pub fn either(a: Option<WatermarkCeiling>, b: Option<WatermarkCeiling>) -> Option<WatermarkCeiling> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.and(&b)),
            (a, b) => a.or(b),
        }
    }
}
