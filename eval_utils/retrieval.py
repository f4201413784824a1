"""Retrieval recall: held-out image-caption pairs, every caption ranked against every image and back.

Recall@K (../shared/datasets/shapes-tasks.md, Retrieval): the share of captions whose own image is
among the K best images, and of images whose own caption is among the K best captions. A tie counts
against the pair: the own item's rank is the number of others scoring at least as high, so a model
that scores everything alike gets recall K/N, never 1. Two held-out items of `shapes` can carry the
same caption (one object in the same cell, a pixel of jitter apart); no score can tell such pairs
apart, so the pairs are the first N of the split whose captions are all different (evaluate.py
loads 4N items to find them).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image

from eval_utils.report import Section
from utils.errors import UserError

RECALL_AT = (1, 5)
# Scores every text against every image: [n_texts, n_images], higher is better (Pipeline.retrieval_scores).
ScoreMatrix = Callable[[Sequence[Image.Image], Sequence[str]], torch.Tensor]


def own_ranks(scores: torch.Tensor) -> torch.Tensor:
    """For a square `scores [N, N]` whose row i belongs with column i: per row, how many other columns
    score at least as high as column i (0 = ranked first, ties counting against)."""
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"recall needs a square score matrix (text i with image i), got {list(scores.shape)}")
    own = scores.diagonal().unsqueeze(1)
    return (scores >= own).sum(dim=1) - 1


def recalls(scores: torch.Tensor, ks: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """Recall@K both ways of `scores [n_texts, n_images]` (text i belongs with image i)."""
    text_ranks, image_ranks = own_ranks(scores), own_ranks(scores.T)
    results = {}
    for k in ks:
        results[f"text_to_image_r@{k}"] = float((text_ranks < k).double().mean())
        results[f"image_to_text_r@{k}"] = float((image_ranks < k).double().mean())
    return results


def distinct_pairs(images: Sequence[Image.Image], captions: Sequence[str], count: int
                   ) -> tuple[list[Image.Image], list[str]]:
    """The first `count` pairs whose captions differ from every earlier one's (fewer when the items run out)."""
    seen: set[str] = set()
    kept: list[int] = []
    for index, caption in enumerate(captions):
        if caption not in seen and len(kept) < count:
            seen.add(caption)
            kept.append(index)
    if len(kept) < 2:
        raise UserError(f"retrieval needs at least 2 held-out pairs with different captions, found {len(kept)}")
    return [images[i] for i in kept], [captions[i] for i in kept]


def retrieval_section(score_matrix: ScoreMatrix, sets: dict[str, tuple[Sequence[Image.Image], Sequence[str]]]
                      ) -> Section:
    """evaluate.py's retrieval section: recall@1 and @5 both ways, per caption language (`sets`: name ->
    images and their captions)."""
    results, lines = {}, [f"{'':<10}{'pairs':>7}" + "".join(f"{f'{d} R@{k}':>12}" for k in RECALL_AT
                                                             for d in ("t->i", "i->t"))]
    for name, (images, captions) in sets.items():
        found = recalls(score_matrix(images, captions))
        results[name] = {"pairs": len(captions), **found}
        lines.append(f"{name:<10}{len(captions):>7}" + "".join(
            f"{found[f'{d}_r@{k}']:>12.3f}" for k in RECALL_AT for d in ("text_to_image", "image_to_text")))
    return Section("retrieval", results, "\n".join(lines))
