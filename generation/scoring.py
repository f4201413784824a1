"""How likely a model finds one part of a sequence given the rest: the one likelihood behind
post-selection, caption reranking and the caption loss.

`text_given_image` scores each caption after its image (the image-to-text sequence
`G [BOI1] codes [EOI1] [ROI1] text [SEP]`) and `image_given_text` each image's codes after its text
(the text-to-image sequence, in the model's position layout). Both return a `Likelihood`: per pair,
the summed negative log-likelihood in nats of the scored tokens, and how many tokens were scored.
Each caller divides as it needs:

    post-selection, "caption" score (CogView's)   -text.nats                         higher is better
    post-selection, "agreement" score             -text.per_token - image.per_token  higher is better
    caption loss (eval_utils/caption_loss.py)     mean over pairs of text.per_token  lower is better

The one normalisation: the probability of a token is a softmax over the ids that may stand in its
place, every other logit masked out first (as CogView's post-selection does): text pieces and `[SEP]`
inside a caption, image codes inside an image; the ids generation samples from there
(`tasks.caption_ids_mask`, `tasks.image_ids_mask`). The caption's closing `[SEP]` is not scored.
Sums are taken in float32, as the logits are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from data_utils.padding import pad_sequences
from data_utils.sequences import TokenSequence, image2text, text2image
from data_utils.tokenizer import UnifiedTokenizer
from generation.decoding import map_in_batches, model_device
from generation.tasks import Geometry, caption_ids_mask, check_fits, grid_of, image_ids_mask
from utils.errors import UserError

POST_SELECTION_SCORES = ("agreement", "caption")


@dataclass(frozen=True)
class Likelihood:
    """Per pair: `nats`, the summed -ln p of its scored tokens (float, `[N]`), and `tokens`, how many (`[N]`)."""

    nats: torch.Tensor
    tokens: torch.Tensor

    @property
    def per_token(self) -> torch.Tensor:
        """Mean nats per scored token of each pair."""
        return self.nats / self.tokens


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """ln p(target) of each target `[...]` under the softmax of its logits `[..., V]` (in float32),
    taken over the `allowed` ids `[V]` only when given (the others are masked out first)."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _summed_nats(logits: torch.Tensor, ids: torch.Tensor, first: torch.Tensor, counts: torch.Tensor,
                 allowed: torch.Tensor) -> list[torch.Tensor]:
    """Per row r, the sum of -ln p(ids[r, t]) for t = first[r] … first[r] + counts[r] - 1, each read from
    the logits of the token before it. Only those columns' logits are normalised, not the whole row's."""
    offsets = torch.arange(int(counts.max()), device=ids.device)
    scored = offsets < counts.unsqueeze(1)                                                  # [B, T]
    columns = (first.unsqueeze(1) + offsets).clamp(max=ids.shape[1] - 1)
    rows = torch.arange(len(ids), device=ids.device).unsqueeze(1)
    picked = token_log_probs(logits[rows, columns - 1], ids[rows, columns], allowed)      # [B, T]
    return list(-picked.where(scored, 0.0).sum(dim=-1).cpu())


@torch.inference_mode()
def score_sequences(model: torch.nn.Module, sequences: list[TokenSequence], first: list[int], counts: list[int],
                    allowed: torch.Tensor, pad_id: int, max_batch_rows: int) -> Likelihood:
    """The `Likelihood` of `counts[i]` tokens of sequence i from index `first[i]` on, normalised over
    `allowed`; one plain forward per batch of right-padded sequences of similar lengths."""
    device = model_device(model)
    allowed = allowed.to(device)

    def run(chunk: list[int]) -> list[torch.Tensor]:
        batch = pad_sequences([sequences[i].ids for i in chunk], [sequences[i].position_ids for i in chunk],
                              pad_id).to(device)
        return _summed_nats(model(batch.ids, batch.positions), batch.ids,
                            torch.tensor([first[i] for i in chunk], device=device),
                            torch.tensor([counts[i] for i in chunk], device=device), allowed)

    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    nats = torch.stack(map_in_batches(len(sequences), max_batch_rows, run, order))
    return Likelihood(nats, torch.tensor(counts))


