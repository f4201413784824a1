"""Validation loss in bits per token, and CogView's caption loss as an image-text alignment score.

Bits per token. For each batch of right-padded sequences (`TaskSequenceDataset` + `collate_sequences`)
the model reads `input_ids[:, :-1]` (with `position_ids[:, :-1]`) and is scored on predicting
`input_ids[:, 1:]`, exactly the training objective without `--txt-loss-scale`:

    bits(target) = -ln p(target | earlier tokens) / ln 2

summed in float64 over every target that is not `[PAD]` and divided by the number of such targets,
separately for image-code targets (ids in [0, K)) and for all other targets (text pieces and command
tokens such as `[EOI1]` or `[SEP]`), overall and per task. A model that knows nothing (all-zero
logits over V ids) scores exactly log2(V) on both.

Caption loss. CogView's paper rates text-image alignment by the "Caption Loss": the average loss of
each image's caption under a captioning model, lower is better. One model of ours does both
directions, so for each (image codes, caption) pair we score the image-to-text sequence
`G [BOI1] codes [EOI1] [ROI1] text [SEP]` and take the mean over the caption's text-piece targets
of -ln p(token | image, earlier text) in nats, with image-code logits removed before the softmax as
CogView's post-selection does (`[SEP]` is not scored, as there). The score of a set is the mean
over pairs (each image counts once, however long its caption).

That number mixes two things: how well the image predicts the caption, and how predictable the
caption is as text at all (short, repetitive captions score low with any image). So we also score
every caption against another image (pair i's caption with image (i + 1) mod N) and report the
gap `shuffled - matched`: the nats per token that the right image explains. A gap near 0 means the
captions do not depend on the images; it is comparable between models on the same captions.
"""
from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data_utils import sequences
from data_utils.tokenizer import UnifiedTokenizer
from utils.errors import UserError

LN2 = math.log(2.0)


@dataclass
class _NatsTally:
    nats: float = 0.0
    tokens: int = 0

    def bits(self) -> float:
        return self.nats / self.tokens / LN2 if self.tokens else math.nan


