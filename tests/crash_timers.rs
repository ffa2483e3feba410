//! Crash consistency of a job with keyed state and event-time timers: the job (this test binary,
//! run again as a child process) is killed with SIGKILL at random moments, restarted from its
//! last checkpoint, killed again, several times; the silences it reports must be exactly those of
//! an uninterrupted run: no timer lost, no state restored without its timer or the other way round.
#![cfg(all(feature = "rocksdb", feature = "checkpoints"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/crash.rs"]
mod crash;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crash::{finish, kill_and_restart, run_dir, spawn};
use ferroflow::prelude::*;
use ferroflow::sink::JsonLinesSink;
use ferroflow::source::JsonLinesSource;

const TEST_NAME: &str = "sigkill_and_restart_report_the_silences_of_an_uninterrupted_run";

const SILENCE_MS: i64 = 5_000;
const LAST: ValueState<i64> = ValueState::new("last");
const BEATS: ListState<i64> = ListState::new("beats-since-silence");

/// A device silent for 5 s: (device, last beat, beats since its previous silence, first of them).
type Silence = (String, i64, usize, i64);

/// Reports each silence of 5 s or more once, with the beats that led to it (value and list state,
/// one event-time timer per device).
struct Silences;

impl Silences {
    fn report(ctx: &mut KeyedContext<'_, Silence>, last: i64) -> Result<(), Rejection> {
        let mut beats = ctx.list(BEATS)?;
        let (count, first) = (beats.len(), beats.iter().next().copied().unwrap_or(last));
        beats.clear();
        let device = ctx.key().as_str().unwrap_or_default().to_owned();
        ctx.emit((device, last, count, first));
        Ok(())
    }
}

impl KeyedFunction for Silences {
    type In = (String, i64);
    type Out = Silence;
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(LAST);
        states.list(BEATS);
    }
    fn process(
        &mut self,
        (_, at): (String, i64),
        ctx: &mut KeyedContext<'_, Silence>,
    ) -> Result<(), Rejection> {
        if let Some(last) = ctx.value(LAST)?.copied() {
            ctx.delete_event_time_timer(last + SILENCE_MS);
            if at >= last + SILENCE_MS {
                // The batch's watermark has not fired the timer yet: report the silence here, as
                // the timer would have.
                Self::report(ctx, last)?;
            }
        }
        ctx.set_value(LAST, at)?;
        ctx.list(BEATS)?.add(at);
        ctx.register_event_time_timer(at + SILENCE_MS);
        Ok(())
    }
    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, Silence>) -> Result<(), Rejection> {
        let last = ctx.value(LAST)?.copied().unwrap_or_default();
        ctx.clear_value(LAST)?;
        Self::report(ctx, last)
    }
}

/// Beats of 12 devices, 10 ms of event time apart, in order; each device pauses now and then for
/// 3–12 s (some of them silences), and devices 0–7 stop for good at 12, 24, … 96 s: only their
/// timers report those last silences, so a restore that lost them shows.
fn write_input(path: &Path) {
    let mut rng = 7u64;
    let mut next = move |n: u64| {
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (rng >> 33) % n
    };
    let mut paused_until = [0i64; 12];
    let mut out = String::new();
    for i in 0..10_000i64 {
        let at = i * 10;
        let d = next(12) as usize;
        if at < paused_until[d] || (d < 8 && at >= (d as i64 + 1) * 12_000) {
            continue;
        }
        if next(60) == 0 {
            paused_until[d] = at + 3_000 + next(9_000) as i64;
        }
        out.push_str(&format!("[\"dev{d}\",{at}]\n"));
    }
    std::fs::write(path, out).unwrap();
}

/// The child: runs the job in `dir` (RocksDB state, checkpoints every 100 ms), resuming from the
/// last checkpoint there.
fn run_child(dir: &Path, pace_us: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut runner = Runner::builder()
            .state(RocksDb::at(dir.join("state")))
            .checkpoints(format!("file://{}", dir.join("checkpoints").display()))
            .every(Duration::from_millis(100))
            .build()
            .unwrap();
        let source =
            JsonLinesSource::<(String, i64)>::open([dir.join("../input.jsonl")]).with_chunk_size(2_048);
        let job = Stream::<(String, i64)>::new()
            .map(move |b: (String, i64)| {
                std::thread::sleep(Duration::from_micros(pace_us));
                b
            })
            .assign_timestamps(|b: &(String, i64)| b.1, WatermarkStrategy::monotonous())
            .key_by(|b: &(String, i64)| Key::from(b.0.as_str()))
            .keyed_process(Silences)
            .id("silences");
        let sink = JsonLinesSink::append(dir.join("silences.jsonl")).await.unwrap();
        let report = runner.job(source, job).sink(sink).discard_dead_letters().run().await.unwrap();
        assert!(report.counters.identity_holds(), "{:?}", report.counters);
        if report.restored_from.is_some() {
            crash::note_restore(dir);
        }
    });
}

/// The distinct silences a run reported (a restarted run reports again what it reported after
/// its last checkpoint: the sink is at-least-once, the silences are keyed).
fn silences(dir: &Path) -> BTreeSet<Silence> {
    let text = std::fs::read_to_string(dir.join("silences.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn sigkill_and_restart_report_the_silences_of_an_uninterrupted_run() {
    if let Some((dir, pace)) = crash::child() {
        return run_child(&dir, pace);
    }
    let tmp = tempfile::tempdir().unwrap();
    write_input(&tmp.path().join("input.jsonl"));

    let reference = run_dir(tmp.path(), "reference");
    finish(spawn(TEST_NAME, &reference, 0));
    let expected = silences(&reference);
    assert!(expected.len() > 40, "the reference run reported too few silences: {}", expected.len());

    let crashy = run_dir(tmp.path(), "crashy");
    let (seed, kills) = kill_and_restart(TEST_NAME, &crashy, 600);

    // Only the last run gets to its end and says what it restored from; a restored run also
    // starts with its state and timers.
    assert_eq!(crash::restores(&crashy), 1, "the last run started from a checkpoint (CRASH_SEED={seed})");
    let got = silences(&crashy);
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "after {kills} kills (CRASH_SEED={seed}): missing {missing:?}, extra {extra:?}"
    );
}
