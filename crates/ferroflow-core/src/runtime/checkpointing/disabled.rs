//! Built without the `checkpoints` feature: no value of [`Checkpointing`] exists, so every call
//! below is unreachable and the processing loop's `Option<Checkpointing>` is always `None`.

use std::time::Duration;

use super::Resumed;
use crate::error::JobError;
use crate::metrics::JobCounters;
use crate::operator::{Context, Operator};
use crate::record::{PartitionId, Record};
use crate::runtime::chains::{Backend, Chains};
use crate::runtime::processing::JobState;
use crate::source::Source;

/// Checkpointing of a run; uninhabited without the `checkpoints` feature.
#[derive(Debug)]
pub(crate) enum Checkpointing {}

impl Checkpointing {
    pub(crate) fn interval(&self) -> Duration {
        match *self {}
    }

    pub(crate) fn state(&mut self) -> &mut Backend {
        match *self {}
    }

    pub(crate) fn runs_as_instances(&self) -> bool {
        match *self {}
    }

    pub(crate) async fn restore<C: Operator, S: Source<C::In>>(
        &mut self,
        _chains: &mut Chains<C>,
        _source: &mut S,
        _counters: &JobCounters,
    ) -> Result<Option<Resumed>, JobError> {
        match *self {}
    }

    pub(crate) async fn take<C: Operator>(
        &mut self,
        _chains: &mut Chains<C>,
        _job: &mut JobState,
        _savepoint: Option<&str>,
        _counters: &JobCounters,
    ) -> Result<(), JobError> {
        match *self {}
    }

    pub(crate) fn release<C: Operator>(
        &mut self,
        _chains: &mut Chains<C>,
        _partitions: &[PartitionId],
        _job: &mut JobState,
        _ctx: &mut Context,
        _out: &mut Vec<Record<C::Out>>,
    ) -> Result<(), JobError> {
        match *self {}
    }

    pub(crate) fn start_partitions(
        &mut self,
        _partitions: &[PartitionId],
        _job: &mut JobState,
    ) -> Result<(), JobError> {
        match *self {}
    }

    pub(crate) async fn drop_superseded(&mut self, _job: &mut JobState) -> Result<(), JobError> {
        match *self {}
    }
}