@dataclass
class BitsPerToken:
    """Mean bits per target token: image codes vs everything else, overall and per task."""

    image_bits: float
    text_bits: float          # text pieces and command tokens: every non-[PAD] target that is not a code
    image_tokens: int
    text_tokens: int
    by_task: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def bits(self) -> float:
        """Mean over all scored targets."""
        total = self.image_tokens + self.text_tokens
        image = self.image_bits * self.image_tokens if self.image_tokens else 0.0
        text = self.text_bits * self.text_tokens if self.text_tokens else 0.0
        return (image + text) / total if total else math.nan

    def to_dict(self) -> dict:
        return {"bits": self.bits, "image_bits": self.image_bits, "text_bits": self.text_bits,
                "image_tokens": self.image_tokens, "text_tokens": self.text_tokens, "by_task": self.by_task}

    def format_table(self) -> str:
        lines = [f"{'task':<18}{'image bits':>12}{'tokens':>10}{'text bits':>12}{'tokens':>10}"]
        overall = {"image_bits": self.image_bits, "image_tokens": self.image_tokens,
                   "text_bits": self.text_bits, "text_tokens": self.text_tokens}
        rows = [*sorted(self.by_task.items()), ("all", overall)]
        for task, values in rows:
            lines.append(f"{task:<18}{values['image_bits']:>12.4f}{values['image_tokens']:>10d}"
                         f"{values['text_bits']:>12.4f}{values['text_tokens']:>10d}")
        return "\n".join(lines)


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def bits_per_token(model: torch.nn.Module, batches: Iterable[Mapping], tokenizer: UnifiedTokenizer,
                   max_batches: int | None = None) -> BitsPerToken:
    """Next-token loss in bits per image-code target and per other target (module docstring).

    `batches` yields `collate_sequences` dicts (`input_ids`, `position_ids`, `tasks`); `max_batches`
    stops early. The model is put in eval mode for the call and restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = _model_device(model)
    tallies: dict[tuple[str, str], _NatsTally] = defaultdict(_NatsTally)
    if max_batches is not None:
        batches = itertools.islice(batches, max_batches)
    try:
        for batch in tqdm(batches, desc="bits per token", unit="batch", total=max_batches):
            input_ids = batch["input_ids"].to(device)
            position_ids = batch["position_ids"].to(device)
            logits = model(input_ids[:, :-1], position_ids[:, :-1])
            targets = input_ids[:, 1:]
            nats = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
            nats = nats.view_as(targets).double()
            scored = targets != tokenizer.pad_id
            is_image = tokenizer.image_mask(targets)
            for kind, mask in (("image", scored & is_image), ("text", scored & ~is_image)):
                row_nats = torch.where(mask, nats, 0.0).sum(dim=1).tolist()  # one device sync per kind
                row_tokens = mask.sum(dim=1).tolist()
                for task, row_sum, row_count in zip(batch["tasks"], row_nats, row_tokens):
                    tallies[task, kind].nats += row_sum
                    tallies[task, kind].tokens += row_count
    finally:
        model.train(was_training)
    if not tallies:
        raise UserError("no validation batches to score; check the validation data")

    def combine(kind: str, task: str | None = None) -> _NatsTally:
        parts = [t for (t_task, t_kind), t in tallies.items() if t_kind == kind and task in (None, t_task)]
        return _NatsTally(sum(p.nats for p in parts), sum(p.tokens for p in parts))

    by_task = {}
    for task in sorted({task for task, _ in tallies}):
        image, text = combine("image", task), combine("text", task)
        by_task[task] = {"image_bits": image.bits(), "image_tokens": image.tokens,
                         "text_bits": text.bits(), "text_tokens": text.tokens}
    image, text = combine("image"), combine("text")
    return BitsPerToken(image.bits(), text.bits(), image.tokens, text.tokens, by_task)


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


@torch.no_grad()
def caption_nats(model: torch.nn.Module, tokenizer: UnifiedTokenizer, image_codes: torch.Tensor,
                 text_ids: Sequence[Sequence[int]], batch_size: int = 16) -> torch.Tensor:
    """Mean caption NLL in nats per text token of each (codes [h, w], unified text ids) pair -> [N].

    Image-code logits are removed from the softmax; only text-piece targets are scored.
    """
    if image_codes.dim() != 3 or image_codes.shape[1] != image_codes.shape[2]:
        raise UserError(f"expected square image code grids [N, h, h], got shape {tuple(image_codes.shape)}")
    if len(text_ids) != image_codes.shape[0]:
        raise UserError(f"{image_codes.shape[0]} images but {len(text_ids)} captions")
    if any(len(ids) == 0 for ids in text_ids):
        raise UserError("every caption needs at least one text token to be scored")
    grid = image_codes.shape[1]
    longest_caption = max(len(ids) for ids in text_ids)
    needed = sequences.max_length("image2text", longest_caption, grid)
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if positions is not None and needed > positions:
        raise UserError(f"a caption of {longest_caption} tokens after a {grid}x{grid} image needs {needed} "
                        f"positions, but the model has {positions}; shorten the captions")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    scores = []
    try:
        for start in tqdm(range(0, len(text_ids), batch_size), desc="caption loss", unit="batch"):
            built = [sequences.image2text(tokenizer, codes, grid, ids)
                     for codes, ids in zip(image_codes[start:start + batch_size], text_ids[start:start + batch_size])]
            longest = max(len(seq) for seq in built)
            input_ids = torch.full((len(built), longest), tokenizer.pad_id, dtype=torch.long)
            position_ids = torch.zeros_like(input_ids)
            for row, seq in enumerate(built):
                input_ids[row, :len(seq)] = torch.tensor(seq.ids)
                position_ids[row, :len(seq)] = torch.tensor(seq.position_ids)
            input_ids, position_ids = input_ids.to(device), position_ids.to(device)
            logits = model(input_ids[:, :-1], position_ids[:, :-1]).float()
            logits[..., :tokenizer.codebook_size] = -math.inf
            targets = input_ids[:, 1:]
            nats = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
            caption = tokenizer.text_mask(targets)
            # Codes score inf once masked out of the softmax; only caption targets may enter the sum.
            caption_nats_sum = torch.where(caption, nats.double(), 0.0).sum(dim=1)
            scores.append((caption_nats_sum / caption.sum(dim=1)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(scores)


def caption_loss_alignment(model: torch.nn.Module, tokenizer: UnifiedTokenizer, image_codes: torch.Tensor,
                           captions: Sequence[str], batch_size: int = 16) -> CaptionLoss:
    """CogView's caption loss of (image codes [N, h, w], caption) pairs, and its shuffled-pair baseline.

    Needs N >= 2 pairs (the baseline pairs caption i with image (i + 1) mod N); every caption must be
    non-empty. See the module docstring for the definition and why the gap is reported.
    """
    if len(captions) < 2:
        raise UserError(f"the caption loss needs at least 2 image-caption pairs, got {len(captions)}")
    text_ids = [tokenizer.encode_text(caption) for caption in captions]
    matched = caption_nats(model, tokenizer, image_codes, text_ids, batch_size)
    shuffled = caption_nats(model, tokenizer, torch.roll(image_codes, shifts=-1, dims=0), text_ids, batch_size)
    return CaptionLoss(float(matched.mean()), float(shuffled.mean()), matched.tolist())
