"""Image-text retrieval: how well every text matches every image, and each side ranked against the other.

The score of text t and image i is the one text-given-image likelihood (`scoring.text_given_image`,
post-selection's and the caption loss's), normalised per text by the gallery:

    score(t, i) = ln P(t | i) - ln mean_j P(t | j)        (j over every image scored)

a pointwise mutual information whose ln P(t) is estimated by the images at hand. Why: ln P(t | i) is
mostly how predictable t is as text at all, so ranking the texts for an image by it lets the shortest,
most generic caption win every image. The subtraction is a constant per text, so it leaves each text's
ranking of the images unchanged and fixes the other direction. On 100 held-out shapes pairs, with the
quick start's model (docs/tasks/retrieval.md), image-to-text recall@1 was 0.45 with the raw
likelihood, 0.67 with its mean per token, 0.84 with ln P(t) taken from the text-to-image sequence's
text prefix, and 0.94 with this; text-to-image recall@1 was 0.88 with each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm import tqdm

from data_utils.tokenizer import UnifiedTokenizer
from generation.scoring import text_given_image
from generation.tasks import Geometry
from utils.errors import UserError


@dataclass
class RetrievalScores:
    """`scores [n_texts, n_images]` (higher is better), each text's images best first, each image's texts best first."""

    scores: torch.Tensor
    images_for_text: list[list[int]]
    texts_for_image: list[list[int]]

    @classmethod
    def of(cls, scores: torch.Tensor) -> RetrievalScores:
        return cls(scores, ranked(scores), ranked(scores.T))


def ranked(scores: torch.Tensor) -> list[list[int]]:
    """Per row of `scores [R, C]`, its column indices best (highest) first; equal scores keep index order."""
    return [sorted(range(scores.shape[1]), key=lambda j: -float(row[j])) for row in scores]


def gallery_normalised(log_probs: torch.Tensor) -> torch.Tensor:
    """`ln P(t | i) [n_texts, n_images]` minus, per text, the log of its mean probability over the images."""
    log_probs = log_probs.double()
    return log_probs - (torch.logsumexp(log_probs, dim=1, keepdim=True) - math.log(log_probs.shape[1]))


def retrieval_scores(model: torch.nn.Module, tok: UnifiedTokenizer, geometry: Geometry, codes: torch.Tensor,
                     text_ids: Sequence[Sequence[int]], max_batch_rows: int) -> torch.Tensor:
    """Scores `[n_texts, n_images]` (float64, higher is better) of every text against every code grid
    `[n_images, grid, grid]`: `gallery_normalised` ln P(text | image). Every pair is one sequence of
    `text_given_image`'s batches, which take a group of texts at a time (for the progress bar)."""
    if not len(codes) or not text_ids:
        raise UserError(f"retrieval needs at least one image and one text, got {len(codes)} and {len(text_ids)}")
    n_texts, n_images = len(text_ids), len(codes)
    per_call = max(1, max_batch_rows // n_images)
    rows = []
    with tqdm(total=n_texts, desc="retrieval", unit="text", disable=n_texts <= per_call) as bar:
        for start in range(0, n_texts, per_call):
            group = text_ids[start:start + per_call]
            pairs = text_given_image(model, tok, geometry, codes.repeat(len(group), 1, 1),
                                     [text for text in group for _ in range(n_images)], max_batch_rows)
            rows.append(-pairs.nats.view(len(group), n_images))
            bar.update(len(group))
    return gallery_normalised(torch.cat(rows))
