"""Loading a state dict into the transformer strictly, with a one-line error naming the first key that differs.

CogView's users most often could not load a checkpoint, and got PyTorch's wall of missing keys when
they tried; here a mismatch names the first key and the flag most likely responsible.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from utils.state_dicts import check_state_dict as check_tensors


def _hint(key: str) -> str:
    """The command-line flag most likely responsible for a mismatch at `key`."""
    if "third_layernorm" in key or "fourth_layernorm" in key:
        return "check --layernorm-order"
    if key == "word_embeddings.weight":
        return "check the tokenizer's vocabulary size and --hidden-size"
    if key == "transformer.position_embeddings.weight":
        return "check --max-position-embeddings and --hidden-size"
    if key in ("transformer.row_embeddings.weight", "transformer.col_embeddings.weight"):
        return "check --image-positions"
    return "check --hidden-size / --num-layers"


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Raise a one-line `UserError` naming the first missing, unexpected or mis-shaped tensor."""
    check_tensors(model.state_dict(), state_dict, f"checkpoint {source} does not match the model", _hint)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
                           assign: bool = False) -> None:
    """Check keys and shapes (one-line error), then `load_state_dict(strict=True)`.

    `assign=True` adopts the checkpoint's tensors instead of copying them (for a model built on the
    meta device, which then costs no memory and no random init).
    """
    check_state_dict(model, state_dict, source)
    model.load_state_dict(dict(state_dict), strict=True, assign=assign)
