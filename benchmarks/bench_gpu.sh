#!/usr/bin/env bash
# The GPU checks of one session in one command, one table, within 8 minutes on one H100/H200 GPU:
#   training MFU in bf16 of a 363M-parameter model, Triton kernels against SDPA;
#   decoding tokens/s of 1,024-token images at batch 1 and 32, against the memory-bandwidth bound;
#   the kernels' tests on the device (tests/test_kernels_cuda.py).
# See benchmarks/bench_gpu.py for what each row measures. Without CUDA it says so and exits 0.
#
#   bash benchmarks/bench_gpu.sh                  # PYTHON=/path/to/python to choose the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "bench_gpu.sh needs a CUDA GPU (torch sees none); nothing measured here"
    exit 0
fi
if ! "$PYTHON" -c 'import triton' 2>/dev/null; then
    echo "bench_gpu.sh needs triton for the kernel rows: pip install -r requirements-kernels.txt"
    exit 0
fi
# 8 minutes in all; the table so far is printed row by row, so a timeout still leaves the rows measured.
timeout 480 "$PYTHON" benchmarks/bench_gpu.py "$@"
