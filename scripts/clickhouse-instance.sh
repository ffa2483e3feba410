#!/usr/bin/env bash
# Starts one ClickHouse server (Debian's clickhouse-server) on 127.0.0.1 with its config, data and
# logs under DIR, and waits until it answers. Used by scripts/services.sh and by tests that need a
# private server they can stop and restart (the outage test).
#
# Usage: scripts/clickhouse-instance.sh DIR HTTP_PORT TCP_PORT
#   prints the server's pid on stdout; the server keeps running after this script exits.
set -euo pipefail

DIR="$1" HTTP_PORT="$2" TCP_PORT="$3"
SRC_CONFIG="${FERROFLOW_CLICKHOUSE_CONFIG:-/etc/clickhouse-server}"
BIN="$(command -v clickhouse-server || echo /usr/bin/clickhouse-server)"
[[ -x "$BIN" ]] || { echo "clickhouse-server not installed (apt-get install clickhouse-server)" >&2; exit 1; }

mkdir -p "$DIR/data/tmp" "$DIR/data/user_files" "$DIR/data/format_schemas" "$DIR/log"
# The packaged config with every path moved under DIR, loopback only, and our ports.
sed -e "s#/var/lib/clickhouse/#$DIR/data/#g" \
    -e "s#/var/log/clickhouse-server/#$DIR/log/#g" \
    -e "s#<http_port>8123</http_port>#<http_port>$HTTP_PORT</http_port>#" \
    -e "s#<tcp_port>9000</tcp_port>#<tcp_port>$TCP_PORT</tcp_port>#" \
    -e "s#<interserver_http_port>9009</interserver_http_port>#<interserver_http_port>$((TCP_PORT + 9))</interserver_http_port>#" \
    -e "/<listen_host>::1<\/listen_host>/d" \
    -e "s#users.xml#$DIR/users.xml#" \
    "$SRC_CONFIG/config.xml" >"$DIR/config.xml"
# The packaged users plus `ferroflow_readonly`, who may read and change settings but not write
# (no password: the server listens on loopback only). Tests use it to see how a permission
# failure reaches a job's caller.
sed -e 's#</profiles>#<ferroflow_readonly><readonly>2</readonly></ferroflow_readonly></profiles>#' \
    -e 's#</users>#<ferroflow_readonly><password></password><networks><ip>::/0</ip></networks><profile>ferroflow_readonly</profile><quota>default</quota></ferroflow_readonly></users>#' \
    "$SRC_CONFIG/users.xml" >"$DIR/users.xml"

nohup "$BIN" --config-file="$DIR/config.xml" >"$DIR/log/stdout.log" 2>&1 &
pid=$!
echo "$pid" >"$DIR/pid"
for _ in $(seq 1 150); do
  if curl -sf "http://127.0.0.1:$HTTP_PORT/?query=SELECT%201" >/dev/null 2>&1; then
    echo "$pid"
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
tail -20 "$DIR/log/stdout.log" "$DIR/log/clickhouse-server.err.log" >&2 2>/dev/null || true
echo "clickhouse-server did not answer on 127.0.0.1:$HTTP_PORT" >&2
exit 1
