"""Throughput and model-FLOPs utilisation (MFU), measured against this device's own matmul rate.

MFU = model FLOPs per second / peak FLOPs per second. The model FLOPs are `flops_per_token` (6 N per
token for the weight matmuls plus the attention term, forward and backward) times the tokens
processed, including right-padding positions, which cost the same compute. Recomputation under
`--checkpoint-activations` is not counted: it is overhead, not model work.

The peak is not a datasheet number: at start-up we time a few large square matmuls in the training
dtype on the training device. That works the same on any GPU or CPU and makes MFU the fraction of
the achievable dense-matmul rate. A datasheet peak is 10-30% higher than the measured one, so MFUs
computed against datasheets are that much lower than ours.
"""
from __future__ import annotations

import time
import torch

# Square matmul side for the rate probe: large enough to reach the peak, small enough to take well
# under a second (CPUs reach their peak at much smaller sizes).
_PROBE_SIZE = {"cuda": 8192, "cpu": 1024}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_flops(device: torch.device | str, dtype: torch.dtype, size: int | None = None,
                         repeats: int = 10) -> float:
    """FLOP/s of `size x size` matmuls in `dtype` on `device`, best of `repeats` after a warm-up."""
    device = torch.device(device)
    size = size or _PROBE_SIZE.get(device.type, 1024)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    best = float("inf")
    for attempt in range(repeats + 1):
        _synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        if attempt:  # the first run pays for kernel selection and caches
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def throughput(tokens: float, flops: float, seconds: float, peak_flops: float, devices: int) -> dict[str, float]:
    """tokens/s and MFU of `tokens` and model `flops` processed by `devices` devices in `seconds`;
    `peak_flops` is one device's measured matmul rate."""
    seconds = max(seconds, 1e-9)
    return {"tokens_per_second": tokens / seconds, "mfu": flops / seconds / (peak_flops * devices)}
