#!/usr/bin/env bash
# Benchmark (not a test): ingest of N synthetic PNGs into the local S3 server,
# side by side in one run with the `aws` CLI (PyPI awscli) uploading
#   a) the same image files, one object each (what a plain copy would do), and
#   b) the shard files ingest produced (same bytes, same object sizes: the
#      upper bound for moving what ingest moves).
# The shards for (b) come from an ingest into a local folder, also timed.
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
LOCAL=$WORK/local-store-$STAMP
"$BIN" --store "file://$LOCAL" --bus memory:// ingest --quiet --source "$SRC" --dataset-id "bench"
t3=$(now)
aws s3 cp --quiet --recursive "$LOCAL/datasets/bench/raw" "s3://$BUCKET/bench-aws-shards-$STAMP/raw" \
  --endpoint-url "$CHEXVISION_S3__ENDPOINT" --region "$CHEXVISION_S3__REGION"
t4=$(now)
SHARDS=$(find "$LOCAL/datasets/bench/raw" -name '*.parquet' | wc -l)
rm -rf "$LOCAL"

python3 - "$N" "$BYTES" "$SHARDS" "$t0" "$t1" "$t2" "$t3" "$t4" <<'PY'
import sys
n, size, shards = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
t0, t1, t2, t3, t4 = map(float, sys.argv[4:])
mb = size / 1e6
rows = [
    ("chexvision ingest -> S3", t1 - t0),
    (f"aws s3 cp, {n} image objects", t2 - t1),
    ("chexvision ingest -> local folder", t3 - t2),
    (f"aws s3 cp, the {shards} shard files", t4 - t3),
]
print(f"images: {n}, {mb:.1f} MB of PNG")
for name, seconds in rows:
    print(f"{name:38s} {seconds:7.1f} s {n/seconds:8.1f} images/s {mb/seconds:7.1f} MB/s")
ours = rows[0][1]
print(f"ratio ingest / aws per-image copy (throughput): {rows[1][1]/ours:.2f}")
print(f"ratio ingest / aws upload of the same shards (throughput): {rows[3][1]/ours:.2f}")
PY
