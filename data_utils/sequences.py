"""The task sequences: the only place that knows in which order tokens go.

CogView has no task tokens; the order of the parts tells the model what to do (docs/architecture.md):

    text-to-image      [ROI1] text G [BOI1] codes [EOI1]                       positions 0 … n-1
    unconditional      [ROI1] G [BOI1] codes [EOI1]        (empty text, CFG)   positions 0 … n-1
    image-to-text      G [BOI1] codes [EOI1] [ROI1] text [SEP]                 positions 0 … n-1
    super-resolution   [ROI1] text G_lo [BOI1] lo [EOI1] | [ROI2] [POS w] G_hi [BOI2] hi [EOI2]
                       positions restart at 0 at [ROI2]

The understanding tasks (tokens of a tokenizer with location bins, `UnifiedTokenizer(..., location_bins=B)`)
read the image first, like image-to-text, and a task token right after `[EOI1]` says which task it is, since
the prompt (everything up to the part to generate) must already tell them apart:

    vqa                G [BOI1] codes [EOI1] [QUES] question [ANS] answer [SEP]            prompt ends at [ANS]
    grounded_caption   G [BOI1] codes [EOI1] [GRND] caption [SEP]                          prompt ends at [GRND]
                       where each object phrase of the caption reads `[PHR] phrase L_tl L_br`
    referring          G [BOI1] codes [EOI1] [REF] expression [BOX] L_tl L_br [SEP]        prompt ends at [BOX]
    box_to_phrase      G [BOI1] codes [EOI1] [BOX] L_tl L_br [PHR] phrase [SEP]            prompt ends at [PHR]
                       positions 0 … n-1

vqa, referring and box_to_phrase may train several records of one image in one sequence (`turns`): the image
once, then each record's full turn, `… [EOI1] [QUES] q1 [ANS] a1 [SEP] [QUES] q2 [ANS] a2 [SEP]`.

`L_tl L_br` are the location tokens of a box's top-left and bottom-right cells (`data_utils/locations.py`).
In a grounded caption `[PHR]` opens an object phrase and its two location tokens close it, as Kosmos-2's
`<p> phrase </p> <box> … </box>`: "[PHR] a large red circle L L at the top left and [PHR] a small …".
The parsers (`parse_answer`, `parse_grounded_caption`, `parse_box`, `parse_phrase`) read generated ids back.

`G` names the grid of the image that follows: one grid token for a square grid (`[BASE]` for 32x32),
the pair `G_rows G_cols` for a non-square one (`[SMALL] [BASE]`: 16 rows of 32 codes). Each side must
have a grid token (4, 8, 16, 32 or 64), so squares read exactly as before.

`text_ids` are unified ids (`encode_text`); codes are image codes in [0, K) as sequences, tensors or
numpy arrays (2-D grids read row-major). Leaving out the part the model is to generate gives the
generation prompt.

Position layouts (`ModelConfig.position_layout`). CogView numbers the tokens consecutively
("consecutive"), so an image that follows its text starts at a position that depends on the text's
length, and a model must learn to find each code's row and column relative to `[BOI1]`. With
"fixed-image" the text owns positions 1 … `text_positions` whether it fills them or not, and what follows
it starts at `text_positions + 1`: code (r, c) then has one position in every text-to-image sequence, as
in LlamaGen and DALLE-pytorch (which pad the text to a fixed length; no pad tokens are fed here). Only
text-to-image and the low-resolution half of super-resolution change: image-to-text starts with its image.

Image coordinates (`image_coordinates`). A model that treats image codes by their place in the grid (the
local image window of `ModelConfig.image_attention_window`) finds that place from the ids alone, so
training, scoring and KV-cache decoding agree without being told: a grid token starts an image (every
image above is `G [BOI] codes`), and the codes that follow fill its grid row-major, the side of the last
grid token (the columns of a pair) being the row length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from data_utils.locations import Box, ids_to_box
from data_utils.tokenizer import GRID_TOKENS, UnifiedTokenizer, as_id_list
from utils.errors import UserError

TASKS = ("text2image", "image2text", "super_resolution", "vqa", "grounded_caption", "referring", "box_to_phrase")
# The tasks that read an image and answer in text or location tokens (they need a tokenizer with location
# bins, and rows with annotations: data_utils/annotations.py).
UNDERSTANDING_TASKS = ("vqa", "grounded_caption", "referring", "box_to_phrase")
# Ids a grounded caption's body may hold beyond the text budget: `[PHR]` and two location ids per object, for
# up to five objects.
GROUNDED_MARKER_BUDGET = 16
# How the builders number positions (see "Position layouts" above); a model records its own
# (`ModelConfig.position_layout`), which is why model/config.py reads the names from here.
POSITION_LAYOUTS = ("consecutive", "fixed-image")

IdsLike = Iterable[int] | torch.Tensor | np.ndarray
# A code grid: its side when square, else (rows, columns).
Grid = int | tuple[int, int]


@dataclass
class TokenSequence:
    ids: list[int]
    position_ids: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def _text(tok: UnifiedTokenizer, text_ids: IdsLike) -> list[int]:
    ids = as_id_list(text_ids)
    if not all(tok.is_text_id(i) for i in ids):
        raise ValueError("text_ids must be unified text ids (from UnifiedTokenizer.encode_text), "
                         "not SentencePiece ids, image codes or command tokens")
    return ids


def grid_shape(grid: Grid) -> tuple[int, int]:
    """(rows, columns) of a grid given as a side or a pair."""
    return (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))


def grid_ids(tok: UnifiedTokenizer, grid: Grid) -> list[int]:
    """The grid tokens that name `grid`: one for a square, rows then columns otherwise."""
    rows, cols = grid_shape(grid)
    return [tok.grid_token(rows)] if rows == cols else [tok.grid_token(rows), tok.grid_token(cols)]


def grid_with_tokens(text: str) -> tuple[int, int]:
    """"HxW" (or "N" for a square) -> (rows, columns) of a grid whose sides have grid tokens (so it can
    be named in a sequence); anything else is a one-line error."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"a code grid is written ROWSxCOLUMNS, like 16x32, got {text!r}")
    rows, cols = int(parts[0]), int(parts[1])
    if rows not in GRID_TOKENS or cols not in GRID_TOKENS:
        raise UserError(f"code grid {rows}x{cols} is not supported: each side must be one of "
                        f"{', '.join(map(str, GRID_TOKENS))} (the sides with a grid token)")
    return rows, cols


