//! Realistic test traffic and its oracle.
//!
//! The generator writes events the way producers do — mostly valid, plus malformed JSON,
//! contract violations, test traffic to filter, resends of the same `event_id`, events out of
//! order within the watermark bound, and late events — and labels each one with what must
//! become of it. [`Oracle`] turns the labels into the exact window contents and dead letters
//! a correct pipeline produces, without running any pipeline code: the end-to-end tests, the
//! demo and the benchmark compare the real output against it.
//!
//! Amounts are multiples of 0.25, so sums are exact in any order.

use std::collections::{BTreeMap, BTreeSet};

/// SplitMix64: deterministic and dependency-free, enough for demo and test traffic.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Event types the generator uses.
pub const EVENT_TYPES: [&str; 5] = ["purchase", "view", "add_to_cart", "refund", "search"];

/// What must happen to a generated event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fate {
    /// Aggregated into its window.
    Windowed,
    /// Not JSON: `decode_error` dead letter.
    Malformed,
    /// Breaks the contract: `contract_violation` dead letter.
    ContractViolation,
    /// Test traffic (`user_id` starts with `test-`): counted as filtered.
    Filtered,
    /// A resend of an earlier event: counted as deduplicated.
    Duplicate,
    /// Older than its window's end plus the allowed lateness: `late_event` dead letter.
    TooLate,
}

/// Users per partition the traffic draws its events' users from.
const USERS_PER_PARTITION: u64 = 200;

/// The segments of the users changelog.
pub const SEGMENTS: [&str; 3] = ["free", "pro", "business"];

/// A change of a user's segment: one message of the users changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserChange {
    /// The user.
    pub user_id: String,
    /// From when the segment holds, ms.
    pub ts: i64,
    /// The segment.
    pub segment: String,
}

impl UserChange {
    /// The changelog message.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_pipeline::traffic::UserChange;
    /// let c = UserChange { user_id: "u1".into(), ts: 5, segment: "pro".into() };
    /// assert_eq!(c.payload(), r#"{"user_id": "u1", "ts": 5, "segment": "pro"}"#);
    /// ```
    pub fn payload(&self) -> String {
        format!(
            "{{\"user_id\": \"{}\", \"ts\": {}, \"segment\": \"{}\"}}",
            self.user_id, self.ts, self.segment
        )
    }
}

/// A valid event's fields, as the oracle needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    /// `event_id`.
    pub event_id: String,
    /// `user_id`.
    pub user_id: String,
    /// `event_type`.
    pub event_type: String,
    /// Event time, ms.
    pub ts: i64,
    /// `amount`.
    pub amount: f64,
}

/// One generated message.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Kafka partition it goes to.
    pub partition: u32,
    /// The message value.
    pub payload: String,
    /// What must become of it.
    pub fate: Fate,
    /// Its fields, for events that decode and pass the contract.
    pub fields: Option<Fields>,
}

/// Shape of the traffic.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    /// Partitions.
    pub partitions: u32,
    /// Events per partition (before the closing event).
    pub events_per_partition: u64,
    /// Event time of the first event (ms, minute-aligned is nicest).
    pub start_ms: i64,
    /// Event-time span the events cover.
    pub span_ms: i64,
    /// Watermark out-of-orderness bound the pipeline runs with.
    pub out_of_orderness_ms: i64,
    /// Allowed lateness the pipeline runs with.
    pub allowed_lateness_ms: i64,
    /// Seed.
    pub seed: u64,
    /// Include bad, duplicate and late records (off: only valid events, for benchmarks).
    pub dirty: bool,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            partitions: 3,
            events_per_partition: 2_000,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            span_ms: 30 * 60_000,
            out_of_orderness_ms: 5_000,
            allowed_lateness_ms: 120_000,
            seed: 7,
            dirty: true,
        }
    }
}

