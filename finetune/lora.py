"""LoRA for the transformer's linear projections: W x + (alpha / r) B A x, with A random and B zero.

Our own small module rather than `peft`: peft 0.21 pulls in transformers, tokenizers and accelerate
(nothing else here uses them) and renames every wrapped weight under its own `base_model.model.` tree,
while all we need is to wrap a few `nn.Linear`s, keep `.weight` readable (`SelfAttention.project` splits
the fused Q | K | V weight directly), and fold the update back into the weight for inference and export.

B starts at zero, so a freshly wrapped model computes exactly what the base model does.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import UserError

# The projections of every transformer layer, by their CogView names.
LORA_TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update; `.weight` / `.bias` read as the merged ones."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's own init, as LoRA's paper
        base.weight.requires_grad_(False)
        base.bias.requires_grad_(False)

    def delta(self) -> torch.Tensor:
        return (self.lora_b @ self.lora_a) * self.scale

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight + self.delta().to(self.base.weight.dtype)

    @property
    def bias(self) -> torch.Tensor:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype)) * self.scale


def matching_linears(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Full names of the `nn.Linear`s whose name is a target or ends with `.target` (peft's rule);
    a target that matches nothing is an error."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    names = []
    for target in targets:
        found = [name for name in linears if name == target or name.endswith("." + target)]
        if not found:
            raise UserError(f"LoRA target {target!r} matches no linear layer; the model's are named like "
                            f"{', '.join(sorted({n.rsplit('.', 1)[-1] for n in linears}))}")
        names += [name for name in found if name not in names]
    return names


def add_lora(model: nn.Module, targets: Sequence[str], rank: int, alpha: float) -> list[str]:
    """Freeze `model` and wrap the target linears in `LoRALinear`; returns the wrapped names."""
    if rank < 1:
        raise UserError(f"the LoRA rank must be positive, got {rank}")
    model.requires_grad_(False)
    names = matching_linears(model, targets)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha))
    return names


def lora_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """`{module}.lora_a` / `{module}.lora_b` of every wrapped linear (what a LoRA adapter file holds)."""
    return {f"{name}.{part}": getattr(module, part).detach()
            for name, module in model.named_modules() if isinstance(module, LoRALinear)
            for part in ("lora_a", "lora_b")}
