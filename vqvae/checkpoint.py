"""Reading VQ-VAE weights: our folder format, CogView's `.pt`, and a strict key/shape check.

A checkpoint that does not fit the model must fail with the name of the first key that differs,
not with PyTorch's wall of every missing key (or, worse, a silent partial load).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from checkpoints.readers import read_torch_file, strip_data_parallel_prefix
from utils.errors import UserError
from utils.state_dicts import check_state_dict

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Keys under which training scripts commonly nest a state dict.
_NESTING_KEYS = ("state_dict", "model", "module")


def load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Check keys and shapes, then load strictly (values are cast to the model's dtypes)."""
    check_state_dict(model.state_dict(), state_dict, "checkpoint does not match the VQ-VAE")
    model.load_state_dict(dict(state_dict), strict=True)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a `.pt` file: stored directly, or under `state_dict`/`model`/`module`.

    No code from the file runs (`checkpoints.readers`); a `module.` prefix left by DataParallel is removed.
    """
    obj = read_torch_file(path)
    if not _is_state_dict(obj) and isinstance(obj, dict):
        nested = [obj[key] for key in _NESTING_KEYS if _is_state_dict(obj.get(key))]
        if nested:
            obj = nested[0]
    if not _is_state_dict(obj):
        described = f"a dict with keys {sorted(map(str, obj))[:5]}" if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path} holds no state dict (found {described}); expected tensors at the top "
                        f"level or under one of {_NESTING_KEYS}")
    return strip_data_parallel_prefix(obj)
