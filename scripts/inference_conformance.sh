#!/usr/bin/env bash
# The inference service against the tools the outside world uses: Triton's
# own HTTP client (Open Inference Protocol), HL7's FHIR R4 JSON Schema and
# schemathesis over /openapi.json. Starts `chexvision-inference` on a
# loopback port with an untrained DenseNet-121 (224 px) and an API key,
# runs tests/inference/*, stops it. Exits non-zero when a check fails.
#
#   scripts/inference_conformance.sh
#
# Settings (environment): CHEXVISION_BIN, CHEXVISION_INFERENCE_BIN (default:
# target/debug/...), PYTHON (python3), FHIR_CACHE (~/.cache/chexvision/fhir).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CLI=${CHEXVISION_BIN:-$TARGET/debug/chexvision}
SERVER=${CHEXVISION_INFERENCE_BIN:-$TARGET/debug/chexvision-inference}
PYTHON=${PYTHON:-python3}
for bin in "$CLI" "$SERVER"; do
  [[ -x $bin ]] || { echo "inference_conformance: $bin not built" >&2; exit 2; }
done

work=$(mktemp -d)
server_pid=
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

schema=$(tests/inference/fhir_schema.sh "${FHIR_CACHE:-$HOME/.cache/chexvision/fhir}")
mkdir -p "$work/store"
"$CLI" model init --architecture densenet121 --input-size 224 --seed 7 \
  --run-id conformance --out "$work/store/model.safetensors" >/dev/null
key=conformance-$(date +%s%N)
printf -- '- {name: conformance, scope: predict, sha256: %s}\n' \
  "$(printf %s "$key" | sha256sum | cut -d' ' -f1)" >"$work/keys.yaml"
port=$($PYTHON -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
CHEXVISION_SERVICE__API__BIND=127.0.0.1:$port \
CHEXVISION_SERVICE__API__KEYS_FILE=$work/keys.yaml \
CHEXVISION_HTTP__BIND=127.0.0.1:0 \
CHEXVISION_LOG__FORMAT=json \
  "$SERVER" --config configs/inference.yaml --store "file://$work/store" --bus memory:// \
  --checkpoint model.safetensors >"$work/server.log" 2>&1 &
server_pid=$!
base=http://127.0.0.1:$port
for _ in $(seq 1 300); do
  curl -fs "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.2
done
curl -fs "$base/readyz" >/dev/null || { echo "the service never became ready" >&2; tail -20 "$work/server.log" >&2; exit 1; }

image=shared/vision/tests/fixtures/xray_a.png
status=0
echo "conformance: FHIR R4 (HL7 JSON schema)" >&2
FHIR_SCHEMA=$schema $PYTHON tests/inference/check_fhir.py "$base" "$image" --key "$key" || status=1
echo "conformance: Open Inference Protocol (tritonclient)" >&2
$PYTHON tests/inference/check_triton.py "$base" "$image" --key "$key" || status=1
echo "conformance: schemathesis over /openapi.json" >&2
ST_REPORT_DIR=$work/schemathesis tests/inference/run_schemathesis.sh "$base" "$key" || status=1
# The service must log no error of its own (actix-http logs schemathesis's
# malformed request headers at ERROR before any of our code runs; those
# requests get a 400).
errors=$(grep '"level":"ERROR"' "$work/server.log" | grep -v 'stream error: request parse error' || true)
if [[ -n $errors ]]; then
  echo "conformance: the service logged errors:" >&2
  echo "$errors" | head -5 >&2
  status=1
fi
[[ $status == 0 ]] && echo "conformance: all passed" >&2
exit $status
