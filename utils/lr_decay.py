"""The names of the learning-rate decay styles, below both the command line and the schedule.

`arguments.py` offers them as `--lr-decay-style` choices and `training.lr_schedule` implements them;
keeping the names here lets the command line list them without importing training code (and torch).
"""
from __future__ import annotations

DECAY_STYLES = ("cosine", "linear", "constant")
