//! The data contract compiled to direct checks, run while an event is parsed: no
//! `serde_json::Value` per event on the hot path.
//!
//! The plan decides one thing only, that an event is *certainly* valid, and takes the event's
//! fields out as it goes. Whenever it is not certain (a violation, a keyword it does not compile,
//! a duplicate key, `1.0` where an integer is wanted, an array) it answers "not sure", and the
//! caller runs the full `jsonschema` validation on a parsed value, which also names the broken
//! rule. So a plan can only ever be wrong by accepting what `jsonschema` refuses, and the property
//! test `plan_accepts_exactly_what_jsonschema_accepts` checks that it never does (and that valid
//! events do not fall back).
//!
//! Compiled keywords: `type`, `properties`, `required`, `additionalProperties` (boolean or a
//! schema), `maxProperties`, `propertyNames`, `minLength`, `maxLength`, `minimum`, `maximum`, and
//! `pattern` and `format` on strings. Those two are checked directly when they can be (a `pattern`
//! written with letters, digits, `_`, `-`, classes and quantifiers only, anchored by a leading `^`
//! and a trailing `$`, translated as `jsonschema` translates it, means the same to ECMA 262 and to
//! the `regex` crate; `format: date-time` in
//! its strict `YYYY-MM-DDTHH:MM:SS[.f]Z|±HH:MM` form); whenever the direct check does not say yes,
//! a `jsonschema` validator of just those two keywords decides (the same regex translation and
//! format checks as the full validation).
//! Annotations (`title`, `description`, `$id`, `$schema`, `version`) are ignored. A schema with any
//! other keyword is not compiled: every event then takes the full validation.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// JSON types a node allows, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Types(u8);

impl Types {
    const NULL: u8 = 1;
    const BOOLEAN: u8 = 2;
    const INTEGER: u8 = 4;
    const NUMBER: u8 = 8;
    const STRING: u8 = 16;
    const OBJECT: u8 = 32;
    const ARRAY: u8 = 64;
    const ANY: Types = Types(127);

    fn of(name: &str) -> Option<u8> {
        Some(match name {
            "null" => Self::NULL,
            "boolean" => Self::BOOLEAN,
            "integer" => Self::INTEGER,
            "number" => Self::NUMBER,
            "string" => Self::STRING,
            "object" => Self::OBJECT,
            "array" => Self::ARRAY,
            _ => return None,
        })
    }

