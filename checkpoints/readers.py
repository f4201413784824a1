"""Reading weight files safely: PyTorch pickles (weights only, plus numpy arrays) and safetensors.

Every failure is a one-line `UserError` naming the file; nothing in a file can run code.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from utils.errors import UserError

DATA_PARALLEL_PREFIX = "module."


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _numpy_safe_globals() -> list:
    """What numpy arrays need to unpickle under `weights_only=True`: CogView's and DeepSpeed's checkpoints
    store numpy's RNG state (a uint32 array) beside the weights. These only rebuild arrays from bytes.

    numpy 2 keeps `_reconstruct` in `numpy._core`, numpy 1.x in `numpy.core`; a file names the module of
    the numpy that wrote it, so both names are allowed whichever numpy reads it.
    """
    core = getattr(np, "_core", None) or np.core  # np.core warns on numpy 2, so it is only the fallback
    reconstruct = core.multiarray._reconstruct
    dtype_classes = [getattr(np.dtypes, name) for name in np.dtypes.__all__]
    return [(reconstruct, f"numpy.{package}.multiarray._reconstruct") for package in ("core", "_core")] + [
        np.ndarray, np.dtype, *dtype_classes]


def read_torch_file(path: str | Path) -> Any:
    """`torch.load` on the CPU that runs no code from the file (weights only, plus numpy arrays)."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe:
            raise UserError(f"cannot read {path} safely: it holds an object of type {unsafe.group(1)}, which "
                            f"weights-only loading refuses; re-save the weights alone") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        reason = detail.group(1).strip() if detail else first_line(err)
        raise UserError(f"cannot read {path} as a PyTorch checkpoint: {reason}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"cannot read {path} as a PyTorch checkpoint: {first_line(err)}") from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a `.safetensors` file, on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise UserError(f"cannot read {path} as safetensors: {first_line(err)}") from None


def strip_data_parallel_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the `module.` that DataParallel and DistributedDataParallel put before every key (only when
    every key has it, so a model with a submodule named `module` is left alone)."""
    if state_dict and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state_dict):
        return {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in state_dict.items()}
    return dict(state_dict)
