#!/usr/bin/env bash
# Starts, stops and reports the real servers the integration tests use, all on 127.0.0.1:
#   - S3: Garage (a production S3-compatible object store), built from crates.io once and cached;
#   - Kafka protocol: the tansu broker, built from crates.io once and cached;
#   - ClickHouse: Debian's clickhouse-server, installed with apt when missing.
#
# When FERROFLOW_KAFKA_BROKERS / FERROFLOW_CLICKHOUSE_URL / FERROFLOW_S3_ENDPOINT are already set
# (docker-compose, a test cluster), nothing is started for that service and the given endpoint is
# passed through.
#
# Usage: scripts/services.sh start|stop|status|env
#   start   installs what is missing, starts the servers, writes $FERROFLOW_SERVICES_DIR/env
#   env     prints the environment the tests read (source it: `eval "$(scripts/services.sh env)"`)
#
# Binaries are cached in $FERROFLOW_CACHE (default ~/.cache/ferroflow) and reused when present.
set -euo pipefail

CACHE="${FERROFLOW_CACHE:-$HOME/.cache/ferroflow}"
DIR="${FERROFLOW_SERVICES_DIR:-/tmp/ferroflow-services}"
GARAGE_VERSION="2.5.0"
GARAGE="$CACHE/bin/garage"
S3_PORT="${FERROFLOW_S3_PORT:-3900}"
# Fixed test credentials: these servers only ever listen on loopback.
S3_KEY_ID="GK0123456789abcdef01234567"
S3_SECRET="0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
S3_BUCKET="checkpoints"
TANSU_VERSION="0.6.0"
TANSU="$CACHE/bin/tansu"
KAFKA_PORT="${FERROFLOW_KAFKA_PORT:-9092}"
CLICKHOUSE_HTTP_PORT="${FERROFLOW_CLICKHOUSE_HTTP_PORT:-8123}"
CLICKHOUSE_TCP_PORT="${FERROFLOW_CLICKHOUSE_TCP_PORT:-19000}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[services] %s\n' "$*" >&2; }

install_garage() {
  if [[ -x "$GARAGE" ]] && "$GARAGE" --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    return
  fi
  log "building garage $GARAGE_VERSION from crates.io into $CACHE (one-time, ~7-15 min on 2 cores)"
  cargo install garage --version "$GARAGE_VERSION" --locked --root "$CACHE" >"$CACHE/garage-install.log" 2>&1 \
    || { tail -30 "$CACHE/garage-install.log" >&2; log "garage build failed"; exit 1; }
}

garage_cfg() { echo "$DIR/garage/garage.toml"; }

start_garage() {
  if [[ -f "$DIR/garage/pid" ]] && kill -0 "$(cat "$DIR/garage/pid")" 2>/dev/null; then
    log "garage already running (pid $(cat "$DIR/garage/pid"))"
    return
  fi
  install_garage
  rm -rf "$DIR/garage"
  mkdir -p "$DIR/garage/meta" "$DIR/garage/data"
  local secret
  secret="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
  cat >"$(garage_cfg)" <<TOML
metadata_dir = "$DIR/garage/meta"
data_dir = "$DIR/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:3903"
TOML
  nohup "$GARAGE" -c "$(garage_cfg)" server >"$DIR/garage/server.log" 2>&1 &
  echo $! >"$DIR/garage/pid"
  local node=""
  for _ in $(seq 1 100); do
    node="$("$GARAGE" -c "$(garage_cfg)" node id -q 2>/dev/null | cut -d@ -f1 || true)"
    [[ -n "$node" ]] && break
    sleep 0.2
  done
  [[ -n "$node" ]] || { tail -20 "$DIR/garage/server.log" >&2; log "garage did not start"; exit 1; }
  # `node id` reads a local file and answers before the RPC listener is up: the first layout
  # command can find nobody listening, so it is retried.
  local assigned=""
  for _ in $(seq 1 50); do
    "$GARAGE" -c "$(garage_cfg)" layout assign -z dc1 -c 1G "$node" >/dev/null 2>&1 && assigned=1 && break
    sleep 0.2
  done
  [[ -n "$assigned" ]] || { tail -20 "$DIR/garage/server.log" >&2; log "garage did not take its layout"; exit 1; }
  "$GARAGE" -c "$(garage_cfg)" layout apply --version 1 >/dev/null
  for _ in $(seq 1 50); do
    "$GARAGE" -c "$(garage_cfg)" bucket create "$S3_BUCKET" >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$GARAGE" -c "$(garage_cfg)" key import "$S3_KEY_ID" "$S3_SECRET" -n ferroflow --yes >/dev/null
  "$GARAGE" -c "$(garage_cfg)" bucket allow --read --write --owner "$S3_BUCKET" --key ferroflow >/dev/null
  # The S3 API answers (403 without credentials) once the layout is live.
  for _ in $(seq 1 50); do
    curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" && break
    sleep 0.2
  done
  log "garage S3 on http://127.0.0.1:$S3_PORT (bucket $S3_BUCKET, region garage)"
}

install_tansu() {
  if [[ -x "$TANSU" ]] && "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return
  fi
  log "building tansu $TANSU_VERSION from crates.io into $CACHE (one-time, ~8-15 min on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore --root "$CACHE" \
    >"$CACHE/tansu-install.log" 2>&1 \
    || { tail -30 "$CACHE/tansu-install.log" >&2; log "tansu build failed"; exit 1; }
}

