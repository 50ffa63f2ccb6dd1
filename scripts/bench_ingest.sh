#!/usr/bin/env bash
# Benchmark (not a test): ingest of N synthetic PNGs into the local S3 server,
# side by side in one run with uploading the same image files with the `aws`
# CLI (PyPI awscli), the upper bound for moving those bytes.
#
#   make stack-up && pip install awscli && scripts/bench_ingest.sh [N] [SIZE]
#
# Prints images/s, MB/s and the ratio, for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
SIZE=${2:-1024}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/chexvision/target}
cargo build --release --locked -p chexvision-cli >&2
BIN=$CARGO_TARGET_DIR/release/chexvision
eval "$(scripts/stack.sh env)"
command -v aws >/dev/null || { echo "bench: needs the aws CLI (pip install awscli)" >&2; exit 1; }

WORK=${BENCH_DIR:-/tmp/chexvision-bench}
SRC=$WORK/synth-$N-$SIZE
if [ ! -f "$SRC/synthetic.json" ]; then
  rm -rf "$SRC"
  "$BIN" synth --rows "$N" --size "$SIZE" --seed 1 --out "$SRC"
fi
BYTES=$(du -sb "$SRC/images" | cut -f1)
STAMP=$(date +%s)
BUCKET=${CHEXVISION_STORE#s3://}

now() { date +%s.%N; }
t0=$(now)
"$BIN" --store "s3://$BUCKET/bench-$STAMP" ingest --quiet --source "$SRC" --dataset-id "bench"
t1=$(now)
aws s3 cp --quiet --recursive "$SRC/images" "s3://$BUCKET/bench-aws-$STAMP/images" \
  --endpoint-url "$CHEXVISION_S3__ENDPOINT" --region "$CHEXVISION_S3__REGION"
t2=$(now)

python3 - "$N" "$BYTES" "$t0" "$t1" "$t2" <<'PY'
import sys
n, size, t0, t1, t2 = int(sys.argv[1]), int(sys.argv[2]), *map(float, sys.argv[3:])
ours, aws = t1 - t0, t2 - t1
mb = size / 1e6
print(f"images: {n}, {mb:.1f} MB of PNG")
print(f"chexvision ingest: {ours:7.1f} s  {n/ours:8.1f} images/s  {mb/ours:7.1f} MB/s")
print(f"aws s3 cp:         {aws:7.1f} s  {n/aws:8.1f} images/s  {mb/aws:7.1f} MB/s")
print(f"ratio ingest/aws (throughput): {aws/ours:.2f}")
PY
