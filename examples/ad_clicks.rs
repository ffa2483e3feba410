//! Two inputs, one job: which ad impressions led to a click within 10 minutes (an interval join,
//! left outer, on two sources read as one).
//!
//! Run with `cargo run --example ad_clicks`.
//!
//! Impressions and clicks come from two sources, each with its own partitions and offsets; the
//! job keys both by ad and joins each impression with the clicks of its ad from 0 to 10 minutes
//! after it. An impression without a click is reported once 10 minutes of event time have passed
//! without one. The step sees the lower of the two inputs' watermarks, so however the sources'
//! batches interleave, a click is never judged late because impressions ran ahead (or the other
//! way round); a record that is late all the same goes to the dead letters, naming its input.
#![allow(clippy::print_stdout)]

use ferroflow::prelude::*;
use ferroflow::source::UnionSource;

/// An ad event: ad id, event time (ms).
pub type AdEvent = (String, i64);

/// What the job reports per impression: ad, impression time, ms until its click (if any).
pub type Outcome = (String, i64, Option<i64>);

const MINUTE: i64 = 60_000;

/// The job: impressions (left) and clicks (right) in, one row per impression and click pair, or
/// per impression without a click.
pub fn job() -> impl IntoOperator<Op: Operator<In = Either<AdEvent, AdEvent>, Out = Outcome>> {
    let join = IntervalJoin::left_outer(0, 10 * MINUTE, |imp: &AdEvent, click: Option<&AdEvent>| {
        (imp.0.clone(), imp.1, click.map(|c| c.1 - imp.1))
    });
    let join = match join {
        Ok(j) => j.with_input_names("impressions", "clicks"),
        Err(e) => unreachable!("the bounds are ordered: {e}"),
    };
    Stream::<Either<AdEvent, AdEvent>>::new()
        .assign_timestamps(
            |e| e.as_ref().either(|i| i.1, |c| c.1),
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(30)),
        )
        .key_by(|e| Key::from(e.as_ref().either(|i| &i.0, |c| &c.0)))
        .interval_join(join)
        .id("impressions-to-clicks")
}

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let impressions = [("ad-1", 0), ("ad-2", MINUTE), ("ad-1", 5 * MINUTE), ("ad-3", 30 * MINUTE)];
    let clicks = [
        ("ad-1", 2 * MINUTE),  // 2 min after ad-1's first impression
        ("ad-1", 6 * MINUTE),  // within 10 min of both ad-1 impressions
        ("ad-2", 12 * MINUTE), // 11 min after ad-2's impression: too late to count
        ("ad-3", 45 * MINUTE), // 15 min after ad-3's impression
    ];
    let owned = |events: &[(&str, i64)]| -> Vec<AdEvent> {
        events.iter().map(|(ad, t)| (ad.to_string(), *t)).collect()
    };
    let source = UnionSource::new(
        MemorySource::of(owned(&impressions)).with_batch_size(2),
        MemorySource::of(owned(&clicks)).with_batch_size(1),
    );
    let (sink, rows) = CollectSink::with_handle();
    let (dead_letters, dead) = CollectSink::with_handle();
    let report = Runner::default().job(source, job()).sink(sink).dead_letters(dead_letters).run().await?;

    let mut outcomes = rows.take();
    outcomes.sort();
    for (ad, at, click) in &outcomes {
        match click {
            Some(after) => {
                println!("{ad} shown at minute {}: clicked {} min later", at / MINUTE, after / MINUTE)
            }
            None => println!("{ad} shown at minute {}: no click within 10 minutes", at / MINUTE),
        }
    }
    let dead: Vec<DeadLetter> = dead.take();
    for d in &dead {
        println!("dead letter ({}): {}", d.reason, d.detail);
    }
    let got: Vec<(&str, i64, Option<i64>)> = outcomes
        .iter()
        .map(|(ad, at, click)| (ad.as_str(), at / MINUTE, click.map(|c| c / MINUTE)))
        .collect();
    let expected = [
        ("ad-1", 0, Some(2)),
        ("ad-1", 0, Some(6)),
        ("ad-1", 5, Some(1)),
        ("ad-2", 1, None),
        ("ad-3", 30, None),
    ];
    if got != expected || !dead.is_empty() || !report.counters.identity_holds() {
        return Err(format!(
            "expected {expected:?}, got {got:?}, dead letters {dead:?} ({:?})",
            report.counters
        )
        .into());
    }
    Ok(())
}
