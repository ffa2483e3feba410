//! The contract compiled to direct checks against `jsonschema` on a corpus of random events:
//! the same accept/reject decision and the same violation for every event, and the direct checks
//! accepting every valid event they can (no silent fall back to the slow path).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use ferroflow_pipeline::contract::{Contract, ContractStats};
use ferroflow_pipeline::contract_plan::strict_date_time_ms;
use ferroflow_pipeline::event::Event;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::Value;

fn schema() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../contracts/events.v1.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The shipped contract, compiled.
fn compiled() -> Contract {
    let c = Contract::from_value("events.v1.json", &schema()).unwrap();
    assert!(c.is_compiled(), "the shipped contract compiles to direct checks");
    c
}

/// The same contract plus a keyword the plan does not compile and that changes nothing: every
/// event takes the full `jsonschema` validation.
fn reference() -> Contract {
    let mut s = schema();
    s["minProperties"] = Value::from(0);
    let c = Contract::from_value("events.v1.json", &s).unwrap();
    assert!(!c.is_compiled());
    c
}

/// A JSON string literal; `escaped` writes every character as a `\u` escape (the parser then
/// hands out an owned string instead of one borrowed from the input).
fn lit(s: &str, escaped: bool) -> String {
    if !escaped {
        return serde_json::to_string(s).unwrap();
    }
    let mut out = String::from("\"");
    for unit in s.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
    out
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9_-]{1,12}",
        "[a-z][a-z0-9_]{0,10}",
        "[A-Za-z é€😀-]{1,6}",
        (126usize..=130).prop_map(|n| "x".repeat(n)),
        (62usize..=66).prop_map(|n| "y".repeat(n)),
        (126usize..=130).prop_map(|n| "é".repeat(n)),
        (62usize..=66).prop_map(|n| "😀".repeat(n)),
    ]
}

/// A JSON value as text: (text, is it a float literal such as `1.0`).
fn number() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        any::<i64>().prop_map(|n| (n.to_string(), false)),
        (0i64..=253_402_300_799_999).prop_map(|n| (n.to_string(), false)),
        prop_oneof![Just(0i64), Just(-1), Just(253_402_300_799_999), Just(253_402_300_800_000)]
            .prop_map(|n| (n.to_string(), false)),
        Just(("18446744073709551615".to_owned(), false)),
        Just(("1e400".to_owned(), true)),
        // serde_json reads `-0` as the float -0.0.
        Just(("-0".to_owned(), true)),
        Just(("-0.0".to_owned(), true)),
        Just(("1.0".to_owned(), true)),
        Just(("1e3".to_owned(), true)),
        (-1000.0f64..100_000.0).prop_map(|f| (format!("{f}"), true)),
        (0u32..100_000).prop_map(|c| (format!("{}.{:02}", c / 100, c % 100), true)),
    ]
}

fn date() -> impl Strategy<Value = String> {
    prop_oneof![
        (1970i32..=2100, 1u32..=12, 1u32..=28, 0u32..24, 0u32..60, 0u32..=60, 0u32..1000).prop_map(
            |(y, mo, d, h, mi, s, ms)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
        ),
        // Any offset, fraction length, separator case and day (also ones a month does not have).
        (
            (0i32..=9999, 1u32..=12, 1u32..=31),
            (0u32..=24, 0u32..60, 0u32..=60),
            (0usize..=10, any::<u64>()),
            (prop::sample::select(vec!["Z", "z", "+", "-"]), 0u32..=24, 0u32..=60),
            prop::sample::select(vec!["T", "t"]),
        )
            .prop_map(|((y, mo, d), (h, mi, s), (digits, frac), (zone, oh, om), t)| {
                let fraction = match digits {
                    0 => String::new(),
                    n => format!(".{}", &format!("{frac:020}")[..n]),
                };
                let zone = match zone {
                    "Z" | "z" => zone.to_owned(),
                    sign => format!("{sign}{oh:02}:{om:02}"),
                };
                format!("{y:04}-{mo:02}-{d:02}{t}{h:02}:{mi:02}:{s:02}{fraction}{zone}")
            }),
        Just("2024-05-01T12:00:00+02:00".to_owned()),
        Just("1970-01-01T00:00:00+01:00".to_owned()),
        Just("2024-02-30T00:00:00Z".to_owned()),
        Just("2024-13-01T00:00:00Z".to_owned()),
        Just("2024-05-01 12:00:00Z".to_owned()),
        Just("2024-05-01T12:00:00".to_owned()),
        Just("9999-12-31T23:59:59.999Z".to_owned()),
        Just("yesterday".to_owned()),
    ]
}

