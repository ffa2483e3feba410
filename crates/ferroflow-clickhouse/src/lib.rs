//! # ferroflow-clickhouse
//!
//! A [`Sink`](ferroflow_core::sink::Sink) that writes a job's rows into a ClickHouse table over
//! HTTP: buffered RowBinary `INSERT`s of up to `batch_max_rows` rows, retried forever with backoff
//! while the server is unavailable (which is how backpressure reaches the source), rows the server
//! refuses isolated and handed to a callback (the pipeline's `sink_rejected` dead letters), and
//! idempotent replays: a `ReplacingMergeTree` keeps the highest revision per key, and servers from
//! 22.2 on also drop replayed chunks by `insert_deduplication_token`.
//!
//! At start-up [`ClickHouseSink::connect`] reads the server version (`SELECT version()`), enables
//! what it supports ([`Capabilities`]), creates the table from [`TableRow::table_definition`] when
//! it is missing and checks an existing table's columns against [`TableRow::columns`]. It works
//! with servers as old as 18.16.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ferroflow_clickhouse::{ClickHouseConfig, ClickHouseSink, TableRow, clickhouse};
//! use ferroflow_core::sink::Sink;
//!
//! #[derive(Debug, clickhouse::Row, serde::Serialize)]
//! #[clickhouse(crate = "ferroflow_clickhouse::clickhouse")]
//! struct WindowCount {
//!     key: String,
//!     window_start: i64,
//!     count: u64,
//!     revision: u32,
//! }
//!
//! impl TableRow for WindowCount {
//!     fn table_definition() -> &'static str {
//!         "(key String, window_start Int64, count UInt64, revision UInt32) \
//!          ENGINE = ReplacingMergeTree(revision) ORDER BY (key, window_start)"
//!     }
//!     fn columns() -> &'static [&'static str] {
//!         &["key", "window_start", "count", "revision"]
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let config = ClickHouseConfig { table: "window_counts".into(), ..Default::default() };
//! config.validate().unwrap();
//! let rejected = Arc::new(|row: &WindowCount, why: &str| eprintln!("refused {row:?}: {why}"));
//! let mut sink = ClickHouseSink::<WindowCount>::connect(config, rejected).await.unwrap();
//! let stats = sink.stats(); // export as metrics
//! sink.begin_epoch(0);
//! sink.write_batch(vec![WindowCount { key: "alice".into(), window_start: 0, count: 2, revision: 0 }])
//!     .await
//!     .unwrap();
//! sink.flush().await.unwrap();
//! assert_eq!(stats.rows_written(), 1);
//! # });
//! ```
//!
//! Reading back: `SELECT … FROM t FINAL` returns one row per key. On 18.x, read with the
//! `clickhouse` client's `Compression::None` and `with_validation(false)`.
#![deny(missing_docs)]

mod config;
mod error;
mod retry;
mod sink;
mod stats;
mod table;
mod version;

/// The `clickhouse` client crate, for `#[derive(clickhouse::Row)]` on row types (with
/// `#[clickhouse(crate = "ferroflow_clickhouse::clickhouse")]`) without a direct dependency.
pub use clickhouse;

pub use config::{ClickHouseConfig, Secret};
pub use error::{ClickHouseError, ConfigError, ErrorClass};
pub use sink::{ClickHouseSink, RejectedFn};
pub use stats::{SinkStats, SinkStatsSnapshot};
pub use table::{DEDUP_WINDOW, TableRow};
pub use version::{Capabilities, ServerInfo, ServerVersion};
