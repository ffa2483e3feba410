//! Jobs with two inputs: the interval join through the runner, with each input's partitions
//! holding the watermark the join step sees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferroflow::prelude::*;
use ferroflow::source::RIGHT_PARTITIONS;
use ferroflow::testing::ScriptedSource;

#[path = "../examples/ad_clicks.rs"]
mod ad_clicks_example;

#[test]
fn the_ad_clicks_example_joins_impressions_with_their_clicks() {
    ad_clicks_example::main().unwrap();
}

type Ev = Either<(String, i64), (String, i64)>;

fn at(e: Either<i64, i64>, partition: u32, offset: u64) -> Record<Ev> {
    let e = e.map_either(|t| ("a".to_owned(), t), |t| ("a".to_owned(), t));
    Record::new(e, 0).with_position(SourcePosition::new(partition, offset))
}

#[tokio::test]
async fn a_record_is_late_only_behind_the_lower_of_both_inputs_watermarks() {
    let right = RIGHT_PARTITIONS;
    let source = ScriptedSource::new()
        .assign(vec![0, right])
        .records(vec![at(Either::Left(10_000), 0, 0), at(Either::Right(50_000), right, 0)])
        // Behind its own input's watermark (49 s), not behind the left input's (9 s): on time.
        .records(vec![at(Either::Right(12_000), right, 1)])
        .records(vec![at(Either::Left(60_000), 0, 1)])
        // Behind both (the left input's is now 59 s, the right's 49 s): late.
        .records(vec![at(Either::Right(30_000), right, 2)])
        .finish(0)
        .finish(right);
    let join = IntervalJoin::inner(0, 5_000, |l: &(String, i64), r: &(String, i64)| (l.1, r.1)).unwrap();
    let job = Stream::<Ev>::new()
        .assign_timestamps(
            |e| e.as_ref().either(|l| l.1, |r| r.1),
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(1)),
        )
        .key_by(|e| Key::from(e.as_ref().either(|l| &l.0, |r| &r.0)))
        .interval_join(join.with_input_names("views", "clicks"));
    let (sink, rows) = CollectSink::with_handle();
    let (dead_letters, dead) = CollectSink::with_handle();
    let report =
        Runner::default().job(source, job).sink(sink).dead_letters(dead_letters).run().await.unwrap();
    assert_eq!(rows.take(), [(10_000, 12_000)]);
    let dead: Vec<DeadLetter> = dead.take();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, DeadLetterReason::LateEvent);
    assert!(dead[0].detail.contains("'clicks'"), "{}", dead[0].detail);
    assert_eq!(dead[0].position, SourcePosition::new(right, 2));
    assert_eq!(report.counters.records_in, 5);
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
}

#[tokio::test]
async fn a_job_per_partition_refuses_a_union_whose_inputs_would_never_meet() {
    use ferroflow::source::UnionSource;
    let source = UnionSource::new(MemorySource::of([1u8]), MemorySource::of([2u8]));
    let factory = |_| Stream::<Either<u8, u8>>::new();
    let err = Runner::default()
        .job_per_partition(source, factory)
        .sink(CollectSink::new())
        .discard_dead_letters()
        .run()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("would never meet"), "{err}");
}
