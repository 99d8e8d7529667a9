#!/usr/bin/env bash
# The one script run on a GPU test machine (see docs: "GPUs without a GPU").
#
# Expects: Python 3.12 with torch, cupy-cuda13x, safetensors, tokenizers, aiohttp; the repository
# copied with the abi3 extension python/lmrs/_core.abi3.so already built (no Rust toolchain there).
# Runs, printing everything:
#   1. the GPU kernel tests (tests/gpu) against the reference ops,
#   2. the kernel bandwidth benchmark (benchmarks/bench_kernels.py),
#   3. the end-to-end GPU benchmark (benchmarks/bench_gpu_e2e.py), when that file exists.
# transformers (the e2e peer) is installed from ./.whl/ when missing and a wheel is there; the
# e2e step sees LMRS_HAVE_TRANSFORMERS=1/0. Results go to $OUT when it is set. Total time stays
# under 8 minutes: each step gets a slice of what is left. Exit status: non-zero if a step failed.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
BUDGET=${GPU_CHECK_BUDGET_S:-465}   # seconds for the whole script (the limit is 480)
START=$(date +%s)
OUT_DIR=${OUT:-}
[ -n "$OUT_DIR" ] && mkdir -p "$OUT_DIR"
LOG=${OUT_DIR:+$OUT_DIR/gpu_check.log}
STATUS=0
SUMMARY=""

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

log() { if [ -n "$LOG" ]; then echo "$@" | tee -a "$LOG"; else echo "$@"; fi; }

# run NAME MAX_SECONDS CMD... : run a step with a time limit, tee its output, record its status
run() {
  local name=$1 max=$2; shift 2
  local budget; budget=$(left)
  [ "$max" -gt "$budget" ] && max=$budget
  if [ "$max" -le 5 ]; then
    log "=== $name: skipped (time budget spent)"
    SUMMARY="$SUMMARY\n  $name: skipped (no time left)"
    return
  fi
  log ""
  log "=== $name (limit ${max}s): $*"
  local t0 rc; t0=$(date +%s)
  if [ -n "$LOG" ]; then
    timeout --kill-after=10 "$max" "$@" 2>&1 | tee -a "$LOG" "$OUT_DIR/$name.txt"
    rc=${PIPESTATUS[0]}
  else
    timeout --kill-after=10 "$max" "$@" 2>&1
    rc=$?
  fi
  local dt=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    log "=== $name: TIMED OUT after ${dt}s"
    SUMMARY="$SUMMARY\n  $name: timed out after ${dt}s"
    STATUS=1
  elif [ "$rc" -ne 0 ]; then
    log "=== $name: FAILED (exit $rc) in ${dt}s"
    SUMMARY="$SUMMARY\n  $name: failed (exit $rc) in ${dt}s"
    STATUS=1
  else
    log "=== $name: ok in ${dt}s"
    SUMMARY="$SUMMARY\n  $name: ok in ${dt}s"
  fi
}

log "=== gpu_check in $ROOT at $(date -u +%FT%TZ)"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | while read -r l; do log "GPU: $l"; done
"$PY" - <<'EOF' 2>&1 | while read -r l; do log "$l"; done
import sys
print("python", sys.version.split()[0])
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:
    print("torch import failed:", e)
try:
    import cupy
    print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount())
except Exception as e:
    print("cupy unavailable:", e)
EOF

# transformers: the e2e benchmark's peer; install from a local wheel folder if missing
if "$PY" -c "import transformers" >/dev/null 2>&1; then
  export LMRS_HAVE_TRANSFORMERS=1
elif compgen -G ".whl/*.whl" >/dev/null; then
  log "=== installing transformers from .whl/"
  if "$PY" -m pip install -q --no-index --find-links .whl transformers 2>&1 | tail -n 5; then :; fi
  if "$PY" -c "import transformers" >/dev/null 2>&1; then export LMRS_HAVE_TRANSFORMERS=1; else export LMRS_HAVE_TRANSFORMERS=0; fi
else
  log "=== transformers missing and no .whl/ folder: the e2e peer comparison is skipped"
  export LMRS_HAVE_TRANSFORMERS=0
fi

JUNIT=${OUT_DIR:+--junitxml=$OUT_DIR/gpu_tests.xml}
run gpu_tests 240 "$PY" -m pytest tests/gpu -q -rs -p no:cacheprovider $JUNIT
run bench_kernels 150 "$PY" benchmarks/bench_kernels.py ${OUT_DIR:+--json "$OUT_DIR/bench_kernels.json"}
if [ -f benchmarks/bench_gpu_e2e.py ]; then
  run bench_gpu_e2e 400 "$PY" benchmarks/bench_gpu_e2e.py
else
  log "=== benchmarks/bench_gpu_e2e.py not present: skipped"
fi

log ""
log "=== summary (total $(( $(date +%s) - START ))s)"
printf "%b\n" "$SUMMARY" | while read -r l; do [ -n "$l" ] && log "  $l"; done
exit $STATUS
