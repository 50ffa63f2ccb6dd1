#!/usr/bin/env bash
# The GPU proof, prepared on a machine without a GPU and run in one short
# command on one that has it (an H100 or H200 with NVIDIA's driver, the
# CUDA 13 libraries and PyTorch with CUDA and torchvision; no network, no
# Rust toolchain, at most 64 MiB of files, 8 minutes).
#
#   scripts/gpu_check.sh pack [TARBALL]     # after `make cuda-build`: strip, bundle, size-check
#   scripts/gpu_check.sh selftest [TARBALL] # here, without a GPU: the package must refuse to time
#   make gpu-check                          # cuda-build + pack + selftest (what CI runs)
#
# On the GPU machine:
#
#   tar xJf gpu-check.tar.xz && gpu-check/gpu_check.sh run OUT
#
# `run` checks for a GPU first and refuses (exit 3, OUT/gpu_check.json with
# status "refused" and the reason) without one. With one it points the
# library path at the CUDA libraries PyTorch brought (the binary was linked
# against the same CUDA 13 sonames), then (a) compares the small models'
# forward pass on the GPU with the committed PyTorch fixtures and with
# PyTorch on the same GPU, (b) times a bf16 training step at batch 32 and
# 64 / 320 px against PyTorch AMP, (c) times inference at batch 1 and 32,
# and writes everything to OUT/gpu_check.json, the log to OUT/gpu_check.log.
set -euo pipefail

MAX_BYTES=${GPU_CHECK_MAX_BYTES:-$((64 * 1024 * 1024))}
LOG=""
# To stderr, and to the run's log once there is one.
say() {
  echo "gpu-check: $*" >&2
  if [[ -n $LOG ]]; then echo "gpu-check: $*" >>"$LOG"; fi
}

repo_root() { cd "$(dirname "$0")/.." && pwd; }

pack() {
  local root out bin stage size
  root=$(repo_root)
  out=${1:-$root/target/gpu-check.tar.xz}
  bin="${CARGO_TARGET_DIR:-$root/target}/${PROFILE_DIR:-ci}/examples/gpu_check"
  [[ -x $bin ]] || { say "no $bin: run make cuda-build PROFILE=ci first"; return 1; }
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' RETURN
  mkdir -p "$stage/gpu-check/bin" "$stage/gpu-check/fixtures" "$stage/gpu-check/python"
  cp "$bin" "$stage/gpu-check/bin/gpu_check"
  strip --strip-all "$stage/gpu-check/bin/gpu_check"
  for name in densenet_small se_resnet_small; do
    cp "$root/shared/models/tests/fixtures/$name.safetensors" \
      "$root/shared/models/tests/fixtures/${name}_io.safetensors" "$stage/gpu-check/fixtures/"
  done
  cp "$root/scripts/gpu_check_torch.py" "$root/scripts/make_model_fixtures.py" "$stage/gpu-check/python/"
  cp "$root/scripts/gpu_check.sh" "$stage/gpu-check/gpu_check.sh"
  {
    echo "revision: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "needs (ELF NEEDED):"
    readelf -d "$stage/gpu-check/bin/gpu_check" | sed -n 's/.*Shared library: \[\(.*\)\]/  \1/p'
  } >"$stage/gpu-check/MANIFEST"
  mkdir -p "$(dirname "$out")"
  tar -C "$stage" -cJf "$out" gpu-check
  size=$(stat -c %s "$out")
  if ((size > MAX_BYTES)); then
    say "$out is $size bytes, over the limit of $MAX_BYTES"
    rm -f "$out"
    return 1
  fi
  say "packed $out: $size bytes (limit $MAX_BYTES); binary $(stat -c %s "$stage/gpu-check/bin/gpu_check") bytes stripped"
  say "it needs an NVIDIA GPU to time anything: copy it to an H100/H200 machine and run"
  say "  tar xJf $(basename "$out") && gpu-check/gpu_check.sh run OUT"
}

# JSON for a refusal, and exit 3: nothing was timed.
refuse() {
  local out=$1 reason=$2
  say "refused: $reason"
  say "this check needs an H100 or H200 with NVIDIA's driver, the CUDA 13 libraries and PyTorch with CUDA"
  python3 - "$out/gpu_check.json" "$reason" <<'PY' || printf '{"status": "refused"}\n' >"$out/gpu_check.json"
import json, sys
json.dump({"status": "refused", "reason": sys.argv[2], "results": []}, open(sys.argv[1], "w"), indent=2)
PY
  exit 3
}

