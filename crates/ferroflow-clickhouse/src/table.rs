//! The row types the sink writes ([`TableRow`]), creating their table and checking an existing
//! one against them.

use clickhouse::Client;
use serde::Deserialize;

use crate::config::ClickHouseConfig;
use crate::error::ClickHouseError;
use crate::version::Capabilities;

/// A row type the sink can write: a struct deriving `clickhouse::Row` and `serde::Serialize`,
/// plus the table it belongs in.
///
/// The struct's fields are the inserted columns, in order (`INSERT INTO t(field, …) FORMAT
/// RowBinary`), so their Rust types must match the column types (`String`, `i64` for `Int64`,
/// `u32` for `UInt32`, …).
///
/// # Examples
/// ```
/// use ferroflow_clickhouse::{TableRow, clickhouse};
///
/// #[derive(clickhouse::Row, serde::Serialize)]
/// #[clickhouse(crate = "ferroflow_clickhouse::clickhouse")]
/// struct WindowCount {
///     key: String,
///     window_start: i64,
///     count: u64,
///     revision: u32,
/// }
///
/// impl TableRow for WindowCount {
///     fn table_definition() -> &'static str {
///         "(key String, window_start Int64, count UInt64, revision UInt32) \
///          ENGINE = ReplacingMergeTree(revision) ORDER BY (key, window_start)"
///     }
///     fn columns() -> &'static [&'static str] {
///         &["key", "window_start", "count", "revision"]
///     }
/// }
/// assert_eq!(WindowCount::columns().len(), 4);
/// ```
pub trait TableRow: clickhouse::RowOwned + clickhouse::RowWrite + serde::Serialize + Send + Sync {
    /// Column definitions and engine for `CREATE TABLE`, e.g. `"(key String, …) ENGINE =
    /// ReplacingMergeTree(revision) ORDER BY (key, window_start)"`. Keep the highest revision
    /// per `(key, window_start)` so replays after a restore converge.
    fn table_definition() -> &'static str;

    /// The struct's columns in field order; an existing table must have each of them (as a
    /// column that accepts inserts) and no other column without a default.
    fn columns() -> &'static [&'static str];

    /// Columns the row type gained after tables were created for it, each with the clause that
    /// adds it (`"segment String DEFAULT '' AFTER key"`): the sink adds those an existing table
    /// lacks (`ALTER TABLE … ADD COLUMN`) before checking it, so that a table of an earlier
    /// version keeps working. The default value must mean what the earlier version wrote. None
    /// unless the row type says so.
    fn added_columns() -> &'static [(&'static str, &'static str)] {
        &[]
    }
}

/// How many recent INSERTs a non-replicated table created by the sink remembers for
/// deduplication (`non_replicated_deduplication_window`).
pub const DEDUP_WINDOW: u32 = 1000;

/// A column as `system.columns` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, clickhouse::Row)]
pub(crate) struct ColumnInfo {
    pub(crate) name: String,
    pub(crate) r#type: String,
    /// `""`, `DEFAULT`, `MATERIALIZED`, `ALIAS` (or `EPHEMERAL` on current servers).
    pub(crate) default_kind: String,
}

/// The existing table as `system.tables` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, clickhouse::Row)]
pub(crate) struct TableInfo {
    pub(crate) engine: String,
    pub(crate) engine_full: String,
}

impl TableInfo {
    /// Whether a token-carrying insert is actually deduplicated by this table.
    pub(crate) fn deduplicates(&self) -> bool {
        self.engine.starts_with("Replicated")
            || self.engine_full.contains("non_replicated_deduplication_window")
    }
}

/// The `CREATE TABLE IF NOT EXISTS` statement for `R`'s table. On servers that deduplicate by
/// token, a non-replicated engine gets `non_replicated_deduplication_window` (without it the
/// server ignores the tokens).
pub(crate) fn create_statement(qualified_table: &str, definition: &str, caps: Capabilities) -> String {
    let definition = definition.trim();
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {qualified_table} {definition}");
    let engine = definition.find("ENGINE").map_or("", |i| &definition[i..]);
    let replicated = engine.contains("Replicated");
    if caps.non_replicated_dedup_window
        && !replicated
        && !definition.contains("non_replicated_deduplication_window")
    {
        if engine.contains("SETTINGS") {
            sql.push_str(&format!(", non_replicated_deduplication_window = {DEDUP_WINDOW}"));
        } else {
            sql.push_str(&format!(" SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"));
        }
    }
    sql
}

