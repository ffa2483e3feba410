#!/usr/bin/env bash
# The project's one test command: formatting, lints, the test suite and the doctests.
# CI (.ci/run and .github/workflows/ci.yml) runs exactly this; run it locally before pushing.
#
#   bash scripts/test.sh
#
# Honours CARGO_TARGET_DIR and any other cargo environment variable. Every section runs even when
# an earlier one fails, so one run reports every problem; the exit code is non-zero if any failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

failed=()
timings=()
passed_total=0
failed_total=0

# Adds the test counts a section printed (nextest's summary line, cargo test's "test result"
# lines) to the totals.
count_tests() {
    local log=$1 line p f
    while IFS= read -r line; do
        p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
        f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
        passed_total=$((passed_total + p))
        failed_total=$((failed_total + f))
    done < <(sed -e 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^ *Summary \[.*tests? run:|^test result:' || true)
}

# Runs one section: prints a header, its output and its duration, and remembers a failure.
section() {
    local name=$1
    shift
    echo
    echo "================================================================"
    echo "== ${name}"
    echo "== \$ $*"
    echo "================================================================"
    local log="${logs}/section.log"
    local start=$SECONDS
    local rc=0
    set +e
    "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    local took=$((SECONDS - start))
    count_tests "$log"
    local status=ok
    if [ "$rc" -ne 0 ]; then
        status="FAILED (exit ${rc})"
        failed+=("${name}")
        echo "!! ${name} failed with exit code ${rc} after ${took}s"
    else
        echo "-- ${name}: ok in ${took}s"
    fi
    timings+=("$(printf '%-22s %5ss  %s' "${name}" "${took}" "${status}")")
}

# Tests that need real servers (S3, Kafka, ClickHouse, Prometheus) are #[ignore]d with a reason
# and run here, against servers scripts/services.sh starts on 127.0.0.1. FERROFLOW_NO_SERVICES=1
# skips them (quick local runs).
ignored=()
if [ "${FERROFLOW_NO_SERVICES:-0}" != "1" ]; then
    trap 'bash scripts/services.sh stop >/dev/null 2>&1 || true; rm -rf "$logs"' EXIT
    section "services (start)" bash scripts/services.sh start
    # `section` runs commands in a pipeline (a subshell): read the environment here instead.
    if env_text=$(bash scripts/services.sh env); then
        eval "$env_text"
    fi
    ignored=(--run-ignored all)
    ignored_cargo=(-- --include-ignored)
else
    echo "FERROFLOW_NO_SERVICES=1: skipping tests that need real servers"
    ignored_cargo=()
fi

# The Debian build packages (cmake, clang, …: scripts/build-packages.sh, the one list the demo
# script and .ci/run use too), so that this command works on a fresh machine by itself.
# shellcheck source=scripts/build-packages.sh
source scripts/build-packages.sh
section "build packages" install_build_packages
section "format (rustfmt)" cargo fmt --all --check
if [ "${FERROFLOW_NO_SERVICES:-0}" != "1" ]; then
    # promtool and docker-compose come with the services (scripts/services.sh installs them).
    section "ops files (promtool, docker-compose config)" bash scripts/check-ops-files.sh
fi
section "lints (clippy)" cargo clippy --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    section "tests (nextest)" cargo nextest run --workspace --no-fail-fast "${ignored[@]}"
else
    echo "cargo-nextest not found: falling back to cargo test"
    section "tests (cargo test)" cargo test --workspace --no-fail-fast "${ignored_cargo[@]}"
fi
# nextest does not run doctests.
section "doctests" cargo test --workspace --doc

echo
echo "================================================================"
echo "== summary"
echo "================================================================"
for t in "${timings[@]}"; do
    echo "${t}"
done
if [ "${#failed[@]}" -ne 0 ]; then
    echo "FAILED sections: ${failed[*]}"
fi
# Last line, in the plain "N passed, N failed" form CI reads.
echo "tests: ${passed_total} passed, ${failed_total} failed"
[ "${#failed[@]}" -eq 0 ]
