"""Generation without PB-relax gives, code for code, the images it gave before PB-relax became per-token.

The codes were recorded on the code base before that change (commit 73f0e46); any later change to the
default numerics (LayerNorm, attention, sampling order) shows up here as a different image.
"""
import pytest
import torch

from generation import tasks
from generation.sampling import SamplingSettings
from tests.generation_helpers import sharpened_model, tiny_geometry, tiny_tokenizer

RECORDED = {
    "sandwich": [[[3, 12, 10, 10, 8, 4, 3, 3, 11, 7, 15, 8, 9, 7, 2, 0], [9, 10, 5, 4, 11, 8, 8, 8, 11, 0, 4, 4, 11, 5, 8, 7]],
                 [[4, 13, 9, 9, 8, 3, 3, 3, 11, 5, 15, 9, 9, 7, 2, 0], [9, 8, 5, 3, 11, 8, 9, 8, 11, 0, 4, 5, 10, 6, 9, 8]]],
    "pre": [[[1, 11, 13, 10, 9, 4, 3, 3, 13, 7, 15, 13, 13, 11, 0, 0], [9, 9, 6, 3, 14, 9, 9, 9, 13, 0, 4, 4, 13, 12, 12, 8]],
            [[2, 11, 9, 9, 9, 4, 2, 1, 12, 8, 15, 13, 9, 8, 1, 0], [8, 8, 4, 1, 14, 8, 8, 7, 12, 0, 3, 5, 8, 8, 8, 8]]],
}


@pytest.mark.parametrize("layernorm_order", sorted(RECORDED))
def test_generation_without_pb_relax_gives_the_recorded_codes(layernorm_order):
    tok = tiny_tokenizer()
    model = sharpened_model(tok.vocab_size, 48, layernorm_order)
    assert not model.config.pb_relax
    ids = [tok.encode_text(p, 16) for p in ["a red circle", "square"]]
    codes = tasks.generate_image_codes(model, tok, tiny_geometry(grid=4, max_positions=48), ids, n=2, seed=11,
                                       settings=SamplingSettings(top_k=0), max_batch_rows=8)
    assert codes.view(2, 2, -1).tolist() == RECORDED[layernorm_order]
