#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Golden tests for window semantics.
//!
//! Each case lives in `tests/golden/<case>/`:
//!
//! * `case.json`: the window spec (a [`WindowConfig`]), the watermark strategy
//!   (`out_of_orderness_ms`, optional `idle_timeout_ms`) and a description;
//! * `input.jsonl`: one step per line, either an event
//!   `{"partition":0,"offset":3,"key":"a","ts":12000,"value":2.5}` (fed as its own batch) or a
//!   directive: `{"clock":5000}` (set processing time), `{"assign":[0,1]}`, `{"revoke":[1]}`,
//!   `{"finish":1}`, `{"tick":true}`, `{"end":true}` (source signals);
//! * `expected.jsonl`: everything the chain emits, in order, one JSON object per line:
//!   - `{"watermark":9999}` (or `"max"`) when a new combined watermark is delivered to the chain;
//!     the rows after it (until the next line of another kind) are what that watermark fired;
//!   - `{"key":"a","window":[0,10000],"count":2,"sum":3.5,"revision":0,"is_final":true}` for a
//!     window row (the aggregate is `(Count, Sum of value)`);
//!   - `{"dead_letter":"late_event","partition":0,"offset":5,"event_time":3000,
//!     "detail_prefix":"event time 3000 is too late"}` for a dead letter (`detail` for an exact
//!     match, `detail_prefix` for a prefix).
//!
//! The chain is driven the way the runner drives it (see `runtime/runner.rs`), but synchronously,
//! with processing time set by the input: after every step the proposed watermark, if it moved
//! forward, is delivered through `on_watermark`. Within a step, dead letters are listed before
//! rows emitted by the same call.
//!
//! The expected files were written by hand from the documented semantics, not copied from the
//! engine's output. On a mismatch the test prints a diff; with `UPDATE_GOLDEN=1` it also prints
//! the full actual output next to the expected one (it never overwrites the expected file).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ferroflow::testing::{Emitted, OperatorHarness};
use ferroflow::time::{Watermark, WatermarkStrategy};
use ferroflow::window::{Count, Sum, WindowConfig, WindowResult};
use ferroflow::{DeadLetter, Key, Record, Signal, SourcePosition, Stream};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The payload of every golden input event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    partition: u32,
    offset: u64,
    key: String,
    ts: i64,
    value: f64,
}

/// `tests/golden/<case>/case.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseConfig {
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    window: WindowConfig,
    out_of_orderness_ms: i64,
    #[serde(default)]
    idle_timeout_ms: Option<i64>,
}

/// One line of `input.jsonl`.
#[derive(Debug)]
enum Step {
    Event(Event),
    Clock(i64),
    Signal(Signal),
}

type Row = WindowResult<(u64, f64)>;

fn case_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("golden").join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Non-blank lines with their 1-based line numbers.
fn lines(text: &str) -> Vec<(usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty()).collect()
}

fn parse_step(value: Value, at: &str) -> Step {
    let Value::Object(obj) = &value else { panic!("{at}: a step must be a JSON object") };
    if obj.contains_key("ts") {
        return Step::Event(serde_json::from_value(value).unwrap_or_else(|e| panic!("{at}: bad event: {e}")));
    }
    assert_eq!(obj.len(), 1, "{at}: a directive has exactly one field");
    let (name, arg) = obj.iter().next().unwrap();
    let partitions = |v: &Value| -> Vec<u32> {
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{at}: expected partition list: {e}"))
    };
    let partition = |v: &Value| -> u32 {
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{at}: expected a partition: {e}"))
    };
    match name.as_str() {
        "clock" => Step::Clock(arg.as_i64().unwrap_or_else(|| panic!("{at}: clock takes milliseconds"))),
        "assign" => Step::Signal(Signal::PartitionsAssigned(partitions(arg))),
        "revoke" => Step::Signal(Signal::PartitionsRevoked(partitions(arg))),
        "finish" => Step::Signal(Signal::PartitionFinished(partition(arg))),
        "tick" => {
            assert_eq!(arg, &Value::Bool(true), "{at}: write {{\"tick\":true}}");
            Step::Signal(Signal::Tick)
        }
        "end" => {
            assert_eq!(arg, &Value::Bool(true), "{at}: write {{\"end\":true}}");
            Step::Signal(Signal::EndOfInput)
        }
        other => panic!("{at}: unknown directive `{other}`"),
    }
}

