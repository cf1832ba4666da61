#!/usr/bin/env bash
# Builds genrep with the CUDA backend on a machine without a GPU or a CUDA install.
#
#   scripts/build-cuda.sh check [CC]   # cargo check --features cuda (what CI runs)
#   scripts/build-cuda.sh build [CC]   # release binary -> target/cuda-sm<CC>/release/genrep
#
# CC is the compute capability (default 90 = H100/H200; 80 and 89 work too). The CUDA 13.0
# toolkit comes from PyPI wheels (nvcc, runtime headers, nvvm, CCCL) installed into a cache
# folder ($GENREP_CUDA_CACHE, default ~/.cache/genrep-cuda); the link step also needs the CUDA 13
# libraries (cuBLAS, cuRAND, NVRTC wheels) and libcuda, which only a GPU driver provides: a stub
# with the driver symbols (SONAME libcuda.so.1) stands in for it at link time. On the GPU host the
# binary loads the real libcuda from the driver and the libraries from the wheels' folders:
# scripts/gpu-check.sh sets LD_LIBRARY_PATH from the host's Python `nvidia` packages.
#
# Pins matter: cudarc 0.19 panics on nvcc 13.5 ("Unsupported cuda toolkit version"), and an
# unpinned nvidia-nvvm 13.5 emits PTX that ptxas 13.0 rejects.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-check}
cc=${2:-90}
case "$mode" in check|build) ;; *) echo "usage: $0 check|build [compute-capability]" >&2; exit 2 ;; esac
case "$cc" in [0-9][0-9]|[0-9][0-9][0-9]) ;; *) echo "compute capability must be digits, e.g. 90" >&2; exit 2 ;; esac

cache=${GENREP_CUDA_CACHE:-$HOME/.cache/genrep-cuda}
venv=$cache/venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
wheels=(nvidia-cuda-nvcc==13.0.88 'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-crt==13.0.*'
        'nvidia-cuda-cccl==13.0.*' 'nvidia-nvvm==13.0.*')
if [ "$mode" = build ]; then
  wheels+=('nvidia-cublas==13.0.*' 'nvidia-curand==10.4.0.*' 'nvidia-cuda-nvrtc==13.0.*')
fi
"$venv/bin/pip" install -q --disable-pip-version-check "${wheels[@]}"
cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[ -x "$cu/bin/nvcc" ] || { echo "no nvcc in $cu/bin (the nvidia-cuda-nvcc wheel's layout changed?)" >&2; exit 1; }
export PATH="$cu/bin:$PATH" CUDA_ROOT="$cu" CUDA_PATH="$cu" CUDA_COMPUTE_CAP="$cc"
# nvcc finds cicc and libdevice through the nvvm folder next to bin/.
echo "nvcc: $(nvcc --version | tail -n 2 | head -n 1); compute capability $cc" >&2

if [ "$mode" = check ]; then
  cargo check --locked --features cuda --bin genrep
  exit 0
fi

# Link folder: unversioned names for the wheels' libraries and the libcuda stub.
link=$cache/link
mkdir -p "$link"
for lib in "$cu"/lib/*.so.*; do
  base=$(basename "$lib"); ln -sf "$lib" "$link/${base%%.so.*}.so"
done
sys=$(find "${CARGO_HOME:-$HOME/.cargo}"/registry/src -path '*cudarc-0.19.*/src/driver/sys/mod.rs' | head -n 1)
[ -n "$sys" ] || { cargo fetch --locked; sys=$(find "${CARGO_HOME:-$HOME/.cargo}"/registry/src -path '*cudarc-0.19.*/src/driver/sys/mod.rs' | head -n 1); }
grep -o 'pub unsafe fn cu[A-Za-z0-9_]*' "$sys" | sed 's/pub unsafe fn //' | sort -u \
  | sed 's/.*/int &(void) { return 999; }/' > "$link/libcuda_stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/libcuda_stub.c"
# The runtime name too, so the binary's CPU path can be smoke-tested here:
#   LD_LIBRARY_PATH=$link:$cu/lib target/cuda-sm90/release/genrep serve --device cpu
# (with the stub, --device cuda:0 fails cleanly with a driver error).
ln -sf "$link/libcuda.so" "$link/libcuda.so.1"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$link"
target=target/cuda-sm$cc
# Symbols stripped: the binary travels to GPU hosts under a 64 MiB limit.
CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --locked --release --features cuda --bin genrep --target-dir "$target"
out=$target/release/genrep
size=$(stat -c %s "$out")
echo "built $out ($((size >> 20)) MiB); it needs libcuda.so.1 (driver) and the CUDA 13 cuBLAS, cuRAND and NVRTC libraries on LD_LIBRARY_PATH" >&2
if [ "$size" -gt $((64 << 20)) ]; then
  echo "warning: over 64 MiB" >&2
fi
# The PyTorch reference package for scripts/gpu-check.sh (a 27 kB wheel; GPU hosts have torch
# but may not have it): carried next to the binary, where gpu-check.sh looks for it.
"$venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$target/release" \
  pytorch-pretrained-biggan==0.1.1
echo "carry to the GPU host: $out and $target/release/pytorch_pretrained_biggan-0.1.1-py3-none-any.whl; run scripts/gpu-check.sh $out" >&2
