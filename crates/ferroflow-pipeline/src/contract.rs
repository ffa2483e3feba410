//! The data contract: a JSON Schema (draft 2020-12) every input event must satisfy, compiled once at
//! start-up, with a stable rule name for every violation and per-rule counters.
//!
//! Contracts live in `contracts/` at the repository root, one file per version
//! (`contracts/events.v1.json`); the job's configuration names the file. See `contracts/README.md`.
//!
//! Past 500 lines because of its tests: the rule names and counters are only useful if every
//! violation kind is pinned down, and they are, here.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use ferroflow_core::ErrorDomain;
use jsonschema::error::ValidationErrorKind;
use jsonschema::{Draft, PatternOptions, ValidationError, Validator};
use serde_json::Value;
use thiserror::Error;

/// A contract file could not be used. Every variant names the file.
#[derive(Debug, Error)]
pub enum ContractError {
    /// The file could not be read.
    #[error("cannot read contract {}: {source}", path.display())]
    Read {
        /// The contract file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("contract {} is not valid JSON: {source}", path.display())]
    Json {
        /// The contract file.
        path: PathBuf,
        /// The parse error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The file is JSON but not a usable JSON Schema.
    #[error("contract {} is not a valid JSON Schema (draft 2020-12): {detail}", path.display())]
    Schema {
        /// The contract file.
        path: PathBuf,
        /// What the schema compiler reported.
        detail: String,
    },
    /// The schema has no top-level `"version"` string.
    #[error("contract {} has no top-level \"version\" string (e.g. \"events.v1\")", path.display())]
    MissingVersion {
        /// The contract file.
        path: PathBuf,
    },
}

impl ContractError {
    /// Always [`ErrorDomain::User`]: the contract file must be fixed (or the path corrected).
    pub fn domain(&self) -> ErrorDomain {
        ErrorDomain::User
    }

    /// Always [`ferroflow_core::RetryHint::NoRetry`]: reading the same file again fails the same way.
    pub fn retry_hint(&self) -> ferroflow_core::RetryHint {
        ferroflow_core::RetryHint::NoRetry
    }
}

/// Why a value broke the contract.
///
/// # Examples
/// ```
/// use ferroflow_pipeline::contract::Violation;
/// let v = Violation { rule: "minimum:/amount".into(), detail: "-1 is less than the minimum of 0".into() };
/// assert_eq!(v.to_string(), "minimum:/amount: -1 is less than the minimum of 0");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Stable, low-cardinality name of the broken rule, `<keyword>:<location>`: `required:ts`,
    /// `type:/amount`, `format:/ts`, `additionalProperties:/`, `type:/attributes/*`. Locations are
    /// built from the property names the schema declares; anything else (attribute names, array
    /// indices) becomes `*`, so the set of rules is bounded by the schema, not by the input.
    pub rule: String,
    /// Human-readable detail, with the offending value or property names.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

impl std::error::Error for Violation {}

/// Violations counted per rule, shared by every clone (cheap to clone, thread-safe).
///
/// Counting only happens for rejected events, so a mutex is uncontended on the normal path.
///
/// # Examples
/// ```
/// use ferroflow_pipeline::contract::ContractStats;
/// let stats = ContractStats::new();
/// let shared = stats.clone();
/// shared.record("required:ts");
/// shared.record("required:ts");
/// stats.record("minimum:/amount");
/// let snap = stats.snapshot();
/// assert_eq!(snap.get("required:ts"), Some(&2));
/// assert_eq!(stats.total(), 3);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ContractStats {
    by_rule: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl ContractStats {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one violation of `rule`.
    pub fn record(&self, rule: &str) {
        let mut m = self.by_rule.lock().unwrap_or_else(PoisonError::into_inner);
        match m.get_mut(rule) {
            Some(n) => *n += 1,
            None => {
                m.insert(rule.to_owned(), 1);
            }
        }
    }

    /// The count per rule, ordered by rule name.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_rule.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Violations counted over all rules.
    pub fn total(&self) -> u64 {
        self.by_rule.lock().unwrap_or_else(PoisonError::into_inner).values().sum()
    }
}

/// The property names a schema declares, nested like the documents it describes: what a violation
/// location may name. Anything else is written `*`.
#[derive(Debug, Default)]
struct DeclaredNames(BTreeMap<String, DeclaredNames>);

impl DeclaredNames {
    fn of(schema: &Value) -> Self {
        let mut names = Self::default();
        names.collect(schema);
        names
    }

    fn collect(&mut self, schema: &Value) {
        if let Some(Value::Object(props)) = schema.get("properties") {
            for (name, sub) in props {
                self.0.entry(name.clone()).or_default().collect(sub);
            }
        }
        // Combinators and conditionals describe the same object.
        for key in ["allOf", "anyOf", "oneOf"] {
            if let Some(Value::Array(subs)) = schema.get(key) {
                for sub in subs {
                    self.collect(sub);
                }
            }
        }
        for key in ["then", "else"] {
            if let Some(sub) = schema.get(key) {
                self.collect(sub);
            }
        }
    }

    /// `instance_path` (a JSON pointer) with undeclared segments cut to one `*`.
    fn location(&self, instance_path: &str, out: &mut String) {
        let mut names = self;
        for raw in instance_path.split('/').skip(1) {
            let segment = unescape_pointer(raw);
            match names.0.get(segment.as_ref()) {
                Some(sub) => {
                    out.push('/');
                    out.push_str(raw);
                    names = sub;
                }
                None => {
                    // Attribute names, array indices: unbounded, and the detail says which.
                    out.push_str("/*");
                    return;
                }
            }
        }
    }
}

fn unescape_pointer(segment: &str) -> std::borrow::Cow<'_, str> {
    if segment.contains('~') { segment.replace("~1", "/").replace("~0", "~").into() } else { segment.into() }
}

/// Longest offending detail kept, in bytes: the dead letter holds the whole event anyway.
const MAX_DETAIL: usize = 300;

/// A compiled data contract.
///
/// # Examples
/// ```
/// use ferroflow_pipeline::contract::Contract;
/// use serde_json::json;
///
/// let contract = Contract::from_value(
///     "inline",
///     &json!({
///         "version": "demo.v1",
///         "type": "object",
///         "required": ["id"],
///         "properties": { "id": { "type": "string", "minLength": 1 } }
///     }),
/// )
/// .unwrap();
/// assert_eq!(contract.version(), "demo.v1");
/// assert!(contract.check(&json!({"id": "e-1"})).is_ok());
/// assert_eq!(contract.check(&json!({})).unwrap_err().rule, "required:id");
/// assert_eq!(contract.check(&json!({"id": ""})).unwrap_err().rule, "minLength:/id");
/// ```
pub struct Contract {
    origin: PathBuf,
    version: String,
    validator: Validator,
    names: DeclaredNames,
    /// The contract compiled to direct checks, when every keyword it uses compiles.
    plan: Option<crate::contract_plan::ContractPlan>,
}

impl fmt::Debug for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contract").field("origin", &self.origin).field("version", &self.version).finish()
    }
}

