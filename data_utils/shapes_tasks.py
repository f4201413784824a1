"""Questions, answers, boxes, grounded-caption phrases and referring expressions of a `shapes` item, worded
exactly as `../shared/datasets/shapes-tasks.md` words them, in English and Chinese.

Everything here is a pure function of the item's objects (with their boxes), its canvas size, its language
and, for the two choices the spec leaves to chance, a generator seeded by (seed, index): which pair question 6
names (present or absent, half and half) and which empty cell question 7 asks about. Choices the spec leaves
open, stated where they are made:

- Which questions an item gets: every question the spec allows of it, once: question 1 for each shape exactly
  one object has, questions 2-4 for each object, question 5, one question 6, and question 7 for each object's
  cell plus one empty cell (so "nothing" is asked as often as a one-object image's object).
- Boxes are those of the visible pixels (`visible_boxes`): a later object drawn over an earlier one shrinks
  the earlier one's box. The box a `shapes` item carries (`ShapeObject.bbox`) is the nominal one, which
  every shape fills whole (`data_utils/shapes.py`), so the two differ only where objects overlap.
- The object phrase of a grounded caption, and the phrase a box is named by, is the caption's phrase without
  its place: `a large red circle`, `一个大的红色圆形` (the spec's examples).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from data_utils.shapes import (COLOURS, COLOURS_ZH, POSITIONS, POSITIONS_ZH, SHAPES, SHAPES_ZH, SIZES_ZH, BBox,
                               ShapeObject, shape_mask)

# The spec's question types, numbered as in its table.
QUESTION_TYPES = (1, 2, 3, 4, 5, 6, 7)
_QUESTION_STREAM = 0x71756573  # keeps these draws apart from the item's own (numpy.random.default_rng([seed, index]))
_COUNT = {"en": {1: "one", 2: "two"}, "zh": {1: "一个", 2: "两个"}}
_YES_NO = {"en": ("yes", "no"), "zh": ("有", "没有")}


@dataclass(frozen=True)
class QuestionAnswer:
    kind: int  # the spec's question number, 1-7
    question: str
    answer: str


@dataclass(frozen=True)
class GroundedObject:
    phrase: str
    box: BBox  # visible pixels, x1 and y1 exclusive


@dataclass(frozen=True)
class ReferringExpression:
    expression: str
    box: BBox


@dataclass(frozen=True)
class ShapesTasks:
    """What the understanding tasks train on, for one item."""

    questions: list[QuestionAnswer]
    objects: list[GroundedObject]  # in caption order
    expressions: list[ReferringExpression]


def _words(obj: ShapeObject, language: str) -> tuple[str, str, str, str]:
    """(colour, shape, size, position) in `language`."""
    if language == "en":
        return obj.colour, obj.shape, obj.size, obj.position
    if language == "zh":
        return COLOURS_ZH[obj.colour], SHAPES_ZH[obj.shape], SIZES_ZH[obj.size], POSITIONS_ZH[obj.position]
    raise ValueError(f"unknown language {language!r}; expected 'en' or 'zh'")


def object_phrase(obj: ShapeObject, language: str) -> str:
    """`a large red circle` / `一个大的红色圆形`: the object phrase of a caption, without its place."""
    colour, shape, size, _ = _words(obj, language)
    return f"a {size} {colour} {shape}" if language == "en" else f"一个{size}的{colour}{shape}"


def visible_boxes(objects: Sequence[ShapeObject], canvas: int) -> list[BBox | None]:
    """The box of each object's visible pixels (objects drawn in order, later on top); None for an object
    entirely hidden. Same pixel rule as `shapes.render`."""
    owner = np.full((canvas, canvas), -1, dtype=np.int64)
    for k, obj in enumerate(objects):
        x0, y0, x1, y1 = obj.bbox
        owner[y0:y1, x0:x1][shape_mask(obj.shape, x1 - x0, y1 - y0)] = k
    boxes: list[BBox | None] = []
    for k in range(len(objects)):
        rows, cols = np.nonzero(owner == k)
        boxes.append(None if rows.size == 0 else
                     (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))
    return boxes


def questions(objects: Sequence[ShapeObject], language: str, rng: np.random.Generator) -> list[QuestionAnswer]:
    """Every question of the spec that this item allows (see the module docstring), with its answer."""
    en = language == "en"
    words = [_words(obj, language) for obj in objects]
    out: list[QuestionAnswer] = []
    for shape in SHAPES:  # 1: only when one object has that shape
        having = [w for obj, w in zip(objects, words) if obj.shape == shape]
        if len(having) == 1:
            colour, shape_word = having[0][0], having[0][1]
            out.append(QuestionAnswer(1, f"what colour is the {shape_word}?" if en else f"{shape_word}是什么颜色？",
                                      colour))
    for colour, shape, size, position in words:
        out.append(QuestionAnswer(2, f"what shape is the {colour} object?" if en else f"{colour}的物体是什么形状？",
                                  shape))
        out.append(QuestionAnswer(3, f"where is the {colour} {shape}?" if en else f"{colour}{shape}在哪里？",
                                  position))
        out.append(QuestionAnswer(4, f"what size is the {colour} {shape}?" if en else f"{colour}{shape}是大的还是小的？",
                                  size))
    out.append(QuestionAnswer(5, "how many objects are there?" if en else "图中有几个物体？",
                              _COUNT[language][len(objects)]))
    # 6: half the items ask about a pair in the image, half about one that is not.
    present = rng.random() < 0.5
    if present:
        asked = objects[int(rng.integers(len(objects)))]
    else:
        there = {(obj.colour, obj.shape) for obj in objects}
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in there]
        colour, shape = absent[int(rng.integers(len(absent)))]
        asked = ShapeObject(colour, shape, "small", "center")
    colour, shape, _, _ = _words(asked, language)
    out.append(QuestionAnswer(6, f"is there a {colour} {shape}?" if en else f"图中有{colour}{shape}吗？",
                              _YES_NO[language][0 if present else 1]))
    # 7: each object's cell, and one empty cell.
    taken = {obj.position for obj in objects}
    empty = [p for p in POSITIONS if p not in taken]
    asked_cells = [(obj.position, w) for obj, w in zip(objects, words)]
    asked_cells.append((empty[int(rng.integers(len(empty)))], None))
    for position, w in asked_cells:
        where = position if en else POSITIONS_ZH[position]
        if w is None:
            answer = "nothing" if en else "什么都没有"
        else:
            colour, shape, size, _ = w
            answer = f"a {size} {colour} {shape}" if en else f"一个{size}的{colour}{shape}"
        out.append(QuestionAnswer(7, f"what is at the {where}?" if en else f"{where}有什么？", answer))
    return out


def referring_expressions(objects: Sequence[ShapeObject], boxes: Sequence[BBox | None],
                          language: str) -> list[ReferringExpression]:
    """Each visible object's expressions: `the {colour} {shape}`, `the {size} {colour} {shape}` and, when no
    other object is the same shape in the same cell, `the {shape} at the {position}` (Chinese: `{colour}{shape}`,
    `{size}的{colour}{shape}`, `{position}的{shape}`)."""
    out = []
    for obj, box in zip(objects, boxes):
        if box is None:
            continue
        colour, shape, size, position = _words(obj, language)
        if language == "en":
            texts = [f"the {colour} {shape}", f"the {size} {colour} {shape}"]
        else:
            texts = [f"{colour}{shape}", f"{size}的{colour}{shape}"]
        if sum(o.shape == obj.shape and o.position == obj.position for o in objects) == 1:
            texts.append(f"the {shape} at the {position}" if language == "en" else f"{position}的{shape}")
        out += [ReferringExpression(text, box) for text in texts]
    return out


def shapes_tasks(objects: Sequence[ShapeObject], canvas: int, language: str, seed: int, index: int) -> ShapesTasks:
    """The questions, grounded objects and referring expressions of item `index` of the shapes set `seed`."""
    rng = np.random.default_rng([seed, index, _QUESTION_STREAM])
    boxes = visible_boxes(objects, canvas)
    grounded = [GroundedObject(object_phrase(obj, language), box) for obj, box in zip(objects, boxes)
                if box is not None]
    return ShapesTasks(questions(objects, language, rng), grounded, referring_expressions(objects, boxes, language))
