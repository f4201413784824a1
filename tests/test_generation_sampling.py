"""Sampling primitives: per-row filters, guidance, masks and per-row seeded draws."""
import math

import pytest
import torch

from generation.sampling import (SamplingSettings, allowed_mask, cfg_combine, draw_uniforms, filter_logits,
                                 make_generators, mask_disallowed, sample_rows)
from utils.errors import UserError


def seeded_uniforms(seeds) -> torch.Tensor:
    """One uniform per row, row i's from a generator seeded with `seeds[i]`."""
    return draw_uniforms(make_generators(seeds))[:, 0]


def reference_filter(row: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The textbook filter for ONE row, written as plainly as possible (python loops)."""
    scaled = [float(v) / temperature for v in row]
    order = sorted(range(len(scaled)), key=lambda i: -scaled[i])
    keep = order[:top_k] if top_k > 0 else order
    kept_logits = [scaled[i] for i in keep]
    top = max(kept_logits)
    weights = [math.exp(v - top) for v in kept_logits]
    total = sum(weights)
    nucleus, mass = [], 0.0
    for i, w in zip(keep, weights):
        if mass >= top_p:
            break
        nucleus.append(i)
        mass += w / total
    out = torch.full_like(row, float("-inf"))
    for i in nucleus:
        out[i] = scaled[i]
    return out


@pytest.mark.parametrize("top_ks", [[0, 5, 20, 1, 0, 50], [3, 5, 20, 1, 7, 12]])  # full sort / topk path
def test_filters_match_a_per_row_reference_for_every_row_of_a_batch(top_ks):
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    temperatures = [1.0, 0.7, 1.3, 1.0, 2.0, 0.5]
    top_ps = [0.9, 1.0, 0.5, 0.3, 0.75, 0.95]
    batched = filter_logits(logits, temperatures, top_ks, top_ps)
    for i in range(6):
        expected = reference_filter(logits[i], temperatures[i], top_ks[i], top_ps[i])
        assert torch.equal(torch.isinf(batched[i]), torch.isinf(expected)), f"row {i} kept a different set"
        finite = ~torch.isinf(expected)
        assert torch.allclose(batched[i][finite], expected[finite])


def test_scalar_top_p_on_a_batch_filters_each_row_by_its_own_distribution():
    # Row 0 is peaked (one id holds ~all mass), row 1 is flat: with top-p 0.5 row 0 keeps 1 id, row 1 half.
    logits = torch.stack([torch.tensor([10.0, 0, 0, 0]), torch.zeros(4)])
    kept = ~torch.isinf(filter_logits(logits, top_p=0.5))
    assert kept.sum(dim=1).tolist() == [1, 2]
    single = ~torch.isinf(filter_logits(logits[1:], top_p=0.5))
    assert torch.equal(kept[1:], single)


def test_cfg_scale_one_is_exactly_no_guidance_and_other_scales_follow_the_formula():
    cond, uncond = torch.randn(3, 11), torch.randn(3, 11)
    assert cfg_combine(cond, uncond, 1.0) is cond
    for scale in (0.0, 2.5):
        expected = torch.log_softmax(uncond, -1) + scale * (torch.log_softmax(cond, -1) - torch.log_softmax(uncond, -1))
        assert torch.allclose(cfg_combine(cond, uncond, scale), expected)
    # Combining on log-softmax or on raw logits gives the same distribution after softmax.
    raw = uncond + 3.0 * (cond - uncond)
    assert torch.allclose(torch.softmax(cfg_combine(cond, uncond, 3.0), -1), torch.softmax(raw, -1), atol=1e-6)


def test_masked_ids_are_never_sampled_even_when_they_dominate():
    logits = torch.zeros(64, 20)
    logits[:, :10] = 50.0  # the forbidden ids hold all the mass
    allowed = allowed_mask(20, range(10, 20))
    tokens = sample_rows(filter_logits(mask_disallowed(logits, allowed)), seeded_uniforms(range(64)))
    assert bool((tokens >= 10).all())
    ids = allowed_mask(20, [3, 7])
    assert ids.nonzero().flatten().tolist() == [3, 7]


def test_a_row_draws_the_same_token_whatever_the_batch_around_it():
    torch.manual_seed(1)
    logits = torch.randn(8, 30)
    seeds = [100 + i for i in range(8)]
    batched = sample_rows(logits, seeded_uniforms(seeds))
    for i in range(8):
        assert sample_rows(logits[i:i + 1], seeded_uniforms([seeds[i]])).item() == batched[i].item()
    shuffled = [5, 2, 7, 0, 1, 3, 6, 4]
    again = sample_rows(logits[shuffled], seeded_uniforms([seeds[i] for i in shuffled]))
    assert again.tolist() == batched[shuffled].tolist()


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(4000, 4)
    counts = torch.bincount(sample_rows(logits, seeded_uniforms(range(4000))), minlength=4).double() / 4000
    assert torch.allclose(counts, probs.double(), atol=0.03)


def test_settings_reject_nonsense_with_a_user_error():
    for bad in (dict(temperature=0), dict(top_k=-1), dict(top_p=0), dict(top_p=1.5), dict(cfg_scale=-1)):
        with pytest.raises(UserError):
            SamplingSettings(**bad)
