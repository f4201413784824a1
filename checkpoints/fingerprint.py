"""One fingerprint for a set of weights, so a recorded fingerprint can be checked wherever it is read.

A fingerprint names weights, not files: the same tensors give the same 16 hex digits in any checkpoint
layout (a DeepSpeed folder, an exported safetensors file, a model in memory), and any update changes it.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import torch
from torch import nn


def state_dict_fingerprint(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None) -> str:
    """16 hex digits of SHA-256 over `config` (as sorted JSON, when given) and every tensor, in name
    order: its name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    if config is not None:
        digest.update(json.dumps(dict(config), sort_keys=True).encode())
    for name, tensor in sorted(state_dict.items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def module_fingerprint(module: nn.Module, config: Mapping[str, Any] | None = None) -> str:
    """`state_dict_fingerprint` of a module's weights."""
    return state_dict_fingerprint(module.state_dict(), config)
