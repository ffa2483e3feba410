//! The pipeline's input event and its decoding, with or without the data contract.

use bytes::Bytes;
use ferroflow_core::Rejection;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::contract::{Contract, ContractStats, Violation};

/// An input event, as the data contract (`contracts/events.v1.json`) describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id (producers' retries resend the same id).
    pub event_id: String,
    /// The acting user.
    pub user_id: String,
    /// What happened (`purchase`, `view`, …).
    pub event_type: String,
    /// Event time in ms since the epoch. Decoded from epoch milliseconds (an integer) or from an
    /// RFC 3339 date-time string (`2024-05-01T12:00:00.250Z`); serialized as milliseconds.
    #[serde(deserialize_with = "de_ts")]
    pub ts: i64,
    /// Amount of money involved.
    pub amount: f64,
}

impl Event {
    /// Decodes one JSON event, keeping its bytes. Checks types only, not the data contract (see
    /// [`Event::decode_checked`]); unknown fields are ignored.
    ///
    /// # Examples
    /// ```
    /// use bytes::Bytes;
    /// use ferroflow_pipeline::event::Event;
    /// let line = Bytes::from_static(br#"{"event_id":"e1","user_id":"u1","event_type":"view","ts":"1970-01-01T00:00:01Z","amount":0}"#);
    /// assert_eq!(Event::decode(&line).unwrap().ts, 1_000);
    /// ```
    pub fn decode(line: &Bytes) -> Result<Event, Rejection> {
        serde_json::from_slice(line).map_err(|e| Rejection::decode(e.to_string()))
    }

    /// Decodes one JSON event and checks it against `contract`, counting violations in `stats`.
    ///
    /// Bytes that are not JSON are a `decode_error`; JSON that breaks the contract is a
    /// `contract_violation` whose detail starts with the rule (`minimum:/amount: …`), and that rule
    /// is counted. The line is parsed once: the checked JSON value is taken apart into the event.
    ///
    /// # Examples
    /// ```
    /// use bytes::Bytes;
    /// use ferroflow_core::DeadLetterReason;
    /// use ferroflow_pipeline::contract::{Contract, ContractStats};
    /// use ferroflow_pipeline::event::Event;
    /// let contract = Contract::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../contracts/events.v1.json")).unwrap();
    /// let stats = ContractStats::new();
    ///
    /// let ok = Bytes::from_static(br#"{"event_id":"e1","user_id":"u1","event_type":"view","ts":1000,"amount":2.5}"#);
    /// assert_eq!(Event::decode_checked(&ok, &contract, &stats).unwrap().amount, 2.5);
    ///
    /// let bad = Bytes::from_static(br#"{"event_id":"e1","user_id":"u1","event_type":"view","ts":1000,"amount":-1}"#);
    /// let rejection = Event::decode_checked(&bad, &contract, &stats).unwrap_err();
    /// assert_eq!(rejection.reason, DeadLetterReason::ContractViolation);
    /// assert!(rejection.detail.starts_with("minimum:/amount: "));
    /// assert_eq!(stats.snapshot().get("minimum:/amount"), Some(&1));
    /// ```
    pub fn decode_checked(
        line: &Bytes,
        contract: &Contract,
        stats: &ContractStats,
    ) -> Result<Event, Rejection> {
        // Most events are valid: checked while parsing, without a JSON value. Anything else
        // takes the full validation, which names the broken rule.
        if let Some(event) = contract.accept(line).and_then(Event::from_fields) {
            return Ok(event);
        }
        let value: Value = serde_json::from_slice(line).map_err(|e| Rejection::decode(e.to_string()))?;
        let checked = contract.check(&value).and_then(|()| Event::from_checked(value));
        checked.map_err(|v| {
            stats.record(&v.rule);
            Rejection::contract(v.to_string())
        })
    }

