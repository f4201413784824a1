"""The understanding tasks in token space: answers, grounded captions, boxes and phrases, decoded greedily.

Each builds its prompts with `data_utils.sequences` (the only place that knows token order) and hands them to
`decoding.decode` with greedy settings (top-k 1: an answer is read, not sampled) and the ids each slot may
take: text slots only text pieces (and `[SEP]`, which ends them), location slots only location tokens. A
grounded caption mixes both, so its slots follow a grammar (`grounded_caption_constraint`):

    outside a phrase   text, `[PHR]` or `[SEP]`
    after `[PHR]`      text (a phrase has at least one piece), then text or its first location token
    after that one     its second location token, which closes the phrase

Parsing the ids back into words and boxes is `sequences.parse_*`'s job (`Pipeline` does it).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from data_utils import sequences
from data_utils.tokenizer import UnifiedTokenizer
from generation.decoding import DecodeRequest, DecodeSpec, decode
from generation.sampling import SamplingSettings, allowed_mask
from generation.tasks import Geometry, caption_ids_mask, check_fits, grid_of
from utils.errors import UserError

GREEDY = SamplingSettings(top_k=1)


def require_locations(tok: UnifiedTokenizer) -> None:
    if not tok.location_bins:
        raise UserError("this checkpoint has no location tokens (trained on data made with --location-bins 0), "
                        "so it was never trained on questions, grounding or boxes")


def location_ids_mask(tok: UnifiedTokenizer) -> torch.Tensor:
    return allowed_mask(tok.vocab_size, range(tok.location_offset, tok.location_offset + tok.num_location_tokens))


def grounded_caption_constraint(tok: UnifiedTokenizer) -> Callable[[list[int]], torch.Tensor]:
    """The ids a grounded caption may continue with, given its tokens so far (see the module docstring)."""
    text = caption_ids_mask(tok)  # text pieces and [SEP]
    text[tok["[SEP]"]] = False
    outside = text.clone()
    outside[[tok["[PHR]"], tok["[SEP]"]]] = True
    locations = location_ids_mask(tok)
    text_or_location = text | locations
    phr = tok["[PHR]"]

    def allowed(so_far: list[int]) -> torch.Tensor:
        opened = max((k for k, i in enumerate(so_far) if i == phr), default=-1)
        if opened < 0:
            return outside
        after = so_far[opened + 1:]
        closing = [i for i in after if tok.is_location_id(i)]
        if len(closing) >= 2:
            return outside
        if len(closing) == 1:
            return locations
        return text if not after else text_or_location

    return allowed


def _image_prompts(tok: UnifiedTokenizer, geometry: Geometry, codes: torch.Tensor, build, steps: int,
                   what: str) -> list[DecodeRequest]:
    grid = grid_of(codes, geometry.image_grid, what)
    requests = []
    for i, image_codes in enumerate(codes):
        prompt = build(image_codes, grid, i)
        check_fits(prompt, steps, geometry, what)
        requests.append(DecodeRequest(prompt, seed=i))  # greedy: the seed draws nothing
    return requests


def _texts(model, tok: UnifiedTokenizer, requests: list[DecodeRequest], max_tokens: int, max_batch_rows: int,
           what: str) -> list[list[int]]:
    if max_tokens < 1:
        raise UserError(f"the most tokens of an answer must be >= 1, got {max_tokens}")
    spec = DecodeSpec(steps=max_tokens, allowed=caption_ids_mask(tok), settings=GREEDY, stop_id=tok["[SEP]"],
                      pad_id=tok.pad_id)
    return [tokens.tolist() for tokens in decode(model, requests, spec, max_batch_rows, description=what)]


def answer_ids(model: torch.nn.Module, tok: UnifiedTokenizer, geometry: Geometry, codes: torch.Tensor,
               question_ids: Sequence[Sequence[int]], max_tokens: int, max_batch_rows: int) -> list[list[int]]:
    """The generated answer (text ids, then `[SEP]` unless cut at `max_tokens`) to each image's question."""
    require_locations(tok)
    if len(question_ids) != len(codes):
        raise UserError(f"{len(codes)} images but {len(question_ids)} questions")
    requests = _image_prompts(tok, geometry, codes, lambda c, g, i: sequences.vqa(tok, c, g, question_ids[i]),
                              max_tokens, "visual question answering")
    return _texts(model, tok, requests, max_tokens, max_batch_rows, "answers")


def phrase_ids(model: torch.nn.Module, tok: UnifiedTokenizer, geometry: Geometry, codes: torch.Tensor,
               box_ids: Sequence[Sequence[int]], max_tokens: int, max_batch_rows: int) -> list[list[int]]:
    """The generated phrase naming each image's box (two location ids)."""
    require_locations(tok)
    if len(box_ids) != len(codes):
        raise UserError(f"{len(codes)} images but {len(box_ids)} boxes")
    requests = _image_prompts(tok, geometry, codes, lambda c, g, i: sequences.box_to_phrase(tok, c, g, box_ids[i]),
                              max_tokens, "box to phrase")
    return _texts(model, tok, requests, max_tokens, max_batch_rows, "phrases")


def referring_box_ids(model: torch.nn.Module, tok: UnifiedTokenizer, geometry: Geometry, codes: torch.Tensor,
                      expression_ids: Sequence[Sequence[int]], max_batch_rows: int) -> list[list[int]]:
    """The two location ids of the box each image's expression refers to."""
    require_locations(tok)
    if len(expression_ids) != len(codes):
        raise UserError(f"{len(codes)} images but {len(expression_ids)} expressions")
    requests = _image_prompts(tok, geometry, codes,
                              lambda c, g, i: sequences.referring(tok, c, g, expression_ids[i]), 2, "grounding")
    spec = DecodeSpec(steps=2, allowed=location_ids_mask(tok), settings=GREEDY, pad_id=tok.pad_id)
    return [tokens.tolist() for tokens in decode(model, requests, spec, max_batch_rows, description="grounding")]


def grounded_caption_ids(model: torch.nn.Module, tok: UnifiedTokenizer, geometry: Geometry, codes: torch.Tensor,
                         max_tokens: int, max_batch_rows: int) -> list[list[int]]:
    """Each image's grounded caption: text, `[PHR] phrase L_tl L_br`, ..., `[SEP]` (unless cut at `max_tokens`)."""
    require_locations(tok)
    if max_tokens < 1:
        raise UserError(f"the most tokens of a grounded caption must be >= 1, got {max_tokens}")
    requests = _image_prompts(tok, geometry, codes, lambda c, g, i: sequences.grounded_caption(tok, c, g),
                              max_tokens, "grounded captioning")
    spec = DecodeSpec(steps=max_tokens, allowed=caption_ids_mask(tok), settings=GREEDY, stop_id=tok["[SEP]"],
                      pad_id=tok.pad_id, constraint=grounded_caption_constraint(tok))
    return [tokens.tolist() for tokens in decode(model, requests, spec, max_batch_rows,
                                                 description="grounded captions")]
