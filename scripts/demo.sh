#!/usr/bin/env bash
# The README's first command: installs the Debian build packages that are missing (see
# scripts/build-packages.sh), then builds and runs the demo — the whole pipeline on librdkafka's
# in-process mock Kafka cluster, no external service. Arguments go to the demo:
#
#   bash scripts/demo.sh                       # defaults
#   bash scripts/demo.sh --events 5000 --linger-secs 60
#
# On a machine that already has the packages this is `cargo run --release -p ferroflow-pipeline -- demo`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/build-packages.sh
source scripts/build-packages.sh
install_build_packages

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs), then run this again" >&2
    exit 1
fi
echo "building the demo (the first build compiles RocksDB's C++ and librdkafka: see README \"Two commands\")"
exec cargo run --release -p ferroflow-pipeline -- demo "$@"
