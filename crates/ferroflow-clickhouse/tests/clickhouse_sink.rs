//! The ClickHouse sink against a real server (`scripts/services.sh start` exports
//! `FERROFLOW_CLICKHOUSE_URL`). Every test uses its own table and drops it at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferroflow_clickhouse::clickhouse::{self, Client, Compression};
use ferroflow_clickhouse::{ClickHouseConfig, ClickHouseError, ClickHouseSink, RejectedFn, TableRow};
use ferroflow_core::sink::Sink;
use ferroflow_core::time::ManualClock;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const NEEDS_SERVER: &str = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)";

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A window result as the pipeline writes it.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
#[clickhouse(crate = "ferroflow_clickhouse::clickhouse")]
struct WindowRow {
    key: String,
    window_start: i64,
    window_end: i64,
    value: u64,
    revision: u32,
}

impl TableRow for WindowRow {
    fn table_definition() -> &'static str {
        "(key String, window_start Int64, window_end Int64, value UInt64, revision UInt32) \
         ENGINE = ReplacingMergeTree(revision) ORDER BY (key, window_start)"
    }
    fn columns() -> &'static [&'static str] {
        &["key", "window_start", "window_end", "value", "revision"]
    }
}

/// Same columns, but the table refuses values above 1000 (a MATERIALIZED `throwIf`): a real
/// server-side rejection of individual rows, which 18.16 has no other way to produce
/// (it does not even check Enum8 values in RowBinary).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
#[clickhouse(crate = "ferroflow_clickhouse::clickhouse")]
struct CheckedRow {
    key: String,
    window_start: i64,
    window_end: i64,
    value: u64,
    revision: u32,
}

impl TableRow for CheckedRow {
    fn table_definition() -> &'static str {
        "(key String, window_start Int64, window_end Int64, value UInt64, revision UInt32, \
          value_ok UInt8 MATERIALIZED throwIf(value > 1000)) \
         ENGINE = ReplacingMergeTree(revision) ORDER BY (key, window_start)"
    }
    fn columns() -> &'static [&'static str] {
        &["key", "window_start", "window_end", "value", "revision"]
    }
}

/// A row type whose `columns()` disagree with its fields.
#[derive(Debug, clickhouse::Row, Serialize)]
#[clickhouse(crate = "ferroflow_clickhouse::clickhouse")]
struct InconsistentRow {
    key: String,
    value: u64,
}

impl TableRow for InconsistentRow {
    fn table_definition() -> &'static str {
        "(key String, value UInt64) ENGINE = MergeTree ORDER BY key"
    }
    fn columns() -> &'static [&'static str] {
        &["key", "amount"]
    }
}

fn init_tracing() {
    let _ =
        tracing_subscriber::fmt().with_test_writer().with_env_filter("ferroflow_clickhouse=debug").try_init();
}

fn server_url() -> String {
    std::env::var("FERROFLOW_CLICKHOUSE_URL")
        .unwrap_or_else(|_| panic!("FERROFLOW_CLICKHOUSE_URL is not set; {NEEDS_SERVER}"))
}

fn unique_table(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("ff_test_{name}_{}_{nanos}", std::process::id())
}

/// A client for checking results: no compression and no validation, which 18.x needs.
fn reader(url: &str) -> Client {
    Client::default().with_url(url).with_compression(Compression::None).with_validation(false)
}

fn config(url: &str, table: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: url.into(),
        table: table.into(),
        retry_initial_backoff_ms: 10,
        retry_max_backoff_ms: 50,
        startup_timeout_ms: 5_000,
        request_timeout_ms: 10_000,
        ..Default::default()
    }
}

type Rejections<R> = Arc<Mutex<Vec<(R, String)>>>;

fn collect_rejections<R: Clone + Send + 'static>() -> (RejectedFn<R>, Rejections<R>) {
    let seen: Rejections<R> = Arc::new(Mutex::new(Vec::new()));
    let sink_side = Arc::clone(&seen);
    let f: RejectedFn<R> =
        Arc::new(move |row: &R, why: &str| sink_side.lock().unwrap().push((row.clone(), why.into())));
    (f, seen)
}

fn row(key: &str, window_start: i64, value: u64, revision: u32) -> WindowRow {
    WindowRow { key: key.into(), window_start, window_end: window_start + 60_000, value, revision }
}

