#!/usr/bin/env bash
# CPU training step, side by side in one run: our Trainer (candle autograd,
# AdamW, accumulation 1, clipping) against PyTorch eager (AdamW, BCE), same
# model, batch, input size and thread count; median of STEPS steps after
# WARMUP untimed ones, peak RSS of each process; batch 8 at 224 px and batch
# 16 at 320 px.
#
#   scripts/bench_train.sh [STEPS] [THREADS] [ROUNDS] [WARMUP]   (needs: pip install torch torchvision)
#
# WARMUP (default 3) measures the steady state a training run spends its
# time in: in its first few steps a process is still growing its heap, and
# every page it touches for the first time is a page fault that zeroes it
# (ours: clear_page up to 40 % of a step's samples until about the fifth
# step, none after; docs/benchmarks.md, "Steady state, and candle's
# workers parked"). WARMUP=1 gives the figures of earlier runs.
#
# ROUNDS (default 1) runs each configuration that many times, ours and
# PyTorch alternating, and reports the median step of each side and the
# median of the per-round ratios (each round's pair ran back to back), with
# the rounds' ratios listed: on a shared machine one pair can be off by
# more than the difference being measured.
#
# BENCH_BIN=path runs that build of `bench_train_step` instead of building
# this tree's (an earlier commit's, for before/after figures; builds before
# WARMUP existed take only WARMUP=1).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-3}
THREADS=${2:-$(nproc)}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
ROUNDS=${3:-1}
WARMUP=${4:-3}
if ! [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
  echo "bench_train.sh: ROUNDS must be a whole number of at least 1, not '$ROUNDS'" >&2
  exit 2
fi
if ! [[ "$WARMUP" =~ ^[1-9][0-9]*$ ]]; then
  echo "bench_train.sh: WARMUP must be a whole number of at least 1, not '$WARMUP'" >&2
  exit 2
fi
# Builds from before WARMUP took four arguments.
warmup_arg=()
[ "$WARMUP" = 1 ] || warmup_arg=("$WARMUP")
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build --release --locked -p chexvision-trainer --example bench_train_step >&2
  BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_train_step
fi
printf '| model | batch | px | ours ms/step | PyTorch ms/step | ours images/s | PyTorch images/s | ours / PyTorch | peak MiB ours / PyTorch | per round |\n|---|---|---|---|---|---|---|---|---|---|\n'
for config in "8 224" "16 320"; do
  read -r batch size <<<"$config"
  for model in densenet121 se_resnet; do
    rounds=()
    for _ in $(seq "$ROUNDS"); do
      r=$("$BIN" "$model" "$batch" "$size" "$STEPS" "${warmup_arg[@]}")
      p=$(python3 scripts/bench_train.py "$model" "$batch" "$size" "$STEPS" "$THREADS" "$WARMUP")
      rounds+=("[$r, $p]")
    done
    python3 - "${rounds[@]}" <<'PY'
import json, statistics, sys
rounds = [json.loads(a) for a in sys.argv[1:]]
ours = [r for r, _ in rounds]
torch = [p for _, p in rounds]
# Images/s of each side from its median step; the ratio is the median of
# the rounds' own ratios (each pair ran back to back).
ours_ms = statistics.median(r["median_ms"] for r in ours)
torch_ms = statistics.median(p["median_ms"] for p in torch)
ratios = [p["median_ms"] / r["median_ms"] for r, p in rounds]
batch = ours[0]["batch"]
print(f"| {ours[0]['model']} | {batch} | {ours[0]['size']} | {ours_ms:.0f} | {torch_ms:.0f} "
      f"| {1000 * batch / ours_ms:.1f} | {1000 * batch / torch_ms:.1f} | {statistics.median(ratios):.2f}× "
      f"| {max(r['peak_rss_mib'] for r in ours):.0f} / {max(p['peak_rss_mib'] for p in torch):.0f} "
      f"| {', '.join(f'{x:.2f}' for x in ratios)} |")
PY
  done
done
