"""Checks a (generated) image against a prompt with the `sks square`, as `subject.md` specifies.

It extends `shapes_checker` by one colour and one test, reading every other word as it does:
1. Snap every pixel to the nearest of white, the six shapes colours and teal.
2. Every connected region (4-connectivity) of one colour, whatever its area, gets its cell, size class and
   best-matching shape exactly as in `shapes_checker` (None where the spec gives no single answer), and
   `is_frame`: at least 60% intersection over union with the frame drawn in its bounding box
   (`subject.frame_mask`), and at least 80% white among the pixels of the central square of half the box's
   side.
3. A subject of the prompt is present when a region of its colour (teal, or the asked colour for property
   change) lies in its cell, has its size and is a frame; an ordinary object is present as in `shapes`
   (colour, shape, size, cell). Each region stands for one prompt object at most; the image is fully
   correct when every prompt object is present and no other region of area over 20 px (scaled by
   (size/64)^2) is there. `frames` counts the frames over that area, so class preservation can ask for
   "a filled square, no frame".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from data_utils.shapes import BACKGROUND, COLOURS, BBox
from data_utils.shapes_checker import (_as_pixels, assign, best_shape, cell_at, count_extras, find_regions,
                                       noise_area, size_class, snap)
from data_utils.subject import TEAL, SceneObject, SubjectObject, frame_mask

COLOUR_NAMES = [*COLOURS, "white", "teal"]
PALETTE = np.array([*COLOURS.values(), BACKGROUND, TEAL], dtype=np.int32)
WHITE = COLOUR_NAMES.index("white")
FRAME_MIN_IOU = 0.6
FRAME_MIN_WHITE_CENTRE = 0.8


@dataclass(frozen=True)
class Detected:
    colour: str
    shape: str | None
    size: str | None
    position: str | None
    bbox: BBox
    area: int
    is_frame: bool
    frame_iou: float
    white_centre: float


@dataclass
class SubjectCheck:
    correct: bool
    present: list[bool]  # per prompt object
    extras: int
    frames: int  # detected objects that pass the frame test (any colour)
    detected: list[Detected]  # every region over the noise area, and any smaller one standing for an object


def frame_scores(region: np.ndarray, white: np.ndarray) -> tuple[float, float]:
    """(IoU of `region` with the frame of its box, white fraction of the box's central half-side square);
    both arrays are the box's crop."""
    height, width = region.shape
    template = frame_mask(width, height)
    intersection = np.count_nonzero(template & region)
    iou = intersection / (np.count_nonzero(region) + np.count_nonzero(template) - intersection)
    half_w, half_h = max(round(width / 2), 1), max(round(height / 2), 1)
    x0, y0 = (width - half_w) // 2, (height - half_h) // 2
    return float(iou), float(white[y0:y0 + half_h, x0:x0 + half_w].mean())


def detect(pixels: np.ndarray) -> list[Detected]:
    """Every connected region of a square uint8 [S, S, 3] image, read as `subject.md` reads it."""
    canvas = pixels.shape[0]
    classes = snap(pixels, PALETTE)

    def describe(colour: int, mask: np.ndarray, bbox: BBox, area: int) -> Detected:
        x0, y0, x1, y1 = bbox
        iou, white = frame_scores(mask, classes[y0:y1, x0:x1] == WHITE)
        return Detected(colour=COLOUR_NAMES[colour], shape=best_shape(mask), size=size_class(x1 - x0, y1 - y0, canvas),
                        position=cell_at(x0, y0, x1, y1, canvas), bbox=bbox, area=area,
                        is_frame=iou >= FRAME_MIN_IOU and white >= FRAME_MIN_WHITE_CENTRE, frame_iou=iou,
                        white_centre=white)

    return find_regions(classes, WHITE, describe)


def _matches(found: Detected, want: SceneObject) -> bool:
    if found.size != want.size or found.position != want.position:
        return False
    if isinstance(want, SubjectObject):
        return found.colour == (want.colour or "teal") and found.is_frame
    return found.colour == want.colour and found.shape == want.shape


def check_subject_image(image: Image.Image | np.ndarray, objects: Sequence[SceneObject],
                        size: int | None = None) -> SubjectCheck:
    """Check `image` against the prompt's objects (subjects and ordinary shapes; bboxes unused)."""
    pixels = _as_pixels(image, size)
    canvas = pixels.shape[0]
    regions = detect(pixels)
    chosen = assign(regions, objects, _matches)
    counted = [region for k, region in enumerate(regions) if region.area > noise_area(canvas) or k in chosen]
    present = [k is not None for k in chosen]
    extras = count_extras(regions, chosen, canvas)
    return SubjectCheck(correct=all(present) and extras == 0, present=present, extras=extras,
                        frames=sum(found.is_frame for found in counted), detected=counted)


def is_class_preserved(check: SubjectCheck) -> bool:
    """An ordinary square prompt still gives its filled square: fully correct and no frame anywhere."""
    return check.correct and check.frames == 0

