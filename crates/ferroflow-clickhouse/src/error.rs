//! Errors of the ClickHouse sink and the classification of ClickHouse failures into transient
//! (retry), permanent (the data is refused: isolate the bad rows) and fatal (fix the setup).

use ferroflow_core::error::ConnectorError;
use ferroflow_core::{ErrorDomain, RetryHint, SinkError};
use thiserror::Error;

/// An invalid setting, named as in the pipeline's configuration (`clickhouse.batch_max_rows`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid setting {setting}: {problem}")]
pub struct ConfigError {
    /// The setting's name.
    pub setting: &'static str,
    /// What is wrong and what is expected.
    pub problem: String,
}

impl ConfigError {
    /// Always [`ErrorDomain::User`].
    pub fn domain(&self) -> ErrorDomain {
        ErrorDomain::User
    }

    /// Always [`RetryHint::NoRetry`].
    pub fn retry_hint(&self) -> RetryHint {
        RetryHint::NoRetry
    }
}

impl From<ConfigError> for ferroflow_core::ConfigError {
    fn from(e: ConfigError) -> Self {
        ferroflow_core::ConfigError::Invalid(e.to_string())
    }
}

/// Why the sink could not start or had to stop.
///
/// Transient failures never appear here while writing: they are retried forever (that is the
/// backpressure). What reaches the caller needs a person to fix something.
#[derive(Debug, Error)]
pub enum ClickHouseError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The server could not be reached during start-up.
    #[error(
        "cannot reach ClickHouse at {url} within {waited_ms} ms: {message}; check that the server runs \
         and that clickhouse.url is right"
    )]
    Unavailable {
        /// The configured URL (it holds no credentials, see [`crate::ClickHouseConfig::url`]).
        url: String,
        /// How long start-up kept retrying.
        waited_ms: u64,
        /// The last failure.
        message: String,
    },
    /// The server refused the credentials or the user lacks a permission.
    #[error(
        "ClickHouse refused user `{user}`: {message}; check clickhouse.user, clickhouse.password and the user's grants"
    )]
    Auth {
        /// The user (the server's `default` when none is configured).
        user: String,
        /// The server's message.
        message: String,
    },
    /// The configured database does not exist.
    #[error("database `{database}` does not exist: create it or fix clickhouse.database ({message})")]
    UnknownDatabase {
        /// The configured database.
        database: String,
        /// The server's message.
        message: String,
    },
    /// The table does not exist and may not be created (or disappeared while running).
    #[error(
        "table `{table}` does not exist: create it, or set clickhouse.create_table = true to let the sink \
         create it ({message})"
    )]
    UnknownTable {
        /// `database.table`.
        table: String,
        /// Details.
        message: String,
    },
    /// The existing table does not fit the row type.
    #[error(
        "table `{table}` does not match the row type: column `{column}` {problem}; alter the table or change the row type"
    )]
    SchemaMismatch {
        /// `database.table`.
        table: String,
        /// The column involved.
        column: String,
        /// What is wrong with it.
        problem: String,
    },
    /// [`crate::TableRow::columns`] disagrees with the fields the row type serializes.
    #[error(
        "the row type's columns() are [{columns}] but its fields are [{fields}]; it must be a struct with \
         named fields and columns() must list them in order"
    )]
    RowType {
        /// What `columns()` lists.
        columns: String,
        /// What the struct serializes.
        fields: String,
    },
    /// The server's version string could not be understood.
    #[error("cannot parse the ClickHouse server version `{0}`")]
    Version(String),
    /// Any other failure that retrying cannot fix (a refused statement, a read-only user, an
    /// unknown setting).
    #[error("ClickHouse refused {what}: {message}")]
    Fatal {
        /// What was being done.
        what: String,
        /// The server's or the client's message.
        message: String,
    },
}

impl ClickHouseError {
    /// Unreachable servers are external; everything else needs a change of configuration or
    /// schema by the user.
    pub fn domain(&self) -> ErrorDomain {
        match self {
            ClickHouseError::Unavailable { .. } => ErrorDomain::External,
            _ => ErrorDomain::User,
        }
    }

    /// Only an unreachable server may come back by itself.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            ClickHouseError::Unavailable { .. } => RetryHint::WithBackoff,
            _ => RetryHint::NoRetry,
        }
    }
}

impl ConnectorError for ClickHouseError {
    fn domain(&self) -> ErrorDomain {
        ClickHouseError::domain(self)
    }

    fn retry_hint(&self) -> RetryHint {
        ClickHouseError::retry_hint(self)
    }
}

