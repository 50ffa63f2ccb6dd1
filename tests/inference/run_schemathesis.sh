#!/usr/bin/env bash
# Property-based API conformance of chexvision-inference against its own
# OpenAPI document, with schemathesis (4.x CLI).
#
#   tests/inference/run_schemathesis.sh BASE_URL [KEY]
#   e.g. tests/inference/run_schemathesis.sh http://127.0.0.1:8080 "$CHEXVISION_API_KEY"
#
# Generates requests from BASE_URL/openapi.json (schema examples, the
# deterministic coverage phase, then random fuzzing, positive and negative
# data) and fails on:
#   not_a_server_error           any 5xx (or a response that is not HTTP)
#   status_code_conformance      a status the operation does not document
#   response_schema_conformance  a body that does not match the documented schema
# Bounded and reproducible: fixed seed, no example database carried between
# runs, ST_MAX_EXAMPLES (default 25) random cases per operation, one worker;
# the admin routes are left out (a reload would change the model under test).
#
# Environment: ST_MAX_EXAMPLES, ST_SEED (default 20240611), ST_WORKERS
# (default 1), ST_REPORT_DIR (default ./schemathesis-report: the JUnit XML,
# the crash cache for `st replay ID` and Hypothesis' storage go there),
# ST_TIME_LIMIT (seconds, default 170; a hard stop: exit 124), SCHEMATHESIS
# (the executable; default schemathesis on PATH).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 BASE_URL [KEY]" >&2
  exit 2
fi
base="${1%/}"
key="${2:-${CHEXVISION_API_KEY:-}}"
st="${SCHEMATHESIS:-schemathesis}"
command -v "$st" >/dev/null || {
  echo "run_schemathesis.sh: $st not found (pip install -r tests/inference/requirements.txt)" >&2; exit 2; }

version="$("$st" --version 2>/dev/null | awk '{print $NF}')"
case "$version" in
  4.*) ;;
  *) echo "run_schemathesis.sh: needs schemathesis 4.x (the 3.x CLI takes other flags); found ${version:-none}" >&2
     exit 2 ;;
esac

report_dir="${ST_REPORT_DIR:-schemathesis-report}"
mkdir -p "$report_dir"
report_dir="$(cd "$report_dir" && pwd)"
# schemathesis keeps a crash cache (for `st replay ID`) in ./.schemathesis by
# default; keep it beside the report instead of in the caller's folder.
config="$report_dir/schemathesis.toml"
# A 504 answers a deadline the client chose (X-Request-Deadline-Ms, which
# the document lets schemathesis set as low as 1 ms): the documented
# contract, not a server error. Every other 5xx fails the run.
printf '[cache]\ndirectory = "%s"\n\n[checks.not_a_server_error]\nexpected-statuses = ["2xx", "3xx", "4xx", "504"]\n' \
  "$report_dir/cache" > "$config"
# Hypothesis' own storage (./.hypothesis) likewise.
export HYPOTHESIS_STORAGE_DIRECTORY="$report_dir/hypothesis"

args=(
  --config-file "$config"
  run "$base/openapi.json"
  --url "$base"
  --wait-for-schema 30
  --checks not_a_server_error,status_code_conformance,response_schema_conformance
  --phases examples,coverage,fuzzing
  --mode all
  --max-examples "${ST_MAX_EXAMPLES:-25}"
  --seed "${ST_SEED:-20240611}"
  --generation-database none
  --workers "${ST_WORKERS:-1}"
  --request-timeout 30
  --suppress-health-check too_slow,data_too_large
  --exclude-path-regex '^/v1/admin/'
  --report junit
  --report-dir "$report_dir"
  --report-junit-path "$report_dir/junit.xml"
  --no-color
)
if [[ -n "$key" ]]; then
  args+=(--header "Authorization: Bearer $key")
fi

echo "schemathesis $version -> $base/openapi.json (seed ${ST_SEED:-20240611}, ${ST_MAX_EXAMPLES:-25} examples/operation)" >&2
start=$SECONDS
set +e
timeout --signal=INT --kill-after=10 "${ST_TIME_LIMIT:-170}" "$st" "${args[@]}"
rc=$?
set -e
echo "schemathesis finished in $((SECONDS - start)) s with exit code $rc (JUnit: $report_dir/junit.xml)" >&2
exit "$rc"
