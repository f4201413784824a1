"""Checks a (generated) image against the objects of a shapes prompt, as `shapes.md` specifies.

1. Snap every pixel to the nearest (squared RGB distance) of the 6 colours or white.
2. Split each colour into connected regions (4-connectivity: pixels touching only at a corner are
   apart; on blurred ground truth it counts half the spurious thin fringe regions that 8-connectivity
   does, and whole shapes stay connected). Regions of area <= 20 px (scaled by (size / 64)^2) are noise: they
   neither satisfy the prompt nor count as extra objects. The others are `detected` objects:
   - position: the cell holding the centre of the region's bounding box;
   - size: the nominal side (12 or 20 px, scaled) nearest to the mean of the box's width and height;
   - shape: the shape whose template drawn in the same box (`shapes.shape_mask`) has the highest
     intersection over union with the region (ties go to the first of `SHAPES`).
3. A prompt object is present when a detected object matches its colour, shape, size and position
   (each detected object can stand for one prompt object only); the image is correct when every prompt
   object is present and no other detected object is there.

For accuracy by attribute, each prompt object also gets one answer per attribute, judged on the
detected objects of its colour (colour is what names an object in a caption): `colour_ok` (there is
one), `position_ok` (one lies in the prompt's cell), `size_ok` (one has the prompt's size), `shape_ok`
(one has the prompt's shape). A rendered ground truth passes every check exactly, because `render`
draws with the same templates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from data_utils.shapes import BACKGROUND, COLOURS, SHAPES, SIZES, ShapeObject, cell_of, shape_mask
from utils.errors import UserError

PALETTE = np.array([*COLOURS.values(), BACKGROUND], dtype=np.int32)  # index len(COLOURS) is white
WHITE = len(COLOURS)
COLOUR_NAMES = list(COLOURS)
NOISE_AREA_64 = 20  # regions up to this many pixels (at 64 px) are ignored
_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


@dataclass
class CheckResult:
    correct: bool
    present: list[bool]  # per prompt object: matched in every attribute
    extras: int  # detected objects that stand for no prompt object
    colour_ok: list[bool]  # per prompt object, judged on the detected objects of its colour (module doc)
    position_ok: list[bool]
    size_ok: list[bool]
    shape_ok: list[bool]
    detected: list[ShapeObject]  # every region over the noise area, with its bbox


def snap_to_palette(pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> int [H, W] index of the nearest palette colour (6 = white)."""
    diff = pixels.astype(np.int32)[:, :, None, :] - PALETTE[None, None, :, :]
    return np.einsum("hwkc,hwkc->hwk", diff, diff).argmin(axis=2)


def label_regions(classes: np.ndarray, background: int) -> np.ndarray:
    """Connected regions (4-connectivity) of equal non-background class; background pixels get H*W.

    Each pixel starts with its own flat index as label and repeatedly takes the smallest label among its
    same-class neighbours; pointer jumping (label <- label of label) lets labels travel far in one pass,
    so it settles in a few vectorised passes. At the end every region carries its smallest pixel index.
    """
    height, width = classes.shape
    count = height * width
    foreground = classes != background
    labels = np.where(foreground, np.arange(count).reshape(height, width), count)
    padded_classes = np.pad(classes, 1, constant_values=-1)
    linked = [(padded_classes[1 + dy:1 + dy + height, 1 + dx:1 + dx + width] == classes) & foreground
              for dy, dx in _NEIGHBOURS]
    while True:
        padded = np.pad(labels, 1, constant_values=count)
        new = labels.copy()
        for (dy, dx), link in zip(_NEIGHBOURS, linked):
            np.minimum(new, np.where(link, padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width], count), out=new)
        flat = np.append(new.ravel(), count)  # flat[count] == count keeps the background fixed
        while True:
            jumped = flat[flat]
            if np.array_equal(jumped, flat):
                break
            flat = jumped
        new = flat[:-1].reshape(height, width)
        if np.array_equal(new, labels):
            return labels
        labels = new


def best_shape(region: np.ndarray) -> str:
    height, width = region.shape
    area = region.sum()
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        template = shape_mask(shape, width, height)
        intersection = np.count_nonzero(template & region)
        iou = intersection / (area + np.count_nonzero(template) - intersection)
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def detect_objects(pixels: np.ndarray) -> list[ShapeObject]:
    """Every region over the noise area of a square uint8 [S, S, 3] image, as objects with bboxes."""
    size = pixels.shape[0]
    classes = snap_to_palette(pixels)
    labels = label_regions(classes, WHITE)
    ids, areas = np.unique(labels[labels < labels.size], return_counts=True)
    min_area = NOISE_AREA_64 * (size / 64) ** 2
    large_side = sum(SIZES.values()) / 2 * size / 64  # mean side >= this: nearer to large than small
    detected = []
    for region_id in ids[areas > min_area]:
        y, x = divmod(int(region_id), size)  # the region's first pixel, which is its label
        ys, xs = np.nonzero(labels == region_id)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        region = labels[y0:y1, x0:x1] == region_id
        detected.append(ShapeObject(
            colour=COLOUR_NAMES[classes[y, x]],
            shape=best_shape(region),
            size="large" if (x1 - x0 + y1 - y0) / 2 >= large_side else "small",
            position=cell_of((x0 + x1) / 2, (y0 + y1) / 2, size),
            bbox=(x0, y0, x1, y1),
        ))
    return detected


def _as_pixels(image: Image.Image | np.ndarray, size: int | None) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    else:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise UserError(f"expected a uint8 image [H, W, 3], got {image.dtype} {list(image.shape)}")
        image = Image.fromarray(image, mode="RGB")
    if image.width != image.height:
        raise UserError(f"shapes images are square; got {image.width}x{image.height}")
    if size is not None and image.width != size:
        image = image.resize((size, size), Image.Resampling.BOX)
    return np.asarray(image)


def check_image(image: Image.Image | np.ndarray, objects: Sequence[ShapeObject],
                size: int | None = None) -> CheckResult:
    """Check `image` against the prompt's `objects` (bboxes unused).

    `size` is the canvas the prompt refers to; an image of another side is first resized to it (box
    filter). By default it is the image's own side.
    """
    detected = detect_objects(_as_pixels(image, size))
    used = [False] * len(detected)
    present = []
    for obj in objects:
        want = obj.spec()
        match = next((k for k, found in enumerate(detected) if not used[k] and found.spec() == want), None)
        if match is not None:
            used[match] = True
        present.append(match is not None)
    same_colour = [[found for found in detected if found.colour == obj.colour] for obj in objects]
    extras = used.count(False)
    return CheckResult(
        correct=all(present) and extras == 0,
        present=present,
        extras=extras,
        colour_ok=[bool(found) for found in same_colour],
        position_ok=[any(f.position == obj.position for f in found) for obj, found in zip(objects, same_colour)],
        size_ok=[any(f.size == obj.size for f in found) for obj, found in zip(objects, same_colour)],
        shape_ok=[any(f.shape == obj.shape for f in found) for obj, found in zip(objects, same_colour)],
        detected=detected,
    )
