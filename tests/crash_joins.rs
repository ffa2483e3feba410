//! Crash consistency of a two-input job: an interval join (left outer) of two files read as one
//! union, killed with SIGKILL at random moments and restarted from its last checkpoint several
//! times, reports exactly the rows of an uninterrupted run: no pair lost or made up, no
//! unmatched row for a record whose partner came before the crash. The same holds for the job
//! run per partition, each input in two files partitioned by ad (co-partitioned): partition p's
//! task joins partition p of both inputs, its state and both partitions' offsets in one checkpoint.
//! And for impressions joined with a broadcast table of each ad's campaign as of their time: the
//! table is read again from its start on every restart, the waiting impressions come back from
//! the checkpoint.
#![cfg(all(feature = "rocksdb", feature = "checkpoints"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/crash.rs"]
mod crash;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crash::{finish, kill_and_restart, run_dir, spawn};
use ferroflow::prelude::*;
use ferroflow::sink::JsonLinesSink;
use ferroflow::source::{JsonLinesSource, UnionSource};

const TEST_NAME: &str = "sigkill_and_restart_join_two_inputs_as_an_uninterrupted_run";
const PER_PARTITION_TEST_NAME: &str =
    "sigkill_and_restart_a_co_partitioned_join_per_partition_as_an_uninterrupted_run";
const BROADCAST_TEST_NAME: &str = "sigkill_and_restart_a_broadcast_table_join_as_an_uninterrupted_run";

/// Which job a child runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Job {
    /// The interval join over one file per input.
    Interval,
    /// The interval join per partition over two files per input.
    IntervalPerPartition,
    /// Impressions with the campaign of their ad as of their time, from a broadcast table.
    Broadcast,
}

/// (ad, event time).
type Ad = (String, i64);
/// (ad, impression time, click time if any).
type Row = (String, i64, Option<i64>);

/// Impressions and clicks of 10 ads, each input in time order, 10 ms of event time apart; about
/// half of the impressions get a click within 60 ms. Each input also in two files, the ads of
/// even and of odd number (partitioned by the join key, as a producer would).
fn write_inputs(dir: &Path) {
    let mut rng = 11u64;
    let mut next = move |n: u64| {
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (rng >> 33) % n
    };
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..3_000i64 {
        for (input, t) in [("impressions", i * 10), ("clicks", i * 10 + 5)] {
            let ad = next(10);
            let line = format!("[\"ad{ad}\",{t}]\n");
            files.entry(format!("{input}.jsonl")).or_default().push_str(&line);
            files.entry(format!("{input}-{}.jsonl", ad % 2)).or_default().push_str(&line);
        }
    }
    // Every 200 ms of event time, a new campaign for one of the ads: (ad, from, campaign).
    let campaigns: String =
        (0..150i64).map(|i| format!("[\"ad{}\",{},{}]\n", next(10), i * 200 + 3, i)).collect();
    files.insert("campaigns.jsonl".to_owned(), campaigns);
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// The child: runs the job in `dir` (RocksDB state, checkpoints every 100 ms), resuming from the
/// last checkpoint there.
fn run_child(dir: &Path, pace_us: u64, kind: Job) {
    let per_partition = kind == Job::IntervalPerPartition;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut runner = Runner::builder()
            .state(RocksDb::at(dir.join("state")))
            .checkpoints(format!("file://{}", dir.join("checkpoints").display()))
            .every(Duration::from_millis(100))
            .build()
            .unwrap();
        let input = |name: &str| {
            let files: Vec<_> = match per_partition {
                true => (0..2).map(|p| dir.join("..").join(format!("{name}-{p}.jsonl"))).collect(),
                false => vec![dir.join("..").join(format!("{name}.jsonl"))],
            };
            JsonLinesSource::<Ad>::open(files).with_chunk_size(1_024)
        };
        let source = UnionSource::new(input("impressions"), input("clicks"));
        let job = move || {
            let join =
                IntervalJoin::left_outer(0, 60, |i: &Ad, c: Option<&Ad>| (i.0.clone(), i.1, c.map(|c| c.1)))
                    .unwrap()
                    .with_input_names("impressions", "clicks");
            Stream::<Either<Ad, Ad>>::new()
                .map(move |e: Either<Ad, Ad>| {
                    std::thread::sleep(Duration::from_micros(pace_us));
                    e
                })
                .assign_timestamps(
                    |e: &Either<Ad, Ad>| e.as_ref().either(|a| a.1, |a| a.1),
                    WatermarkStrategy::monotonous(),
                )
                .key_by(|e: &Either<Ad, Ad>| Key::from(e.as_ref().either(|a| &a.0, |a| &a.0)))
                .interval_join(join)
                .id("impressions-clicks")
        };
        let sink = JsonLinesSink::append(dir.join("rows.jsonl")).await.unwrap();
        if kind == Job::Broadcast {
            let campaigns = BroadcastTable::new("campaigns");
            let table =
                JsonLinesSource::<(String, i64, i64)>::open(vec![dir.join("..").join("campaigns.jsonl")])
                    .with_chunk_size(64);
            let source = campaigns
                .loaded_from(table, |c| Key::from(c.0.as_str()), |c| c.1, WatermarkStrategy::monotonous())
                .gating(input("impressions"));
            let join = BroadcastJoin::left_outer(&campaigns, |i: &Ad, c: Option<&(String, i64, i64)>| {
                (i.0.clone(), i.1, c.map(|c| c.2))
            });
            let job = Stream::<Ad>::new()
                .map(move |a: Ad| {
                    std::thread::sleep(Duration::from_micros(pace_us));
                    a
                })
                .assign_timestamps(|a: &Ad| a.1, WatermarkStrategy::monotonous())
                .key_by(|a: &Ad| Key::from(a.0.as_str()))
                .broadcast_join(join)
                .id("impressions-campaigns");
            let report = runner.job(source, job).sink(sink).discard_dead_letters().run().await.unwrap();
            assert!(report.counters.identity_holds(), "{:?}", report.counters);
            assert_eq!(report.counters.records_dead_lettered, 0, "in-order inputs: nothing is late");
            if report.restored_from.is_some() {
                crash::note_restore(dir);
            }
            return;
        }
        let report = match per_partition {
            true => {
                runner.job_per_partition(source, move |_| job()).sink(sink).discard_dead_letters().run().await
            }
            false => runner.job(source, job()).sink(sink).discard_dead_letters().run().await,
        }
        .unwrap();
        assert!(report.counters.identity_holds(), "{:?}", report.counters);
        assert_eq!(report.counters.records_dead_lettered, 0, "in-order inputs: nothing is late");
        if report.restored_from.is_some() {
            crash::note_restore(dir);
        }
    });
}

