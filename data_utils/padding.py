"""Token sequences of different lengths stacked into one batch: the one padding rule of the project.

Right padding (training batches, scoring): attention is causal, so the pads after a sequence change
nothing in it and need no mask. Left padding (decoding prompts): every row's last real token sits in
the last column, so one step appends a token to all rows at once; there the pads come first and must
be masked out of attention, which `real` says where. Either way a pad holds `pad_id` at position 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

IdRow = Sequence[int] | torch.Tensor


@dataclass(frozen=True)
class PaddedBatch:
    """`[B, L]` token ids, their positions, and which entries are real tokens (not pads)."""

    ids: torch.Tensor
    positions: torch.Tensor
    real: torch.Tensor

    def to(self, device: torch.device | str) -> "PaddedBatch":
        return PaddedBatch(self.ids.to(device), self.positions.to(device), self.real.to(device))


def pad_sequences(ids: Sequence[IdRow], positions: Sequence[IdRow], pad_id: int,
                  side: Literal["left", "right"] = "right") -> PaddedBatch:
    """Rows `ids[i]` (with `positions[i]`, of the same length) padded to the longest row on `side`."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if len(ids) != len(positions) or not ids:
        raise ValueError(f"need one position row per id row (at least one), got {len(ids)} and {len(positions)}")
    length = max(len(row) for row in ids)
    batch = PaddedBatch(torch.full((len(ids), length), pad_id, dtype=torch.long),
                        torch.zeros((len(ids), length), dtype=torch.long),
                        torch.zeros((len(ids), length), dtype=torch.bool))
    for row, (row_ids, row_positions) in enumerate(zip(ids, positions)):
        if len(row_ids) != len(row_positions):
            raise ValueError(f"row {row} has {len(row_ids)} ids but {len(row_positions)} positions")
        span = slice(length - len(row_ids), length) if side == "left" else slice(0, len(row_ids))
        batch.ids[row, span] = torch.as_tensor(row_ids, dtype=torch.long)
        batch.positions[row, span] = torch.as_tensor(row_positions, dtype=torch.long)
        batch.real[row, span] = True
    return batch
