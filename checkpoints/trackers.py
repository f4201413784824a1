"""The files that name a save folder's newest iteration: CogView's and DeepSpeed's, read and written in one place.

    latest_checkpointed_iteration.txt   CogView's tracker (and ours): the iteration number
    latest                              DeepSpeed's own, which its tools (zero_to_fp32.py ...) read

Training writes both; a folder written by CogView has the first, one written by DeepSpeed alone the
second (its tag need not be a number). The first one present is the one that counts.
"""
from __future__ import annotations

import os
from pathlib import Path

from utils.errors import UserError
from utils.files import atomic_write_text

TRACKER_FILE = "latest_checkpointed_iteration.txt"
DEEPSPEED_LATEST_FILE = "latest"
LATEST_FILES = (TRACKER_FILE, DEEPSPEED_LATEST_FILE)


def _read_tracker(save_dir: Path) -> tuple[Path, str] | None:
    """The first tracker file present and the folder name it holds, checked to be an existing folder."""
    for name in LATEST_FILES:
        path = save_dir / name
        if path.is_file():
            tag = path.read_text(encoding="utf-8").strip()
            if not tag or not (save_dir / tag).is_dir():
                raise UserError(f"{path} names iteration {tag[:40]!r}, but {save_dir / tag} is not a folder")
            return path, tag
    return None


def read_latest_tag(save_dir: str | os.PathLike) -> str | None:
    """The iteration folder name the trackers of `save_dir` give, or None when it has no tracker.

    A tracker that is empty or names a folder that is not there is a one-line `UserError`.
    """
    found = _read_tracker(Path(save_dir))
    return None if found is None else found[1]


def read_latest_iteration(save_dir: str | os.PathLike) -> int | None:
    """The newest complete iteration in `save_dir` as a number (what training resumes from), or None."""
    found = _read_tracker(Path(save_dir))
    if found is None:
        return None
    path, tag = found
    if not tag.isdigit():
        raise UserError(f"{path} should hold an iteration number, found {tag[:40]!r}")
    return int(tag)


def write_latest_iteration(save_dir: str | os.PathLike, iteration: int) -> None:
    """Point both trackers at `iteration`, each atomically (CogView's first, as it is the one read first)."""
    save_dir = Path(save_dir)
    atomic_write_text(save_dir / TRACKER_FILE, f"{iteration}\n")
    atomic_write_text(save_dir / DEEPSPEED_LATEST_FILE, str(iteration))


def checkpoint_iteration(path: str | os.PathLike) -> int | None:
    """The training iteration a checkpoint path stands for: the newest of a save folder, or the number an
    iteration folder is named by; None for other layouts (an export, CogView's release file)."""
    path = Path(path)
    if not path.is_dir():
        return None
    tag = read_latest_tag(path)
    name = path.name if tag is None else tag
    return int(name) if name.isdigit() else None
