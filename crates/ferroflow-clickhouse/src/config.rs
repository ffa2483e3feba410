//! Settings of the ClickHouse sink (the pipeline's `[clickhouse]` table) and the [`Secret`] wrapper.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ConfigError;

/// A password or other credential. `Debug`, `Display` and `Serialize` print `***`, so a
/// configuration can be logged or dumped without leaking it; [`Secret::expose`] gives the value.
///
/// # Examples
/// ```
/// use ferroflow_clickhouse::Secret;
/// let s = Secret::new("hunter2");
/// assert_eq!(format!("{s} {s:?}"), "*** ***");
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself; only for handing it to the client, never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    // Serialized configurations end up in logs and `config show` output: never write the value.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Where and how the sink writes.
///
/// `Default`: `http://127.0.0.1:8123`, table `default.event_windows` (created if missing), no
/// credentials, batches of at most 10 000 rows or 1 s, retries backing off from 100 ms to 10 s,
/// 30 s per request, 60 s to reach the server at start-up.
///
/// # Examples
/// ```
/// use ferroflow_clickhouse::ClickHouseConfig;
/// let config: ClickHouseConfig =
///     serde_json::from_str(r#"{"table": "clicks", "batch_max_rows": 500}"#).unwrap();
/// assert_eq!(config.table, "clicks");
/// assert_eq!(config.batch_max_interval_ms, 1000);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint of the server, `http://host:port` (credentials go in `user` / `password`,
    /// never in the URL, so the URL can be logged).
    pub url: String,
    /// Database holding the table; it must exist.
    pub database: String,
    /// Table the rows go to.
    pub table: String,
    /// User to authenticate as (`None`: the server's `default` user).
    pub user: Option<String>,
    /// Password of `user`; printed as `***` everywhere.
    pub password: Option<Secret>,
    /// Most rows in one INSERT; the in-memory buffer never holds more.
    pub batch_max_rows: usize,
    /// Longest a buffered row waits before an INSERT, in milliseconds; checked on every write
    /// (and everything is inserted at each checkpoint and at the end).
    pub batch_max_interval_ms: u64,
    /// First delay before retrying a failed INSERT, in milliseconds; doubles on each attempt.
    pub retry_initial_backoff_ms: u64,
    /// Longest delay between retries, in milliseconds. Transient failures are retried forever:
    /// while ClickHouse is down the sink blocks and the job slows down (backpressure).
    pub retry_max_backoff_ms: u64,
    /// Create the table (`CREATE TABLE IF NOT EXISTS`) when it is missing; otherwise a missing
    /// table is an error at start-up.
    pub create_table: bool,
    /// Longest one request (an INSERT or a query) may take, in milliseconds; a timeout is
    /// retried like any transient failure.
    pub request_timeout_ms: u64,
    /// How long start-up keeps retrying an unreachable server before giving up, in milliseconds.
    pub startup_timeout_ms: u64,
    /// Identifies this job in insert deduplication tokens; jobs writing the same table need
    /// different ids.
    pub pipeline_id: String,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "default".into(),
            table: "event_windows".into(),
            user: None,
            password: None,
            batch_max_rows: 10_000,
            batch_max_interval_ms: 1000,
            retry_initial_backoff_ms: 100,
            retry_max_backoff_ms: 10_000,
            create_table: true,
            request_timeout_ms: 30_000,
            startup_timeout_ms: 60_000,
            pipeline_id: "ferroflow".into(),
        }
    }
}

impl ClickHouseConfig {
    /// Checks the settings; the error names the bad one and says what is expected.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_clickhouse::ClickHouseConfig;
    /// let config = ClickHouseConfig { batch_max_rows: 0, ..Default::default() };
    /// assert_eq!(config.validate().unwrap_err().setting, "clickhouse.batch_max_rows");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |setting: &'static str, problem: String| Err(ConfigError { setting, problem });
        validate_url(&self.url).map_err(|problem| ConfigError { setting: "clickhouse.url", problem })?;
        for (setting, value) in [
            ("clickhouse.database", &self.database),
            ("clickhouse.table", &self.table),
            ("clickhouse.pipeline_id", &self.pipeline_id),
        ] {
            if value.trim().is_empty() {
                return bad(setting, "must not be empty".into());
            }
        }
        if self.user.as_deref().is_some_and(|u| u.trim().is_empty()) {
            return bad(
                "clickhouse.user",
                "must not be empty when set (leave it out for the default user)".into(),
            );
        }
        if self.batch_max_rows == 0 {
            return bad("clickhouse.batch_max_rows", "must be at least 1, got 0".into());
        }
        for (setting, value) in [
            ("clickhouse.batch_max_interval_ms", self.batch_max_interval_ms),
            ("clickhouse.retry_initial_backoff_ms", self.retry_initial_backoff_ms),
            ("clickhouse.retry_max_backoff_ms", self.retry_max_backoff_ms),
            ("clickhouse.request_timeout_ms", self.request_timeout_ms),
            ("clickhouse.startup_timeout_ms", self.startup_timeout_ms),
        ] {
            if value == 0 {
                return bad(setting, "must be greater than zero, got 0 ms".into());
            }
        }
        if self.retry_max_backoff_ms < self.retry_initial_backoff_ms {
            return bad(
                "clickhouse.retry_max_backoff_ms",
                format!(
                    "must be at least retry_initial_backoff_ms ({} ms), got {} ms",
                    self.retry_initial_backoff_ms, self.retry_max_backoff_ms
                ),
            );
        }
        Ok(())
    }

    /// `database.table`, quoted for SQL.
    pub(crate) fn qualified_table(&self) -> String {
        format!("{}.{}", quote_identifier(&self.database), quote_identifier(&self.table))
    }
}