async fn read_final(url: &str, table: &str) -> Vec<WindowRow> {
    reader(url)
        .query(&format!("SELECT ?fields FROM {table} FINAL ORDER BY key, window_start"))
        .fetch_all::<WindowRow>()
        .await
        .unwrap()
}

async fn count(url: &str, table: &str) -> u64 {
    reader(url).query(&format!("SELECT count() FROM {table}")).fetch_one::<u64>().await.unwrap()
}

async fn drop_table(url: &str, table: &str) {
    let _ = reader(url).query(&format!("DROP TABLE IF EXISTS {table}")).execute().await;
}

#[tokio::test]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn creates_a_replacing_merge_tree_table_and_detects_the_version() -> TestResult {
    init_tracing();
    let (url, table) = (server_url(), unique_table("create"));
    let (rejected, _) = collect_rejections::<WindowRow>();
    let sink = ClickHouseSink::<WindowRow>::connect(config(&url, &table), rejected).await?;

    let engine: String = reader(&url)
        .query("SELECT engine FROM system.tables WHERE database = 'default' AND name = ?")
        .bind(table.as_str())
        .fetch_one()
        .await?;
    assert_eq!(engine, "ReplacingMergeTree");
    let version: String = reader(&url).query("SELECT version()").fetch_one().await?;
    assert_eq!(Ok(sink.server().version), version.parse(), "the sink reports the server's version");
    assert_eq!(
        sink.dedup_effective(),
        sink.server().capabilities.dedup_token,
        "a table the sink creates deduplicates exactly when the server supports tokens"
    );
    drop_table(&url, &table).await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn written_rows_land_at_flush_and_are_readable_with_final() -> TestResult {
    init_tracing();
    let (url, table) = (server_url(), unique_table("flush"));
    let (rejected, seen) = collect_rejections::<WindowRow>();
    let clock = ManualClock::new(1_000_000);
    let mut sink = ClickHouseSink::<WindowRow>::connect(config(&url, &table), rejected)
        .await?
        .with_clock(Arc::new(clock));
    let stats = sink.stats();
    sink.begin_epoch(0);

    let rows = vec![row("alice", 0, 2, 0), row("bob", 0, 1, 0), row("alice", 60_000, 1, 0)];
    sink.write_batch(rows.clone()).await?;
    assert_eq!(sink.buffered(), 3, "below both thresholds: buffered");
    assert_eq!(count(&url, &table).await, 0, "nothing is inserted before the flush");

    sink.flush().await?;
    assert_eq!(sink.buffered(), 0);
    let mut expected = rows;
    expected.sort_by(|a, b| (&a.key, a.window_start).cmp(&(&b.key, b.window_start)));
    assert_eq!(read_final(&url, &table).await, expected);
    let s = stats.snapshot();
    assert_eq!((s.rows_written, s.batches_written, s.retries, s.rows_rejected), (3, 1, 0, 0));
    assert_eq!(s.insert_latency_count, 1);
    assert!(s.insert_latency_sum_us > 0 && s.last_insert_latency_us == s.insert_latency_sum_us);
    assert!(seen.lock().unwrap().is_empty());

    sink.flush().await?;
    assert_eq!(stats.snapshot().batches_written, 1, "an empty flush inserts nothing");
    drop_table(&url, &table).await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn a_higher_revision_replaces_the_row_under_final() -> TestResult {
    init_tracing();
    let (url, table) = (server_url(), unique_table("replace"));
    let (rejected, _) = collect_rejections::<WindowRow>();
    let mut sink = ClickHouseSink::<WindowRow>::connect(config(&url, &table), rejected).await?;
    sink.begin_epoch(0);
    sink.write_batch(vec![row("alice", 0, 2, 0), row("bob", 0, 1, 0)]).await?;
    sink.flush().await?;
    sink.begin_epoch(1);
    sink.write_batch(vec![row("alice", 0, 5, 1)]).await?;
    sink.flush().await?;

    assert_eq!(read_final(&url, &table).await, vec![row("alice", 0, 5, 1), row("bob", 0, 1, 0)]);
    drop_table(&url, &table).await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn the_row_threshold_inserts_before_flush() -> TestResult {
    init_tracing();
    let (url, table) = (server_url(), unique_table("threshold"));
    let (rejected, _) = collect_rejections::<WindowRow>();
    let cfg = ClickHouseConfig { batch_max_rows: 3, ..config(&url, &table) };
    let mut sink =
        ClickHouseSink::<WindowRow>::connect(cfg, rejected).await?.with_clock(Arc::new(ManualClock::new(0)));
    sink.begin_epoch(0);

    sink.write_batch((0..7).map(|i| row(&format!("k{i}"), 0, i, 0)).collect()).await?;
    assert_eq!(count(&url, &table).await, 6, "two full chunks of 3 went out while writing");
    assert_eq!(sink.buffered(), 1, "the buffer never exceeds batch_max_rows");
    assert_eq!(sink.stats().snapshot().batches_written, 2);

    sink.flush().await?;
    assert_eq!(count(&url, &table).await, 7);
    drop_table(&url, &table).await;
    Ok(())
}

/// A sink with a 500 ms batch interval on a manual clock.
async fn interval_sink(
    name: &str,
) -> Result<(ClickHouseSink<WindowRow>, ManualClock, String, String), Box<dyn std::error::Error>> {
    init_tracing();
    let (url, table) = (server_url(), unique_table(name));
    let (rejected, _) = collect_rejections::<WindowRow>();
    let clock = ManualClock::new(10_000);
    let cfg = ClickHouseConfig { batch_max_interval_ms: 500, ..config(&url, &table) };
    let mut sink =
        ClickHouseSink::<WindowRow>::connect(cfg, rejected).await?.with_clock(Arc::new(clock.clone()));
    sink.begin_epoch(0);
    Ok((sink, clock, url, table))
}

#[tokio::test]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn the_interval_inserts_before_flush() -> TestResult {
    let (mut sink, clock, url, table) = interval_sink("interval").await?;

    sink.write_batch(vec![row("a", 0, 1, 0)]).await?;
    clock.advance(499);
    sink.write_batch(vec![row("b", 0, 1, 0)]).await?;
    assert_eq!(
        (sink.buffered(), count(&url, &table).await),
        (2, 0),
        "499 ms after the first row: still buffered"
    );
    clock.advance(1);
    sink.write_batch(vec![row("c", 0, 1, 0)]).await?;
    assert_eq!((sink.buffered(), count(&url, &table).await), (0, 3), "500 ms after the first row: inserted");
    drop_table(&url, &table).await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn the_interval_holds_when_no_more_rows_come() -> TestResult {
    let (mut sink, clock, url, table) = interval_sink("idle").await?;

    sink.write_batch(vec![row("a", 0, 1, 0), row("b", 0, 1, 0)]).await?;
    clock.advance(499);
    sink.on_idle().await?;
    assert_eq!((sink.buffered(), count(&url, &table).await), (2, 0), "idle before the interval: kept");
    clock.advance(1);
    sink.on_idle().await?;
    assert_eq!((sink.buffered(), count(&url, &table).await), (0, 2), "idle after the interval: inserted");
    drop_table(&url, &table).await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn an_existing_table_with_other_columns_is_refused_naming_the_column() -> TestResult {
    init_tracing();
    let (url, table) = (server_url(), unique_table("mismatch"));
    reader(&url)
        .query(&format!(
            "CREATE TABLE {table} (key String, window_start Int64, window_end Int64, amount UInt64, revision UInt32) \
             ENGINE = ReplacingMergeTree(revision) ORDER BY (key, window_start)"
        ))
        .execute()
        .await?;
    let (rejected, _) = collect_rejections::<WindowRow>();
    let err = ClickHouseSink::<WindowRow>::connect(config(&url, &table), rejected).await.unwrap_err();
    match &err {
        ClickHouseError::SchemaMismatch { column, .. } => assert_eq!(column, "value", "{err}"),
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("`value`"), "the message names the column: {err}");
    drop_table(&url, &table).await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn misconfiguration_is_a_precise_fatal_error() -> TestResult {
    init_tracing();
    let url = server_url();
    let table = unique_table("missing");
    let (rejected, _) = collect_rejections::<WindowRow>();

    let no_create = ClickHouseConfig { create_table: false, ..config(&url, &table) };
    let err = ClickHouseSink::<WindowRow>::connect(no_create, rejected.clone()).await.unwrap_err();
    assert!(matches!(err, ClickHouseError::UnknownTable { .. }), "{err:?}");
    assert_eq!(count_tables(&url, &table).await, 0, "create_table = false creates nothing");

    let no_db = ClickHouseConfig { database: "ferroflow_no_such_db".into(), ..config(&url, &table) };
    let err = ClickHouseSink::<WindowRow>::connect(no_db, rejected.clone()).await.unwrap_err();
    assert!(
        matches!(err, ClickHouseError::UnknownDatabase { ref database, .. } if database == "ferroflow_no_such_db"),
        "{err:?}"
    );

    let bad_user = ClickHouseConfig {
        user: Some("ferroflow_no_such_user".into()),
        password: Some(ferroflow_clickhouse::Secret::new("hunter2")),
        ..config(&url, &table)
    };
    let err = ClickHouseSink::<WindowRow>::connect(bad_user, rejected.clone()).await.unwrap_err();
    assert!(
        matches!(err, ClickHouseError::Auth { ref user, .. } if user == "ferroflow_no_such_user"),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("hunter2"), "the password never appears in errors");
    Ok(())
}

/// A write the server refuses for lack of permission stops the job, and the job's caller gets the
/// sink's own error back: an authentication/permission failure, marked as not worth retrying.
#[tokio::test]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn a_permission_failure_reaches_the_job_caller_as_a_non_retryable_auth_error() -> TestResult {
    use ferroflow_core::prelude::{MemorySource, Record, Runner, Stream};
    init_tracing();
    let (url, table) = (server_url(), unique_table("auth"));
    let (rejected, seen) = collect_rejections::<WindowRow>();
    // The default user creates the table; the read-only user can check it but not write to it.
    drop(ClickHouseSink::<WindowRow>::connect(config(&url, &table), rejected.clone()).await?);
    let read_only = ClickHouseConfig {
        user: Some("ferroflow_readonly".into()),
        create_table: false,
        ..config(&url, &table)
    };
    let sink = ClickHouseSink::<WindowRow>::connect(read_only, rejected).await?;
    let source = MemorySource::new(vec![Record::new(row("alice", 0, 1, 0), 0)]);
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        Runner::default().job(source, Stream::<WindowRow>::new()).sink(sink).discard_dead_letters().run(),
    )
    .await
    .expect("the job stops instead of retrying")
    .unwrap_err();
    assert_eq!(err.retry_hint(), ferroflow_core::RetryHint::NoRetry, "{err:?}");
    assert_eq!(err.domain(), ferroflow_core::ErrorDomain::User, "{err:?}");
    assert!(
        matches!(err.connector_error::<ClickHouseError>(), Some(ClickHouseError::Auth { user, .. }) if user == "ferroflow_readonly"),
        "the caller gets the ClickHouse error itself: {err:?}"
    );
    assert!(seen.lock().unwrap().is_empty(), "a permission failure rejects no rows");
    assert_eq!(count(&url, &table).await, 0);
    drop_table(&url, &table).await;
    Ok(())
}

async fn count_tables(url: &str, table: &str) -> u64 {
    reader(url)
        .query("SELECT count() FROM system.tables WHERE name = ?")
        .bind(table)
        .fetch_one::<u64>()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_row_type_whose_columns_disagree_with_its_fields_is_refused_before_connecting() {
    // Nothing listens on port 9: the check happens before any request.
    let cfg = ClickHouseConfig { url: "http://127.0.0.1:9".into(), ..Default::default() };
    let (rejected, _) = (Arc::new(|_: &InconsistentRow, _: &str| {}) as RejectedFn<InconsistentRow>, ());
    let err = ClickHouseSink::<InconsistentRow>::connect(cfg, rejected).await.unwrap_err();
    assert!(matches!(err, ClickHouseError::RowType { .. }), "{err:?}");
    assert!(err.to_string().contains("amount"), "{err}");
}

#[tokio::test]
async fn an_invalid_config_is_refused_before_connecting() {
    let cfg = ClickHouseConfig { batch_max_rows: 0, ..Default::default() };
    let rejected: RejectedFn<WindowRow> = Arc::new(|_, _| {});
    let err = ClickHouseSink::<WindowRow>::connect(cfg, rejected).await.unwrap_err();
    assert!(
        matches!(err, ClickHouseError::Config(ref c) if c.setting == "clickhouse.batch_max_rows"),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_server_fails_start_up_after_the_timeout() {
    init_tracing();
    // Bind and drop to get a port where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = ClickHouseConfig {
        url: format!("http://127.0.0.1:{port}"),
        startup_timeout_ms: 300,
        retry_initial_backoff_ms: 20,
        retry_max_backoff_ms: 100,
        ..Default::default()
    };
    let rejected: RejectedFn<WindowRow> = Arc::new(|_, _| {});
    let started = Instant::now();
    let err = ClickHouseSink::<WindowRow>::connect(cfg, rejected).await.unwrap_err();
    assert!(matches!(err, ClickHouseError::Unavailable { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up after the start-up timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(err.retry_hint(), ferroflow_core::RetryHint::WithBackoff);
}

#[tokio::test]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn a_refused_row_goes_to_the_callback_and_the_others_land() -> TestResult {
    init_tracing();
    let (url, table) = (server_url(), unique_table("reject"));
    let (rejected, seen) = collect_rejections::<CheckedRow>();
    let mut sink = ClickHouseSink::<CheckedRow>::connect(config(&url, &table), rejected).await?;
    let stats = sink.stats();
    sink.begin_epoch(0);
    let rows: Vec<CheckedRow> = (0..10u64)
        .map(|i| CheckedRow {
            key: format!("k{i}"),
            window_start: 0,
            window_end: 60_000,
            value: if i == 6 { 5_000 } else { i },
            revision: 0,
        })
        .collect();
    sink.write_batch(rows.clone()).await?;
    sink.flush().await?;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "exactly the bad row is rejected: {seen:?}");
    assert_eq!(seen[0].0, rows[6]);
    assert!(
        seen[0].1.contains("395") && seen[0].1.contains("throwIf"),
        "the server's message: {}",
        seen[0].1
    );
    let landed: Vec<String> = reader(&url)
        .query(&format!("SELECT key FROM {table} FINAL ORDER BY key"))
        .fetch_all::<String>()
        .await?;
    let expected: Vec<String> = (0..10).filter(|i| *i != 6).map(|i| format!("k{i}")).collect();
    assert_eq!(landed, expected, "every other row is inserted");
    let s = stats.snapshot();
    assert_eq!((s.rows_written, s.rows_rejected), (9, 1));
    assert!(s.errors_permanent >= 1 && s.errors_fatal == 0, "{s:?}");
    drop_table(&url, &table).await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn a_table_altered_while_the_job_runs_stops_the_sink_without_rejecting_rows() -> TestResult {
    // RowBinary rows carry no types: once a column changes type under the sink, the server reads
    // every row wrong. That is not the rows' fault: the sink must stop (so no checkpoint commits
    // past them), not send each row to the dead letters as refused.
    init_tracing();
    let (url, table) = (server_url(), unique_table("altered"));
    let (rejected, seen) = collect_rejections::<WindowRow>();
    let mut sink = ClickHouseSink::<WindowRow>::connect(config(&url, &table), rejected).await?;
    sink.begin_epoch(0);
    sink.write_batch(vec![row("a", 0, 1, 0)]).await?;
    sink.flush().await?;
    reader(&url).query(&format!("ALTER TABLE {table} MODIFY COLUMN value String")).execute().await?;
    sink.write_batch((0..20).map(|i| row(&format!("k{i}"), 60_000, i, 0)).collect()).await?;
    let err = sink.flush().await.expect_err("the sink stops");
    let ch = err.connector_error::<ClickHouseError>().expect("the ClickHouse error, kept whole");
    assert_eq!(ch.retry_hint(), ferroflow_core::RetryHint::NoRetry, "{ch}");
    assert!(seen.lock().unwrap().is_empty(), "no row rejected: {:?}", seen.lock().unwrap());
    assert_eq!(sink.stats().snapshot().rows_rejected, 0);
    drop_table(&url, &table).await;
    Ok(())
}

/// A TCP proxy in front of the server that can cut its connections and refuse the next ones.
struct Proxy {
    addr: SocketAddr,
    refuse_next: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    cut: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (refuse_next, refused, cut) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let (refuse, count, cut_all) = (Arc::clone(&refuse_next), Arc::clone(&refused), Arc::clone(&cut));
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refuse.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                    drop(inbound); // closed before any response: a network error for the client
                    continue;
                }
                let (target, cut) = (target.clone(), Arc::clone(&cut_all));
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Self { addr, refuse_next, refused, cut, task }
    }

    /// Closes every open connection and refuses the next `n`.
    fn fail_next(&self, n: usize) {
        self.refuse_next.store(n, Ordering::SeqCst);
        self.cut.notify_waiters();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn transient_failures_are_retried_until_the_insert_succeeds() -> TestResult {
    init_tracing();
    let (url, table) = (server_url(), unique_table("retry"));
    let target = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let proxy = Proxy::start(target).await;
    let (rejected, seen) = collect_rejections::<WindowRow>();
    let cfg = ClickHouseConfig { url: format!("http://{}", proxy.addr), ..config(&url, &table) };
    let mut sink = ClickHouseSink::<WindowRow>::connect(cfg, rejected).await?;
    let stats = sink.stats();
    sink.begin_epoch(0);
    sink.write_batch(vec![row("alice", 0, 1, 0), row("bob", 0, 2, 0)]).await?;

    proxy.fail_next(3);
    let flushed = tokio::time::timeout(Duration::from_secs(20), sink.flush()).await;
    assert!(flushed.is_ok(), "the flush finished once the proxy forwarded again");
    flushed??;

    assert_eq!(proxy.refused.load(Ordering::SeqCst), 3, "all refused connections were attempts");
    let s = stats.snapshot();
    assert!(s.retries >= 1 && s.errors_transient >= 1, "{s:?}");
    assert_eq!((s.rows_written, s.batches_written, s.rows_rejected), (2, 1, 0), "{s:?}");
    assert!(seen.lock().unwrap().is_empty(), "transient failures never reject rows");
    assert_eq!(read_final(&url, &table).await, vec![row("alice", 0, 1, 0), row("bob", 0, 2, 0)]);
    drop_table(&url, &table).await;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn a_replayed_epoch_converges_and_is_dropped_by_token_where_supported() -> TestResult {
    init_tracing();
    let (url, table) = (server_url(), unique_table("replay"));
    let rows = vec![row("alice", 0, 2, 0), row("bob", 0, 1, 0), row("carol", 0, 7, 0)];
    let mut dedup = false;
    // The same epoch written twice, as after a crash and a restore from the previous checkpoint.
    for _ in 0..2 {
        let (rejected, _) = collect_rejections::<WindowRow>();
        let mut sink = ClickHouseSink::<WindowRow>::connect(config(&url, &table), rejected).await?;
        dedup = sink.dedup_effective();
        sink.begin_epoch(5);
        sink.write_batch(rows.clone()).await?;
        sink.flush().await?;
    }
    assert_eq!(read_final(&url, &table).await, rows, "FINAL shows each row once");
    let raw = count(&url, &table).await;
    if dedup {
        assert_eq!(raw, 3, "the server dropped the replayed chunk by its token");
    } else {
        // 18.x: both inserts land; a background merge may already have collapsed them.
        assert!(raw == 6 || raw == 3, "{raw}");
    }
    drop_table(&url, &table).await;
    Ok(())
}

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "needs a ClickHouse server: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
async fn every_flush_runs_in_a_sink_flush_span_with_its_rows_and_epoch() -> TestResult {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_env_filter("ferroflow_clickhouse=info")
        .finish();
    // The current-thread runtime polls this test on this thread, so the default reaches the sink.
    let _guard = tracing::subscriber::set_default(subscriber);
    let (url, table) = (server_url(), unique_table("span"));
    let (rejected, _) = collect_rejections::<WindowRow>();
    let mut sink = ClickHouseSink::<WindowRow>::connect(config(&url, &table), rejected).await?;
    sink.begin_epoch(7);
    sink.write_batch(vec![row("a", 0, 1, 0), row("b", 0, 2, 0), row("c", 0, 3, 0)]).await?;
    sink.flush().await?;
    sink.flush().await?; // nothing buffered: no INSERT, no span
    drop_table(&url, &table).await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let closes: Vec<&str> =
        text.lines().filter(|l| l.contains("sink_flush") && l.contains("close")).collect();
    assert_eq!(closes.len(), 1, "one span per INSERT:\n{text}");
    for field in [format!("table={table}"), "epoch=7".into(), "chunk=0".into(), "rows=3".into()] {
        assert!(closes[0].contains(&field), "span lacks {field}: {}", closes[0]);
    }
    Ok(())
}
