//! List and map state, time to live, processing-time timers and the schema check of
//! `keyed_process`, through the operator harness and whole jobs; a running sum against a batch
//! oracle under any reordering within the out-of-orderness bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use ferroflow::operator::{KeyedProcess, StateValue, TtlUpdate, TtlVisibility};
use ferroflow::prelude::*;
use ferroflow::state::MemoryStateBackend;
use ferroflow::testing::{OperatorHarness, ScriptedSource};
use ferroflow::time::{ManualClock, Watermark};
use proptest::prelude::*;

use common::{wait_until, within};

#[path = "../examples/failed_logins.rs"]
mod failed_logins_example;
use failed_logins_example::{Alert, Login};

#[test]
fn the_failed_logins_example_alerts_once_per_burst() {
    failed_logins_example::main().unwrap();
}

/// What a probe does with its key's state.
#[derive(Debug, Clone)]
enum Cmd {
    SetValue(u32),
    ReadValue,
    Add(u32),
    ReadList,
    Put(u8, u32),
    ReadMap,
    ProcessingTimer(i64),
    DeleteProcessingTimer(i64),
}

/// Runs commands on its key's value, list and map states (all with the same TTL, or none), and
/// emits what it reads; on a timer, its domain and time.
struct Probe {
    value: ValueState<u32>,
    list: ListState<u32>,
    map: MapState<u8, u32>,
}

impl Probe {
    fn new(ttl: Option<StateTtl>) -> Self {
        let (mut value, mut list, mut map) = (ValueState::new("v"), ListState::new("l"), MapState::new("m"));
        if let Some(ttl) = ttl {
            (value, list, map) = (value.with_ttl(ttl), list.with_ttl(ttl), map.with_ttl(ttl));
        }
        Self { value, list, map }
    }
}

impl KeyedFunction for Probe {
    type In = Cmd;
    type Out = String;
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(self.value);
        states.list(self.list);
        states.map(self.map);
    }
    fn process(&mut self, cmd: Cmd, ctx: &mut KeyedContext<'_, String>) -> Result<(), Rejection> {
        let read = match cmd {
            Cmd::SetValue(v) => {
                ctx.set_value(self.value, v)?;
                return Ok(());
            }
            Cmd::Add(v) => {
                ctx.list(self.list)?.add(v);
                return Ok(());
            }
            Cmd::Put(k, v) => {
                ctx.map(self.map)?.put(k, v);
                return Ok(());
            }
            Cmd::ProcessingTimer(at) => {
                ctx.register_processing_time_timer(at);
                return Ok(());
            }
            Cmd::DeleteProcessingTimer(at) => {
                ctx.delete_processing_time_timer(at);
                return Ok(());
            }
            Cmd::ReadValue => format!("{:?}", ctx.value(self.value)?),
            Cmd::ReadList => format!("{:?}", ctx.list(self.list)?.iter().collect::<Vec<_>>()),
            Cmd::ReadMap => format!("{:?}", ctx.map(self.map)?.iter().collect::<Vec<_>>()),
        };
        ctx.emit(read);
        Ok(())
    }
    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, String>) -> Result<(), Rejection> {
        let what = format!("{:?} timer at {}", ctx.timer_domain(), ctx.timestamp());
        ctx.emit(what);
        Ok(())
    }
}

fn probe(ttl: Option<StateTtl>) -> impl IntoOperator<Op: Operator<In = Cmd, Out = String>> {
    Stream::<Cmd>::new().key_by(|_: &Cmd| Key::from("k")).keyed_process(Probe::new(ttl)).id("probe")
}

/// `cmd` at event time `at`.
fn at(at: i64, cmd: Cmd) -> Vec<Record<Cmd>> {
    vec![Record::new(cmd, at)]
}

/// `cmd` of `key` at event time `at`, for a harness around the step alone.
fn of(key: &str, at: i64, cmd: Cmd) -> Vec<Record<Cmd>> {
    let mut r = Record::new(cmd, at);
    r.key = Key::from(key);
    vec![r]
}

const TEN_S: std::time::Duration = std::time::Duration::from_secs(10);