/// The distinct rows a run reported (a restarted run reports again what it reported after its
/// last checkpoint: the sink is at-least-once).
fn rows(dir: &Path) -> BTreeSet<Row> {
    let text = std::fs::read_to_string(dir.join("rows.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn sigkill_and_restart_join_two_inputs_as_an_uninterrupted_run() {
    if let Some((dir, pace)) = crash::child() {
        return run_child(&dir, pace, Job::Interval);
    }
    crashes_change_nothing(TEST_NAME, 600);
}

#[test]
fn sigkill_and_restart_a_co_partitioned_join_per_partition_as_an_uninterrupted_run() {
    if let Some((dir, pace)) = crash::child() {
        return run_child(&dir, pace, Job::IntervalPerPartition);
    }
    // Two tasks on two workers sleep in parallel: twice the pace keeps the run as long.
    crashes_change_nothing(PER_PARTITION_TEST_NAME, 1_200);
}

#[test]
fn sigkill_and_restart_a_broadcast_table_join_as_an_uninterrupted_run() {
    if let Some((dir, pace)) = crash::child() {
        return run_child(&dir, pace, Job::Broadcast);
    }
    // One input: twice the pace keeps the run as long as the two-input one.
    crashes_change_nothing(BROADCAST_TEST_NAME, 1_200);
}

/// Runs `test`'s job once without crashes, then killed and restarted until it ends (sleeping
/// `pace_us` per record so that kills land mid-run), and compares.
fn crashes_change_nothing(test: &str, pace_us: u64) {
    let tmp = tempfile::tempdir().unwrap();
    write_inputs(tmp.path());

    let reference = run_dir(tmp.path(), "reference");
    finish(spawn(test, &reference, 0));
    let expected = rows(&reference);
    let (pairs, alone) =
        expected.iter().fold((0, 0), |(p, a), r| if r.2.is_some() { (p + 1, a) } else { (p, a + 1) });
    assert!(
        pairs > 1_000 && alone > 100,
        "the reference run: {pairs} pairs, {alone} impressions without a click"
    );

    let crashy = run_dir(tmp.path(), "crashy");
    let (seed, kills) = kill_and_restart(test, &crashy, pace_us);
    assert_eq!(crash::restores(&crashy), 1, "the last run started from a checkpoint (CRASH_SEED={seed})");
    let got = rows(&crashy);
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "after {kills} kills (CRASH_SEED={seed}): missing {missing:?}, extra {extra:?}"
    );
}
