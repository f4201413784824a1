"""The generation tasks in token space: text -> codes, codes -> caption, codes -> 2x codes.

Everything here speaks unified token ids and code grids; images (PIL, VQ-VAE) live in `pipeline.py`,
and scoring a text against an image (post-selection) in `scoring.py`. Each task builds its prompts with
`data_utils.sequences` (the only place that knows token order) and hands them to `decoding.decode`.

Seeds: the request for item j (image j of a prompt, or input image j) uses seed `base_seed + j`, the
same for every prompt. Image j of any prompt can be made again on its own with `--seed base_seed+j`
and one image, whatever else was in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from data_utils.sequences import (Grid, TokenSequence, grid_ids, grid_shape, image2text, super_resolution,
                                  text2image)
from data_utils.sr_windows import DEFAULT_SR_CONDITION, Window, condition_grid, magnify_windows, window_condition
from data_utils.tokenizer import UnifiedTokenizer
from generation.decoding import SAMPLE, DecodeRequest, DecodeSpec, decode
from generation.sampling import SamplingSettings, allowed_mask
from utils.errors import UserError


@dataclass(frozen=True)
class Geometry:
    """The sizes a checkpoint was trained for.

    `image_grid` is the side of the code grid of text-to-image and captioning; super-resolution was
    trained from `image_grid // 2` to `image_grid` (the `lowres` shard field), and `magnifies` says whether
    it also trained the windows that magnify `image_grid` to `2 * image_grid` (`data_utils.sr_windows`; the
    `sr_windows` of the checkpoint's data metadata, absent in older checkpoints); `sr_condition` is what its
    super-resolution reads (`sr_windows.SR_CONDITIONS`: the input's own codes, or the codes of the input
    upsampled to the target's size). `max_positions` is the
    number of position embeddings. `text_positions` is the text's fixed block of positions of a
    "fixed-image" model, None for consecutive positions (data_utils/sequences.py). `output_grid` is
    the (rows, columns) text-to-image makes when asked for another shape (`with_output_grid`); None
    for the trained square.
    """

    image_grid: int
    text_max_tokens: int
    max_positions: int
    text_positions: int | None = None
    output_grid: tuple[int, int] | None = None
    magnifies: bool = False
    sr_condition: str = DEFAULT_SR_CONDITION

    @property
    def lowres_grid(self) -> int:
        """The side of the codes of super-resolution's low-resolution input (half the image)."""
        return self.image_grid // 2

    @property
    def text2image_grid(self) -> Grid:
        return self.output_grid or self.image_grid


def with_output_grid(geometry: Geometry, grid: tuple[int, int], tok: UnifiedTokenizer) -> Geometry:
    """`geometry` making text-to-image grids of (rows, columns) codes; a shape without grid tokens or whose
    sequence (with the longest text) would not fit the model's positions is refused in one line."""
    rows, cols = grid
    names = grid_ids(tok, (rows, cols))  # one line for a side without a grid token
    needed = geometry.text_max_tokens + len(names) + 3 + rows * cols  # [ROI1] text G.. [BOI1] codes [EOI1]
    if geometry.text_positions is not None:
        needed += geometry.text_positions - geometry.text_max_tokens
    if needed > geometry.max_positions:
        raise UserError(f"a {rows}x{cols} code grid needs {needed} positions with the longest text but the model "
                        f"has {geometry.max_positions}; choose a smaller --image-grid")
    return replace(geometry, output_grid=(rows, cols))


def check_fits(prompt: TokenSequence, steps: int, geometry: Geometry, what: str) -> None:
    """Refuse a prompt whose continuation would run past the model's position embeddings."""
    needed = prompt.position_ids[-1] + steps  # the last position fed is last + steps - 1; keep [EOI]'s slot
    if needed >= geometry.max_positions:
        raise UserError(f"{what} needs {needed + 1} positions but the model has {geometry.max_positions}; "
                        f"use a shorter prompt or a smaller image grid")


def image_ids_mask(tok: UnifiedTokenizer) -> torch.Tensor:
    return allowed_mask(tok.vocab_size, range(0, tok.codebook_size))


def caption_ids_mask(tok: UnifiedTokenizer) -> torch.Tensor:
    """Text pieces and `[SEP]`, which ends a caption."""
    mask = allowed_mask(tok.vocab_size, range(tok.text_offset, tok.command_offset))
    mask[tok["[SEP]"]] = True
    return mask


# --- text -> image codes ----------------------------------------------------------------------------
def generate_image_codes(model: torch.nn.Module, tok: UnifiedTokenizer, geometry: Geometry,
                         text_ids: Sequence[Sequence[int]], n: int, seed: int, settings: SamplingSettings,
                         max_batch_rows: int, negative_ids: Sequence[int] | None = None) -> torch.Tensor:
    """`n` code grids for each prompt, `[P, n, rows, cols]` (`geometry.text2image_grid`); image j of every
    prompt has seed `seed + j`.

    With guidance (`settings.cfg_scale != 1`) each request also runs an unconditional twin: the
    prompt with the text removed (the CFG-drop sequence of training), or with `negative_ids` instead.
    """
    if n < 1:
        raise UserError(f"--batch-size (images per prompt) must be >= 1, got {n}")
    grid = geometry.text2image_grid
    rows, cols = grid_shape(grid)
    steps = rows * cols
    uncond = text2image(tok, list(negative_ids or []), grid, text_positions=geometry.text_positions
                        ) if settings.uses_guidance else None
    requests = []
    for ids in text_ids:
        prompt = text2image(tok, ids, grid, text_positions=geometry.text_positions)
        check_fits(prompt, steps, geometry, "text-to-image")
        requests += [DecodeRequest(prompt, seed + j, uncond) for j in range(n)]
    spec = DecodeSpec(steps=steps, allowed=image_ids_mask(tok), settings=settings, pad_id=tok.pad_id)
    codes = decode(model, requests, spec, max_batch_rows, description="text-to-image")
    return torch.stack(codes).view(len(text_ids), n, rows, cols)


# --- image codes -> caption -------------------------------------------------------------------------
CANDIDATE_SEED_STRIDE = 1_000_000


def candidate_seed(image_seed: int, candidate: int) -> int:
    """The seed of caption candidate j of an image: the image's own seed for j = 0 (the caption a single
    candidate gets), then a million apart, so candidates of different images in one call share no seed
    (under a million images) and adding candidates leaves the earlier ones as they were. (Not 2**32
    apart: a CPU generator keeps only the low 32 bits of its seed.)"""
    return image_seed + candidate * CANDIDATE_SEED_STRIDE


def caption_candidates(model: torch.nn.Module, tok: UnifiedTokenizer, geometry: Geometry, codes: torch.Tensor,
                       seed: int, settings: SamplingSettings, max_tokens: int, max_batch_rows: int,
                       candidates: int = 1) -> list[list[list[int]]]:
    """`candidates` captions of each code grid `[N, grid, grid]`, as text ids (`[SEP]` dropped): text ids
    only, stopping at `[SEP]` or after `max_tokens` text tokens. Candidate j of image i samples with
    `candidate_seed(seed + i, j)`, so a single candidate is image i's caption under seed `seed + i`.
    Rows finish independently. Choosing among candidates is `scoring.match_scores`' job (`Pipeline.caption`).
    """
    if max_tokens < 1:
        raise UserError(f"--max-caption-tokens must be >= 1, got {max_tokens}")
    if candidates < 1:
        raise UserError(f"--caption-candidates must be >= 1, got {candidates}")
    if candidates > 1 and settings.top_k == 1:
        raise UserError("caption candidates of greedy decoding (top-k 1) are all the same caption; "
                        "sample them (top-k 0 or above 1)")
    grid = grid_of(codes, geometry.image_grid, "captioning")
    requests = []
    for i, image_codes in enumerate(codes):
        prompt = image2text(tok, image_codes, grid)
        check_fits(prompt, max_tokens, geometry, "captioning")
        requests += [DecodeRequest(prompt, candidate_seed(seed + i, j)) for j in range(candidates)]
    spec = DecodeSpec(steps=max_tokens, allowed=caption_ids_mask(tok), settings=settings,
                      stop_id=tok["[SEP]"], pad_id=tok.pad_id)
    outputs = [[t for t in tokens.tolist() if t != tok["[SEP]"]]
               for tokens in decode(model, requests, spec, max_batch_rows, description="captioning")]
    return [outputs[i * candidates:(i + 1) * candidates] for i in range(len(codes))]


# --- super-resolution -------------------------------------------------------------------------------
# How every entry point decodes super-resolution unless told otherwise (Pipeline.super_resolve,
# text2image_select_upscale, generate_samples, evaluate): greedy. The output is nearly determined by its
# input, and sampling (CogView's top-k 200 at temperature 1.02) scatters codes into blobs
# (docs/tasks/super_resolution.md, "Sampling settings").
SUPER_RESOLUTION_SAMPLING = SamplingSettings(temperature=1.0, top_k=1)


def super_resolution_settings(top_k: int | None = None, top_p: float | None = None,
                              temperature: float | None = None) -> SamplingSettings:
    """`SUPER_RESOLUTION_SAMPLING` with the values given here instead (None keeps the default; a
    temperature alone changes nothing while top-k stays 1, greedy)."""
    given = {"top_k": top_k, "top_p": top_p, "temperature": temperature}
    return replace(SUPER_RESOLUTION_SAMPLING, **{name: value for name, value in given.items() if value is not None})


def check_magnifies(geometry: Geometry) -> None:
    """Refuse, in one line, magnification by a model that never trained its windows: it would return garbage."""
    if not geometry.magnifies:
        g, lo = geometry.image_grid, geometry.lowres_grid
        raise UserError(f"this model cannot magnify {g}x{g} codes to {2 * g}x{2 * g} (text2image-full, or "
                        f"super-resolution of a full-size image): its super-resolution trained only {lo}x{lo} -> "
                        f"{g}x{g} codes, on data without --with-highres codes; train on data made with "
                        f"preprocess_data.py --with-lowres --with-highres, or super-resolve low-resolution images")


def window_seed(image_seed: int, window: int) -> int:
    """The seed of one window of one image: distinct for each of its 9 windows, so windows do not
    repeat each other's random draws, and a function of the image's own seed only (batch-invariant)."""
    return 9 * image_seed + window


def super_resolve_codes(model: torch.nn.Module, tok: UnifiedTokenizer, geometry: Geometry, codes: torch.Tensor,
                        text_ids: Sequence[Sequence[int]], seed: int, settings: SamplingSettings,
                        max_batch_rows: int) -> torch.Tensor:
    """Condition code grids `[N, c, c]` of images of `s x s` codes -> `[N, 2s, 2s]`, each conditioned on its
    text; image i has seed `seed + i` and its window w draws from `window_seed(seed + i, w)`. The condition
    is the model's (`geometry.sr_condition`, `sr_windows.condition_grid`): the images' own codes (c = s), or
    the codes of the images upsampled to twice their side (c = 2s).

    s = image_grid/2 is the trained whole-image step: one `[POS0]` pass. s = image_grid magnifies with
    `magnify_windows`: 9 passes with `[POS0]` ... `[POS8]`, each running the same window of all images as one
    batch; only a model that trained those windows (`geometry.magnifies`) may, others are refused.
    """
    if codes.dim() != 3 or codes.shape[1] != codes.shape[2]:
        raise UserError(f"expected square code grids [N, s, s], got shape {list(codes.shape)}")
    if len(text_ids) != len(codes):
        raise ValueError(f"{len(codes)} images but {len(text_ids)} texts")
    side, hi, condition = codes.shape[1], geometry.image_grid, geometry.sr_condition
    whole, magnify = condition_grid(condition, geometry.lowres_grid), condition_grid(condition, hi)
    if side == whole:
        return _generate_windows(model, tok, geometry, codes, text_ids, seed, settings, max_batch_rows,
                                 [Window(0, 0, 0)], target_side=hi)
    if side == magnify:
        check_magnifies(geometry)
        return _generate_windows(model, tok, geometry, codes, text_ids, seed, settings, max_batch_rows,
                                 magnify_windows(hi), target_side=2 * hi)
    raise UserError(f"super-resolution takes {whole}x{whole} or {magnify}x{magnify} code grids (this model's sizes, "
                    f"{condition} condition), got {side}x{side}")


def _generate_windows(model, tok: UnifiedTokenizer, geometry: Geometry, codes: torch.Tensor,
                      text_ids: Sequence[Sequence[int]], seed: int, settings: SamplingSettings,
                      max_batch_rows: int, windows: list[Window], target_side: int) -> torch.Tensor:
    hi, lo = geometry.image_grid, condition_grid(geometry.sr_condition, geometry.lowres_grid)
    num = len(codes)
    target = torch.full((num, target_side, target_side), SAMPLE, dtype=torch.long)
    spec = DecodeSpec(steps=hi * hi, allowed=image_ids_mask(tok), settings=settings, pad_id=tok.pad_id)
    for window in windows:
        rows, cols = window.target_slices(hi)
        requests = []
        for i in range(num):
            # The crops and the [POS k] token of training's window samples (data_utils.dataset).
            source = window_condition(window, geometry.sr_condition, codes[i], hi)
            prompt = super_resolution(tok, text_ids[i], source, lo, hi, window=window.index,
                                      text_positions=geometry.text_positions)
            check_fits(prompt, hi * hi, geometry, "super-resolution")
            requests.append(DecodeRequest(prompt, window_seed(seed + i, window.index),
                                          forced=target[i, rows, cols].reshape(-1).clone()))
        outputs = decode(model, requests, spec, max_batch_rows,
                         description=f"super-resolution window {window.index + 1}/{len(windows)}")
        for i, output in enumerate(outputs):
            target[i, rows, cols] = output.view(hi, hi)
    return target


def grid_of(codes: torch.Tensor, expected: int, what: str) -> int:
    if codes.dim() != 3 or codes.shape[1:] != (expected, expected):
        raise UserError(f"{what} takes {expected}x{expected} code grids (this model's image size), "
                        f"got shape {list(codes.shape[1:]) if codes.dim() == 3 else list(codes.shape)}")
    return expected
