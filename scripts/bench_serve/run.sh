#!/usr/bin/env bash
# Serving benchmark: the same DenseNet-121 checkpoint behind our Rust service
# (chexvision-inference), NVIDIA PyTriton and LitServe, CPU only, one at a
# time on this machine, driven by the same KServe v2 load generator.
#
#   scripts/bench_serve/run.sh setup    # venv + wrk (once)
#   scripts/bench_serve/run.sh          # the benchmark; markdown table at the end
#
# Our server: set OURS_CMD to the command line that starts it (run through
# `bash -c`, with CHECKPOINT, CHECKPOINT_URI, OURS_PORT, MAX_BATCH and
# MAX_WAIT_MS exported for it to use), e.g.
#
#   OURS_CMD='target/release/chexvision-inference --checkpoint "$CHECKPOINT_URI" --config /tmp/inference.yaml' \
#   OURS_URL=http://127.0.0.1:8080 scripts/bench_serve/run.sh
#
# or set CHEXVISION_INFERENCE_BIN and OURS_CONFIG, which make that command:
#   $CHEXVISION_INFERENCE_BIN --checkpoint file://$CHECKPOINT --config $OURS_CONFIG
# Without either, our server is skipped and the ratio column says n/a.
#
# Knobs (environment): SERVERS ("ours pytriton litserve"), CONCURRENCY
# ("1 8 32 64"), DURATION (20 s per level), WARMUP (5 s per level),
# INPUT_SIZE (224), IMAGE_SIZE (1024), IMAGE_COUNT (8), MAX_BATCH (16),
# MAX_WAIT_MS (5), THREADS (torch threads in the peers; default all cores),
# CHECKPOINT (made by make_checkpoint.py when absent), IMAGES (a directory
# of PNGs; made by make_images.py when absent), OURS_URL
# (http://127.0.0.1:8080), OURS_SHAPE (1), OURS_KEY (bearer key, if
# api.keys is set), PYTRITON_PORT (8010), LITSERVE_PORT (8020), WORK
# (/tmp/chexvision-bench: logs, results.jsonl, table.md), BENCH_VENV,
# QUIET_MAX_PCT (e.g. 15: before each level wait until the machine is less
# busy than that; unset: don't wait), QUIET_TIMEOUT (600 s).
#
# PyTriton's `image` is declared [1] per item (Triton refuses empty dims
# under dynamic batching), so it is sent shape [1, 1]; ours and LitServe get
# [1], our contract. Every server is stopped (its whole process group) when
# its levels are done, and on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${BENCH_VENV:-/root/.cache/chexvision/bench-venv}"
PY="$VENV/bin/python"
WORK="${WORK:-/tmp/chexvision-bench}"
SERVERS="${SERVERS:-ours pytriton litserve}"
CONCURRENCY="${CONCURRENCY:-1 8 32 64}"
DURATION="${DURATION:-20}"
WARMUP="${WARMUP:-5}"
INPUT_SIZE="${INPUT_SIZE:-224}"
IMAGE_SIZE="${IMAGE_SIZE:-1024}"
IMAGE_COUNT="${IMAGE_COUNT:-8}"
MAX_BATCH="${MAX_BATCH:-16}"
MAX_WAIT_MS="${MAX_WAIT_MS:-5}"
THREADS="${THREADS:-$(nproc)}"
CHECKPOINT="${CHECKPOINT:-$WORK/densenet121-$INPUT_SIZE.safetensors}"
IMAGES="${IMAGES:-$WORK/images-$IMAGE_SIZE}"
OURS_URL="${OURS_URL:-http://127.0.0.1:8080}"
OURS_SHAPE="${OURS_SHAPE:-1}"
OURS_KEY="${OURS_KEY:-}"
PYTRITON_PORT="${PYTRITON_PORT:-8010}"
LITSERVE_PORT="${LITSERVE_PORT:-8020}"
READY_TIMEOUT="${READY_TIMEOUT:-300}"

# Pinned from the run that proved the harness (see the report): NumPy < 2
# for PyTriton; torch comes from the system site-packages.
PIP_PINS=(numpy==1.26.4 nvidia-pytriton==0.7.0 litserve==0.2.19 opencv-python-headless==4.11.0.86 "setuptools>=77")

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

setup() {
  if [ ! -x "$PY" ]; then
    python3 -m venv --system-site-packages "$VENV"
  fi
  "$PY" -m pip install -c <(echo "numpy<2") "${PIP_PINS[@]}"
  "$PY" -c 'import numpy, torch, torchvision, cv2, litserve, pytriton; print("numpy", numpy.__version__, "torch", torch.__version__)'
  if ! command -v wrk >/dev/null; then
    apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }
  fi
}

# ------------------------------------------------------------ processes
SERVER_PGID=""
SERVER_URL=""

