//! End to end against real servers: a Kafka-protocol broker (tansu) and ClickHouse, both started
//! by `scripts/services.sh` (or given through the environment), with the pipeline binary run as
//! a child process exactly as users run it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{
    Pipeline, Services, clickhouse_columns, clickhouse_execute, clickhouse_final, diff, positions, produce,
    read_dlq, unique,
};
use ferroflow_pipeline::traffic::{Fate, Generated, Oracle, TrafficConfig};

const WINDOW_MS: i64 = 60_000;

/// Polls ClickHouse until its `FINAL` contents equal `expected` or `timeout` passes; returns the
/// remaining differences (empty when they agree).
fn converge(
    services: &Services,
    table: &str,
    expected: &BTreeMap<(String, i64), ferroflow_pipeline::traffic::ExpectedWindow>,
    closed_by_ms: i64,
    timeout: Duration,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let problems = diff(expected, &clickhouse_final(services, table), closed_by_ms, WINDOW_MS);
        if problems.is_empty() || std::time::Instant::now() > deadline {
            return problems;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Fails with the first differences and `p`'s logs unless ClickHouse converges to `expected`
/// within 30 s.
fn assert_converges(
    services: &Services,
    table: &str,
    expected: &BTreeMap<(String, i64), ferroflow_pipeline::traffic::ExpectedWindow>,
    closed_by_ms: i64,
    p: &Pipeline,
) {
    let problems = converge(services, table, expected, closed_by_ms, Duration::from_secs(30));
    assert!(
        problems.is_empty(),
        "{} differences, first: {:?}\n{}",
        problems.len(),
        &problems[..problems.len().min(5)],
        p.logs()
    );
}

fn traffic(events_per_partition: u64, seed: u64) -> TrafficConfig {
    TrafficConfig { partitions: 3, events_per_partition, seed, ..Default::default() }
}

#[test]
#[ignore = "needs Kafka and ClickHouse: scripts/services.sh start (FERROFLOW_KAFKA_BROKERS, FERROFLOW_CLICKHOUSE_URL)"]
fn results_dead_letters_and_accounting_match_an_independent_oracle() {
    let services = Services::from_env();
    let topic = unique("e2e_events");
    let table = unique("e2e_windows");
    let t = traffic(2_000, 11);
    let main = t.generate();
    let late = t.too_late(10);
    let mut all: Vec<Generated> = main.clone();
    all.extend(late.iter().cloned());
    let oracle = Oracle::of(&all, WINDOW_MS);

    produce(&services, &topic, t.partitions, &main);
    let mut p = Pipeline::new(&services, &topic, &table, "group", "");
    p.start();
    let main_len = main.len() as u64;
    p.wait_status("the main traffic to be consumed", Duration::from_secs(120), |s| {
        s["counters"]["records_in"].as_u64() >= Some(main_len)
    });
    assert_eq!(common::http_get(p.port, "/readyz").as_deref(), Some("ready\n"), "ready once consuming");
    assert!(
        common::http_get(p.port, "/metrics").is_some_and(|m| m.contains("ferroflow_records_in_total")),
        "/metrics serves the engine's counters"
    );
    // Far-late events are late only once the watermark has moved past them: produce them now.
    produce(&services, &topic, t.partitions, &late);
    let total = all.len() as u64;
    let status = p.wait_status("every event to be consumed", Duration::from_secs(60), |s| {
        s["counters"]["records_in"].as_u64() >= Some(total)
    });

    // The accounting identity, and each term equal to the oracle's count.
    let c = &status["counters"];
    assert_eq!(status["identity_holds"], true, "{status}");
    assert_eq!(c["records_in"].as_u64(), Some(total));
    assert_eq!(c["records_windowed"].as_u64(), Some(oracle.count(Fate::Windowed)), "{status}");
    assert_eq!(c["records_filtered"].as_u64(), Some(oracle.count(Fate::Filtered)), "{status}");
    assert_eq!(c["records_deduplicated"].as_u64(), Some(oracle.count(Fate::Duplicate)), "{status}");
    assert_eq!(
        c["records_dead_lettered"].as_u64(),
        Some(oracle.dead_letters.values().sum::<u64>()),
        "{status}"
    );

    // ClickHouse converges to exactly the oracle's windows.
    let expected = oracle.windows_ending_by(t.last_closed_window_end(), WINDOW_MS);
    assert!(expected.len() > 100, "the traffic spans many windows");
    assert_converges(&services, &table, &expected, t.last_closed_window_end(), &p);

    // The dead-letter topic holds exactly the bad records, with the right reasons and bytes.
    let pos = positions(&main, t.partitions);
    let mut expected_dlq: BTreeMap<(u32, u64), (&str, &str)> = BTreeMap::new();
    for (g, at) in main.iter().zip(&pos) {
        let reason = match g.fate {
            Fate::Malformed => "decode_error",
            Fate::ContractViolation => "contract_violation",
            _ => continue,
        };
        expected_dlq.insert(*at, (reason, g.payload.as_str()));
    }
    let mut next = vec![0u64; t.partitions as usize];
    for (p_, o) in &pos {
        next[*p_ as usize] = next[*p_ as usize].max(o + 1);
    }
    for g in &late {
        let o = next[g.partition as usize];
        next[g.partition as usize] += 1;
        expected_dlq.insert((g.partition, o), ("late_event", g.payload.as_str()));
    }
    let dlq = read_dlq(&services, &format!("{topic}.dlq"), expected_dlq.len(), Duration::from_secs(60));
    assert_eq!(dlq.len(), expected_dlq.len(), "one dead letter per bad record, no more");
    for m in &dlq {
        let (reason, original) = expected_dlq
            .get(&(m.partition, m.offset))
            .unwrap_or_else(|| panic!("unexpected dead letter {m:?}"));
        assert_eq!(m.reason, *reason, "{m:?}");
        assert_eq!(m.original, *original, "{m:?}");
    }

    // Graceful shutdown: finish the batch, checkpoint, exit 0.
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0), "{}", p.logs());
}