#[test]
fn list_and_map_state_keep_values_in_order_and_each_key_apart() {
    let mut h = OperatorHarness::new(probe(None));
    h.process(at(1, Cmd::Add(3)));
    h.process(at(2, Cmd::Add(1)));
    h.process(at(3, Cmd::Put(9, 90)));
    h.process(at(4, Cmd::Put(2, 20)));
    h.process(at(5, Cmd::Put(9, 91)));
    h.process(at(6, Cmd::ReadList));
    h.process(at(7, Cmd::ReadMap));
    h.process(at(8, Cmd::ReadValue));
    assert_eq!(h.payloads(), ["[3, 1]", "[(2, 20), (9, 91)]", "None"], "insertion order; key order");
}

#[test]
fn event_time_ttl_hides_a_value_once_the_watermark_passes_its_write_plus_the_ttl() {
    let mut h = OperatorHarness::new(probe(Some(StateTtl::event_time(TEN_S))));
    h.process(at(1_000, Cmd::SetValue(7)));
    h.process(at(1_000, Cmd::Add(1)));
    h.process(at(6_000, Cmd::Add(2)));
    h.process(at(1_000, Cmd::Put(1, 10)));
    h.advance_watermark(Watermark(10_999));
    h.process(at(11_000, Cmd::ReadValue));
    h.process(at(11_000, Cmd::ReadList));
    h.process(at(11_000, Cmd::ReadMap));
    h.advance_watermark(Watermark(11_000));
    h.process(at(11_001, Cmd::ReadValue));
    h.process(at(11_001, Cmd::ReadList));
    h.process(at(11_001, Cmd::ReadMap));
    assert_eq!(
        h.payloads(),
        ["Some(7)", "[1, 2]", "[(1, 10)]", "None", "[2]", "[]"],
        "written at 1 s with a 10 s TTL: gone at watermark 11 s; the list's element of 6 s stays"
    );
}

#[test]
fn a_read_refreshes_the_ttl_only_when_the_state_says_so() {
    let ttl = StateTtl::event_time(TEN_S);
    for (update, expected) in [(TtlUpdate::OnCreateAndWrite, "None"), (TtlUpdate::OnReadAndWrite, "Some(7)")]
    {
        let mut h = OperatorHarness::new(probe(Some(ttl.update(update))));
        h.process(at(1_000, Cmd::SetValue(7)));
        h.advance_watermark(Watermark(9_000));
        h.process(at(9_000, Cmd::ReadValue)); // refreshes to 9 s, or not
        h.advance_watermark(Watermark(15_000));
        h.process(at(15_000, Cmd::ReadValue));
        assert_eq!(h.payloads(), ["Some(7)", expected], "{update:?}");
    }
}

#[test]
fn expired_values_are_returned_until_the_clean_up_when_the_state_says_so() {
    let ttl = StateTtl::event_time(TEN_S).visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp);
    let mut h = OperatorHarness::new(KeyedProcess::new("p", Probe::new(Some(ttl))));
    h.process(of("a", 1_000, Cmd::SetValue(7)));
    h.advance_watermark(Watermark(10_000)); // the clean-up runs: not expired yet
    h.advance_watermark(Watermark(11_000)); // expired; the next clean-up is a quarter TTL away
    h.process(of("a", 11_000, Cmd::ReadValue));
    h.process(of("b", 11_000, Cmd::SetValue(1))); // a write pays for the next clean-up
    h.advance_watermark(Watermark(12_500)); // the clean-up runs again
    h.process(of("a", 12_500, Cmd::ReadValue));
    assert_eq!(h.payloads(), ["Some(7)", "None"]);
}

#[test]
fn the_clean_up_removes_expired_values_no_one_reads() {
    let mut h = OperatorHarness::new(KeyedProcess::new("p", Probe::new(Some(StateTtl::event_time(TEN_S)))));
    let values = |prefix: &str, n: u32, at: i64| -> Vec<Record<Cmd>> {
        (0..n).flat_map(|i| of(&format!("{prefix}{i}"), at, Cmd::SetValue(i))).collect()
    };
    h.process(values("k", 100, 1_000));
    h.advance_watermark(Watermark(5_000));
    assert_eq!(h.operator().held().0, 100);
    h.advance_watermark(Watermark(11_000));
    assert_eq!(h.operator().held().0, 100, "a clean-up walks every key: it waits for writes to pay for it");
    h.process(values("new", 20, 20_000));
    h.advance_watermark(Watermark(12_000));
    assert_eq!(h.operator().held().0, 20, "the 100 expired values were removed, the 20 new ones stay");
}