stop_server() {
  [ -n "$SERVER_PGID" ] || return 0
  local pgid="$SERVER_PGID"
  SERVER_PGID=""
  kill -INT -- "-$pgid" 2>/dev/null || return 0
  for _ in $(seq 30); do
    kill -0 -- "-$pgid" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -TERM -- "-$pgid" 2>/dev/null || true
  sleep 3
  kill -KILL -- "-$pgid" 2>/dev/null || true
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# start_server NAME COMMAND...: in its own session (process group), output
# to $WORK/NAME.log.
start_server() {
  local name="$1"
  shift
  if curl -s -o /dev/null --max-time 2 "$SERVER_URL/v2/health/ready"; then
    log "$name: something already answers on $SERVER_URL (another benchmark?): not started"
    return 1
  fi
  setsid "$@" >"$WORK/$name.log" 2>&1 &
  SERVER_PGID=$!
  log "$name: started (pgid $SERVER_PGID, log $WORK/$name.log)"
}

# wait_ready NAME URL: the server's /v2/health/ready and the model's ready
# route both 200 (Triton says ready even when the model failed to load).
wait_ready() {
  local name="$1" url="$2" start=$SECONDS
  while :; do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/v2/health/ready")" = 200 ] &&
      [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/v2/models/chexvision/ready")" = 200 ]; then
      log "$name: ready after $((SECONDS - start)) s"
      return 0
    fi
    if ! kill -0 -- "-$SERVER_PGID" 2>/dev/null; then
      log "$name: exited before it was ready; last lines of $WORK/$name.log:"
      tail -n 30 "$WORK/$name.log" >&2
      return 1
    fi
    if [ $((SECONDS - start)) -ge "$READY_TIMEOUT" ]; then
      log "$name: not ready after $READY_TIMEOUT s"
      tail -n 30 "$WORK/$name.log" >&2
      return 1
    fi
    sleep 1
  done
}

# wait_quiet: with QUIET_MAX_PCT set, wait (up to QUIET_TIMEOUT s, default
# 600) until the machine's busy CPU over 3 s is below that share of all
# cores: on a shared machine, a build alongside ruins a measurement.
wait_quiet() {
  [ -n "${QUIET_MAX_PCT:-}" ] || return 0
  "$PY" - "$QUIET_MAX_PCT" "${QUIET_TIMEOUT:-600}" <<'EOF' || log "machine still busy; measuring anyway"
import sys, time
limit, deadline = float(sys.argv[1]), time.time() + float(sys.argv[2])
def busy():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)
while True:
    b0, t0 = busy(); time.sleep(3); b1, t1 = busy()
    pct = 100.0 * (b1 - b0) / max(1, t1 - t0)
    if pct < limit:
        sys.exit(0)
    if time.time() > deadline:
        sys.exit(1)
    print(f"[bench] machine {pct:.0f}% busy, waiting", file=sys.stderr)
EOF
}

# ------------------------------------------------------------ servers
# Our service. The command comes from OURS_CMD (or CHEXVISION_INFERENCE_BIN
# + OURS_CONFIG); it sees CHECKPOINT, CHECKPOINT_URI, OURS_PORT,
# MAX_BATCH, MAX_WAIT_MS in its environment.
start_ours() {
  local cmd="${OURS_CMD:-}"
  if [ -z "$cmd" ] && [ -n "${CHEXVISION_INFERENCE_BIN:-}" ]; then
    : "${OURS_CONFIG:?set OURS_CONFIG, the config file of our service, with CHEXVISION_INFERENCE_BIN}"
    cmd='"$CHEXVISION_INFERENCE_BIN" --checkpoint "$CHECKPOINT_URI" --config "$OURS_CONFIG"'
  fi
  if [ -z "$cmd" ]; then
    log "ours: neither OURS_CMD nor CHEXVISION_INFERENCE_BIN is set: skipped"
    return 1
  fi
  export CHECKPOINT CHECKPOINT_URI="file://$CHECKPOINT" MAX_BATCH MAX_WAIT_MS
  export OURS_PORT="${OURS_URL##*:}" CHEXVISION_INFERENCE_BIN="${CHEXVISION_INFERENCE_BIN:-}" OURS_CONFIG="${OURS_CONFIG:-}"
  start_server ours bash -c "exec $cmd"
}

start_pytriton() {
  # Triton's Python backend stub embeds libpython: it must load this
  # Python's (pyenv's), not Debian's libpython3.11 that the loader finds
  # first, or the stub dies in multiprocessing with
  # "'_thread.RLock' object has no attribute '_recursion_count'".
  local libdir
  libdir="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
  start_server pytriton env LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$PY" "$HERE/serve_pytriton.py" --checkpoint "$CHECKPOINT" --port "$PYTRITON_PORT" \
    --max-batch "$MAX_BATCH" --max-wait-ms "$MAX_WAIT_MS" --threads "$THREADS" --image-dims 1
}

