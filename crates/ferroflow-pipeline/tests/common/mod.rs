//! Harness for the end-to-end tests: endpoints from the environment (the servers
//! `scripts/services.sh` starts, docker-compose, or any cluster), unique names, the pipeline
//! binary as a child process, and readers for ClickHouse and the dead-letter topic.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferroflow_kafka::rdkafka::ClientConfig;
use ferroflow_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use ferroflow_kafka::rdkafka::message::{Headers, Message};
use ferroflow_pipeline::job::WindowTotal;
use ferroflow_pipeline::traffic::{ExpectedWindow, Generated};

/// Where the real servers are.
pub struct Services {
    pub brokers: String,
    pub clickhouse_url: String,
    /// Containers started for this test (feature `testcontainers`); they stop when dropped.
    #[cfg(feature = "testcontainers")]
    containers: Option<std::sync::Arc<ferroflow_pipeline::containers::Containers>>,
}

impl Services {
    /// Reads `FERROFLOW_KAFKA_BROKERS` and `FERROFLOW_CLICKHOUSE_URL` (set by `scripts/services.sh
    /// env`, or pointing at docker-compose or any cluster). With the `testcontainers` feature and
    /// either unset, starts a Kafka and a ClickHouse container instead.
    pub fn from_env() -> Self {
        let brokers = std::env::var("FERROFLOW_KAFKA_BROKERS").ok();
        let clickhouse_url = std::env::var("FERROFLOW_CLICKHOUSE_URL").ok();
        if let (Some(brokers), Some(clickhouse_url)) = (&brokers, &clickhouse_url) {
            return Self::at(brokers, clickhouse_url);
        }
        #[cfg(feature = "testcontainers")]
        {
            let c = ferroflow_pipeline::containers::Containers::start()
                .expect("starting Kafka and ClickHouse containers (is a Docker engine running?)");
            let mut s = Self::at(c.brokers(), c.clickhouse_url());
            s.containers = Some(std::sync::Arc::new(c));
            s
        }
        #[cfg(not(feature = "testcontainers"))]
        panic!(
            "FERROFLOW_KAFKA_BROKERS and FERROFLOW_CLICKHOUSE_URL must be set: start the servers with \
             `scripts/services.sh start` and `eval \"$(scripts/services.sh env)\"`, or build with \
             `--features testcontainers` on a machine with Docker"
        )
    }

