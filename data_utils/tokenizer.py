"""`UnifiedTokenizer`: the one id space shared by image codes, text pieces and command tokens.

Layout, in CogView's order (docs/architecture.md, docs/tokenizer.md):

    [0, K)              image codes (K = VQ-VAE codebook size)
    [K, K + S)          text pieces, id = SentencePiece id + K
    [K + S, ...)        command tokens: COGVIEW_COMMAND_TOKENS, then EXTENSION_COMMAND_TOKENS
    ... vocab_size      unused padding up to a multiple of 128 (tensor-core friendly embeddings)

With K = 8192 and S = 50,000 every id equals CogView's ([PAD] = 58192, vocabulary 58,240), so its
released checkpoints line up token for token. New command tokens are only ever appended to
EXTENSION_COMMAND_TOKENS, which never moves an existing id.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence, Union

import numpy as np
import torch

from utils.errors import UserError
from utils.logging import get_logger

logger = get_logger(__name__)

COGVIEW_COMMAND_TOKENS: tuple[str, ...] = (
    "[PAD]", "[BOI1]", "[BOI2]", "[BOI3]", "[EOI1]", "[EOI2]", "[EOI3]", "[ROI1]", "[ROI2]", "[ROI3]",
    "[SEP]", "[MASK]", "[CLS]", "[ENC]", "[TINY]", "[SMALL]", "[BASE]", "[BIG]",
    *(f"[POS{i}]" for i in range(9)),
)
# Ours, after CogView's. Append only: an insertion would shift every later id.
EXTENSION_COMMAND_TOKENS: tuple[str, ...] = ("[MINI]",)
COMMAND_TOKENS: tuple[str, ...] = COGVIEW_COMMAND_TOKENS + EXTENSION_COMMAND_TOKENS

# Side of the code grid -> the command token that announces it (CogView always wrote [BASE]).
GRID_TOKENS: dict[int, str] = {4: "[MINI]", 8: "[TINY]", 16: "[SMALL]", 32: "[BASE]", 64: "[BIG]"}
NUM_WINDOW_POSITIONS = 9  # [POS0] ... [POS8], the super-resolution window index
VOCAB_MULTIPLE = 128


class TextTokenizerLike(Protocol):
    """What the unified tokenizer needs of a text tokenizer (`TextTokenizer`, or a fake in tests)."""

    vocab_size: int
    fingerprint: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class TextSegment:
    text: str


@dataclass(frozen=True)
class CommandSegment:
    name: str


@dataclass(frozen=True, eq=False)  # eq on tensors is elementwise, not a bool; compare with torch.equal
class ImageSegment:
    codes: torch.Tensor  # long, [side, side] when the run is a perfect square, else [n]


Segment = Union[TextSegment, CommandSegment, ImageSegment]


def as_id_list(ids: Iterable[int] | torch.Tensor | np.ndarray) -> list[int]:
    """Python ints from a sequence, or from a tensor or array of any shape (flattened row-major)."""
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        return [int(i) for i in ids.reshape(-1).tolist()]
    return [int(i) for i in ids]


class UnifiedTokenizer:
    """Maps text, image codes and command tokens into one vocabulary for the transformer."""

    def __init__(self, text_tokenizer: TextTokenizerLike, codebook_size: int):
        if codebook_size <= 0:
            raise UserError(f"codebook size must be positive, got {codebook_size}")
        self.text_tokenizer = text_tokenizer
        self.codebook_size = int(codebook_size)
        self.num_text_tokens = int(text_tokenizer.vocab_size)
        self.text_offset = self.codebook_size
        self.command_offset = self.text_offset + self.num_text_tokens
        self.command_tokens = COMMAND_TOKENS
        self.num_command_tokens = len(self.command_tokens)
        used = self.command_offset + self.num_command_tokens
        self.vocab_size = math.ceil(used / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        self._command_ids = {name: self.command_offset + i for i, name in enumerate(self.command_tokens)}
        self.pad_id = self._command_ids["[PAD]"]

    @classmethod
    def from_files(cls, text_model_path: str | os.PathLike, codebook_size: int) -> UnifiedTokenizer:
        from data_utils.text_tokenizer import TextTokenizer

        return cls(TextTokenizer(text_model_path), codebook_size)

    # --- command tokens ---------------------------------------------------------------------
    def __getitem__(self, name: str) -> int:
        try:
            return self._command_ids[name]
        except KeyError:
            raise KeyError(f"unknown command token {name!r}; known: {' '.join(self.command_tokens)}") from None

    def command_name(self, token_id: int) -> str | None:
        """The command token's name, or None for an image code, a text piece or padding."""
        index = int(token_id) - self.command_offset
        return self.command_tokens[index] if 0 <= index < self.num_command_tokens else None

    def grid_token(self, side: int) -> int:
        """The id of the token that announces a `side` x `side` code grid."""
        if side not in GRID_TOKENS:
            valid = ", ".join(str(s) for s in GRID_TOKENS)
            raise UserError(f"image code grid of side {side} has no grid token; valid sides: {valid} "
                            f"(grid side = image size / VQ-VAE downsampling)")
        return self._command_ids[GRID_TOKENS[side]]

    def position_token(self, window: int) -> int:
        """The id of `[POS{window}]`, the super-resolution window index."""
        if not 0 <= window < NUM_WINDOW_POSITIONS:
            raise ValueError(f"window index must be in 0..{NUM_WINDOW_POSITIONS - 1}, got {window}")
        return self._command_ids[f"[POS{window}]"]

    # --- id classes ---------------------------------------------------------------------------
    def is_image_id(self, token_id: int) -> bool:
        return 0 <= token_id < self.codebook_size

    def is_text_id(self, token_id: int) -> bool:
        return self.text_offset <= token_id < self.command_offset

    def image_mask(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= 0) & (ids < self.codebook_size)

    def text_mask(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.text_offset) & (ids < self.command_offset)

    # --- text ---------------------------------------------------------------------------------
    def encode_text(self, text: str, max_tokens: int | None = None) -> list[int]:
        """Unified ids of `text`; longer than `max_tokens` keeps the first `max_tokens` and warns."""
        if not text or text.isspace():
            raise UserError("empty prompt: give some text to describe the image")
        if max_tokens is not None and max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        ids = [sp_id + self.text_offset for sp_id in self.text_tokenizer.encode(text)]
        if max_tokens is not None and len(ids) > max_tokens:
            preview = text if len(text) <= 60 else text[:57] + "..."
            logger.warning("prompt %r is %d tokens long; dropped the last %d tokens to fit the limit of %d",
                           preview, len(ids), len(ids) - max_tokens, max_tokens)
            ids = ids[:max_tokens]
        return ids

    def decode_text(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The text of the text-piece ids among `ids`; image codes and command tokens are ignored."""
        return self.text_tokenizer.decode(
            [i - self.text_offset for i in as_id_list(ids) if self.is_text_id(i)])

    # --- mixed sequences ----------------------------------------------------------------------
    def decode(self, ids: Iterable[int] | torch.Tensor) -> list[Segment]:
        """Split a mixed id sequence into text, command and image segments, in order.

        A run of image codes becomes one `ImageSegment`, shaped [side, side] when its length is a
        perfect square (a whole grid), else left 1-D (for example a generation cut short).
        """
        segments: list[Segment] = []
        run: list[int] = []
        run_is_image = False

        def close_run() -> None:
            if not run:
                return
            if run_is_image:
                codes = torch.tensor(run, dtype=torch.long)
                side = math.isqrt(len(run))
                segments.append(ImageSegment(codes.view(side, side) if side * side == len(run) else codes))
            else:
                segments.append(TextSegment(self.text_tokenizer.decode([i - self.text_offset for i in run])))
            run.clear()

        for token_id in as_id_list(ids):
            name = self.command_name(token_id)
            if name is not None:
                close_run()
                segments.append(CommandSegment(name))
                continue
            if not (self.is_image_id(token_id) or self.is_text_id(token_id)):
                raise ValueError(f"token id {token_id} is outside the used vocabulary "
                                 f"[0, {self.command_offset + self.num_command_tokens}) of this tokenizer "
                                 f"(ids up to {self.vocab_size - 1} are only padding of the embedding table)")
            is_image = self.is_image_id(token_id)
            if run and is_image != run_is_image:
                close_run()
            run_is_image = is_image
            run.append(token_id)
        close_run()
        return segments

    # --- identity -----------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A stable hash of everything that decides what an id means; data and checkpoints record it."""
        identity = {"text_tokenizer": self.text_tokenizer.fingerprint, "codebook_size": self.codebook_size,
                    "command_tokens": list(self.command_tokens)}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]

    def describe(self) -> dict:
        """The manifest entry for this tokenizer (docs/architecture.md, Shards)."""
        model_path = getattr(self.text_tokenizer, "model_path", None)
        return {"path": None if model_path is None else str(model_path), "fingerprint": self.fingerprint(),
                "codebook_size": self.codebook_size, "vocab_size": self.vocab_size}

    def __repr__(self) -> str:
        return (f"UnifiedTokenizer(codebook_size={self.codebook_size}, num_text_tokens={self.num_text_tokens}, "
                f"vocab_size={self.vocab_size})")
