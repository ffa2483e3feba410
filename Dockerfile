# ferroflow-pipeline: the reference Kafka -> contract -> dedup -> windows -> ClickHouse job.
#
#   docker build -t ferroflow-pipeline .
#   docker run --rm ferroflow-pipeline --help
#
# Used by docker-compose.yml (services `pipeline` and `generator`).

# ---- build ----------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# librdkafka (built with cmake, SSL, SASL/GSSAPI, zstd) and RocksDB (bindgen needs libclang): the
# project's one list of build packages.
COPY scripts/build-packages.sh /tmp/build-packages.sh
RUN bash /tmp/build-packages.sh && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The whole workspace (see .dockerignore): Cargo needs every member's manifest and targets.
COPY . .
RUN cargo build --release --locked -p ferroflow-pipeline \
 && install -D -m 0755 target/release/ferroflow-pipeline /out/ferroflow-pipeline

# ---- runtime --------------------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libssl3 libsasl2-2 libcurl4 zlib1g libzstd1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ferroflow \
 && useradd --system --uid 10001 --gid ferroflow --home-dir /var/lib/ferroflow \
      --shell /usr/sbin/nologin ferroflow \
 && mkdir -p /var/lib/ferroflow/state /etc/ferroflow \
 && chown -R ferroflow:ferroflow /var/lib/ferroflow

COPY --from=builder /out/ferroflow-pipeline /usr/local/bin/ferroflow-pipeline
# The data contract; `contract.path` defaults to contracts/events.v1.json relative to WORKDIR.
COPY contracts/ /opt/ferroflow/contracts/

WORKDIR /opt/ferroflow
USER 10001:10001
# /metrics, /healthz, /readyz, /status (set http.listen, e.g. FERROFLOW__HTTP__LISTEN=0.0.0.0:9464).
EXPOSE 9464

ENTRYPOINT ["/usr/local/bin/ferroflow-pipeline"]
CMD ["--help"]
