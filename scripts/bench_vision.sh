#!/usr/bin/env bash
# Benchmark (not a test): chexvision-vision and the preprocess pipeline
# against Pillow, OpenCV and torchvision on the same synthetic 1024 px PNGs,
# in one run; prints three tables with ratios:
#   1. steps, one thread, ms per image: decode, resize, CLAHE (peer / ours);
#   2. the whole per-image pipeline, decode -> gray -> resize 320 -> CLAHE ->
#      PNG, images/s on one thread and on every core (ours / peer): Rust on
#      scoped threads over the images, Python a multiprocessing.Pool of
#      single-threaded workers;
#   3. training augmentation of a 320 px gray image to a 3x320x320
#      ImageNet-normalised float32 tensor, one thread, images/s (ours / peer).
#
#   pip install pillow opencv-python-headless numpy torch torchvision
#   scripts/bench_vision.sh [N]        # N images (default 200)
#
# BENCH_REPEATS (default 3): passes per pipeline/augmentation timing, best
# counts. BENCH_AUG_ROUNDS (default 5): augmentations per image. Without
# torch/torchvision the augmentation table is left out.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/chexvision/target}
cargo build --release --locked -p chexvision-cli >&2
cargo test --release --locked -q -p chexvision-preprocess --test vision_speed --no-run >&2
DIR=${BENCH_DIR:-/tmp/chexvision-bench}/vision-$N
if [ ! -f "$DIR/synthetic.json" ]; then
  rm -rf "$DIR"
  "$CARGO_TARGET_DIR/release/chexvision" synth --rows "$N" --size 1024 --seed 3 --out "$DIR" >&2
fi

# Timings mean little beside a compiler: say so (they are still printed).
load=$(cut -d' ' -f1 /proc/loadavg)
busy=$(ps -eo comm= | grep -cE '^(rustc|cargo|cc1plus|cicc|nvcc)$' || true)
if [ "$busy" -gt 0 ] || awk -v l="$load" 'BEGIN { exit !(l > 1.2) }'; then
  echo "bench_vision: WARNING: load $load, $busy compiler processes running; timings will be low" >&2
fi

py=$(python3 scripts/bench_vision.py "$DIR/images")
# RAYON_NUM_THREADS=1: no library threads inside a step; the all-cores
# pipeline row spawns its own threads (BENCH_THREADS, default every core).
rs=$(BENCH_VISION_DIR="$DIR/images" RAYON_NUM_THREADS=1 cargo test --release --locked -q \
  -p chexvision-preprocess --test vision_speed -- --ignored --nocapture --test-threads 1 2>/dev/null \
  | grep -o 'rust [a-z].*')  # (-q prints a progress dot before each line)
python3 - "$N" "$py" "$rs" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)" "$(nproc)" <<'PY'
import sys
n, py, rs, cpu, cores = sys.argv[1:6]


def pairs(text, prefix):
    out = {}
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == prefix:
            out.update(zip(words[1::2], map(float, words[2::2])))
    return out


def line(text, prefix):
    for l in text.splitlines():
        if l.startswith(prefix + " "):
            return l[len(prefix) + 1:]
    return ""


p, r = pairs(py, "python"), pairs(rs, "rust")
print(f"{n} synthetic 1024 px PNGs; {cpu}, {cores} cores")
print()
print("Steps, one thread, ms per image")
print()
rows = [
    ("decode PNG to gray", "decode", "decode", "Pillow open+convert('L')"),
    ("decode PNG to gray", "decode", "cvdecode", "OpenCV imdecode GRAYSCALE"),
    ("resize 1024 -> 320 bilinear", "resize", "resize", "Pillow resize BILINEAR"),
    ("CLAHE 2.0 8x8 at 320 px", "clahe320", "clahe320", "OpenCV createCLAHE"),
    ("CLAHE 2.0 8x8 at 1024 px", "clahefull", "clahefull", "OpenCV createCLAHE"),
]
print("| step | chexvision-vision | peer | peer ms | ratio peer/ours |")
print("| --- | ---: | --- | ---: | ---: |")
for step, ours_key, peer_key, name in rows:
    ours, peer = r[ours_key], p[peer_key]
    print(f"| {step} | {ours:.3f} | {name} | {peer:.3f} | {peer/ours:.2f} |")

print()
print("Whole pipeline per image: decode PNG -> gray -> resize 320 bilinear -> CLAHE 2.0 8x8 -> PNG, images/s")
print(f"Python chain: {line(py, 'python-chain')}")
print()
print("| run | chexvision-preprocess | Python | ratio ours/Python |")
print("| --- | ---: | ---: | ---: |")
print(f"| one thread | {r['pipe1']:.1f} | {p['pipe1']:.1f} | {r['pipe1']/p['pipe1']:.2f} |")
print(
    f"| all cores ({int(r['threads'])} threads / Pool({int(p['procs'])})) | {r['pipeN']:.1f} | {p['pipeN']:.1f} "
    f"| {r['pipeN']/p['pipeN']:.2f} |"
)
print(
    f"| scaling all cores / one thread | {r['pipeN']/r['pipe1']:.2f} | {p['pipeN']/p['pipe1']:.2f} | |"
)
print(f"| PNG bytes per image | {r['pngbytes']:.0f} | {p['pngbytes']:.0f} | |")

aug = {k: v for k, v in p.items() if k.startswith("aug_")}
if aug and "aug" in r:
    names = {
        "aug_pil": "PIL 'L' image in",
        "aug_u8": "uint8 tensor in",
        "aug_f32": "float32 tensor in",
    }
    best = max(aug, key=aug.get)
    print()
    print("Training augmentation, 320 px gray -> 3x320x320 ImageNet-normalised f32, one thread, images/s")
    print(f"({line(py, 'python-versions')})")
    print()
    print("| ours (augment + to_tensor_imagenet) | torchvision v2 | images/s | ratio ours/torchvision |")
    print("| ---: | --- | ---: | ---: |")
    for key in sorted(aug, key=aug.get, reverse=True):
        mark = " (fastest)" if key == best else ""
        print(f"| {r['aug']:.1f} | {names[key]}{mark} | {aug[key]:.1f} | {r['aug']/aug[key]:.2f} |")
PY
