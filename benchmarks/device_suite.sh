#!/usr/bin/env bash
# The device checks in one command: under 8 minutes on one H100/H200, nothing downloaded.
#
#   bash benchmarks/device_suite.sh                       # on the GPU machine, results in benchmarks/results
#   bash benchmarks/device_suite.sh --smoke --out /tmp/s  # CPU, tiny sizes, ~1 min (CI: tests/test_device_suite.py)
#
# Parts, each under its own time cap (seconds; the caps sum to 440 s, under 8 minutes with start-up):
#   kernels (100)  benchmarks/gpu_kernel_check.py: compiled Pallas GPU kernels (Triton f32/bf16, Mosaic
#                  GPU bf16/f16) vs jnp, forward, dX, dW; exits nonzero on any mismatch
#   matmul  (150)  benchmarks/block_sparse_matmul.py --preset device: 4096^3 bf16, 64/128 blocks,
#                  50/75/90/95%, jnp.dot vs xla / Triton / Mosaic GPU / auto (no new problem after 120 s)
#   training (120) benchmarks/sparse_training_speed.py (skipped with a message if the file is absent)
#   overhead (70)  benchmarks/step_overhead.py (MLP and CNN, fewer rounds than the CPU default)
# Results written before a part hits its cap are kept (the kernel check and the matmul sweep write
# as they go or stop starting new cases in time).
# Every part writes <out>/<name>_<device>.md (device = the slug of jax.devices()[0].device_kind, e.g.
# h100), and the suite writes <out>/device_suite_<device>.md: each part's status, time and files.
# The exit status is 0 only if every part that ran succeeded; a part that fails or hits its cap
# does not stop the others.
set -u -o pipefail

SMOKE=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "device_suite.sh: unknown argument $1 (allowed: --smoke, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
OUT="${OUT:-$ROOT/benchmarks/results}"
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python}"
DEVICE="$("$PY" benchmarks/machine.py --slug)" || {
  echo "device_suite.sh: cannot import jax to name the device" >&2; exit 2; }
SUMMARY="$OUT/device_suite_$DEVICE.md"
ROWS=""
FAILED=0
SUITE_START=$SECONDS

# run_part NAME CAP_SECONDS CMD...: run CMD under a time cap, log it, record status and duration.
run_part() {
  local name="$1" cap="$2"; shift 2
  local log="$OUT/device_suite_${name}_$DEVICE.log" start=$SECONDS rc status
  echo "== $name (cap ${cap}s): $*"
  timeout --kill-after=10 "$cap" "$@" >"$log" 2>&1
  rc=$?
  tail -n 3 "$log"
  case $rc in
    0) status="ok" ;;
    124|137) status="**timed out** after ${cap}s"; FAILED=1 ;;
    *) status="**failed** (exit $rc)"; FAILED=1 ;;
  esac
  echo "   -> $status in $((SECONDS - start))s (log: $log)"
  ROWS+="| $name | $status | $((SECONDS - start)) | \`$*\` |"$'\n'
}

if [ "$SMOKE" = 1 ]; then
  run_part kernels 120 "$PY" benchmarks/gpu_kernel_check.py --smoke --out-dir "$OUT"
  run_part matmul 120 "$PY" benchmarks/block_sparse_matmul.py --preset smoke --out-dir "$OUT"
else
  run_part kernels 100 "$PY" benchmarks/gpu_kernel_check.py --out-dir "$OUT"
  run_part matmul 150 "$PY" benchmarks/block_sparse_matmul.py --preset device --max-seconds 120 \
    --out-dir "$OUT"
fi

if [ -f benchmarks/sparse_training_speed.py ]; then
  if [ "$SMOKE" = 1 ]; then
    run_part training 120 "$PY" benchmarks/sparse_training_speed.py --smoke --out "$OUT"
  else
    run_part training 120 "$PY" benchmarks/sparse_training_speed.py --accuracy-seeds 0 --out "$OUT"  # accuracy: a CPU claim
  fi
else
  echo "== training: skipped (benchmarks/sparse_training_speed.py does not exist yet)"
  ROWS+="| training | skipped: benchmarks/sparse_training_speed.py does not exist | 0 | - |"$'\n'
fi

if [ "$SMOKE" = 1 ]; then
  run_part overhead 120 "$PY" benchmarks/step_overhead.py --smoke --out "$OUT/step_overhead_$DEVICE.json"
else
  run_part overhead 70 "$PY" benchmarks/step_overhead.py --rounds 3 --mlp-rounds 10 --steps 10 \
    --out "$OUT/step_overhead_$DEVICE.json"
fi

FILES="$(cd "$OUT" && ls -1 -- *_"$DEVICE".md 2>/dev/null | grep -v "^device_suite_" | tr '\n' ' ')"
{
  echo "# Device suite on $DEVICE"
  echo
  echo "\`bash benchmarks/device_suite.sh$([ "$SMOKE" = 1 ] && echo ' --smoke')\`, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $((SECONDS - SUITE_START)) s in all; $("$PY" benchmarks/machine.py)."
  echo
  echo "| part | status | seconds | command |"
  echo "|---|---|---|---|"
  printf "%s" "$ROWS"
  echo
  echo "Results: $FILES"
} >"$SUMMARY"
echo "wrote $SUMMARY ($((SECONDS - SUITE_START)) s)"
exit $FAILED
