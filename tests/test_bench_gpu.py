"""benchmarks/bench_gpu.sh and bench_gpu.py without a GPU: the script says it needs CUDA and exits 0, and
the Python part runs end to end at a toy size on CPU (SDPA only), printing one table."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_the_script_says_it_needs_cuda_and_exits_0():
    result = subprocess.run(["bash", "benchmarks/bench_gpu.sh"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "bench_gpu.sh needs a CUDA GPU (torch sees none); nothing measured here"


def test_the_benchmark_runs_at_a_toy_size_on_cpu():
    result = subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--size", "tiny", "--device", "cpu",
                             "--train-steps", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| row | backend |")
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["train bf16", "decode 64 codes", "decode 64 codes"]
