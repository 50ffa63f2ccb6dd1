#!/usr/bin/env bash
# CPU training step, side by side in one run: our Trainer (candle autograd,
# AdamW, accumulation 1, clipping) against PyTorch eager (AdamW, BCE), same
# model, batch, input size and thread count; median of STEPS steps after a
# warm-up, peak RSS of each process; batch 8 at 224 px and batch 16 at 320 px.
#
#   scripts/bench_train.sh [STEPS] [THREADS]       (needs: pip install torch torchvision)
#
# BENCH_BIN=path runs that build of `bench_train_step` instead of building
# this tree's (an earlier commit's, for before/after figures).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-3}
THREADS=${2:-$(nproc)}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build --release --locked -p chexvision-trainer --example bench_train_step >&2
  BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_train_step
fi
printf '| model | batch | px | ours ms/step | PyTorch ms/step | ours images/s | PyTorch images/s | ours / PyTorch | peak MiB ours / PyTorch |\n|---|---|---|---|---|---|---|---|---|\n'
for config in "8 224" "16 320"; do
  read -r batch size <<<"$config"
  for model in densenet121 se_resnet; do
    r=$("$BIN" "$model" "$batch" "$size" "$STEPS")
    p=$(python3 scripts/bench_train.py "$model" "$batch" "$size" "$STEPS" "$THREADS")
    python3 - "$r" "$p" <<'PY'
import json, sys
r, p = (json.loads(a) for a in sys.argv[1:])
print(f"| {r['model']} | {r['batch']} | {r['size']} | {r['median_ms']:.0f} | {p['median_ms']:.0f} | {r['images_per_s']:.1f} | {p['images_per_s']:.1f} "
      f"| {r['images_per_s'] / p['images_per_s']:.2f}× | {r['peak_rss_mib']:.0f} / {p['peak_rss_mib']:.0f} |")
PY
  done
done
