"""The windows of super-resolution's magnification: one geometry for training and for inference.

Magnifying a `G x G` code grid to `2G x 2G` (CogView's scheme) runs 9 overlapping windows of side `G` at
stride `G/2` over the target; window k = 3r + c reads the `G/2`-sided crop of the source at
(r*G/4, c*G/4) and writes the target at (r*G/2, c*G/2), with the token `[POS k]`. A model answers these
windows well only if it trained on exactly them, so the training data (`data_utils.dataset`, from rows with
highres codes) and generation (`generation.tasks`) both cut their crops here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.errors import UserError

NUM_WINDOWS = 9


@dataclass(frozen=True)
class Window:
    """One window of the magnification: its index (raster order, its `[POS k]` token and its seed offset)
    and its top-left corner in the target grid; the source crop's corner is half of it."""

    index: int
    top: int
    left: int

    @property
    def source_top(self) -> int:
        return self.top // 2

    @property
    def source_left(self) -> int:
        return self.left // 2

    def target_slices(self, side: int) -> tuple[slice, slice]:
        """(rows, columns) of this window in the `2*side` target: a `side x side` block."""
        return slice(self.top, self.top + side), slice(self.left, self.left + side)

    def source_slices(self, side: int) -> tuple[slice, slice]:
        """(rows, columns) of this window's condition in the `side x side` source: a `side/2`-sided block."""
        half = side // 2
        return slice(self.source_top, self.source_top + half), slice(self.source_left, self.source_left + half)


def magnify_windows(grid: int) -> list[Window]:
    """The 9 windows that cover a `2*grid` target with `grid`-sided windows at stride `grid/2`, in raster
    order (window k = 3*r + c, corner (r*grid/2, c*grid/2)). Generation runs them in this order; each
    one's codes that earlier windows already produced are fixed, not sampled."""
    if grid % 4:
        raise UserError(f"super-resolution windows need a grid side divisible by 4, got {grid}")
    stride = grid // 2
    return [Window(3 * r + c, r * stride, c * stride) for r in range(3) for c in range(3)]


def window_crops(window: Window, image: np.ndarray, highres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A training sample's (condition, target) of `window`: the crop of the `G x G` image codes the window
    reads and the crop of the `2G x 2G` codes of the same image at twice its side that it writes."""
    side = image.shape[0]
    if image.shape != (side, side) or highres.shape != (2 * side, 2 * side):
        raise ValueError(f"window crops need G x G image codes and 2G x 2G highres codes, got {image.shape} "
                         f"and {highres.shape}")
    return image[window.source_slices(side)], highres[window.target_slices(side)]
