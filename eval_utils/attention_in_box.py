"""Attention mass in the box: do the words that name an object look at that object?

For each object of a held-out shapes image, its words are those of its caption phrase that name its
colour and its shape (`red`, `circle`; `红色`, `圆形`, however the tokenizer cut them). Their attention
maps (`generation.attention_maps`, each summing to 1 over the image codes) are averaged, and the mass
inside the object's box is compared with the box's share of the image. The box (pixels, from the
shapes metadata) goes onto the code grid as each code cell's covered fraction, so attention spread
evenly over the image puts exactly the box's share inside it (ratio 1).

Reported: the mean mass in the box, the mean box share of the image, and their ratio (the issue's
target is a ratio of at least 3).
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import torch
from PIL import Image

from data_utils.shapes import COLOURS_ZH, SHAPES_ZH, ShapeObject
from eval_utils.report import Section
from generation.attention_maps import WordAttention

# Per image and its caption: the caption's words with their maps (Pipeline.attention_maps).
WordMaps = Callable[[Sequence[Image.Image], Sequence[str]], list[list[WordAttention]]]


def box_cover(bbox: Sequence[int], image_size: int, grid: int) -> torch.Tensor:
    """`[grid, grid]`: the fraction of each code cell's pixels that the box `(x0, y0, x1, y1)` (end
    exclusive, in pixels of a square `image_size` image) covers."""
    cell = image_size / grid
    edges = torch.arange(grid + 1, dtype=torch.float64) * cell
    x0, y0, x1, y1 = (float(v) for v in bbox)
    across = ((edges[1:].clamp(max=x1) - edges[:-1].clamp(min=x0)).clamp(min=0) / cell)
    down = ((edges[1:].clamp(max=y1) - edges[:-1].clamp(min=y0)).clamp(min=0) / cell)
    return down[:, None] * across[None, :]


def mass_in_box(attention: torch.Tensor, cover: torch.Tensor) -> float:
    """The share of `attention [g, g]` (summing to 1) inside the box given by `box_cover`."""
    return float((attention.double() * cover).sum())


def name_spans(objects: Sequence[ShapeObject], text: str, language: str) -> list[list[tuple[int, int]]]:
    """Per object, the character spans in `text` of the names of its colour and its shape, found in
    caption order (each object's names after the previous object's)."""
    spans, cursor = [], 0
    for obj in objects:
        own = []
        for name in ((obj.colour, obj.shape) if language == "en" else (COLOURS_ZH[obj.colour], SHAPES_ZH[obj.shape])):
            pattern = rf"\b{re.escape(name)}\b" if language == "en" else re.escape(name)
            match = re.compile(pattern).search(text, cursor)
            if match is None:
                raise ValueError(f"{name!r} is not in the caption {text!r} after character {cursor}")
            own.append(match.span())
            cursor = match.end()
        spans.append(own)
    return spans


def object_word_map(words: Sequence[WordAttention], spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The mean map of the words overlapping any of `spans`."""
    chosen = [w.grid for w in words if any(w.word.start < end and start < w.word.end for start, end in spans)]
    return torch.stack(chosen).double().mean(dim=0)


def attention_in_box(maps: Sequence[Sequence[WordAttention]], objects: Sequence[Sequence[ShapeObject]],
                     texts: Sequence[str], language: str, image_size: int, grid: int) -> dict[str, float]:
    """Mean mass in the box over every object of every image, the mean box share, and their ratio.
    `texts` are the captions as the tokenizer gives them back (the words' spans index them)."""
    masses, shares = [], []
    for words, own_objects, text in zip(maps, objects, texts):
        for obj, spans in zip(own_objects, name_spans(own_objects, text, language)):
            cover = box_cover(obj.bbox, image_size, grid)
            masses.append(mass_in_box(object_word_map(words, spans), cover))
            shares.append(float(cover.sum()) / grid ** 2)
    mass, share = sum(masses) / len(masses), sum(shares) / len(shares)
    return {"objects": len(masses), "mass_in_box": mass, "box_share": share, "ratio": mass / share}


def attention_section(word_maps: WordMaps, decoded: Callable[[str], str],
                      sets: dict[str, tuple[Sequence[Image.Image], Sequence[str], Sequence[Sequence[ShapeObject]]]],
                      image_size: int, grid: int) -> Section:
    """evaluate.py's attention section, per caption language (`sets`: language -> images, captions,
    objects); `decoded` gives a caption back as the tokenizer reads it."""
    results = {}
    lines = [f"{'':<10}{'objects':>9}{'mass in box':>13}{'box share':>11}{'ratio':>8}"]
    for language, (images, captions, objects) in sets.items():
        found = attention_in_box(word_maps(images, captions), objects, [decoded(c) for c in captions], language,
                                 image_size, grid)
        results[language] = found
        lines.append(f"{language:<10}{found['objects']:>9d}{found['mass_in_box']:>13.3f}{found['box_share']:>11.3f}"
                     f"{found['ratio']:>8.2f}")
    return Section("attention", results, "\n".join(lines))
