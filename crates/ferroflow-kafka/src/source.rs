//! The Kafka source: a consumer-group member polling in batches on its own thread.
//!
//! Offsets come from the job's checkpoints, never from auto-commit: `seek` (called by the
//! runner after a restore) sets where each partition resumes, partitions the checkpoint does
//! not know start at [`StartOffset`](crate::StartOffset), and after every checkpoint the
//! checkpointed offsets are committed to the group only so that lag tools see progress. A
//! partition that cannot resume where its checkpoint says (retention deleted the records there)
//! stops the job by default (`kafka.on_data_loss`).
//!
//! The pieces: [`poll`](crate::poll) (the thread), [`shared`](crate::shared) (the ordered queue, read
//! positions and the source's clock), [`rebalance`](crate::rebalance) (the consumer's callbacks).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use ferroflow_core::source::{CheckpointListener, PartitionLifecycle, Source, SourceEvent};
use ferroflow_core::{PartitionId, SourceError};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::config::{Assignment, KafkaSourceConfig};
use crate::error::KafkaError;
use crate::headers::HeaderStash;
use crate::poll::Poller;
use crate::rebalance::SourceContext;
use crate::shared::{Consumer_, Shared, lock};
use crate::stats::SourceStats;
use crate::topics::Topics;

/// Reads one topic as a member of a consumer group, in batches, resuming from checkpoints.
///
/// Each Kafka partition is one ferroflow partition (its own watermark); a record's position is
/// `(partition, offset)` and its payload the message value (a missing value is empty bytes and
/// fails decoding downstream, as a dead letter).
///
/// With [`co_topic`](KafkaSourceConfig::co_topic) it reads two co-partitioned topics as one group
/// member, the two inputs of a job per partition (a join): partition `p` of the second topic is
/// the job's partition [`RIGHT_PARTITIONS`](ferroflow_core::source::RIGHT_PARTITIONS)` + p`, and
/// the group gives partition `p` of both topics to the same instance, so the task that joins them
/// moves between instances with both, as a Kafka Streams task does.
///
/// # Examples
/// ```no_run
/// use ferroflow_kafka::{KafkaSource, KafkaSourceConfig};
/// let config = KafkaSourceConfig { brokers: "127.0.0.1:9092".into(), topic: "events".into(), ..Default::default() };
/// let source = KafkaSource::new(&config).unwrap();
/// let stats = source.stats(); // records, bytes, lag per partition
/// # let _ = (source, stats);
/// ```
pub struct KafkaSource {
    config: KafkaSourceConfig,
    consumer: Arc<Consumer_>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    rx: Option<mpsc::Receiver<Result<SourceEvent<Bytes>, KafkaError>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").field("config", &self.config).finish()
    }
}

impl KafkaSource {
    /// Creates the consumer and subscribes; reading starts on the first `next_event`.
    pub fn new(config: &KafkaSourceConfig) -> Result<Self, KafkaError> {
        config.validate()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut shared = Shared::new(
            Topics::new(&config.topic, config.co_topic.as_deref()),
            config.start_offset,
            config.on_data_loss,
            HeaderStash::with_budget(config.header_stash_max_bytes),
            Arc::clone(&stop),
        );
        shared.statistics = config.statistics_interval_ms > 0;
        let shared = Arc::new(shared);
        shared.stats.watch_headers(shared.headers.clone());
        let consumer: Consumer_ = config
            .client_config()
            .create_with_context(SourceContext { shared: Arc::clone(&shared) })
            .map_err(|e| KafkaError::client("creating the consumer", e))?;
        if config.assignment == Assignment::Group {
            let topics: Vec<&str> = shared.topics.names().iter().map(String::as_str).collect();
            consumer.subscribe(&topics).map_err(|e| KafkaError::client("subscribing", e))?;
        }
        Ok(Self {
            config: config.clone(),
            consumer: Arc::new(consumer),
            shared,
            stop,
            rx: None,
            thread: None,
        })
    }

    /// The original headers of messages read (give it to the dead-letter sink).
    pub fn header_stash(&self) -> HeaderStash {
        self.shared.headers.clone()
    }

