//! Decoding one event, measured: the pipeline's data-contract check as it was (a
//! `serde_json::Value` validated by `jsonschema`), as it is (the contract compiled to direct
//! checks run while `serde_json` parses), and three parsers without any contract check, taking the
//! same five fields into a struct that borrows from the bytes: `serde_json`, `sonic-rs` and
//! `simd-json` (docs/adr/0013-decoding-and-the-compiled-contract.md says what was chosen and why).
//!
//! ```text
//! cargo run --release -p ferroflow-pipeline --example decode_bench -- --events 500000
//! ```
//!
//! The events are the pipeline's clean generated traffic (a quarter with RFC 3339 times, most with
//! attributes). Each way runs over all of them five times, the ways interleaved so that a busy
//! machine slows all of them alike; the best round counts. Prints `<way>_ns_per_event=<N>`.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use bytes::Bytes;
use ferroflow_pipeline::contract::{Contract, ContractStats};
use ferroflow_pipeline::event::Event;
use ferroflow_pipeline::traffic::TrafficConfig;
use serde::Deserialize;

/// The event's fields, borrowed from the bytes where they have no escapes.
#[derive(Deserialize)]
struct Borrowed<'a> {
    #[serde(borrow)]
    event_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    user_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    event_type: std::borrow::Cow<'a, str>,
    ts: TsField<'a>,
    amount: f64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TsField<'a> {
    Millis(i64),
    Text(#[serde(borrow)] std::borrow::Cow<'a, str>),
}

fn weight(b: &Borrowed<'_>) -> usize {
    let ts = match &b.ts {
        TsField::Millis(ms) => *ms as usize,
        TsField::Text(t) => t.len(),
    };
    b.event_id.len() + b.user_id.len() + b.event_type.len() + ts + b.amount as usize
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = args
        .iter()
        .position(|a| a == "--events")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let traffic =
        TrafficConfig { partitions: 1, events_per_partition: events, dirty: false, ..Default::default() };
    let lines: Vec<Bytes> = traffic.generate().into_iter().map(|g| Bytes::from(g.payload)).collect();
    let bytes: usize = lines.iter().map(Bytes::len).sum();
    println!("{} events, {:.0} bytes on average", lines.len(), bytes as f64 / lines.len() as f64);

    let schema: serde_json::Value = serde_json::from_slice(&std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../contracts/events.v1.json"
    ))?)?;
    let compiled = Contract::from_value("events.v1.json", &schema)?;
    let mut uncompiled_schema = schema.clone();
    uncompiled_schema["minProperties"] = serde_json::Value::from(0); // a keyword the plan does not compile
    let by_value = Contract::from_value("events.v1.json", &uncompiled_schema)?;
    assert!(compiled.is_compiled() && !by_value.is_compiled());
    let stats = ContractStats::new();

    type Way<'a> = (&'a str, Box<dyn Fn(&[Bytes]) -> usize + 'a>);
    let ways: Vec<Way<'_>> = vec![
        (
            "contract_by_value",
            Box::new(|ls| {
                ls.iter().map(|l| Event::decode_checked(l, &by_value, &stats).unwrap().amount as usize).sum()
            }),
        ),
        (
            "contract_compiled",
            Box::new(|ls| {
                ls.iter().map(|l| Event::decode_checked(l, &compiled, &stats).unwrap().amount as usize).sum()
            }),
        ),
        (
            "serde_json_no_contract",
            Box::new(|ls| ls.iter().map(|l| weight(&serde_json::from_slice(l).unwrap())).sum()),
        ),
        (
            "sonic_rs_no_contract",
            Box::new(|ls| ls.iter().map(|l| weight(&sonic_rs::from_slice(l).unwrap())).sum()),
        ),
        (
            "simd_json_no_contract",
            Box::new(|ls| {
                // simd-json parses in place: every event is copied into a scratch buffer first.
                let mut buf = Vec::with_capacity(512);
                let mut scratch = simd_json::Buffers::default();
                ls.iter()
                    .map(|l| {
                        buf.clear();
                        buf.extend_from_slice(l);
                        let b: Borrowed<'_> =
                            simd_json::serde::from_slice_with_buffers(&mut buf, &mut scratch).unwrap();
                        weight(&b)
                    })
                    .sum()
            }),
        ),
    ];
    let mut best = vec![f64::INFINITY; ways.len()];
    for _round in 0..5 {
        for (i, (_, way)) in ways.iter().enumerate() {
            let t = Instant::now();
            std::hint::black_box(way(&lines));
            best[i] = best[i].min(t.elapsed().as_nanos() as f64 / lines.len() as f64);
        }
    }
    for ((name, _), ns) in ways.iter().zip(best) {
        println!("{name}_ns_per_event={ns:.0}");
    }
    Ok(())
}