/// Kept whole: `SinkError::connector_error::<ClickHouseError>()` (or `JobError::connector_error`)
/// gives it back, so a caller can tell an authentication failure from an unreachable server.
impl From<ClickHouseError> for SinkError {
    fn from(e: ClickHouseError) -> Self {
        SinkError::connector(e)
    }
}

/// How a failed request is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// May succeed later (network, timeouts, overload, too many parts, unknown server errors):
    /// retried with backoff, forever.
    Transient,
    /// The server (or the client's encoder) refuses this data: the rows are split to isolate and
    /// reject the bad ones.
    Permanent,
    /// Misconfiguration (unknown table or database, authentication, permissions, a statement the
    /// server does not support): the sink stops with an error.
    Fatal,
}

/// What fatal condition a server error code stands for, to build a precise [`ClickHouseError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FatalKind {
    Auth,
    UnknownDatabase,
    UnknownTable,
    Other,
}

/// A classified failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) class: ErrorClass,
    /// The server's exception code, when it sent one.
    pub(crate) code: Option<u32>,
    /// The message to log or hand to the rejection callback (no credentials: they travel in
    /// headers and never appear in messages).
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn fatal_kind(&self) -> FatalKind {
        match self.code {
            // Unknown user, wrong or missing password, address not allowed, read-only user, access
            // denied, authentication failed: credentials or grants.
            Some(164 | 192..=195 | 497 | 516) => FatalKind::Auth,
            Some(81) => FatalKind::UnknownDatabase,
            Some(60) => FatalKind::UnknownTable,
            _ if self.message.starts_with("401") || self.message.starts_with("403") => FatalKind::Auth,
            _ => FatalKind::Other,
        }
    }

    /// Turns a fatal failure into the error the caller sees.
    pub(crate) fn into_error(self, config: &crate::ClickHouseConfig, what: &str) -> ClickHouseError {
        match self.fatal_kind() {
            FatalKind::Auth => ClickHouseError::Auth {
                user: config.user.clone().unwrap_or_else(|| "default".into()),
                message: self.message,
            },
            FatalKind::UnknownDatabase => {
                ClickHouseError::UnknownDatabase { database: config.database.clone(), message: self.message }
            }
            FatalKind::UnknownTable => ClickHouseError::UnknownTable {
                table: format!("{}.{}", config.database, config.table),
                message: self.message,
            },
            FatalKind::Other => ClickHouseError::Fatal { what: what.into(), message: self.message },
        }
    }
}

/// Server codes for data the server refuses: parse and type errors, values out of range, failed
/// constraints. Retrying the same rows fails the same way.
const PERMANENT_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    25,  // CANNOT_PARSE_ESCAPE_SEQUENCE
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    128, // TOO_LARGE_ARRAY_SIZE
    131, // TOO_LARGE_STRING_SIZE
    190, // SIZES_OF_ARRAYS_DOESNT_MATCH
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    395, // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
    407, // DECIMAL_OVERFLOW
    469, // VIOLATED_CONSTRAINT
    691, // UNKNOWN_ELEMENT_OF_ENUM
];

/// Server codes for a broken setup: retrying cannot help and rejecting rows would be wrong.
///
/// RowBinary rows carry no types: a type mismatch or bad argument on INSERT means the table no
/// longer has the columns the sink writes (it was altered while the job ran), and every row would
/// be refused alike. Stopping keeps them, rejecting them would move every result to the dead
/// letters while checkpoints commit past them.
const FATAL_CODES: &[u32] = &[
    8,   // THERE_IS_NO_COLUMN
    10,  // NOT_FOUND_COLUMN_IN_BLOCK
    16,  // NO_SUCH_COLUMN_IN_TABLE
    36,  // BAD_ARGUMENTS
    53,  // TYPE_MISMATCH
    47,  // UNKNOWN_IDENTIFIER
    48,  // NOT_IMPLEMENTED
    60,  // UNKNOWN_TABLE
    62,  // SYNTAX_ERROR
    73,  // UNKNOWN_FORMAT
    81,  // UNKNOWN_DATABASE
    115, // UNKNOWN_SETTING
    164, // READONLY (the user may not write)
    192, // UNKNOWN_USER
    193, // WRONG_PASSWORD
    194, // REQUIRED_PASSWORD
    195, // IP_ADDRESS_NOT_ALLOWED
    497, // ACCESS_DENIED
    516, // AUTHENTICATION_FAILED
];

/// Server codes for a request the server could not read to its end: the body was cut short in
/// transit (retried), or, when it keeps happening, the table's columns changed size under the
/// sink (see [`TRUNCATED_ATTEMPTS`]). Never a row's fault: splitting would reject good rows.
pub(crate) const TRUNCATED_CODES: &[u32] = &[
    32, // ATTEMPT_TO_READ_AFTER_EOF
    33, // CANNOT_READ_ALL_DATA
];

