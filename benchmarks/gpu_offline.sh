#!/usr/bin/env bash
# The GPU benchmark on the offline accelerator machine (one GPU, its own python3 with jax and torch,
# no network): installs only the carried wheels, checks versions and devices, then runs
# benchmarks/bench_gpu.py inside a time budget, writing bench_gpu.md / .json / .log to $OUT.
#
#   python -m benchmarks.prepare_device_wheels        # here, with the network: fills .whl
#   bash benchmarks/gpu_offline.sh                    # there (carry .whl)
#   bash benchmarks/gpu_offline.sh --wheels DIR --site DIR --cpu-smoke   # the offline test, on a CPU
#
# Options of its own: --wheels DIR (default .whl), --site DIR (where the wheels are installed; default
# a fresh temporary folder), --backend gpu|cpu (what jax must run on; --cpu-smoke implies cpu),
# --out DIR (default $OUT, else bench_gpu_out).
# Everything else goes to benchmarks.bench_gpu; --budget-s defaults to $BUDGET_S (450 s) and the whole
# benchmark is killed at $HARD_LIMIT_S (540 s), so that one 600 s device command (with about 30 s of
# install and preflight before it) always ends with the table written so far. The project is used from this folder (PYTHONPATH), not installed: its
# pyproject pins (jax 0.10.2, ...) do not apply; the versions used are printed and written.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WHEELS=.whl
SITE=""
BACKEND=gpu
BENCH_ARGS=()
while (($#)); do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --site) SITE="$2"; shift 2 ;;
    --backend) BACKEND="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --cpu-smoke) BACKEND=cpu; BENCH_ARGS+=("$1"); shift ;;
    *) BENCH_ARGS+=("$1"); shift ;;
  esac
done
fail() { echo "gpu_offline.sh: $*" >&2; exit 1; }

# Never the network: pip has no index, Hugging Face libraries stay offline.
export PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_NO_CACHE_DIR=1
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
export PYTHONUNBUFFERED=1
# jax and torch share the GPU: jax preallocates this fraction, torch takes what it needs of the rest.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}"
OUT_DIR="${OUT:-bench_gpu_out}"
mkdir -p "$OUT_DIR"

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
((${#wheels[@]})) || fail "no wheels in $WHEELS: run 'python -m benchmarks.prepare_device_wheels' first and carry it"
[[ -n "$SITE" ]] || SITE="$(mktemp -d /tmp/ddim-site.XXXXXX)"
log="$(mktemp)"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  "${wheels[@]}" >"$log" 2>&1 || fail "pip install of $WHEELS failed: $(grep -v '^\s*$' "$log" | tail -n 1)"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"

# Before spending time: requirements of the carried wheels, imports, jax's backend, torch's CUDA.
"$PYTHON" -m benchmarks.device_check --site "$SITE" --backend "$BACKEND" || exit 1
[[ "$BACKEND" == cpu ]] || nvidia-smi -L || true

set -o pipefail
timeout -k 10 "${HARD_LIMIT_S:-540}" "$PYTHON" -m benchmarks.bench_gpu --budget-s "${BUDGET_S:-450}" \
  --out "$OUT_DIR" "${BENCH_ARGS[@]}" 2>&1 | tee "$OUT_DIR/bench_gpu.log"
