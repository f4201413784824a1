"""`KVCache`: preallocated keys and values of every layer, for incremental decoding.

CogView cached each layer's input hidden states and recomputed the key and value projections of the
whole prefix at every step; caching K and V themselves makes a step cost O(one token) in the
projections. The buffers are allocated once at full length, so a decoding loop never reallocates
(and stays friendly to CUDA graphs / torch.compile).

Protocol used by `CogViewGPT.forward`: every layer calls `update(layer, k, v)`, which writes the T
new positions at `[length, length + T)` and returns views of everything filled so far; after the
last layer the model calls `advance(T)`. A model whose attention pattern depends on the tokens (the local
image window) also keeps the ids of the cached positions (`token_ids`, written by `add_tokens` before
the layers run).
"""
from __future__ import annotations

import torch

from utils.errors import UserError


class KVCache:
    """Keys and values `[batch, heads, max_length, head_dim]` per layer, filled up to `length`."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], length: int = 0,
                 token_ids: torch.Tensor | None = None):
        self.keys = keys
        self.values = values
        self.length = length
        self.token_ids = token_ids

    @classmethod
    def allocate(cls, num_layers: int, batch_size: int, num_heads: int, max_length: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 track_tokens: bool = False) -> "KVCache":
        """An empty cache with room for `max_length` positions (use `CogViewGPT.new_kv_cache`);
        `track_tokens` also keeps the ids of the cached positions."""
        if batch_size < 1 or max_length < 1:
            raise UserError(f"a KV cache needs batch_size >= 1 and max_length >= 1, got {batch_size} and {max_length}")
        shape = (batch_size, num_heads, max_length, head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)],
                   token_ids=torch.zeros((batch_size, max_length), dtype=torch.long, device=device)
                   if track_tokens else None)

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[2]

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def check_room(self, new_positions: int) -> None:
        """Raise before any layer writes if `new_positions` more positions do not fit."""
        if self.length + new_positions > self.max_length:
            raise UserError(f"KV cache is full: {self.length} positions filled + {new_positions} new > "
                            f"max_length {self.max_length}; allocate a longer cache")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `k`, `v` `[B, heads, T, head_dim]` at `[length, length + T)` of `layer`; return the
        keys and values of positions `[0, length + T)` (views, no copy)."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            self.check_room(k.shape[2])
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def add_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Write the ids `[B, T]` of the positions about to be cached; return the ids of every position
        so far, `[B, length + T]` (a view)."""
        if self.token_ids is None:
            raise ValueError("this KV cache keeps no token ids; allocate it with track_tokens=True")
        self.check_room(ids.shape[1])
        end = self.length + ids.shape[1]
        self.token_ids[:, self.length:end] = ids
        return self.token_ids[:, :end]

    def advance(self, new_positions: int) -> None:
        """Mark `new_positions` more positions as filled (called once per forward, after all layers)."""
        self.check_room(new_positions)
        self.length += new_positions

    def select(self, batch_indices: torch.Tensor | list[int]) -> "KVCache":
        """A new cache holding only the given rows (in that order), e.g. to drop finished rows or
        split a batch; `self` is left unchanged."""
        index = torch.as_tensor(batch_indices, dtype=torch.long, device=self.keys[0].device)
        if index.dim() != 1 or index.numel() == 0:
            raise UserError(f"KV cache select needs a non-empty 1-D list of row indices, got shape {list(index.shape)}")
        if int(index.min()) < 0 or int(index.max()) >= self.batch_size:
            raise UserError(f"KV cache select: row indices must lie in [0, {self.batch_size}), "
                            f"got [{int(index.min())}, {int(index.max())}]")
        return KVCache([k.index_select(0, index) for k in self.keys],
                       [v.index_select(0, index) for v in self.values], self.length,
                       None if self.token_ids is None else self.token_ids.index_select(0, index))