impl TrafficConfig {
    /// The main traffic: every partition's events in produce order, each partition ending with
    /// one event far enough ahead to close every window before it.
    pub fn generate(&self) -> Vec<Generated> {
        let mut out = Vec::new();
        let step = (self.span_ms / self.events_per_partition.max(1) as i64).max(1);
        for p in 0..self.partitions {
            let mut rng = Rng(self.seed.wrapping_mul(1000).wrapping_add(u64::from(p)));
            let mut recent: Vec<String> = Vec::new();
            for i in 0..self.events_per_partition {
                let base = self.start_ms + i as i64 * step;
                let r = if self.dirty { rng.below(1000) } else { 999 };
                let g = match r {
                    0..5 => Generated {
                        partition: p,
                        payload: format!("{{\"event_id\": \"p{p}-{i}\", \"user_id\": "),
                        fate: Fate::Malformed,
                        fields: None,
                    },
                    5..15 => Generated {
                        partition: p,
                        payload: contract_violation(&mut rng, p, i, base),
                        fate: Fate::ContractViolation,
                        fields: None,
                    },
                    15..25 => {
                        let mut f = self.valid_fields(&mut rng, p, i, base);
                        f.user_id = format!("test-{}", rng.below(10));
                        Generated {
                            partition: p,
                            payload: render(&f, i),
                            fate: Fate::Filtered,
                            fields: Some(f),
                        }
                    }
                    25..45 if !recent.is_empty() => {
                        let idx = rng.below(recent.len() as u64) as usize;
                        Generated {
                            partition: p,
                            payload: recent[idx].clone(),
                            fate: Fate::Duplicate,
                            fields: None,
                        }
                    }
                    45..55 => {
                        // Behind the watermark but within the allowed lateness, by construction:
                        // the watermark is at most `base - bound`, and this is at most half the
                        // lateness behind that.
                        let behind = self.out_of_orderness_ms
                            + rng.below((self.allowed_lateness_ms / 2).max(1) as u64) as i64;
                        let f = self.valid_fields(&mut rng, p, i, base - behind);
                        let payload = render(&f, i);
                        remember(&mut recent, &payload);
                        Generated { partition: p, payload, fate: Fate::Windowed, fields: Some(f) }
                    }
                    _ => {
                        // Out of order within the bound: never late.
                        let jitter = rng.below((self.out_of_orderness_ms / 2).max(1) as u64) as i64;
                        let f = self.valid_fields(&mut rng, p, i, base - jitter);
                        let payload = render(&f, i);
                        remember(&mut recent, &payload);
                        Generated { partition: p, payload, fate: Fate::Windowed, fields: Some(f) }
                    }
                };
                out.push(g);
            }
            let close = self.start_ms + self.span_ms + 10 * 60_000 + self.allowed_lateness_ms;
            let f = self.valid_fields(&mut rng, p, self.events_per_partition, close);
            out.push(Generated {
                partition: p,
                payload: render(&f, 0),
                fate: Fate::Windowed,
                fields: Some(f),
            });
        }
        out
    }

    /// Events far behind the watermark, to produce after [`generate`](Self::generate)'s traffic was
    /// consumed: each must become a `late_event` dead letter.
    pub fn too_late(&self, per_partition: u64) -> Vec<Generated> {
        let mut out = Vec::new();
        for p in 0..self.partitions {
            let mut rng = Rng(self.seed.wrapping_mul(7919).wrapping_add(u64::from(p)));
            for j in 0..per_partition {
                let ts = self.start_ms + rng.below((self.span_ms / 10).max(1) as u64) as i64;
                let i = self.events_per_partition + 1 + j;
                let f = self.valid_fields(&mut rng, p, i, ts);
                out.push(Generated {
                    partition: p,
                    payload: render(&f, i),
                    fate: Fate::TooLate,
                    fields: Some(f),
                });
            }
        }
        out
    }

    /// Where the closing events put the windows: every window ending at or before this is final.
    pub fn last_closed_window_end(&self) -> i64 {
        self.start_ms + self.span_ms + 5 * 60_000
    }