    /// Live counters (records, bytes, backpressure time, lag per partition).
    pub fn stats(&self) -> SourceStats {
        self.shared.stats.clone()
    }

    fn start(&mut self) -> Result<(), KafkaError> {
        let (tx, rx) = mpsc::channel(2);
        if self.shared.tx.set(tx).is_err() {
            return Err(KafkaError::Delivery("the poll thread was started twice".into()));
        }
        let poller = Poller {
            consumer: Arc::clone(&self.consumer),
            shared: Arc::clone(&self.shared),
            max_records: self.config.batch_max_records,
            max_wait: Duration::from_millis(self.config.batch_max_wait_ms),
            self_assign: self.config.assignment == Assignment::AllPartitions,
        };
        let handle = std::thread::Builder::new()
            .name("ferroflow-kafka-poll".into())
            .spawn(move || poller.run())
            .map_err(|e| KafkaError::Delivery(format!("cannot start the poll thread: {e}")))?;
        self.rx = Some(rx);
        self.thread = Some(handle);
        Ok(())
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The thread notices within one poll (≤ 100 ms); waiting for it lets the consumer leave
        // the group cleanly before anything else (brokers, runtimes) goes away.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Source<Bytes> for KafkaSource {
    async fn next_event(&mut self) -> Result<Option<SourceEvent<Bytes>>, SourceError> {
        if self.rx.is_none() {
            self.start()?;
        }
        let Some(rx) = self.rx.as_mut() else { return Ok(None) };
        match rx.recv().await {
            Some(Ok(ev)) => Ok(Some(ev)),
            Some(Err(e)) => Err(e.into()),
            None => Ok(None),
        }
    }

    /// Two with a `co_topic`: partition p of the second topic is the job's
    /// [`RIGHT_PARTITIONS`](ferroflow_core::source::RIGHT_PARTITIONS)` + p`.
    fn inputs(&self) -> usize {
        self.shared.topics.count()
    }

    /// One consumer reads both topics with the `range` assignor, and an assignment that splits a
    /// partition number's two partitions stops the source.
    fn assigns_inputs_together(&self) -> bool {
        true
    }

    fn seek(&mut self, offsets: &BTreeMap<PartitionId, u64>) -> Result<(), SourceError> {
        lock(&self.shared.resume).extend(offsets.iter().map(|(p, o)| (*p, *o)));
        Ok(())
    }

    fn set_partition_lifecycle(&mut self, lifecycle: Arc<dyn PartitionLifecycle>) -> bool {
        *lock(&self.shared.lifecycle) = Some(lifecycle);
        true
    }

    fn checkpoint_listener(&self) -> Option<Arc<dyn CheckpointListener>> {
        Some(Arc::new(OffsetCommitter {
            consumer: Arc::clone(&self.consumer),
            topics: self.shared.topics.clone(),
            commit: self.config.commit_offsets,
            headers: self.shared.headers.clone(),
            stats: self.shared.stats.clone(),
        }))
    }
}

/// After each checkpoint: forgets stashed headers it covers and commits its offsets to the
/// consumer group (asynchronously; failures are logged and counted, never fatal: the job resumes
/// from its checkpoints, not from these commits).
struct OffsetCommitter {
    consumer: Arc<Consumer_>,
    topics: Topics,
    commit: bool,
    headers: HeaderStash,
    stats: SourceStats,
}

impl CheckpointListener for OffsetCommitter {
    fn checkpoint_complete(&self, checkpoint_id: u64, offsets: &BTreeMap<PartitionId, u64>) {
        self.headers.forget_before(offsets);
        if !self.commit {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            let (Some((topic, p)), Ok(o)) = (self.topics.of(*p), i64::try_from(*o)) else { continue };
            if tpl.add_partition_offset(topic, p, Offset::Offset(o)).is_err() {
                continue;
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match self.consumer.commit(&tpl, CommitMode::Async) {
            Ok(()) => self.stats.committed(true),
            Err(e) => {
                tracing::warn!(checkpoint = checkpoint_id, error = %e, "cannot commit checkpointed offsets");
                self.stats.committed(false);
            }
        }
    }
}
