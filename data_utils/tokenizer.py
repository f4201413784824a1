"""`UnifiedTokenizer`: the one id space shared by image codes, text pieces and command tokens.

Layout, in CogView's order (docs/architecture.md, docs/tokenizer.md):

    [0, K)              image codes (K = VQ-VAE codebook size)
    [K, K + S)          text pieces, id = SentencePiece id + K
    [K + S, ...)        command tokens: COGVIEW_COMMAND_TOKENS, then EXTENSION_COMMAND_TOKENS
    then, only with location bins (B > 0):
      UNDERSTANDING_COMMAND_TOKENS   the task tokens of the understanding tasks ([QUES], [ANS], ...)
      B * B location tokens          cell (row, col) of a B x B grid over the image, id = first + row * B + col
    ... vocab_size      unused padding up to a multiple of 128 (tensor-core friendly embeddings)

With K = 8192 and S = 50,000 every id equals CogView's ([PAD] = 58192, vocabulary 58,240), so its
released checkpoints line up token for token. New command tokens are only ever appended to
EXTENSION_COMMAND_TOKENS, which never moves an existing id.

The understanding block is a switch rather than more EXTENSION_COMMAND_TOKENS on purpose: without location
bins (B = 0, every checkpoint made before them) the id space, the vocabulary size and the fingerprint are
exactly the old ones, so old checkpoints and data keep loading. Location tokens are Kosmos-2's patch-index
tokens; `data_utils/locations.py` turns boxes into them and back.
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
# The task tokens of visual questions, grounded captions, referring expressions and box-to-phrase
# (data_utils/sequences.py), present only in a tokenizer with location bins. Append only.
UNDERSTANDING_COMMAND_TOKENS: tuple[str, ...] = ("[QUES]", "[ANS]", "[GRND]", "[REF]", "[BOX]", "[PHR]")
DEFAULT_LOCATION_BINS = 32  # bins per side of the location grid when the understanding tasks are on (as Kosmos-2)

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


@dataclass(frozen=True)
class LocationSegment:
    cell: int  # row * bins + col of the location grid


@dataclass(frozen=True, eq=False)  # eq on tensors is elementwise, not a bool; compare with torch.equal
class ImageSegment:
    codes: torch.Tensor  # long, [side, side] when the run is a perfect square, else [n]


Segment = Union[TextSegment, CommandSegment, ImageSegment, LocationSegment]


def as_id_list(ids: Iterable[int] | torch.Tensor | np.ndarray) -> list[int]:
    """Python ints from a sequence, or from a tensor or array of any shape (flattened row-major)."""
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        return [int(i) for i in ids.reshape(-1).tolist()]
    return [int(i) for i in ids]


class UnifiedTokenizer:
    """Maps text, image codes and command tokens into one vocabulary for the transformer."""

    def __init__(self, text_tokenizer: TextTokenizerLike, codebook_size: int, location_bins: int = 0):
        if codebook_size <= 0:
            raise UserError(f"codebook size must be positive, got {codebook_size}")
        if location_bins < 0:
            raise UserError(f"location bins must be >= 0 (0: no location tokens), got {location_bins}")
        self.text_tokenizer = text_tokenizer
        self.codebook_size = int(codebook_size)
        self.num_text_tokens = int(text_tokenizer.vocab_size)
        self.text_offset = self.codebook_size
        self.command_offset = self.text_offset + self.num_text_tokens
        self.location_bins = int(location_bins)
        self.command_tokens = COMMAND_TOKENS + (UNDERSTANDING_COMMAND_TOKENS if self.location_bins else ())
        self.num_command_tokens = len(self.command_tokens)
        self.location_offset = self.command_offset + self.num_command_tokens
        self.num_location_tokens = self.location_bins ** 2
        used = self.location_offset + self.num_location_tokens
        self.vocab_size = math.ceil(used / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        self._command_ids = {name: self.command_offset + i for i, name in enumerate(self.command_tokens)}
        self.pad_id = self._command_ids["[PAD]"]

    @classmethod
    def from_files(cls, text_model_path: str | os.PathLike, codebook_size: int,
                   location_bins: int = 0) -> UnifiedTokenizer:
        from data_utils.text_tokenizer import TextTokenizer

        return cls(TextTokenizer(text_model_path), codebook_size, location_bins)

    @property
    def num_used_ids(self) -> int:
        """Ids with a meaning; those above, up to `vocab_size`, only pad the embedding table."""
        return self.location_offset + self.num_location_tokens

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

    # --- location tokens ---------------------------------------------------------------------
    def location_id(self, cell: int) -> int:
        """The id of location cell `cell` (row * bins + col); see data_utils/locations.py."""
        if not 0 <= cell < self.num_location_tokens:
            raise ValueError(f"location cell must be in [0, {self.num_location_tokens}), got {cell}"
                             + ("" if self.location_bins else " (this tokenizer has no location tokens)"))
        return self.location_offset + int(cell)

    def location_cell(self, token_id: int) -> int:
        """Inverse of `location_id`."""
        if not self.is_location_id(token_id):
            raise ValueError(f"token id {token_id} is not a location token")
        return int(token_id) - self.location_offset

    def is_location_id(self, token_id: int) -> bool:
        return self.location_offset <= token_id < self.location_offset + self.num_location_tokens

    def location_mask(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.location_offset) & (ids < self.location_offset + self.num_location_tokens)

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
            if self.is_location_id(token_id):
                close_run()
                segments.append(LocationSegment(self.location_cell(token_id)))
                continue
            if not (self.is_image_id(token_id) or self.is_text_id(token_id)):
                raise ValueError(f"token id {token_id} is outside the used vocabulary "
                                 f"[0, {self.num_used_ids}) of this tokenizer "
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
        if self.location_bins:  # absent without them, so every tokenizer made before them keeps its fingerprint
            identity["location_bins"] = self.location_bins
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]

    def describe(self) -> dict:
        """The manifest entry for this tokenizer (docs/architecture.md, Shards)."""
        model_path = getattr(self.text_tokenizer, "model_path", None)
        return {"path": None if model_path is None else str(model_path), "fingerprint": self.fingerprint(),
                "codebook_size": self.codebook_size, "vocab_size": self.vocab_size,
                "location_bins": self.location_bins}

    def __repr__(self) -> str:
        return (f"UnifiedTokenizer(codebook_size={self.codebook_size}, num_text_tokens={self.num_text_tokens}, "
                f"location_bins={self.location_bins}, vocab_size={self.vocab_size})")
