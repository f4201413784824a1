"""Extra objects for VQ-VAE training images (`train_vqvae.py --variety-objects`): any colour, filled or hollow.

Why: the `shapes` images hold six colours and filled shapes only, so a VQ-VAE trained on them has codes for
nothing else. It splits an unseen colour such as the subject's teal (`../shared/datasets/subject.md`) into
the codes of the nearest shapes colours and fills the hollow of a small frame, and a transformer on top of
a frozen tokenizer can then never draw the subject, however it is fine-tuned. Drawing, over a share of the
training images, extra objects in colours from the whole RGB cube, filled or as outlines of any border
width, teaches the tokenizer colour and hollowness in general.

What it never shows: the subject itself. The subject spec allows exactly its four instance images as
pictures of the subject, so a tokenizer that had seen teal frames would leak the benchmark. Hence:
- no colour within `TEAL_EXCLUSION` RGB levels (Euclidean) of teal (0, 150, 150) is drawn;
- an object whose colour the subject checker would snap to teal (`subject_checker.snap`) is drawn filled,
  never hollow, so nothing in these images can pass the checker's frame test in teal.
Near-white colours (within `WHITE_EXCLUSION` of white) are left out too: on the white canvas they would
be invisible objects.

Only the VQ-VAE's training images get these objects: its validation images, and every image the
transformer trains on, stay exactly `shapes` as specified. The draw of item `index` is a pure function of
(seed, index), from a random stream of its own, so the shapes images underneath are those of the spec.
"""
from __future__ import annotations

import numpy as np

from data_utils.shapes import BACKGROUND, SHAPES, shape_mask
from data_utils.subject import TEAL
from data_utils.shapes_checker import snap
from data_utils.subject_checker import COLOUR_NAMES, PALETTE

# The third seed word keeps these draws apart from the shapes items' own `default_rng([seed, index])`.
VARIETY_STREAM = 0x5EED
MAX_EXTRA_OBJECTS = 3
SIDE_RANGE_64 = (6, 24)  # bounding-box side in px at 64 px, both ends included; the shapes sizes are 12 and 20
TEAL_EXCLUSION = 40.0
WHITE_EXCLUSION = 80.0
TEAL_INDEX = COLOUR_NAMES.index("teal")


def snaps_to_teal(colour: tuple[int, int, int]) -> bool:
    """Whether the subject checker would read this colour as teal."""
    return int(snap(np.array([[colour]], dtype=np.uint8), PALETTE)[0, 0]) == TEAL_INDEX


def variety_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A colour uniform over the RGB cube less the balls around teal and white (rejection sampling)."""
    while True:
        colour = rng.integers(0, 256, size=3)
        if (np.linalg.norm(colour - np.array(TEAL)) > TEAL_EXCLUSION
                and np.linalg.norm(colour - np.array(BACKGROUND)) > WHITE_EXCLUSION):
            return int(colour[0]), int(colour[1]), int(colour[2])


def outline_mask(shape: str, side: int, border: int) -> np.ndarray:
    """The shape of bounding box `side` less the same shape shrunk by `border` px on every side: a hollow
    shape whose rim is about `border` px wide (for the square exactly the subject spec's frame rule)."""
    mask = shape_mask(shape, side, side)
    inner = side - 2 * border
    if inner > 0:
        mask[border:border + inner, border:border + inner] &= ~shape_mask(shape, inner, inner)
    return mask


def add_variety_objects(image: np.ndarray, seed: int, index: int, fraction: float) -> np.ndarray:
    """`image` (uint8 [S, S, 3], S a multiple of 32) with 1 to `MAX_EXTRA_OBJECTS` extra objects drawn on
    top when item `index`'s draw falls below `fraction`, else `image` itself.

    Each object: one of the four shapes, a side uniform in `SIDE_RANGE_64` (scaled to S), anywhere wholly
    inside the canvas, a `variety_colour`, and filled or (half of the time, unless its colour reads as teal)
    hollow with a border uniform in [1, side // 3] px.
    """
    rng = np.random.default_rng([seed, index, VARIETY_STREAM])
    if rng.random() >= fraction:
        return image
    size = image.shape[0]
    low, high = (max(round(side * size / 64), 2) for side in SIDE_RANGE_64)
    canvas = image.copy()
    for _ in range(rng.integers(1, MAX_EXTRA_OBJECTS + 1)):
        shape = SHAPES[rng.integers(len(SHAPES))]
        side = int(rng.integers(low, high + 1))
        x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        colour = variety_colour(rng)
        hollow = rng.random() < 0.5 and not snaps_to_teal(colour)
        border = int(rng.integers(1, max(side // 3, 1) + 1))
        mask = outline_mask(shape, side, border) if hollow else shape_mask(shape, side, side)
        canvas[y0:y0 + side, x0:x0 + side][mask] = colour
    return canvas