/// Any JSON value, as text: (text, holds a float literal).
fn value() -> impl Strategy<Value = (String, bool)> {
    let leaf = prop_oneof![
        (text(), any::<bool>()).prop_map(|(s, e)| (lit(&s, e), false)),
        number(),
        date().prop_map(|d| (lit(&d, false), false)),
        Just(("true".to_owned(), false)),
        Just(("null".to_owned(), false)),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|vs| {
                let float = vs.iter().any(|(_, f)| *f);
                (format!("[{}]", vs.into_iter().map(|(v, _)| v).collect::<Vec<_>>().join(",")), float)
            }),
            // Names unique within an object, as in `attributes()`: duplicates are generated at the
            // top level only, where `Generated::duplicate` records them.
            prop::collection::btree_map("[a-c]{0,2}", inner, 0..3).prop_map(|kvs| {
                let float = kvs.iter().any(|(_, (_, f))| *f);
                let body: Vec<String> =
                    kvs.into_iter().map(|(k, (v, _))| format!("{}:{v}", lit(&k, false))).collect();
                (format!("{{{}}}", body.join(",")), float)
            }),
        ]
    })
}

/// Attribute objects: mostly flat and valid, sometimes too many, empty or long names, nested.
fn attributes() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        (text(), any::<bool>()).prop_map(|(s, e)| lit(&s, e)),
        number().prop_map(|(n, _)| n),
        Just("false".to_owned()),
    ];
    let value = prop_oneof![30 => scalar, 1 => value().prop_map(|(v, _)| v)];
    let name = prop_oneof![30 => "[a-z]{1,8}".prop_map(String::from), 1 => text()];
    // Names are unique within an object: duplicates are generated at the top level only.
    prop_oneof![
        6 => prop::collection::btree_map(name.clone(), value.clone(), 0..6),
        1 => prop::collection::btree_map(name, value, 60..70),
    ]
    .prop_map(|entries| {
        let body: Vec<String> = entries.into_iter().map(|(k, v)| format!("{}:{v}", lit(&k, false))).collect();
        format!("{{{}}}", body.join(","))
    })
}

/// A generated event: its JSON, whether a key repeats, and whether `ts` is a float literal.
#[derive(Debug, Clone)]
struct Generated {
    json: String,
    duplicate: bool,
    float_ts: bool,
}

/// One top-level field: mostly valid, otherwise any value, or missing.
fn field(
    name: &'static str,
    valid: BoxedStrategy<(String, bool)>,
) -> impl Strategy<Value = Option<(String, bool)>> {
    prop_oneof![
        24 => valid.prop_map(Some),
        1 => value().prop_map(Some),
        1 => Just(None),
    ]
    .prop_map(move |v| v.map(|(text, float)| (format!("{}:{text}", lit(name, false)), float)))
}