#[test]
fn processing_time_ttl_and_timers_follow_the_clock() {
    let mut h = OperatorHarness::new(probe(Some(StateTtl::processing_time(TEN_S))));
    h.set_processing_time(1_000);
    h.process(at(0, Cmd::SetValue(7)));
    h.process(at(0, Cmd::ProcessingTimer(5_000)));
    h.process(at(0, Cmd::ProcessingTimer(5_000)));
    h.process(at(0, Cmd::ProcessingTimer(7_000)));
    h.process(at(0, Cmd::ProcessingTimer(6_000)));
    h.process(at(0, Cmd::DeleteProcessingTimer(6_000)));
    h.set_processing_time(4_999);
    assert!(h.payloads().is_empty());
    h.set_processing_time(10_999);
    h.process(at(0, Cmd::ReadValue));
    h.set_processing_time(11_000);
    h.process(at(0, Cmd::ReadValue));
    assert_eq!(
        h.payloads(),
        ["Some(ProcessingTime) timer at 5000", "Some(ProcessingTime) timer at 7000", "Some(7)", "None"],
        "each timer once, in time order; the deleted one never; the value gone 10 s after its write"
    );
    assert_eq!(h.watermark(), Watermark::MIN, "processing time does not move event time");
    assert_eq!(h.outputs()[0].event_time, Watermark::MIN.0, "a processing-time timer emits at the watermark");
}

#[test]
fn a_processing_time_timer_pending_at_a_checkpoint_fires_once_after_the_restore() {
    let mut h = OperatorHarness::new(probe(None));
    h.process(at(0, Cmd::ProcessingTimer(5_000)));
    h.process(at(0, Cmd::ProcessingTimer(60_000)));
    let mut state = MemoryStateBackend::new();
    h.snapshot(&mut state).unwrap();
    h.set_processing_time(5_000); // fires after the checkpoint: the restore fires it again
    let mut restored = OperatorHarness::new(probe(None));
    restored.restore(&state).unwrap();
    restored.set_processing_time(100_000); // both came due while the job was down
    restored.set_processing_time(200_000);
    assert_eq!(
        restored.payloads(),
        ["Some(ProcessingTime) timer at 5000", "Some(ProcessingTime) timer at 60000"],
        "each once, at the first tick after the restore"
    );
}

#[test]
fn what_the_clean_up_removed_stays_removed_after_a_restore() {
    // Expired values stay readable until the clean-up: a restore that brought back a removed
    // element would show it.
    let ttl = StateTtl::event_time(TEN_S).visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp);
    let op = || KeyedProcess::new("p", Probe::new(Some(ttl)));
    let mut h = OperatorHarness::new(op());
    let mut state = MemoryStateBackend::new();
    h.process(of("a", 1_000, Cmd::Add(1)));
    h.process(of("a", 7_000, Cmd::Add(2)));
    h.process(of("a", 6_000, Cmd::Put(3, 30)));
    h.snapshot(&mut state).unwrap();
    h.advance_watermark(Watermark(10_000)); // a clean-up: nothing expired yet
    h.process(of("b", 9_000, Cmd::Add(9))); // b's writes pay for the next clean-up
    h.process(of("b", 9_000, Cmd::Put(9, 90)));
    h.advance_watermark(Watermark(12_500)); // the clean-up removes a's element of 1 s, only
    h.snapshot(&mut state).unwrap(); // incremental: a's list changed
    let mut restored = OperatorHarness::new(op());
    restored.restore(&state).unwrap();
    restored.process(of("a", 12_500, Cmd::ReadList));
    restored.process(of("a", 12_500, Cmd::ReadMap));
    restored.process(of("b", 12_500, Cmd::ReadList));
    assert_eq!(restored.payloads(), ["[2]", "[(3, 30)]", "[9]"], "removals written incrementally");
}