fn watermark_line(w: Watermark) -> String {
    if w == Watermark::MAX {
        r#"{"watermark":"max"}"#.to_owned()
    } else {
        format!(r#"{{"watermark":{}}}"#, w.0)
    }
}

fn row_line(r: &Row) -> String {
    let (count, sum) = r.value;
    format!(
        r#"{{"key":{},"window":[{},{}],"count":{},"sum":{},"revision":{},"is_final":{}}}"#,
        Value::String(r.key.to_string()),
        r.window_start,
        r.window_end,
        count,
        Value::from(sum),
        r.revision,
        r.is_final
    )
}

fn dead_letter_line(d: &DeadLetter) -> String {
    let event_time = d.event_time.map_or(Value::Null, Value::from);
    format!(
        r#"{{"dead_letter":"{}","partition":{},"offset":{},"event_time":{},"detail":{}}}"#,
        d.reason.code(),
        d.position.partition,
        d.position.offset,
        event_time,
        Value::String(d.detail.clone())
    )
}

fn run_steps(config: &CaseConfig, steps: Vec<Step>) -> Vec<String> {
    let spec = config.window.build().expect("window spec in case.json");
    let strategy = WatermarkStrategy::from_millis(config.out_of_orderness_ms, config.idle_timeout_ms)
        .expect("watermark strategy in case.json");
    let chain = Stream::<Event>::new()
        .assign_timestamps(|e: &Event| e.ts, strategy)
        .key_by(|e: &Event| Key::from(e.key.as_str()))
        .window(spec, (Count, Sum::of(|e: &Event| e.value)))
        .into_operator();
    let mut h = OperatorHarness::new(chain);
    for step in steps {
        match step {
            Step::Clock(ms) => h.set_processing_time(ms),
            Step::Signal(s) => h.signal(&s),
            Step::Event(e) => {
                let position = SourcePosition::new(e.partition, e.offset);
                h.process(vec![Record::new(e, 0).with_position(position)])
            }
        };
    }
    h.emitted()
        .map(|e| match e {
            Emitted::Output(r) => row_line(&r.payload),
            Emitted::DeadLetter(d) => dead_letter_line(d),
            Emitted::Watermark(w) => watermark_line(w),
        })
        .collect()
}

/// Numbers compare by value (`8` matches `8.0`); everything else exactly.
fn same_value(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => a == b,
            _ => a.as_f64() == b.as_f64(),
        },
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same_value(v, w)))
        }
        (a, b) => a == b,
    }
}

/// An expected line matches an actual one field by field; `detail_prefix` matches a `detail` that
/// starts with it.
fn line_matches(expected: &Value, actual: &Value) -> bool {
    let (Value::Object(e), Value::Object(a)) = (expected, actual) else {
        return same_value(expected, actual);
    };
    let mut e = e.clone();
    let mut a = a.clone();
    if let Some(prefix) = e.remove("detail_prefix") {
        let Some(detail) = a.remove("detail") else { return false };
        match (prefix.as_str(), detail.as_str()) {
            (Some(p), Some(d)) if d.starts_with(p) => {}
            _ => return false,
        }
    }
    same_value(&Value::Object(e), &Value::Object(a))
}

enum Edit {
    Same(usize),
    Missing(usize),
    Unexpected(usize),
}

/// A line diff (longest common subsequence), expected vs actual.
fn diff(expected: &[Value], actual: &[Value]) -> Vec<Edit> {
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if line_matches(&expected[i], &actual[j]) {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut edits) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && line_matches(&expected[i], &actual[j]) {
            edits.push(Edit::Same(j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            edits.push(Edit::Missing(i));
            i += 1;
        } else {
            edits.push(Edit::Unexpected(j));
            j += 1;
        }
    }
    edits
}

fn run_case(name: &str) {
    let dir = case_dir(name);
    let config: CaseConfig = serde_json::from_str(&read(&dir.join("case.json")))
        .unwrap_or_else(|e| panic!("{name}/case.json: {e}"));
    let input = read(&dir.join("input.jsonl"));
    let steps: Vec<Step> = lines(&input)
        .into_iter()
        .map(|(n, l)| {
            let at = format!("{name}/input.jsonl:{n}");
            parse_step(serde_json::from_str(l).unwrap_or_else(|e| panic!("{at}: {e}")), &at)
        })
        .collect();
    let expected_text = read(&dir.join("expected.jsonl"));
    let expected: Vec<(usize, &str, Value)> = lines(&expected_text)
        .into_iter()
        .map(|(n, l)| {
            (n, l, serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}/expected.jsonl:{n}: {e}")))
        })
        .collect();
    assert!(!expected.is_empty(), "{name}/expected.jsonl is empty: a golden case must expect output");

    let actual_lines = run_steps(&config, steps);
    let actual: Vec<Value> =
        actual_lines.iter().map(|l| serde_json::from_str(l).expect("actual lines are JSON")).collect();
    let expected_values: Vec<Value> = expected.iter().map(|(_, _, v)| v.clone()).collect();
    let edits = diff(&expected_values, &actual);
    if edits.iter().all(|e| matches!(e, Edit::Same(..))) {
        return;
    }

    let mut msg = format!(
        "golden case `{name}` does not match ({}):\n\
         \x20 `  ` both, `- ` expected only (expected.jsonl line), `+ ` actual only\n",
        dir.display()
    );
    for e in &edits {
        match *e {
            Edit::Same(j) => writeln!(msg, "    {}", actual_lines[j]),
            Edit::Missing(i) => writeln!(msg, "  - {}    (line {})", expected[i].1, expected[i].0),
            Edit::Unexpected(j) => writeln!(msg, "  + {}", actual_lines[j]),
        }
        .unwrap();
    }
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        let width = expected.iter().map(|(_, l, _)| l.len()).max().unwrap_or(0);
        writeln!(msg, "\nUPDATE_GOLDEN=1: expected (left) next to actual (right), line by line:").unwrap();
        for k in 0..expected.len().max(actual_lines.len()) {
            let l = expected.get(k).map_or("", |(_, l, _)| l);
            let r = actual_lines.get(k).map_or("", String::as_str);
            let mark = match (expected.get(k), actual.get(k)) {
                (Some((_, _, e)), Some(a)) if line_matches(e, a) => ' ',
                _ => '|',
            };
            writeln!(msg, "  {l:<width$} {mark} {r}").unwrap();
        }
        writeln!(
            msg,
            "\nactual output (review it against the documented semantics before copying it into \
             {name}/expected.jsonl; nothing was written):"
        )
        .unwrap();
        for l in &actual_lines {
            writeln!(msg, "{l}").unwrap();
        }
    } else {
        writeln!(msg, "(set UPDATE_GOLDEN=1 to print the whole actual output next to the expected)").unwrap();
    }
    panic!("{msg}");
}