    /// The event made of fields the compiled contract accepted; `None` when they do not make one
    /// (the full validation then decides, and names why).
    fn from_fields(f: crate::contract_plan::EventFields) -> Option<Event> {
        let ts = match f.ts_ms {
            Some(ms) => Some(ms).filter(|ms| (0..=MAX_TS_MS).contains(ms))?,
            None => ts_from_value(f.ts.as_ref()?).ok()?,
        };
        let amount = f.amount.filter(|a| a.is_finite())?;
        Some(Event { event_id: f.event_id?, user_id: f.user_id?, event_type: f.event_type?, ts, amount })
    }

    /// Takes a contract-checked value apart (moving its strings, no copy). The contract already
    /// guarantees the shape, so failures here mean a contract that is looser than this type; they
    /// are reported as violations with the same rule names, never as panics.
    fn from_checked(value: Value) -> Result<Event, Violation> {
        let Value::Object(mut m) = value else {
            return Err(violation("type:/", "the event is not a JSON object"));
        };
        let ts = match m.get("ts") {
            Some(v) => ts_from_value(v)?,
            None => return Err(violation("required:ts", "\"ts\" is a required property")),
        };
        let amount = match m.get("amount") {
            Some(Value::Number(n)) => match n.as_f64() {
                Some(a) if a.is_finite() => a,
                _ => return Err(violation("type:/amount", format!("{n} is not a finite number"))),
            },
            Some(other) => {
                return Err(violation("type:/amount", format!("{other} is not of type \"number\"")));
            }
            None => return Err(violation("required:amount", "\"amount\" is a required property")),
        };
        Ok(Event {
            event_id: take_string(&mut m, "event_id")?,
            user_id: take_string(&mut m, "user_id")?,
            event_type: take_string(&mut m, "event_type")?,
            ts,
            amount,
        })
    }
}

fn violation(rule: &str, detail: impl Into<String>) -> Violation {
    Violation { rule: rule.to_owned(), detail: detail.into() }
}

fn take_string(m: &mut Map<String, Value>, field: &'static str) -> Result<String, Violation> {
    match m.remove(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => {
            Err(violation(&format!("type:/{field}"), format!("{other} is not of type \"string\"")))
        }
        None => Err(violation(&format!("required:{field}"), format!("\"{field}\" is a required property"))),
    }
}

/// Event time from epoch milliseconds or an RFC 3339 string; the contract's bounds (1970 to 9999)
/// keep it positive.
fn ts_from_value(v: &Value) -> Result<i64, Violation> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(ms) if ms >= 0 => Ok(ms),
            Some(ms) => Err(violation("minimum:/ts", format!("{ms} is less than the minimum of 0"))),
            // JSON Schema counts 1.0 as an integer.
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && (0.0..=MAX_TS_MS as f64).contains(&f) => Ok(f as i64),
                _ => Err(violation("type:/ts", format!("{n} is not epoch milliseconds"))),
            },
        },
        Value::String(s) => match parse_rfc3339_ms(s) {
            Some(ms) if ms > MAX_TS_MS => {
                // A negative offset on the last day of 9999 reaches past the contract's maximum.
                Err(violation("maximum:/ts", format!("\"{s}\" is after 9999-12-31T23:59:59.999Z")))
            }
            Some(ms) if ms >= 0 => Ok(ms),
            Some(_) => Err(violation("minimum:/ts", format!("\"{s}\" is before 1970-01-01T00:00:00Z"))),
            None => Err(violation("format:/ts", format!("\"{s}\" is not a \"date-time\""))),
        },
        other => Err(violation("type:/ts", format!("{other} is not of types \"integer\", \"string\""))),
    }
}

/// 9999-12-31T23:59:59.999Z, the contract's `maximum` for `ts`.
const MAX_TS_MS: i64 = 253_402_300_799_999;

/// Milliseconds since the epoch of an RFC 3339 date-time (any offset; fractions below a
/// millisecond are truncated), or `None` when it is not one.
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

