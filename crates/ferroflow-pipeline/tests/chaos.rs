//! Chaos: the pipeline binary as several instances of one consumer group on a 6-partition topic
//! (real tansu, real ClickHouse behind a proxy that slows every request down, so the job's
//! channels stay full), through a seeded schedule of kills, restarts, replacements under the same
//! instance id while the old process still shuts down, and instances joining and leaving. At the
//! end ClickHouse (`FINAL`) equals the independent oracle exactly, the dead-letter topic holds
//! exactly the oracle's dead letters by source position, and the accounting identity holds in
//! every process that finished or still runs.
//!
//! `CHAOS_SEED=<n>` replays one schedule; the seed is printed first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    Pipeline, Services, clickhouse_final, clickhouse_rows_of, diff, positions, produce, read_dlq, unique,
};
use ferroflow_pipeline::traffic::{Fate, Oracle, Rng, TrafficConfig};

const WINDOW_MS: i64 = 60_000;
const PARTITIONS: u32 = 6;

/// A TCP proxy in front of ClickHouse that holds every chunk a client sends for `delay`: each
/// INSERT takes at least that long, checkpoints wait on it, and backpressure reaches the source.
struct SlowProxy {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl SlowProxy {
    fn start(upstream: &str, delay: Duration) -> Self {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(&upstream) else { continue };
                        client.set_nonblocking(false).unwrap();
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        std::thread::spawn(move || pump(client, server, delay));
                        std::thread::spawn(move || pump(s2, c2, Duration::ZERO));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { port, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to`, holding each chunk for `delay`.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                std::thread::sleep(delay);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// The instances of the group: running ones, and processes still shutting down.
struct Group<'a> {
    services: &'a Services,
    topic: String,
    table: String,
    base: &'a Path,
    running: BTreeMap<String, Pipeline>,
    /// Instances that left, kept for their logs and final counters.
    gone: Vec<Pipeline>,
    /// SIGTERMed processes still shutting down.
    detached: Vec<Child>,
    next_id: u32,
    /// Instances replaced by a second process under the same id.
    replaced: usize,
    log: Vec<String>,
}

impl Group<'_> {
    fn start(&mut self, id: &str) {
        let mut p = Pipeline::member(self.services, &self.topic, &self.table, self.base, id, "");
        p.start();
        self.running.insert(id.to_owned(), p);
    }

    fn add(&mut self) -> String {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        self.start(&id);
        id
    }

    fn pick(&self, rng: &mut Rng) -> String {
        let ids: Vec<&String> = self.running.keys().collect();
        ids[rng.below(ids.len() as u64) as usize].clone()
    }

    fn note(&mut self, t0: Instant, what: String) {
        let line = format!("{:>6.1}s {what}", t0.elapsed().as_secs_f64());
        eprintln!("chaos: {line}");
        self.log.push(line);
    }

    fn logs(&self) -> String {
        let mut out = self.log.join("\n");
        for (id, p) in &self.running {
            out.push_str(&format!("\n===== {id} (running) =====\n{}", p.logs()));
        }
        for p in &self.gone {
            out.push_str(&format!("\n===== {} (gone) =====\n{}", p.dir.display(), p.logs()));
        }
        out
    }
}

impl Drop for Group<'_> {
    fn drop(&mut self) {
        for c in &mut self.detached {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
#[ignore = "needs Kafka and ClickHouse: scripts/services.sh start (FERROFLOW_KAFKA_BROKERS, FERROFLOW_CLICKHOUSE_URL)"]
fn the_pipeline_stays_exact_through_kills_replacements_and_rebalances() {
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    let real = Services::from_env();
    let proxy = SlowProxy::start(&real.clickhouse_url, Duration::from_millis(150));
    let slow = real.with_clickhouse(proxy.url());
    let base = tempfile::tempdir().unwrap();
    let topic = unique("chaos_events");
    let table = unique("chaos_windows");

    let traffic =
        TrafficConfig { partitions: PARTITIONS, events_per_partition: 2_500, seed: 41, ..Default::default() };
    let events = traffic.generate();
    let oracle = Oracle::of(&events, WINDOW_MS);
    // Each partition's events in produce order, cut into slices produced during the schedule.
    let slices = 8;
    let per = events.len().div_ceil(slices);
    let mut chunks = events.chunks(per);
    produce(&real, &topic, PARTITIONS, chunks.next().unwrap());

    let mut group = Group {
        services: &slow,
        topic: topic.clone(),
        table: table.clone(),
        base: base.path(),
        running: BTreeMap::new(),
        gone: Vec::new(),
        detached: Vec::new(),
        next_id: 0,
        replaced: 0,
        log: Vec::new(),
    };
    let t0 = Instant::now();
    for _ in 0..3 {
        let id = group.add();
        group.note(t0, format!("start {id}"));
    }

    // At least ten events over at least a minute; the first four are one of each kind.
    let steps = 12;
    for step in 0..steps {
        std::thread::sleep(Duration::from_millis(3_500 + rng.below(2_500)));
        if let Some(chunk) = chunks.next() {
            produce(&real, &topic, PARTITIONS, chunk);
        }
        let kind = if step < 4 { step } else { rng.below(4) };
        match kind {
            // kill -9, then the same instance (same id, same state directory) starts again.
            0 => {
                let id = group.pick(&mut rng);
                let p = group.running.get_mut(&id).unwrap();
                p.kill();
                std::thread::sleep(Duration::from_millis(rng.below(2_000)));
                p.start();
                group.note(t0, format!("kill -9 {id}, restart"));
            }
            // The instance is replaced while its old process still runs: a new process under
            // the same id on another machine (a new state directory). Once the new one has
            // claimed the checkpoint folder the old one is told to stop: it is fenced, and
            // commits nothing more.
            1 => {
                let id = group.pick(&mut rng);
                let mut old = group.running.remove(&id).unwrap();
                group.start(&id);
                let new = &group.running[&id];
                let claimed = Instant::now() + Duration::from_secs(30);
                while !new.log_contains("claimed the checkpoint folder") && Instant::now() < claimed {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if let Some(c) = old.terminate_detached() {
                    group.detached.push(c);
                }
                group.gone.push(old);
                group.replaced += 1;
                group.note(t0, format!("replace {id}: a second process under its id, then the first stops"));
            }
            // A new instance joins: partitions move to it with their state.
            2 if group.running.len() < 4 => {
                let id = group.add();
                group.note(t0, format!("add {id}"));
            }
            // An instance leaves for good: its partitions move to the others.
            _ if group.running.len() > 2 => {
                let id = group.pick(&mut rng);
                let mut p = group.running.remove(&id).unwrap();
                let code = p.terminate(Duration::from_secs(60));
                group.gone.push(p);
                group.note(t0, format!("remove {id} (exit {code:?})"));
                assert_eq!(
                    code,
                    Some(0),
                    "a leaving instance stops cleanly (CHAOS_SEED={seed})\n{}",
                    group.logs()
                );
            }
            _ => {
                let id = group.add();
                group.note(t0, format!("add {id} (instead)"));
            }
        }
    }
    for chunk in chunks {
        produce(&real, &topic, PARTITIONS, chunk);
    }
    group.note(t0, "schedule done".into());
    assert!(t0.elapsed() >= Duration::from_secs(60), "the schedule spans at least a minute");

    // ClickHouse converges to exactly the oracle.
    let expected = oracle.windows_ending_by(traffic.last_closed_window_end(), WINDOW_MS);
    let deadline = Instant::now() + Duration::from_secs(90);
    let problems = loop {
        let problems =
            diff(&expected, &clickhouse_final(&real, &table), traffic.last_closed_window_end(), WINDOW_MS);
        if problems.is_empty() || Instant::now() > deadline {
            break problems;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    group.note(t0, format!("converged: {} differences", problems.len()));
    if !problems.is_empty() {
        // Each differing window's rows, partition by partition and every version: whether a
        // partition's row is missing, stale or doubled.
        let got = clickhouse_final(&real, &table);
        let differing = expected.iter().filter(|(k, w)| {
            let one = BTreeMap::from([((*k).clone(), (*w).clone())]);
            !diff(&one, &got, i64::MIN, WINDOW_MS).is_empty()
        });
        for ((key, start), _) in differing.take(3) {
            group.note(
                t0,
                format!("window ({key}, {start}): {:?}", clickhouse_rows_of(&real, &table, key, *start)),
            );
        }
    }
    assert!(
        problems.is_empty(),
        "CHAOS_SEED={seed}: {} differences, first: {:?}\n{}",
        problems.len(),
        &problems[..problems.len().min(5)],
        group.logs()
    );

    // The dead-letter topic holds exactly the oracle's dead letters (at least once each).
    let pos = positions(&events, PARTITIONS);
    let expected_dlq: BTreeSet<(String, u32, u64)> = events
        .iter()
        .zip(&pos)
        .filter_map(|(g, (p, o))| match g.fate {
            Fate::Malformed => Some(("decode_error".to_owned(), *p, *o)),
            Fate::ContractViolation => Some(("contract_violation".to_owned(), *p, *o)),
            _ => None,
        })
        .collect();
    let dlq = read_dlq(&real, &format!("{topic}.dlq"), expected_dlq.len(), Duration::from_secs(60));
    let got_dlq: BTreeSet<(String, u32, u64)> =
        dlq.iter().map(|m| (m.reason.clone(), m.partition, m.offset)).collect();
    let missing: Vec<_> = expected_dlq.difference(&got_dlq).take(5).collect();
    let extra: Vec<_> = got_dlq.difference(&expected_dlq).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "CHAOS_SEED={seed}: dead letters differ: missing {missing:?}, unexpected {extra:?}\n{}",
        group.logs()
    );

    // The accounting identity, in every process that still runs and every run that finished.
    for (id, p) in &group.running {
        let s = p
            .status()
            .unwrap_or_else(|| panic!("{id} stopped serving (CHAOS_SEED={seed})\n{}", group.logs()));
        assert_eq!(s["identity_holds"], true, "{id}: {s} (CHAOS_SEED={seed})");
    }
    for p in group.running.values().chain(&group.gone) {
        for c in p.final_counters() {
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            let accounted = n("records_windowed")
                + n("records_processed")
                + n("records_out")
                + n("records_filtered")
                + n("records_deduplicated")
                + n("records_dead_lettered");
            assert_eq!(n("records_in") + n("records_expanded"), accounted, "{}: {c}", p.dir.display());
        }
    }
    // Every replaced process found itself fenced by its successor and stopped: it took no
    // checkpoint after the successor claimed the folder. A replace may come last in the schedule:
    // wait until every replaced process has stopped (on a busy machine its shutdown, with the
    // fenced final checkpoint, takes more than a few seconds), within a bound.
    let stopped_by = Instant::now() + Duration::from_secs(60);
    loop {
        let running =
            group.detached.iter_mut().map(|c| c.try_wait()).filter(|w| matches!(w, Ok(None))).count();
        if running == 0 || Instant::now() > stopped_by {
            assert_eq!(running, 0, "CHAOS_SEED={seed}: a replaced process did not stop\n{}", group.logs());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let fenced = group.gone.iter().filter(|p| p.log_contains("taken over by another writer")).count();
    assert_eq!(fenced, group.replaced, "CHAOS_SEED={seed}: replaced processes fenced\n{}", group.logs());
    // The input topic has neither transactions nor compaction: a partition that resumed past its
    // checkpointed offset while the log still held it skipped records.
    let gaps: Vec<String> = group
        .running
        .values()
        .chain(&group.gone)
        .filter(|p| p.log_contains("resumed past its checkpointed offset"))
        .map(|p| p.dir.display().to_string())
        .collect();
    assert!(gaps.is_empty(), "CHAOS_SEED={seed}: offset gaps in {gaps:?}\n{}", group.logs());
    group.note(t0, format!("all checks passed ({fenced} replaced process(es) fenced)"));
}