def image_then_text(tok: UnifiedTokenizer, geometry: Geometry, codes: torch.Tensor, text_ids: Sequence[Sequence[int]],
                    what: str) -> tuple[list[TokenSequence], int]:
    """The image-to-text sequence of each code grid `[N, grid, grid]` with its own (non-empty) text, checked
    against the model's positions, and the index of the first text token in every one of them."""
    grid = grid_of(codes, geometry.image_grid, what)
    if len(text_ids) != len(codes):
        raise UserError(f"{len(codes)} images but {len(text_ids)} texts for {what}")
    if not all(text_ids):
        raise UserError(f"{what} needs a non-empty text")
    sequences = [image2text(tok, image_codes, grid, text) for image_codes, text in zip(codes, text_ids)]
    check_fits(max(sequences, key=len), 0, geometry, what)
    return sequences, grid * grid + 4  # G [BOI1] codes [EOI1] [ROI1]


def text_given_image(model: torch.nn.Module, tok: UnifiedTokenizer, geometry: Geometry, codes: torch.Tensor,
                     text_ids: Sequence[Sequence[int]], max_batch_rows: int) -> Likelihood:
    """-ln P(text | image) of each code grid `[N, grid, grid]` with its own text: the sum over the text
    tokens t_i of -ln P(t_i | image, t_<i), normalised over text pieces and `[SEP]` (module docstring)."""
    sequences, text_start = image_then_text(tok, geometry, codes, text_ids, "scoring a text given its image")
    return score_sequences(model, sequences, [text_start] * len(sequences), [len(t) for t in text_ids],
                           caption_ids_mask(tok), tok.pad_id, max_batch_rows)


def image_given_text(model: torch.nn.Module, tok: UnifiedTokenizer, geometry: Geometry, codes: torch.Tensor,
                     text_ids: Sequence[Sequence[int]], max_batch_rows: int) -> Likelihood:
    """-ln P(codes | text) of each code grid `[N, grid, grid]` under its own text: the sum over the codes
    c_i of -ln P(c_i | text, c_<i), normalised over the image ids. For one image and several texts it
    ranks the texts as Bayes' rule would with a flat prior over texts: the reverse of `text_given_image`."""
    grid = grid_of(codes, geometry.image_grid, "scoring an image given its text")
    if len(text_ids) != len(codes):
        raise UserError(f"{len(codes)} images but {len(text_ids)} texts to score")
    sequences = [text2image(tok, text, grid, image_codes, text_positions=geometry.text_positions)
                 for image_codes, text in zip(codes, text_ids)]
    check_fits(max(sequences, key=lambda s: s.position_ids[-1]), 0, geometry, "scoring an image given its text")
    steps = grid * grid
    first = [len(sequence) - 1 - steps for sequence in sequences]  # the codes end before [EOI1]
    return score_sequences(model, sequences, first, [steps] * len(sequences), image_ids_mask(tok), tok.pad_id,
                           max_batch_rows)


def agreement_scores(model: torch.nn.Module, caption_model: torch.nn.Module, tok: UnifiedTokenizer,
                     geometry: Geometry, codes: torch.Tensor, text_ids: Sequence[Sequence[int]],
                     max_batch_rows: int) -> torch.Tensor:
    """How well each code grid `[N, grid, grid]` and its own text agree, read both ways, `[N]` float:
    the mean log-probability per text token of the text given the image (by `caption_model`) plus the
    mean per code of the image given the text (by `model`). Higher is better.

    Why both: image-to-text alone, CogView's post-selection score, is weakest exactly where a caption
    must say which object is where, and text-to-image places objects far more reliably, so each
    direction catches what the other misses. Why means: summed, the 64 codes of an 8x8 grid would
    outweigh a 12-token text fivefold. The image direction also prefers typical images, which misleads a
    model far from converged: there the caption score alone chooses better. docs/tasks/post_selection.md
    has the measurements.
    """
    text = text_given_image(caption_model, tok, geometry, codes, text_ids, max_batch_rows)
    image = image_given_text(model, tok, geometry, codes, text_ids, max_batch_rows)
    return -text.per_token - image.per_token


def match_scores(score: str, model: torch.nn.Module, caption_model: torch.nn.Module, tok: UnifiedTokenizer,
                 geometry: Geometry, codes: torch.Tensor, text_ids: Sequence[Sequence[int]],
                 max_batch_rows: int) -> torch.Tensor:
    """How well each code grid and its own text agree by the post-selection `score`, `[N]`, higher is
    better: "agreement" (`agreement_scores`) or "caption" (CogView's: ln P(text | image), summed)."""
    if score == "caption":
        return -text_given_image(caption_model, tok, geometry, codes, text_ids, max_batch_rows).nats
    if score == "agreement":
        return agreement_scores(model, caption_model, tok, geometry, codes, text_ids, max_batch_rows)
    raise UserError(f"unknown post-selection score {score!r}; choose one of {', '.join(POST_SELECTION_SCORES)}")
