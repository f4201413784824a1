"""Super-resolution's geometry, one for training and for inference: its condition and its windows.

The condition (`SR_CONDITIONS`, chosen by `preprocess_data.py --sr-condition`, recorded in the rows'
manifest and in every model trained on them) is what the model reads of the image it super-resolves:
"lowres" (CogView's, the default) the codes of the input itself, half the target's grid; "upsampled"
(CogView2's) the codes of the input bicubic-upsampled to the target's size, on the target's own grid, so
the model only has to sharpen what it reads (`condition_image`, `condition_grid`).

Magnifying a `G x G` code grid to `2G x 2G` (CogView's scheme) runs 9 overlapping windows of side `G` at
stride `G/2` over the target; window k = 3r + c reads the `G/2`-sided crop of the source at
(r*G/4, c*G/4) and writes the target at (r*G/2, c*G/2), with the token `[POS k]`. A model answers these
windows well only if it trained on exactly them, so the training data (`data_utils.dataset`, from rows with
highres codes) and generation (`generation.tasks`) both cut their crops here: with the "upsampled"
condition the window's condition is the crop of the upsampled codes at the same place as its target.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from utils.errors import UserError

NUM_WINDOWS = 9
SR_CONDITIONS = ("lowres", "upsampled")
DEFAULT_SR_CONDITION = "lowres"  # what rows and checkpoints that record no condition were made with


def checked_condition(condition: str) -> str:
    """`condition` if it is one of `SR_CONDITIONS`, else a one-line refusal."""
    if condition not in SR_CONDITIONS:
        raise UserError(f"unknown super-resolution condition {condition!r}; choose one of {', '.join(SR_CONDITIONS)}")
    return condition


def condition_grid(condition: str, input_grid: int) -> int:
    """The side of the condition codes of an input whose own codes are `input_grid` a side (its target is
    `2 * input_grid`): the input's grid for "lowres", the target's for "upsampled"."""
    return input_grid if checked_condition(condition) == "lowres" else 2 * input_grid


def condition_image(condition: str, image: Image.Image) -> Image.Image:
    """The picture whose codes condition the super-resolution of `image` (to twice its side): `image` itself
    for "lowres", `image` bicubic-upsampled to twice its side for "upsampled" (what generation's
    `Pipeline.encode_images` does to an image of another size)."""
    if checked_condition(condition) == "lowres":
        return image
    return image.resize((2 * image.width, 2 * image.height), Image.Resampling.BICUBIC)


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


def window_condition(window: Window, condition: str, codes, side: int):
    """The crop of the condition codes that `window` (of side `side`, the model's image grid) reads: the
    `side/2`-sided crop of the source's own codes for "lowres", the `side`-sided crop of the codes of the
    source upsampled, at the window's own place in the target, for "upsampled". For magnification the
    source is the `side x side` image; for the whole-image step (window 0 alone) its half-size input, whose
    condition the crop then covers whole. Works on arrays and tensors."""
    rows, cols = window.source_slices(side) if checked_condition(condition) == "lowres" else window.target_slices(side)
    return codes[rows, cols]


def window_crops(window: Window, condition: str, source: np.ndarray, highres: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A training sample's (condition, target) of `window`: the crop of the condition codes `source` (the
    image's own `G x G` codes, or the `2G x 2G` codes of it upsampled; `window_condition`) the window reads
    and the crop of the `2G x 2G` codes of the same image at twice its side that it writes."""
    side = highres.shape[0] // 2
    grid = condition_grid(condition, side)
    if highres.shape != (2 * side, 2 * side) or source.shape != (grid, grid):
        raise ValueError(f"{condition} window crops need {grid}x{grid} condition codes and 2G x 2G highres codes, "
                         f"got {source.shape} and {highres.shape}")
    return window_condition(window, condition, source, side), highres[window.target_slices(side)]