start_litserve() {
  start_server litserve "$PY" "$HERE/serve_litserve.py" --checkpoint "$CHECKPOINT" --port "$LITSERVE_PORT" \
    --max-batch "$MAX_BATCH" --max-wait-ms "$MAX_WAIT_MS" --threads "$THREADS"
}

# ------------------------------------------------------------ benchmark
bench() {
  mkdir -p "$WORK"
  # One benchmark at a time on this machine: the ports and the cores are shared.
  exec 9>"${BENCH_LOCK:-/tmp/chexvision-bench.lock}"
  if ! flock -n 9; then
    log "another run.sh holds ${BENCH_LOCK:-/tmp/chexvision-bench.lock}: waiting for it"
    flock 9
  fi
  [ -x "$PY" ] || { log "no venv at $VENV: run '$0 setup' first"; exit 1; }
  command -v wrk >/dev/null || log "wrk not installed: the Python load generator will be used (run '$0 setup')"
  if [ ! -f "$CHECKPOINT" ]; then
    "$PY" "$HERE/make_checkpoint.py" "$CHECKPOINT" --input-size "$INPUT_SIZE" >&2
  fi
  if ! compgen -G "$IMAGES/*.png" >/dev/null; then
    "$PY" "$HERE/make_images.py" "$IMAGES" --count "$IMAGE_COUNT" --size "$IMAGE_SIZE" >&2
  fi
  local results="$WORK/results.jsonl"
  : >"$results"
  log "checkpoint $CHECKPOINT, images $IMAGES, levels: $CONCURRENCY, ${DURATION}s each (+${WARMUP}s warm-up)"

  local name url shape key
  for name in $SERVERS; do
    case "$name" in
      ours) url="$OURS_URL" shape="$OURS_SHAPE" key="$OURS_KEY" ;;
      pytriton) url="http://127.0.0.1:$PYTRITON_PORT" shape="1,1" key="" ;;
      litserve) url="http://127.0.0.1:$LITSERVE_PORT" shape="1" key="" ;;
      *) log "unknown server $name"; exit 2 ;;
    esac
    SERVER_URL="$url"
    "start_$name" || continue
    if ! wait_ready "$name" "$url"; then
      stop_server
      continue
    fi
    local c
    local c try line
    for c in $CONCURRENCY; do
      for try in 1 2 3; do
        wait_quiet
        log "$name: concurrency $c (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
        if ! line="$("$PY" "$HERE/loadgen.py" --url "$url" --images "$IMAGES" --concurrency "$c" \
          --duration "$DURATION" --warmup "$WARMUP" --shape "$shape" --key "$key" --label "$name" \
          --watch-pgid "$SERVER_PGID")"; then
          log "$name: load generator failed at concurrency $c"
          line=""
          break
        fi
        echo "$line" >&2
        # With QUIET_MAX_PCT, a level that other processes disturbed (their
        # CPU share above the limit) is measured again, up to 3 times.
        if [ -z "${QUIET_MAX_PCT:-}" ] || [ "$try" = 3 ] ||
          "$PY" -c 'import json,sys; sys.exit(0 if (json.loads(sys.argv[1]).get("cpu_other_pct") or 0) <= float(sys.argv[2]) else 1)' \
            "$line" "$QUIET_MAX_PCT"; then
          break
        fi
        log "$name: concurrency $c was disturbed by other processes: measuring again"
      done
      [ -z "$line" ] || echo "$line" >>"$results"
    done
    stop_server
  done

  "$PY" - "$results" <<'EOF' | tee "$WORK/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours = {r["concurrency"]: r["images_per_s"] for r in rows if r["label"] == "ours"}
print("| server | concurrency | images/s | p50 ms | p90 ms | p99 ms | errors | vs ours (images/s) | server CPU % | other CPU % |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    base = ours.get(r["concurrency"])
    ratio = f'{r["images_per_s"] / base:.2f}x' if base else "n/a"
    print(f'| {r["label"]} | {r["concurrency"]} | {r["images_per_s"]:.1f} | {r["p50_ms"]:.0f} | {r["p90_ms"]:.0f} | '
          f'{r["p99_ms"]:.0f} | {r["errors"]} | {ratio} | {r.get("cpu_server_pct")} | {r.get("cpu_other_pct")} |')
print()
print("CPU % is of the whole machine (100 = every core busy) during the measured window; "
      "'other' is what neither the server nor the load generator used: above a few % the row is disturbed.")
EOF
}

main() {
  case "${1:-bench}" in
    setup) setup ;;
    bench) bench ;;
    *) echo "usage: $0 [setup|bench]" >&2; exit 2 ;;
  esac
}
# One line, so that bash has read all it runs before it runs it: editing
# this file during a run cannot change what the run does next.
main "$@"; exit
