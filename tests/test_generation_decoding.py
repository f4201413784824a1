"""The KV-cache decoding loop and the token-level tasks, against a slow uncached reference."""
import dataclasses

import pytest
import torch

from data_utils.sequences import image2text, super_resolution, text2image
from generation import tasks
from generation.decoding import DecodeRequest, DecodeSpec, decode
from generation.pipeline import Pipeline
from generation.sampling import SamplingSettings
from tests.generation_helpers import (BiasedLogits, OutOfMemoryAbove, reference_decode, tiny_geometry,
                                      tiny_model, tiny_tokenizer)
from utils.errors import UserError

PROMPTS = ["a red circle", "a large blue diamond in the center", "左上角有一个大的红色圆形", "square"]


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    yield tok, tiny_model(tok), tiny_geometry()


def text_ids(tok, text):
    return tok.encode_text(text, 16)


@pytest.mark.parametrize("settings", [SamplingSettings(top_k=5, temperature=0.9),
                                      SamplingSettings(top_k=0, top_p=0.8, cfg_scale=2.5)])
def test_cached_batched_decoding_equals_the_uncached_reference(setup, settings):
    tok, model, geometry = setup
    ids = [text_ids(tok, p) for p in PROMPTS[:3]]
    negative = text_ids(tok, "blue") if settings.uses_guidance else None
    codes = tasks.generate_image_codes(model, tok, geometry, ids, n=2, seed=7, settings=settings,
                                       max_batch_rows=16, negative_ids=negative)
    uncond = text2image(tok, negative or [], geometry.image_grid)
    for p, prompt_ids in enumerate(ids):
        for j in range(2):
            expected = reference_decode(model, text2image(tok, prompt_ids, geometry.image_grid), 7 + j, 64,
                                        tasks.image_ids_mask(tok), settings, uncond)
            assert codes[p, j].flatten().tolist() == expected, f"prompt {p} image {j}"


def test_fixed_image_layout_decodes_at_the_positions_training_used(setup):
    """Prompts of different lengths share a left-padded batch; each row continues from its own `[BOI1]`
    position, which the fixed-image layout puts at the same place for every text."""
    tok, model, geometry = setup
    fixed = dataclasses.replace(geometry, text_positions=geometry.text_max_tokens)
    ids = [text_ids(tok, p) for p in PROMPTS]
    settings = SamplingSettings(top_k=5, temperature=0.9, cfg_scale=2.0)
    codes = tasks.generate_image_codes(model, tok, fixed, ids, n=1, seed=3, settings=settings, max_batch_rows=16)
    uncond = text2image(tok, [], geometry.image_grid, text_positions=fixed.text_positions)
    for p, prompt_ids in enumerate(ids):
        prompt = text2image(tok, prompt_ids, geometry.image_grid, text_positions=fixed.text_positions)
        expected = reference_decode(model, prompt, 3, 64, tasks.image_ids_mask(tok), settings, uncond)
        assert codes[p, 0].flatten().tolist() == expected, f"prompt {p}"


def test_an_image_is_the_same_alone_or_packed_in_a_batch_of_eight(setup):
    tok, model, geometry = setup
    settings = SamplingSettings(top_k=8, cfg_scale=1.5)
    alone = tasks.generate_image_codes(model, tok, geometry, [text_ids(tok, PROMPTS[1])], n=1, seed=5,
                                       settings=settings, max_batch_rows=2)
    # Prompt 1, image 0 has seed 5 in both runs; here it shares forwards with 7 other images.
    packed = tasks.generate_image_codes(model, tok, geometry, [text_ids(tok, p) for p in PROMPTS], n=2, seed=5,
                                        settings=settings, max_batch_rows=16)
    assert torch.equal(alone[0, 0], packed[1, 0])
    assert not torch.equal(packed[1, 0], packed[1, 1])  # different seeds, different images


def test_cfg_scale_one_is_exactly_unguided_sampling(setup):
    tok, model, geometry = setup
    ids = [text_ids(tok, PROMPTS[0])]
    plain = tasks.generate_image_codes(model, tok, geometry, ids, 2, 0, SamplingSettings(top_k=8), 8)
    scale_one = tasks.generate_image_codes(model, tok, geometry, ids, 2, 0, SamplingSettings(top_k=8, cfg_scale=1.0),
                                           8, negative_ids=text_ids(tok, "blue"))
    guided = tasks.generate_image_codes(model, tok, geometry, ids, 2, 0, SamplingSettings(top_k=8, cfg_scale=4.0), 8)
    assert torch.equal(plain, scale_one)
    assert not torch.equal(plain, guided)


