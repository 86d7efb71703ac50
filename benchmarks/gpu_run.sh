#!/usr/bin/env bash
# The NDAE at GPU scale as one command for a lent device machine (the `run` tool), which has torch
# but not the imaging stack. Prepared beforehand on the CPU (git-ignored, named in the call's carry):
#     python -m benchmarks.gpu_prepare      # build/gpu-carry/cohort.npz + build/gpu-carry/wheels/nibabel-*.whl
# The device call:
#     run(command="bash benchmarks/gpu_run.sh", carry=["build/gpu-carry"], timeout_s=360)
# It runs benchmarks/gpu_ndae.py inside GPU_BUDGET_S (default 330) seconds: the presets' timings
# (project vs plain loop, AMP vs fp32, peak memory), `paper` trained on the cohort's training
# controls with checkpoints in build/gpu-work/, then z_sem and the regional prior residuals of every
# subject. Everything lands in $OUT (8 files at most, each under 16 MiB); score it on the CPU with
#     ndae evaluate --manifest COHORT/manifest.csv --truth COHORT/truth.csv --cache CACHE --features OUT --out EVAL
# A rerun on the still-warm machine after a timeout: GPU_NDAE_ARGS="--bench-s 0 --score-only" (scores
# the checkpoint) or GPU_NDAE_ARGS="--bench-s 0" (trains on from it).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
if ls build/gpu-carry/wheels/*.whl >/dev/null 2>&1; then
    SITE=${GPU_SITE:-/tmp/site}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        build/gpu-carry/wheels/*.whl && export PYTHONPATH=$SITE:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    python3 -c "import torch, nibabel; print('torch', torch.__version__, 'nibabel', nibabel.__version__)" 2>&1
    timeout "$(( ${GPU_BUDGET_S:-330} + 20 ))" python3 -m benchmarks.gpu_ndae --data build/gpu-carry/cohort.npz \
        --out "$OUT" --budget-s "${GPU_BUDGET_S:-330}" ${GPU_NDAE_ARGS:-}
    echo "gpu_ndae exit status $?"
} 2>&1 | tee "$OUT/gpu_ndae.log"
ls -la "$OUT"
