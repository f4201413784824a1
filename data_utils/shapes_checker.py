"""Checks a (generated) image against the objects of a shapes prompt, to the letter of `shapes.md`.

The spec's paragraph, and how each of its words is read here:

1. "snapping every pixel to the nearest of the 6 colours or white": nearest in RGB (Euclidean distance;
   an exact tie goes to the earlier of `COLOURS`, then white).
2. "form a connected region": pixels of one snapped colour form regions by 4-connectivity (side
   neighbours; pixels touching only at a corner are apart). Every drawn shape is 4-connected. Every region
   of the prompt object's colour is a candidate for it, whatever its area; the object is present when one
   of them passes 3-5. A colour may form several regions: the others are judged by 6.
3. "whose bounding-box centre lies in the prompt's cell": the box is half-open over the region's pixels,
   `(x0, y0, x1, y1)`, centre `((x0 + x1) / 2, (y0 + y1) / 2)` (a pixel spans [i, i + 1), as the spec's
   integer centres of even-sided boxes imply); the cells split the canvas in thirds. A centre exactly on a
   cell border (possible at sizes divisible by 96) lies in no single cell and matches none.
4. "whose size class (nearest of 12 or 20 px) matches": the box's width and its height must each be
   nearer to the prompt's nominal side (12 or 20 px at 64, scaled by size/64) than to the other; a side
   exactly between (16 px at 64) is of neither class. So a region whose sides disagree has no size.
5. "whose best-matching shape template (by intersection over union with each of the 4 shapes drawn in
   the same bounding box) is the prompt's shape": the templates are `shapes.shape_mask` at the box's width
   and height (the renderer's own masks); IoUs are compared exactly (as fractions), and the prompt's shape
   must be the only best: a tie for the best IoU is no shape.
6. "nothing else of area over 20 px is there": every region (any colour but white) that stands for no
   prompt object and has an area over 20 px makes the image wrong. 20 px is an area on the 64 px canvas;
   the spec scales lengths by size/64, so this area scales by (size/64)^2 (5 px at 32, 80 px at 128).
   Each region stands for one prompt object at most (the largest matching is used).

For accuracy by attribute, each prompt object also gets one answer per attribute, judged on the regions
of its colour that count (over the noise area, or the one standing for it): `colour_ok` (there is one),
`position_ok` (one lies in the prompt's cell), `size_ok` (one has the prompt's size class), `shape_ok` (one
has the prompt's shape as its only best template). A rendered ground truth passes every check exactly,
because `render` draws with the same templates.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Callable, Protocol, Sequence, TypeVar

import numpy as np
from PIL import Image

from data_utils.shapes import BACKGROUND, COLOURS, POSITIONS, SHAPES, SIZES, BBox, ShapeObject, shape_mask
from utils.errors import UserError

PALETTE = np.array([*COLOURS.values(), BACKGROUND], dtype=np.int32)  # index len(COLOURS) is white
WHITE = len(COLOURS)
COLOUR_NAMES = list(COLOURS)
NOISE_AREA_64 = 20  # "nothing else of area over 20 px": an area on the 64 px canvas
_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


class HasArea(Protocol):
    area: int


RegionLike = TypeVar("RegionLike", bound=HasArea)
Candidate = TypeVar("Candidate")
Wanted = TypeVar("Wanted")


@dataclass(frozen=True)
class Region:
    """One connected region of one snapped colour, with what the spec's test reads from it.

    `size`, `shape` and `position` are None where the spec's words give no single answer (see the module
    docstring: sides of different classes or exactly between them, a tie for the best template, a centre
    on a cell border)."""

    colour: str
    shape: str | None
    size: str | None
    position: str | None
    bbox: BBox
    area: int

    def matches(self, obj: ShapeObject) -> bool:
        """Does this region make the prompt object `obj` present?"""
        return (self.colour, self.shape, self.size, self.position) == (obj.colour, obj.shape, obj.size, obj.position)


@dataclass
class CheckResult:
    correct: bool
    present: list[bool]  # per prompt object: a region of its colour passes every test
    extras: int  # regions over the noise area that stand for no prompt object
    colour_ok: list[bool]  # per prompt object, judged on the regions of its colour that count (module doc)
    position_ok: list[bool]
    size_ok: list[bool]
    shape_ok: list[bool]
    detected: list[Region]  # every region over the noise area, and any smaller one standing for an object


def snap(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> int [H, W] index of the nearest `palette` colour (Euclidean; ties to the lower index)."""
    diff = pixels.astype(np.int32)[:, :, None, :] - palette[None, None, :, :]
    return np.einsum("hwkc,hwkc->hwk", diff, diff).argmin(axis=2)


