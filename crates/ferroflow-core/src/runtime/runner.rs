//! Source task → processing task (the whole chain) → sink tasks, joined by bounded channels.
//!
//! The channels hold at most `channel_capacity` batches each, so a slow sink fills its channel,
//! the processing task waits on it, the source channel fills in turn, and the source stops
//! reading: memory stays bounded and the slowdown propagates to the input instead.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::dead_letter::DeadLetter;
use crate::error::{JobError, SinkError, SourceError};
use crate::metrics::{CountersSnapshot, JobCounters};
use crate::operator::{Context, IntoOperator, Operator, Signal};
use crate::record::Record;
use crate::sink::Sink;
use crate::source::{Source, SourceEvent};
use crate::time::{Clock, SystemClock, Watermark};

/// How the runner behaves.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Batches each channel holds before the sender waits (backpressure). Default 8.
    pub channel_capacity: usize,
    /// How often the processing task wakes up without input to check idleness. Default 200 ms.
    pub tick_interval: Duration,
    /// Processing-time clock (swap in a [`ManualClock`](crate::time::ManualClock) for tests).
    pub clock: Arc<dyn Clock>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self { channel_capacity: 8, tick_interval: Duration::from_millis(200), clock: Arc::new(SystemClock) }
    }
}

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Final counters.
    pub counters: CountersSnapshot,
    /// The last watermark ([`Watermark::MAX`] after bounded input).
    pub final_watermark: Watermark,
}

/// Runs jobs: one source, one operator chain, a result sink and a dead-letter sink.
///
/// # Examples
/// ```
/// use ferroflow_core::sink::CollectSink;
/// use ferroflow_core::source::MemorySource;
/// use ferroflow_core::{Record, Runner, Stream};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let source = MemorySource::new((0..10i64).map(|i| Record::new(i, i)).collect());
/// let stream = Stream::<i64>::new().filter(|x| x % 2 == 0).map(|x| x * 100);
/// let (sink, dlq) = (CollectSink::new(), CollectSink::new());
/// let out = sink.handle();
/// let report = Runner::default().run(source, stream, sink, dlq).await.unwrap();
/// assert_eq!(out.take(), vec![0, 200, 400, 600, 800]);
/// assert_eq!(report.counters.records_filtered, 5);
/// assert!(report.counters.identity_holds());
/// # });
/// ```
#[derive(Debug, Default)]
pub struct Runner {
    config: RunnerConfig,
    counters: JobCounters,
}

impl Runner {
    /// A runner with `config`.
    pub fn new(config: RunnerConfig) -> Self {
        Self { config, counters: JobCounters::default() }
    }

    /// Live counters (clone it before `run` to watch a running job).
    pub fn counters(&self) -> JobCounters {
        self.counters.clone()
    }

    /// Runs the job until the source ends (bounded input) or a component fails; flushes both sinks
    /// before returning.
    pub async fn run<S, J, K, D>(
        &self,
        source: S,
        job: J,
        sink: K,
        dead_letters: D,
    ) -> Result<JobReport, JobError>
    where
        J: IntoOperator,
        S: Source<<J::Op as Operator>::In>,
        K: Sink<<J::Op as Operator>::Out>,
        D: Sink<DeadLetter>,
    {
        let mut chain = job.into_operator();
        self.drive(source, &mut chain, sink, dead_letters).await
    }

