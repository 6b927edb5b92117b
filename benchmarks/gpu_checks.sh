#!/usr/bin/env bash
# Every GPU-only measurement in one prepared script, for whoever is lent an NVIDIA GPU (about
# 10 minutes on one GPU). Without CUDA it prints one line and exits 0.
#
#   bash benchmarks/gpu_checks.sh                 # results in benchmarks/results/gpu/
#   GPU_OUT=/tmp/gpu bash benchmarks/gpu_checks.sh
#
# 1. bench-speed: 2:4 kernels against dense, per projection (embedded model, LLaMA-2-7B, LLaMA-3-8B
#    shapes), prefill and decode;
# 2. the accelerate CUDA test (2:4-kernel linears equal the dense model with zeros);
# 3. seconds per block of sparsegpt, sparsegpt+lstsq (CG) and hyperprune+refit (CG, 10 steps) on a
#    2-block LLaMA-2-7B-shaped random model (bf16), 4 x 128 calibration tokens;
# 4. zero-shot accuracy of the dense and SparseGPT-pruned embedded model on the seven tasks, no --limit.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${GPU_OUT:-benchmarks/results/gpu}
WORK=${GPU_WORK:-runs/gpu}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_checks: no CUDA GPU on this machine; nothing to measure (run it where one is lent)"
    exit 0
fi

mkdir -p "$OUT" "$WORK"
GPU_NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
echo "gpu_checks on: $GPU_NAME" | tee "$OUT/gpu.txt"
hp() { "$PY" -m hyperprune "$@"; }
step() { echo; echo "== $* ($(date +%T))"; }

step "1/4 bench-speed (2:4 kernels against dense)"
hp bench-speed --dtype float16 --runs 50 --json "$OUT/bench-speed-fp16.json"

step "2/4 accelerate: 2:4 kernels against the dense model with zeros"
"$PY" -m pytest -q tests/test_sparse_kernels.py -k accelerated 2>&1 | tee "$OUT/accelerate-test.txt"

step "3/4 per-block time at the LLaMA-2-7B shape"
for spec in "sparsegpt|" "sparsegpt+lstsq|" "hyperprune+refit|--hyperprune-steps 10"; do
    method=${spec%%|*}
    extra=${spec#*|}
    "$PY" benchmarks/scale.py --workdir "$WORK" --layers 2 --methods "$method" --nsamples 4 --seqlen 128 \
        --extra "--device cuda $extra" --json "$OUT/scale-llama-2-7b-2l-${method//+/-}.json"
done

step "4/4 zero-shot, dense and SparseGPT, all documents"
hp compare --methods dense,sparsegpt --pattern 2:4 --nsamples 32 --seqlen 512 --device cuda \
    --eval sotu --eval-windows 40 --tasks zeroshot7 --task-batch-size 64 --json "$OUT/compare-2of4-zeroshot-full.json"

echo
echo "gpu_checks: done on $GPU_NAME; results in $OUT"