impl Contract {
    /// Reads and compiles the contract in `path` (done once, at start-up).
    pub fn load(path: impl AsRef<Path>) -> Result<Contract, ContractError> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|source| ContractError::Read { path: path.into(), source })?;
        let schema: Value = serde_json::from_slice(&text)
            .map_err(|source| ContractError::Json { path: path.into(), source })?;
        Self::from_value(path, &schema)
    }

    /// Compiles a contract held in memory; `origin` names it in errors.
    ///
    /// Formats (`date-time`, …) are validated, patterns use the `regex` crate's syntax (linear time:
    /// no look-around or back-references), and `$ref`s must be local: nothing is fetched.
    pub fn from_value(origin: impl AsRef<Path>, schema: &Value) -> Result<Contract, ContractError> {
        let origin = origin.as_ref().to_path_buf();
        let version = match schema.get("version") {
            Some(Value::String(v)) if !v.is_empty() => v.clone(),
            _ => return Err(ContractError::MissingVersion { path: origin }),
        };
        let options = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .with_pattern_options(PatternOptions::regex());
        let validator = options
            .build(schema)
            .map_err(|e| ContractError::Schema { path: origin.clone(), detail: describe(&e) })?;
        let plan = crate::contract_plan::ContractPlan::compile(schema, &options);
        if plan.is_none() {
            tracing::info!(contract = %origin.display(), "the contract uses keywords the direct checks do not cover; every event is validated as a JSON value");
        }
        Ok(Contract { origin, version, validator, names: DeclaredNames::of(schema), plan })
    }

    /// The contract's `version` (e.g. `events.v1`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The file (or name) the contract came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Parses `line` and checks it with the contract compiled to direct checks: the event's
    /// fields when it certainly satisfies the contract, `None` when only [`check`](Self::check)
    /// on a parsed value can tell (a violation among them) or the contract did not compile.
    #[inline]
    pub fn accept(&self, line: &[u8]) -> Option<crate::contract_plan::EventFields> {
        self.plan.as_ref()?.accept(line)
    }

    /// True when the contract compiled to direct checks (see [`accept`](Self::accept)).
    pub fn is_compiled(&self) -> bool {
        self.plan.is_some()
    }

    /// Checks `value`; on failure reports the first broken rule (and how many more there are).
    #[inline]
    pub fn check(&self, value: &Value) -> Result<(), Violation> {
        // The fast path allocates nothing; errors are collected only for invalid values.
        if self.validator.is_valid(value) {
            return Ok(());
        }
        let mut errors = self.validator.iter_errors(value);
        match errors.next() {
            Some(first) => {
                let mut v = self.violation(&first);
                let more = errors.count();
                if more > 0 {
                    use fmt::Write as _;
                    let _ = write!(v.detail, " (and {more} more)");
                }
                Err(v)
            }
            // is_valid and iter_errors disagreeing would be a validator bug; still a rejection.
            None => Err(Violation { rule: "invalid".into(), detail: "the event breaks the contract".into() }),
        }
    }

    fn violation(&self, e: &ValidationError<'_>) -> Violation {
        let mut location = String::new();
        self.names.location(e.instance_path().as_str(), &mut location);
        let rule = match e.kind() {
            // The missing property comes from the schema's `required` list: bounded.
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or("?");
                match location.strip_prefix('/') {
                    Some(parent) => format!("required:{parent}/{name}"),
                    None => format!("required:{name}"),
                }
            }
            kind if location.is_empty() => format!("{}:/", kind.keyword()),
            kind => format!("{}:{location}", kind.keyword()),
        };
        let mut detail = describe(e);
        // The rule's location lost the exact place (an attribute name): say it in the detail.
        if location.ends_with('*') {
            detail = format!("at {}: {detail}", e.instance_path().as_str());
        }
        truncate(&mut detail);
        Violation { rule, detail }
    }
}

