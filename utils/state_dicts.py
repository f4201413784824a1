"""One check of a state dict against a model, so every loader fails with the same kind of one-line error."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from utils.errors import UserError


def check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, Any], mismatch: str,
                     hint: Callable[[str], str] | None = None) -> None:
    """Raise a one-line `UserError` naming the first missing, non-tensor, mis-shaped or unexpected entry.

    `mismatch` opens the message ("checkpoint runs/x/1000 does not match the model"); `hint(key)`, when
    given, names the setting most likely responsible, in parentheses at the end.
    """
    def advice(key: str) -> str:
        return f" ({hint(key)})" if hint is not None else ""

    for key, tensor in expected.items():
        if key not in found:
            raise UserError(f"{mismatch}: {key} is missing from the checkpoint{advice(key)}")
        value = found[key]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{mismatch}: {key} is a {type(value).__name__} in the checkpoint, not a tensor")
        if value.shape != tensor.shape:
            raise UserError(f"{mismatch}: {key} is {list(value.shape)} in the checkpoint, "
                            f"{list(tensor.shape)} in the model{advice(key)}")
    for key in found:
        if key not in expected:
            raise UserError(f"{mismatch}: the checkpoint has an unexpected tensor {key}{advice(key)}")
