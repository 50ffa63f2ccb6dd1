#!/usr/bin/env bash
# Observability as code, checked without any service running (`make
# observability-check`, part of `make test`): the alert rules and their unit
# tests, the generated dashboards against their generator and Grafana's
# schema, the query extractor, the metric names against the Rust sources,
# and the Helm chart. Every check runs; the exit status says whether all
# passed. The tools come from `make deps` (Debian's prometheus for promtool,
# tests/observability/requirements.txt from PyPI).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PROMTOOL=${PROMTOOL:-promtool}
RULES=helm/chexvision/rules/chexvision-alerts.yml
TESTS=tests/observability/alerts.test.yml
DASHBOARDS=helm/chexvision/dashboards

missing=()
command -v "$PROMTOOL" >/dev/null || missing+=("promtool (Debian package prometheus)")
$PYTHON -c "import grafana_foundation_sdk, helm_python, yaml" 2>/dev/null \
  || missing+=("the PyPI packages of tests/observability/requirements.txt")
if ((${#missing[@]})); then
  printf 'observability-check: missing %s; run make deps\n' "${missing[@]}" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=()

check() {
  local name=$1
  shift
  echo "== $name" >&2
  if "$@"; then
    passed=$((passed + 1))
  else
    echo "-- FAILED: $name" >&2
    failed+=("$name")
  fi
}

dashboards_current() {
  $PYTHON scripts/observability/dashboards.py "$work/dashboards" 2>/dev/null || return 1
  if ! diff -ru "$DASHBOARDS" "$work/dashboards" >"$work/drift.diff"; then
    head -40 "$work/drift.diff" >&2
    echo "the committed dashboards differ from what the generator writes;" \
      "regenerate them with: python3 scripts/observability/dashboards.py" >&2
    return 1
  fi
  echo "$DASHBOARDS matches scripts/observability/dashboards.py" >&2
}

# Prometheus' own parser on every extracted expression: each one becomes a
# recording rule of a throwaway rules file for promtool.
queries_parse() {
  $PYTHON scripts/observability/queries.py >"$work/queries.jsonl" || return 1
  $PYTHON - "$work/queries.jsonl" "$work/queries-rules.yml" <<'EOF' || return 1
import json, sys, yaml
lines = [json.loads(l) for l in open(sys.argv[1])]
kinds = {k: sum(1 for l in lines if l["kind"] == k) for k in ("panel", "signal")}
assert kinds["panel"] and kinds["signal"], f"nothing extracted: {kinds}"
assert all(l["expr"].strip() and "$" not in l["expr"].replace("$1", "") for l in lines), \
    "an expression kept a dashboard variable"
rules = [{"record": f"chexvision_query_check:q{i}", "expr": l["expr"]} for i, l in enumerate(lines)]
yaml.safe_dump({"groups": [{"name": "extracted", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(lines)} expressions extracted ({kinds['panel']} panel, {kinds['signal']} signal)",
      file=sys.stderr)
EOF
  "$PROMTOOL" check rules "$work/queries-rules.yml" >"$work/parse.log" 2>&1 \
    || { cat "$work/parse.log" >&2; return 1; }
  echo "every extracted expression parses (promtool)" >&2
}

check "promtool check rules" "$PROMTOOL" check rules "$RULES"
check "promtool test rules" "$PROMTOOL" test rules "$TESTS"
check "alert annotations, runbook anchors, tests per alert" $PYTHON scripts/observability/check_rules.py
check "dashboards match their generator" dashboards_current
check "dashboards against Grafana's schema" $PYTHON scripts/observability/validate_dashboards.py "$DASHBOARDS"/*.json
check "query extractor self-test" $PYTHON scripts/observability/queries.py --self-test
check "extracted queries parse" queries_parse
check "metric names exist in the Rust sources" $PYTHON scripts/observability/queries.py --check-metrics
check "helm lint and template" $PYTHON scripts/observability/check_chart.py

total=$((passed + ${#failed[@]}))
if ((${#failed[@]})); then
  echo "observability-check: ${#failed[@]} of $total checks FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "observability-check: all $total checks passed" >&2
