//! The server's version (`SELECT version()`) and the features the sink uses on it.

use std::fmt;
use std::str::FromStr;

/// A ClickHouse server version: `major.minor.patch.build` (missing parts are 0; suffixes such as
/// `-lts` or `.altinitystable` are ignored).
///
/// # Examples
/// ```
/// use ferroflow_clickhouse::ServerVersion;
/// let v: ServerVersion = "24.8.4.13".parse().unwrap();
/// assert!(v >= ServerVersion::new(22, 2));
/// assert_eq!(v.to_string(), "24.8.4.13");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    /// Year-based major version (`18`, `24`).
    pub major: u32,
    /// Minor version (the month for current releases).
    pub minor: u32,
    /// Patch number.
    pub patch: u32,
    /// Build number.
    pub build: u32,
}

impl ServerVersion {
    /// `major.minor.0.0`.
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor, patch: 0, build: 0 }
    }
}

impl FromStr for ServerVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = [0u32; 4];
        let mut seen = 0;
        for (slot, piece) in parts.iter_mut().zip(s.trim().split('.')) {
            let digits = piece.find(|c: char| !c.is_ascii_digit()).map_or(piece, |end| &piece[..end]);
            let Ok(n) = digits.parse() else { break };
            *slot = n;
            seen += 1;
            if digits.len() != piece.len() {
                break; // a suffix such as `-lts` ends the version
            }
        }
        if seen < 2 {
            return Err(s.to_string());
        }
        let [major, minor, patch, build] = parts;
        Ok(Self { major, minor, patch, build })
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}.{}", self.major, self.minor, self.patch, self.build)
    }
}

/// Server features the sink uses when present, decided from the version at start-up.
///
/// # Examples
/// ```
/// use ferroflow_clickhouse::{Capabilities, ServerVersion};
/// let old = Capabilities::for_version(ServerVersion::new(18, 16));
/// assert!(!old.dedup_token);
/// assert!(Capabilities::for_version(ServerVersion::new(22, 2)).dedup_token);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// The `insert_deduplication_token` setting (ClickHouse 22.2): every INSERT carries a token
    /// derived from the epoch, the chunk and its content, so a chunk replayed after a crash is
    /// dropped by the server instead of inserted twice. Without it, replays insert duplicates
    /// that `ReplacingMergeTree` collapses (reads use `FINAL`).
    pub dedup_token: bool,
    /// The MergeTree setting `non_replicated_deduplication_window`: deduplication of a
    /// non-replicated table only happens when it is set. The sink sets it on tables it creates
    /// whenever it sends tokens (it exists on every server that has them).
    pub non_replicated_dedup_window: bool,
    /// The `async_insert` setting (21.11). The sink turns it off for its inserts: it batches
    /// already, and a checkpoint must mean the rows are in the table.
    pub async_insert_setting: bool,
}

impl Capabilities {
    /// First version with `insert_deduplication_token`.
    pub const DEDUP_TOKEN_SINCE: ServerVersion = ServerVersion::new(22, 2);
    /// First version with the `async_insert` setting.
    pub const ASYNC_INSERT_SINCE: ServerVersion = ServerVersion::new(21, 11);

    /// What a server of version `v` supports.
    pub fn for_version(v: ServerVersion) -> Self {
        let dedup_token = v >= Self::DEDUP_TOKEN_SINCE;
        Self {
            dedup_token,
            // Added before 22.2; only needed together with tokens, so it follows them.
            non_replicated_dedup_window: dedup_token,
            async_insert_setting: v >= Self::ASYNC_INSERT_SINCE,
        }
    }
}

/// The server the sink talks to: its version and what the sink enabled on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerInfo {
    /// The version the server reported.
    pub version: ServerVersion,
    /// Features in use.
    pub capabilities: Capabilities,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn versions_parse_with_and_without_suffixes() {
        let v = |s: &str| s.parse::<ServerVersion>().unwrap();
        assert_eq!(v("18.16.1"), ServerVersion { major: 18, minor: 16, patch: 1, build: 0 });
        assert_eq!(v("24.8.4.13"), ServerVersion { major: 24, minor: 8, patch: 4, build: 13 });
        assert_eq!(v("23.8.2.7-lts"), ServerVersion { major: 23, minor: 8, patch: 2, build: 7 });
        assert_eq!(
            v("22.3.12.19.altinitystable"),
            ServerVersion { major: 22, minor: 3, patch: 12, build: 19 }
        );
        assert_eq!(v(" 25.1 \n"), ServerVersion::new(25, 1));
        assert!("".parse::<ServerVersion>().is_err());
        assert!("abc".parse::<ServerVersion>().is_err());
        assert!("18".parse::<ServerVersion>().is_err(), "a major alone is not a version");
    }

    #[test]
    fn versions_order_numerically() {
        let v = |s: &str| s.parse::<ServerVersion>().unwrap();
        assert!(v("22.10.1") > v("22.2.1"), "10 > 2, not lexicographic");
        assert!(v("22.2") >= Capabilities::DEDUP_TOKEN_SINCE);
        assert!(v("22.1.99") < Capabilities::DEDUP_TOKEN_SINCE);
    }

    #[test]
    fn capabilities_follow_the_version() {
        let caps = |s: &str| Capabilities::for_version(s.parse().unwrap());
        assert_eq!(caps("18.16.1"), Capabilities::default(), "18.16 has none of them");
        let c = caps("21.11.1");
        assert!(c.async_insert_setting && !c.dedup_token);
        let c = caps("22.1.3");
        assert!(!c.dedup_token, "insert_deduplication_token arrived in 22.2");
        let c = caps("22.2.2.1");
        assert!(c.dedup_token && c.non_replicated_dedup_window && c.async_insert_setting);
        assert!(caps("25.3.1").dedup_token);
    }
}
