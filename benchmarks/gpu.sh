#!/usr/bin/env bash
# The GPU benchmark: one Markdown table (sampling images/s ours vs PyTorch, compile time, 50k-image
# projection, training steps/s, sampler memory at S = 10 vs 1000). See benchmarks/bench_gpu.py.
#
#   bash benchmarks/gpu.sh                       # all defaults: batches 256,1024; S = 10,20,50,100
#   bash benchmarks/gpu.sh --batches 256 --steps 20 --repeats 3
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 bash benchmarks/gpu.sh   # a CUDA torch
#
# With a CUDA GPU (nvidia-smi works) it installs the cuda12 extra first (pip install -e ".[dev,cuda12]");
# without one it runs the CPU smoke mode (--cpu-smoke: tiny UNet, batch 2, S = 2). The dev extra pins a
# CPU torch: set TORCH_INDEX_URL to reinstall torch from a CUDA wheel index, else the PyTorch rows say
# "skipped (torch has no CUDA)".
#
# On the offline accelerator machine (no network, its own jax and torch) use benchmarks/gpu_offline.sh
# with the wheels that benchmarks/prepare_device_wheels.py prepares here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi -L
  "$PYTHON" -m pip install -q -e ".[dev,cuda12]"
  if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    "$PYTHON" -m pip install -q --force-reinstall --no-deps "torch==$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])")" --index-url "$TORCH_INDEX_URL"
  fi
  "$PYTHON" -c "import jax; assert jax.default_backend() == 'gpu', jax.devices(); print('jax devices:', jax.devices())"
  exec "$PYTHON" -m benchmarks.bench_gpu "$@"
else
  echo "gpu.sh: no CUDA GPU (nvidia-smi) found: running the CPU smoke mode" >&2
  exec "$PYTHON" -m benchmarks.bench_gpu --cpu-smoke "$@"
fi