def _codes(tok: UnifiedTokenizer, codes: IdsLike, grid: Grid, what: str) -> list[int]:
    ids = as_id_list(codes)
    rows, cols = grid_shape(grid)
    if len(ids) != rows * cols:
        raise ValueError(f"{what} has {len(ids)} codes but a {rows}x{cols} grid needs {rows * cols}")
    if ids and (min(ids) < 0 or max(ids) >= tok.codebook_size):
        raise ValueError(f"{what} holds ids outside the codebook [0, {tok.codebook_size})")
    return ids


def text_positions_for(position_layout: str, text_max_tokens: int) -> int | None:
    """The builders' `text_positions` for a model's position layout: its text budget under "fixed-image",
    None under CogView's "consecutive"."""
    if position_layout not in POSITION_LAYOUTS:
        raise UserError(f"position layout must be one of {POSITION_LAYOUTS}, got {position_layout!r}")
    return text_max_tokens if position_layout == "fixed-image" else None


def _after_text(text: list[int], rest: list[int], text_positions: int | None) -> list[int]:
    """Positions of `[ROI1] text` followed by `rest`: consecutive, or with `rest` starting at
    `text_positions + 1` whatever the text's length (the "fixed-image" layout)."""
    if text_positions is None:
        return list(range(1 + len(text) + len(rest)))
    if len(text) > text_positions:
        raise UserError(f"the text has {len(text)} tokens but the model reserves {text_positions} positions for it; "
                        f"shorten it")
    return list(range(1 + len(text))) + list(range(1 + text_positions, 1 + text_positions + len(rest)))


