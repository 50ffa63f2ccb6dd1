#!/usr/bin/env bash
# Evaluation speed, side by side in one run: our evaluation path (ready
# shards streamed from a local store, the fused CPU forward) and a PyTorch
# evaluation loop of the same DenseNet-121 checkpoint on the same 320 px
# images, without and with test-time augmentation, same thread count.
#
#   scripts/bench_evaluate.sh [IMAGES] [THREADS]   (needs: pip install torch torchvision safetensors)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-96}
THREADS=${2:-$(nproc)}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
cargo build --profile ci --locked -p chexvision-evaluator --example bench_evaluate >&2
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
ours=$("${CARGO_TARGET_DIR:-target}/ci/examples/bench_evaluate" "$OUT" "$N")
theirs=$(python3 scripts/bench_evaluate.py "$OUT" "$THREADS")
python3 - "$ours" "$theirs" <<'PY'
import json, sys
ours = [json.loads(l) for l in sys.argv[1].splitlines()]
theirs = [json.loads(l) for l in sys.argv[2].splitlines()]
print("| TTA | images | ours images/s | PyTorch images/s | ours vs PyTorch | max abs difference of probabilities |")
print("|---|---|---|---|---|---|")
for o, t in zip(ours, theirs):
    print(f"| {'yes' if o['tta'] else 'no'} | {o['images']} | {o['images_per_second']:.2f} | {t['images_per_second']:.2f} "
          f"| {o['images_per_second'] / t['images_per_second']:.2f}× | {t['max_abs_diff_vs_ours']:.1e} |")
PY