/// The clauses of `added` whose column `table` lacks, in order.
pub(crate) fn missing_added_columns(table: &[ColumnInfo], added: &[(&str, &str)]) -> Vec<String> {
    added
        .iter()
        .filter(|(name, _)| !table.iter().any(|c| c.name == *name))
        .map(|(_, clause)| (*clause).to_owned())
        .collect()
}

/// Checks an existing table's columns against the row's: the first problem found, or `None`.
pub(crate) fn column_mismatch(table: &[ColumnInfo], row: &[&str]) -> Option<(String, String)> {
    for name in row {
        match table.iter().find(|c| c.name == *name) {
            None => {
                return Some((
                    (*name).to_string(),
                    "is missing from the table (the row type writes it)".into(),
                ));
            }
            Some(c) if matches!(c.default_kind.as_str(), "MATERIALIZED" | "ALIAS") => {
                return Some((
                    c.name.clone(),
                    format!(
                        "is {} in the table and cannot be inserted (the row type writes it)",
                        c.default_kind
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    // A plain column the row does not write would silently get its type's zero value.
    table.iter().find(|c| c.default_kind.is_empty() && !row.contains(&c.name.as_str())).map(|c| {
        (c.name.clone(), format!("({}) has no default and the row type does not write it", c.r#type))
    })
}

/// Creates the table when missing (if allowed) and verifies it; returns whether inserts into it
/// are deduplicated by token, and its engine as `system.tables` shows it (`engine_full`).
pub(crate) async fn ensure_table<R: TableRow>(
    client: &Client,
    config: &ClickHouseConfig,
    caps: Capabilities,
    run: &crate::retry::Requests<'_>,
) -> Result<(bool, String), ClickHouseError> {
    let qualified = config.qualified_table();
    let shown = format!("{}.{}", config.database, config.table);
    let lookup = || {
        client
            .query("SELECT engine, engine_full FROM system.tables WHERE database = ? AND name = ?")
            .bind(config.database.as_str())
            .bind(config.table.as_str())
    };
    let mut info = run.fetch_optional::<TableInfo>(lookup, "looking up the table").await?;
    if info.is_none() {
        if !config.create_table {
            return Err(ClickHouseError::UnknownTable {
                table: shown,
                message: "not in system.tables and clickhouse.create_table is false".into(),
            });
        }
        // `?` would be taken for a bind parameter; `??` is a literal `?`.
        let sql = create_statement(&qualified, R::table_definition(), caps).replace('?', "??");
        run.execute(|| client.query(&sql), "CREATE TABLE").await?;
        tracing::info!(table = %shown, "created the ClickHouse table");
        info = run.fetch_optional::<TableInfo>(lookup, "looking up the table").await?;
    }
    let Some(info) = info else {
        return Err(ClickHouseError::UnknownTable {
            table: shown,
            message: "missing right after creating it".into(),
        });
    };
    let read_columns = || {
        client
            .query("SELECT name, type, default_kind FROM system.columns WHERE database = ? AND table = ?")
            .bind(config.database.as_str())
            .bind(config.table.as_str())
    };
    let mut columns = run.fetch_all::<ColumnInfo>(read_columns, "reading the table's columns").await?;
    let missing = missing_added_columns(&columns, R::added_columns());
    if !missing.is_empty() {
        for clause in &missing {
            let sql = format!("ALTER TABLE {qualified} ADD COLUMN {clause}");
            if !config.create_table {
                return Err(ClickHouseError::SchemaMismatch {
                    table: shown,
                    column: clause.split_whitespace().next().unwrap_or_default().to_owned(),
                    problem: format!(
                        "is missing (the row type gained it; clickhouse.create_table is false, so run `{sql}`)"
                    ),
                });
            }
            let added = run.execute(|| client.query(&sql.replace('?', "??")), "ALTER TABLE ADD COLUMN").await;
            if let Err(e) = added {
                // Another instance starting at the same time may have added it first.
                columns = run.fetch_all::<ColumnInfo>(read_columns, "reading the table's columns").await?;
                if !missing_added_columns(&columns, R::added_columns()).contains(clause) {
                    continue;
                }
                return Err(e);
            }
            tracing::info!(table = %shown, column = %clause, "added a column the row type gained");
        }
        columns = run.fetch_all::<ColumnInfo>(read_columns, "reading the table's columns").await?;
    }
    if let Some((column, problem)) = column_mismatch(&columns, R::columns()) {
        return Err(ClickHouseError::SchemaMismatch { table: shown, column, problem });
    }
    let dedup = caps.dedup_token && info.deduplicates();
    if caps.dedup_token && !dedup {
        tracing::warn!(
            table = %shown,
            engine = %info.engine,
            "the table does not deduplicate inserts (no non_replicated_deduplication_window): replayed chunks \
             are inserted again and only collapse in ReplacingMergeTree; fix with ALTER TABLE {qualified} \
             MODIFY SETTING non_replicated_deduplication_window = {DEDUP_WINDOW}"
        );
    }
    Ok((dedup, info.engine_full))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const DEF: &str =
        "(key String, v UInt64, revision UInt32) ENGINE = ReplacingMergeTree(revision) ORDER BY key";

    fn col(name: &str, kind: &str) -> ColumnInfo {
        ColumnInfo { name: name.into(), r#type: "String".into(), default_kind: kind.into() }
    }

    #[test]
    fn only_the_added_columns_a_table_lacks_are_added() {
        let added = [("segment", "segment String DEFAULT '' AFTER key"), ("v", "v UInt64")];
        assert_eq!(
            missing_added_columns(&[col("key", ""), col("v", "")], &added),
            ["segment String DEFAULT '' AFTER key"]
        );
        assert!(missing_added_columns(&[col("segment", "DEFAULT"), col("v", "")], &added).is_empty());
    }

    #[test]
    fn create_statement_adds_the_dedup_window_only_where_it_matters() {
        let old = Capabilities::default();
        let new = Capabilities::for_version(crate::ServerVersion::new(24, 8));
        assert_eq!(
            create_statement("`d`.`t`", DEF, old),
            format!("CREATE TABLE IF NOT EXISTS `d`.`t` {DEF}")
        );
        assert!(
            create_statement("`d`.`t`", DEF, new)
                .ends_with("ORDER BY key SETTINGS non_replicated_deduplication_window = 1000")
        );
        let with_settings = format!("{DEF} SETTINGS index_granularity = 8192");
        assert!(
            create_statement("`d`.`t`", &with_settings, new)
                .ends_with("index_granularity = 8192, non_replicated_deduplication_window = 1000")
        );
        let replicated = "(k String) ENGINE = ReplicatedReplacingMergeTree('/t', '{replica}') ORDER BY k";
        assert!(
            !create_statement("`d`.`t`", replicated, new).contains("non_replicated"),
            "replicated tables dedup already"
        );
    }

    #[test]
    fn matching_columns_pass_computed_and_defaulted_extras_are_fine() {
        let table = vec![col("key", ""), col("v", ""), col("chk", "MATERIALIZED"), col("note", "DEFAULT")];
        assert_eq!(column_mismatch(&table, &["key", "v"]), None);
    }

    #[test]
    fn mismatches_name_the_column() {
        let table = vec![col("key", ""), col("value", "")];
        let (column, problem) = column_mismatch(&table, &["key", "v"]).unwrap();
        assert_eq!(column, "v");
        assert!(problem.contains("missing"), "{problem}");

        let table = vec![col("key", ""), col("v", ""), col("extra", "")];
        assert_eq!(column_mismatch(&table, &["key", "v"]).unwrap().0, "extra");

        let table = vec![col("key", ""), col("v", "ALIAS")];
        let (column, problem) = column_mismatch(&table, &["key", "v"]).unwrap();
        assert_eq!(column, "v");
        assert!(problem.contains("ALIAS"), "{problem}");
    }

    #[test]
    fn dedup_needs_replication_or_the_window() {
        let t = |engine: &str, full: &str| TableInfo { engine: engine.into(), engine_full: full.into() };
        assert!(!t("ReplacingMergeTree", "ReplacingMergeTree(v) ORDER BY k").deduplicates());
        assert!(
            t(
                "ReplacingMergeTree",
                "ReplacingMergeTree(v) ORDER BY k SETTINGS non_replicated_deduplication_window = 1000"
            )
            .deduplicates()
        );
        assert!(
            t("ReplicatedReplacingMergeTree", "ReplicatedReplacingMergeTree('/t', 'r') ORDER BY k")
                .deduplicates()
        );
    }
}
