"""Mixed precision is DeepSpeed's job in training and autocast's in inference.

CogView carried its own fp16 optimizer and loss scaler; DeepSpeed's engine already implements dynamic
loss scaling (fp16) and fp32 master weights (fp16 and bf16), so training only has to write the right
config section. Inference has no optimizer and runs fp32 weights under `torch.autocast`, or, for
"int8", linear layers quantised once at load (`fp16.int8`) with fp32 activations.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import torch

from fp16.int8 import refuse_unless_cpu
from utils.errors import UserError

TRAINING_PRECISIONS = ("fp32", "fp16", "bf16")
PRECISIONS = TRAINING_PRECISIONS + ("int8",)  # what inference runs in

# Dynamic loss scaling as in CogView's fp16 recipe: start at 2^16, halve on overflow (after
# `hysteresis` overflows in a row), double after `loss_scale_window` clean steps.
_FP16_SECTION: dict[str, Any] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_config(precision: str) -> dict[str, Any]:
    """The DeepSpeed config sections for `precision` ("fp32" needs none)."""
    if precision == "fp16":
        return {"fp16": dict(_FP16_SECTION)}
    if precision == "bf16":
        return {"bf16": {"enabled": True}}
    if precision == "fp32":
        return {}
    raise ValueError(f"unknown precision {precision!r}; choose one of {TRAINING_PRECISIONS}")


def precision_of_config(ds_config: Mapping[str, Any]) -> str:
    """Which precision a DeepSpeed config trains in."""
    fp16 = bool(ds_config.get("fp16", {}).get("enabled", False))
    bf16 = bool(ds_config.get("bf16", {}).get("enabled", False))
    if fp16 and bf16:
        raise ValueError("a DeepSpeed config cannot enable both fp16 and bf16")
    return "fp16" if fp16 else "bf16" if bf16 else "fp32"


def torch_dtype(precision: str) -> torch.dtype:
    return _DTYPES[precision]


@contextlib.contextmanager
def inference_autocast(device: torch.device | str, precision: str) -> Iterator[None]:
    """Run fp32 weights in `precision` where the device supports it; fp32 is a no-op.

    Autocast keeps LayerNorm and softmax in fp32 and casts matmul inputs, which is what inference of a
    model trained in fp16/bf16 needs. CPUs autocast to bf16 only. "int8" needs no autocast: its weights
    were quantised at load (`fp16.int8.quantize_linear_layers`) and its activations are fp32.
    """
    device_type = torch.device(device).type
    if precision == "int8":
        refuse_unless_cpu(device_type)
    if precision in ("fp32", "int8"):
        yield
        return
    if device_type == "cpu" and precision != "bf16":
        raise UserError("CPU inference supports fp32 or bf16, not fp16; choose bf16 or run on a GPU")
    with torch.autocast(device_type=device_type, dtype=_DTYPES[precision]):
        yield