    fn allows(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// What a node says about properties it does not name.
enum Additional {
    Allowed,
    Denied,
    Schema(Box<Node>),
}

/// One compiled (sub)schema.
struct Node {
    types: Types,
    min_length: Option<usize>,
    max_length: Option<usize>,
    /// `pattern` and `format`, checked by `jsonschema` on the string alone.
    string_checks: Option<jsonschema::Validator>,
    /// The same keywords as direct checks, when all of them compile to one.
    direct_strings: Option<DirectStrings>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    properties: Vec<(String, Node)>,
    required: Vec<String>,
    additional: Additional,
    max_properties: Option<usize>,
    property_names: Option<Box<Node>>,
}

/// 2^53: integers below it in size convert to `f64` exactly.
const EXACT: f64 = 9_007_199_254_740_992.0;

impl Node {
    fn compile(schema: &Value, options: &jsonschema::ValidationOptions<'_>) -> Option<Node> {
        let Value::Object(map) = schema else { return None };
        let mut node = Node {
            types: Types::ANY,
            min_length: None,
            max_length: None,
            string_checks: None,
            direct_strings: None,
            minimum: None,
            maximum: None,
            properties: Vec::new(),
            required: Vec::new(),
            additional: Additional::Allowed,
            max_properties: None,
            property_names: None,
        };
        let mut string_checks = serde_json::Map::new();
        for (key, value) in map {
            match key.as_str() {
                "$schema" | "$id" | "version" | "title" | "description" | "$comment" => {}
                "type" => {
                    node.types = match value {
                        Value::String(t) => Types(Types::of(t)?),
                        Value::Array(ts) => {
                            let mut bits = 0;
                            for t in ts {
                                bits |= Types::of(t.as_str()?)?;
                            }
                            Types(bits)
                        }
                        _ => return None,
                    }
                }
                "minLength" => node.min_length = Some(usize::try_from(value.as_u64()?).ok()?),
                "maxLength" => node.max_length = Some(usize::try_from(value.as_u64()?).ok()?),
                "maxProperties" => node.max_properties = Some(usize::try_from(value.as_u64()?).ok()?),
                "minimum" => node.minimum = Some(exact_bound(value)?),
                "maximum" => node.maximum = Some(exact_bound(value)?),
                "pattern" | "format" => {
                    string_checks.insert(key.clone(), value.clone());
                }
                "required" => {
                    for name in value.as_array()? {
                        node.required.push(name.as_str()?.to_owned());
                    }
                }
                "properties" => {
                    for (name, sub) in value.as_object()? {
                        node.properties.push((name.clone(), Node::compile(sub, options)?));
                    }
                }
                "additionalProperties" => {
                    node.additional = match value {
                        Value::Bool(true) => Additional::Allowed,
                        Value::Bool(false) => Additional::Denied,
                        sub => Additional::Schema(Box::new(Node::compile(sub, options)?)),
                    }
                }
                "propertyNames" => node.property_names = Some(Box::new(Node::compile(value, options)?)),
                _ => return None,
            }
        }
        if !string_checks.is_empty() {
            node.direct_strings = DirectStrings::compile(&string_checks);
            node.string_checks = Some(options.build(&Value::Object(string_checks)).ok()?);
        }
        // Which properties an object named is kept as bits of one word.
        (node.properties.len() <= 64).then_some(node)
    }

    fn property(&self, name: &str) -> Option<(usize, &Node)> {
        self.properties.iter().enumerate().find(|(_, (n, _))| n == name).map(|(i, (_, node))| (i, node))
    }

    /// A string value: true when it certainly satisfies this node.
    fn string_ok(&self, s: &str) -> bool {
        if !self.types.allows(Types::STRING) {
            return false;
        }
        if self.min_length.is_some() || self.max_length.is_some() {
            let chars = s.chars().count();
            if self.min_length.is_some_and(|m| chars < m) || self.max_length.is_some_and(|m| chars > m) {
                return false;
            }
        }
        true
    }

    /// A number: true when it certainly satisfies this node.
    fn number_ok(&self, n: Num) -> bool {
        let typed = match n {
            Num::Int(_) => self.types.allows(Types::INTEGER) || self.types.allows(Types::NUMBER),
            // `1.0` is an integer to JSON Schema: leave that to the full validation.
            Num::Float(_) => self.types.allows(Types::NUMBER),
        };
        typed
            && self.minimum.is_none_or(|m| n.compare(m).is_some_and(std::cmp::Ordering::is_ge))
            && self.maximum.is_none_or(|m| n.compare(m).is_some_and(std::cmp::Ordering::is_le))
    }
}

/// `pattern` and `format` checked without `jsonschema`: `true` only when the string certainly
/// satisfies both (anything else is left to the `jsonschema` validator).
struct DirectStrings {
    pattern: Option<regex::Regex>,
    date_time: bool,
}

impl DirectStrings {
    /// `None` when a keyword has no direct check.
    fn compile(keywords: &serde_json::Map<String, Value>) -> Option<DirectStrings> {
        let mut direct = DirectStrings { pattern: None, date_time: false };
        for (key, value) in keywords {
            match (key.as_str(), value) {
                ("pattern", Value::String(p)) if same_in_ecma_and_rust(p) => {
                    // Translated as `jsonschema` translates it (brackets inside a class are
                    // literal to ECMA 262, a nested class to the `regex` crate).
                    let translated = jsonschema_regex::to_rust_regex(p).ok()?;
                    direct.pattern = Some(regex::Regex::new(&translated).ok()?);
                }
                ("format", Value::String(f)) if f == "date-time" => direct.date_time = true,
                _ => return None,
            }
        }
        Some(direct)
    }

    fn ok(&self, s: &str) -> bool {
        self.pattern.as_ref().is_none_or(|p| p.is_match(s))
            && (!self.date_time || strict_date_time_ms(s).is_some())
    }
}

/// A pattern that ECMA 262 (what JSON Schema means) and the `regex` crate read the same way: ASCII
/// letters, digits, `_` and `-`, classes, and the quantifiers `*+?{n,m}`, with `^` only first and
/// `$` only last (so no negated class, escape, dot, group or alternative).
fn same_in_ecma_and_rust(pattern: &str) -> bool {
    let last = pattern.len().saturating_sub(1);
    pattern.bytes().enumerate().all(|(i, b)| match b {
        b'^' => i == 0,
        b'$' => i == last,
        b'[' | b']' | b'-' | b'_' | b'*' | b'+' | b'?' | b'{' | b'}' | b',' => true,
        _ => b.is_ascii_alphanumeric(),
    })
}

/// Milliseconds since the epoch of an RFC 3339 date-time in its strict form
/// (`YYYY-MM-DDTHH:MM:SS`, an optional fraction of 1 to 9 digits, `Z` or `±HH:MM`; seconds up to
/// 59, days that exist in their month), or `None` for anything else, which is then left to the
/// slower checks. Every string it reads is a valid `date-time` to `jsonschema`, and its value is
/// the one `chrono` gives (fractions below a millisecond truncated).
///
/// # Examples
/// ```
/// use ferroflow_pipeline::contract_plan::strict_date_time_ms;
/// assert_eq!(strict_date_time_ms("1970-01-01T00:00:01.250Z"), Some(1_250));
/// assert_eq!(strict_date_time_ms("1970-01-01T01:00:00+01:00"), Some(0));
/// assert_eq!(strict_date_time_ms("2023-02-29T00:00:00Z"), None);
/// ```
pub fn strict_date_time_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<i64> {
        let part = b.get(from..from.checked_add(n)?)?;
        part.iter().try_fold(0i64, |acc, d| d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, c: u8| b.get(at) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if sep(i, b'.') {
        let start = i + 1;
        let n = b.get(start..).map_or(0, |rest| rest.iter().take_while(|d| d.is_ascii_digit()).count());
        if !(1..=9).contains(&n) {
            return None;
        }
        let first3 = digits(start, n.min(3))?;
        millis = first3 * 10i64.pow(3 - n.min(3) as u32);
        i = start + n;
    }
    let offset_minutes = match b.get(i..)? {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(i + 1, 2)?, digits(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' { h * 60 + m } else { -(h * 60 + m) }
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second
        - offset_minutes * 60;
    Some(seconds * 1_000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's algorithm);
/// the year has four digits, so nothing here can overflow.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A JSON number as the parser gave it.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    /// Its order against a bound, when it is certain (`None`: leave it to the full validation).
    fn compare(self, bound: f64) -> Option<std::cmp::Ordering> {
        match self {
            Num::Float(f) => f.partial_cmp(&bound),
            // Below 2^53 the conversion is exact.
            Num::Int(i) if (i as f64).abs() < EXACT => (i as f64).partial_cmp(&bound),
            // Beyond it, any bound smaller in size is on one side of it.
            Num::Int(i) if bound.abs() < EXACT => Some(i.cmp(&0)),
            Num::Int(_) => None,
        }
    }

    /// As `f64`, the way `serde_json` converts it.
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// A bound that compares exactly as `f64` with any value the plan compares it to.
fn exact_bound(value: &Value) -> Option<f64> {
    match value.as_i64().or_else(|| value.as_u64().and_then(|u| i64::try_from(u).ok())) {
        Some(i) => {
            let f = i as f64;
            (f.abs() < EXACT).then_some(f)
        }
        None => value.as_f64().filter(|f| f.is_finite()),
    }
}

/// The contract compiled to direct checks; see the module documentation.
pub struct ContractPlan {
    root: Node,
}

impl fmt::Debug for ContractPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContractPlan").field("properties", &self.root.properties.len()).finish()
    }
}

/// The top-level fields the pipeline's event is made of, taken out of an accepted event.
#[derive(Debug, Default)]
pub struct EventFields {
    /// `event_id`.
    pub event_id: Option<String>,
    /// `user_id`.
    pub user_id: Option<String>,
    /// `event_type`.
    pub event_type: Option<String>,
    /// `ts`, as the full validation would see it (a number or a string), unless `ts_ms` holds it.
    pub ts: Option<Value>,
    /// `ts` as milliseconds, when it was a strict RFC 3339 date-time (see [`strict_date_time_ms`]).
    pub ts_ms: Option<i64>,
    /// `amount`.
    pub amount: Option<f64>,
}

impl ContractPlan {
    /// Compiles `schema` with the full validation's `options`; `None` when it uses a keyword the
    /// plan does not compile (or a top level that is not an object schema).
    pub fn compile(schema: &Value, options: &jsonschema::ValidationOptions<'_>) -> Option<Self> {
        let root = Node::compile(schema, options)?;
        root.types.allows(Types::OBJECT).then_some(Self { root })
    }

    /// Parses `line` and checks it: `Some` with its fields when the event certainly satisfies the
    /// contract, `None` when only the full validation can tell.
    pub fn accept(&self, line: &[u8]) -> Option<EventFields> {
        // One UTF-8 check of the whole line (fast on ASCII) instead of one per string.
        let mut de = serde_json::Deserializer::from_str(std::str::from_utf8(line).ok()?);
        let fields = de::Deserializer::deserialize_any(&mut de, Top { node: &self.root }).ok()?;
        de.end().ok()?;
        Some(fields)
    }
}

/// The "not sure" answer, as a deserialization error that stops the parse.
fn unsure<E: de::Error>() -> E {
    E::custom("the contract plan cannot accept this event")
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The top-level object: checked like any object, with the event's fields taken out.
struct Top<'p> {
    node: &'p Node,
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = EventFields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventFields, A::Error> {
        let mut fields = EventFields::default();
        let mut object = ObjectCheck::new(self.node);
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let sub = object.key(&key)?;
            let captured = map.next_value_seed(Check { node: sub, capture: capture_of(&key) })?;
            match (key.as_ref(), captured) {
                ("event_id", Captured::Str(s)) => fields.event_id = Some(s),
                ("user_id", Captured::Str(s)) => fields.user_id = Some(s),
                ("event_type", Captured::Str(s)) => fields.event_type = Some(s),
                ("ts", Captured::Value(v)) => fields.ts = Some(v),
                ("ts", Captured::Millis(ms)) => fields.ts_ms = Some(ms),
                ("amount", Captured::Number(n)) => fields.amount = Some(n),
                _ => {}
            }
        }
        object.finish()?;
        Ok(fields)
    }
}

/// What to keep of a value while checking it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Capture {
    Nothing,
    /// An owned string.
    Str,
    /// The value as the full validation would see it (numbers and strings).
    Value,
    /// A number as `f64`.
    Number,
}

fn capture_of(key: &str) -> Capture {
    match key {
        "event_id" | "user_id" | "event_type" => Capture::Str,
        "ts" => Capture::Value,
        "amount" => Capture::Number,
        _ => Capture::Nothing,
    }
}

enum Captured {
    Nothing,
    Str(String),
    Value(Value),
    /// A date-time string as milliseconds.
    Millis(i64),
    Number(f64),
}

/// The key-level rules of one object being read.
struct ObjectCheck<'p, 'de> {
    node: &'p Node,
    /// Which named properties were seen, as bits (a duplicate key is left to the full validation,
    /// which sees the last value only). A node names at most 64 properties.
    seen: u64,
    /// Keys not named by the node, to count them and to spot duplicates.
    others: Vec<Cow<'de, str>>,
}

impl<'p, 'de> ObjectCheck<'p, 'de> {
    fn new(node: &'p Node) -> Self {
        Self { node, seen: 0, others: Vec::new() }
    }

    /// The node a key's value must satisfy; "not sure" for anything the plan cannot accept.
    #[allow(clippy::ptr_arg, reason = "a key borrowed from the input is kept without a copy")]
    fn key<E: de::Error>(&mut self, key: &Cow<'de, str>) -> Result<Option<&'p Node>, E> {
        if let Some(names) = &self.node.property_names
            && (!names.string_ok(key) || names.string_checks.is_some())
        {
            return Err(unsure());
        }
        if let Some((i, sub)) = self.node.property(key) {
            let bit = 1u64.checked_shl(u32::try_from(i).map_err(|_| unsure())?).ok_or_else(unsure)?;
            if self.seen & bit != 0 {
                return Err(unsure());
            }
            self.seen |= bit;
            return Ok(Some(sub));
        }
        let sub = match &self.node.additional {
            Additional::Denied => return Err(unsure()),
            Additional::Allowed => None,
            Additional::Schema(sub) => Some(sub.as_ref()),
        };
        if self.others.iter().any(|k| k == key) {
            return Err(unsure());
        }
        self.others.push(key.clone());
        if self.node.max_properties.is_some_and(|m| self.seen.count_ones() as usize + self.others.len() > m) {
            return Err(unsure());
        }
        Ok(sub)
    }

    fn finish<E: de::Error>(self) -> Result<(), E> {
        let seen = self.seen.count_ones() as usize + self.others.len();
        if self.node.max_properties.is_some_and(|m| seen > m) {
            return Err(unsure());
        }
        for name in &self.node.required {
            let present = match self.node.property(name) {
                Some((i, _)) => {
                    u32::try_from(i).is_ok_and(|i| self.seen.checked_shr(i).is_some_and(|s| s & 1 == 1))
                }
                None => self.others.iter().any(|k| k == name),
            };
            if !present {
                return Err(unsure());
            }
        }
        Ok(())
    }
}

/// Checks one value against a node (`None`: anything goes), keeping what `capture` asks for.
struct Check<'p> {
    node: Option<&'p Node>,
    capture: Capture,
}

impl<'de> DeserializeSeed<'de> for Check<'_> {
    type Value = Captured;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Captured, D::Error> {
        match (self.node, self.capture) {
            (None, Capture::Nothing) => d.deserialize_ignored_any(IgnoredAny).map(|_| Captured::Nothing),
            _ => d.deserialize_any(self),
        }
    }
}

impl Check<'_> {
    /// What `capture` keeps of a string that passed its checks.
    fn keep(&self, s: Cow<'_, str>) -> Captured {
        match self.capture {
            Capture::Str => Captured::Str(s.into_owned()),
            Capture::Value => match strict_date_time_ms(&s) {
                Some(ms) => Captured::Millis(ms),
                None => Captured::Value(Value::String(s.into_owned())),
            },
            Capture::Nothing | Capture::Number => Captured::Nothing,
        }
    }

    fn string<E: de::Error>(self, s: Cow<'_, str>) -> Result<Captured, E> {
        let Some(node) = self.node else { return Ok(self.keep(s)) };
        if !node.string_ok(&s) {
            return Err(unsure());
        }
        let Some(checks) = &node.string_checks else { return Ok(self.keep(s)) };
        if node.direct_strings.as_ref().is_some_and(|d| d.ok(&s)) {
            return Ok(self.keep(s));
        }
        let value = Value::String(s.into_owned());
        if !checks.is_valid(&value) {
            return Err(unsure());
        }
        Ok(match (self.capture, value) {
            (Capture::Str, Value::String(s)) => Captured::Str(s),
            (Capture::Value, Value::String(s)) => self.keep(Cow::Owned(s)),
            (Capture::Value, v) => Captured::Value(v),
            _ => Captured::Nothing,
        })
    }

    fn number<E: de::Error>(self, n: Num, value: impl FnOnce() -> Value) -> Result<Captured, E> {
        if self.node.is_some_and(|node| !node.number_ok(n)) {
            return Err(unsure());
        }
        Ok(match self.capture {
            Capture::Number => Captured::Number(n.as_f64()),
            Capture::Value => Captured::Value(value()),
            Capture::Nothing | Capture::Str => Captured::Nothing,
        })
    }

    fn scalar<E: de::Error>(self, bit: u8) -> Result<Captured, E> {
        match self.node {
            Some(node) if !node.types.allows(bit) => Err(unsure()),
            _ => Ok(Captured::Nothing),
        }
    }
}

impl<'de> Visitor<'de> for Check<'_> {
    type Value = Captured;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Captured, E> {
        self.string(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Captured, E> {
        self.string(Cow::Borrowed(s))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Captured, E> {
        self.string(Cow::Owned(s))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Captured, E> {
        self.number(Num::Int(i128::from(v)), || Value::from(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Captured, E> {
        self.number(Num::Int(i128::from(v)), || Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Captured, E> {
        // Floats are never taken as the `ts` value: `1.0` is an integer to JSON Schema.
        if self.capture == Capture::Value || !v.is_finite() {
            return Err(unsure());
        }
        self.number(Num::Float(v), || Value::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Captured, E> {
        self.scalar(Types::BOOLEAN)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Captured, E> {
        self.scalar(Types::NULL)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Captured, A::Error> {
        Err(unsure())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Captured, A::Error> {
        if self.capture != Capture::Nothing {
            return Err(unsure());
        }
        let Some(node) = self.node else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(Captured::Nothing);
        };
        if !node.types.allows(Types::OBJECT) {
            return Err(unsure());
        }
        let mut object = ObjectCheck::new(node);
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let sub = object.key(&key)?;
            map.next_value_seed(Check { node: sub, capture: Capture::Nothing })?;
        }
        object.finish()?;
        Ok(Captured::Nothing)
    }
}