def text2image(tok: UnifiedTokenizer, text_ids: IdsLike, grid: Grid, codes: IdsLike | None = None,
               text_positions: int | None = None) -> TokenSequence:
    """`[ROI1] text G [BOI1] codes [EOI1]`; without `codes`, the prompt ending at `[BOI1]`.

    Empty `text_ids` give the unconditional sequence of classifier-free guidance. `text_positions`: None
    for consecutive positions, else the text's fixed budget of positions (the "fixed-image" layout).
    """
    text = _text(tok, text_ids)
    rest = [*grid_ids(tok, grid), tok["[BOI1]"]]
    if codes is not None:
        rest += [*_codes(tok, codes, grid, "image"), tok["[EOI1]"]]
    return TokenSequence([tok["[ROI1]"], *text, *rest], _after_text(text, rest, text_positions))


def image2text(tok: UnifiedTokenizer, codes: IdsLike, grid: Grid, text_ids: IdsLike | None = None) -> TokenSequence:
    """`G [BOI1] codes [EOI1] [ROI1] text [SEP]`; without `text_ids`, the prompt ending at `[ROI1]`."""
    ids = [*grid_ids(tok, grid), tok["[BOI1]"], *_codes(tok, codes, grid, "image"), tok["[EOI1]"], tok["[ROI1]"]]
    if text_ids is not None:
        ids += [*_text(tok, text_ids), tok["[SEP]"]]
    return TokenSequence(ids, list(range(len(ids))))


def super_resolution(tok: UnifiedTokenizer, text_ids: IdsLike, lo_codes: IdsLike, lo_grid: int, hi_grid: int,
                     hi_codes: IdsLike | None = None, window: int = 0, text_positions: int | None = None
                     ) -> TokenSequence:
    """`[ROI1] text G_lo [BOI1] lo [EOI1] [ROI2] [POS w] G_hi [BOI2] hi [EOI2]`, positions restarting at [ROI2].

    Without `hi_codes`, the prompt ending at `[BOI2]`. `window` is the index (0-8) of the
    high-resolution window being generated; 0 for a whole image. `text_positions` as in `text2image`.
    """
    text = _text(tok, text_ids)
    low_rest = [tok.grid_token(lo_grid), tok["[BOI1]"], *_codes(tok, lo_codes, lo_grid, "low-resolution image"),
                tok["[EOI1]"]]
    high = [tok["[ROI2]"], tok.position_token(window), tok.grid_token(hi_grid), tok["[BOI2]"]]
    if hi_codes is not None:
        high += [*_codes(tok, hi_codes, hi_grid, "high-resolution image"), tok["[EOI2]"]]
    return TokenSequence([tok["[ROI1]"], *text, *low_rest, *high],
                         _after_text(text, low_rest, text_positions) + list(range(len(high))))


# --- understanding tasks ----------------------------------------------------------------------------------
def _image_first(tok: UnifiedTokenizer, codes: IdsLike, grid: Grid) -> list[int]:
    return [*grid_ids(tok, grid), tok["[BOI1]"], *_codes(tok, codes, grid, "image"), tok["[EOI1]"]]


def _box(tok: UnifiedTokenizer, box_ids: IdsLike) -> list[int]:
    ids = as_id_list(box_ids)
    if len(ids) != 2 or not all(tok.is_location_id(i) for i in ids):
        raise ValueError("a box is two location token ids (data_utils.locations.box_to_ids)")
    return ids


def _consecutive(ids: list[int]) -> TokenSequence:
    return TokenSequence(ids, list(range(len(ids))))


def _vqa_turn(tok: UnifiedTokenizer, question_ids: IdsLike, answer_ids: IdsLike | None) -> list[int]:
    ids = [tok["[QUES]"], *_text(tok, question_ids), tok["[ANS]"]]
    return ids if answer_ids is None else [*ids, *_text(tok, answer_ids), tok["[SEP]"]]