    fn at(brokers: &str, clickhouse_url: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            clickhouse_url: clickhouse_url.to_owned(),
            #[cfg(feature = "testcontainers")]
            containers: None,
        }
    }

    /// The same broker with another ClickHouse server.
    pub fn with_clickhouse(&self, clickhouse_url: String) -> Self {
        Self {
            brokers: self.brokers.clone(),
            clickhouse_url,
            #[cfg(feature = "testcontainers")]
            containers: self.containers.clone(),
        }
    }
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// A free loopback port for a server a test starts, below the kernel's ephemeral range. A port
/// from that range (what binding port 0 gives) can be taken, between this call and the server's
/// start or restart, as the local end of any outgoing connection: the Kafka and ClickHouse clients
/// of every process a test runs. Chaos saw a restarted pipeline fail with "address in use" so.
pub fn free_port() -> u16 {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (from, to) = (10_000u16, ephemeral_from.max(10_001));
    // Different tests (and test processes) start at different places in the range.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let start = u64::from(nanos) ^ u64::from(std::process::id()).wrapping_mul(0x9e37_79b9);
    let span = u64::from(to - from);
    for i in 0..500u64 {
        let port = from + u16::try_from((start + i * 7_919) % span).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One test's pipeline: its config file, directories and child process.
pub struct Pipeline {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub child: Option<Child>,
    pub starts: u32,
}

impl Pipeline {
    /// Writes a config for `topic`/`table` under a new temp dir.
    /// `assignment` is `group` or `all_partitions`; `extra` is appended (more TOML sections).
    pub fn new(services: &Services, topic: &str, table: &str, assignment: &str, extra: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("ferroflow-e2e"));
        let checkpoints = dir.join("checkpoints");
        Self::at(dir, services, topic, table, assignment, &checkpoints, "", extra)
    }

    /// One instance of a pipeline run by several: its own directory under `base` (state,
    /// config, logs), `instance_id = id`, checkpoints in `base/checkpoints` shared with the
    /// others. Two members with one id are the same instance started twice.
    pub fn member(services: &Services, topic: &str, table: &str, base: &Path, id: &str, extra: &str) -> Self {
        let dir = base.join(unique(id));
        let top = format!("instance_id = \"{id}\"\n");
        Self::at(dir, services, topic, table, "group", &base.join("checkpoints"), &top, extra)
    }

    #[allow(clippy::too_many_arguments)]
    fn at(
        dir: PathBuf,
        services: &Services,
        topic: &str,
        table: &str,
        assignment: &str,
        checkpoints: &Path,
        top: &str,
        extra: &str,
    ) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let contract = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts/events.v1.json");
        let config = dir.join("pipeline.toml");
        let text = format!(
            r#"pipeline_id = "{table}"
{top}
[kafka]
brokers = "{brokers}"
topic = "{topic}"
group_id = "{topic}-group"
batch_max_records = 500
assignment = "{assignment}"
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"

[dead_letters]
topic = "{topic}.dlq"

[contract]
path = "{contract}"

[clickhouse]
url = "{ch}"
table = "{table}"
batch_max_interval_ms = 200
retry_max_backoff_ms = 1000

[state]
dir = "{state}"

# Two workers whatever the machine: the crash, kill -9 and chaos tests check consistency
# across worker threads too.
[processing]
workers = 2

[checkpoints]
url = "file://{checkpoints}"
interval_ms = 500

[watermarks]
idle_timeout_ms = 60000

[http]
listen = "127.0.0.1:{port}"
{extra}
"#,
            brokers = services.brokers,
            contract = contract.display(),
            ch = services.clickhouse_url,
            state = dir.join("state").display(),
            checkpoints = checkpoints.display(),
        );
        std::fs::write(&config, text).unwrap();
        Self { dir, config, port, child: None, starts: 0 }
    }

    /// Starts the binary (`ferroflow-pipeline run --config …`), logs to `run-N.log`.
    pub fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("run-{}.log", self.starts))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ferroflow-pipeline"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, no chance to checkpoint.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit code (waits up to `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        None
    }

    /// SIGTERM without waiting: the process shuts down (a final checkpoint, leaving the group)
    /// while the caller goes on. Returns the child, to be reaped (or killed) later.
    pub fn terminate_detached(&mut self) -> Option<Child> {
        let c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        Some(c)
    }

    /// The counters a run printed when it finished (its last line of JSON on stdout), by run.
    pub fn final_counters(&self) -> Vec<serde_json::Value> {
        (1..=self.starts)
            .filter_map(|i| {
                let text = std::fs::read_to_string(self.dir.join(format!("run-{i}.log"))).ok()?;
                let line = text.lines().rev().find(|l| l.starts_with("{\"records_in\""))?;
                serde_json::from_str(line).ok()
            })
            .collect()
    }

    /// True when any run's log holds `text`.
    pub fn log_contains(&self, text: &str) -> bool {
        (1..=self.starts).any(|i| {
            std::fs::read_to_string(self.dir.join(format!("run-{i}.log"))).is_ok_and(|t| t.contains(text))
        })
    }

    /// `/status`, or `None` while the process is not serving.
    pub fn status(&self) -> Option<serde_json::Value> {
        let body = http_get(self.port, "/status")?;
        serde_json::from_str(&body).ok()
    }

    /// Every run's warnings and errors (at most 20), then its last 30 lines, backtrace frames left
    /// out (they would fill the 30 lines and hide the error above them), for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.starts {
            let text = std::fs::read_to_string(self.dir.join(format!("run-{i}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !is_backtrace_frame(l)).collect();
            let alarms: Vec<&&str> =
                lines.iter().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            out.push_str(&format!("--- run {i}: warnings and errors (first 20 of {}) ---\n", alarms.len()));
            for l in alarms.iter().take(20) {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str(&format!("--- run {i} (last 30 lines) ---\n"));
            for l in &lines[lines.len().saturating_sub(30)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Waits until `/status` satisfies `pred`.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let mut last = serde_json::Value::Null;
        while Instant::now() < deadline {
            if let Some(s) = self.status() {
                if pred(&s) {
                    return s;
                }
                last = s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out waiting for {what}; last status: {last}\n{}", self.logs());
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP/1.0 GET on loopback.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.split_whitespace().nth(1).is_some_and(|code| code == "200").then(|| body.to_string())
}

/// Produces `events` (each to its partition, in order) to `topic`, creating it first.
pub fn produce(services: &Services, topic: &str, partitions: u32, events: &[Generated]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        ferroflow_kafka::ensure_topic(&services.brokers, &Default::default(), topic, partitions as i32)
            .await
            .unwrap();
        // One message per record batch: the pipeline restarts at arbitrary offsets, and tansu 0.6
        // cannot fetch from an offset inside a batch (see `demo::produce_with`).
        let n = ferroflow_pipeline::demo::produce_with(&services.brokers, topic, events, 1).await.unwrap();
        assert_eq!(n, events.len() as u64);
    });
}

/// A client of the test ClickHouse, for the result table's reads.
fn clickhouse_client(services: &Services) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(&services.clickhouse_url)
        .with_compression(clickhouse::Compression::None)
        .with_validation(false)
}

/// Runs one statement on the test ClickHouse.
pub fn clickhouse_execute(services: &Services, sql: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(clickhouse_client(services).query(sql).execute()).unwrap();
}

/// The columns of `table` on the test ClickHouse, in order.
pub fn clickhouse_columns(services: &Services, table: &str) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let query = clickhouse_client(services)
        .query("SELECT name FROM system.columns WHERE database = currentDatabase() AND table = ?")
        .bind(table);
    rt.block_on(query.fetch_all::<String>()).unwrap()
}

/// The result table's totals over partitions (`FINAL`), keyed by (key, window start ms); with
/// the enrichment stage the key is `key/segment`, as [`Oracle::enriched`](ferroflow_pipeline::traffic::Oracle::enriched) keys it.
pub fn clickhouse_final(services: &Services, table: &str) -> BTreeMap<(String, i64), WindowTotal> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = clickhouse_client(services);
        match client.query(&WindowTotal::query(table)).fetch_all::<WindowTotal>().await {
            Ok(rows) => {
                let key = |r: &WindowTotal| match r.segment.is_empty() {
                    true => r.key.clone(),
                    false => format!("{}/{}", r.key, r.segment),
                };
                rows.into_iter().map(|r| ((key(&r), i64::from(r.window_start) * 1000), r)).collect()
            }
            Err(_) => BTreeMap::new(), // the table does not exist yet
        }
    })
}

