//! The consumer's callbacks: rebalances, statistics (lag), commit results.
//!
//! A rebalance callback runs inside `poll`, on the poll thread. An assignment asks the job's
//! hand-over hook where the partitions resume, assigns them there and queues the event behind
//! everything read before it. A revocation queues the event, hands the queue to the job and waits
//! until the job has released the partitions (processed what came before, checkpointed them,
//! ended their tasks); only then does it unassign them. librdkafka rejoins the group (eager
//! protocol) or lets them go (cooperative) only after that call, so their next owner, or this
//! instance when they come back, finds their newest state. Kafka Streams commits in
//! `onPartitionsRevoked` for the same reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferroflow_core::PartitionId;
use ferroflow_core::source::SourceEvent;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::error::KafkaError;
use crate::shared::{Shared, lock};
use crate::stats::{LogRange, PartitionLag};

/// How long one wait for the job to release revoked partitions lasts before the thread checks
/// whether the source is stopping.
const RELEASE_WAIT: Duration = Duration::from_millis(100);

/// The consumer's callbacks: rebalances (assign at checkpointed offsets, release before
/// revoking), statistics (lag), commit results.
#[allow(missing_debug_implementations)] // holds locks and channels only
pub struct SourceContext {
    pub(crate) shared: Arc<Shared>,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let topics = &self.shared.topics;
        let (mut lags, mut ranges) = (BTreeMap::new(), BTreeMap::new());
        for name in topics.names() {
            let Some(topic) = statistics.topics.get(name) else { continue };
            for (p, s) in &topic.partitions {
                // -1 is librdkafka's internal unassigned partition; unowned partitions report -1 lag.
                let Some(pid) = topics.id(name, *p) else { continue };
                if s.hi_offset >= 0 {
                    let end = if s.ls_offset >= 0 { s.ls_offset.min(s.hi_offset) } else { s.hi_offset };
                    ranges.insert(pid, LogRange { start: s.lo_offset.max(0), end, app: s.app_offset });
                }
                if s.consumer_lag < 0 {
                    continue;
                }
                lags.insert(
                    pid,
                    PartitionLag {
                        high_watermark: s.hi_offset,
                        position: s.hi_offset - s.consumer_lag,
                        lag: s.consumer_lag,
                    },
                );
            }
        }
        self.shared.stats.set_lag(lags);
        self.shared.stats.set_log_range(ranges);
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol;
        use rdkafka::types::RDKafkaRespErr;
        self.shared.stats.rebalanced();
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let partitions: Vec<PartitionId> =
            tpl.elements().iter().filter_map(|e| self.shared.topics.id(e.topic(), e.partition())).collect();
        // Task p of a job over two topics runs partition p of both: an assignment or revocation
        // that splits them (partition counts differ, an incremental protocol moving one alone)
        // cannot run; the task's state would follow one side only.
        let unpaired = self.shared.topics.unpaired(&partitions).or_else(|| {
            (cooperative && self.shared.topics.count() > 1).then(|| {
                "an incremental (cooperative) rebalance, which may move one topic's partition alone"
                    .to_owned()
            })
        });
        if let Some(why) = unpaired {
            tracing::error!(topics = %self.shared.topics, ?partitions, %why, "the assignment is not co-partitioned");
            self.shared.set_failure(KafkaError::Config {
                setting: "kafka.co_topic".into(),
                problem: format!(
                    "the group gave this member {why}: both topics need the same number of partitions \
                     and the eager `range` assignor (which the source sets), so that partition p of both \
                     lands on one member"
                ),
            });
            if matches!(err, RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
                let _ = consumer.unassign();
            }
            return;
        }
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, cooperative, partitions, tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer, cooperative, partitions, tpl)
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; dropping the assignment");
                let _ = consumer.unassign();
            }
        }
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {}

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        // Successes are counted when the commit is handed to the client; this only sees failures
        // reported by the broker.
        if let Err(e) = &result {
            tracing::warn!(error = %e, "committing checkpointed offsets failed; lag tools may lag behind");
            self.shared.stats.committed(false);
        }
    }
}

impl SourceContext {
    fn assign(
        &self,
        consumer: &BaseConsumer<Self>,
        cooperative: bool,
        partitions: Vec<PartitionId>,
        tpl: &mut TopicPartitionList,
    ) {
        for (p, offset) in self.shared.start_offsets(&partitions) {
            let Some((topic, partition)) = self.shared.topics.of(p) else { continue };
            if let Err(e) = tpl.set_partition_offset(topic, partition, offset) {
                tracing::error!(topic, partition, error = %e, "cannot set the resume offset");
            }
        }
        let res = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
        match res {
            Ok(()) => {
                tracing::info!(topics = %self.shared.topics, ?partitions, "partitions assigned");
                self.shared.enqueue(SourceEvent::PartitionsAssigned(partitions));
            }
            Err(e) => {
                self.shared.forget_partitions(&partitions);
                tracing::error!(error = %e, "assigning partitions failed");
            }
        }
    }

    fn revoke(
        &self,
        consumer: &BaseConsumer<Self>,
        cooperative: bool,
        partitions: Vec<PartitionId>,
        tpl: &TopicPartitionList,
    ) {
        tracing::info!(topics = %self.shared.topics, ?partitions, "partitions revoked");
        self.shared.enqueue(SourceEvent::PartitionsRevoked(partitions.clone()));
        // From here on their messages still in librdkafka's queues are dropped unread.
        self.shared.forget_partitions(&partitions);
        // Everything up to the revocation goes to the job, and the partitions stay assigned until
        // the job has released them: librdkafka rejoins the group (and another member gets them)
        // only once they are unassigned, so their next owner finds the checkpoint taken here.
        if self.shared.send_queued(|| self.shared.idle_wait()) {
            let lifecycle = lock(&self.shared.lifecycle).clone();
            if let Some(l) = lifecycle {
                self.shared.paused(|| {
                    while !l.wait_released(&partitions, RELEASE_WAIT) {
                        if self.shared.stopping() || self.shared.tx.get().is_none_or(|tx| tx.is_closed()) {
                            return;
                        }
                    }
                    tracing::info!(?partitions, "the job released the revoked partitions");
                });
            }
        }
        let res = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
        if let Err(e) = res {
            tracing::error!(error = %e, "unassigning partitions failed");
        }
        self.shared.headers.forget_partitions(&partitions);
    }
}
