//! The poll thread: fills batches from the consumer and hands them, with the partition events
//! the rebalance callbacks queued between them, to the job in order.
//!
//! Why a thread: one async `recv()` per message measured under 50K messages/s; a blocking poll
//! loop that packs a batch into one buffer and hands it over whole runs at broker speed.
//!
//! Backpressure: when the job's channel is full the thread keeps polling into the next batch, so
//! short hiccups cost nothing; once that batch is full it stops taking messages and waits (with
//! the source's clock stopped), holding at most the queued events, one batch and librdkafka's
//! bounded prefetch queue while the broker keeps the backlog.
//!
//! Partitions are not paused: pausing drops librdkafka's prefetched data and some brokers (tansu)
//! then stall the resumed fetch. In group mode, a wait longer than `max.poll.interval.ms` makes the
//! instance leave the group; it rejoins when the job catches up and resumes at the positions it
//! delivered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroflow_core::PartitionId;
use ferroflow_core::source::SourceEvent;
use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::error::KafkaError;
use crate::shared::{Consumer_, Shared};

/// How long one poll waits when there is nothing buffered (also the pause-loop tick).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// How long one poll waits while the job's channel is full.
const BUSY_POLL: Duration = Duration::from_millis(5);

/// How often self-assignment looks for new partitions.
const PARTITION_DISCOVERY: Duration = Duration::from_secs(10);

/// The poll thread's state.
pub(crate) struct Poller {
    pub(crate) consumer: Arc<Consumer_>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) max_records: usize,
    pub(crate) max_wait: Duration,
    /// Assign every partition of the topic here instead of joining the group protocol.
    pub(crate) self_assign: bool,
}

impl Poller {
    pub(crate) fn run(self) {
        let mut owned: Vec<PartitionId> = Vec::new();
        let mut last_discovery: Option<Instant> = None;
        while !self.shared.stopping() {
            if self.self_assign && last_discovery.is_none_or(|t| t.elapsed() >= PARTITION_DISCOVERY) {
                last_discovery = Some(Instant::now());
                if let Err(e) = self.assign_new_partitions(&mut owned) {
                    tracing::warn!(error = %e, "partition discovery failed; retrying");
                    // Try again in about a second.
                    last_discovery = Instant::now().checked_sub(PARTITION_DISCOVERY - Duration::from_secs(1));
                }
            }
            let quiet = self.fill();
            // A failure (lost offsets, a fatal client error) stops the source before anything read
            // after it reaches the job.
            if let Some(e) = self.shared.take_failure() {
                self.fail(e);
                return;
            }
            self.shared.cut_batch();
            if !self.shared.send_queued(|| self.wait_polling()) {
                return;
            }
            if quiet {
                self.shared.heartbeat();
            }
        }
    }

    /// Fills the batch being built: waits long for the first record, then at most `max_wait` in
    /// total; stops early when a callback queued an event or something failed. True when the
    /// broker had nothing at all.
    fn fill(&self) -> bool {
        let started = Instant::now();
        loop {
            let building = self.shared.building();
            if building >= self.max_records {
                return false;
            }
            let timeout =
                if building == 0 { IDLE_POLL } else { self.max_wait.saturating_sub(started.elapsed()) };
            match self.consumer.poll(timeout) {
                None if self.shared.building() == 0 && !self.shared.queued() => return true,
                None => return false,
                Some(Ok(m)) => self.shared.append(&self.consumer, &m),
                Some(Err(e)) => {
                    if is_fatal(&e) {
                        self.shared.set_failure(KafkaError::client("consuming", e));
                        return false;
                    }
                    tracing::warn!(error = %e, "kafka consumer error (librdkafka retries)");
                }
            }
            if self.shared.failed()
                || self.shared.queued()
                || (self.shared.building() > 0 && started.elapsed() >= self.max_wait)
            {
                return false;
            }
        }
    }

    /// While the job's channel is full: polls into the next batch until it is full, then waits
    /// with the clock stopped.
    fn wait_polling(&self) {
        if self.shared.building() >= self.max_records || self.shared.failed() {
            self.shared.idle_wait();
            return;
        }
        match self.consumer.poll(BUSY_POLL) {
            Some(Ok(m)) => self.shared.append(&self.consumer, &m),
            Some(Err(e)) => tracing::warn!(error = %e, "kafka consumer error while the job is busy"),
            None => {}
        }
    }

    /// Sends `e` to the job (its channel closes after it: the job stops). Gives up when the
    /// source is dropped meanwhile: its owner joins this thread, and a blocking send into a full
    /// channel nobody reads any more would never return.
    fn fail(&self, e: KafkaError) {
        let Some(tx) = self.shared.tx.get() else { return };
        let mut e = Err(e);
        while !self.shared.stopping() {
            match tx.try_send(e) {
                Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                Err(tokio::sync::mpsc::error::TrySendError::Full(back)) => {
                    e = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// Self-assignment: assigns partitions of the topic this instance does not read yet, at
    /// their resume offsets.
    fn assign_new_partitions(&self, owned: &mut Vec<PartitionId>) -> Result<(), KafkaError> {
        // Configuration refuses a second topic with self-assignment.
        let topic_name = self.shared.topics.first();
        let md = self
            .consumer
            .fetch_metadata(Some(topic_name), Duration::from_secs(10))
            .map_err(|e| KafkaError::client("reading topic metadata", e))?;
        let Some(topic) = md.topics().iter().find(|t| t.name() == topic_name) else { return Ok(()) };
        if let Some(err) = topic.error() {
            return Err(KafkaError::Delivery(format!("topic {topic_name}: {err:?}")));
        }
        let added: Vec<PartitionId> = topic
            .partitions()
            .iter()
            .filter_map(|p| PartitionId::try_from(p.id()).ok())
            .filter(|p| !owned.contains(p))
            .collect();
        if added.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in self.shared.start_offsets(&added) {
            let Some((_, partition)) = self.shared.topics.of(p) else { continue };
            tpl.add_partition_offset(topic_name, partition, offset)
                .map_err(|e| KafkaError::client("building the assignment", e))?;
        }
        if let Err(e) = self.consumer.incremental_assign(&tpl) {
            self.shared.forget_partitions(&added);
            return Err(KafkaError::client("assigning partitions", e));
        }
        tracing::info!(topic = %topic_name, partitions = ?added, "partitions assigned (all_partitions)");
        owned.extend(&added);
        self.shared.enqueue(SourceEvent::PartitionsAssigned(added));
        Ok(())
    }
}

/// Errors the consumer cannot recover from by itself (everything else librdkafka retries).
fn is_fatal(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::Fatal
                | C::Authentication
                | C::SaslAuthenticationFailed
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::SSL,
        )
    )
}
