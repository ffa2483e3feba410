//! Two co-partitioned topics read by one consumer (`co_topic`), on librdkafka's mock cluster: the
//! group gives partition p of both to the same member, and a join per partition moves between
//! instances with both of its inputs and its buffered state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferroflow_core::checkpoint::{CheckpointStore, S3Options};
use ferroflow_core::join::{Either, IntervalJoin};
use ferroflow_core::operator::IntoOperator;
use ferroflow_core::sink::{CollectSink, Collected};
use ferroflow_core::source::{DecodedSource, RIGHT_PARTITIONS};
use ferroflow_core::state::MemoryStateBackend;
use ferroflow_core::time::WatermarkStrategy;
use ferroflow_core::{
    JobCounters, JobReport, Key, Operator, PartitionId, Rejection, Runner, ShutdownHandle, Stream,
};
use ferroflow_kafka::rdkafka::ClientConfig;
use ferroflow_kafka::rdkafka::mocking::MockCluster;
use ferroflow_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use ferroflow_kafka::{KafkaSource, KafkaSourceConfig};

const PARTITIONS: i32 = 4;
/// Views per partition; each has a click 1.5 s later in the same partition of the other topic.
const VIEWS: i64 = 300;

/// (partition, key, view time, click time) of a joined pair.
type Pair = (PartitionId, String, i64, i64);

/// `key:time`.
fn event(key: &str, t: i64) -> String {
    format!("{key}:{t}")
}

fn decode(b: &Bytes) -> Result<(String, i64), Rejection> {
    let text = std::str::from_utf8(b).map_err(|_| Rejection::decode("not UTF-8"))?;
    let (key, t) = text.split_once(':').ok_or_else(|| Rejection::decode("no `:`"))?;
    Ok((key.to_owned(), t.parse().map_err(|_| Rejection::decode("bad time"))?))
}

/// The views (`views`) and clicks (`clicks`) of partition `p` with index in `range`: view `i` at
/// `i * 100` ms with key `k{i % 3}`, its click 1.5 s later.
fn events(range: std::ops::Range<i64>) -> Vec<(&'static str, i32, String)> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        for i in range.clone() {
            let key = format!("k{}", i % 3);
            out.push(("views", p, event(&key, i * 100)));
            out.push(("clicks", p, event(&key, i * 100 + 1_500)));
        }
    }
    out
}

