#!/usr/bin/env bash
# A CUDA 13 build toolchain from PyPI wheels, for building `--features cuda`
# on machines without a CUDA install (CI, developer laptops). It can build
# and link; it cannot run (the driver, libcuda.so.1, is in no wheel: the
# link uses a stub and a GPU node provides the real one at run time).
#
#   eval "$(scripts/cuda_toolkit.sh)"     # installs once, prints the env
#   scripts/cuda_toolkit.sh --download    # only the wheels (CI fetches them
#                                         # in the background while it compiles)
#
# Cached in $CHEXVISION_CUDA_DIR (default ~/.cache/chexvision/cuda13).
set -euo pipefail
ROOT=${CHEXVISION_CUDA_DIR:-$HOME/.cache/chexvision/cuda13}
TK=$ROOT/nvidia/cu13
log() { echo "cuda_toolkit: $*" >&2; }

if [[ ! -x $TK/bin/nvcc ]]; then
  log "installing the CUDA 13.0 wheels into $ROOT (about 2 GB)"
  python3 -m pip install -q --root-user-action=ignore --target "$ROOT" \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-nvrtc==13.0.*" \
    "nvidia-cublas<13.1" "nvidia-curand<10.4.1" >&2
fi
[[ ${1:-} == --download ]] && exit 0

# Unversioned names for the linker, as a CUDA install has them.
mkdir -p "$TK/lib64"
for lib in "$TK"/lib/*.so.*; do
  name=$(basename "$lib")
  ln -sf "../lib/$name" "$TK/lib64/$name"
  ln -sf "../lib/$name" "$TK/lib64/${name%%.so*}.so"
done
# nvcc looks for nvvm and the crt headers inside its own tree.
[[ -e $TK/bin/../nvvm ]] || ln -sf "$TK/nvvm" "$TK/bin/../nvvm"

# Stub driver: every cu* function cudarc's driver bindings declare, each
# returning CUDA_ERROR_STUB_LIBRARY (34). Enough to link; never loaded on a
# GPU node, where the real libcuda.so.1 comes first.
if [[ ! -e $TK/lib64/stubs/libcuda.so ]]; then
  find_bindings() {
    find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-*/src/driver/sys/mod.rs' 2>/dev/null | head -5
  }
  bindings=$(find_bindings)
  if [[ -z $bindings ]]; then
    # A CPU-only build never downloads cudarc; fetch the lock file's crates.
    log "fetching the crates of Cargo.lock (cudarc's driver bindings are needed for the stub)"
    host=$(rustc -vV | sed -n 's/^host: //p')
    (cd "$(dirname "$0")/.." && cargo fetch --locked --target "$host" >&2)
    bindings=$(find_bindings)
  fi
  if [[ -z $bindings ]]; then
    log "cudarc's sources are missing after 'cargo fetch'"; exit 1
  fi
  mkdir -p "$TK/lib64/stubs"
  grep -ho 'fn cu[A-Za-z0-9_]*' $bindings | awk '{print $2}' | sort -u \
    | awk '{ printf "int %s(void) { return 34; }\n", $1 }' > "$TK/lib64/stubs/cuda_stub.c"
  gcc -shared -fPIC -o "$TK/lib64/stubs/libcuda.so" "$TK/lib64/stubs/cuda_stub.c" -Wl,-soname,libcuda.so.1
  ln -sf stubs/libcuda.so "$TK/lib64/libcuda.so"
  log "stub libcuda.so with $(wc -l < "$TK/lib64/stubs/cuda_stub.c") symbols"
fi

cat <<ENV
export CUDA_HOME='$TK' CUDA_PATH='$TK' CUDA_ROOT='$TK'
export PATH='$TK/bin':"\$PATH"
export LIBRARY_PATH='$TK/lib64':"\${LIBRARY_PATH:-}"
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
ENV