pub(crate) fn de_ts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct TsVisitor;
    impl serde::de::Visitor<'_> for TsVisitor {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("epoch milliseconds (an integer) or an RFC 3339 date-time string")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("ts {v} is out of range")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<i64, E> {
            parse_rfc3339_ms(v).ok_or_else(|| E::custom(format!("ts \"{v}\" is not an RFC 3339 date-time")))
        }
    }
    d.deserialize_any(TsVisitor)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use ferroflow_core::DeadLetterReason;

    use super::*;

    fn contract() -> Contract {
        Contract::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../contracts/events.v1.json")).unwrap()
    }

    fn line(ts: &str, amount: &str) -> Bytes {
        Bytes::from(format!(
            r#"{{"event_id":"e-1","user_id":"u-1","event_type":"purchase","ts":{ts},"amount":{amount},"attributes":{{"campaign":"spring"}}}}"#
        ))
    }

    #[test]
    fn valid_event_decodes() {
        let (c, stats) = (contract(), ContractStats::new());
        let raw = line("1700000000000", "12.5");
        let e = Event::decode_checked(&raw, &c, &stats).unwrap();
        assert_eq!(
            (e.event_id.as_str(), e.user_id.as_str(), e.event_type.as_str(), e.ts, e.amount),
            ("e-1", "u-1", "purchase", 1_700_000_000_000, 12.5)
        );
        assert_eq!(stats.total(), 0);
    }

    #[test]
    fn rfc3339_and_epoch_ms_give_the_same_ts() {
        let (c, stats) = (contract(), ContractStats::new());
        let ms = Event::decode_checked(&line("1714564800250", "1"), &c, &stats).unwrap().ts;
        for s in [
            r#""2024-05-01T12:00:00.250Z""#,
            r#""2024-05-01T14:00:00.250+02:00""#,
            r#""2024-05-01t12:00:00.250999z""#,
        ] {
            assert_eq!(Event::decode_checked(&line(s, "1"), &c, &stats).unwrap().ts, ms, "{s}");
            assert_eq!(Event::decode(&line(s, "1")).unwrap().ts, ms, "unchecked decode too: {s}");
        }
        assert_eq!(ms, 1_714_564_800_250);
        assert_eq!(Event::decode_checked(&line("1714564800250.0", "1"), &c, &stats).unwrap().ts, ms);
    }

    #[test]
    fn malformed_json_is_a_decode_error_and_not_counted() {
        let (c, stats) = (contract(), ContractStats::new());
        let r = Event::decode_checked(&Bytes::from_static(b"{\"event_id\": \"oops\", \"ts\": "), &c, &stats)
            .unwrap_err();
        assert_eq!(r.reason, DeadLetterReason::DecodeError);
        assert_eq!(stats.total(), 0, "only contract violations are counted per rule");
    }

    #[test]
    fn every_rule_class_is_a_counted_contract_violation() {
        let (c, stats) = (contract(), ContractStats::new());
        let cases = [
            (r#"{"user_id":"u","event_type":"view","ts":1,"amount":1}"#, "required:event_id"),
            (r#"{"event_id":"e","user_id":"u","event_type":"view","amount":1}"#, "required:ts"),
            (r#"{"event_id":"e","user_id":"u","event_type":"view","ts":1,"amount":"1"}"#, "type:/amount"),
            (r#"{"event_id":"e","user_id":"u","event_type":"view","ts":1,"amount":-3}"#, "minimum:/amount"),
            (r#"{"event_id":"e","user_id":"u","event_type":"view","ts":"soon","amount":1}"#, "format:/ts"),
            (r#"{"event_id":"","user_id":"u","event_type":"view","ts":1,"amount":1}"#, "minLength:/event_id"),
            (
                r#"{"event_id":"e","user_id":"u","event_type":"View","ts":1,"amount":1}"#,
                "pattern:/event_type",
            ),
            (
                r#"{"event_id":"e","user_id":"u","event_type":"view","ts":1,"amount":1,"x":1}"#,
                "additionalProperties:/",
            ),
            (
                r#"{"event_id":"e","user_id":"u","event_type":"view","ts":1,"amount":1,"attributes":{"k":[1]}}"#,
                "type:/attributes/*",
            ),
            (r#"{"event_id":"e","user_id":"u","event_type":"view","ts":1,"amount":-3}"#, "minimum:/amount"),
        ];
        for (json, rule) in cases {
            let r = Event::decode_checked(&Bytes::from_static(json.as_bytes()), &c, &stats).unwrap_err();
            assert_eq!(r.reason, DeadLetterReason::ContractViolation, "{json}");
            assert!(r.detail.starts_with(&format!("{rule}: ")), "{json}: {}", r.detail);
        }
        let snap = stats.snapshot();
        assert_eq!(snap.get("minimum:/amount"), Some(&2), "counted per rule: {snap:?}");
        assert_eq!(snap.len(), cases.len() - 1);
        assert_eq!(stats.total(), cases.len() as u64);
    }

    #[test]
    fn a_date_time_past_the_maximum_by_its_offset_is_a_violation() {
        // 9999-12-31T23:59:59-23:59 is 10000-01-01T23:58:59Z: a valid date-time, past `maximum`.
        let (c, stats) = (contract(), ContractStats::new());
        let line = br#"{"event_id":"e","user_id":"u","event_type":"view","ts":"9999-12-31T23:59:59-23:59","amount":1}"#;
        let r = Event::decode_checked(&Bytes::from_static(line), &c, &stats).unwrap_err();
        assert_eq!(r.reason, DeadLetterReason::ContractViolation);
        assert!(r.detail.starts_with("maximum:/ts: "), "{}", r.detail);
        let last = br#"{"event_id":"e","user_id":"u","event_type":"view","ts":"9999-12-31T23:59:59.999Z","amount":1}"#;
        assert_eq!(
            Event::decode_checked(&Bytes::from_static(last), &c, &stats).unwrap().ts,
            253_402_300_799_999
        );
    }

    #[test]
    fn contract_looser_than_the_event_type_yields_violations_not_panics() {
        // A contract looser than the event type: its violations surface as rules, not panics.
        let loose = Contract::from_value("loose", &serde_json::json!({"version": "loose.v1"})).unwrap();
        let stats = ContractStats::new();
        let r = Event::decode_checked(&Bytes::from_static(br#"{"event_id":1}"#), &loose, &stats).unwrap_err();
        assert_eq!(r.reason, DeadLetterReason::ContractViolation);
        assert_eq!(stats.snapshot().keys().collect::<Vec<_>>(), vec!["required:ts"]);
        let r = Event::decode_checked(
            &Bytes::from_static(
                br#"{"event_id":1,"user_id":"u","event_type":"v","ts":"1969-12-31T23:59:59Z","amount":1}"#,
            ),
            &loose,
            &stats,
        )
        .unwrap_err();
        assert!(r.detail.starts_with("minimum:/ts: "), "{}", r.detail);
        let r = Event::decode_checked(
            &Bytes::from_static(br#"{"event_id":1,"user_id":"u","event_type":"v","ts":5,"amount":1}"#),
            &loose,
            &stats,
        )
        .unwrap_err();
        assert!(r.detail.starts_with("type:/event_id: "), "{}", r.detail);
    }

    #[test]
    fn unchecked_decode_still_accepts_epoch_ms_and_ignores_attributes() {
        let e = Event::decode(&line("42", "0")).unwrap();
        assert_eq!(e.ts, 42);
        let r = Event::decode(&line(r#""not a time""#, "0")).unwrap_err();
        assert_eq!(r.reason, DeadLetterReason::DecodeError);
        assert!(r.detail.contains("RFC 3339"), "{}", r.detail);
    }
}
