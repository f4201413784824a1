"""PB-relax with one maximum per token: a token's output is its own, whatever shares the forward with it.

CogView's code divided by one maximum over the whole tensor, which is LN(x; eps * s^2) with s set by the
loudest token anywhere in the batch; so a row's output moved with the other rows, with padding and with
prefill versus one-token decoding. The models here have a few very loud text tokens so that such a
dependence would change the sampled codes.
"""
import pytest
import torch

from generation import tasks
from generation.sampling import SamplingSettings
from model import CogViewGPT, ModelConfig
from tests.generation_helpers import tiny_geometry, tiny_tokenizer

LOUD_TEXT = "左上角有一个大的红色圆形"
PROMPTS = ["a large blue diamond in the center", "a red circle", "square", LOUD_TEXT]


def loud_model(tok, pb_relax: bool = True) -> CogViewGPT:
    """Random weights scaled by 8 (context-dependent logits), and the Chinese characters' embeddings 1000x
    louder than the rest: in a whole-tensor PB-relax they would set every row's scale."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, num_layers=2, hidden_size=32, num_attention_heads=2,
                         max_position_embeddings=48, pb_relax=pb_relax, hidden_dropout=0.0, attention_dropout=0.0)
    model = CogViewGPT(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" not in name:
                param.mul_(8.0)
        for char in LOUD_TEXT:
            model.word_embeddings.weight[tok.encode_text(char)[0]].mul_(1000.0)
    return model


@pytest.mark.parametrize("max_batch_rows", [3, 16])
def test_an_image_is_the_same_at_any_batch_size_and_padding(max_batch_rows):
    tok = tiny_tokenizer()
    model = loud_model(tok)
    geometry = tiny_geometry(grid=4, max_positions=48)
    settings = SamplingSettings(top_k=0)
    ids = [tok.encode_text(p, 16) for p in PROMPTS]
    alone = tasks.generate_image_codes(model, tok, geometry, [ids[2]], n=1, seed=5, settings=settings,
                                       max_batch_rows=1)
    # Prompt 2, image 0 has seed 5 in both runs; here it is left-padded beside longer and louder prompts.
    packed = tasks.generate_image_codes(model, tok, geometry, ids, n=2, seed=5, settings=settings,
                                        max_batch_rows=max_batch_rows)
    assert torch.equal(alone[0, 0], packed[2, 0])


def test_cached_decoding_equals_the_full_forward():
    tok = tiny_tokenizer()
    model = loud_model(tok)
    ids = torch.tensor([tok.encode_text("a red " + LOUD_TEXT[:3] + " circle", 16)])
    positions = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        full = model(ids, positions)
        cache = model.new_kv_cache(1, ids.shape[1])
        steps = [model(ids[:, :8], positions[:, :8], kv_cache=cache)]
        steps += [model(ids[:, t:t + 1], positions[:, t:t + 1], kv_cache=cache) for t in range(8, ids.shape[1])]
    # Logits reach thousands here: 1e-2 is fp32's rounding at that size (a whole-tensor maximum is off by ~800).
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-2, rtol=0)
