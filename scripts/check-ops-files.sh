#!/usr/bin/env bash
# Checks the operations files without a Docker engine or a running pipeline:
#   - prometheus/prometheus.yml and prometheus/alerts.yml (promtool), the alert unit tests;
#   - docker-compose.yml (docker-compose config);
#   - the Grafana dashboards: valid JSON, and every panel query a valid PromQL expression that
#     only names ferroflow_* metrics defined in crates/ferroflow-pipeline/src/metrics.rs.
#
# Usage: scripts/check-ops-files.sh        (exits non-zero on the first failing check)
# Needs: promtool (Debian package prometheus), docker-compose (or docker compose), python3.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

command -v promtool >/dev/null || fail "promtool not found (apt-get install prometheus)"
command -v python3 >/dev/null || fail "python3 not found"

step "promtool check config prometheus/prometheus.yml"
promtool check config prometheus/prometheus.yml || fail "prometheus/prometheus.yml"

step "promtool check rules prometheus/alerts.yml"
promtool check rules prometheus/alerts.yml || fail "prometheus/alerts.yml"

step "promtool test rules prometheus/tests/alerts_test.yml"
promtool test rules prometheus/tests/alerts_test.yml || fail "alert unit tests"

step "docker-compose -f docker-compose.yml config -q"
if command -v docker-compose >/dev/null; then
  docker-compose -f docker-compose.yml config -q || fail "docker-compose.yml"
elif docker compose version >/dev/null 2>&1; then
  docker compose -f docker-compose.yml config -q || fail "docker-compose.yml"
else
  fail "neither docker-compose nor docker compose is installed"
fi

step "dashboards: JSON"
for f in grafana/dashboards/*.json grafana/provisioning/datasources/*.yml grafana/provisioning/dashboards/*.yml; do
  [[ -f "$f" ]] || fail "missing $f"
done
for f in grafana/dashboards/*.json; do
  python3 -m json.tool "$f" >/dev/null || fail "$f is not valid JSON"
  echo "  $f: valid JSON"
done

step "dashboards: every query parses (promtool) and names only known metrics"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/dashboard-exprs.yml" grafana/dashboards/*.json <<'PY' || fail "dashboard queries"
import json, re, sys

out, files = sys.argv[1], sys.argv[2:]
known = set(re.findall(r'"(ferroflow_[a-z0-9_]+)"', open("crates/ferroflow-pipeline/src/metrics.rs").read()))
# Histograms expose _bucket, _sum and _count series.
known |= {n + sfx for n in list(known) for sfx in ("_bucket", "_sum", "_count")}
bad = []
rules = []
for path in files:
    dash = json.load(open(path))
    if dash.get("schemaVersion", 0) < 36:
        bad.append(f"{path}: schemaVersion {dash.get('schemaVersion')} is too old")
    uids = set()
    for panel in dash.get("panels", []):
        title = panel.get("title", "?")
        if panel.get("datasource", {}).get("uid") != "prometheus":
            bad.append(f"{path}: panel {title!r} does not use datasource uid 'prometheus'")
        targets = panel.get("targets", [])
        if not targets:
            bad.append(f"{path}: panel {title!r} has no queries")
        for t in targets:
            expr = t.get("expr", "")
            if not expr:
                bad.append(f"{path}: panel {title!r} has a target without expr")
                continue
            if "$" in expr:
                bad.append(f"{path}: panel {title!r}: Grafana variables do not evaluate outside Grafana: {expr}")
            for name in re.findall(r"\b(ferroflow_[a-z0-9_]+)\b", expr):
                if name not in known:
                    bad.append(f"{path}: panel {title!r} uses unknown metric {name}")
            rules.append(expr)
# Each query becomes a recording rule so promtool parses it.
with open(out, "w") as f:
    f.write("groups:\n  - name: dashboard-queries\n    rules:\n")
    for i, expr in enumerate(rules):
        f.write(f"      - record: dashboard_query_{i}\n        expr: {json.dumps(expr)}\n")
for b in bad:
    print("  " + b, file=sys.stderr)
print(f"  {len(rules)} queries, {len(known)} known ferroflow_* metrics")
sys.exit(1 if bad else 0)
PY
promtool check rules "$tmp/dashboard-exprs.yml" || fail "a dashboard query does not parse"

step "alert rules: only known metrics"
python3 - <<'PY' || fail "alert rules name unknown metrics"
import re, sys
known = set(re.findall(r'"(ferroflow_[a-z0-9_]+)"', open("crates/ferroflow-pipeline/src/metrics.rs").read()))
# Histograms expose _bucket, _sum and _count series.
known |= {n + sfx for n in list(known) for sfx in ("_bucket", "_sum", "_count")}
exprs = "\n".join(l for l in open("prometheus/alerts.yml") if not l.lstrip().startswith("#"))
# Only the expressions: strip annotations by looking at expr blocks.
blocks = re.findall(r"expr: (?:>-\n((?:\s{10,}.*\n)+)|(.*))", exprs)
unknown = set()
for folded, single in blocks:
    for name in re.findall(r"\b(ferroflow_[a-z0-9_]+)\b", folded or single):
        if name not in known:
            unknown.add(name)
if unknown:
    print("  unknown metrics: " + ", ".join(sorted(unknown)), file=sys.stderr)
    sys.exit(1)
print(f"  {len(blocks)} alert expressions use only known metrics")
PY

printf '\nall operations files check out\n'
