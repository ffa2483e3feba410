//! A window that fires for many keys at once reaches the sink in chunks of at most
//! `OUTPUT_CHUNK` rows, one after the other, whatever runs the job (one chain, copies on worker
//! threads, partition tasks on worker threads): the rows of one firing are never all in memory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferroflow::SinkError;
use ferroflow::operator::OUTPUT_CHUNK;
use ferroflow::prelude::*;
use ferroflow::sink::Sink;
use ferroflow::source::MemorySource;
use ferroflow::window::WindowResult;

use common::within;

/// Distinct keys: their shared window fires as four chunks and a bit.
const KEYS: u64 = 4 * OUTPUT_CHUNK as u64 + 77;

/// Notes the size of every batch it is given, and the total count the rows carry.
#[derive(Clone, Default)]
struct BatchSizes(Arc<Mutex<(Vec<usize>, u64)>>);

impl Sink<WindowResult<u64>> for BatchSizes {
    async fn write_batch(&mut self, batch: Vec<WindowResult<u64>>) -> Result<(), SinkError> {
        let mut seen = self.0.lock().unwrap();
        seen.0.push(batch.len());
        seen.1 += batch.iter().map(|r| r.value).sum::<u64>();
        Ok(())
    }
}

/// Every key twice within one minute, over two partitions.
fn records() -> Vec<Record<(u64, i64)>> {
    (0..2 * KEYS)
        .map(|i| {
            Record::new((i % KEYS, (i % 1_000) as i64), 0)
                .with_position(SourcePosition::new((i % 2) as u32, i / 2))
        })
        .collect()
}

fn job() -> impl IntoOperator<Op: Operator<In = (u64, i64), Out = WindowResult<u64>>> {
    Stream::<(u64, i64)>::new()
        .assign_timestamps(|e| e.1, WatermarkStrategy::bounded_out_of_orderness(Duration::ZERO))
        .key_by(|e| Key::from(e.0))
        .window(WindowSpec::tumbling(Duration::from_secs(60)).unwrap(), Count)
        .id("per-key")
}

fn check(how: &str, sink: &BatchSizes, rows_expected: u64) {
    let (sizes, total) = &*sink.0.lock().unwrap();
    assert_eq!(*total, 2 * KEYS, "{how}: every record counted once");
    assert_eq!(sizes.iter().sum::<usize>() as u64, rows_expected, "{how}: one row per key and copy");
    assert!(sizes.len() >= 5, "{how}: {} batches for {rows_expected} rows", sizes.len());
    let largest = sizes.iter().max().copied().unwrap_or(0);
    assert!(largest <= OUTPUT_CHUNK, "{how}: a batch of {largest} rows");
}

#[tokio::test]
async fn a_large_firing_reaches_the_sink_in_chunks_however_the_job_runs() {
    let source = || MemorySource::new(records()).with_batch_size(4_096);

    let sink = BatchSizes::default();
    let mut runner = Runner::builder().workers(1).build().unwrap();
    let run = runner.job(source(), job()).sink(sink.clone()).discard_dead_letters().run();
    let report = within(60, "one chain", run).await.unwrap();
    assert!(report.counters.identity_holds(), "{:?}", report.counters);
    check("one chain", &sink, KEYS);

    let sink = BatchSizes::default();
    let mut runner = Runner::builder().workers(2).build().unwrap();
    let run = runner.parallel_job(source(), job).sink(sink.clone()).discard_dead_letters().run();
    within(60, "two copies", run).await.unwrap();
    check("two copies", &sink, KEYS);

    // Partition tasks each see half of every key's records: one row per key and partition.
    let sink = BatchSizes::default();
    let mut runner = Runner::builder().workers(2).build().unwrap();
    let run = runner.job_per_partition(source(), |_| job()).sink(sink.clone()).discard_dead_letters().run();
    within(60, "partition tasks", run).await.unwrap();
    check("partition tasks", &sink, 2 * KEYS);
}
