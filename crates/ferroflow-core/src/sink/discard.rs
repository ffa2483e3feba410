//! The dead-letter sink of a job that said it keeps none.

use super::Sink;
use crate::dead_letter::DeadLetter;
use crate::error::SinkError;

/// Logs each dead letter at `warn` (reason, position, detail; not the bytes) and drops it. The
/// job's counters have counted it by reason already. Chosen with
/// [`JobBuilder::discard_dead_letters`](crate::runtime::JobBuilder::discard_dead_letters).
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardDeadLetters;

impl Sink<DeadLetter> for DiscardDeadLetters {
    async fn write_batch(&mut self, batch: Vec<DeadLetter>) -> Result<(), SinkError> {
        for d in batch {
            tracing::warn!(reason = %d.reason, position = %d.position, detail = %d.detail, "dead letter discarded");
        }
        Ok(())
    }
}
