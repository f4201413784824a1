"""The `sks square`: the subject of subject-driven fine-tuning, its pictures, captions and prompt sets.

Specification: `../shared/datasets/subject.md` (outside checkers follow it); everything it leaves to
`shapes.md` (canvas, sizes, cells, caption grammar) is taken from `data_utils.shapes`. Choices it leaves
open are stated where they are made:

- The frame covers the pixels of its box that lie within `border = round(side / 4)` pixels of an edge
  (3 px small, 5 px large at 64 px); at other canvas sizes `side` is the scaled side.
- Property change in Chinese puts the colour before the identifier (`...的红色sks正方形`), as an
  ordinary object's colour stands before its shape.
- The prompt sets of the benchmark (`composition_prompts`, `property_prompts`, `class_prompts`) are pure
  functions of a seed, like the shapes items.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from data_utils.shapes import (COLOURS, COLOURS_ZH, POSITIONS, POSITIONS_ZH, SHAPES, SHAPES_ZH, SIZES, SIZES_ZH,
                               BBox, ShapeObject, caption_for, draw, object_bbox, shape_mask)
from utils.files import atomic_write_text

TEAL = (0, 150, 150)
IDENTIFIER = "sks"
CLASS_NOUN = "square"
# The four instance images (size, position), centre jitter 0: the only pictures of the subject training may use.
INSTANCES = (("large", "top left"), ("small", "center"), ("large", "bottom right"), ("small", "top"))


@dataclass(frozen=True)
class SubjectObject:
    """The subject at one size and cell; `colour` None is its own teal, else one of the six (property change)."""

    size: str
    position: str
    colour: str | None = None
    bbox: BBox | None = None

    @property
    def rgb(self) -> tuple[int, int, int]:
        return TEAL if self.colour is None else COLOURS[self.colour]

    def spec(self) -> SubjectObject:
        return SubjectObject(self.size, self.position, self.colour)


SceneObject = SubjectObject | ShapeObject


def placed(obj: SceneObject, canvas: int = 64, jitter: tuple[int, int] = (0, 0)) -> SceneObject:
    """`obj` with the box of its size and cell (moved by `jitter`)."""
    bbox = object_bbox(obj.size, obj.position, canvas, jitter)
    if isinstance(obj, SubjectObject):
        return SubjectObject(obj.size, obj.position, obj.colour, bbox)
    return ShapeObject(obj.colour, obj.shape, obj.size, obj.position, bbox)


def frame_border(side: int) -> int:
    return round(side / 4)


def frame_mask(width: int, height: int) -> np.ndarray:
    """Boolean mask [height, width] of the frame drawn in a width x height box (border from the mean side)."""
    border = frame_border(round((width + height) / 2))
    mask = np.ones((height, width), dtype=bool)
    mask[border:height - border, border:width - border] = False
    return mask


def render_scene(objects: Sequence[SceneObject], size: int = 64) -> Image.Image:
    """Draw placed subjects and shapes, in order, on a white size x size canvas."""
    return draw(objects, size, _paint)


def _paint(obj: SceneObject, width: int, height: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    if isinstance(obj, SubjectObject):
        return frame_mask(width, height), obj.rgb
    return shape_mask(obj.shape, width, height), COLOURS[obj.colour]


def _subject_phrase(obj: SubjectObject, language: str, identifier: str, class_noun: str) -> str:
    if language == "en":
        where = "in the center" if obj.position == "center" else f"at the {obj.position}"
        colour = "" if obj.colour is None else f"{obj.colour} "
        return f"a {obj.size} {colour}{identifier} {class_noun} {where}"
    colour = "" if obj.colour is None else COLOURS_ZH[obj.colour]
    return f"{POSITIONS_ZH[obj.position]}有一个{SIZES_ZH[obj.size]}的{colour}{identifier}{SHAPES_ZH[class_noun]}"


def scene_caption(objects: Sequence[SceneObject], language: str = "en", identifier: str = IDENTIFIER,
                  class_noun: str = CLASS_NOUN) -> str:
    """The spec's caption: subject phrases and shapes phrases joined as two shapes objects are. Another
    identifier, or another shapes shape as the class noun, names another subject the same way."""
    if language not in ("en", "zh"):
        raise ValueError(f"unknown caption language {language!r}")
    if class_noun not in SHAPES_ZH:
        raise ValueError(f"class noun {class_noun!r} is not a shapes shape ({', '.join(SHAPES)})")
    phrases = [_subject_phrase(obj, language, identifier, class_noun) if isinstance(obj, SubjectObject)
               else caption_for([obj], language) for obj in objects]
    return (" and " if language == "en" else "，").join(phrases)


@dataclass(frozen=True)
class SubjectPrompt:
    """One prompt of the benchmark: its text, its objects (what the checker looks for) and its group."""

    text: str
    objects: tuple[SceneObject, ...]
    group: str  # "seen" / "unseen" (recontextualisation), "composition", "property", "class"


def instance_items(canvas: int = 64, language: str = "en") -> list[tuple[Image.Image, str]]:
    """The four instance images with their captions."""
    items = []
    for size, position in INSTANCES:
        subject = placed(SubjectObject(size, position), canvas)
        items.append((render_scene([subject], canvas), scene_caption([subject], language)))
    return items


def recontext_prompts() -> list[SubjectPrompt]:
    """All 18 (size, position) prompts of the subject alone; 'seen' for the four instance pairs."""
    prompts = []
    for position in POSITIONS:
        for size in SIZES:
            subject = SubjectObject(size, position)
            prompts.append(SubjectPrompt(scene_caption([subject]), (subject,),
                                         "seen" if (size, position) in INSTANCES else "unseen"))
    return prompts


def composition_prompts(count: int, seed: int = 0) -> list[SubjectPrompt]:
    """The subject and one ordinary object in another cell, in either order (drawn from `seed`)."""
    rng = np.random.default_rng([seed, 0x636F6D70])
    prompts = []
    for _ in range(count):
        cells = rng.choice(len(POSITIONS), size=2, replace=False)
        sizes = rng.integers(len(SIZES), size=2)
        subject = SubjectObject(list(SIZES)[sizes[0]], POSITIONS[cells[0]])
        other = ShapeObject(list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))],
                            list(SIZES)[sizes[1]], POSITIONS[cells[1]])
        objects = (subject, other) if rng.random() < 0.5 else (other, subject)
        prompts.append(SubjectPrompt(scene_caption(objects), objects, "composition"))
    return prompts


def property_prompts(count: int, seed: int = 0) -> list[SubjectPrompt]:
    """The frame in one of the six colours at a drawn size and cell."""
    rng = np.random.default_rng([seed, 0x70726F70])
    prompts = []
    for _ in range(count):
        subject = SubjectObject(list(SIZES)[rng.integers(len(SIZES))], POSITIONS[rng.integers(len(POSITIONS))],
                                list(COLOURS)[rng.integers(len(COLOURS))])
        prompts.append(SubjectPrompt(scene_caption([subject]), (subject,), "property"))
    return prompts


def class_prompts(count: int, seed: int = 0) -> list[SubjectPrompt]:
    """Ordinary one-square prompts (`a large red square at the top`): the class of the subject. They serve
    both as the prior-preservation prompts and as the class-preservation test (with different seeds)."""
    rng = np.random.default_rng([seed, 0x636C6173])
    prompts = []
    for _ in range(count):
        square = ShapeObject(list(COLOURS)[rng.integers(len(COLOURS))], CLASS_NOUN,
                             list(SIZES)[rng.integers(len(SIZES))], POSITIONS[rng.integers(len(POSITIONS))])
        prompts.append(SubjectPrompt(caption_for([square]), (square,), "class"))
    return prompts


def write_subject_data(folder: str | Path, num_class_prompts: int) -> tuple[Path, Path]:
    """`folder/instances`: the four instance images as PNGs with `NAME.txt` captions (what
    `finetune_subject.py --instance-data` reads), and `folder/class_prompts.txt` (its `--class-prompts`)."""
    folder = Path(folder)
    instances = folder / "instances"
    instances.mkdir(parents=True, exist_ok=True)
    for index, (image, caption) in enumerate(instance_items()):
        image.save(instances / f"instance_{index}.png")
        atomic_write_text(instances / f"instance_{index}.txt", caption + "\n")
    prompts = folder / "class_prompts.txt"
    atomic_write_text(prompts, "".join(p.text + "\n" for p in class_prompts(num_class_prompts)))
    return instances, prompts


if __name__ == "__main__":  # python -m data_utils.subject FOLDER [NUM_CLASS_PROMPTS]
    import sys

    written = write_subject_data(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200)
    print(*written)
