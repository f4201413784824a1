"""The built-in `shapes` dataset: captioned images of coloured shapes, a pure function of (seed, index).

Specification: `../shared/datasets/shapes.md` (summarised in `docs/datasets.md`). Outside checkers rely
on it, so this module follows it to the pixel; choices the spec leaves open are stated where they are made:

- Pixel rule. A shape with bounding box `[x0, x0 + s) x [y0, y0 + s)` covers the pixels whose centre lies
  in it (the triangle: whose bottom-edge midpoint lies in it, so its apex row is drawn too), evaluated in
  exact integer arithmetic. Every shape therefore fills its whole nominal box, edges are hard, and
  `render` is exact, so the checker's templates (`shape_mask`) reproduce a rendered shape pixel for pixel.
- Boxes are half-open: `bbox = (x0, y0, x1, y1)` with `x1 - x0 == y1 - y0 ==` the side, centre
  `((x0 + x1) / 2, (y0 + y1) / 2)`.
- Scaling to other sizes uses Python's `round` (half to even) on cell centres: at 32 px the centres are
  6, 16, 26, which keeps every jittered large shape inside the canvas (half-up would give 27 and overflow).
  Sides (12 and 20 px at 64) are always even at multiples of 32. The jitter stays [-1, 1] px at every size.
- Draw order from `numpy.random.default_rng([seed, index])`: number of objects, cells, colours, shapes,
  sizes, jitters, and last the caption language of `language="both"` (an even draw per item). Images
  therefore do not depend on the language setting.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (150, 60, 190),
    "orange": (245, 130, 30),
}
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 12, "large": 20}  # side of the bounding box on the 64 px canvas
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
CELL_CENTRES_64 = (11, 32, 53)  # x (columns) and y (rows) of the cell centres on the 64 px canvas
JITTER_PX = 1

COLOURS_ZH = dict(zip(COLOURS, ("红色", "绿色", "蓝色", "黄色", "紫色", "橙色")))
SHAPES_ZH = dict(zip(SHAPES, ("圆形", "正方形", "三角形", "菱形")))
SIZES_ZH = {"small": "小", "large": "大"}
POSITIONS_ZH = dict(zip(POSITIONS, ("左上角", "上方", "右上角", "左侧", "中间", "右侧", "左下角", "下方", "右下角")))

LANGUAGES = ("en", "zh")
# shapes.md: "by default half of the images" hold two objects. Held-out evaluation always draws this share;
# training may draw more (preprocess_data.py --two-object-fraction), since one object is learned first.
DEFAULT_TWO_OBJECT_FRACTION = 0.5
BBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class ShapeObject:
    """One object: attribute names in English; `bbox` is None for an object parsed from a caption."""

    colour: str
    shape: str
    size: str
    position: str
    bbox: BBox | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def spec(self) -> ShapeObject:
        """The object without its box: what a caption says about it."""
        return ShapeObject(self.colour, self.shape, self.size, self.position)


@dataclass
class ShapesItem:
    index: int
    image: Image.Image
    caption: str
    language: str
    objects: list[ShapeObject]


def check_canvas_size(size: int) -> None:
    if size <= 0 or size % 32:
        raise ValueError(f"shapes canvas size must be a positive multiple of 32, got {size}")


def scaled(length_64: float, size: int) -> int:
    """A length of the 64 px canvas at canvas `size` (Python's half-to-even `round`, see module doc)."""
    return round(length_64 * size / 64)


def side_px(size_name: str, canvas: int) -> int:
    return scaled(SIZES[size_name], canvas)


def cell_centre(position: str, canvas: int) -> tuple[int, int]:
    row, col = divmod(POSITIONS.index(position), 3)
    return scaled(CELL_CENTRES_64[col], canvas), scaled(CELL_CENTRES_64[row], canvas)


def cell_of(x: float, y: float, canvas: int) -> str:
    """The position name of the 3 x 3 cell holding point (x, y); the grid splits the canvas in thirds."""
    col = min(max(int(x * 3 // canvas), 0), 2)
    row = min(max(int(y * 3 // canvas), 0), 2)
    return POSITIONS[row * 3 + col]


def object_bbox(size_name: str, position: str, canvas: int, jitter: tuple[int, int] = (0, 0)) -> BBox:
    """The box of an object of `size_name` whose centre is its cell's centre moved by `jitter` (x, y)."""
    side = side_px(size_name, canvas)
    cx, cy = cell_centre(position, canvas)
    x0, y0 = cx + jitter[0] - side // 2, cy + jitter[1] - side // 2
    return x0, y0, x0 + side, y0 + side


def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Boolean mask [height, width] of `shape` filling a width x height box (the pixel rule above).

    With a = 2i + 1 - w and b = 2j + 1 - h (twice the offset of pixel (i, j)'s centre from the box centre)
    each test is the continuous shape's inequality multiplied out to integers, so no pixel is decided by
    floating-point rounding.
    """
    a = np.abs(2 * np.arange(width) + 1 - width)[None, :]
    b = 2 * np.arange(height)[:, None] + 1 - height
    w, h = width, height
    if shape == "square":
        return np.ones((h, w), dtype=bool)
    if shape == "circle":
        return a * a * h * h + b * b * w * w <= w * w * h * h
    if shape == "diamond":
        return a * h + np.abs(b) * w <= w * h
    if shape == "triangle":  # apex at the top centre; pixel (i, j) in when its bottom-edge midpoint is
        return a * h <= (np.arange(height)[:, None] + 1) * w
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(objects: Sequence[ShapeObject], size: int = 64) -> Image.Image:
    """Draw `objects` (each with a bbox), in order, on a white size x size canvas."""
    return draw(objects, size, lambda obj, width, height: (shape_mask(obj.shape, width, height), COLOURS[obj.colour]))


Paint = Callable[[Any, int, int], tuple[np.ndarray, tuple[int, int, int]]]


def draw(objects: Sequence[Any], size: int, paint: Paint) -> Image.Image:
    """Draw placed objects, in order, on a white size x size canvas; `paint(obj, width, height)` gives
    the mask an object fills in its bbox and its colour (shapes here, the subject in data_utils/subject.py)."""
    check_canvas_size(size)
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    for obj in objects:
        if obj.bbox is None:
            raise ValueError(f"cannot draw {obj}: it has no bbox (place it first, e.g. with object_bbox)")
        x0, y0, x1, y1 = obj.bbox
        if x0 < 0 or y0 < 0 or x1 > size or y1 > size:
            raise ValueError(f"bbox {obj.bbox} lies outside the {size} px canvas")
        mask, colour = paint(obj, x1 - x0, y1 - y0)
        canvas[y0:y1, x0:x1][mask] = colour
    return Image.fromarray(canvas, mode="RGB")


def _phrase(obj: ShapeObject, language: str) -> str:
    if language == "en":
        where = "in the center" if obj.position == "center" else f"at the {obj.position}"
        return f"a {obj.size} {obj.colour} {obj.shape} {where}"
    if language == "zh":
        return f"{POSITIONS_ZH[obj.position]}有一个{SIZES_ZH[obj.size]}的{COLOURS_ZH[obj.colour]}{SHAPES_ZH[obj.shape]}"
    raise ValueError(f"unknown caption language {language!r}; expected one of {LANGUAGES}")


def caption_for(objects: Sequence[ShapeObject], language: str = "en") -> str:
    """The spec's caption: English phrases joined by ' and ', Chinese phrases joined by '，'."""
    if not objects:
        raise ValueError("a shapes caption needs at least one object")
    return (" and " if language == "en" else "，").join(_phrase(obj, language) for obj in objects)


def _alternatives(names) -> str:
    # Longest first, so that "top left" is tried before "top".
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


_EN_PHRASE = re.compile(
    rf"a ({_alternatives(SIZES)}) ({_alternatives(COLOURS)}) ({_alternatives(SHAPES)}) "
    rf"(?:at the ({_alternatives(p for p in POSITIONS if p != 'center')})|in the (center))")
_ZH_PHRASE = re.compile(
    rf"({_alternatives(POSITIONS_ZH.values())})有一个({_alternatives(SIZES_ZH.values())})的"
    rf"({_alternatives(COLOURS_ZH.values())})({_alternatives(SHAPES_ZH.values())})")
_FROM_ZH = {zh: en for table in (COLOURS_ZH, SHAPES_ZH, SIZES_ZH, POSITIONS_ZH) for en, zh in table.items()}


def parse_caption(text: str) -> list[ShapeObject] | None:
    """Objects named by an English or Chinese caption (bbox None), or None when it does not follow the spec.

    Tolerates what a decoder may add around the spec's text: surrounding/repeated whitespace and English
    capitals (English), any whitespace (Chinese), and an ASCII comma between Chinese phrases. Anything
    else (an unknown word, a missing phrase part, an empty phrase) makes the whole caption invalid.
    """
    text = text.strip()
    if not text:
        return None
    if re.search(r"[\u4e00-\u9fff]", text):
        phrases = re.sub(r"\s+", "", text).replace(",", "，").split("，")
        objects = []
        for phrase in phrases:
            match = _ZH_PHRASE.fullmatch(phrase)
            if match is None:
                return None
            position, size, colour, shape = (_FROM_ZH[g] for g in match.groups())
            objects.append(ShapeObject(colour, shape, size, position))
        return objects
    objects = []
    for phrase in " ".join(text.lower().split()).split(" and "):
        match = _EN_PHRASE.fullmatch(phrase)
        if match is None:
            return None
        size, colour, shape, corner, centre = match.groups()
        objects.append(ShapeObject(colour, shape, size, corner or centre))
    return objects


class ShapesDataset:
    """Infinite index space of shapes items; `item(index)` is a pure function of (seed, index).

    `language="both"` draws each item's caption language evenly (the last draw of the item's generator),
    so a "both" dataset holds the same images as the "en" and "zh" ones.
    """

    def __init__(self, seed: int = 0, size: int = 64, language: str = "en",
                 two_object_fraction: float = DEFAULT_TWO_OBJECT_FRACTION):
        check_canvas_size(size)
        if language not in (*LANGUAGES, "both"):
            raise ValueError(f"unknown shapes language {language!r}; expected 'en', 'zh' or 'both'")
        if not 0.0 <= two_object_fraction <= 1.0:
            raise ValueError(f"two_object_fraction must lie in [0, 1], got {two_object_fraction}")
        self.seed, self.size, self.language = seed, size, language
        self.two_object_fraction = two_object_fraction

    def _draw(self, index: int) -> tuple[list[ShapeObject], str]:
        if index < 0:
            raise IndexError(f"shapes index must be non-negative, got {index}")
        rng = np.random.default_rng([self.seed, index])
        count = 2 if rng.random() < self.two_object_fraction else 1
        cells = rng.choice(len(POSITIONS), size=count, replace=False)
        colours = rng.choice(len(COLOURS), size=count, replace=False)
        shapes = rng.integers(len(SHAPES), size=count)
        sizes = rng.integers(len(SIZES), size=count)
        jitters = rng.integers(-JITTER_PX, JITTER_PX + 1, size=(count, 2))
        language = LANGUAGES[rng.integers(2)] if self.language == "both" else self.language
        colour_names, size_names = list(COLOURS), list(SIZES)
        objects = []
        for k in range(count):
            position, size_name = POSITIONS[cells[k]], size_names[sizes[k]]
            bbox = object_bbox(size_name, position, self.size, (int(jitters[k, 0]), int(jitters[k, 1])))
            objects.append(ShapeObject(colour_names[colours[k]], SHAPES[shapes[k]], size_name, position, bbox))
        return objects, language

    def objects(self, index: int) -> list[ShapeObject]:
        return self._draw(index)[0]

    def caption(self, index: int) -> str:
        """The caption of item `index`, without rendering its image."""
        objects, language = self._draw(index)
        return caption_for(objects, language)

    def item(self, index: int) -> ShapesItem:
        objects, language = self._draw(index)
        return ShapesItem(index, render(objects, self.size), caption_for(objects, language), language, objects)
