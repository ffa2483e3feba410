//! The window operator: routes records to tumbling/sliding or session windows, emits results, and
//! dead-letters records that are too late.

use super::aggregate::Aggregator;
use super::aligned::AlignedWindows;
use super::result::WindowResult;
use super::session::SessionWindows;
use super::spec::{Window, WindowKind, WindowSpec};
use crate::dead_letter::{DeadLetter, DeadLetterReason, OriginalBytes};
use crate::error::StateError;
use crate::operator::{Context, Operator};
use crate::record::{Key, Record, SourcePosition, Timestamp};
use crate::state::StateBackend;
use crate::time::Watermark;

/// Pushes window rows as records (event time = the window's last millisecond).
pub(super) struct Emitter<'a, V> {
    out: &'a mut Vec<Record<WindowResult<V>>>,
    emitted: u64,
    /// The latest window end emitted.
    newest_end: Option<Timestamp>,
}

impl<V> Emitter<'_, V> {
    pub fn emit(&mut self, key: Key, window: Window, value: V, revision: u32, is_final: bool) {
        self.emitted += 1;
        self.newest_end = Some(self.newest_end.map_or(window.end, |e| e.max(window.end)));
        self.out.push(Record {
            key: key.clone(),
            event_time: window.max_timestamp(),
            position: SourcePosition::default(),
            payload: WindowResult {
                key,
                window_start: window.start,
                window_end: window.end,
                value,
                revision,
                is_final,
            },
        });
    }
}

/// The revision of the next emission of a row last emitted as `emitted`, recorded as emitted.
pub(super) fn next_revision(emitted: &mut Option<u32>) -> u32 {
    let revision = emitted.map_or(0, |r| r + 1);
    *emitted = Some(revision);
    revision
}

pub(super) fn late_detail(ts: Timestamp, watermark: Timestamp, lateness: i64, window: Window) -> String {
    format!(
        "event time {ts} is too late: watermark {watermark} has passed the end of window [{}, {}) \
         plus allowed lateness {lateness} ms",
        window.start, window.end
    )
}

enum Windows<Acc> {
    Aligned(AlignedWindows<Acc>),
    Session(SessionWindows<Acc>),
}

/// Keyed event-time windows with an incremental aggregator and allowed lateness.
///
/// Built by [`Stream::window`](crate::Stream::window); see [`crate::window`] for the semantics.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use ferroflow_core::time::Watermark;
/// use ferroflow_core::window::{Count, WindowOperator, WindowSpec};
/// use ferroflow_core::{Context, Key, Operator, Record};
///
/// let spec = WindowSpec::tumbling(Duration::from_millis(10)).unwrap();
/// let mut op = WindowOperator::new("counts", spec, Count);
/// let mut ctx = Context::default();
/// let mut out = Vec::new();
/// let mut input = vec![Record::new("a", 3).with_key("k"), Record::new("b", 7).with_key("k")];
/// op.process_batch(&mut input, &mut ctx, &mut out);
/// op.on_watermark(Watermark(9), &mut ctx, &mut out);
/// assert_eq!(out.len(), 1);
/// assert_eq!((out[0].payload.window_start, out[0].payload.value), (0, 2));
/// assert!(out[0].payload.is_final);
/// ```
pub struct WindowOperator<T, A: Aggregator<T>> {
    uid: String,
    spec: WindowSpec,
    agg: A,
    windows: Windows<A::Acc>,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T, A: Aggregator<T>> std::fmt::Debug for WindowOperator<T, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowOperator")
            .field("uid", &self.uid)
            .field("spec", &self.spec)
            .field("open_windows", &self.open_windows())
            .finish()
    }
}