#[test]
#[ignore = "needs Kafka and ClickHouse: scripts/services.sh start (FERROFLOW_KAFKA_BROKERS, FERROFLOW_CLICKHOUSE_URL)"]
fn clickhouse_is_exact_after_repeated_sigkills() {
    let services = Services::from_env();
    let topic = unique("e2e_kill");
    let table = unique("e2e_kill_windows");
    let t = traffic(4_000, 23);
    let events = t.generate();
    let oracle = Oracle::of(&events, WINDOW_MS);
    let seed: u64 = std::env::var("KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("KILL_SEED={seed}");
    let mut rng = ferroflow_pipeline::traffic::Rng(seed);
    // KILLS=n narrows a failure down (0: the same run without crashes).
    let max_kills: usize = std::env::var("KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(usize::MAX);
    let min_kills = max_kills.min(5);

    // Self-assigned partitions: a restarted instance resumes at once. (In group mode a restart
    // waits for the broker to expire the killed member; tansu does not expire them.)
    let mut p = Pipeline::new(&services, &topic, &table, "all_partitions", "");
    // Produce in slices while the pipeline runs, so every kill lands mid-stream.
    let slices = 8;
    let per = events.len().div_ceil(slices);
    let mut kills = 0;
    p.start();
    for (i, chunk) in events.chunks(per).enumerate() {
        produce(&services, &topic, t.partitions, chunk);
        std::thread::sleep(Duration::from_millis(300 + rng.below(900)));
        if (i + 1 < slices || kills < min_kills) && kills < max_kills {
            p.kill();
            kills += 1;
            p.start();
        }
    }
    while kills < min_kills {
        std::thread::sleep(Duration::from_millis(500 + rng.below(1000)));
        p.kill();
        kills += 1;
        p.start();
    }
    assert!(kills >= min_kills);

    let expected = oracle.windows_ending_by(t.last_closed_window_end(), WINDOW_MS);
    let problems =
        converge(&services, &table, &expected, t.last_closed_window_end(), Duration::from_secs(90));
    if !problems.is_empty() {
        let dlq = read_dlq(&services, &format!("{topic}.dlq"), 1, Duration::from_secs(10));
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &dlq {
            *reasons.entry(m.reason.as_str()).or_default() += 1;
        }
        let late: Vec<_> = dlq.iter().filter(|m| m.reason == "late_event").take(5).collect();
        panic!(
            "KILL_SEED={seed}: {} differences after {kills} kills, first: {:?}\ndead letters by reason: {reasons:?}, late: {late:?}\nstatus: {:?}\n{}",
            problems.len(),
            &problems[..problems.len().min(5)],
            p.status(),
            p.logs()
        );
    }

    // Dead letters are at-least-once: every bad record is there (replays may repeat some).
    let pos = positions(&events, t.partitions);
    let bad: BTreeSet<(u32, u64)> = events
        .iter()
        .zip(&pos)
        .filter(|(g, _)| matches!(g.fate, Fate::Malformed | Fate::ContractViolation))
        .map(|(_, at)| *at)
        .collect();
    let dlq = read_dlq(&services, &format!("{topic}.dlq"), bad.len(), Duration::from_secs(60));
    let got: BTreeSet<(u32, u64)> = dlq.iter().map(|m| (m.partition, m.offset)).collect();
    assert_eq!(got, bad, "KILL_SEED={seed}: the dead-letter topic holds every bad record and nothing else");
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0), "{}", p.logs());
}

