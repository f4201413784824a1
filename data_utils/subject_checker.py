"""Checks a (generated) image against a prompt with the `sks square`, as `subject.md` specifies.

It extends `shapes_checker` by one colour and one test:
1. Snap every pixel to the nearest of white, the six shapes colours and teal.
2. Regions (4-connectivity) of one colour over the noise area are detected objects, each with its cell,
   size class and best-matching shape, exactly as in `shapes_checker`; each also gets `is_frame`: at least
   60% intersection over union with the frame drawn in its bounding box (`subject.frame_mask`), and at
   least 80% white among the pixels of the central square of half the box's side.
3. A subject of the prompt is present when a detected object of its colour (teal, or the asked colour for
   property change) lies in its cell, has its size and is a frame; an ordinary object is present as in
   `shapes` (colour, shape, size, cell). Each detected object stands for one prompt object at most; the
   image is fully correct when every prompt object is present and no other detected object is there.
   `frames` counts the detected frames, so class preservation can ask for "a filled square, no frame".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from data_utils.shapes import BACKGROUND, COLOURS, SIZES, cell_of
from data_utils.shapes_checker import NOISE_AREA_64, _as_pixels, best_shape, label_regions
from data_utils.subject import TEAL, SceneObject, SubjectObject, frame_mask

COLOUR_NAMES = [*COLOURS, "white", "teal"]
PALETTE = np.array([*COLOURS.values(), BACKGROUND, TEAL], dtype=np.int32)
WHITE = COLOUR_NAMES.index("white")
FRAME_MIN_IOU = 0.6
FRAME_MIN_WHITE_CENTRE = 0.8


@dataclass(frozen=True)
class Detected:
    colour: str
    shape: str
    size: str
    position: str
    bbox: tuple[int, int, int, int]
    is_frame: bool
    frame_iou: float
    white_centre: float


@dataclass
class SubjectCheck:
    correct: bool
    present: list[bool]  # per prompt object
    extras: int
    frames: int  # detected objects that pass the frame test (any colour)
    detected: list[Detected]


def snap(pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> int [H, W] index into COLOUR_NAMES."""
    diff = pixels.astype(np.int32)[:, :, None, :] - PALETTE[None, None, :, :]
    return np.einsum("hwkc,hwkc->hwk", diff, diff).argmin(axis=2)


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
    size = pixels.shape[0]
    classes = snap(pixels)
    labels = label_regions(classes, WHITE)
    ids, areas = np.unique(labels[labels < labels.size], return_counts=True)
    large_side = sum(SIZES.values()) / 2 * size / 64
    found = []
    for region_id in ids[areas > NOISE_AREA_64 * (size / 64) ** 2]:
        y, x = divmod(int(region_id), size)
        ys, xs = np.nonzero(labels == region_id)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        region = labels[y0:y1, x0:x1] == region_id
        iou, white = frame_scores(region, classes[y0:y1, x0:x1] == WHITE)
        found.append(Detected(
            colour=COLOUR_NAMES[classes[y, x]], shape=best_shape(region),
            size="large" if (x1 - x0 + y1 - y0) / 2 >= large_side else "small",
            position=cell_of((x0 + x1) / 2, (y0 + y1) / 2, size), bbox=(x0, y0, x1, y1),
            is_frame=iou >= FRAME_MIN_IOU and white >= FRAME_MIN_WHITE_CENTRE, frame_iou=iou, white_centre=white))
    return found


def _matches(found: Detected, want: SceneObject) -> bool:
    if found.size != want.size or found.position != want.position:
        return False
    if isinstance(want, SubjectObject):
        return found.colour == (want.colour or "teal") and found.is_frame
    return found.colour == want.colour and found.shape == want.shape


def check_subject_image(image: Image.Image | np.ndarray, objects: Sequence[SceneObject],
                        size: int | None = None) -> SubjectCheck:
    """Check `image` against the prompt's objects (subjects and ordinary shapes; bboxes unused)."""
    detected = detect(_as_pixels(image, size))
    used = [False] * len(detected)
    present = []
    for want in objects:
        match = next((k for k, found in enumerate(detected) if not used[k] and _matches(found, want)), None)
        if match is not None:
            used[match] = True
        present.append(match is not None)
    extras = used.count(False)
    return SubjectCheck(correct=all(present) and extras == 0, present=present, extras=extras,
                        frames=sum(found.is_frame for found in detected), detected=detected)


def is_class_preserved(check: SubjectCheck) -> bool:
    """An ordinary square prompt still gives its filled square: fully correct and no frame anywhere."""
    return check.correct and check.frames == 0

