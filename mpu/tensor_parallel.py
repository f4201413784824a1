"""Tensor parallelism (Megatron's column/row splits) for `CogViewGPT`, on DeepSpeed's AutoTP.

The model stays a plain `nn.Module`; this module holds the plan. Every transformer layer is split so
that each of the `tp` ranks of a replica computes `heads / tp` attention heads and `ffn / tp` MLP
columns, with one all-reduce after attention and one after the MLP (Megatron's layout):

    attention.query_key_value   column split, as three sub-matrices Q | K | V (CogView's row order):
                                rank r holds rows [Q_r; K_r; V_r], whole heads of each, so the model's
                                `chunk(3)` still yields its own Q, K and V heads
    attention.dense             row split (input columns = the rank's heads), all-reduce of the output
    mlp.dense_h_to_4h           column split
    mlp.dense_4h_to_h           row split, all-reduce of the output
    word_embeddings             vocabulary split: rank r holds a contiguous block of token ids; the
                                lookup is all-reduced, and the tied output projection F.linear(h, E_r)
                                yields the rank's block of logits, which the loss reads without
                                gathering the [batch, length, vocab] tensor (`cross_entropy`)

The linear layers are DeepSpeed AutoTP's (`"tensor_parallel": {"autotp_size": N, "partition_config"}`
in the engine config, applied inside `deepspeed.initialize`, which also divides `num_heads`). The
vocabulary split is built here from AutoTP's own `VocabParallelEmbedding`, because AutoTP only
vocabulary-splits an embedding tied to an `nn.Linear` named `lm_head`, and CogView's output projection
is the embedding matrix itself. LayerNorms, biases of row-split layers and position embeddings stay
replicated: their inputs are identical on all ranks of a replica, so are their gradients.
"""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F

from model.config import ModelConfig
from mpu.parallel_state import ParallelGroups, get_tensor_parallel_size, parallel_groups
from utils.errors import UserError

# Module names (suffixes of CogView's parameter names) by how their weights are split.
FUSED_QKV = "attention.query_key_value"
COLUMN_SPLIT = ("mlp.dense_h_to_4h",)
ROW_SPLIT = ("attention.dense", "mlp.dense_4h_to_h")
VOCAB_SPLIT = "word_embeddings"


def _pattern(module: str) -> str:
    """AutoTP matches parameter names against regular expressions."""
    return rf"(^|.*\.){re.escape(module)}\.weight$"


def check_tensor_parallel_size(config: ModelConfig, tensor_parallel_size: int) -> None:
    """Each rank must get whole heads (and so an equal share of every split dimension)."""
    if config.num_attention_heads % tensor_parallel_size:
        raise UserError(f"--tensor-parallel-size {tensor_parallel_size} must divide the number of attention "
                        f"heads ({config.num_attention_heads}): each rank computes whole heads")
    if config.vocab_size < tensor_parallel_size:
        raise UserError(f"--tensor-parallel-size {tensor_parallel_size} exceeds the vocabulary ({config.vocab_size})")


def deepspeed_tensor_parallel_config(tensor_parallel_size: int) -> dict[str, Any]:
    """The `tensor_parallel` section of the DeepSpeed config: AutoTP with CogView's layer plan."""
    return {"autotp_size": tensor_parallel_size, "partition_config": {"use_default_specs": False, "layer_specs": [
        {"patterns": [_pattern(FUSED_QKV)], "partition_type": "column", "shape": [3, -1], "partition_dim": 0},
        {"patterns": [_pattern(name) for name in COLUMN_SPLIT], "partition_type": "column"},
        {"patterns": [_pattern(name) for name in ROW_SPLIT], "partition_type": "row"},
    ]}}


def vocab_shard_sizes(config: ModelConfig, tensor_parallel_size: int) -> list[int]:
    """How many token ids each rank holds (DeepSpeed's split, so checkpoints split the same way)."""
    from deepspeed.module_inject.tp_shard import AutoTPMeta, get_shard_size_list

    return get_shard_size_list(config.vocab_size, tensor_parallel_size, AutoTPMeta.from_model_config(config),
                               VOCAB_SPLIT)


def parallelize_vocabulary(model: torch.nn.Module, groups: ParallelGroups) -> None:
    """Split the word embedding (and so the tied output projection) by vocabulary, in place.

    Call before `deepspeed.initialize`, which splits the transformer layers (see the module docstring).
    The final LayerNorm's output then passes through DeepSpeed's `ColumnParallel` (identity forward,
    all-reduce backward): each rank's logits see only its vocabulary block, so the gradient reaching the
    hidden state is the sum over ranks.
    """
    from deepspeed.module_inject.layers import ColumnParallel, VocabParallelEmbedding, set_autotp_mode
    from deepspeed.module_inject.tp_shard import AutoTPMeta

    check_tensor_parallel_size(model.config, groups.tensor_parallel_size)
    set_autotp_mode(training=True)
    group = groups.get_model_parallel_group()
    embedding = VocabParallelEmbedding(model.word_embeddings, group, name=VOCAB_SPLIT,
                                       tp_meta=AutoTPMeta.from_model_config(model.config))
    model.word_embeddings = embedding
    global _vocab_block
    _vocab_block = (embedding.vocab_start_index, embedding.vocab_end_index, embedding.vocab_size)
    model.transformer.final_layernorm.register_forward_hook(
        lambda module, inputs, output: ColumnParallel.apply(group, output))


# This rank's token ids [start, end) and the vocabulary size, set by `parallelize_vocabulary`.
_vocab_block: tuple[int, int, int] | None = None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-target cross-entropy of `logits [N, V or V/tp]` (fp32): the plain one, or, under tensor
    parallelism, DeepSpeed's vocabulary-parallel one over the rank's logit block (no gather)."""
    if get_tensor_parallel_size() == 1:
        return F.cross_entropy(logits, targets, reduction="none")
    from deepspeed.sequence.cross_entropy import vocab_parallel_cross_entropy

    if _vocab_block is None:
        raise RuntimeError("tensor parallelism without a split vocabulary: call parallelize_vocabulary first")
    start, end, vocab_size = _vocab_block
    return vocab_parallel_cross_entropy(logits, targets, tp_group=parallel_groups().get_model_parallel_group(),
                                        vocab_start_index=start, vocab_end_index=end, global_vocab_size=vocab_size,
                                        reduction="none")