/// A private ClickHouse server this test may stop and start (the shared one serves other tests).
struct PrivateClickHouse {
    dir: std::path::PathBuf,
    http: u16,
    tcp: u16,
}

impl PrivateClickHouse {
    fn start(&self) {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/clickhouse-instance.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(&self.dir)
            .arg(self.http.to_string())
            .arg(self.tcp.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "clickhouse did not start: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn stop(&self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).unwrap();
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        // Wait until the port is closed.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.http)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("clickhouse did not stop");
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = std::process::Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

#[test]
#[ignore = "needs Kafka and Debian's clickhouse-server: scripts/services.sh start (FERROFLOW_KAFKA_BROKERS)"]
fn a_clickhouse_outage_loses_nothing() {
    let shared = Services::from_env();
    let ch = PrivateClickHouse {
        dir: std::env::temp_dir().join(unique("ferroflow-ch")),
        http: common::free_port(),
        tcp: common::free_port(),
    };
    ch.start();
    let services = shared.with_clickhouse(format!("http://127.0.0.1:{}", ch.http));
    let topic = unique("e2e_outage");
    let table = unique("e2e_outage_windows");
    let t = traffic(3_000, 31);
    let events = t.generate();
    let oracle = Oracle::of(&events, WINDOW_MS);
    // The first half of every partition, then the rest (each partition stays in order).
    let pos = positions(&events, t.partitions);
    let per_partition = t.events_per_partition / 2;
    let (first, second): (Vec<_>, Vec<_>) =
        events.iter().zip(&pos).partition(|(_, (_, offset))| *offset < per_partition);
    let first: Vec<Generated> = first.into_iter().map(|(g, _)| g.clone()).collect();
    let second: Vec<Generated> = second.into_iter().map(|(g, _)| g.clone()).collect();
    let half = first.len();

    produce(&services, &topic, t.partitions, &first);
    let mut p = Pipeline::new(&services, &topic, &table, "all_partitions", "");
    p.start();
    p.wait_status("rows in ClickHouse before the outage", Duration::from_secs(60), |s| {
        s["sink"]["rows_written"].as_u64() > Some(0)
            && s["counters"]["records_in"].as_u64() >= Some(half as u64)
    });

    ch.stop();
    produce(&services, &topic, t.partitions, &second);
    // The job keeps running, retries its inserts and stops taking more than it can hold.
    let during = p.wait_status("the sink to retry while ClickHouse is down", Duration::from_secs(60), |s| {
        s["sink"]["retries"].as_u64() > Some(2)
    });
    assert!(
        p.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the pipeline must not exit during an outage"
    );
    let checkpoints_during = during["counters"]["checkpoints_completed"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let later = p.status().expect("still serving during the outage");
    assert_eq!(
        later["counters"]["checkpoints_completed"].as_u64().unwrap(),
        checkpoints_during,
        "no checkpoint completes while results cannot be written"
    );

    ch.start();
    let expected = oracle.windows_ending_by(t.last_closed_window_end(), WINDOW_MS);
    let problems =
        converge(&services, &table, &expected, t.last_closed_window_end(), Duration::from_secs(60));
    assert!(
        problems.is_empty(),
        "{} differences after the outage, first: {:?}\n{}",
        problems.len(),
        &problems[..problems.len().min(5)],
        p.logs()
    );
    let status = p.status().unwrap();
    assert_eq!(status["identity_holds"], true, "{status}");
    assert_eq!(status["counters"]["records_in"].as_u64(), Some(events.len() as u64), "{status}");
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0), "{}", p.logs());
}

#[test]
#[ignore = "needs Kafka and ClickHouse: scripts/services.sh start (FERROFLOW_KAFKA_BROKERS, FERROFLOW_CLICKHOUSE_URL)"]
fn enrichment_counts_each_event_under_its_users_segment_at_its_time() {
    let services = Services::from_env();
    let (topic, users, table) = (unique("e2e_enriched"), unique("e2e_users"), unique("e2e_segments"));
    let t = traffic(1_000, 23);
    let main = t.generate();
    let changes = t.user_changes();
    assert!(changes.iter().any(|c| c.ts > t.start_ms), "some users change segment during the traffic");
    let late = t.too_late(10);
    let mut all = main.clone();
    all.extend(late.iter().cloned());
    let oracle = Oracle::enriched(&all, WINDOW_MS, &changes, "unknown");

    // The changelog first, as a compacted users topic holds it; one partition.
    let changelog: Vec<Generated> = changes
        .iter()
        .map(|c| Generated { partition: 0, payload: c.payload(), fate: Fate::Windowed, fields: None })
        .collect();
    produce(&services, &users, 1, &changelog);
    produce(&services, &topic, t.partitions, &main);
    let extra = format!("[enrichment]\nenabled = true\nusers_topic = \"{users}\"\nidle_timeout_ms = 2000\n");
    let mut p = Pipeline::new(&services, &topic, &table, "group", &extra);
    p.start();
    let main_len = main.len() as u64;
    p.wait_status("the main traffic to be consumed", Duration::from_secs(120), |s| {
        s["counters"]["records_in"].as_u64() >= Some(main_len)
    });
    // Far-late events are late only once the watermark has moved past them: produce them now.
    produce(&services, &topic, t.partitions, &late);
    let total = all.len() as u64;
    let status = p.wait_status("every event to be consumed", Duration::from_secs(60), |s| {
        s["counters"]["records_in"].as_u64() >= Some(total)
    });
    assert_eq!(status["identity_holds"], true, "{status}");
    // The join takes every valid event (its rows, not source records, reach the window).
    assert_eq!(
        status["counters"]["records_processed"].as_u64(),
        Some(oracle.count(Fate::Windowed)),
        "{status}"
    );
    // The join refuses the far-late events by the window's rule: counted, as without the stage.
    assert_eq!(
        status["counters"]["records_dead_lettered"].as_u64(),
        Some(oracle.dead_letters.values().sum::<u64>()),
        "{status}"
    );
    assert_eq!(status["enrichment"]["versions"].as_u64(), Some(changes.len() as u64), "{status}");
    let metrics = common::http_get(p.port, "/metrics").unwrap_or_default();
    assert!(metrics.contains(&format!("ferroflow_enrichment_table_versions {}", changes.len())), "{metrics}");

    let expected = oracle.windows_ending_by(t.last_closed_window_end(), WINDOW_MS);
    let segments: BTreeSet<&str> =
        expected.keys().filter_map(|(k, _)| k.split_once('/').map(|s| s.1)).collect();
    assert!(
        segments.contains("unknown") && segments.len() == 4,
        "every segment and the unknown one: {segments:?}"
    );
    assert_converges(&services, &table, &expected, t.last_closed_window_end(), &p);
    assert_eq!(p.terminate(Duration::from_secs(30)), Some(0), "{}", p.logs());
}

#[test]
#[ignore = "needs Kafka and ClickHouse: scripts/services.sh start (FERROFLOW_KAFKA_BROKERS, FERROFLOW_CLICKHOUSE_URL)"]
fn a_table_from_before_enrichment_gains_the_segment_column_and_the_stage_refuses_its_sorting_key() {
    use ferroflow_pipeline::config::{OutputKind, PipelineConfig};
    let services = Services::from_env();
    let (topic, table) = (unique("e2e_old"), unique("e2e_old_windows"));
    clickhouse_execute(
        &services,
        &format!(
            "CREATE TABLE {table} (partition UInt32, key String, window_start DateTime, window_end DateTime, \
             events UInt64, amount_sum Float64, amount_min Float64, amount_max Float64, distinct_users UInt64, \
             revision UInt32, is_final UInt8, version UInt64) ENGINE = ReplacingMergeTree(version) \
             PARTITION BY toYYYYMM(window_start) ORDER BY (key, window_start, partition)"
        ),
    );
    let p = Pipeline::new(&services, &topic, &table, "group", "");
    let mut config = PipelineConfig::load(Some(&p.config), &serde_json::json!({})).unwrap();
    config.output.kind = OutputKind::Clickhouse;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(ferroflow_pipeline::job::prepare(&config)).unwrap();
    let columns = clickhouse_columns(&services, &table);
    assert_eq!(&columns[..3], ["partition", "key", "segment"], "added after key: {columns:?}");

    config.enrichment.enabled = true;
    let err = rt.block_on(ferroflow_pipeline::job::prepare(&config)).unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("sorting key") && message.contains("clickhouse.table"), "{message}");
}