def vqa(tok: UnifiedTokenizer, codes: IdsLike, grid: Grid, question_ids: IdsLike,
        answer_ids: IdsLike | None = None) -> TokenSequence:
    """`G [BOI1] codes [EOI1] [QUES] question [ANS] answer [SEP]`; without `answer_ids`, the prompt ending at
    `[ANS]`."""
    return _consecutive([*_image_first(tok, codes, grid), *_vqa_turn(tok, question_ids, answer_ids)])


def grounded_caption(tok: UnifiedTokenizer, codes: IdsLike, grid: Grid,
                     caption_ids: IdsLike | None = None) -> TokenSequence:
    """`G [BOI1] codes [EOI1] [GRND] caption [SEP]`, `caption_ids` from `grounded_caption_ids`; without it,
    the prompt ending at `[GRND]`."""
    ids = [*_image_first(tok, codes, grid), tok["[GRND]"]]
    if caption_ids is not None:
        body = as_id_list(caption_ids)
        allowed = {tok["[PHR]"]}
        if not all(tok.is_text_id(i) or tok.is_location_id(i) or i in allowed for i in body):
            raise ValueError("a grounded caption holds text ids, [PHR] and location ids only "
                             "(build it with grounded_caption_ids)")
        ids += [*body, tok["[SEP]"]]
    return _consecutive(ids)


def grounded_caption_ids(tok: UnifiedTokenizer, caption: str,
                         objects: Iterable[tuple[str, IdsLike]]) -> list[int] | None:
    """The body of a grounded caption: `caption` with each object's phrase marked as `[PHR] phrase L_tl L_br`.

    `objects` are (phrase, two location ids) in caption order; each phrase is looked for in `caption` after
    the previous one (the first occurrence). None when a phrase is not there: such a caption cannot be
    grounded. The text between phrases is encoded piece by piece, so "a large red circle" reads the same
    wherever it stands.
    """
    body: list[int] = []
    start = 0
    for phrase, box_ids in objects:
        at = caption.find(phrase, start) if phrase.strip() else -1
        if at < 0:
            return None
        before = caption[start:at]
        if before.strip():
            body += tok.encode_text(before)
        body += [tok["[PHR]"], *tok.encode_text(phrase), *_box(tok, box_ids)]
        start = at + len(phrase)
    if caption[start:].strip():
        body += tok.encode_text(caption[start:])
    return body


def _referring_turn(tok: UnifiedTokenizer, expression_ids: IdsLike, box_ids: IdsLike | None) -> list[int]:
    ids = [tok["[REF]"], *_text(tok, expression_ids), tok["[BOX]"]]
    return ids if box_ids is None else [*ids, *_box(tok, box_ids), tok["[SEP]"]]


def referring(tok: UnifiedTokenizer, codes: IdsLike, grid: Grid, expression_ids: IdsLike,
              box_ids: IdsLike | None = None) -> TokenSequence:
    """`G [BOI1] codes [EOI1] [REF] expression [BOX] L_tl L_br [SEP]`; without `box_ids`, the prompt ending
    at `[BOX]`."""
    return _consecutive([*_image_first(tok, codes, grid), *_referring_turn(tok, expression_ids, box_ids)])


def _box_to_phrase_turn(tok: UnifiedTokenizer, phrase_ids: IdsLike | None, box_ids: IdsLike) -> list[int]:
    ids = [tok["[BOX]"], *_box(tok, box_ids), tok["[PHR]"]]
    return ids if phrase_ids is None else [*ids, *_text(tok, phrase_ids), tok["[SEP]"]]


def box_to_phrase(tok: UnifiedTokenizer, codes: IdsLike, grid: Grid, box_ids: IdsLike,
                  phrase_ids: IdsLike | None = None) -> TokenSequence:
    """`G [BOI1] codes [EOI1] [BOX] L_tl L_br [PHR] phrase [SEP]`; without `phrase_ids`, the prompt ending
    at `[PHR]`."""
    return _consecutive([*_image_first(tok, codes, grid), *_box_to_phrase_turn(tok, phrase_ids, box_ids)])


