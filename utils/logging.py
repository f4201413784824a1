"""Console logging and TensorBoard scalars, the same for every long job."""
from __future__ import annotations

import logging
import os
from typing import Mapping

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """A module logger; configures the root handler once (level from $LOG_LEVEL, default INFO)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format=_FORMAT, datefmt="%H:%M:%S")
    return logging.getLogger(name)


class TensorBoardLogger:
    """Writes scalars to TensorBoard; a no-op when `log_dir` is None (non-zero ranks, tests)."""

    def __init__(self, log_dir: str | os.PathLike | None, purge_step: int | None = None):
        self._writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events past a resumed step so curves do not double back.
            self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            self._writer.add_scalar(name, float(value), step)

    def image(self, tag: str, image_chw, step: int) -> None:
        if self._writer is not None:
            self._writer.add_image(tag, image_chw, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