start_tansu() {
  if [[ -f "$DIR/tansu/pid" ]] && kill -0 "$(cat "$DIR/tansu/pid")" 2>/dev/null; then
    log "tansu already running (pid $(cat "$DIR/tansu/pid"))"
    return
  fi
  install_tansu
  rm -rf "$DIR/tansu"
  mkdir -p "$DIR/tansu"
  nohup "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ \
    >"$DIR/tansu/server.log" 2>&1 &
  echo $! >"$DIR/tansu/pid"
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break
    kill -0 "$(cat "$DIR/tansu/pid")" 2>/dev/null || { tail -20 "$DIR/tansu/server.log" >&2; log "tansu exited"; exit 1; }
    sleep 0.2
  done
  log "tansu Kafka broker on 127.0.0.1:$KAFKA_PORT"
}

# Installs Debian packages that are missing (apt-get update only when the first try fails).
apt_install() {
  local sudo=()
  [[ "$(id -u)" -eq 0 ]] || sudo=(sudo -E)
  log "installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "$@" </dev/null >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -q >/dev/null \
         && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "$@" </dev/null >/dev/null; }
}

install_clickhouse() {
  command -v clickhouse-server >/dev/null 2>&1 || apt_install clickhouse-server clickhouse-client
}

# Prometheus (and promtool) for the observability test, docker-compose for `config` checks; the
# tests start their own Prometheus instances (scripts/prometheus-instance.sh).
install_ops_tools() {
  local missing=()
  command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  [[ ${#missing[@]} -eq 0 ]] || apt_install "${missing[@]}"
  # Debian starts the packaged Prometheus as a service; the tests need none of it.
  if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus >/dev/null 2>&1 || true; fi
}

start_clickhouse() {
  if [[ -f "$DIR/clickhouse/pid" ]] && kill -0 "$(cat "$DIR/clickhouse/pid")" 2>/dev/null; then
    log "clickhouse already running (pid $(cat "$DIR/clickhouse/pid"))"
    return
  fi
  install_clickhouse
  rm -rf "$DIR/clickhouse"
  mkdir -p "$DIR/clickhouse"
  bash "$HERE/clickhouse-instance.sh" "$DIR/clickhouse" "$CLICKHOUSE_HTTP_PORT" "$CLICKHOUSE_TCP_PORT" >/dev/null
  log "clickhouse $(curl -s "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/?query=SELECT%20version()") on http://127.0.0.1:$CLICKHOUSE_HTTP_PORT"
}

write_env() {
  {
    if [[ -n "${FERROFLOW_S3_ENDPOINT:-}" ]]; then
      echo "export FERROFLOW_S3_ENDPOINT=$FERROFLOW_S3_ENDPOINT"
      echo "export FERROFLOW_S3_BUCKET=${FERROFLOW_S3_BUCKET:-$S3_BUCKET}"
      echo "export FERROFLOW_S3_REGION=${FERROFLOW_S3_REGION:-us-east-1}"
      echo "export FERROFLOW_S3_ACCESS_KEY_ID=${FERROFLOW_S3_ACCESS_KEY_ID:-}"
      echo "export FERROFLOW_S3_SECRET_ACCESS_KEY=${FERROFLOW_S3_SECRET_ACCESS_KEY:-}"
    else
      echo "export FERROFLOW_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
      echo "export FERROFLOW_S3_BUCKET=$S3_BUCKET"
      echo "export FERROFLOW_S3_REGION=garage"
      echo "export FERROFLOW_S3_ACCESS_KEY_ID=$S3_KEY_ID"
      echo "export FERROFLOW_S3_SECRET_ACCESS_KEY=$S3_SECRET"
    fi
    echo "export FERROFLOW_KAFKA_BROKERS=${FERROFLOW_KAFKA_BROKERS:-127.0.0.1:$KAFKA_PORT}"
    echo "export FERROFLOW_CLICKHOUSE_URL=${FERROFLOW_CLICKHOUSE_URL:-http://127.0.0.1:$CLICKHOUSE_HTTP_PORT}"
  } >"$DIR/env"
}

stop_one() {
  local name="$1" pidfile="$DIR/$1/pid"
  if [[ -f "$pidfile" ]]; then
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      log "stopped $name"
    fi
    rm -f "$pidfile"
  fi
}

status_one() {
  local name="$1" pidfile="$DIR/$1/pid"
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "$name: running (pid $(cat "$pidfile"))"
  else
    echo "$name: stopped"
    return 1
  fi
}

case "${1:-}" in
  start)
    mkdir -p "$DIR" "$CACHE"
    [[ -n "${FERROFLOW_S3_ENDPOINT:-}" ]] || start_garage
    [[ -n "${FERROFLOW_KAFKA_BROKERS:-}" ]] || start_tansu
    [[ -n "${FERROFLOW_CLICKHOUSE_URL:-}" ]] || start_clickhouse
    install_ops_tools
    write_env
    log "environment written to $DIR/env"
    ;;
  stop)
    stop_one garage
    stop_one tansu
    stop_one clickhouse
    ;;
  status)
    rc=0
    status_one garage || rc=1
    status_one tansu || rc=1
    status_one clickhouse || rc=1
    exit "$rc"
    ;;
  env)
    [[ -f "$DIR/env" ]] || { log "not started: run scripts/services.sh start"; exit 1; }
    cat "$DIR/env"
    ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