# The turn of each task that several records of one image can repeat, built from a record as the row's
# annotations store it: (question, answer) for vqa, (expression or phrase, box) for the other two.
_TURNS = {"vqa": _vqa_turn, "referring": _referring_turn, "box_to_phrase": _box_to_phrase_turn}
TURN_TASKS = tuple(_TURNS)


def turns(tok: UnifiedTokenizer, task: str, codes: IdsLike, grid: Grid,
          records: Sequence[tuple[IdsLike, IdsLike]]) -> TokenSequence:
    """The image once, then one full turn per record, `G [BOI1] codes [EOI1] turn_1 … turn_k`: for example
    `[QUES] q1 [ANS] a1 [SEP] [QUES] q2 [ANS] a2 [SEP]`. Training on several records of one image costs one
    image's codes instead of one per record; the first turn is exactly the one-record sequence, which is all
    generation ever reads, and each later one is read after the earlier answers."""
    if task not in _TURNS:
        raise ValueError(f"{task} has no turns; one of {', '.join(TURN_TASKS)}")
    if not records:
        raise ValueError("a sequence of turns needs at least one record")
    make_turn = _TURNS[task]
    return _consecutive([*_image_first(tok, codes, grid), *(i for a, b in records for i in make_turn(tok, a, b))])


# --- reading generated ids back ----------------------------------------------------------------------------
def _until_end(tok: UnifiedTokenizer, generated: IdsLike) -> list[int]:
    """The generated ids before the first `[SEP]` or `[PAD]` (the end of every understanding answer)."""
    ids = as_id_list(generated)
    ends = {tok["[SEP]"], tok["[PAD]"]}
    return ids[:next((k for k, i in enumerate(ids) if i in ends), len(ids))]


def parse_answer(tok: UnifiedTokenizer, generated: IdsLike) -> str:
    """The text of a generated answer (vqa); tokens other than text are ignored."""
    return tok.decode_text(_until_end(tok, generated)).strip()


def parse_phrase(tok: UnifiedTokenizer, generated: IdsLike) -> str:
    """The text of a generated phrase (box_to_phrase)."""
    return parse_answer(tok, generated)


def parse_box(tok: UnifiedTokenizer, generated: IdsLike, width: int, height: int) -> Box | None:
    """The box in pixels of a width x height image named by the first two generated ids (referring), or
    None when they are not two location tokens."""
    ids = _until_end(tok, generated)[:2]
    if len(ids) != 2 or not all(tok.is_location_id(i) for i in ids):
        return None
    return ids_to_box(tok, ids, width, height)


@dataclass
class GroundedCaption:
    text: str  # the caption without its markers
    objects: list[tuple[str, Box]]  # (phrase, box in pixels) of each grounded phrase, in order


def parse_grounded_caption(tok: UnifiedTokenizer, generated: IdsLike, width: int, height: int) -> GroundedCaption:
    """The caption text and each `[PHR] phrase L_tl L_br` as (phrase, box in pixels of a width x height image).

    A phrase not closed by two location tokens is left out of `objects` (its text stays in `text`)."""
    ids = _until_end(tok, generated)
    objects: list[tuple[str, Box]] = []
    phr = tok["[PHR]"]
    k = 0
    while k < len(ids):
        if ids[k] != phr:
            k += 1
            continue
        end = k + 1
        while end < len(ids) and tok.is_text_id(ids[end]):
            end += 1
        box = ids[end:end + 2]
        if end > k + 1 and len(box) == 2 and all(tok.is_location_id(i) for i in box):
            objects.append((tok.decode_text(ids[k + 1:end]).strip(), ids_to_box(tok, box, width, height)))
            end += 2
        k = end
    return GroundedCaption(tok.decode_text(ids).strip(), objects)


