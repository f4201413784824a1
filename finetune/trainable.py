"""Which parameters a fine-tuning run trains: all, a chosen set (the rest frozen), or LoRA adapters.

`--trainable` names the set, comma-separated:
    embeddings            word and position embeddings (the identifier's pieces live in the first)
    word_embeddings, position_embeddings, final_layernorm
    layers=A-B / layers=A  transformer layers A..B (inclusive)
"""
from __future__ import annotations

import re

from torch import nn

from utils.errors import UserError

MODES = ("full", "frozen", "lora")
_PARTS = {"embeddings": ("word_embeddings.", "transformer.position_embeddings."),
          "word_embeddings": ("word_embeddings.",), "position_embeddings": ("transformer.position_embeddings.",),
          "final_layernorm": ("transformer.final_layernorm.",)}
_LAYERS = re.compile(r"layers=(\d+)(?:-(\d+))?")


def trainable_prefixes(spec: str, num_layers: int) -> tuple[str, ...]:
    """Parameter-name prefixes of a `--trainable` spec."""
    prefixes: list[str] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if item in _PARTS:
            prefixes += _PARTS[item]
            continue
        match = _LAYERS.fullmatch(item)
        if match is None:
            raise UserError(f"unknown --trainable part {item!r}; use {', '.join(_PARTS)} or layers=A-B")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if not 0 <= first <= last < num_layers:
            raise UserError(f"--trainable {item}: the model has layers 0-{num_layers - 1}")
        prefixes += [f"transformer.layers.{i}." for i in range(first, last + 1)]
    if not prefixes:
        raise UserError("--trainable names no part; give e.g. embeddings,layers=2-3")
    return tuple(prefixes)


def freeze_all_but(model: nn.Module, prefixes: tuple[str, ...]) -> list[str]:
    """Train only the parameters under `prefixes`; returns their names."""
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
        if param.requires_grad:
            names.append(name)
    return names


def trained_state(model: nn.Module) -> dict:
    """The tensors a `full` / `frozen` run changed: every parameter that requires grad, by its name."""
    return {name: param.detach() for name, param in model.named_parameters() if param.requires_grad}