impl<T, A: Aggregator<T>> WindowOperator<T, A> {
    /// A window operator; `uid` names its state namespace and must be stable across upgrades.
    pub fn new(uid: impl Into<String>, spec: WindowSpec, agg: A) -> Self {
        let lateness = spec.allowed_lateness_ms();
        let windows = match spec.kind() {
            WindowKind::Tumbling { size_ms } => {
                Windows::Aligned(AlignedWindows::new(size_ms, size_ms, lateness))
            }
            WindowKind::Sliding { size_ms, slide_ms } => {
                Windows::Aligned(AlignedWindows::new(size_ms, slide_ms, lateness))
            }
            WindowKind::Session { gap_ms } => Windows::Session(SessionWindows::new(gap_ms, lateness)),
        };
        Self { uid: uid.into(), spec, agg, windows, _t: std::marker::PhantomData }
    }

    /// The window definition.
    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// Number of windows currently held in state (per key for sessions).
    pub fn open_windows(&self) -> usize {
        match &self.windows {
            Windows::Aligned(w) => w.open_windows(),
            Windows::Session(w) => w.open_windows(),
        }
    }

    /// The last watermark this operator saw.
    pub fn watermark(&self) -> Timestamp {
        match &self.windows {
            Windows::Aligned(w) => w.watermark(),
            Windows::Session(w) => w.watermark(),
        }
    }
}

impl<T, A> crate::operator::StatefulOperator for WindowOperator<T, A>
where
    T: OriginalBytes + Send + 'static,
    A: Aggregator<T>,
{
    fn set_id(&mut self, id: String) {
        self.uid = id;
    }
}

impl<T, A> Operator for WindowOperator<T, A>
where
    T: OriginalBytes + Send + 'static,
    A: Aggregator<T>,
{
    type In = T;
    type Out = WindowResult<A::Output>;

    fn process_batch(
        &mut self,
        input: &mut Vec<Record<T>>,
        ctx: &mut Context,
        out: &mut Vec<Record<WindowResult<A::Output>>>,
    ) {
        let mut accepted = 0u64;
        for r in input.drain(..) {
            let res = match &mut self.windows {
                Windows::Aligned(w) => w.add(&self.agg, &r),
                Windows::Session(w) => w.add(&self.agg, &r),
            };
            match res {
                Ok(()) => accepted += 1,
                Err(detail) => ctx.dead_letter(
                    DeadLetter::new(
                        DeadLetterReason::LateEvent,
                        detail,
                        r.position,
                        r.payload.original_bytes(),
                    )
                    .with_event_time(r.event_time),
                ),
            }
        }
        ctx.count_windowed(accepted);
        let mut em = Emitter { out, emitted: 0, newest_end: None };
        match &mut self.windows {
            Windows::Aligned(w) => w.flush_updates(&self.agg, &mut em),
            Windows::Session(w) => w.flush_updates(&self.agg, &mut em),
        }
        ctx.count_window_rows(em.emitted);
        if let Some(end) = em.newest_end {
            ctx.note_window_emitted(end);
        }
    }

    fn on_watermark(
        &mut self,
        watermark: Watermark,
        ctx: &mut Context,
        out: &mut Vec<Record<WindowResult<A::Output>>>,
    ) {
        let mut em = Emitter { out, emitted: 0, newest_end: None };
        match &mut self.windows {
            Windows::Aligned(w) => w.on_watermark(&self.agg, watermark.0, &mut em),
            Windows::Session(w) => w.on_watermark(&self.agg, watermark.0, &mut em),
        }
        ctx.count_window_rows(em.emitted);
        if let Some(end) = em.newest_end {
            ctx.note_window_emitted(end);
        }
    }

    fn state_ids(&self, ids: &mut Vec<String>) {
        ids.push(self.uid.clone());
    }

    fn snapshot_state(&mut self, state: &mut dyn StateBackend) -> Result<(), StateError> {
        match &mut self.windows {
            Windows::Aligned(w) => w.snapshot(&self.uid, state),
            Windows::Session(w) => w.snapshot(&self.uid, state),
        }
    }

    fn restore_state(&mut self, state: &dyn StateBackend) -> Result<(), StateError> {
        match &mut self.windows {
            Windows::Aligned(w) => w.restore(&self.uid, state),
            Windows::Session(w) => w.restore(&self.uid, state),
        }
    }

    fn consumes_records(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "window"
    }
}
