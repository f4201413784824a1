"""The fast decoding loop samples, code for code, what the decoding loop before it sampled.

The codes below were recorded with the unmodified loop of commit 54249e2 (before the decoding step was
reorganised for speed): same model, same seeds. Keeping the numerics of every forward and every sampling
operation exactly as they were is what makes an image of a given seed the same picture as before; any
change to them (a fused kernel, a different summation order, a filter restricted to fewer ids with
different tie-breaking) would show up here as a different code sooner or later in the 64 steps.
"""
import pytest
import torch

from generation import tasks
from generation.sampling import SamplingSettings
from tests.generation_helpers import sharpened_model, tiny_geometry, tiny_tokenizer

RECORDED = {
    "batch1_topk": [
        [36, 11, 19, 22, 19, 52, 45, 47, 56, 33, 29, 21, 52, 16, 8, 15, 37, 37, 52, 45, 49, 23, 7, 22, 52, 17,
         13, 8, 45, 54, 52, 57, 14, 37, 59, 8, 23, 47, 26, 45, 46, 45, 52, 53, 33, 45, 7, 7, 45, 8, 52, 8, 47,
         19, 18, 45, 8, 52, 45, 23, 19, 54, 52, 6],
    ],
    "batch1_cfg_topp": [
        [25, 46, 19, 45, 19, 52, 52, 45, 57, 52, 21, 45, 45, 0, 11, 11, 45, 45, 52, 45, 45, 8, 7, 45, 52, 21, 52,
         0, 52, 52, 52, 52, 45, 52, 57, 21, 52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 11, 21, 21, 21, 52, 0, 25,
         21, 52, 57, 15, 47, 21, 21, 21, 52, 52, 0],
    ],
    "batch4_cfg_topk_topp_padded": [
        [25, 17, 19, 45, 25, 52, 45, 45, 47, 19, 19, 15, 45, 6, 8, 42, 21, 19, 59, 45, 47, 19, 0, 11, 52, 45, 6,
         8, 45, 52, 57, 52, 17, 45, 56, 11, 19, 52, 45, 47, 47, 47, 52, 56, 45, 42, 11, 6, 36, 21, 52, 0, 45, 17,
         17, 39, 21, 56, 48, 19, 19, 48, 52, 5],
        [25, 52, 52, 45, 52, 45, 16, 45, 49, 56, 7, 15, 45, 45, 45, 57, 7, 19, 45, 8, 43, 45, 46, 19, 37, 52, 45,
         45, 47, 19, 59, 21, 46, 52, 52, 11, 54, 52, 45, 19, 59, 52, 56, 52, 45, 45, 19, 57, 47, 52, 25, 6, 21,
         21, 21, 52, 42, 11, 63, 46, 11, 52, 59, 21],
        [47, 7, 45, 9, 25, 50, 36, 36, 45, 36, 25, 25, 46, 19, 8, 19, 25, 25, 45, 25, 45, 27, 6, 8, 52, 9, 8, 19,
         45, 61, 52, 59, 45, 25, 61, 8, 25, 52, 25, 46, 45, 46, 52, 52, 52, 46, 19, 6, 46, 22, 52, 9, 52, 25, 22,
         45, 6, 46, 45, 45, 18, 46, 46, 8],
        [45, 52, 61, 25, 21, 45, 5, 46, 52, 52, 23, 5, 59, 0, 52, 59, 1, 21, 45, 7, 21, 52, 45, 9, 25, 46, 45,
         25, 52, 25, 59, 8, 27, 45, 46, 45, 45, 27, 21, 21, 49, 54, 52, 21, 37, 46, 25, 52, 52, 45, 23, 25, 25,
         25, 42, 46, 25, 10, 59, 21, 7, 59, 48, 21],
    ],
}
CASES = {
    "batch1_topk": (["a red circle"], 1, SamplingSettings(top_k=20)),
    "batch1_cfg_topp": (["a red circle"], 1, SamplingSettings(temperature=0.4, top_p=0.8, cfg_scale=1.5)),
    # Prompts of different lengths: the shorter one is left-padded; 2 images each, guided: 8 rows at once.
    "batch4_cfg_topk_topp_padded": (["a red circle at the top", "square"], 2,
                                    SamplingSettings(temperature=0.7, top_k=12, top_p=0.9, cfg_scale=1.5)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_decoding_gives_the_codes_recorded_before_it_was_made_faster(case):
    tok = tiny_tokenizer(codebook_size=64)
    model = sharpened_model(tok.vocab_size, 112)
    prompts, n, settings = CASES[case]
    ids = [tok.encode_text(p, 16) for p in prompts]
    codes = tasks.generate_image_codes(model, tok, tiny_geometry(grid=8, max_positions=112), ids, n=n, seed=5,
                                       settings=settings, max_batch_rows=8)
    assert codes.view(len(prompts) * n, -1).tolist() == RECORDED[case]