    /// The users changelog that goes with this traffic (the enrichment stage's input), in time
    /// order: most users get a segment a minute before the traffic starts, one in eleven none
    /// (their events count under the unknown segment until their first change), and one in five
    /// changes segment once during the traffic.
    pub fn user_changes(&self) -> Vec<UserChange> {
        let mut rng = Rng(self.seed.wrapping_mul(7_919).wrapping_add(13));
        let mut changes = Vec::new();
        for n in 0..USERS_PER_PARTITION * u64::from(self.partitions.max(1)) {
            let user_id = format!("u{n}");
            let segment = |rng: &mut Rng| SEGMENTS[rng.below(SEGMENTS.len() as u64) as usize].to_owned();
            if n % 11 != 0 {
                let first = UserChange {
                    user_id: user_id.clone(),
                    ts: self.start_ms - 60_000,
                    segment: segment(&mut rng),
                };
                changes.push(first);
            }
            if n % 5 == 0 {
                let at = self.start_ms + rng.below(self.span_ms.max(1) as u64) as i64;
                changes.push(UserChange { user_id, ts: at, segment: segment(&mut rng) });
            }
        }
        changes.sort_by_key(|c| c.ts);
        changes
    }

    fn valid_fields(&self, rng: &mut Rng, p: u32, i: u64, ts: i64) -> Fields {
        Fields {
            event_id: format!("{}-p{p}-{i}", self.seed),
            // The topic is keyed by user, as producers usually write it: each user's events go to
            // one partition (user ids ≡ partition mod partitions), which is what makes distinct
            // users summed over partitions exact.
            user_id: format!(
                "u{}",
                rng.below(USERS_PER_PARTITION) * u64::from(self.partitions.max(1)) + u64::from(p)
            ),
            event_type: EVENT_TYPES[rng.below(EVENT_TYPES.len() as u64) as usize].to_string(),
            ts,
            amount: rng.below(40_000) as f64 * 0.25,
        }
    }
}

fn remember(recent: &mut Vec<String>, payload: &str) {
    if recent.len() >= 32 {
        recent.remove(0);
    }
    recent.push(payload.to_string());
}

/// Renders an event; one in four carries its time as RFC 3339, the rest as epoch ms.
fn render(f: &Fields, i: u64) -> String {
    let ts = if i % 4 == 3 { format!("\"{}\"", rfc3339(f.ts)) } else { f.ts.to_string() };
    let attrs = if i.is_multiple_of(5) {
        ", \"attributes\": {\"campaign\": \"spring\", \"mobile\": true}"
    } else {
        ""
    };
    format!(
        "{{\"event_id\": \"{}\", \"user_id\": \"{}\", \"event_type\": \"{}\", \"ts\": {ts}, \"amount\": {}{attrs}}}",
        f.event_id, f.user_id, f.event_type, f.amount
    )
}

fn contract_violation(rng: &mut Rng, p: u32, i: u64, ts: i64) -> String {
    let id = format!("bad-p{p}-{i}");
    match rng.below(5) {
        0 => format!(
            "{{\"event_id\": \"{id}\", \"user_id\": \"u1\", \"event_type\": \"view\", \"ts\": {ts}, \"amount\": -5}}"
        ),
        1 => format!(
            "{{\"event_id\": \"{id}\", \"user_id\": \"u1\", \"event_type\": \"view\", \"amount\": 1}}"
        ),
        2 => format!(
            "{{\"event_id\": \"\", \"user_id\": \"u1\", \"event_type\": \"view\", \"ts\": {ts}, \"amount\": 1}}"
        ),
        3 => format!(
            "{{\"event_id\": \"{id}\", \"user_id\": \"u1\", \"event_type\": \"view\", \"ts\": \"yesterday\", \"amount\": 1}}"
        ),
        _ => format!(
            "{{\"event_id\": \"{id}\", \"user_id\": \"u1\", \"event_type\": \"view\", \"ts\": {ts}, \"amount\": 1, \"colour\": \"red\"}}"
        ),
    }
}

/// `2026-01-01T00:00:00.250Z` from epoch ms (proleptic Gregorian, UTC).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// One window's expected contents.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExpectedWindow {
    /// Events in it.
    pub count: u64,
    /// Sum of `amount`.
    pub sum: f64,
    /// Smallest `amount`.
    pub min: f64,
    /// Largest `amount`.
    pub max: f64,
    /// Distinct `user_id`s.
    pub users: BTreeSet<String>,
}