/// Attempts of one INSERT that ends in a [`TRUNCATED_CODES`] failure before the sink stops: a
/// body cut in transit does not repeat this often; a table whose columns changed does.
pub(crate) const TRUNCATED_ATTEMPTS: u32 = 5;

/// Reads the exception code from a server message: `Code: 60, e.displayText() = …` (18.x) or
/// `Code: 60. DB::Exception: …` (current versions).
pub(crate) fn server_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + "Code: ".len()..];
    let digits = rest.find(|c: char| !c.is_ascii_digit()).map_or(rest, |end| &rest[..end]);
    digits.parse().ok()
}

/// Classifies a server message (the body of a failed response, or `"<status> <reason>"` when the
/// body was empty).
pub(crate) fn classify_server_message(message: &str) -> (ErrorClass, Option<u32>) {
    let code = server_code(message);
    let class = match code {
        // Too many partitions in one INSERT block shares TOO_MANY_PARTS' code but depends on the
        // rows: smaller inserts succeed, so it is handled like refused data (the rows get split).
        Some(252) if message.contains("partitions for single INSERT block") => ErrorClass::Permanent,
        Some(c) if PERMANENT_CODES.contains(&c) => ErrorClass::Permanent,
        Some(c) if FATAL_CODES.contains(&c) => ErrorClass::Fatal,
        Some(c) if TRUNCATED_CODES.contains(&c) => ErrorClass::Transient,
        // Everything else — TOO_MANY_PARTS, MEMORY_LIMIT_EXCEEDED, TIMEOUT_EXCEEDED,
        // TABLE_IS_READ_ONLY, NO_ZOOKEEPER, TOO_MANY_SIMULTANEOUS_QUERIES, and codes this list
        // does not know — is retried: stalling with a warning on every attempt loses nothing,
        // whereas rejecting rows that a later attempt would have accepted does.
        Some(_) => ErrorClass::Transient,
        None => match message.get(..3).and_then(|s| s.parse::<u16>().ok()) {
            Some(401 | 403 | 404) => ErrorClass::Fatal,
            Some(400..=499) if !message.starts_with("408") && !message.starts_with("429") => {
                ErrorClass::Fatal
            }
            _ => ErrorClass::Transient,
        },
    };
    (class, code)
}

/// Classifies an error of the `clickhouse` client.
pub(crate) fn classify(error: &clickhouse::error::Error) -> Failure {
    use clickhouse::error::Error as E;
    let (class, code, message) = match error {
        E::BadResponse(body) => {
            let (class, code) = classify_server_message(body);
            (class, code, body.clone())
        }
        E::Network(_) | E::TimedOut | E::Compression(_) | E::Decompression(_) | E::Other(_) => {
            (ErrorClass::Transient, None, error_chain(error))
        }
        // The client's encoder refused a row (a sequence without a length, a value the RowBinary
        // format cannot carry): that row is bad, not the server.
        E::Custom(_)
        | E::SequenceMustHaveLength
        | E::InvalidTagEncoding(_)
        | E::VariantDiscriminatorIsOutOfBound(_)
        | E::InvalidUtf8Encoding(_)
        | E::SchemaMismatch(_) => (ErrorClass::Permanent, None, error_chain(error)),
        E::InvalidParams(_) | E::Unsupported(_) => (ErrorClass::Fatal, None, error_chain(error)),
        _ => (ErrorClass::Transient, None, error_chain(error)),
    };
    Failure { class, code, message }
}