def _part_lengths(task: str, text_max_tokens: int, grid: int, lo_grid: int | None, turns: int = 1
                  ) -> tuple[int, ...]:
    """Lengths of the parts whose positions each start at 0, for the longest text (each text part of an
    understanding task is at most `text_max_tokens`, a grounded caption's body `GROUNDED_MARKER_BUDGET` more);
    `turns`: the records per sample of the tasks in `TURN_TASKS` (`turns`)."""
    image = grid * grid + 3  # G [BOI1] codes [EOI1]
    if task == "vqa":
        return (image + turns * (2 * text_max_tokens + 3),)
    if task == "grounded_caption":
        return (image + text_max_tokens + GROUNDED_MARKER_BUDGET + 2,)
    if task in ("referring", "box_to_phrase"):
        return (image + turns * (text_max_tokens + 5),)
    if task == "text2image":
        return (text_max_tokens + grid * grid + 4,)
    if task == "image2text":
        return (text_max_tokens + grid * grid + 5,)
    if task == "super_resolution":
        lo_grid = grid // 2 if lo_grid is None else lo_grid
        return (text_max_tokens + lo_grid * lo_grid + 4, grid * grid + 5)
    raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def max_length(task: str, text_max_tokens: int, grid: int, lo_grid: int | None = None, turns: int = 1) -> int:
    """Number of tokens of the task's full sequence with the longest text (`grid` is the target
    image's side; `lo_grid` defaults to `grid // 2` for super-resolution; `turns` as in `_part_lengths`)."""
    return sum(_part_lengths(task, text_max_tokens, grid, lo_grid, turns))


def num_positions(task: str, text_max_tokens: int, grid: int, lo_grid: int | None = None, turns: int = 1) -> int:
    """Number of position embeddings the task needs: less than `max_length` for super-resolution,
    whose positions restart at `[ROI2]`."""
    return max(_part_lengths(task, text_max_tokens, grid, lo_grid, turns))


# --- where each image code sits -------------------------------------------------------------------
@dataclass(frozen=True)
class ImageTokens:
    """What a model needs of its tokenizer to find image codes and their grid places in a sequence:
    ids below `codebook_size` are codes, and `grid_sides` pairs each grid token id with its side.
    Recorded in `model_config.json`, so a loaded model reads sequences as it was trained to."""

    codebook_size: int
    grid_sides: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        # JSON gives lists back; keep the pairs hashable and comparable.
        object.__setattr__(self, "grid_sides", tuple((int(i), int(s)) for i, s in self.grid_sides))
        if self.codebook_size < 1 or not self.grid_sides or any(s < 1 for _, s in self.grid_sides):
            raise UserError(f"bad image token description: {self}")


def image_tokens_of(tok: UnifiedTokenizer) -> ImageTokens:
    return ImageTokens(tok.codebook_size, tuple((tok.grid_token(side), side) for side in GRID_TOKENS))


@dataclass
class ImageCoordinates:
    """Per token of `ids [B, S]`: whether it is a code of an image, which image (a count of grid tokens
    so far) and its row and column in that image's grid. Meaningless where `is_code` is False."""

    is_code: torch.Tensor
    image: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor

    def last(self, length: int) -> "ImageCoordinates":
        """The coordinates of the last `length` tokens (the queries of a forward after a cache)."""
        return ImageCoordinates(*(t[:, -length:] for t in (self.is_code, self.image, self.row, self.col)))


def image_coordinates(ids: torch.Tensor, image_tokens: ImageTokens) -> ImageCoordinates:
    """Grid places of the codes of `ids [B, S]`, vectorised (no loop over tokens): codes before any grid
    token belong to no image. Works on any prefix of a sequence, so decoding
    can ask about the sequence so far."""
    sides = torch.zeros_like(ids)
    for token_id, side in image_tokens.grid_sides:  # a handful of grid tokens
        sides = torch.where(ids == token_id, side, sides)
    is_grid = sides > 0
    index = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    last_grid = torch.where(is_grid, index, -1).cummax(dim=1).values
    width = sides.gather(1, last_grid.clamp_min(0)).clamp_min(1)
    is_code = (ids >= 0) & (ids < image_tokens.codebook_size) & (last_grid >= 0)
    codes_so_far = is_code.long().cumsum(dim=1)
    before_image = torch.where(is_grid, codes_so_far, 0).cummax(dim=1).values
    ordinal = codes_so_far - before_image - 1
    return ImageCoordinates(is_code, is_grid.long().cumsum(dim=1), ordinal // width, ordinal % width)