/// Accepts `http://host[:port][/path]` without credentials.
fn validate_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            format!("`{url}`: https is not supported by this build (no TLS); use http:// or a TLS proxy")
        } else {
            format!("`{url}` must start with http://")
        });
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        // Saying which URL would print the password: name the setting only.
        return Err("must not contain credentials; set clickhouse.user and clickhouse.password".into());
    }
    if authority.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

/// Quotes an identifier with backticks, escaping backslashes and backticks.
pub(crate) fn quote_identifier(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        if c == '`' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('`');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = ClickHouseConfig::default();
        assert!(c.validate().is_ok(), "the defaults must validate");
        assert_eq!(c.url, "http://127.0.0.1:8123");
        assert_eq!((c.database.as_str(), c.table.as_str()), ("default", "event_windows"));
        assert_eq!((c.batch_max_rows, c.batch_max_interval_ms), (10_000, 1000));
        assert_eq!((c.retry_initial_backoff_ms, c.retry_max_backoff_ms), (100, 10_000));
        assert!(c.create_table);
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let cases: Vec<(ClickHouseConfig, &str)> = vec![
            (ClickHouseConfig { url: "ftp://x".into(), ..Default::default() }, "clickhouse.url"),
            (ClickHouseConfig { url: "http://".into(), ..Default::default() }, "clickhouse.url"),
            (ClickHouseConfig { table: " ".into(), ..Default::default() }, "clickhouse.table"),
            (ClickHouseConfig { database: String::new(), ..Default::default() }, "clickhouse.database"),
            (ClickHouseConfig { user: Some(String::new()), ..Default::default() }, "clickhouse.user"),
            (ClickHouseConfig { batch_max_rows: 0, ..Default::default() }, "clickhouse.batch_max_rows"),
            (
                ClickHouseConfig { batch_max_interval_ms: 0, ..Default::default() },
                "clickhouse.batch_max_interval_ms",
            ),
            (
                ClickHouseConfig { request_timeout_ms: 0, ..Default::default() },
                "clickhouse.request_timeout_ms",
            ),
            (
                ClickHouseConfig {
                    retry_initial_backoff_ms: 500,
                    retry_max_backoff_ms: 100,
                    ..Default::default()
                },
                "clickhouse.retry_max_backoff_ms",
            ),
            (ClickHouseConfig { pipeline_id: String::new(), ..Default::default() }, "clickhouse.pipeline_id"),
        ];
        for (config, setting) in cases {
            let err = config.validate().expect_err(setting);
            assert_eq!(err.setting, setting, "{err}");
            assert!(err.to_string().contains(setting), "the message names the setting: {err}");
        }
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_echoing_them() {
        let c = ClickHouseConfig { url: "http://bob:hunter2@127.0.0.1:8123".into(), ..Default::default() };
        let err = c.validate().unwrap_err();
        assert_eq!(err.setting, "clickhouse.url");
        assert!(!err.to_string().contains("hunter2"), "the error must not print the password: {err}");
    }

    #[test]
    fn https_is_refused_with_a_hint() {
        let c = ClickHouseConfig { url: "https://ch.example:8443".into(), ..Default::default() };
        assert!(c.validate().unwrap_err().problem.contains("TLS"));
    }

    #[test]
    fn secret_never_prints_or_serializes_its_value() {
        let c = ClickHouseConfig { password: Some(Secret::new("hunter2")), ..Default::default() };
        let shown = format!("{c:?} {}", c.password.as_ref().unwrap());
        assert!(!shown.contains("hunter2"), "Debug/Display leaked the password: {shown}");
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("hunter2"), "Serialize leaked the password: {json}");
        assert!(json.contains(r#""password":"***""#), "{json}");
        let parsed: ClickHouseConfig = serde_json::from_str(r#"{"password": "hunter2"}"#).unwrap();
        assert_eq!(parsed.password.unwrap().expose(), "hunter2");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<ClickHouseConfig>(r#"{"tabel": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("tabel"), "{err}");
    }

    #[test]
    fn identifiers_are_quoted_and_escaped() {
        assert_eq!(quote_identifier("events"), "`events`");
        assert_eq!(quote_identifier("a`b\\c"), "`a\\`b\\\\c`");
        let c = ClickHouseConfig { database: "db".into(), table: "t".into(), ..Default::default() };
        assert_eq!(c.qualified_table(), "`db`.`t`");
    }
}
