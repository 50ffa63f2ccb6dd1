#!/usr/bin/env bash
# Benchmark (not a test): chexvision-vision against Pillow (decode, resize)
# and OpenCV (decode, CLAHE) on the same synthetic 1024 px PNGs, one thread
# each, in one run; prints ms per image and the ratio (peer / ours).
#
#   pip install pillow opencv-python-headless numpy && scripts/bench_vision.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/chexvision/target}
cargo build --release --locked -p chexvision-cli >&2
DIR=${BENCH_DIR:-/tmp/chexvision-bench}/vision-$N
if [ ! -f "$DIR/synthetic.json" ]; then
  rm -rf "$DIR"
  "$CARGO_TARGET_DIR/release/chexvision" synth --rows "$N" --size 1024 --seed 3 --out "$DIR" >&2
fi
py=$(python3 scripts/bench_vision.py "$DIR/images")
rs=$(BENCH_VISION_DIR="$DIR/images" RAYON_NUM_THREADS=1 cargo test --release --locked -q \
  -p chexvision-preprocess --test vision_speed -- --ignored --nocapture --test-threads 1 2>/dev/null \
  | grep '^rust ')
python3 - "$N" "$py" "$rs" <<'PY'
import sys
n, py, rs = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
p = dict(zip(py[1::2], map(float, py[2::2])))
r = dict(zip(rs[1::2], map(float, rs[2::2])))
print(f"{n} synthetic 1024 px PNGs, one thread, ms per image")
rows = [
    ("decode PNG to gray", "decode", p["decode"], "Pillow open+convert('L')"),
    ("decode PNG to gray", "decode", p["cvdecode"], "OpenCV imdecode GRAYSCALE"),
    ("resize 1024 -> 320 bilinear", "resize", p["resize"], "Pillow resize BILINEAR"),
    ("CLAHE 2.0 8x8 at 320 px", "clahe320", p["clahe320"], "OpenCV createCLAHE"),
    ("CLAHE 2.0 8x8 at 1024 px", "clahefull", p["clahefull"], "OpenCV createCLAHE"),
]
print(f"| step | chexvision-vision | peer | peer ms | ratio peer/ours |")
print(f"| --- | ---: | --- | ---: | ---: |")
for step, key, peer, name in rows:
    ours = r[key]
    print(f"| {step} | {ours:.3f} | {name} | {peer:.3f} | {peer/ours:.2f} |")
PY