/// Every row of one window in the result table, every version, by partition: what a failed
/// comparison shows to tell a missing partition from a stale or doubled one.
pub fn clickhouse_rows_of(services: &Services, table: &str, key: &str, window_start_ms: i64) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = clickhouse_client(services);
        let query = format!(
            "SELECT partition, events, amount_min, revision, is_final, version FROM {table} \
             WHERE key = ? AND toUInt32(window_start) = ? ORDER BY partition, version"
        );
        match client
            .query(&query)
            .bind(key)
            .bind(window_start_ms.div_euclid(1000))
            .fetch_all::<(u32, u64, f64, u32, u8, u64)>()
            .await
        {
            Ok(rows) => rows
                .into_iter()
                .map(|(p, events, min, revision, is_final, version)| {
                    format!("partition {p}: events={events} min={min} revision={revision} final={is_final} version={version}")
                })
                .collect(),
            Err(e) => vec![format!("cannot read the rows: {e}")],
        }
    })
}

/// Differences between ClickHouse and the oracle (empty when they agree exactly).
pub fn diff(
    expected: &BTreeMap<(String, i64), ExpectedWindow>,
    got: &BTreeMap<(String, i64), WindowTotal>,
    closed_by_ms: i64,
    window_ms: i64,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, w) in expected {
        match got.get(k) {
            None => out.push(format!("missing window {k:?}")),
            Some(r) => {
                let same = r.events == w.count
                    && r.amount_sum == w.sum
                    && r.amount_min == w.min
                    && r.amount_max == w.max
                    && r.distinct_users == w.users.len() as u64
                    && r.is_final == 1;
                if !same {
                    out.push(format!(
                        "window {k:?}: got {r:?}, expected count={} sum={} min={} max={} users={} final",
                        w.count,
                        w.sum,
                        w.min,
                        w.max,
                        w.users.len()
                    ));
                }
            }
        }
    }
    for k in got.keys() {
        if k.1 + window_ms <= closed_by_ms && !expected.contains_key(k) {
            out.push(format!("unexpected window {k:?}"));
        }
    }
    out
}

/// One message of the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DlqMessage {
    pub reason: String,
    pub partition: u32,
    pub offset: u64,
    pub original: String,
}

/// Reads the dead-letter topic until `at_least` messages arrived and nothing new came for 2 s,
/// or `timeout` passed.
pub fn read_dlq(services: &Services, topic: &str, at_least: usize, timeout: Duration) -> Vec<DlqMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &services.brokers)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet_since = Instant::now();
                let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or(b"null")).unwrap();
                let reason = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "ferroflow.reason").and_then(|h| h.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                assert_eq!(body["reason"].as_str(), Some(reason.as_str()), "header and body agree");
                out.push(DlqMessage {
                    reason,
                    partition: body["position"]["partition"].as_u64().unwrap() as u32,
                    offset: body["position"]["offset"].as_u64().unwrap(),
                    original: body["original"].as_str().unwrap_or_default().to_string(),
                });
            }
            Some(Err(e)) => eprintln!("dlq reader: {e}"),
            None => {}
        }
        if out.len() >= at_least && quiet_since.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    out
}

/// The (partition, offset) each generated event lands at when produced in order to a new topic.
pub fn positions(events: &[Generated], partitions: u32) -> Vec<(u32, u64)> {
    let mut next = vec![0u64; partitions as usize];
    events
        .iter()
        .map(|g| {
            let o = next[g.partition as usize];
            next[g.partition as usize] += 1;
            (g.partition, o)
        })
        .collect()
}

/// A frame of a printed backtrace (`  12: symbol` or `        at file:line`).
fn is_backtrace_frame(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("at ")
        || t.split_once(": ").is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
