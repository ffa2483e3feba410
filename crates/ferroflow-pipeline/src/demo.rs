//! The embedded demo: generates realistic traffic (with malformed, duplicate, out-of-order and late
//! events) into local files and runs the file job on it with RocksDB state and `file://`
//! checkpoints. No external service is needed.

use std::fmt::Write as _;
use std::path::Path;

/// What the generator wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Lines written in total.
    pub lines: u64,
    /// Malformed JSON lines.
    pub malformed: u64,
    /// Events resent with the same id (producer retries).
    pub duplicates: u64,
    /// Events far behind event time (beyond any allowed lateness).
    pub late: u64,
}

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

const TYPES: [&str; 5] = ["purchase", "view", "add_to_cart", "refund", "search"];

/// Writes `events` lines per partition file into `dir`, starting at event time `start_ms`, 20 ms apart.
pub fn generate(
    dir: &Path,
    partitions: u32,
    events: u64,
    start_ms: i64,
) -> std::io::Result<(Vec<std::path::PathBuf>, Traffic)> {
    let mut traffic = Traffic::default();
    let mut paths = Vec::new();
    for p in 0..partitions {
        let mut rng = Rng(u64::from(p) + 11);
        let mut out = String::with_capacity(events as usize * 120);
        let mut last = String::new();
        for i in 0..events {
            let r = rng.next();
            traffic.lines += 1;
            if r % 500 == 0 {
                out.push_str("{\"event_id\": \"oops\", \"ts\": \n");
                traffic.malformed += 1;
                continue;
            }
            if r % 300 == 1 && !last.is_empty() {
                out.push_str(&last); // a producer retry resends the previous event
                traffic.duplicates += 1;
                continue;
            }
            let mut ts = start_ms + i as i64 * 20;
            if r % 20 == 2 {
                ts -= (r >> 16) as i64 % 3_000; // out of order within the bound
            }
            if r % 400 == 3 {
                ts -= 300_000; // five minutes late: beyond allowed lateness
                traffic.late += 1;
            }
            last.clear();
            let _ = writeln!(
                last,
                "{{\"event_id\":\"p{p}-{i}\",\"user_id\":\"user-{}\",\"event_type\":\"{}\",\"ts\":{ts},\"amount\":{:.2}}}",
                (r >> 8) % 1_000,
                TYPES[((r >> 20) % TYPES.len() as u64) as usize],
                ((r >> 24) % 20_000) as f64 / 100.0
            );
            out.push_str(&last);
        }
        let path = dir.join(format!("events-{p}.jsonl"));
        std::fs::write(&path, out)?;
        paths.push(path);
    }
    Ok((paths, traffic))
}
