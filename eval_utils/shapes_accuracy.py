"""Prompt-following accuracy on the `shapes` dataset: of generated images and of generated captions.

Images are judged by `data_utils.shapes_checker.check_image` (the spec's checker). Over a set of
prompts, each group (all prompts, and prompts with 1 and with 2 objects) reports:

- `correct`: fraction of images that are fully correct (every prompt object present, nothing else
  of area over 20 px);
- `objects_right`: fraction of prompt objects present (a region matches colour, shape, size and position);
- per attribute, the fraction of prompt objects for which the checker's per-attribute answer is yes.
  The checker judges each attribute on the regions of the prompt object's colour that count (over the
  noise area, or standing for the object): colour = there is one; position / size / shape = one of
  them is in the prompt's cell / has the prompt's size / has the prompt's shape. The four answers
  are independent (two same-coloured regions may satisfy two of them), so they can all be yes for an
  object that is not present; they say which attribute fails most, `objects_right` is the strict one;
- `mean_extras` (all prompts only): regions over the noise area per image that stand for no prompt object.

Captions are parsed back with `data_utils.shapes.parse_caption` and compared with the prompt's
objects (the caption's ground truth):

- `correct`: exact match, the caption names the same objects as a multiset (order-insensitive,
  so "A and B" matches "B and A"); an unparseable caption is wrong;
- per attribute: each ground-truth object is paired with at most one parsed object, by the
  assignment that maximises the number of equal attributes over all objects (ties: the earliest
  pairing in caption order); an attribute counts as right when the paired object has the same
  value, and every attribute of an unpaired object (too few objects parsed, or an unparseable
  caption) counts as wrong; `objects_right` is the fraction of objects right in all four;
- `unparsed`: fraction of captions `parse_caption` rejects.
"""
from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data_utils.images import tensor_to_pil
from data_utils.shapes import ShapeObject, parse_caption
from data_utils.shapes_checker import CheckResult, check_image
from utils.errors import UserError

ATTRIBUTES = ("colour", "shape", "size", "position")
ALL = "all"
ImageLike = Image.Image | np.ndarray | torch.Tensor


@dataclass
class GroupScores:
    """Scores of one group of prompts (see the module docstring for each definition)."""

    prompts: int
    correct: float
    objects: int
    objects_right: float
    attributes: dict[str, float]  # colour, shape, size, position

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "correct": self.correct, "objects": self.objects,
                "objects_right": self.objects_right, **self.attributes}


def _group_name(count: int) -> str:
    return f"{count} object" if count == 1 else f"{count} objects"


class _GroupTally:
    """Counts for one group, turned into fractions by `scores`."""

    def __init__(self) -> None:
        self.prompts = self.correct = self.objects = self.objects_right = 0
        self.attributes = dict.fromkeys(ATTRIBUTES, 0)

    def add(self, correct: bool, objects_right: Sequence[bool], attributes: dict[str, Sequence[bool]]) -> None:
        self.prompts += 1
        self.correct += bool(correct)
        self.objects += len(objects_right)
        self.objects_right += sum(map(bool, objects_right))
        for name in ATTRIBUTES:
            self.attributes[name] += sum(map(bool, attributes[name]))

    def scores(self) -> GroupScores:
        return GroupScores(self.prompts, self.correct / self.prompts, self.objects, self.objects_right / self.objects,
                           {name: count / self.objects for name, count in self.attributes.items()})


class _Groups:
    """Tallies for all prompts and per number of prompt objects."""

    def __init__(self) -> None:
        self._tallies: dict[int | str, _GroupTally] = defaultdict(_GroupTally)

    def add(self, num_objects: int, correct: bool, objects_right: Sequence[bool],
            attributes: dict[str, Sequence[bool]]) -> None:
        if num_objects < 1:
            raise UserError("a shapes prompt needs at least one object; got a prompt with none")
        for key in (ALL, num_objects):
            self._tallies[key].add(correct, objects_right, attributes)

    def scores(self) -> dict[str, GroupScores]:
        if not self._tallies:
            raise UserError("no prompts to score")
        counts = sorted(key for key in self._tallies if key != ALL)
        return {ALL: self._tallies[ALL].scores(), **{_group_name(n): self._tallies[n].scores() for n in counts}}


def _format_groups(title: str, groups: dict[str, GroupScores], footer: str) -> str:
    header = f"{title:<12}{'prompts':>8}{'correct':>9}{'objects':>9}{'obj ok':>8}" + "".join(
        f"{name:>10}" for name in ATTRIBUTES)
    lines = [header]
    for name, group in groups.items():
        lines.append(f"{name:<12}{group.prompts:>8d}{group.correct:>9.3f}{group.objects:>9d}{group.objects_right:>8.3f}"
                     + "".join(f"{group.attributes[attribute]:>10.3f}" for attribute in ATTRIBUTES))
    lines.append(footer)
    return "\n".join(lines)