/// The error and its sources, `: `-separated (hyper hides the useful part in the sources).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn codes_that_are_never_one_rows_fault_retry_or_stop() {
        let msg = |code: u32| format!("Code: {code}, e.displayText() = DB::Exception: something");
        // A body cut short: retried (and fatal after a few attempts of one INSERT).
        assert_eq!(classify_server_message(&msg(32)).0, ErrorClass::Transient);
        assert_eq!(classify_server_message(&msg(33)).0, ErrorClass::Transient);
        // A table altered under the sink: stop.
        assert_eq!(classify_server_message(&msg(36)).0, ErrorClass::Fatal);
        assert_eq!(classify_server_message(&msg(53)).0, ErrorClass::Fatal);
        // A value the server refuses is still one row's fault.
        assert_eq!(classify_server_message(&msg(395)).0, ErrorClass::Permanent);
    }

    #[test]
    fn codes_are_read_from_old_and_new_message_formats() {
        let old = "Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero, \
                   e.what() = DB::Exception";
        let new =
            "Code: 60. DB::Exception: Table default.x does not exist. (UNKNOWN_TABLE) (version 24.8.4.13)";
        assert_eq!(server_code(old), Some(395));
        assert_eq!(server_code(new), Some(60));
        assert_eq!(server_code("Code: 241"), Some(241), "code from the header when the body is empty");
        assert_eq!(server_code("500 Internal Server Error"), None);
    }

    #[test]
    fn server_errors_are_classified() {
        let cases = [
            ("Code: 252, e.displayText() = DB::Exception: Too many parts (300)", ErrorClass::Transient),
            (
                "Code: 252, e.displayText() = DB::Exception: Too many partitions for single INSERT block (more than 100)",
                ErrorClass::Permanent,
            ),
            (
                "Code: 241. DB::Exception: Memory limit (total) exceeded (MEMORY_LIMIT_EXCEEDED)",
                ErrorClass::Transient,
            ),
            (
                "Code: 242. DB::Exception: Table is in readonly mode (TABLE_IS_READ_ONLY)",
                ErrorClass::Transient,
            ),
            ("Code: 159. DB::Exception: Timeout exceeded (TIMEOUT_EXCEEDED)", ErrorClass::Transient),
            (
                "Code: 27. DB::Exception: Cannot parse input (CANNOT_PARSE_INPUT_ASSERTION_FAILED)",
                ErrorClass::Permanent,
            ),
            ("Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf'", ErrorClass::Permanent),
            (
                "Code: 691. DB::Exception: Unknown element '5' for enum (UNKNOWN_ELEMENT_OF_ENUM)",
                ErrorClass::Permanent,
            ),
            ("Code: 60, e.displayText() = DB::Exception: Table default.x doesn't exist.", ErrorClass::Fatal),
            ("Code: 81, e.displayText() = DB::Exception: Database nodb doesn't exist", ErrorClass::Fatal),
            ("Code: 192, e.displayText() = DB::Exception: Unknown user bad", ErrorClass::Fatal),
            (
                "Code: 516. DB::Exception: bob: Authentication failed (AUTHENTICATION_FAILED)",
                ErrorClass::Fatal,
            ),
            ("Code: 115. DB::Exception: Unknown setting insert_deduplication_token", ErrorClass::Fatal),
            ("Code: 999. DB::Exception: something new", ErrorClass::Transient),
            ("502 Bad Gateway", ErrorClass::Transient),
            ("503 Service Unavailable", ErrorClass::Transient),
            ("429 Too Many Requests", ErrorClass::Transient),
            ("401 Unauthorized", ErrorClass::Fatal),
            ("404 Not Found", ErrorClass::Fatal),
        ];
        for (message, class) in cases {
            assert_eq!(classify_server_message(message).0, class, "{message}");
        }
    }

    #[test]
    fn client_errors_are_classified() {
        use clickhouse::error::Error as E;
        assert_eq!(classify(&E::TimedOut).class, ErrorClass::Transient);
        assert_eq!(classify(&E::Network("connection reset".into())).class, ErrorClass::Transient);
        assert_eq!(classify(&E::SequenceMustHaveLength).class, ErrorClass::Permanent);
        assert_eq!(classify(&E::Custom("bad value".into())).class, ErrorClass::Permanent);
        assert_eq!(classify(&E::InvalidParams("bad url".into())).class, ErrorClass::Fatal);
        let f =
            classify(&E::BadResponse("Code: 193, e.displayText() = DB::Exception: Wrong password".into()));
        assert_eq!((f.class, f.code, f.fatal_kind()), (ErrorClass::Fatal, Some(193), FatalKind::Auth));
    }

    #[test]
    fn fatal_failures_become_precise_errors() {
        let config = crate::ClickHouseConfig::default();
        let f = Failure { class: ErrorClass::Fatal, code: Some(60), message: "no such table".into() };
        let err = f.into_error(&config, "the insert");
        assert!(
            matches!(err, ClickHouseError::UnknownTable { ref table, .. } if table == "default.event_windows")
        );
        assert!(err.to_string().contains("create_table"), "the message says what to do: {err}");
        assert_eq!(err.retry_hint(), RetryHint::NoRetry);
        let sink: SinkError = err.into();
        assert_eq!(sink.retry_hint(), RetryHint::NoRetry);
        assert!(
            matches!(sink.connector_error::<ClickHouseError>(), Some(ClickHouseError::UnknownTable { .. })),
            "the sink error keeps the ClickHouse error whole: {sink:?}"
        );
    }
}
