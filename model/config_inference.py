"""The sizes of a transformer read from its tensors, for checkpoints that come without `model_config.json`."""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from utils.errors import UserError

COGVIEW_HEAD_DIM = 64  # CogView's heads are 64 wide: the head count is not visible in the shapes
_LAYER_KEY = re.compile(r"^transformer\.layers\.(\d+)\.")


def infer_num_heads(hidden_size: int, head_dim: int = COGVIEW_HEAD_DIM) -> int:
    """Head count for a checkpoint without a config: CogView's 64-wide heads."""
    if hidden_size % head_dim:
        raise UserError(f"cannot infer the number of attention heads: hidden size {hidden_size} is not a "
                        f"multiple of {head_dim}; give --num-attention-heads")
    return hidden_size // head_dim


def infer_sizes(state_dict: Mapping[str, torch.Tensor], source: str,
                num_attention_heads: int | None = None) -> dict[str, Any]:
    """`ModelConfig` fields readable from the tensors (in our key names): vocabulary, layers, widths,
    positions, and Sandwich-LN when the extra LayerNorms are there. The head count is CogView's
    64-wide heads unless given."""
    for key in ("word_embeddings.weight", "transformer.position_embeddings.weight"):
        if key not in state_dict:
            raise UserError(f"cannot infer the model sizes of {source}: it has no {key} and no model_config.json")
    vocab_size, hidden_size = state_dict["word_embeddings.weight"].shape
    layers = {int(m.group(1)) for key in state_dict if (m := _LAYER_KEY.match(key))}
    if not layers:
        raise UserError(f"cannot infer the model sizes of {source}: it has no transformer.layers.* tensors")
    return dict(
        vocab_size=vocab_size,
        num_layers=max(layers) + 1,
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads or infer_num_heads(hidden_size),
        max_position_embeddings=state_dict["transformer.position_embeddings.weight"].shape[0],
        layernorm_order="sandwich" if any(".third_layernorm." in key for key in state_dict) else "pre",
    )
