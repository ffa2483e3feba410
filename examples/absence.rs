//! Absence detection with keyed state and an event-time timer: report a device that sent no
//! heartbeat for 5 minutes of event time, once per silence, with its last heartbeat.
//!
//! Run with `cargo run --example absence`.
//!
//! Each device keeps one value (its last heartbeat) and one timer (5 minutes after it). A new
//! heartbeat moves the timer; when the watermark passes it, the device is reported. A heartbeat
//! that comes 5 minutes or more after the last one reports the silence itself: within a batch,
//! records run before the watermark the batch moves, so the timer may not have fired yet.
#![allow(clippy::print_stdout)]

use ferroflow::prelude::*;

/// How long a device may stay silent.
pub const SILENCE_MS: i64 = 5 * 60 * 1_000;
const LAST: ValueState<i64> = ValueState::new("last-heartbeat");

/// Emits `(device, last heartbeat)` for every silence of 5 minutes or more.
#[derive(Debug)]
pub struct Absence;

impl KeyedFunction for Absence {
    type In = (&'static str, i64);
    type Out = (String, i64);

    fn declare(&self, states: &mut StateDeclarations) {
        states.value(LAST);
    }

    fn process(&mut self, _beat: Self::In, ctx: &mut KeyedContext<'_, Self::Out>) -> Result<(), Rejection> {
        let last = ctx.value(LAST)?.copied();
        if let Some(last) = last {
            let due = last.saturating_add(SILENCE_MS);
            ctx.delete_event_time_timer(due);
            if ctx.timestamp() >= due {
                let device = ctx.key().as_str().unwrap_or_default().to_owned();
                ctx.emit((device, last));
            }
        }
        let now = ctx.timestamp().max(last.unwrap_or(i64::MIN));
        ctx.set_value(LAST, now)?;
        ctx.register_event_time_timer(now.saturating_add(SILENCE_MS));
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, Self::Out>) -> Result<(), Rejection> {
        let last = ctx.value(LAST)?.copied().unwrap_or_default();
        let device = ctx.key().as_str().unwrap_or_default().to_owned();
        ctx.emit((device, last));
        ctx.clear_value(LAST)?;
        Ok(())
    }
}

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let minute = 60_000;
    // (device, event time): the sensor goes quiet from minute 2 to minute 9; the pump from minute
    // 3 to the end.
    let beats = vec![
        ("sensor", 0),
        ("pump", minute),
        ("sensor", 2 * minute),
        ("pump", 3 * minute),
        ("sensor", 9 * minute), // 7 minutes after its last: the silence since minute 2 is reported
        ("sensor", 10 * minute),
    ];
    let source = MemorySource::of(beats).with_batch_size(1);
    let job = Stream::<(&'static str, i64)>::new()
        .assign_timestamps(|b| b.1, WatermarkStrategy::monotonous())
        .key_by(|b| Key::from(b.0))
        .keyed_process(Absence)
        .id("absence");
    let (sink, rows) = CollectSink::with_handle();
    let report = Runner::default().job(source, job).sink(sink).discard_dead_letters().run().await?;

    let mut silences = rows.take();
    silences.sort_by_key(|(device, last)| (*last, device.clone()));
    for (device, last) in &silences {
        println!("{device} silent since minute {}", last / minute);
    }
    // At the end of input the watermark reaches the end of time: the last silences are reported.
    let expected = [("sensor", 2), ("pump", 3), ("sensor", 10)];
    let got: Vec<(&str, i64)> = silences.iter().map(|(d, last)| (d.as_str(), last / minute)).collect();
    if got != expected || !report.counters.identity_holds() {
        return Err(format!("expected {expected:?}, got {got:?} ({:?})", report.counters).into());
    }
    Ok(())
}
