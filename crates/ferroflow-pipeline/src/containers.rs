//! Kafka and ClickHouse in Docker containers, for running the end-to-end tests on a machine with a
//! Docker engine instead of the servers `scripts/services.sh` starts (cargo feature
//! `testcontainers`).
//!
//! The test harness asks for containers only when `FERROFLOW_KAFKA_BROKERS` or
//! `FERROFLOW_CLICKHOUSE_URL` is not set; the containers stop when the returned value is dropped.
//! Docker publishes the mapped ports on the host's interfaces, not only on loopback: run these on
//! a developer machine or a CI runner, not on a shared host.
//!
//! ```sh
//! cargo test -p ferroflow-pipeline --features testcontainers --test e2e -- --include-ignored
//! ```

use testcontainers_modules::clickhouse::ClickHouse;
use testcontainers_modules::kafka::apache::{self, Kafka};
use testcontainers_modules::testcontainers::runners::SyncRunner;
use testcontainers_modules::testcontainers::{Container, ImageExt, TestcontainersError};

/// ClickHouse's HTTP port inside its container.
const CLICKHOUSE_HTTP: u16 = 8123;

/// A running Apache Kafka broker (KRaft) and a current ClickHouse server.
///
/// # Examples
/// ```no_run
/// let containers = ferroflow_pipeline::containers::Containers::start()?;
/// println!("kafka at {}, clickhouse at {}", containers.brokers(), containers.clickhouse_url());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Containers {
    _kafka: Container<Kafka>,
    _clickhouse: Container<ClickHouse>,
    brokers: String,
    clickhouse_url: String,
}

impl std::fmt::Debug for Containers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containers")
            .field("brokers", &self.brokers)
            .field("clickhouse_url", &self.clickhouse_url)
            .finish_non_exhaustive()
    }
}

impl Containers {
    /// Pulls (when missing) and starts both containers, waiting until each is ready.
    ///
    /// # Errors
    /// When no Docker engine answers (set `DOCKER_HOST`), an image cannot be pulled, or a
    /// container does not become ready.
    pub fn start() -> Result<Self, TestcontainersError> {
        let kafka = Kafka::default().start()?;
        let brokers = format!("{}:{}", kafka.get_host()?, kafka.get_host_port_ipv4(apache::KAFKA_PORT)?);
        // The image's default user gets no network access unless user setup is skipped; the tests
        // connect as `default` without a password.
        let clickhouse = ClickHouse::default().with_env_var("CLICKHOUSE_SKIP_USER_SETUP", "1").start()?;
        let clickhouse_url =
            format!("http://{}:{}", clickhouse.get_host()?, clickhouse.get_host_port_ipv4(CLICKHOUSE_HTTP)?);
        Ok(Self { _kafka: kafka, _clickhouse: clickhouse, brokers, clickhouse_url })
    }

    /// The broker's `host:port` (bootstrap.servers).
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// ClickHouse's HTTP URL.
    pub fn clickhouse_url(&self) -> &str {
        &self.clickhouse_url
    }
}