fn describe(e: &ValidationError<'_>) -> String {
    let mut s = e.to_string();
    truncate(&mut s);
    s
}

fn truncate(s: &mut String) {
    if s.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The repository's contract, as the pipeline loads it.
    pub(crate) fn events_v1() -> Contract {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts/events.v1.json");
        Contract::load(path).unwrap()
    }

    fn valid() -> Value {
        json!({
            "event_id": "e-1",
            "user_id": "u-1",
            "event_type": "add_to_cart",
            "ts": 1_700_000_000_000i64,
            "amount": 12.5
        })
    }

    fn rule_of(c: &Contract, v: &Value) -> String {
        c.check(v).unwrap_err().rule
    }

    fn with(field: &str, value: Value) -> Value {
        let mut v = valid();
        v[field] = value;
        v
    }

    fn without(field: &str) -> Value {
        let mut v = valid();
        v.as_object_mut().unwrap().remove(field);
        v
    }

    #[test]
    fn events_v1_loads_with_its_version() {
        let c = events_v1();
        assert_eq!(c.version(), "events.v1");
        assert!(c.check(&valid()).is_ok(), "the reference event is valid");
    }

    #[test]
    fn missing_fields_name_the_field() {
        let c = events_v1();
        for f in ["event_id", "user_id", "event_type", "ts", "amount"] {
            assert_eq!(rule_of(&c, &without(f)), format!("required:{f}"));
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        let c = events_v1();
        assert_eq!(rule_of(&c, &with("event_id", json!(17))), "type:/event_id");
        assert_eq!(rule_of(&c, &with("amount", json!("12.5"))), "type:/amount");
        assert_eq!(rule_of(&c, &with("ts", json!(1.5))), "type:/ts", "epoch ms must be an integer");
        assert_eq!(rule_of(&c, &with("ts", json!(true))), "type:/ts");
        assert_eq!(rule_of(&c, &json!([1, 2])), "type:/", "the event must be an object");
    }

    #[test]
    fn negative_amount_and_ts_break_their_minimum() {
        let c = events_v1();
        let v = c.check(&with("amount", json!(-0.01))).unwrap_err();
        assert_eq!(v.rule, "minimum:/amount");
        assert!(v.detail.contains("-0.01"), "detail shows the value: {}", v.detail);
        assert!(c.check(&with("amount", json!(0))).is_ok(), "zero is allowed");
        assert_eq!(rule_of(&c, &with("ts", json!(-1))), "minimum:/ts");
        assert_eq!(rule_of(&c, &with("ts", json!(253_402_300_800_000i64))), "maximum:/ts");
    }

    #[test]
    fn bad_ts_strings_break_the_date_time_format() {
        let c = events_v1();
        for bad in ["yesterday", "2024-05-01", "2024-05-01T12:00:00", "2024-13-01T00:00:00Z", "1700000000000"]
        {
            assert_eq!(rule_of(&c, &with("ts", json!(bad))), "format:/ts", "{bad}");
        }
        for good in ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00.250+02:00", "2024-05-01t12:00:00z"] {
            assert!(c.check(&with("ts", json!(good))).is_ok(), "{good}");
        }
    }

    #[test]
    fn empty_ids_and_bad_event_types_are_rejected() {
        let c = events_v1();
        assert_eq!(rule_of(&c, &with("event_id", json!(""))), "minLength:/event_id");
        assert_eq!(rule_of(&c, &with("user_id", json!(""))), "minLength:/user_id");
        assert_eq!(rule_of(&c, &with("event_id", json!("x".repeat(129)))), "maxLength:/event_id");
        for bad in ["Purchase", "add-to-cart", "", "1st", "view "] {
            assert_eq!(rule_of(&c, &with("event_type", json!(bad))), "pattern:/event_type", "{bad:?}");
        }
    }

    #[test]
    fn unknown_top_level_field_is_rejected_with_a_bounded_rule() {
        let c = events_v1();
        let v = c.check(&with("colour", json!("red"))).unwrap_err();
        assert_eq!(v.rule, "additionalProperties:/", "the unknown name is not part of the rule");
        assert!(v.detail.contains("colour"), "the detail names it: {}", v.detail);
    }

    #[test]
    fn attributes_take_flat_scalar_values() {
        let c = events_v1();
        let ok = with("attributes", json!({"campaign": "spring", "position": 3, "promoted": true, "x": 0.5}));
        assert!(c.check(&ok).is_ok());
        assert!(c.check(&with("attributes", json!({}))).is_ok());
        for (name, bad) in
            [("a", json!({"nested": 1})), ("some-unique-name-9", json!([1])), ("b", Value::Null)]
        {
            let v = c.check(&with("attributes", json!({ name: bad }))).unwrap_err();
            assert_eq!(v.rule, "type:/attributes/*", "attribute names stay out of the rule");
            assert!(v.detail.starts_with(&format!("at /attributes/{name}:")), "{}", v.detail);
        }
        assert_eq!(rule_of(&c, &with("attributes", json!("k=v"))), "type:/attributes");
        assert_eq!(rule_of(&c, &with("attributes", json!({"": 1}))), "propertyNames:/attributes");
        let many: serde_json::Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
        assert_eq!(rule_of(&c, &with("attributes", Value::Object(many))), "maxProperties:/attributes");
    }

    #[test]
    fn several_violations_report_the_first_and_count_the_rest() {
        let c = events_v1();
        let mut v = without("ts");
        v["amount"] = json!(-1);
        let got = c.check(&v).unwrap_err();
        assert!(got.detail.ends_with("(and 1 more)"), "{}", got.detail);
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let e = Contract::load(&missing).unwrap_err();
        assert!(matches!(e, ContractError::Read { .. }));
        assert!(e.to_string().contains("missing.json"), "{e}");

        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "{ \"type\": ").unwrap();
        let e = Contract::load(&broken).unwrap_err();
        assert!(matches!(e, ContractError::Json { .. }));
        assert!(e.to_string().contains("broken.json"), "{e}");

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{ "version": "x.v1", "type": "no-such-type" }"#).unwrap();
        let e = Contract::load(&bad).unwrap_err();
        assert!(matches!(e, ContractError::Schema { .. }), "{e:?}");
        assert!(e.to_string().contains("bad.json"), "{e}");

        let unversioned = dir.path().join("unversioned.json");
        std::fs::write(&unversioned, r#"{ "type": "object" }"#).unwrap();
        let e = Contract::load(&unversioned).unwrap_err();
        assert!(matches!(e, ContractError::MissingVersion { .. }));
        assert_eq!(e.domain(), ErrorDomain::User);
    }

    #[test]
    fn stats_count_per_rule_across_clones_and_threads() {
        let stats = ContractStats::new();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let s = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        s.record(if i % 2 == 0 { "required:ts" } else { "minimum:/amount" });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let snap = stats.snapshot();
        assert_eq!(snap.get("required:ts"), Some(&200));
        assert_eq!(snap.get("minimum:/amount"), Some(&200));
        assert_eq!(stats.total(), 400);
    }
}