    async fn drive<S, C, K, D>(
        &self,
        source: S,
        chain: &mut C,
        sink: K,
        dead_letters: D,
    ) -> Result<JobReport, JobError>
    where
        C: Operator,
        S: Source<C::In>,
        K: Sink<C::Out>,
        D: Sink<DeadLetter>,
    {
        let cap = self.config.channel_capacity.max(1);
        let (src_tx, mut src_rx) = mpsc::channel::<SourceEvent<C::In>>(cap);
        let (out_tx, out_rx) = mpsc::channel::<Vec<C::Out>>(cap);
        let (dlq_tx, dlq_rx) = mpsc::channel::<Vec<DeadLetter>>(cap);

        let source_task: JoinHandle<Result<(), SourceError>> = tokio::spawn(run_source(source, src_tx));
        let sink_task = tokio::spawn(run_sink(sink, out_rx));
        let dlq_task = tokio::spawn(run_sink(dead_letters, dlq_rx));

        self.counters.set_watermark(i64::MIN);
        let clock = Arc::clone(&self.config.clock);
        let counts_out = !chain.consumes_records();
        let mut ctx = Context::new(clock.now_ms());
        let mut input: Vec<Record<C::In>> = Vec::new();
        let mut output: Vec<Record<C::Out>> = Vec::new();
        let mut watermark = Watermark::MIN;
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut downstream_closed = false;

        loop {
            let event = tokio::select! {
                biased;
                ev = src_rx.recv() => Some(ev),
                _ = ticker.tick() => None,
            };
            ctx.set_processing_time(clock.now_ms());
            let end = match event {
                Some(None) => {
                    chain.on_signal(&Signal::EndOfInput, &mut ctx);
                    true
                }
                None => {
                    chain.on_signal(&Signal::Tick, &mut ctx);
                    false
                }
                Some(Some(ev)) => {
                    match ev {
                        SourceEvent::Batch(batch) => {
                            ctx.counters.records_in +=
                                (batch.records.len() + batch.dead_letters.len()) as u64;
                            for dl in batch.dead_letters {
                                ctx.dead_letter(dl);
                            }
                            input = batch.records;
                            chain.process_batch(&mut input, &mut ctx, &mut output);
                        }
                        SourceEvent::PartitionsAssigned(ps) => {
                            chain.on_signal(&Signal::PartitionsAssigned(ps), &mut ctx)
                        }
                        SourceEvent::PartitionsRevoked(ps) => {
                            chain.on_signal(&Signal::PartitionsRevoked(ps), &mut ctx)
                        }
                        SourceEvent::PartitionFinished(p) => {
                            chain.on_signal(&Signal::PartitionFinished(p), &mut ctx)
                        }
                    }
                    false
                }
            };
            if let Some(w) = ctx.take_watermark() {
                if w > watermark {
                    watermark = w;
                    chain.on_watermark(w, &mut ctx, &mut output);
                    self.counters.set_watermark(w.0);
                }
            }
            if counts_out {
                ctx.counters.records_out += output.len() as u64;
            }
            if !output.is_empty() {
                let batch: Vec<C::Out> = output.drain(..).map(|r| r.payload).collect();
                if out_tx.send(batch).await.is_err() {
                    downstream_closed = true;
                }
            }
            if !ctx.dead_letters.is_empty() && dlq_tx.send(ctx.take_dead_letters()).await.is_err() {
                downstream_closed = true;
            }
            self.counters.absorb(&mut ctx.counters);
            if end || downstream_closed {
                break;
            }
        }
        drop(out_tx);
        drop(dlq_tx);
        drop(src_rx);
        let _ = input;

        let sink_res = join("sink", sink_task).await;
        let dlq_res = join("dead-letter sink", dlq_task).await;
        let src_res = join("source", source_task).await;
        sink_res??;
        dlq_res??;
        if !downstream_closed {
            src_res??;
        }
        Ok(JobReport { counters: self.counters.snapshot(), final_watermark: watermark })
    }
}

async fn join<R>(task: &'static str, handle: JoinHandle<R>) -> Result<R, JobError> {
    handle.await.map_err(|e| JobError::Task { task, detail: e.to_string() })
}

async fn run_source<T, S: Source<T>>(
    mut source: S,
    tx: mpsc::Sender<SourceEvent<T>>,
) -> Result<(), SourceError> {
    while let Some(ev) = source.next_event().await? {
        if tx.send(ev).await.is_err() {
            break; // the processing task stopped; its error is reported there
        }
    }
    Ok(())
}

async fn run_sink<T, K: Sink<T>>(mut sink: K, mut rx: mpsc::Receiver<Vec<T>>) -> Result<(), SinkError> {
    while let Some(batch) = rx.recv().await {
        sink.write_batch(batch).await?;
    }
    sink.flush().await
}