#[test]
fn a_processing_time_timer_fired_before_a_later_checkpoint_does_not_fire_after_its_restore() {
    let mut h = OperatorHarness::new(probe(None));
    let mut state = MemoryStateBackend::new();
    h.process(at(0, Cmd::ProcessingTimer(5_000)));
    h.snapshot(&mut state).unwrap();
    h.set_processing_time(5_000);
    assert_eq!(h.payloads().len(), 1);
    h.snapshot(&mut state).unwrap();
    let mut restored = OperatorHarness::new(probe(None));
    restored.restore(&state).unwrap();
    restored.set_processing_time(100_000);
    assert!(restored.payloads().is_empty(), "fired once, before the checkpoint that followed");
}

#[test]
fn an_out_of_order_read_does_not_shorten_a_values_life() {
    let ttl = StateTtl::event_time(TEN_S).update(TtlUpdate::OnReadAndWrite);
    let mut h = OperatorHarness::new(probe(Some(ttl)));
    h.process(at(10_000, Cmd::SetValue(7)));
    h.advance_watermark(Watermark(9_000));
    h.process(at(1_000, Cmd::ReadValue)); // a late record: its time is no refresh
    h.process(at(2_000, Cmd::SetValue(8))); // nor is its write
    h.advance_watermark(Watermark(19_999));
    h.process(at(19_999, Cmd::ReadValue)); // refreshes to 19.999 s
    h.advance_watermark(Watermark(29_998));
    h.process(at(29_998, Cmd::ReadValue));
    h.advance_watermark(Watermark(39_998));
    h.process(at(39_998, Cmd::ReadValue));
    assert_eq!(h.payloads(), ["Some(7)", "Some(8)", "Some(8)", "None"]);
}

/// Declares "v" twice, as two different states.
struct Twice;
impl KeyedFunction for Twice {
    type In = Cmd;
    type Out = String;
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(ValueState::<u32>::new("v"));
        states.value(ValueState::<u64>::new("v"));
    }
    fn process(&mut self, _: Cmd, ctx: &mut KeyedContext<'_, String>) -> Result<(), Rejection> {
        ctx.set_value(ValueState::<u32>::new("v"), 1)?;
        Ok(())
    }
}

#[test]
fn a_name_declared_as_two_states_or_used_with_another_ttl_is_refused_at_the_first_access() {
    let mut h = OperatorHarness::new(KeyedProcess::new("twice", Twice));
    h.process(keyed(Cmd::ReadValue));
    assert!(h.dead_letters()[0].detail.contains("declared twice"), "{}", h.dead_letters()[0].detail);

    /// Declares "v" without a TTL, uses it with one.
    struct OtherTtl;
    impl KeyedFunction for OtherTtl {
        type In = Cmd;
        type Out = String;
        fn declare(&self, states: &mut StateDeclarations) {
            states.value(ValueState::<u32>::new("v"));
        }
        fn process(&mut self, _: Cmd, ctx: &mut KeyedContext<'_, String>) -> Result<(), Rejection> {
            ctx.set_value(ValueState::<u32>::new("v").with_ttl(StateTtl::event_time(TEN_S)), 1)?;
            Ok(())
        }
    }
    let mut h = OperatorHarness::new(KeyedProcess::new("other", OtherTtl));
    h.process(keyed(Cmd::ReadValue));
    assert!(h.dead_letters()[0].detail.contains("time to live"), "{}", h.dead_letters()[0].detail);
}

#[test]
fn a_checkpoint_of_the_first_format_is_read_and_written_again_in_the_current_one() {
    use ferroflow::state::StateBackend;
    // The first format: the watermark, then value rows (tag 1, name, key) holding bare values.
    let mut state = MemoryStateBackend::new();
    state.put("keyed/probe", b"\x00meta", &5_000i64.to_be_bytes()).unwrap();
    state.put("keyed/probe", b"\x01\x01vk", &[7]).unwrap(); // postcard's 7u32
    let mut h = OperatorHarness::new(probe(None));
    h.restore(&state).unwrap();
    h.process(at(6_000, Cmd::ReadValue));
    h.snapshot(&mut state).unwrap(); // writes the value again, stamped, with the format row
    let mut again = OperatorHarness::new(probe(None));
    again.restore(&state).unwrap();
    again.process(at(6_000, Cmd::ReadValue));
    assert_eq!((h.payloads(), again.payloads()), (vec!["Some(7)".to_owned()], vec!["Some(7)".to_owned()]));
}