def test_simulated_out_of_memory_halves_the_batch_and_changes_no_image(setup):
    tok, model, geometry = setup
    ids = [text_ids(tok, p) for p in PROMPTS]
    settings = SamplingSettings(top_k=8, cfg_scale=2.0)
    expected = tasks.generate_image_codes(model, tok, geometry, ids, 2, 3, settings, max_batch_rows=16)
    for error in (torch.OutOfMemoryError, RuntimeError):
        limited = OutOfMemoryAbove(model, limit=5, error=error)
        got = tasks.generate_image_codes(limited, tok, geometry, ids, 2, 3, settings, max_batch_rows=16)
        assert torch.equal(got, expected)
        assert 16 in limited.batch_sizes and 8 in limited.batch_sizes and max(limited.batch_sizes[-3:]) <= 4
    with pytest.raises(UserError, match="out of memory"):
        tasks.generate_image_codes(OutOfMemoryAbove(model, limit=1), tok, geometry, ids[:1], 1, 0, settings, 16)


def test_forbidden_ids_are_never_sampled_even_when_the_model_prefers_them(setup):
    tok, model, geometry = setup
    text_and_commands = torch.zeros(tok.vocab_size)
    text_and_commands[tok.codebook_size:] = 30.0
    codes = tasks.generate_image_codes(BiasedLogits(model, text_and_commands), tok, geometry,
                                       [text_ids(tok, PROMPTS[0])], 4, 0, SamplingSettings(top_k=0), 8)
    assert int(codes.max()) < tok.codebook_size and int(codes.min()) >= 0

    images_and_commands = torch.zeros(tok.vocab_size)
    images_and_commands[:tok.codebook_size] = 30.0
    images_and_commands[tok.command_offset:] = 30.0
    images_and_commands[tok["[SEP]"]] = 0.0
    request = DecodeRequest(image2text(tok, codes[0, 0], geometry.image_grid), seed=0)
    spec = DecodeSpec(steps=12, allowed=tasks.caption_ids_mask(tok), settings=SamplingSettings(top_k=0),
                      stop_id=tok["[SEP]"], pad_id=tok.pad_id)
    out = decode(BiasedLogits(model, images_and_commands), [request] * 3, spec, 8)[0]
    assert all(tok.is_text_id(t) or t == tok["[SEP]"] for t in out.tolist())


def test_captions_stop_at_sep_independently_and_match_the_reference(setup):
    tok, model, geometry = setup
    sep_bias = torch.zeros(tok.vocab_size)
    sep_bias[tok["[SEP]"]] = 2.0  # with temperature 4: a SEP now and then, so captions end at different lengths
    biased = BiasedLogits(model, sep_bias)
    codes = torch.randint(0, tok.codebook_size, (6, 8, 8), generator=torch.Generator().manual_seed(0))
    requests = [DecodeRequest(image2text(tok, c, 8), seed=10 + i) for i, c in enumerate(codes)]
    spec = DecodeSpec(steps=10, allowed=tasks.caption_ids_mask(tok),
                      settings=SamplingSettings(top_k=0, temperature=4.0), stop_id=tok["[SEP]"], pad_id=tok.pad_id)
    outputs = decode(biased, requests, spec, 8)
    lengths = {len(o) for o in outputs}
    assert len(lengths) > 1, "the test needs rows that finish at different steps"
    for request, output in zip(requests, outputs):
        expected = reference_decode(biased, request.prompt, request.seed, 10, spec.allowed, spec.settings,
                                    stop_id=tok["[SEP]"])
        assert output.tolist() == expected
        assert tok["[SEP]"] not in output.tolist()[:-1]
    captions = tasks.caption_candidates(biased, tok, geometry, codes, 10, spec.settings, 10, 8)
    assert captions == [[[t for t in o.tolist() if t != tok["[SEP]"]]] for o in outputs]


