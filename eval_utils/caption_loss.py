"""CogView's caption loss as an image-text alignment score, and its gap to shuffled pairs.

CogView's paper rates text-image alignment by the "Caption Loss": the average loss of each image's
caption under a captioning model, lower is better. One model of ours does both directions, so for each
(image codes, caption) pair we take `generation.scoring.text_given_image`, the one text-given-image
likelihood (post-selection's too), and divide its summed nats by the caption's token count: the mean
-ln p(token | image, earlier text) in nats over the caption's text pieces, each normalised over the ids a
caption may hold (text pieces and `[SEP]`), `[SEP]` itself not scored. The score of a set is the mean
over pairs (each image counts once, however long its caption).

That number mixes two things: how well the image predicts the caption, and how predictable the
caption is as text at all (short, repetitive captions score low with any image). So we also score
every caption against another image (pair i's caption with image (i + 1) mod N) and report the
gap `shuffled - matched`: the nats per token that the right image explains. A gap near 0 means the
captions do not depend on the images; it is comparable between models on the same captions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from data_utils.tokenizer import UnifiedTokenizer
from eval_utils.report import Section
from fp16 import inference_autocast
from generation.scoring import text_given_image
from generation.tasks import Geometry
from utils.errors import UserError


@dataclass
class CaptionLoss:
    """Caption loss in nats per caption token: with the right image, with another image, and the gap."""

    matched: float
    shuffled: float
    per_pair: list[float]  # matched caption loss of each pair, in input order

    @property
    def gap(self) -> float:
        return self.shuffled - self.matched

    def to_dict(self) -> dict:
        return {"caption_loss": self.matched, "caption_loss_shuffled": self.shuffled, "caption_loss_gap": self.gap,
                "pairs": len(self.per_pair)}

    def format_table(self) -> str:
        return "\n".join([f"{'caption loss (nats/token)':<34}{self.matched:>10.4f}",
                          f"{'  with a shuffled image':<34}{self.shuffled:>10.4f}",
                          f"{'  gap (shuffled - matched)':<34}{self.gap:>10.4f}",
                          f"{'pairs':<34}{len(self.per_pair):>10d}"])


def caption_loss_alignment(model: torch.nn.Module, tokenizer: UnifiedTokenizer, geometry: Geometry,
                           image_codes: torch.Tensor, captions: Sequence[str], batch_size: int = 16) -> CaptionLoss:
    """CogView's caption loss of (image codes [N, grid, grid], caption) pairs, and its shuffled-pair baseline.

    Needs N >= 2 pairs (the baseline pairs caption i with image (i + 1) mod N); every caption must be
    non-empty. The model is put in eval mode for the call and restored afterwards.
    """
    if len(captions) < 2:
        raise UserError(f"the caption loss needs at least 2 image-caption pairs, got {len(captions)}")
    # Truncated to the text budget, as training's captions were (preprocess_data.py --text-max-tokens).
    text_ids = [tokenizer.encode_text(caption, geometry.text_max_tokens) for caption in captions]
    was_training = model.training
    model.eval()
    try:
        matched = text_given_image(model, tokenizer, geometry, image_codes, text_ids, batch_size).per_token
        shuffled = text_given_image(model, tokenizer, geometry, torch.roll(image_codes, shifts=-1, dims=0),
                                    text_ids, batch_size).per_token
    finally:
        model.train(was_training)
    return CaptionLoss(float(matched.double().mean()), float(shuffled.double().mean()), matched.tolist())


def caption_loss_section(model: torch.nn.Module, tokenizer: UnifiedTokenizer, geometry: Geometry,
                         codes: torch.Tensor, captions: list[str], batch_size: int, precision: str = "fp32") -> Section:
    """evaluate.py's caption-loss section: `caption_loss_alignment` of held-out pairs, the model in `precision`."""
    with inference_autocast(next(model.parameters()).device, precision):
        result = caption_loss_alignment(model, tokenizer, geometry, codes, captions, batch_size)
    return Section("caption-loss", result.to_dict(), result.format_table())