fn produce(brokers: &str, messages: &[(&str, i32, String)]) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    for (topic, p, payload) in messages {
        while producer.send(BaseRecord::<(), _>::to(topic).payload(payload).partition(*p)).is_err() {
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// The pairs a nested loop finds in `messages`: same partition number and key, click 0–5 s
/// after the view.
fn nested_loop(messages: &[(&str, i32, String)]) -> Vec<Pair> {
    let side = |topic: &str| -> Vec<(i32, String, i64)> {
        messages
            .iter()
            .filter(|m| m.0 == topic)
            .map(|(_, p, payload)| {
                let (k, t) = decode(&Bytes::from(payload.clone())).unwrap();
                (*p, k, t)
            })
            .collect()
    };
    let (views, clicks) = (side("views"), side("clicks"));
    let mut pairs = Vec::new();
    for (vp, vk, vt) in &views {
        for (cp, ck, ct) in &clicks {
            if vp == cp && vk == ck && vt <= ct && *ct <= vt + 5_000 {
                pairs.push((*vp as PartitionId, vk.clone(), *vt, *ct));
            }
        }
    }
    pairs.sort_unstable();
    pairs
}

/// Partition `p`'s task: views joined with the clicks of their key 0–5 s after them.
fn join(
    p: PartitionId,
) -> impl IntoOperator<Op: Operator<In = Either<(String, i64), (String, i64)>, Out = Pair>> {
    let join = IntervalJoin::inner(0, 5_000, |l: &(String, i64), r: &(String, i64)| (l.0.clone(), l.1, r.1))
        .unwrap();
    Stream::<Either<(String, i64), (String, i64)>>::new()
        .assign_timestamps(
            |e| e.as_ref().either(|l| l.1, |r| r.1),
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(1)),
        )
        .key_by(|e| Key::from(e.as_ref().either(|l| l.0.as_str(), |r| r.0.as_str())))
        .interval_join(join)
        .map(move |(k, v, c)| (p, k, v, c))
}

fn source_config(brokers: &str) -> KafkaSourceConfig {
    let mut c = KafkaSourceConfig {
        brokers: brokers.into(),
        topic: "views".into(),
        co_topic: Some("clicks".into()),
        group_id: "join".into(),
        batch_max_records: 200,
        ..Default::default()
    };
    c.properties.0.insert("session.timeout.ms".into(), "6000".into());
    c.properties.0.insert("heartbeat.interval.ms".into(), "100".into());
    c
}

/// A running instance of the join.
struct Instance {
    stop: ShutdownHandle,
    rows: Collected<Pair>,
    counters: JobCounters,
    job: tokio::task::JoinHandle<JobReport>,
}

impl Instance {
    /// The partitions the instance runs now.
    fn partitions(&self) -> Vec<PartitionId> {
        self.counters.snapshot().partitions.iter().map(|s| s.partition).collect()
    }
}

/// Starts instance `name` of the join on the shared checkpoint base.
fn start(brokers: &str, base: &CheckpointStore, name: &str, scratch: &std::path::Path) -> Instance {
    let mut runner = Runner::builder()
        .workers(2)
        .checkpoint_store(base.clone())
        .job_id("join")
        .scratch_dir(scratch.join(name))
        .every(Duration::from_millis(500))
        .instance(name)
        .state(MemoryStateBackend::new())
        .build()
        .unwrap();
    let (stop, counters) = (runner.shutdown_handle(), runner.counters());
    let source = DecodedSource::per_input(KafkaSource::new(&source_config(brokers)).unwrap(), decode, decode);
    let (sink, rows) = CollectSink::with_handle();
    let job = tokio::spawn(async move {
        runner.job_per_partition(source, join).sink(sink).discard_dead_letters().run().await.unwrap()
    });
    Instance { stop, rows, counters, job }
}

async fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_per_partition_moves_between_instances_with_both_topics_and_counts_every_pair_once() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("views", PARTITIONS, 1).unwrap();
    cluster.create_topic("clicks", PARTITIONS, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let scratch = tempfile::tempdir().unwrap();
    let base = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();

    let first = events(0..VIEWS / 2);
    produce(&brokers, &first);
    let a = start(&brokers, &base, "a", scratch.path());
    // Instance a joins the first half, with the views of the last 5 s of every task buffered.
    let first_pairs = nested_loop(&first).len();
    wait_for("instance a's pairs of the first half", 60, || a.rows.len() >= first_pairs).await;

    // Instance b joins the group: the range assignor gives it two partition numbers of both
    // topics, and their tasks move over with what a buffered.
    let b = start(&brokers, &base, "b", scratch.path());
    wait_for("the rebalance", 60, || b.partitions().len() == 4 && a.partitions().len() == 4).await;
    let rest = events(VIEWS / 2..VIEWS);
    produce(&brokers, &rest);

    let all: Vec<_> = first.into_iter().chain(rest).collect();
    let expected = nested_loop(&all);
    // Pairs within 5 s of the last view wait for nothing more: inner join rows go out on match.
    wait_for("every pair", 90, || a.rows.len() + b.rows.len() >= expected.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a duplicate would show up by now
    a.stop.stop();
    b.stop.stop();
    let (report_a, report_b) = (a.job.await.unwrap(), b.job.await.unwrap());

    let (a, b) = (a.rows.take(), b.rows.take());
    let tasks_of = |rows: &[Pair]| rows.iter().map(|r| r.0).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(tasks_of(&b).len(), 2, "b runs two of the four tasks: {:?}", tasks_of(&b));
    // A view a read before the rebalance joins a click b read after it: it came in a's state.
    let half = VIEWS / 2 * 100;
    assert!(b.iter().any(|&(_, _, v, c)| v < half && c >= half + 1_500), "no buffered view moved to b");
    let mut together: Vec<Pair> = a.into_iter().chain(b).collect();
    together.sort_unstable();
    assert_eq!(together.len(), expected.len(), "no pair lost or joined twice");
    assert_eq!(together, expected);

    // Both topics' partitions of a task stayed together: every partition a job reported on has
    // its counterpart in the same job.
    for report in [&report_a, &report_b] {
        let ps: Vec<PartitionId> = report.counters.partitions.iter().map(|s| s.partition).collect();
        let (views, clicks): (Vec<_>, Vec<_>) = ps.iter().partition(|&&p| p < RIGHT_PARTITIONS);
        let clicks: Vec<PartitionId> = clicks.into_iter().map(|p| p - RIGHT_PARTITIONS).collect();
        assert_eq!(views.into_iter().copied().collect::<Vec<_>>(), clicks, "{ps:?}");
    }
    let by_input = |r: &JobReport| r.counters.inputs.map(|[v, c]| (v.records_in, c.records_in));
    let read: BTreeMap<&str, Option<(u64, u64)>> =
        BTreeMap::from([("a", by_input(&report_a)), ("b", by_input(&report_b))]);
    let total = |i: usize| read.values().flatten().map(|t| if i == 0 { t.0 } else { t.1 }).sum::<u64>();
    assert_eq!(total(0), (PARTITIONS as u64) * VIEWS as u64, "every view read once: {read:?}");
    assert_eq!(total(1), (PARTITIONS as u64) * VIEWS as u64, "every click read once: {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_with_different_partition_counts_stop_the_source_with_how_to_fix_it() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("views", 3, 1).unwrap();
    cluster.create_topic("clicks", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let source =
        DecodedSource::per_input(KafkaSource::new(&source_config(&brokers)).unwrap(), decode, decode);
    let mut runner = Runner::default();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        runner.job_per_partition(source, join).sink(CollectSink::new()).discard_dead_letters().run(),
    )
    .await
    .expect("the job stops");
    let message = result.unwrap_err().to_string();
    assert!(message.contains("partitions [2] of `views`"), "{message}");
    assert!(message.contains("kafka.co_topic"), "{message}");
    assert!(message.contains("same number of partitions"), "{message}");
}

#[test]
fn a_second_topic_refuses_another_assignor_and_self_assignment() {
    let mut c = source_config("127.0.0.1:9092");
    c.properties.0.insert("partition.assignment.strategy".into(), "cooperative-sticky".into());
    assert!(c.validate().unwrap_err().to_string().contains("must be `range`"));
    let mut c = source_config("127.0.0.1:9092");
    c.properties.0.insert("group.protocol".into(), "consumer".into());
    assert!(c.validate().unwrap_err().to_string().contains("must be `classic`"));
    let mut c = source_config("127.0.0.1:9092");
    c.assignment = ferroflow_kafka::Assignment::AllPartitions;
    assert!(c.validate().is_err());
    let c = source_config("127.0.0.1:9092");
    assert_eq!(c.client_config().get("partition.assignment.strategy"), Some("range"));
}
