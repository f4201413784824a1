"""Test-wide settings: run from the repository root, CPU DeepSpeed, one intra-op thread.

The tests run tiny models, for which thread hand-off costs more than it saves (measured ~20x slower per
AdamW step with 2 threads on a loaded 2-core machine); subprocesses they start inherit OMP_NUM_THREADS.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("DS_BUILD_OPS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Triton kernels run on CPU tensors with its interpreter (tests/test_kernels.py). Set before anything imports
# triton: torch.utils.flop_counter does, and kernels decorated without it cannot be interpreted.
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
