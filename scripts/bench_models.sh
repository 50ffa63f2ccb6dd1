#!/usr/bin/env bash
# CPU forward pass, side by side in one run: candle ChestModel (autograd-
# capable, weights as plain tensors), our fused CpuInference, and PyTorch
# eager under torch.inference_mode, same thread count. Median of REPS runs
# after a warm-up; peak RSS of each configuration's own process.
#
#   scripts/bench_models.sh [REPS] [THREADS]      (needs: pip install torch torchvision)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-5}
THREADS=${2:-$(nproc)}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
cargo build --release --locked -p chexvision-models --example bench_forward >&2
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_forward
printf '| model | batch | px | candle ms | fused ms | PyTorch ms | fused vs PyTorch | peak MiB candle / fused / PyTorch |\n|---|---|---|---|---|---|---|---|\n'
for model in densenet121 se_resnet; do
  for size in 224 320; do
    for batch in 1 8; do
      c=$("$BIN" candle "$model" "$batch" "$size" "$REPS")
      f=$("$BIN" fused "$model" "$batch" "$size" "$REPS")
      p=$(python3 scripts/bench_models.py "$model" "$batch" "$size" "$REPS" "$THREADS")
      python3 - "$c" "$f" "$p" <<'PY'
import json, sys
c, f, p = (json.loads(a) for a in sys.argv[1:])
print(f"| {c['model']} | {c['batch']} | {c['size']} | {c['median_ms']:.0f} | {f['median_ms']:.0f} | {p['median_ms']:.0f} "
      f"| {p['median_ms'] / f['median_ms']:.2f}× faster | {c['peak_rss_mib']:.0f} / {f['peak_rss_mib']:.0f} / {p['peak_rss_mib']:.0f} |")
PY
    done
  done
done
