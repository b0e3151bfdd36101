#!/usr/bin/env bash
# One-command GPU check for hetccl (docs/bridges.md, "The GPU check"):
#
#   bash bench/gpu_check.sh            # on a machine with an NVIDIA GPU (internet for pip)
#   bash bench/gpu_check.sh --dry-run  # anywhere: every step that needs no GPU
#
# 1. finds the GPUs (nvidia-smi; AMD / Ascend devices are reported, not driven);
# 2. installs what it needs with pip (torch with CUDA, nvidia-nccl-cu12, nvidia-cuda-runtime-cu12,
#    numpy, ml_dtypes, pytest) and builds hetccl's native core in place;
# 3. runs the GPU-only tests (tests named test_gpu_*: the real NCCL bridge, staged mixed islands);
# 4. runs a mixed communicator: an NCCL island on the GPU(s) plus a 2-rank CPU island on hetccl's
#    transports, checks allreduce / allgather / broadcast of CUDA tensors against numpy and times
#    them against torch's NCCL backend on the same tensors (bench/gpu_check.py); one table.
# Budget: under 5 minutes on one GPU (each step has its own time limit).
#
# --dry-run: no install (it prints the pip command), the GPU tests are collected and run (they
# skip without a GPU), and step 4 runs with the NCCL island replaced by the NCCL-API test double in
# host memory and torch's gloo as the peer. Not exercised then: CUDA, the real NCCL, torch's NCCL.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
WORK=$(mktemp -d -t hetccl-gpu-check-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
step() { printf '\n== %s\n' "$*"; }
T0=$(date +%s)

step "1/4 devices"
NGPU=0
if command -v nvidia-smi >/dev/null 2>&1; then
    NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    nvidia-smi -L 2>/dev/null || true
fi
command -v rocm-smi >/dev/null 2>&1 && echo "AMD GPUs present (rocm-smi): the RCCL bridge is not driven by this check"
command -v npu-smi >/dev/null 2>&1 && echo "Ascend NPUs present (npu-smi): the HCCL bridge is not driven by this check"
echo "NVIDIA GPUs: $NGPU"
if [[ $DRY == 0 && $NGPU == 0 ]]; then
    echo "no NVIDIA GPU found (nvidia-smi -L); run with --dry-run to check everything else" >&2
    exit 2
fi
G=$(( NGPU > 2 ? 2 : NGPU ))
[[ $DRY == 1 ]] && G=2

step "2/4 install and build"
PIP=("$PY" -m pip install -q nvidia-nccl-cu12 nvidia-cuda-runtime-cu12 numpy ml_dtypes pytest)
if [[ $DRY == 1 ]]; then
    echo "dry run: would run: ${PIP[*]}"
    echo "dry run: would run: $PY -m pip install -q torch   (if torch.cuda.is_available() is False)"
else
    "${PIP[@]}"
    if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        "$PY" -m pip install -q torch
    fi
fi
timeout 600 "$PY" setup.py build_ext --inplace -q -j "$(nproc)" >/dev/null
echo "native core built in $ROOT"

step "3/4 GPU-only tests"
timeout 240 "$PY" -m pytest -q -rs -k "test_gpu" tests/test_bridges_nccl.py tests/test_bridge_staging.py 2>&1 | tail -6

step "4/4 mixed communicator: NCCL island ($G rank(s)) + CPU island (2 ranks), checked and timed"
ARGS=(--gpus "$G" --out "$WORK/summary.txt")
if [[ $DRY == 1 ]]; then
    "$PY" -c "from tests import fakeccl; fakeccl.build('$WORK')"
    export FAKECCL_DIR=$WORK
    ARGS+=(--fake)
fi
timeout 240 "$PY" -m hetccl run -n $(( G + 2 )) -- "$PY" bench/gpu_check.py "${ARGS[@]}"

step "summary ($(( $(date +%s) - T0 )) s)"
cat "$WORK/summary.txt"
[[ $DRY == 1 ]] && echo "# dry run: not exercised: CUDA tensors, the real NCCL, torch's NCCL backend, pip install"
exit 0