fn event() -> impl Strategy<Value = Generated> {
    let id = prop_oneof![8 => "[a-z0-9_-]{1,12}".prop_map(String::from), 1 => text()];
    let id = (id, any::<bool>()).prop_map(|(s, e)| (lit(&s, e), false)).boxed();
    let event_type = prop_oneof![
        Just("purchase".to_owned()),
        Just("add_to_cart".to_owned()),
        "[a-z][a-z0-9_]{0,8}",
        text(),
    ]
    .prop_map(|s| (lit(&s, false), false))
    .boxed();
    let ts = prop_oneof![
        4 => (0i64..=2_000_000_000_000).prop_map(|n| (n.to_string(), false)),
        2 => date().prop_map(|d| (lit(&d, false), false)),
        1 => number(),
    ]
    .boxed();
    let amount = prop_oneof![
        4 => (0u32..100_000).prop_map(|c| (format!("{}.{:02}", c / 100, c % 100), true)),
        1 => number(),
    ]
    .boxed();
    (
        field("event_id", id.clone()),
        field("user_id", id),
        field("event_type", event_type),
        field("ts", ts),
        field("amount", amount),
        prop_oneof![6 => Just(None), 4 => attributes().prop_map(Some), 1 => value().prop_map(|(v, _)| Some(v))],
        prop_oneof![12 => Just(None), 1 => value().prop_map(|(v, _)| Some(v))],
        any::<prop::sample::Index>(),
        prop_oneof![12 => Just(None), 1 => any::<prop::sample::Index>().prop_map(Some)],
    )
        .prop_map(|(event_id, user_id, event_type, ts, amount, attrs, extra, order, dup)| {
            let float_ts = ts.as_ref().is_some_and(|(_, f)| *f);
            let mut parts: Vec<String> =
                [event_id, user_id, event_type, ts, amount].into_iter().flatten().map(|(t, _)| t).collect();
            if let Some(a) = attrs {
                parts.push(format!("\"attributes\":{a}"));
            }
            if let Some(x) = extra {
                parts.push(format!("\"extra\":{x}"));
            }
            if !parts.is_empty() {
                let i = order.index(parts.len());
                parts.rotate_left(i);
            }
            let duplicate = match dup {
                Some(i) if !parts.is_empty() => {
                    let again = parts[i.index(parts.len())].clone();
                    parts.push(again);
                    true
                }
                _ => false,
            };
            Generated { json: format!("{{{}}}", parts.join(",")), duplicate, float_ts }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn plan_accepts_exactly_what_jsonschema_accepts(ev in event()) {
        let (fast_contract, slow_contract, stats) = (compiled(), reference(), ContractStats::new());
        let line = Bytes::from(ev.json.clone());
        let fast = Event::decode_checked(&line, &fast_contract, &stats);
        let slow = Event::decode_checked(&line, &slow_contract, &stats);
        prop_assert_eq!(&fast, &slow, "the decision or the violation differs");

        let accepted = fast_contract.accept(&line).is_some();
        let valid = serde_json::from_slice::<Value>(&line).is_ok_and(|v| slow_contract.check(&v).is_ok());
        prop_assert!(!accepted || valid, "the direct checks accepted an event jsonschema refuses");
        // The direct checks leave duplicates and `1.0`-style integers to the full validation; every
        // other valid event that makes an `Event` takes the fast path.
        if slow.is_ok() && !ev.duplicate && !ev.float_ts {
            prop_assert!(accepted, "a valid event fell back to the full validation");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// The direct `date-time` reading: only date-times `jsonschema` accepts, at `chrono`'s value.
    #[test]
    fn strict_date_times_are_read_as_chrono_and_jsonschema_read_them(d in date()) {
        if let Some(ms) = strict_date_time_ms(&d) {
            let chrono_ms = chrono::DateTime::parse_from_rfc3339(&d).map(|t| t.timestamp_millis()).ok();
            prop_assert_eq!(chrono_ms, Some(ms));
            let format = jsonschema::options()
                .should_validate_formats(true)
                .build(&serde_json::json!({"format": "date-time"}))
                .unwrap();
            prop_assert!(format.is_valid(&Value::String(d.clone())));
        }
    }
}

#[test]
fn the_corpus_has_strict_and_other_date_times() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut strict, mut other) = (0, 0);
    for _ in 0..500 {
        match strict_date_time_ms(&date().new_tree(&mut runner).unwrap().current()) {
            Some(_) => strict += 1,
            None => other += 1,
        }
    }
    assert!(strict > 50 && other > 50, "strict {strict}, other {other}");
}

#[test]
fn the_corpus_has_valid_and_invalid_events() {
    // The property above is only worth something if both kinds are common in what it generates.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (contract, stats) = (compiled(), ContractStats::new());
    let (mut ok, mut bad) = (0, 0);
    for _ in 0..500 {
        let ev = event().new_tree(&mut runner).unwrap().current();
        match Event::decode_checked(&Bytes::from(ev.json), &contract, &stats) {
            Ok(_) => ok += 1,
            Err(_) => bad += 1,
        }
    }
    assert!(ok > 50 && bad > 50, "valid {ok}, invalid {bad}");
}

/// Anchored patterns of letters, classes (with ranges, and brackets inside them), stray `]`s and
/// quantifiers: what the direct check might take, with the spots where ECMA 262 and the `regex`
/// crate read brackets differently.
fn pattern() -> impl Strategy<Value = String> {
    let member = prop_oneof![Just("a"), Just("b"), Just("["), Just("-"), Just("a-b")];
    // A class, often followed by a `]` (which closes a nested class to the `regex` crate).
    let class = (proptest::collection::vec(member, 1..4), any::<bool>())
        .prop_map(|(m, extra)| format!("[{}]{}", m.concat(), if extra { "]" } else { "" }));
    let piece = prop_oneof![Just("a".to_owned()), Just("b".to_owned()), Just("]".to_owned()), class];
    let quantifier = prop_oneof![Just(""), Just(""), Just("*"), Just("?"), Just("+")];
    proptest::collection::vec((piece, quantifier), 0..4)
        .prop_map(|parts| format!("^{}$", parts.into_iter().map(|(p, q)| p + q).collect::<String>()))
}

/// The shipped contract with `event_type`'s pattern replaced, compiled and by value; `None` when
/// `jsonschema` refuses the pattern.
fn with_pattern(pattern: &str) -> Option<(Contract, Contract)> {
    let mut s = schema();
    s["properties"]["event_type"]["pattern"] = Value::from(pattern);
    let fast = Contract::from_value("events.v1.json", &s).ok()?;
    s["minProperties"] = Value::from(0);
    let slow = Contract::from_value("events.v1.json", &s).ok()?;
    Some((fast, slow))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    /// Patterns the direct check might take (letters, classes, ranges, quantifiers, brackets in
    /// odd places) decide as `jsonschema` does, whatever ECMA 262 and the `regex` crate make of
    /// them.
    #[test]
    fn direct_patterns_decide_as_jsonschema_does(pattern in pattern()) {
        let Some((fast, slow)) = with_pattern(&pattern) else { return Ok(()) };
        let stats = ContractStats::new();
        // Every event type of up to three of the characters the patterns use.
        let alphabet = ['a', 'b', '[', ']', '-'];
        let mut types: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        for _ in 0..2 {
            let longer: Vec<String> =
                types.iter().flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}"))).collect();
            types.extend(longer);
        }
        types.sort();
        types.dedup();
        for event_type in types {
            let line = Bytes::from(format!(
                r#"{{"event_id":"e","user_id":"u","event_type":{},"ts":1000,"amount":1}}"#,
                serde_json::to_string(&event_type).unwrap()
            ));
            let (a, b) = (Event::decode_checked(&line, &fast, &stats), Event::decode_checked(&line, &slow, &stats));
            prop_assert_eq!(a.is_ok(), b.is_ok(), "pattern {:?} on {:?}", pattern, event_type);
        }
    }
}

#[test]
fn a_nested_class_is_read_as_jsonschema_reads_it() {
    // `[a[bc]]` is the class {a, [, b, c} then `]` to ECMA 262 (and jsonschema), {a, b, c} to the
    // `regex` crate.
    let (fast, slow) = with_pattern("^[a[bc]]$").unwrap();
    let stats = ContractStats::new();
    for t in ["a", "a]", "[]"] {
        let line = Bytes::from(format!(
            r#"{{"event_id":"e","user_id":"u","event_type":"{t}","ts":1000,"amount":1}}"#
        ));
        assert_eq!(
            Event::decode_checked(&line, &fast, &stats).is_ok(),
            Event::decode_checked(&line, &slow, &stats).is_ok(),
            "{t}"
        );
    }
}
