"""Saving and restoring every random generator a training process draws from, so a resumed run continues
bit for bit: torch (CPU and the current GPU; dropout, codebook restarts), numpy and Python's `random`.

numpy's state is stored as plain values and a tensor rather than as a numpy array, so a file holding it
loads with `torch.load(weights_only=True)` and no numpy allow-list.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """This process's random generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (a GPU state is skipped on a machine without a GPU)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, tuple):  # checkpoints written before this module stored numpy's own tuple
        np.random.set_state(numpy_state)
    else:
        np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
