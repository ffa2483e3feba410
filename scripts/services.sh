#!/usr/bin/env bash
# Starts, stops and reports the real servers the integration tests use, all on 127.0.0.1:
#   - S3: Garage (a production S3-compatible object store), built from crates.io once and cached.
# Later work adds a Kafka-protocol broker and ClickHouse here.
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
  "$GARAGE" -c "$(garage_cfg)" layout assign -z dc1 -c 1G "$node" >/dev/null
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

write_env() {
  cat >"$DIR/env" <<ENV
export FERROFLOW_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export FERROFLOW_S3_BUCKET=$S3_BUCKET
export FERROFLOW_S3_REGION=garage
export FERROFLOW_S3_ACCESS_KEY_ID=$S3_KEY_ID
export FERROFLOW_S3_SECRET_ACCESS_KEY=$S3_SECRET
ENV
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
    start_garage
    write_env
    log "environment written to $DIR/env"
    ;;
  stop)
    stop_one garage
    ;;
  status)
    status_one garage
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