@pytest.mark.parametrize("post_selection", ["agreement", "caption"])
def test_reranked_captions_keep_the_candidate_that_agrees_best_with_the_image(setup, post_selection):
    tok, model, geometry = setup
    pipe = Pipeline(model, tok, vqvae=None, geometry=geometry, max_batch_rows=8, post_selection=post_selection)
    settings = SamplingSettings(top_k=0, temperature=2.0)
    codes = torch.randint(0, tok.codebook_size, (3, 8, 8), generator=torch.Generator().manual_seed(3))
    candidates = tasks.caption_candidates(model, tok, geometry, codes, 7, settings, 6, 8, candidates=5)
    chosen = pipe.caption_codes(codes, 7, 6, settings, candidates=5)
    plain = pipe.caption_codes(codes, 7, 6, settings)
    for i in range(3):
        own = [ids for ids in candidates[i] if ids]
        assert len({tuple(ids) for ids in own}) > 1, "the test needs distinct candidates"
        # Candidate j of image i is image i's own caption under seed candidate_seed(7 + i, j); j = 0 is the plain one.
        assert candidates[i][0] == tasks.caption_candidates(model, tok, geometry, codes[i:i + 1], 7 + i, settings, 6,
                                                            8)[0][0]
        assert plain[i] == tok.decode_text(candidates[i][0])
        scores = pipe.match_scores(codes[i:i + 1].expand(len(own), 8, 8), own)
        assert chosen[i] == tok.decode_text(own[int(scores.argmax())])


def test_reranked_captions_refuse_greedy_and_over_long_candidates(setup):
    tok, model, geometry = setup
    pipe = Pipeline(model, tok, vqvae=None, geometry=geometry)
    codes = torch.zeros((1, 8, 8), dtype=torch.long)
    with pytest.raises(UserError, match="greedy"):
        pipe.caption_codes(codes, 0, 6, SamplingSettings(top_k=1), candidates=2)
    with pytest.raises(UserError, match="--max-caption-tokens 16"):
        pipe.caption_codes(codes, 0, 17, SamplingSettings(), candidates=2)


def test_magnify_windows_cover_the_target_in_raster_order():
    windows = tasks.magnify_windows(8)
    assert [(w.index, w.top, w.left) for w in windows] == [
        (0, 0, 0), (1, 0, 4), (2, 0, 8), (3, 4, 0), (4, 4, 4), (5, 4, 8), (6, 8, 0), (7, 8, 4), (8, 8, 8)]
    assert (windows[4].source_top, windows[8].source_left) == (2, 4)
    covered = torch.zeros(16, 16, dtype=torch.int)
    for w in windows:
        covered[w.top:w.top + 8, w.left:w.left + 8] += 1
    assert int(covered.min()) >= 1 and int(covered.max()) == 4


def test_super_resolution_direct_and_windowed_are_batch_invariant_and_keep_overlaps(setup):
    tok, model, geometry = setup
    settings = SamplingSettings(top_k=8)
    generator = torch.Generator().manual_seed(2)
    ids = [text_ids(tok, "a red circle"), text_ids(tok, "square")]
    low = torch.randint(0, tok.codebook_size, (2, 4, 4), generator=generator)
    direct = tasks.super_resolve_codes(model, tok, geometry, low, ids, 0, settings, 8)
    assert direct.shape == (2, 8, 8)
    expected = reference_decode(model, super_resolution(tok, ids[1], low[1], 4, 8), tasks.window_seed(1, 0), 64,
                                tasks.image_ids_mask(tok), settings)
    assert direct[1].flatten().tolist() == expected

    big = tasks.super_resolve_codes(model, tok, geometry, direct, ids, 0, settings, 8)
    assert big.shape == (2, 16, 16) and int(big.min()) >= 0 and int(big.max()) < tok.codebook_size
    alone = tasks.super_resolve_codes(model, tok, geometry, direct[1:], ids[1:], 1, settings, 8)
    assert torch.equal(alone[0], big[1])
    # The last window: its overlap with earlier windows was fed, not sampled, so a reference that
    # decodes it with those codes forced must agree; and its own prompt holds the right low-res crop.
    last = tasks.magnify_windows(8)[-1]
    prompt = super_resolution(tok, ids[0], direct[0, 4:8, 4:8], 4, 8, window=8)
    window = big[0, last.top:last.top + 8, last.left:last.left + 8]
    forced = torch.full((8, 8), -1)
    forced[:4, :] = window[:4, :]
    forced[4:, :4] = window[4:, :4]
    request = DecodeRequest(prompt, tasks.window_seed(0, 8), forced=forced.flatten())
    redone = decode(model, [request], DecodeSpec(64, tasks.image_ids_mask(tok), settings, pad_id=tok.pad_id), 1)[0]
    assert torch.equal(redone.view(8, 8), window)
    with pytest.raises(UserError, match="super-resolution takes"):
        tasks.super_resolve_codes(model, tok, geometry, big, ids, 0, settings, 8)


def test_prompts_too_long_for_the_position_table_are_refused(setup):
    tok, model, _ = setup
    small = tiny_geometry(max_positions=60)
    with pytest.raises(UserError, match="positions"):
        tasks.generate_image_codes(model, tok, small, [text_ids(tok, PROMPTS[1])], 1, 0, SamplingSettings(), 8)
