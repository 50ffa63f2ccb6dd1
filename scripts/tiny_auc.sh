#!/usr/bin/env bash
# The tiny end-to-end check: 2,000 synthetic images -> ingest -> preprocess
# at the tiny config's image size -> train with configs/tiny.yaml on a
# file:// store, then the best validation macro AUC, abnormal AUC and
# per-finding AUC (with the validation positives of each finding). Exits 1
# when the best validation macro AUC is under the floor (0.90), so CI can
# run it. CPU only: ~20 s on 2 cores (plus the build), ~16 s of it training.
#
#   scripts/tiny_auc.sh [WORK_DIR]
#
# WORK_DIR keeps the synthetic set, the store and the run (a rerun reuses the
# set and the shards and trains a new run); without it a temporary folder is
# used and removed at the end. Settings (environment, defaults shown):
#   CHEXVISION_BIN=        the chexvision binary; empty: cargo build --release -p chexvision-cli
#                          (`make tiny-auc PROFILE=ci` passes the one the tests built)
#   TINY_CONFIG=configs/tiny.yaml
#   TINY_ROWS=2000 TINY_SEED=1 TINY_SYNTH_SIZE=256
#   TINY_MIN_FINDING_SHARE=0.08   every finding in >= 8 % of images (synth --min-finding-share)
#   TINY_VISIBLE_AT=              synth --visible-at; empty: the config's image_size
#   TINY_MIN_AUC=0.90
#   TINY_QUIET=                   1: no progress bars (logs)
set -euo pipefail
CALLER=$PWD
cd "$(dirname "$0")/.."
ROOT=$PWD
# Paths given by the caller are relative to where it ran from.
from_caller() { case $1 in /*) echo "$1" ;; *) echo "$CALLER/$1" ;; esac; }

CONFIG=$ROOT/configs/tiny.yaml
[ -n "${TINY_CONFIG:-}" ] && CONFIG=$(from_caller "$TINY_CONFIG")
ROWS=${TINY_ROWS:-2000}
SEED=${TINY_SEED:-1}
SYNTH_SIZE=${TINY_SYNTH_SIZE:-256}
SHARE=${TINY_MIN_FINDING_SHARE:-0.08}
MIN_AUC=${TINY_MIN_AUC:-0.90}
QUIET=()
[ -n "${TINY_QUIET:-}" ] && QUIET=(--quiet)

# The ready image size is the training config's `image_size` (in the file
# or in the one it inherits from, `inherits: FILE`).
SIZE=
file=$CONFIG
for _ in 1 2 3 4 5; do
  SIZE=$(sed -n 's/^[[:space:]]*image_size:[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$file" | head -n 1)
  parent=$(sed -n 's/^inherits:[[:space:]]*\([^[:space:]#]*\).*/\1/p' "$file" | head -n 1)
  [ -n "$SIZE" ] || [ -z "$parent" ] && break
  case $parent in /*) file=$parent ;; *) file=$(dirname "$file")/$parent ;; esac
done
if [ -z "$SIZE" ]; then
  echo "tiny_auc: no image_size in $CONFIG (or the file it inherits from)" >&2
  exit 2
fi
VISIBLE_AT=${TINY_VISIBLE_AT:-$SIZE}

if [ -n "${CHEXVISION_BIN:-}" ]; then
  BIN=$CHEXVISION_BIN
else
  cargo build --release --locked -p chexvision-cli >&2
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/chexvision
fi

if [ $# -ge 1 ]; then
  WORK=$(from_caller "$1")
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/chexvision-tiny-auc.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi
WORK=$(cd "$WORK" && pwd)

# One set and one dataset per generator setting, so a work folder can hold several.
TAG="r${ROWS}-px${SYNTH_SIZE}-s${SEED}-f${SHARE}-v${VISIBLE_AT}"
SET=$WORK/synth-$TAG
DATASET=tiny-$TAG
DATASET=${DATASET//./_}
STORE=file://$WORK/store
RUN=$DATASET-$(date +%Y%m%d-%H%M%S)
STORE_FLAGS=(--store "$STORE" --bus memory://)

step() { printf '\n== %s\n' "$*" >&2; }
seconds() { date +%s.%N; }

step "synth: $ROWS images, $SYNTH_SIZE px, seed $SEED, min finding share $SHARE, visible at $VISIBLE_AT px -> $SET"
"$BIN" synth "${STORE_FLAGS[@]}" --rows "$ROWS" --size "$SYNTH_SIZE" --seed "$SEED" \
  --min-finding-share "$SHARE" --visible-at "$VISIBLE_AT" --out "$SET" "${QUIET[@]}"

step "ingest -> dataset $DATASET in $STORE"
"$BIN" ingest "${STORE_FLAGS[@]}" --source "$SET" --dataset-id "$DATASET" "${QUIET[@]}"

step "preprocess at $SIZE px"
"$BIN" preprocess "${STORE_FLAGS[@]}" --dataset-id "$DATASET" --size "$SIZE" "${QUIET[@]}"

step "train with $CONFIG, run $RUN"
HISTORY=$WORK/store/runs/$RUN/history.json
SHOWN=$WORK/.epochs-shown-$RUN
echo 0 >"$SHOWN"
# Prints the epochs finished since the last call (for logs without a terminal).
show_new_epochs() {
  [ -f "$HISTORY" ] || return 0
  python3 - "$HISTORY" "$SHOWN" <<'PY' || true
import json, sys
path, state = sys.argv[1:]
shown = int(open(state).read().strip() or 0)
try:
    history = json.load(open(path))
except ValueError:  # being rewritten: next time
    sys.exit()
for h in history[shown:]:
    auc = h["val_macro_auc"]
    print(f"  epoch {h['epoch']}: validation macro AUC {'undefined' if auc is None else f'{auc:.4f}'}, "
          f"{h['images_per_second']:.1f} images/s", file=sys.stderr, flush=True)
open(state, "w").write(str(max(shown, len(history))))
PY
}
WATCH=
if [ ! -t 2 ] || [ ${#QUIET[@]} -gt 0 ]; then
  QUIET=(--quiet)
  ( while sleep 5; do show_new_epochs; done ) &
  WATCH=$!
fi
started=$(seconds)
set +e
# With --quiet the command repeats every epoch at the end: only its summary is kept.
"$BIN" train --config "$CONFIG" "${STORE_FLAGS[@]}" --dataset-id "$DATASET" --run-id "$RUN" "${QUIET[@]}" |
  { grep -v '^epoch [0-9]*:' || true; }
status=${PIPESTATUS[0]}
set -e
finished=$(seconds)
if [ -n "$WATCH" ]; then
  kill "$WATCH" 2>/dev/null || true
  wait "$WATCH" 2>/dev/null || true
  show_new_epochs
fi
rm -f "$SHOWN"
if [ "$status" -ne 0 ]; then
  echo "tiny_auc: training failed (exit $status)" >&2
  exit "$status"
fi

step "result"
python3 - "$WORK/store" "$DATASET" "$RUN" "$MIN_AUC" "$started" "$finished" <<'PY'
import json, sys

store, dataset, run, floor, t0, t1 = sys.argv[1:]
floor = float(floor)
manifest = json.load(open(f"{store}/datasets/{dataset}/manifest.json"))
history = json.load(open(f"{store}/runs/{run}/history.json"))
splits = manifest["rows_per_split"]
val_counts = manifest["label_counts"].get("validation", {})
n_val = splits.get("validation", 0)
print(f"dataset {dataset}: train {splits.get('train', 0)}, validation {n_val}, test {splits.get('test', 0)} images")
train_s = sum(h["train_seconds"] for h in history)
val_s = sum(h["validation_seconds"] for h in history)
images = sum(h["train_images"] for h in history)
print(f"train step {float(t1) - float(t0):.0f} s wall ({train_s:.0f} s training at "
      f"{images / max(train_s, 1e-9):.1f} images/s, {val_s:.0f} s validation), {len(history)} epochs")
for h in history:
    auc = h["val_macro_auc"]
    print(f"  epoch {h['epoch']:2d}: loss {h['train_loss']:.4f}, lr {h['learning_rate']:.5f}, "
          f"validation macro AUC {'undefined' if auc is None else f'{auc:.4f}'}"
          f"{'  (best)' if h['best'] else ''}")
scored = [h for h in history if h["val_macro_auc"] is not None]
if not scored:
    print("FAIL: no epoch has a defined validation macro AUC")
    sys.exit(1)
best = max(scored, key=lambda h: h["val_macro_auc"])
per_class = best["val_per_class_auc"]
defined = [l for l, a in per_class.items() if a is not None]
print(f"best epoch {best['epoch']}: validation macro AUC {best['val_macro_auc']:.4f} over "
      f"{len(defined)} of {len(per_class)} findings, abnormal AUC "
      f"{'undefined' if best['val_binary_auc'] is None else format(best['val_binary_auc'], '.4f')}")
print(f"  {'finding':20s} {'AUC':>8s} {'val positives':>14s}")
for label, auc in per_class.items():
    print(f"  {label:20s} {'undefined' if auc is None else format(auc, '.4f'):>8s} "
          f"{val_counts.get(label, 0):>7d} / {n_val}")
if best["val_macro_auc"] < floor:
    print(f"FAIL: best validation macro AUC {best['val_macro_auc']:.4f} < {floor}")
    sys.exit(1)
print(f"OK: best validation macro AUC {best['val_macro_auc']:.4f} >= {floor}")
PY
