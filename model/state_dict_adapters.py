"""One adapter per foreign checkpoint layout: its keys onto ours, and the config the layout implies.

As torchtitan keeps a `state_dict_adapter` beside each model, every layout we load that was not written
by this repository has its own small object here, instead of key renaming spread through the loader:

- `COGVIEW_RELEASE`: CogView's released checkpoints. Same key names as ours, but no `model_config.json`:
  the sizes come from the tensor shapes, and PB-relax is on, because CogView's released code always
  applies the relaxed LayerNorm (a model trained with it gives other logits without it).
- `SWISS_ARMY_TRANSFORMER`: SwissArmyTransformer's port of CogView, whose word embedding lives under
  `transformer.word_embeddings`; its `model_config.json`, when present, names some fields differently,
  so the sizes it lacks are read from the tensors.
- `OURS`: what training and export write; nothing to adapt.

`model.checkpoint.load_model_for_inference` picks the adapter with `adapter_for`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from model.config_inference import infer_sizes

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class StateDictAdapter:
    """`to_ours(state_dict)` renames the layout's keys to ours; `implied_config(state_dict, source, heads)`
    gives the config fields the layout implies (what its `model_config.json`, if any, does not say wins
    from these)."""

    name: str
    to_ours: Callable[[StateDict], dict[str, torch.Tensor]]
    implied_config: Callable[[StateDict, str, int | None], dict[str, Any]]


def _unchanged(state_dict: StateDict) -> dict[str, torch.Tensor]:
    return dict(state_dict)


def _nothing_implied(state_dict: StateDict, source: str, num_attention_heads: int | None) -> dict[str, Any]:
    return {}


def _cogview_release_config(state_dict: StateDict, source: str, num_attention_heads: int | None) -> dict[str, Any]:
    return {**infer_sizes(state_dict, source, num_attention_heads), "pb_relax": True}


SAT_WORD_EMBEDDINGS = "transformer.word_embeddings.weight"


def _sat_to_ours(state_dict: StateDict) -> dict[str, torch.Tensor]:
    renamed = dict(state_dict)
    renamed["word_embeddings.weight"] = renamed.pop(SAT_WORD_EMBEDDINGS)
    return renamed


OURS = StateDictAdapter("ours", _unchanged, _nothing_implied)
COGVIEW_RELEASE = StateDictAdapter("CogView release", _unchanged, _cogview_release_config)
SWISS_ARMY_TRANSFORMER = StateDictAdapter("SwissArmyTransformer", _sat_to_ours, infer_sizes)


def adapter_for(state_dict: StateDict, has_config_file: bool) -> StateDictAdapter:
    """The adapter of a state dict (with any `module.` prefix already removed)."""
    if SAT_WORD_EMBEDDINGS in state_dict and "word_embeddings.weight" not in state_dict:
        return SWISS_ARMY_TRANSFORMER
    return OURS if has_config_file else COGVIEW_RELEASE
