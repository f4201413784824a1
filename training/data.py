"""The training and validation streams: which global sample positions each rank reads, and when.

`TaskSequenceDataset` turns a global sample position into a sample by a pure function of
(seed, position). Iteration `i` consumes the global batch of positions `[P, P + G)` with
`P = data_position` at the start of the iteration and `G = micro x accumulation x world`. Micro-step
`m` of rank `r` reads `P + (m * world + r) * micro + [0, micro)`, so any split of the same global
batch over processes and accumulation steps sees the same micro-batches. A resumed run only needs
the position reached; worker processes and their number change nothing.
"""
from __future__ import annotations

from functools import partial
from typing import Iterator, Mapping

import torch
from torch.utils.data import DataLoader, Sampler

from data_utils.dataset import TaskSequenceDataset, collate_sequences


class MicroBatchPositions(Sampler[list[int]]):
    """This rank's micro-batches of global sample positions, from `start_position` on, without end."""

    def __init__(self, start_position: int, micro_batch: int, accumulation: int, world_size: int, rank: int):
        self.start_position = start_position
        self.micro_batch = micro_batch
        self.accumulation = accumulation
        self.world_size = world_size
        self.rank = rank

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start_position
        while True:
            for micro_step in range(self.accumulation):
                first = position + (micro_step * self.world_size + self.rank) * self.micro_batch
                yield list(range(first, first + self.micro_batch))
            position += self.global_batch


def train_loader(dataset: TaskSequenceDataset, positions: MicroBatchPositions, pad_id: int,
                 num_workers: int, one_task_per_micro_batch: bool = False) -> DataLoader:
    """Micro-batches in order, prepared by `num_workers` processes ahead of the training step; with
    `one_task_per_micro_batch` each micro-batch's samples share one task draw (`dataset.task_block`, set here
    because the micro-batch is settled only once the DeepSpeed config is).

    The loader gets its own generator: by default it would seed its workers from the global torch
    generator, and that draw would shift the dropout stream of a resumed run against an uninterrupted one.
    (The samples themselves use no torch randomness.)
    """
    dataset.task_block = positions.micro_batch if one_task_per_micro_batch else 1
    return DataLoader(dataset, batch_sampler=positions, collate_fn=partial(collate_sequences, pad_id=pad_id),
                      num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0))


def validation_batches(dataset: TaskSequenceDataset, micro_batch: int, num_batches: int, world_size: int,
                       rank: int, pad_id: int) -> Iterator[Mapping]:
    """The fixed validation micro-batches of this rank: positions `[0, num_batches * micro * world)`,
    split between ranks like the training stream."""
    for step in range(num_batches):
        first = (step * world_size + rank) * micro_batch
        yield collate_sequences([dataset[p] for p in range(first, first + micro_batch)], pad_id)