macro_rules! golden_cases {
    ($($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_case(stringify!($name));
            }
        )+

        const CASES: &[&str] = &[$(stringify!($name)),+];
    };
}

golden_cases!(
    tumbling_out_of_order,
    tumbling_allowed_lateness,
    tumbling_late_into_empty_window,
    sliding_out_of_order,
    sliding_allowed_lateness,
    session_merge,
    session_record_at_end_joins,
    session_too_late_record_touching_held_session,
    session_allowed_lateness,
    session_end_of_input,
    session_idle_partition,
    idle_partition,
    finished_partition,
);

/// Every directory under `tests/golden/` is a case listed above (and vice versa).
#[test]
fn every_case_directory_is_listed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("golden");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut listed: Vec<String> = CASES.iter().map(|s| (*s).to_owned()).collect();
    listed.sort();
    assert_eq!(dirs, listed, "tests/golden/* directories and the golden_cases! list differ");
    for d in &dirs {
        for f in ["case.json", "input.jsonl", "expected.jsonl"] {
            assert!(root.join(d).join(f).is_file(), "{d}/{f} is missing");
        }
    }
}

/// The matcher itself: a wrong count, revision, finality or detail must not pass.
#[test]
fn matcher_rejects_near_misses() {
    let row = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    let actual = row(r#"{"key":"a","window":[0,10],"count":2,"sum":3.0,"revision":1,"is_final":false}"#);
    assert!(line_matches(
        &row(r#"{"key":"a","window":[0,10],"count":2,"sum":3,"revision":1,"is_final":false}"#),
        &actual
    ));
    for wrong in [
        r#"{"key":"a","window":[0,10],"count":3,"sum":3.0,"revision":1,"is_final":false}"#,
        r#"{"key":"a","window":[0,10],"count":2,"sum":3.5,"revision":1,"is_final":false}"#,
        r#"{"key":"a","window":[0,10],"count":2,"sum":3.0,"revision":0,"is_final":false}"#,
        r#"{"key":"a","window":[0,10],"count":2,"sum":3.0,"revision":1,"is_final":true}"#,
        r#"{"key":"a","window":[0,11],"count":2,"sum":3.0,"revision":1,"is_final":false}"#,
        r#"{"key":"a","window":[0,10],"count":2,"sum":3.0,"revision":1}"#,
    ] {
        assert!(!line_matches(&row(wrong), &actual), "{wrong} must not match");
    }
    let dl = row(
        r#"{"dead_letter":"late_event","partition":0,"offset":5,"event_time":3000,"detail":"event time 3000 is too late"}"#,
    );
    assert!(line_matches(
        &row(
            r#"{"dead_letter":"late_event","partition":0,"offset":5,"event_time":3000,"detail_prefix":"event time 3000"}"#
        ),
        &dl
    ));
    assert!(!line_matches(
        &row(
            r#"{"dead_letter":"late_event","partition":0,"offset":5,"event_time":3000,"detail_prefix":"event time 300 "}"#
        ),
        &dl
    ));
    assert!(!line_matches(
        &row(
            r#"{"dead_letter":"late_event","partition":0,"offset":6,"event_time":3000,"detail_prefix":"event"}"#
        ),
        &dl
    ));
}
