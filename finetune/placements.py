"""Placement augmentation: the subject cut out of its instance images and placed at every size and cell of
the `shapes` world, alone or next to an ordinary object, each picture captioned by the world's grammar.

Why: four pictures show the subject at four (size, cell) pairs, and with learned positions nothing tells
the model that the subject can move. Fine-tuned on the four alone it redraws them and little else (the
unseen pairs of subject.md: 0-11% in docs/tasks/subject_finetuning.md). Custom Diffusion (Kumari et al.,
2023) met the same problem by rescaling its few target images and putting the size into the caption
("very small", "zoomed in"). Here the world's captions name every size and cell, so the rescaled and moved
pictures can be captioned exactly.

Only the instance images' pixels make the subject. A picture here is one of them cut out (the pixels far
from the white background, inside their bounding box), scaled to the asked side with nearest-neighbour
sampling (hard edges stay hard: the 20 px frame with its 5 px border becomes the 12 px frame with a 3 px
border that subject.md draws) and pasted over the canvas where the pixels are foreground (a frame's white
inside stays whatever is under it). Second objects are ordinary shapes objects drawn by the shapes
renderer, in another cell. Places, sizes, jitter and second objects are drawn the way `shapes` draws its
items, from `numpy.random.default_rng([seed, index])`; captions are in the languages of the instance captions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from data_utils.shapes import (COLOURS, DEFAULT_TWO_OBJECT_FRACTION, JITTER_PX, LANGUAGES, POSITIONS, SHAPES, SIZES,
                               ShapeObject, render)
from data_utils.subject import SceneObject, SubjectObject, placed, scene_caption
from data_utils.text_tokenizer import HAN_CHARACTER
from finetune.data import CaptionedImages
from utils.errors import UserError

# A pixel is the subject's when one channel differs from the white background by more than this; JPEG noise
# and anti-aliasing of a plain background stay below it.
FOREGROUND_THRESHOLD = 48


@dataclass(frozen=True)
class CutOut:
    """The subject of one instance image: its pixels [h, w, 3] and which of them are the subject [h, w]."""

    pixels: np.ndarray
    mask: np.ndarray

    def scaled(self, side: int) -> CutOut:
        """Nearest-neighbour to side x side: source index floor((i + 0.5) * source / side)."""
        height, width = self.mask.shape
        rows = ((np.arange(side) + 0.5) * height / side).astype(int)
        cols = ((np.arange(side) + 0.5) * width / side).astype(int)
        return CutOut(self.pixels[rows][:, cols], self.mask[rows][:, cols])


def cut_out(image: Image.Image, name: str) -> CutOut:
    """The foreground of an instance image on a white background, cropped to its bounding box."""
    pixels = np.asarray(image.convert("RGB"))
    mask = (255 - pixels.astype(np.int16)).max(axis=2) > FOREGROUND_THRESHOLD
    if not mask.any():
        raise UserError(f"placement augmentation: {name} holds nothing but white background; it needs the "
                        f"subject on a white background")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return CutOut(pixels[box], mask[box])


@dataclass(frozen=True)
class Placement:
    """One drawn picture: its objects in caption order (the subject placed, perhaps an ordinary object), the
    caption language and which instance image lends the subject."""

    objects: tuple[SceneObject, ...]
    language: str
    source: int


def draw_placement(seed: int, index: int, sources: int, languages: tuple[str, ...], canvas: int = 64) -> Placement:
    """Placement `index`, a pure function of (seed, index): the subject at a drawn size, cell and jitter, in
    half of the pictures (shapes' default share) an ordinary object in another cell, in either order, and a
    caption language of `languages` (an even draw)."""
    rng = np.random.default_rng([seed, index])
    cells = rng.choice(len(POSITIONS), size=2, replace=False)
    size = list(SIZES)[rng.integers(len(SIZES))]
    jitter = tuple(int(j) for j in rng.integers(-JITTER_PX, JITTER_PX + 1, size=2))
    objects: list[SceneObject] = [placed(SubjectObject(size, POSITIONS[cells[0]]), canvas, jitter)]
    if rng.random() < DEFAULT_TWO_OBJECT_FRACTION:
        other = ShapeObject(list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))],
                            list(SIZES)[rng.integers(len(SIZES))], POSITIONS[cells[1]])
        other_jitter = tuple(int(j) for j in rng.integers(-JITTER_PX, JITTER_PX + 1, size=2))
        objects.insert(int(rng.integers(2)), placed(other, canvas, other_jitter))
    return Placement(tuple(objects), languages[rng.integers(len(languages))], int(rng.integers(sources)))


def caption_languages(captions: list[str]) -> tuple[str, ...]:
    """The languages of the instance captions (Chinese when a caption has a Han character), which are the
    languages the user has named the subject in; a base trained on English alone could not read the others."""
    found = {"zh" if HAN_CHARACTER.search(caption) else "en" for caption in captions}
    return tuple(language for language in LANGUAGES if language in found)


def paint(placement: Placement, subjects: list[CutOut], canvas: int) -> Image.Image:
    """The ordinary object drawn by the shapes renderer, the subject pasted over it where it is foreground."""
    picture = np.array(render([o for o in placement.objects if isinstance(o, ShapeObject)], canvas))
    for obj in placement.objects:
        if isinstance(obj, SubjectObject):
            x0, y0, x1, y1 = obj.bbox
            patch = subjects[placement.source].scaled(x1 - x0)
            picture[y0:y1, x0:x1][patch.mask] = patch.pixels[patch.mask]
    return Image.fromarray(picture, mode="RGB")


def placement_images(instances: CaptionedImages, count: int, identifier: str, class_noun: str, seed: int,
                     canvas: int = 64) -> CaptionedImages:
    """`count` pictures of the subject (`draw_placement`), each captioned by the shapes grammar with the
    identifier and class noun, in a language of the instance captions."""
    if class_noun not in SHAPES:
        raise UserError(f"placement augmentation captions the subject by the shapes grammar, which has no "
                        f"{class_noun!r}; the class noun must be one of {', '.join(SHAPES)}")
    subjects = [cut_out(image, name) for image, name in zip(instances.images, instances.names)]
    languages = caption_languages(instances.captions)
    placements = [draw_placement(seed, index, len(subjects), languages, canvas) for index in range(count)]
    return CaptionedImages([paint(p, subjects, canvas) for p in placements],
                           [scene_caption(p.objects, p.language, identifier, class_noun) for p in placements],
                           [f"placement_{index}" for index in range(count)])