def snap_to_palette(pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> int [H, W] index of the nearest of the 6 colours or white (6 = white)."""
    return snap(pixels, PALETTE)


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


@lru_cache(maxsize=4096)
def _templates(width: int, height: int) -> tuple[np.ndarray, ...]:
    return tuple(shape_mask(shape, width, height) for shape in SHAPES)


def best_shape(region: np.ndarray) -> str | None:
    """The shape whose template in the region's box [h, w] has the highest IoU with it; None on a tie."""
    height, width = region.shape
    area = int(np.count_nonzero(region))
    ious = []
    for template in _templates(width, height):
        intersection = int(np.count_nonzero(template & region))
        ious.append(Fraction(intersection, area + int(np.count_nonzero(template)) - intersection))
    best = max(ious)
    return SHAPES[ious.index(best)] if ious.count(best) == 1 else None


def size_class(width: int, height: int, canvas: int) -> str | None:
    """The size whose nominal side (scaled to `canvas`) both box sides are nearer to than to the other's."""
    def nearest(side: int) -> str | None:
        distance = {name: abs(side * 64 - nominal * canvas) for name, nominal in SIZES.items()}  # x64: exact
        best = min(distance.values())
        names = [name for name, d in distance.items() if d == best]
        return names[0] if len(names) == 1 else None

    width_class = nearest(width)
    return width_class if width_class == nearest(height) else None


def cell_at(x0: int, y0: int, x1: int, y1: int, canvas: int) -> str | None:
    """The cell holding the box's centre (thirds of the canvas); None for a centre on a cell border."""
    def third(low: int, high: int) -> int | None:
        # centre (low + high) / 2 in third k  <=>  k * canvas / 3 <= centre < (k + 1) * canvas / 3
        scaled = 3 * (low + high)  # 6 x the centre, against borders at 2 * k * canvas
        k, remainder = divmod(scaled, 2 * canvas)
        return None if remainder == 0 and k in (1, 2) else min(k, 2)

    col, row = third(x0, x1), third(y0, y1)
    return None if col is None or row is None else POSITIONS[row * 3 + col]


def noise_area(canvas: int) -> float:
    """Regions of at most this area are not "something else" (20 px at 64, scaled by (canvas / 64)^2)."""
    return NOISE_AREA_64 * (canvas / 64) ** 2


def find_regions(classes: np.ndarray, background: int,
                 describe: Callable[[int, np.ndarray, BBox, int], RegionLike]) -> list[RegionLike]:
    """Every connected region of `classes` but `background`, in raster order of its first pixel, as
    `describe(class, mask of the region in its box, box, area)` makes it."""
    size = classes.shape[0]
    labels = label_regions(classes, background)
    ids, areas = np.unique(labels[labels < labels.size], return_counts=True)
    regions = []
    for region_id, area in zip(ids.tolist(), areas.tolist()):
        y, x = divmod(region_id, size)  # the region's first pixel, which is its label
        ys, xs = np.nonzero(labels == region_id)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        regions.append(describe(int(classes[y, x]), labels[y0:y1, x0:x1] == region_id, (x0, y0, x1, y1), area))
    return regions


def find_shape_regions(pixels: np.ndarray) -> list[Region]:
    """Every connected region of a square uint8 [S, S, 3] image, each read as the spec's test reads it."""
    canvas = pixels.shape[0]

    def describe(colour: int, mask: np.ndarray, bbox: BBox, area: int) -> Region:
        x0, y0, x1, y1 = bbox
        return Region(COLOUR_NAMES[colour], best_shape(mask), size_class(x1 - x0, y1 - y0, canvas),
                      cell_at(x0, y0, x1, y1, canvas), bbox, area)

    return find_regions(snap_to_palette(pixels), WHITE, describe)


def assign(regions: Sequence[Candidate], wanted: Sequence[Wanted],
           matches: Callable[[Candidate, Wanted], bool]) -> list[int | None]:
    """For each wanted object the index of the region standing for it (None: absent), each region standing
    for one object at most, as many objects present as possible (augmenting paths; ties: earlier regions)."""
    owner: dict[int, int] = {}  # region index -> wanted index

    def place(want: int, seen: set[int]) -> bool:
        for k, region in enumerate(regions):
            if k not in seen and matches(region, wanted[want]):
                seen.add(k)
                if k not in owner or place(owner[k], seen):
                    owner[k] = want
                    return True
        return False

    for want in range(len(wanted)):
        place(want, set())
    chosen: list[int | None] = [None] * len(wanted)
    for k, want in owner.items():
        chosen[want] = k
    return chosen


def count_extras(regions: Sequence[HasArea], chosen: Sequence[int | None], canvas: int) -> int:
    """Regions over the noise area that stand for no prompt object: the spec's "something else"."""
    used = {k for k in chosen if k is not None}
    return sum(1 for k, region in enumerate(regions) if k not in used and region.area > noise_area(canvas))


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
    pixels = _as_pixels(image, size)
    canvas = pixels.shape[0]
    regions = find_shape_regions(pixels)
    chosen = assign(regions, objects, Region.matches)
    counted = [region for k, region in enumerate(regions) if region.area > noise_area(canvas) or k in chosen]
    same_colour = [[region for region in counted if region.colour == obj.colour] for obj in objects]
    present = [k is not None for k in chosen]
    extras = count_extras(regions, chosen, canvas)
    return CheckResult(
        correct=all(present) and extras == 0,
        present=present,
        extras=extras,
        colour_ok=[bool(found) for found in same_colour],
        position_ok=[any(r.position == obj.position for r in found) for obj, found in zip(objects, same_colour)],
        size_ok=[any(r.size == obj.size for r in found) for obj, found in zip(objects, same_colour)],
        shape_ok=[any(r.shape == obj.shape for r in found) for obj, found in zip(objects, same_colour)],
        detected=counted,
    )
