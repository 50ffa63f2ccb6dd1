#!/usr/bin/env bash
# Benchmark (not a test): DICOM decoding, chexvision-vision against pydicom
# (with pylibjpeg-openjpeg, pylibjpeg-libjpeg, pyjpegls, Pillow) on the same
# chest X-ray-sized files (default 2500 x 2048, 12 bits stored in 16): one
# per transfer syntax (native, RLE, JPEG Lossless SV1, JPEG 2000 lossless
# and lossy, JPEG-LS lossless and near-lossless). One thread on both sides;
# prints a Markdown table with the ratio Rust / pydicom (median ms).
#
#   pip install "pydicom>=3" numpy pylibjpeg pylibjpeg-openjpeg \
#       pylibjpeg-libjpeg pyjpegls imagecodecs Pillow
#   scripts/bench_dicom_decode.sh [N]   # N timed runs per file (default 5)
#
# BENCH_DIR: where the files go (default a fresh temporary folder, removed
# at the end unless BENCH_KEEP=1). BENCH_ROWS / BENCH_COLS: image size.
# The Rust side is the example dicom_decode_bench of chexvision-vision:
#   dicom_decode_bench --repeat N FILES...
# printing one JSON line per file: {"file": ..., "ms_median": ..., "ms_best": ...}.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5}
ROWS=${BENCH_ROWS:-2500}
COLS=${BENCH_COLS:-2048}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/chexvision/target}
# One thread: no worker threads in OpenJPEG, numpy or rayon.
unset OPJ_NUM_THREADS
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 RAYON_NUM_THREADS=1

if [ -n "${BENCH_DIR:-}" ]; then
  DIR=$BENCH_DIR
  mkdir -p "$DIR"
else
  DIR=$(mktemp -d -t chexvision-dicom-bench.XXXXXX)
  [ "${BENCH_KEEP:-0}" = 1 ] || trap 'rm -rf "$DIR"' EXIT
fi

# Build first, so a build failure costs nothing and compiling is not timed.
cargo build --release --locked -p chexvision-vision --example dicom_decode_bench >&2

# Timings mean little beside a compiler: say so (they are still printed).
load=$(cut -d' ' -f1 /proc/loadavg)
busy=$(ps -eo comm= | grep -cE '^(rustc|cargo|cc1plus|cicc|nvcc)$' || true)
if [ "$busy" -gt 0 ] || awk -v l="$load" 'BEGIN { exit !(l > 1.2) }'; then
  echo "bench_dicom_decode: WARNING: load $load, $busy compiler processes running; timings will be slow" >&2
fi

# 1. Generate the files and time pydicom (writes $DIR/files.json, $DIR/pydicom.json).
python3 scripts/bench_dicom_decode.py --out "$DIR" --rows "$ROWS" --cols "$COLS" \
  --repeat "$N" >/dev/null
mapfile -t FILES < <(python3 scripts/bench_dicom_decode.py --out "$DIR" --reuse --list-files)

# 2. Time the Rust decoder: one JSON line per file.
cargo run --release --locked -q -p chexvision-vision --example dicom_decode_bench -- \
  --repeat "$N" "${FILES[@]}" >"$DIR/rust.jsonl"

# 3. Merge and print the table (also written to $DIR/merged.json).
echo "DICOM decode, $ROWS x $COLS, 12 bits stored, one thread; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc --all) cores"
echo
python3 scripts/bench_dicom_decode.py --out "$DIR" --merge-only --rust-json "$DIR/rust.jsonl"
