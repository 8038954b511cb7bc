#!/usr/bin/env bash
# CUDA check of the benchmarks (≤ 8 minutes on one GPU): forward, predict and training step, fp32 eager vs
# fp16/bf16 autocast, at the full 64x192x192 UniSeg patch. Prints the tables; writes JSON only under $OUT
# (or a fresh temporary folder when $OUT is unset). Creates nothing else.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   OUT=/some/dir PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
TMP_DIR="$(mktemp -d -t uniseg_gpu_check.XXXXXX)"
trap 'rm -rf "$TMP_DIR"' EXIT
DEST="${OUT:-$TMP_DIR}"
mkdir -p "$DEST"
# keep Python/torch caches (inductor, __pycache__) inside the temporary folder
export PYTHONDONTWRITEBYTECODE=1 TORCHINDUCTOR_CACHE_DIR="$TMP_DIR/inductor" TRITON_CACHE_DIR="$TMP_DIR/triton"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh needs a CUDA device: torch.cuda.is_available() is False (torch %s)" % torch.__version__)
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0), flush=True)
EOF

run() {  # run NAME TIMEOUT_S CMD...: one benchmark, bounded in time; a failure is reported, the others still run
  local name="$1" limit="$2"; shift 2
  echo; echo "=== $name ==="
  local start=$SECONDS
  if timeout --kill-after=10 "$limit" "$@"; then
    echo "($name: $((SECONDS - start)) s)"
  else
    echo "!!! $name failed or timed out after $((SECONDS - start)) s (exit $?)"
    FAILED=$((FAILED + 1))
  fi
}
FAILED=0

# forward: eager fp32, fast fp32, fast + fp16/bf16 autocast, DynUNet; batch 1 and 2 (batched windows)
run forward 120 "$PYTHON" benchmarks/forward.py --device cuda --batch 1 2 --repeats 5 --warmup 2 \
  --json "$DEST/forward_cuda.json"

# whole-volume prediction (benchmarks/predict.py, when present)
if [[ -f benchmarks/predict.py ]]; then
  run predict_bf16 100 "$PYTHON" benchmarks/predict.py --device cuda --sections main scaling --amp bf16 \
    --sw-batch-size 8 --json "$DEST/predict_cuda_bf16.json"
  run predict_fp16 60 "$PYTHON" benchmarks/predict.py --device cuda --sections main --amp fp16 \
    --sw-batch-size 8 --json "$DEST/predict_cuda_fp16.json"
else
  echo; echo "=== predict === skipped: benchmarks/predict.py not present"
fi

# training step: eager fp32, fast, fast + checkpointing, bf16 / fp16 autocast (each in its own process)
run train_step 140 "$PYTHON" benchmarks/train_step.py --device cuda --repeats 3 --warmup 1 \
  --json "$DEST/train_step_cuda.json"

echo
if [[ -n "${OUT:-}" ]]; then echo "JSON records in $DEST"; fi
exit "$FAILED"
