#!/usr/bin/env bash
# The GPU benchmarks as one command for a lent device machine (`device` tool), which has torch but
# not the imaging stack: the demo's slices travel as .gpu-carry/slices.npz
# (`python -m benchmarks.bench_dae --save-slices .gpu-carry/slices.npz`), MONAI (SSIM) as a wheel
# in .whl/ (`python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
# --platform manylinux_2_28_x86_64 -d .whl monai==1.6.1`). Both folders are git-ignored (.git/info/exclude):
# name them in the device call's carry. Writes everything under $OUT (default /tmp/gpu-out).
#   1. benchmarks.bench_gpu: paper and paper3d throughput, AMP vs fp32, peak memory (random inputs)
#   2. benchmarks.bench_dae on the GPU: the paper preset trained for DAE_MINUTES on the demo controls,
#      reconstruction, z_sem swap, age and ventricle probes against its own initial weights
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)" | tee "$OUT/versions.txt"
timeout "${GPU_BENCH_S:-200}" python3 -m benchmarks.bench_gpu --json "$OUT/gpu.json" --results-dir "$OUT" 2>&1 | tee "$OUT/bench_gpu.log"
timeout "${DAE_BENCH_S:-330}" python3 -m benchmarks.bench_dae --device cuda --slices .gpu-carry/slices.npz --preset paper \
    --steps 100000 --minutes "${DAE_MINUTES:-2}" --probe-every 500 --replicate-seeds 1 --inversion-steps 20 50 100 \
    --no-paper-throughput --section dae_paper_gpu 2>&1 | tail -40 > "$OUT/bench_dae.log"
cp benchmarks/results/dae_paper_gpu.* "$OUT/" 2>/dev/null
ls -la "$OUT"
