#!/usr/bin/env bash
# The one command to run on a GPU host (no cargo, no network needed): checks a carried genrep
# binary in under 6 minutes and prints a JSON report, also written to a file.
#
#   scripts/gpu-check.sh BIN [--device cuda:0] [--out gpu-check.json] [-- extra `genrep check` flags]
#   scripts/gpu-check.sh BIN --device cpu     # the CPU path CI runs (fixture-sized)
#
# 1. `BIN check`: parity of the BigGAN fixture and the embedded model with the committed CPU
#    references in f32/f16/bf16; shard determinism across runs and batch sizes; BigGAN-deep-128
#    and -256 (random weights) images/s and TFLOP/s in f32/f16/bf16 at batch 1..256; serving
#    (8 HTTP shard consumers vs in-process; 8 single-sample consumers at max batch 64 vs 1).
# 2. tools/gpu_torch_reference.py: the same BigGAN sweep in PyTorch (pytorch-pretrained-biggan,
#    its wheel found next to BIN or on PYTHONPATH) and the genrep/PyTorch ratios.
#
# The CUDA libraries come from the host's Python `nvidia` wheels (cuBLAS, cuRAND, NVRTC, runtime):
# their lib folders go on LD_LIBRARY_PATH; libcuda.so.1 comes from the driver.
# Exit status: that of `BIN check` (1 when a parity or determinism check failed).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 BIN [--device cuda:0|cpu] [--out FILE] [-- genrep check flags]" >&2; exit 2; }
bin=$(realpath "$1"); shift
[ -x "$bin" ] || { echo "error: $bin is not an executable genrep binary" >&2; exit 2; }
device=cuda:0
out=gpu-check.json
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown argument $1 (extra genrep check flags go after --)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ $device == cuda* ]]; then
  # Every lib folder of the installed nvidia wheels (CUDA 13 wheels share nvidia/cu13/lib).
  libs=$("$python" - <<'EOF' 2>/dev/null || true
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
dirs = sorted({os.path.dirname(p) for root in nvidia.__path__
               for p in glob.glob(os.path.join(root, "*", "lib", "lib*.so*"))})
print(":".join(dirs))
EOF
)
  if [ -n "$libs" ]; then
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  else
    echo "warning: no Python nvidia-* wheels found; relying on the system's CUDA libraries" >&2
  fi
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1 || true)
  torch_device=cuda
  # Time: genrep 190 s (deadline) within a 210 s limit, PyTorch 90 s within 110 s: < 6 minutes.
  flags=(--throughput-budget-s 110 --serving-s 4 --deadline-s 190)
  genrep_limit=210 torch_budget=90 torch_limit=110
else
  gpu=""
  torch_device=cpu
  # Fixture-sized, so the CPU path runs in CI in well under a minute.
  flags=(--models "$here/tests/fixtures/biggan-tiny" --batches 1,4 --serving-models embedded
         --serving-dtype f32 --serving-s 1 --throughput-budget-s 30 --deadline-s 90)
  genrep_limit=120 torch_budget=30 torch_limit=60
fi
mkdir -p "$(dirname "$out")"

echo "genrep check on $device${gpu:+ ($gpu)}" >&2
rc=0
# genrep rewrites its report after every section, so a kill at the limit keeps what was measured.
timeout "$genrep_limit" "$bin" check --device "$device" --fixtures "$here/tests/fixtures" \
  "${flags[@]}" ${extra[@]+"${extra[@]}"} --out "$work/genrep.json" >/dev/null || rc=$?
if ! grep -q '"parity"' "$work/genrep.json" 2>/dev/null; then
  echo "error: genrep check wrote no report (exit status $rc)" >&2
  exit $(( rc == 0 ? 1 : rc ))
fi
[ "$rc" -ne 124 ] || echo "warning: genrep check hit the ${genrep_limit} s limit; its report is partial" >&2
# genrep's figures are in place at once, whatever happens to the PyTorch side.
cp "$work/genrep.json" "$out"

# The package wheel, when carried next to the binary.
for whl in "$(dirname "$bin")"/pytorch_pretrained_biggan-*.whl; do
  [ -f "$whl" ] && export PYTHONPATH="$whl${PYTHONPATH:+:$PYTHONPATH}"
done
# SIGINT at the limit: the script keeps the entries it measured and writes the report.
if ! timeout -s INT -k 10 "$torch_limit" "$python" "$here/tools/gpu_torch_reference.py" \
     --report "$work/genrep.json" --out "$work/report.json" --device "$torch_device" \
     --budget-s "$torch_budget" ${gpu:+--gpu-info "$gpu"} || [ ! -s "$work/report.json" ]; then
  echo "warning: the PyTorch side failed; the report has genrep's figures only" >&2
  "$python" -c 'import json,sys; r=json.load(open(sys.argv[1])); json.dump({"pass": r["pass"], "genrep": r, "torch": {"skipped": "tools/gpu_torch_reference.py failed"}, "genrep_vs_torch": []}, open(sys.argv[2], "w"), indent=2)' \
    "$work/genrep.json" "$work/report.json" || cp "$work/genrep.json" "$work/report.json"
fi
cp "$work/report.json" "$out"
cat "$out"
echo "report written to $out (genrep check exit status $rc)" >&2
exit $rc
