//! The benchmark input shared by `throughput` and `handloop`: the same generated JSON-lines file,
//! so both measure the same job on the same bytes.
#![allow(dead_code)]

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use serde::Deserialize;

/// The fields the job needs, borrowed from the line (no per-event allocation).
#[derive(Deserialize)]
pub struct RawEvent<'a> {
    #[serde(borrow)]
    pub user_id: &'a str,
    #[serde(borrow)]
    pub event_type: &'a str,
    pub ts: i64,
    pub amount: f64,
}

/// SplitMix64: a tiny deterministic generator, enough for benchmark data.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

const EVENT_TYPES: [&str; 4] = ["purchase", "refund", "view", "add_to_cart"];
const COUNTRIES: [&str; 6] = ["DE", "FR", "US", "BR", "JP", "IN"];
const DEVICES: [&str; 3] = ["ios", "android", "web"];

/// Writes `events` JSON lines; returns (bytes written, events marked as test traffic).
pub fn generate(path: &PathBuf, events: u64, keys: u64) -> std::io::Result<(u64, u64)> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut rng = SplitMix(42);
    let base: i64 = 1_700_000_000_000;
    let (mut bytes, mut tests) = (0u64, 0u64);
    let mut line = String::with_capacity(256);
    for i in 0..events {
        let r = rng.next();
        let user = r % keys;
        // 2% test traffic, which the job filters out.
        let et = if (r >> 20).is_multiple_of(50) { "test" } else { EVENT_TYPES[((r >> 26) % 4) as usize] };
        if et == "test" {
            tests += 1;
        }
        let mut ts = base + i as i64; // 1,000 events per second of event time
        if (r >> 40) % 100 < 5 {
            ts -= ((r >> 8) % 5_000) as i64; // 5% out of order, up to 5 s behind
        }
        let amount = ((r >> 12) % 100_000) as f64 / 100.0;
        line.clear();
        use std::fmt::Write as _;
        let _ = writeln!(
            line,
            "{{\"event_id\":\"evt-{i:012}\",\"user_id\":\"user-{user:07}\",\"event_type\":\"{et}\",\"ts\":{ts},\
             \"amount\":{amount:.2},\"country\":\"{}\",\"device\":\"{}\",\"session\":\"s-{:08}\",\
             \"attributes\":{{\"campaign\":\"spring\",\"ab\":\"{}\"}}}}",
            COUNTRIES[(r % 6) as usize],
            DEVICES[((r >> 4) % 3) as usize],
            (r >> 24) % 100_000_000,
            if r & 1 == 0 { "A" } else { "B" },
        );
        bytes += line.len() as u64;
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    Ok((bytes, tests))
}

/// Peak resident memory of this process, MB.
pub fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident memory of this process now, MB.
pub fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
