"""Learning rate: linear warm-up, then decay to `min_lr_ratio * lr` (CogView's recipe: cosine to 0.1x).

The schedule is a pure function of the number of optimizer steps taken; the scheduler object only
counts steps. DeepSpeed owns it (`deepspeed.initialize(lr_scheduler=...)`): the engine steps it after
every optimizer step it really takes (an fp16 step skipped for overflow does not advance it) and saves
and restores its `state_dict` with each checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from utils.lr_decay import DECAY_STYLES


def cosine_decay(lr: float, min_lr_ratio: float, progress: float) -> float:
    """Half a cosine from `lr` (progress 0) down to `min_lr_ratio * lr` (progress 1 and beyond).

    Shared by the transformer's schedule and train_vqvae.py, whose `progress` may also be a fraction of a
    CPU-time budget rather than of a step count.
    """
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)


@dataclass(frozen=True)
class LRSchedule:
    """`warmup_fraction` of `total_steps` rise linearly to `lr`; the rest decay by `decay_style`."""

    lr: float
    total_steps: int
    warmup_fraction: float = 0.01
    min_lr_ratio: float = 0.1
    decay_style: str = "cosine"

    def __post_init__(self) -> None:
        if self.decay_style not in DECAY_STYLES:
            raise ValueError(f"unknown lr decay style {self.decay_style!r}; choose one of {DECAY_STYLES}")
        if not 0.0 <= self.warmup_fraction <= 1.0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"warm-up fraction and min lr ratio must lie in [0, 1]: {self}")

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_fraction * self.total_steps)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        warmup = self.warmup_steps
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if self.decay_style == "constant" or self.total_steps <= warmup:
            return self.lr
        progress = min(1.0, (step - warmup) / (self.total_steps - warmup))
        if self.decay_style == "linear":
            return self.lr - (self.lr - self.lr * self.min_lr_ratio) * progress
        return cosine_decay(self.lr, self.min_lr_ratio, progress)


class WarmupDecayScheduler:
    """Sets every param group's lr to `schedule.lr_at(steps_taken)`; checkpointable by DeepSpeed."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule):
        self.optimizer = optimizer
        self.schedule = schedule
        self.steps_taken = 0
        self._apply()

    def _apply(self) -> None:
        lr = self.schedule.lr_at(self.steps_taken)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        """Called by the DeepSpeed engine after each optimizer step."""
        self.steps_taken += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_taken = int(state["steps_taken"])
        self._apply()