@dataclass
class ImageAccuracy:
    """How well generated images follow their prompts, per group of prompts."""

    groups: dict[str, GroupScores]  # "all", "1 object", "2 objects"
    mean_extras: float

    def to_dict(self) -> dict:
        return {"groups": {name: group.to_dict() for name, group in self.groups.items()},
                "mean_extras": self.mean_extras}

    def format_table(self) -> str:
        return _format_groups("images", self.groups, f"extra objects per image: {self.mean_extras:.3f}")


@dataclass
class CaptionAccuracy:
    """How well generated captions name the objects of their images, per group of images."""

    groups: dict[str, GroupScores]
    unparsed: float

    def to_dict(self) -> dict:
        return {"groups": {name: group.to_dict() for name, group in self.groups.items()}, "unparsed": self.unparsed}

    def format_table(self) -> str:
        return _format_groups("captions", self.groups, f"unparseable captions: {self.unparsed:.3f}")


def summarise_checks(prompts: Sequence[Sequence[ShapeObject]], results: Sequence[CheckResult]) -> ImageAccuracy:
    """Image accuracy from the checker's results, one per prompt (for callers that keep the results)."""
    if len(prompts) != len(results):
        raise UserError(f"{len(prompts)} prompts but {len(results)} check results")
    groups = _Groups()
    for objects, result in zip(prompts, results):
        groups.add(len(objects), result.correct, result.present,
                   {"colour": result.colour_ok, "shape": result.shape_ok, "size": result.size_ok,
                    "position": result.position_ok})
    return ImageAccuracy(groups.scores(), sum(result.extras for result in results) / len(results))


def _as_checkable(image: ImageLike) -> Image.Image | np.ndarray:
    if isinstance(image, torch.Tensor):
        return tensor_to_pil(image)  # [3, H, W] in [0, 1]
    return image


def image_accuracy(pairs: Iterable[tuple[Sequence[ShapeObject], ImageLike]], size: int | None = None) -> ImageAccuracy:
    """Check each (prompt objects, generated image) pair and summarise (module docstring).

    Images may be PIL images, uint8 arrays [H, W, 3] or float tensors [3, H, W] in [0, 1]; `size` is
    the canvas the prompts refer to (images of another side are resized to it), by default each
    image's own side.
    """
    prompts, results = [], []
    for objects, image in tqdm(pairs, desc="checking images", unit="image"):
        prompts.append(objects)
        results.append(check_image(_as_checkable(image), objects, size))
    return summarise_checks(prompts, results)


def any_correct(prompts: Sequence[Sequence[ShapeObject]], candidates: Sequence[Sequence[ImageLike]],
                size: int | None = None) -> dict[str, float]:
    """Per group (all prompts, and per number of objects), the share of prompts at least one of whose
    candidate images is fully correct: the accuracy of a perfect post-selection."""
    if len(prompts) != len(candidates):
        raise UserError(f"{len(prompts)} prompts but candidates for {len(candidates)}")
    if not prompts:
        raise UserError("no prompts to score")
    found: dict[int | str, list[bool]] = defaultdict(list)  # keyed as `_Groups` keys its tallies
    for objects, images in tqdm(zip(prompts, candidates), total=len(prompts), desc="checking candidates",
                                unit="prompt"):
        hit = any(check_image(_as_checkable(image), objects, size).correct for image in images)
        for key in (ALL, len(objects)):
            found[key].append(hit)
    share = {key: sum(hits) / len(hits) for key, hits in found.items()}
    return {ALL: share[ALL], **{_group_name(n): share[n] for n in sorted(key for key in found if key != ALL)}}


def _best_pairing(truth: Sequence[ShapeObject], parsed: Sequence[ShapeObject]) -> list[ShapeObject | None]:
    """For each ground-truth object its parsed partner (or None), maximising equal attributes in total."""
    def agreement(pairing: Sequence[ShapeObject | None]) -> int:
        return sum(getattr(t, name) == getattr(p, name) for t, p in zip(truth, pairing) if p is not None
                   for name in ATTRIBUTES)

    padded = list(parsed) + [None] * max(0, len(truth) - len(parsed))
    best: list[ShapeObject | None] = []
    best_score = -1
    for pairing in itertools.permutations(padded, len(truth)):
        score = agreement(pairing)
        if score > best_score:
            best, best_score = list(pairing), score
    return best


def caption_accuracy(pairs: Iterable[tuple[Sequence[ShapeObject], str]]) -> CaptionAccuracy:
    """Compare each generated caption with its image's ground-truth objects (module docstring)."""
    groups = _Groups()
    captions = unparsed = 0
    for truth, caption in pairs:
        captions += 1
        parsed = parse_caption(caption)
        unparsed += parsed is None
        pairing = _best_pairing(truth, parsed or [])
        attributes = {name: [p is not None and getattr(t, name) == getattr(p, name) for t, p in zip(truth, pairing)]
                      for name in ATTRIBUTES}
        objects_right = [p is not None and t.spec() == p.spec() for t, p in zip(truth, pairing)]
        exact = parsed is not None and Counter(p.spec() for p in parsed) == Counter(t.spec() for t in truth)
        groups.add(len(truth), exact, objects_right, attributes)
    scores = groups.scores()  # refuses an empty set
    return CaptionAccuracy(scores, unparsed / captions)