/// What a correct pipeline makes of some generated traffic.
#[derive(Debug, Clone, Default)]
pub struct Oracle {
    /// Window contents by (key, window start ms).
    pub windows: BTreeMap<(String, i64), ExpectedWindow>,
    /// How many events met each fate.
    pub fates: BTreeMap<Fate, u64>,
    /// (partition, index within the partition's produced messages) of every dead letter, by reason code.
    pub dead_letters: BTreeMap<&'static str, u64>,
}

impl Oracle {
    /// Aggregates `events` into `window_ms` tumbling windows keyed by `event_type`.
    pub fn of(events: &[Generated], window_ms: i64) -> Self {
        Self::keyed(events, window_ms, |f| f.event_type.clone())
    }

    /// What the pipeline with the enrichment stage makes of `events`: windows keyed by
    /// `event_type/segment`, the segment being the user's latest change at or before the event's
    /// time in `changes` (`unknown` without one).
    pub fn enriched(events: &[Generated], window_ms: i64, changes: &[UserChange], unknown: &str) -> Self {
        let mut by_user: BTreeMap<&str, Vec<&UserChange>> = BTreeMap::new();
        for c in changes {
            by_user.entry(c.user_id.as_str()).or_default().push(c);
        }
        Self::keyed(events, window_ms, |f| {
            let valid = by_user
                .get(f.user_id.as_str())
                .and_then(|cs| cs.iter().filter(|c| c.ts <= f.ts).max_by_key(|c| c.ts));
            format!("{}/{}", f.event_type, valid.map_or(unknown, |c| c.segment.as_str()))
        })
    }

    fn keyed(events: &[Generated], window_ms: i64, key: impl Fn(&Fields) -> String) -> Self {
        let mut o = Oracle::default();
        for g in events {
            *o.fates.entry(g.fate).or_default() += 1;
            let reason = match g.fate {
                Fate::Malformed => Some("decode_error"),
                Fate::ContractViolation => Some("contract_violation"),
                Fate::TooLate => Some("late_event"),
                _ => None,
            };
            if let Some(r) = reason {
                *o.dead_letters.entry(r).or_default() += 1;
            }
            if g.fate != Fate::Windowed {
                continue;
            }
            let Some(f) = &g.fields else { continue };
            let start = f.ts.div_euclid(window_ms) * window_ms;
            let w = o.windows.entry((key(f), start)).or_insert_with(|| ExpectedWindow {
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                ..Default::default()
            });
            w.count += 1;
            w.sum += f.amount;
            w.min = w.min.min(f.amount);
            w.max = w.max.max(f.amount);
            w.users.insert(f.user_id.clone());
        }
        o
    }

    /// The windows ending at or before `end_ms` (the ones a run must have finalised).
    pub fn windows_ending_by(&self, end_ms: i64, window_ms: i64) -> BTreeMap<(String, i64), ExpectedWindow> {
        self.windows
            .iter()
            .filter(|((_, s), _)| s + window_ms <= end_ms)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Events that met `fate`.
    pub fn count(&self, fate: Fate) -> u64 {
        self.fates.get(&fate).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_767_225_600_250), "2026-01-01T00:00:00.250Z");
        assert_eq!(rfc3339(951_825_600_000), "2000-02-29T12:00:00.000Z");
    }

    #[test]
    fn traffic_has_every_fate_and_is_deterministic() {
        let c = TrafficConfig::default();
        let a = c.generate();
        assert_eq!(a, c.generate());
        let o = Oracle::of(&a, 60_000);
        for fate in
            [Fate::Windowed, Fate::Malformed, Fate::ContractViolation, Fate::Filtered, Fate::Duplicate]
        {
            assert!(o.count(fate) > 0, "{fate:?} missing");
        }
        assert_eq!(o.fates.values().sum::<u64>(), a.len() as u64);
        let late = Oracle::of(&c.too_late(5), 60_000);
        assert_eq!(late.dead_letters.get("late_event"), Some(&15));
    }
}
