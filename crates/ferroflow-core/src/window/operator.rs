//! The window operator: routes records to tumbling/sliding or session windows, emits results, and
//! dead-letters records that are too late.

use super::aggregate::Aggregator;
use super::aligned::AlignedWindows;
use super::common::{Emitter, WindowState};
use super::result::WindowResult;
use super::session::SessionWindows;
use super::spec::{WindowKind, WindowSpec};
use crate::dead_letter::Rejection;
use crate::error::StateError;
use crate::operator::{Context, Operator};
use crate::record::{Record, Timestamp};
use crate::state::StateBackend;
use crate::time::Watermark;

// One per window operator, never moved per record: no reason to box the larger kind.
#[allow(clippy::large_enum_variant)]
enum Windows<Acc> {
    Aligned(AlignedWindows<Acc>),
    Session(SessionWindows<Acc>),
}

/// Runs `$call` on whichever kind of windows `$windows` holds (static dispatch, no vtable on the
/// per-record path).
macro_rules! each_kind {
    ($windows:expr, $w:ident => $call:expr) => {
        match $windows {
            Windows::Aligned($w) => $call,
            Windows::Session($w) => $call,
        }
    };
}

impl<Acc: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + 'static> WindowState<Acc>
    for Windows<Acc>
{
    fn watermark(&self) -> Timestamp {
        each_kind!(self, w => w.watermark())
    }

    fn attach(&mut self, budget: &crate::state::StateBudget) {
        each_kind!(self, w => w.attach(budget))
    }

    fn before_batch<T>(&mut self, records: &[Record<T>]) {
        each_kind!(self, w => w.before_batch(records))
    }

    fn after_batch(&mut self) {
        each_kind!(self, w => w.after_batch())
    }

    fn report_failure(&mut self, ctx: &mut Context) {
        each_kind!(self, w => w.report_failure(ctx))
    }

    #[inline]
    fn add<T, A: Aggregator<T, Acc = Acc>>(&mut self, agg: &A, record: &Record<T>) -> Result<(), Rejection> {
        each_kind!(self, w => w.add(agg, record))
    }

    fn flush_updates<A: Aggregator<T, Acc = Acc>, T>(&mut self, agg: &A, out: &mut Emitter<'_, A::Output>) {
        each_kind!(self, w => w.flush_updates(agg, out))
    }

    fn on_watermark<A: Aggregator<T, Acc = Acc>, T>(
        &mut self,
        agg: &A,
        watermark: Timestamp,
        out: &mut Emitter<'_, A::Output>,
    ) {
        each_kind!(self, w => w.on_watermark(agg, watermark, out))
    }

    fn has_pending(&self) -> bool {
        each_kind!(self, w => w.has_pending())
    }

    fn resume<A: Aggregator<T, Acc = Acc>, T>(&mut self, agg: &A, out: &mut Emitter<'_, A::Output>) {
        each_kind!(self, w => w.resume(agg, out))
    }

    fn open_windows(&self) -> usize {
        each_kind!(self, w => w.open_windows())
    }

    fn snapshot(&mut self, ns: &str, state: &mut dyn StateBackend) -> Result<(), StateError> {
        each_kind!(self, w => w.snapshot(ns, state))
    }

    fn restore(&mut self, ns: &str, state: &dyn StateBackend) -> Result<(), StateError> {
        each_kind!(self, w => w.restore(ns, state))
    }

    fn retain_keys(&mut self, keep: &dyn Fn(&crate::record::Key) -> bool) {
        each_kind!(self, w => w.retain_keys(keep))
    }
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
        self.windows.open_windows()
    }

    /// The last watermark this operator saw.
    pub fn watermark(&self) -> Timestamp {
        self.windows.watermark()
    }

    /// Runs `f` on the windows with an emitter into `out`, and counts what it emitted.
    fn emitting(
        &mut self,
        ctx: &mut Context,
        out: &mut Vec<Record<WindowResult<A::Output>>>,
        f: impl FnOnce(&mut Windows<A::Acc>, &A, &mut Emitter<'_, A::Output>),
    ) {
        let mut em = Emitter { out, emitted: 0, newest_end: None };
        f(&mut self.windows, &self.agg, &mut em);
        ctx.count_window_rows(em.emitted);
        if let Some(end) = em.newest_end {
            ctx.note_window_emitted(end);
        }
        self.windows.report_failure(ctx);
    }

    /// Emits the rest of a firing at once: something other than the runner's chunk-by-chunk
    /// `resume_output` reached the operator, which must see it after every row of the firing.
    fn finish_firing(&mut self, ctx: &mut Context, out: &mut Vec<Record<WindowResult<A::Output>>>) {
        while self.windows.has_pending() {
            self.emitting(ctx, out, |w, agg, em| w.resume(agg, em));
        }
    }
}

impl<T, A> crate::operator::StatefulOperator for WindowOperator<T, A>
where
    T: Send + 'static,
    A: Aggregator<T>,
{
    fn set_id(&mut self, id: String) {
        self.uid = id;
    }
}

impl<T, A> Operator for WindowOperator<T, A>
where
    T: Send + 'static,
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
        self.finish_firing(ctx, out);
        let (mut accepted, mut second_accepted) = (0u64, 0u64);
        self.windows.before_batch(input);
        for r in input.drain(..) {
            let res = self.windows.add(&self.agg, &r);
            match res {
                Ok(()) => {
                    accepted += 1;
                    second_accepted += u64::from(ctx.is_second_input(r.position));
                }
                Err(rejection) => ctx.reject(r.position, Some(r.event_time), rejection),
            }
        }
        ctx.count_windowed(accepted);
        ctx.count_second_input(|c| &mut c.records_windowed, second_accepted);
        let mut em = Emitter { out, emitted: 0, newest_end: None };
        self.windows.flush_updates(&self.agg, &mut em);
        ctx.count_window_rows(em.emitted);
        if let Some(end) = em.newest_end {
            ctx.note_window_emitted(end);
        }
        self.windows.after_batch();
        self.windows.report_failure(ctx);
    }

    fn on_watermark(
        &mut self,
        watermark: Watermark,
        ctx: &mut Context,
        out: &mut Vec<Record<WindowResult<A::Output>>>,
    ) {
        self.finish_firing(ctx, out);
        self.emitting(ctx, out, |w, agg, em| w.on_watermark(agg, watermark.0, em));
    }

    fn has_pending_output(&self) -> bool {
        self.windows.has_pending()
    }

    fn resume_output(&mut self, ctx: &mut Context, out: &mut Vec<Record<WindowResult<A::Output>>>) {
        self.emitting(ctx, out, |w, agg, em| w.resume(agg, em));
    }

    fn state_ids(&self, ids: &mut Vec<String>) {
        ids.push(self.uid.clone());
    }

    /// Windows of every kind spill what does not fit in the budget.
    fn attach_budget(&mut self, budget: &crate::state::StateBudget) {
        self.windows.attach(budget);
    }

    fn snapshot_state(&mut self, state: &mut dyn StateBackend) -> Result<(), StateError> {
        self.windows.snapshot(&self.uid, state)
    }

    fn restore_state(&mut self, state: &dyn StateBackend) -> Result<(), StateError> {
        self.windows.restore(&self.uid, state)
    }

    fn retain_keys(&mut self, keep: &dyn Fn(&crate::record::Key) -> bool) {
        self.windows.retain_keys(keep);
    }

    fn consumes_records(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "window"
    }
}
