"""Merge and split state dicts across tensor-parallel sizes.

A run at `--tensor-parallel-size N` saves one `mp_rank_{r:02d}_model_states.pt` per tensor-parallel rank,
each holding that rank's blocks (see `mpu.tensor_parallel` for the splits). `merge_tensor_parallel` rebuilds
the plain model's state dict from them (CogView's names and layout, Q | K | V rows in order), so a model
trained at TP=N generates, evaluates and exports at TP=1; `split_tensor_parallel` is its exact inverse,
the blocks each rank of a TP=N engine holds for a plain state dict.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import torch

from model.config import ModelConfig
from mpu.tensor_parallel import COLUMN_SPLIT, FUSED_QKV, ROW_SPLIT, VOCAB_SPLIT, vocab_shard_sizes
from utils.errors import UserError

MODEL_STATES_PATTERN = re.compile(r"mp_rank_(\d{2})_model_states\.pt")


def _layout(name: str) -> str:
    """How the parameter `name` is split: 'qkv', 'column' (dim 0), 'row' (dim 1) or 'replicated'."""
    module, _, kind = name.rpartition(".")
    if module.endswith(FUSED_QKV):
        return "qkv"
    if module.endswith(COLUMN_SPLIT) or module == VOCAB_SPLIT:
        return "column"
    if module.endswith(ROW_SPLIT) and kind == "weight":
        return "row"  # the bias of a row split is added once, after the all-reduce
    return "replicated"


def merge_tensor_parallel(shards: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The plain state dict from the state dicts of tensor-parallel ranks 0..N-1."""
    if not shards:
        raise UserError("no tensor-parallel shards to merge")
    names = list(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if list(shard) != names:
            raise UserError(f"tensor-parallel rank {rank} holds other parameters than rank 0")
    merged = {}
    for name in names:
        parts = [shard[name] for shard in shards]
        layout = _layout(name)
        if layout == "qkv":  # each rank: [Q_r; K_r; V_r] -> [Q_0 ... Q_N-1; K_0 ...; V_0 ...]
            thirds = [part.chunk(3, dim=0) for part in parts]
            merged[name] = torch.cat([third[i] for i in range(3) for third in thirds], dim=0)
        elif layout in ("column", "row"):
            merged[name] = torch.cat(parts, dim=0 if layout == "column" else 1)
        else:
            merged[name] = parts[0]
    return merged


def split_tensor_parallel(state_dict: Mapping[str, torch.Tensor], config: ModelConfig,
                          tensor_parallel_size: int) -> list[dict[str, torch.Tensor]]:
    """The state dicts of tensor-parallel ranks 0..N-1 for a plain state dict (inverse of the merge)."""
    from mpu.tensor_parallel import check_tensor_parallel_size

    check_tensor_parallel_size(config, tensor_parallel_size)
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(tensor_parallel_size)]
    for name, tensor in state_dict.items():
        layout = _layout(name)
        if layout == "qkv":
            blocks = [third.chunk(tensor_parallel_size, dim=0) for third in tensor.chunk(3, dim=0)]
            parts = [torch.cat([block[rank] for block in blocks], dim=0) for rank in range(tensor_parallel_size)]
        elif name.startswith(VOCAB_SPLIT + "."):
            parts = list(tensor.split(vocab_shard_sizes(config, tensor_parallel_size), dim=0))
        elif layout in ("column", "row"):
            parts = list(tensor.chunk(tensor_parallel_size, dim=0 if layout == "column" else 1))
        else:
            parts = [tensor] * tensor_parallel_size
        for shard, part in zip(shards, parts):
            shard[name] = part.clone()
    return shards


def tensor_parallel_files(iteration_dir: str | os.PathLike) -> list[Path]:
    """The `mp_rank_*_model_states.pt` files of a DeepSpeed iteration folder, in rank order."""
    files = sorted(path for path in Path(iteration_dir).iterdir() if MODEL_STATES_PATTERN.fullmatch(path.name))
    ranks = [int(MODEL_STATES_PATTERN.fullmatch(path.name).group(1)) for path in files]
    if ranks != list(range(len(files))):
        raise UserError(f"{iteration_dir} has model states of tensor-parallel ranks {ranks}; some are missing")
    return files


def check_resume_tensor_parallel_size(iteration_dir: str | os.PathLike, tensor_parallel_size: int) -> None:
    """DeepSpeed resumes the engine's own shards, so a run resumes at the tensor-parallel size it was saved
    with (ZeRO-3 folders, saved without tensor parallelism, hold no `mp_rank_*` file: size 1)."""
    saved = len(tensor_parallel_files(iteration_dir)) or 1
    if saved != tensor_parallel_size:
        raise UserError(f"{iteration_dir} was saved with --tensor-parallel-size {saved}; resume it with the same "
                        f"size (generation and export read it at any size)")