/// A counter whose value type is chosen by the test.
struct Typed<T>(std::marker::PhantomData<T>);

impl<T: StateValue + Default + Clone + std::fmt::Debug> KeyedFunction for Typed<T> {
    type In = Cmd;
    type Out = String;
    fn declare(&self, states: &mut StateDeclarations) {
        states.value(ValueState::<T>::new("v"));
    }
    fn process(&mut self, _: Cmd, ctx: &mut KeyedContext<'_, String>) -> Result<(), Rejection> {
        let v = ctx.value(ValueState::<T>::new("v"))?.cloned().unwrap_or_default();
        ctx.set_value(ValueState::<T>::new("v"), v.clone())?;
        ctx.emit(format!("{v:?}"));
        Ok(())
    }
}

fn typed<T: StateValue + Default + Clone + std::fmt::Debug>() -> OperatorHarness<KeyedProcess<Typed<T>>> {
    OperatorHarness::new(KeyedProcess::new("typed", Typed::<T>(std::marker::PhantomData)))
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Before {
    count: i64,
    name: String,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct After {
    total: i64,
    label: String,
}

fn keyed(cmd: Cmd) -> Vec<Record<Cmd>> {
    let mut r = Record::new(cmd, 0);
    r.key = Key::from("k");
    vec![r]
}

#[test]
fn a_restore_refuses_a_state_whose_type_changed_under_its_name_and_accepts_a_renamed_one() {
    let mut h = typed::<i64>();
    h.process(keyed(Cmd::ReadValue));
    let mut state = MemoryStateBackend::new();
    h.snapshot(&mut state).unwrap();
    let err = typed::<u64>().restore(&state).unwrap_err().to_string();
    assert!(err.contains("state 'v'") && err.contains("I64") && err.contains("U64"), "{err}");

    let mut h = typed::<Before>();
    h.process(keyed(Cmd::ReadValue));
    let mut state = MemoryStateBackend::new();
    h.snapshot(&mut state).unwrap();
    typed::<(i64, String, bool)>().restore(&state).unwrap_err();
    let mut renamed = typed::<After>();
    renamed.restore(&state).unwrap();
    renamed.process(keyed(Cmd::ReadValue));
    assert_eq!(renamed.payloads(), [r#"After { total: 0, label: "" }"#], "same shape, other names");
}

#[test]
fn a_restore_refuses_a_state_declared_as_another_kind() {
    let mut h = OperatorHarness::new(probe(None));
    h.process(at(1, Cmd::SetValue(1)));
    let mut state = MemoryStateBackend::new();
    h.snapshot(&mut state).unwrap();
    /// Declares "v" as a list.
    struct ListV;
    impl KeyedFunction for ListV {
        type In = Cmd;
        type Out = String;
        fn declare(&self, states: &mut StateDeclarations) {
            states.list(ListState::<u32>::new("v"));
            states.list(ListState::<u32>::new("l"));
            states.map(MapState::<u8, u32>::new("m"));
        }
        fn process(&mut self, _: Cmd, _: &mut KeyedContext<'_, String>) -> Result<(), Rejection> {
            Ok(())
        }
    }
    let err =
        OperatorHarness::new(KeyedProcess::new("probe", ListV)).restore(&state).unwrap_err().to_string();
    assert!(err.contains("written as a value state") && err.contains("declares a list state"), "{err}");
}

/// Runs timers at 2.000–2.005 s and 9 s of processing time, one key each, on `workers` copies
/// of the probe: the clock is moved to 6 s while the source waits, then the input ends.
async fn run_processing_timers(workers: usize) {
    let clock = ManualClock::new(1_000);
    let go = Arc::new(tokio::sync::Notify::new());
    let timers: Vec<i64> = (2_000..2_006).chain([9_000]).collect();
    let source = ScriptedSource::new()
        .assign(vec![0])
        .records(timers.iter().map(|t| Record::new(Cmd::ProcessingTimer(*t), 0)).collect())
        .wait(&go)
        .finish(0);
    let (sink, rows) = CollectSink::with_handle();
    let mut runner = Runner::builder()
        .clock(Arc::new(clock.clone()))
        .tick_interval(std::time::Duration::from_millis(5))
        .workers(workers)
        .build()
        .unwrap();
    let job = || {
        Stream::<Cmd>::new()
            .key_by(|c: &Cmd| Key::from(format!("{c:?}")))
            .keyed_process(Probe::new(None))
            .id("probe")
    };
    let run = runner.parallel_job(source, job).sink(sink).discard_dead_letters().run();
    let expected: Vec<String> =
        (2_000..2_006).map(|t| format!("Some(ProcessingTime) timer at {t}")).collect();
    let steps = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(rows.snapshot().is_empty(), "{workers} workers: nothing due at 1 s");
        clock.set(6_000);
        wait_until(10, "the timers before 6 s", || rows.len() == expected.len()).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut fired = rows.snapshot();
        fired.sort();
        assert_eq!(fired, expected, "{workers} workers: each due timer once; the one at 9 s is not due");
        go.notify_one();
    };
    let (report, ()) = within(10, "the job", async { tokio::join!(run, steps) }).await;
    let report = report.unwrap();
    assert_eq!(rows.take().len(), expected.len(), "the end of input does not fire processing-time timers");
    assert!(report.counters.identity_holds(), "{workers} workers: {:?}", report.counters);
}

#[tokio::test]
async fn processing_time_timers_fire_from_the_runners_clock() {
    run_processing_timers(1).await;
}

/// Copies of the chain each fire the timers of the keys they own, at the ticks every copy sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_fire_the_processing_time_timers_of_their_keys() {
    run_processing_timers(2).await;
}

/// Sums each key's values per second of event time and, at each second's end, emits the sum of
/// everything up to it (a timer per second with values; a map of open seconds; a value for the
/// closed total). Also emits whether a TTL'd value written by the key's previous timer is still
/// there, which only a restore that keeps stamps reproduces.
struct RunningSum;
const OPEN: MapState<i64, i64> = MapState::new("open-seconds");
const CLOSED: ValueState<i64> = ValueState::new("closed-total");
const RECENT: ValueState<i64> =
    ValueState::new("recent").with_ttl(StateTtl::event_time(std::time::Duration::from_millis(2_500)));

impl KeyedFunction for RunningSum {
    type In = (u8, i64, i64);
    type Out = (i64, i64, bool);
    fn declare(&self, states: &mut StateDeclarations) {
        states.map(OPEN);
        states.value(CLOSED);
        states.value(RECENT);
    }
    fn process(
        &mut self,
        (_, t, v): (u8, i64, i64),
        ctx: &mut KeyedContext<'_, (i64, i64, bool)>,
    ) -> Result<(), Rejection> {
        let end = t.div_euclid(1_000) * 1_000 + 999;
        let mut open = ctx.map(OPEN)?;
        let sum = open.get(&end).copied().unwrap_or(0) + v;
        open.put(end, sum);
        ctx.register_event_time_timer(end);
        Ok(())
    }
    fn on_timer(&mut self, ctx: &mut KeyedContext<'_, (i64, i64, bool)>) -> Result<(), Rejection> {
        let end = ctx.timestamp();
        let mut open = ctx.map(OPEN)?;
        let part = open.get(&end).copied().unwrap_or(0);
        open.remove(&end);
        let total = ctx.value(CLOSED)?.copied().unwrap_or(0) + part;
        ctx.set_value(CLOSED, total)?;
        let recent = ctx.value(RECENT)?.is_some();
        ctx.set_value(RECENT, end)?;
        ctx.emit((end, total, recent));
        Ok(())
    }
}

const BOUND_MS: i64 = 2_000;

fn running_sum() -> impl IntoOperator<Op: Operator<In = (u8, i64, i64), Out = (i64, i64, bool)>> {
    Stream::<(u8, i64, i64)>::new()
        .assign_timestamps(
            |r: &(u8, i64, i64)| r.1,
            WatermarkStrategy::bounded_out_of_orderness(std::time::Duration::from_millis(BOUND_MS as u64)),
        )
        .key_by(|r: &(u8, i64, i64)| Key::from(format!("k{}", r.0)))
        .keyed_process(RunningSum)
        .id("running-sum")
}

/// Runs `input` in batches of `batch`; with `cut`, snapshots after that batch and goes on in a
/// new harness restored from it. Returns (key, second end, total, recent) sorted.
fn run_sum(input: &[(u8, i64, i64)], batch: usize, cut: Option<usize>) -> Vec<(String, i64, i64, bool)> {
    let mut h = OperatorHarness::new(running_sum());
    let mut out = Vec::new();
    for (i, chunk) in input.chunks(batch.max(1)).enumerate() {
        h.process(chunk.iter().map(|r| Record::new(*r, 0)).collect());
        if cut == Some(i) {
            let mut state = MemoryStateBackend::new();
            h.snapshot(&mut state).unwrap();
            out.extend(h.outputs().iter().map(|r| (r.key.as_str().unwrap().to_owned(), r.payload)));
            h = OperatorHarness::new(running_sum());
            h.restore(&state).unwrap();
        }
    }
    h.finish(&[]);
    out.extend(h.outputs().iter().map(|r| (r.key.as_str().unwrap().to_owned(), r.payload)));
    let mut out: Vec<_> = out.into_iter().map(|(k, (end, total, recent))| (k, end, total, recent)).collect();
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the order within the bound, each second's total per key is the batch sum of
    /// everything up to that second; a snapshot and restore anywhere gives the same output.
    #[test]
    fn a_running_sum_equals_the_batch_oracle_under_any_reordering_within_the_bound(
        records in proptest::collection::vec((0u8..3, 0i64..500, -50i64..50, 0i64..BOUND_MS), 1..80),
        batch in 1usize..6,
        cut in 0usize..1_000,
    ) {
        // Event times grow by up to 0.5 s; each record arrives up to the bound late.
        let mut t = 0;
        let mut timed: Vec<((u8, i64, i64), i64)> = records.iter().map(|&(k, gap, v, delay)| {
            t += gap;
            ((k, t, v), t + delay)
        }).collect();
        timed.sort_by_key(|(_, arrival)| *arrival);
        let input: Vec<(u8, i64, i64)> = timed.into_iter().map(|(r, _)| r).collect();

        let whole = run_sum(&input, batch, None);
        let batches = input.len().div_ceil(batch);
        prop_assert_eq!(&run_sum(&input, batch, Some(cut % batches)), &whole);

        let mut oracle = Vec::new();
        for k in 0u8..3 {
            let mut ends: Vec<i64> = input.iter().filter(|r| r.0 == k).map(|r| r.1.div_euclid(1_000) * 1_000 + 999).collect();
            ends.sort();
            ends.dedup();
            for end in ends {
                let total: i64 = input.iter().filter(|r| r.0 == k && r.1 <= end).map(|r| r.2).sum();
                oracle.push((format!("k{k}"), end, total));
            }
        }
        oracle.sort();
        let got: Vec<(String, i64, i64)> = whole.into_iter().map(|(k, end, total, _)| (k, end, total)).collect();
        prop_assert_eq!(got, oracle);
    }
}

#[test]
fn the_failed_logins_job_reads_out_of_order_logins_within_its_bound() {
    let m = 60_000;
    // ana's four failures arrive out of order (within 30 s): one alert, at the fourth in time.
    let logins: Vec<Login> = vec![
        ("ana", m + 20_000, false),
        ("ana", m, false),
        ("ana", m + 10_000, false),
        ("ana", m + 25_000, false),
    ];
    let mut h = OperatorHarness::new(failed_logins_example::job());
    h.process(logins.iter().map(|l| Record::new(*l, 0)).collect());
    assert_eq!(h.payloads(), [Alert { user: "ana".into(), failures: 4, at: m + 25_000 }]);
    assert_eq!(h.counters().records_processed, 4);
}
