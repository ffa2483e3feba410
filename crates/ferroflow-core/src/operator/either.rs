//! One of two chains with the same input and output, chosen when the job is built.

use either::Either;

use super::{Context, ExchangePorts, Operator, Signal};
use crate::error::StateError;
use crate::record::{Key, PartitionId, Record, Timestamp};
use crate::state::StateBackend;
use crate::time::Watermark;

/// Runs whichever chain it holds: a job whose shape a setting decides (a stage switched on in
/// the configuration) without boxing its steps. Every call goes to the chosen chain; the other
/// does not exist at run time.
///
/// # Examples
/// ```
/// use ferroflow_core::join::Either;
/// use ferroflow_core::operator::IntoOperator;
/// use ferroflow_core::{Context, Operator, Record, Stream};
///
/// let shouting = true;
/// let mut job = match shouting {
///     true => Either::Left(Stream::<String>::new().map(|s: String| s.to_uppercase()).into_operator()),
///     false => Either::Right(Stream::<String>::new().filter(|s: &String| !s.is_empty()).into_operator()),
/// };
/// let (mut ctx, mut out) = (Context::default(), Vec::new());
/// job.process_batch(&mut vec![Record::new("hi".to_owned(), 0)], &mut ctx, &mut out);
/// assert_eq!(out[0].payload, "HI");
/// ```
impl<A, B> Operator for Either<A, B>
where
    A: Operator,
    B: Operator<In = A::In, Out = A::Out>,
{
    type In = A::In;
    type Out = A::Out;

    #[inline]
    fn process_batch(
        &mut self,
        input: &mut Vec<Record<A::In>>,
        ctx: &mut Context,
        out: &mut Vec<Record<A::Out>>,
    ) {
        match self {
            Either::Left(a) => a.process_batch(input, ctx, out),
            Either::Right(b) => b.process_batch(input, ctx, out),
        }
    }

    fn on_signal(&mut self, signal: &Signal, ctx: &mut Context) {
        match self {
            Either::Left(a) => a.on_signal(signal, ctx),
            Either::Right(b) => b.on_signal(signal, ctx),
        }
    }

    fn on_watermark(&mut self, watermark: Watermark, ctx: &mut Context, out: &mut Vec<Record<A::Out>>) {
        match self {
            Either::Left(a) => a.on_watermark(watermark, ctx, out),
            Either::Right(b) => b.on_watermark(watermark, ctx, out),
        }
    }

    fn on_processing_time(&mut self, now: Timestamp, ctx: &mut Context, out: &mut Vec<Record<A::Out>>) {
        match self {
            Either::Left(a) => a.on_processing_time(now, ctx, out),
            Either::Right(b) => b.on_processing_time(now, ctx, out),
        }
    }

    fn has_pending_output(&self) -> bool {
        self.as_ref().either(Operator::has_pending_output, Operator::has_pending_output)
    }

    fn resume_output(&mut self, ctx: &mut Context, out: &mut Vec<Record<A::Out>>) {
        match self {
            Either::Left(a) => a.resume_output(ctx, out),
            Either::Right(b) => b.resume_output(ctx, out),
        }
    }

    fn fires_on_processing_time(&self) -> bool {
        self.as_ref().either(Operator::fires_on_processing_time, Operator::fires_on_processing_time)
    }

    fn attach_budget(&mut self, budget: &crate::state::StateBudget) {
        match self {
            Either::Left(a) => a.attach_budget(budget),
            Either::Right(b) => b.attach_budget(budget),
        }
    }

    fn snapshot_state(&mut self, state: &mut dyn StateBackend) -> Result<(), StateError> {
        match self {
            Either::Left(a) => a.snapshot_state(state),
            Either::Right(b) => b.snapshot_state(state),
        }
    }

    fn restore_state(&mut self, state: &dyn StateBackend) -> Result<(), StateError> {
        match self {
            Either::Left(a) => a.restore_state(state),
            Either::Right(b) => b.restore_state(state),
        }
    }

    fn consumes_records(&self) -> bool {
        self.as_ref().either(Operator::consumes_records, Operator::consumes_records)
    }

    fn name(&self) -> &'static str {
        self.as_ref().either(Operator::name, Operator::name)
    }

    fn steps(&self) -> usize {
        self.as_ref().either(Operator::steps, Operator::steps)
    }

    fn step_names(&self, names: &mut Vec<&'static str>) {
        match self {
            Either::Left(a) => a.step_names(names),
            Either::Right(b) => b.step_names(names),
        }
    }

    fn state_ids(&self, ids: &mut Vec<String>) {
        match self {
            Either::Left(a) => a.state_ids(ids),
            Either::Right(b) => b.state_ids(ids),
        }
    }

    fn splits_by_key(&self) -> bool {
        self.as_ref().either(Operator::splits_by_key, Operator::splits_by_key)
    }

    fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        match self {
            Either::Left(a) => a.retain_keys(keep),
            Either::Right(b) => b.retain_keys(keep),
        }
    }

    fn connect_exchanges(&mut self, ports: &mut ExchangePorts<'_>) {
        match self {
            Either::Left(a) => a.connect_exchanges(ports),
            Either::Right(b) => b.connect_exchanges(ports),
        }
    }

    fn runs_every_batch(&self) -> bool {
        self.as_ref().either(Operator::runs_every_batch, Operator::runs_every_batch)
    }

    fn notes_after_exchange(&self, exchanged: &mut bool) -> bool {
        match self {
            Either::Left(a) => a.notes_after_exchange(exchanged),
            Either::Right(b) => b.notes_after_exchange(exchanged),
        }
    }

    fn emits_before_exchange(&self, exchanged: &mut bool) -> bool {
        match self {
            Either::Left(a) => a.emits_before_exchange(exchanged),
            Either::Right(b) => b.emits_before_exchange(exchanged),
        }
    }

    fn observe_event_times(&mut self, observations: &[(PartitionId, Timestamp)], ctx: &mut Context) {
        match self {
            Either::Left(a) => a.observe_event_times(observations, ctx),
            Either::Right(b) => b.observe_event_times(observations, ctx),
        }
    }
}
