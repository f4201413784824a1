"""What the understanding tasks train on, per item: questions with answers, object phrases with boxes and
referring expressions with boxes; and how a row stores them.

`TaskAnnotations` is the source side, in words and pixels of the item's final image (the one that is encoded):
`shapes` makes it from its objects (`data_utils/shapes_tasks.py`), a JSONL list from its rows' fields
(docs/data_format.md). `RowAnnotations` is the same in token ids, as the training dataset reads it: texts as
unified text ids, boxes as two location ids, and the body of the grounded caption (the item's caption with its
object phrases marked, `sequences.grounded_caption_ids`) when every object phrase is found in the caption.

In a row the records follow each other in the `annotations` field (`RowFormat.annotation_tokens` ids, the
first holding how many are used), each `kind, len(a), a…, len(b), b…`:

    kind 1  question     a = question text ids,     b = answer text ids
    kind 2  expression   a = expression text ids,   b = two location ids
    kind 3  object       a = phrase text ids,       b = two location ids
    kind 4  grounded     a = grounded caption body, b = empty

A record whose text is longer than the rows' text budget (a grounded caption's body: that budget plus
`sequences.GROUNDED_MARKER_BUDGET`), or that no longer fits the field, is left out and counted (preprocessing reports the count), so every understanding sequence stays within `sequences.max_length`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from data_utils import sequences
from data_utils.locations import Box, box_to_ids
from data_utils.tokenizer import UnifiedTokenizer

QUESTION, EXPRESSION, OBJECT, GROUNDED = 1, 2, 3, 4


@dataclass
class TaskAnnotations:
    """An item's understanding-task material, in words and pixels of its final image."""

    questions: list[tuple[str, str]] = field(default_factory=list)  # (question, answer)
    objects: list[tuple[str, Box]] = field(default_factory=list)  # (phrase, box), in caption order
    expressions: list[tuple[str, Box]] = field(default_factory=list)  # (referring expression, box)

    def __bool__(self) -> bool:
        return bool(self.questions or self.objects or self.expressions)


IdPair = tuple[list[int], list[int]]


@dataclass
class RowAnnotations:
    """`TaskAnnotations` in token ids, as a row stores them."""

    questions: list[IdPair] = field(default_factory=list)
    expressions: list[IdPair] = field(default_factory=list)
    objects: list[IdPair] = field(default_factory=list)
    grounded: list[int] | None = None

    def tasks(self) -> tuple[str, ...]:
        """The understanding tasks this row can train."""
        have = {"vqa": self.questions, "grounded_caption": self.grounded, "referring": self.expressions,
                "box_to_phrase": self.objects}
        return tuple(task for task in sequences.UNDERSTANDING_TASKS if have[task])


def to_ids(tok: UnifiedTokenizer, annotations: TaskAnnotations, caption: str, width: int, height: int,
           text_budget: int) -> tuple[RowAnnotations, int]:
    """The annotations in ids, and how many records were left out for a text over `text_budget` tokens."""
    dropped = 0

    def text(words: str) -> list[int] | None:
        nonlocal dropped
        ids = tok.encode_text(words) if words.strip() else []
        if not ids or len(ids) > text_budget:
            dropped += 1
            return None
        return ids

    out = RowAnnotations()
    for question, answer in annotations.questions:
        q = text(question)
        a = text(answer) if q is not None else None
        if q is not None and a is not None:
            out.questions.append((q, a))
    for target, pairs in ((out.expressions, annotations.expressions), (out.objects, annotations.objects)):
        for words, box in pairs:
            ids = text(words)
            if ids is not None:
                target.append((ids, box_to_ids(tok, box, width, height)))
    if annotations.objects:
        body = sequences.grounded_caption_ids(
            tok, caption, [(phrase, box_to_ids(tok, box, width, height)) for phrase, box in annotations.objects])
        if body is not None and len(body) > text_budget + sequences.GROUNDED_MARKER_BUDGET:
            dropped += 1
            body = None
        out.grounded = body
    return out, dropped


def pack(annotations: RowAnnotations, length: int) -> tuple[np.ndarray, int]:
    """The `annotations` field of a row (`length` ids, first the count used) and how many records did not fit."""
    records = [(QUESTION, a, b) for a, b in annotations.questions]
    records += [(EXPRESSION, a, b) for a, b in annotations.expressions]
    records += [(OBJECT, a, b) for a, b in annotations.objects]
    if annotations.grounded is not None:
        records.append((GROUNDED, annotations.grounded, []))
    flat: list[int] = []
    dropped = 0
    for kind, a, b in records:
        record = [kind, len(a), *a, len(b), *b]
        if 1 + len(flat) + len(record) > length:
            dropped += 1
            continue
        flat += record
    out = np.zeros(length, dtype=np.int64)
    out[0] = len(flat)
    out[1:1 + len(flat)] = flat
    return out, dropped


def unpack(field_ids: Sequence[int] | np.ndarray) -> RowAnnotations:
    """Inverse of `pack`."""
    ids = [int(i) for i in field_ids]
    used, k = ids[0], 1
    out = RowAnnotations()
    while k < 1 + used:
        kind, n_a = ids[k], ids[k + 1]
        a = ids[k + 2:k + 2 + n_a]
        n_b = ids[k + 2 + n_a]
        b = ids[k + 3 + n_a:k + 3 + n_a + n_b]
        k += 3 + n_a + n_b
        if kind == QUESTION:
            out.questions.append((a, b))
        elif kind == EXPRESSION:
            out.expressions.append((a, b))
        elif kind == OBJECT:
            out.objects.append((a, b))
        elif kind == GROUNDED:
            out.grounded = a
        else:
            raise ValueError(f"corrupt annotations: unknown record kind {kind}")
    return out
