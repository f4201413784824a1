"""Validation loss in bits per token, per task, for image codes and for everything else.

For each batch of right-padded sequences (`TaskSequenceDataset` + `collate_sequences`)
the model reads `input_ids[:, :-1]` (with `position_ids[:, :-1]`) and is scored on predicting
`input_ids[:, 1:]`, exactly the training objective without `--txt-loss-scale`:

    bits(target) = -ln p(target | earlier tokens) / ln 2

summed in float64 over every target that is not `[PAD]` and divided by the number of such targets,
separately for image-code targets (ids in [0, K)) and for all other targets (text pieces and command
tokens such as `[EOI1]` or `[SEP]`), overall and per task. A model that knows nothing (all-zero
logits over V ids) scores exactly log2(V) on both. Unlike the scores of `generation.scoring`, which
normalise over the ids that may stand at a place, this is the softmax over the whole vocabulary, as
training's loss is: it measures the model, not a decoding rule.

`bits_per_token_section` is evaluate.py's bpt section: the validation shards scored as every task they
allow and the model was trained on.
"""
from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from tqdm import tqdm

from data_utils.dataset import TaskSequenceDataset, collate_sequences, positions_needed
from data_utils.sequences import TASKS, UNDERSTANDING_TASKS
from data_utils.shards import ShardedRows
from data_utils.tokenizer import UnifiedTokenizer
from eval_utils.report import Section
from fp16 import inference_autocast
from generation.scoring import token_log_probs
from generation.tasks import Geometry
from utils.errors import UserError
from vqvae.api import vqvae_fingerprint

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
            nats = -token_log_probs(logits, targets).double()
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


def bpt_tasks(rows: ShardedRows, trained: Sequence[str] | None = None) -> list[str]:
    """Every task the rows can make (super-resolution needs their low-res codes, the understanding tasks their
    annotations) that the model was trained on (`trained`, from the checkpoint's metadata; None when it does
    not say, as in CogView's release): an untrained task's bits would say nothing about the model and swamp
    the average."""
    return [task for task in TASKS if (task != "super_resolution" or rows.format.lowres_grid)
            and (task not in UNDERSTANDING_TASKS or rows.format.annotation_tokens)
            and (trained is None or task in trained)]


def trained_tasks(metadata: dict[str, Any]) -> list[str] | None:
    """The tasks the checkpoint's training mixed, when its metadata records them."""
    tasks = (metadata.get("data") or {}).get("tasks")
    return list(tasks) if tasks is not None else None


def open_validation_rows(path: str, tokenizer: UnifiedTokenizer, vqvae: torch.nn.Module,
                         geometry: Geometry) -> ShardedRows:
    """Validation shards made with this model's tokenizer and VQ-VAE, at its image grid and positions."""
    rows = ShardedRows(path, tokenizer, vqvae_fingerprint(vqvae))
    grid = geometry.image_grid
    if rows.format.image_grid != grid:
        raise UserError(f"{path} holds {rows.format.image_grid}x{rows.format.image_grid} code grids, the model "
                        f"makes {grid}x{grid}; preprocess the data at the model's image size")
    needed = positions_needed(rows.format, dict.fromkeys(bpt_tasks(rows), 1.0))
    if needed > geometry.max_positions:
        raise UserError(f"rows of {path} need {needed} positions, the model has {geometry.max_positions}; "
                        f"preprocess with a smaller --text-max-tokens")
    budget = geometry.text_positions
    if budget is not None and rows.format.text_max_tokens != budget:
        raise UserError(f"{path} holds texts of up to {rows.format.text_max_tokens} tokens, the model reserves "
                        f"{budget} positions for text; preprocess with --text-max-tokens {budget}")
    return rows


def bits_per_token_section(model: torch.nn.Module, tokenizer: UnifiedTokenizer, rows: ShardedRows, count: int,
                           batch_size: int, data_seed: int, precision: str = "fp32",
                           trained: Sequence[str] | None = None) -> Section:
    """Bits per image and per text token of the first `count` rows (in the permutation of `data_seed`),
    each scored as every task the rows allow and the model was trained on; the model runs in `precision`,
    as in generation."""
    used = min(count, len(rows))
    tasks = bpt_tasks(rows, trained)
    if not tasks:
        raise UserError(f"the model was trained on {', '.join(trained or [])}, which the rows in {rows.data_dir} "
                        f"cannot make (super-resolution needs shards written with --with-lowres)")

    def batches():
        for task in tasks:
            dataset = TaskSequenceDataset(rows, tokenizer, {task: 1.0}, seed=data_seed,
                                          position_layout=model.config.position_layout)
            for start in range(0, used, batch_size):
                samples = [dataset[position] for position in range(start, min(start + batch_size, used))]
                yield collate_sequences(samples, tokenizer.pad_id)

    with inference_autocast(next(model.parameters()).device, precision):
        result = bits_per_token(model, batches(), tokenizer, max_batches=len(tasks) * -(-used // batch_size))
    return Section("bpt", {**result.to_dict(), "rows": used, "data": str(rows.data_dir)},
                   f"{result.format_table()}\n{'rows':<18}{used:>12d}")