run() {
  local here out
  here=$(cd "$(dirname "$0")" && pwd)
  out=${1:?usage: gpu_check.sh run OUT}
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  LOG="$out/gpu_check.log"

  command -v nvidia-smi >/dev/null || refuse "$out" "no nvidia-smi: no NVIDIA driver on this machine"
  local gpus
  gpus=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1) ||
    refuse "$out" "nvidia-smi sees no GPU: $gpus"
  say "GPU: $gpus"
  python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null ||
    refuse "$out" "PyTorch is missing or torch.cuda.is_available() is False"

  # The CUDA 13 libraries PyTorch brought (cudart, cuBLAS, cuRAND), then the
  # driver's libcuda.so.1 from the system paths.
  local libs
  libs=$(python3 - <<'PY'
import glob, os, site, torch
roots = site.getsitepackages() + [site.getusersitepackages(), os.path.dirname(os.path.dirname(torch.__file__))]
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)})
print(":".join(dirs + [os.path.join(os.path.dirname(torch.__file__), "lib")]))
PY
)
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local missing
  missing=$(ldd "$here/bin/gpu_check" | grep 'not found' || true)
  [[ -z $missing ]] || refuse "$out" "libraries not found on this machine: $(echo "$missing" | awk '{print $1}' | xargs)"

  local results="$out/results.jsonl"
  : >"$results"
  step() { # seconds, command...: one JSON line per result, failures logged
    local limit=$1; shift
    say "$*"
    if ! timeout "$limit" "$@" >>"$results" 2>>"$out/gpu_check.log"; then
      say "FAILED or timed out after ${limit}s: $*"
      printf '{"check": "error", "command": "%s"}\n' "$*" >>"$results"
    fi
  }
  local py=(python3 "$here/python/gpu_check_torch.py") rs="$here/bin/gpu_check"
  # (a) forward parity
  step 120 "${py[@]}" parity "$here/fixtures" "$out/torch_gpu.safetensors"
  step 120 "$rs" parity "$here/fixtures" "$out/torch_gpu.safetensors"
  # (b) training step, bf16, 320 px
  for model in densenet121 se_resnet; do
    for batch in 32 64; do
      step 90 "${py[@]}" train "$model" "$batch" 320 10
      step 90 "$rs" train "$model" "$batch" 320 10
    done
  done
  # (c) inference
  for model in densenet121 se_resnet; do
    for batch in 1 32; do
      step 60 "${py[@]}" infer "$model" "$batch" 320 20
      step 60 "$rs" infer "$model" "$batch" 320 20
    done
  done

  python3 - "$results" "$out/gpu_check.json" "$gpus" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ratios = {}
for r in rows:
    if r.get("check") in ("train", "infer") and r.get("impl") == "candle":
        key = (r["check"], r["model"], r["batch"], r["size"])
        torch = next((t for t in rows if t.get("impl") == "pytorch" and
                      (t.get("check"), t.get("model"), t.get("batch"), t.get("size")) == key), None)
        if torch:
            ratios["%s %s batch %d %d px" % key] = round(r["images_per_s"] / torch["images_per_s"], 3)
status = "ok" if rows and all(r.get("check") != "error" for r in rows) else "incomplete"
json.dump({"status": status, "gpu": sys.argv[3], "results": rows,
           "candle_over_pytorch_images_per_s": ratios}, open(sys.argv[2], "w"), indent=2)
print(json.dumps(ratios, indent=2))
PY
  say "wrote $out/gpu_check.json"
}

# Here, without a GPU: the package unpacks, and `run` refuses (exit 3) with
# a reason and no timing; a size limit below the package's size is refused.
selftest() {
  local root tarball tmp status
  root=$(repo_root)
  tarball=${1:-$root/target/gpu-check.tar.xz}
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    say "selftest skipped: this machine has a GPU (run the package instead)"
    return 0
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  tar -C "$tmp" -xJf "$tarball"
  status=0
  "$tmp/gpu-check/gpu_check.sh" run "$tmp/out" 2>"$tmp/stderr" || status=$?
  if ((status != 3)); then
    say "selftest: run exited $status, not 3 (refused)"; cat "$tmp/stderr" >&2; return 1
  fi
  python3 - "$tmp/out/gpu_check.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
assert report["status"] == "refused" and report["reason"] and report["results"] == [], report
PY
  grep -q "needs an H100 or H200" "$tmp/stderr" || { say "selftest: the refusal does not say what it needs"; return 1; }
  if GPU_CHECK_MAX_BYTES=4096 "$0" pack "$tmp/small.tar.xz" 2>"$tmp/stderr"; then
    say "selftest: a 4096-byte limit was not enforced"; return 1
  fi
  grep -q "over the limit of 4096" "$tmp/stderr" || { say "selftest: the size refusal is not named"; return 1; }
  say "selftest: without a GPU the package refuses to time anything ($(head -c 200 "$tmp/out/gpu_check.json" | tr -d '\n' | cut -c1-120)...), and the size limit holds"
}

case ${1:-} in
  pack) shift; pack "$@" ;;
  selftest) shift; selftest "$@" ;;
  run) shift; run "$@" ;;
  *) sed -n '2,24p' "$0" >&2; exit 2 ;;
esac
