"""Turning next-token logits into sampled tokens: guidance, masks, filters and per-image randomness.

Every function here works row by row on a `[B, V]` batch, so any batch size gives each row exactly the
answer it would get alone. The order of operations for one decoding step is

    guided = cfg_combine(cond, uncond, scale)          # classifier-free guidance (optional)
    logits = mask_disallowed(guided, allowed)          # e.g. only image ids inside an image
    logits = filter_logits(logits, temperature, top_k, top_p)
    tokens = sample_rows(logits, uniforms)             # one uniform per row from the row's own generator

Guidance is combined on log-softmax values. For the sampled distribution this is the same as combining
raw logits (the two differ by a per-row constant, which softmax removes), but log-probabilities make the
guided values meaningful on their own and keep them in a numerically tame range.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from utils.errors import UserError


@dataclass(frozen=True)
class SamplingSettings:
    """How to draw one token from the model's next-token distribution.

    `top_k = 0` and `top_p = 1.0` switch those filters off; `temperature` must be positive (use
    `top_k = 1` for greedy decoding). `cfg_scale = 1.0` is plain conditional sampling.
    """

    temperature: float = 1.0
    top_k: int = 200
    top_p: float = 1.0
    cfg_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise UserError(f"--temperature must be > 0, got {self.temperature} (use --top-k 1 for greedy)")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"--top-p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.cfg_scale < 0:
            raise UserError(f"--cfg-scale must be >= 0 (1 = no guidance), got {self.cfg_scale}")

    @property
    def uses_guidance(self) -> bool:
        return self.cfg_scale != 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: `uncond + scale * (cond - uncond)` on log-softmax values.

    `scale = 1` returns `cond` untouched (bit for bit, not merely up to rounding), so guidance at scale 1
    is exactly unguided sampling; callers skip the unconditional rows entirely in that case.
    """
    if scale == 1.0:
        return cond
    cond_logp = torch.log_softmax(cond.float(), dim=-1)
    uncond_logp = torch.log_softmax(uncond.float(), dim=-1)
    return uncond_logp + scale * (cond_logp - uncond_logp)


def allowed_mask(vocab_size: int, ids: Sequence[int] | torch.Tensor | range, device=None) -> torch.Tensor:
    """A `[V]` bool mask that is True exactly at `ids` (a range is filled without listing it)."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    if isinstance(ids, range) and ids.step == 1:
        mask[ids.start:ids.stop] = True
    else:
        mask[torch.as_tensor(list(ids) if isinstance(ids, range) else ids, dtype=torch.long, device=device)] = True
    return mask


def mask_disallowed(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Set every id outside `allowed` (`[V]` or `[B, V]` bool) to -inf so it can never be sampled."""
    return logits.masked_fill(~allowed, float("-inf"))


def _per_row(value, batch: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A scalar or a length-B sequence as a `[B, 1]` tensor."""
    tensor = torch.as_tensor(value, dtype=dtype, device=device)
    if tensor.dim() == 0:
        tensor = tensor.expand(batch)
    if tensor.shape != (batch,):
        raise ValueError(f"expected a scalar or {batch} per-row values, got shape {tuple(tensor.shape)}")
    return tensor.view(batch, 1)


class LogitFilter:
    """Temperature, top-k and top-p (nucleus) filtering of `[batch, vocab]` logits, each setting a scalar or one
    value per row, with everything that does not depend on the logits prepared once: a decoding loop builds
    one per batch and calls it at every step (`filter_logits` is the one-off form).

    Filtered-out ids become -inf. Top-p keeps the smallest set of most likely ids whose probability
    sums to at least `top_p` (always at least the most likely id); it is computed after top-k, on the
    temperature-scaled distribution, independently for every row (CogView's version assumed batch 1).
    Ties at the top-k boundary are broken by the sort order, so exactly k ids survive. When every row
    has a top-k, only the largest k are sorted (`torch.topk`), not the whole vocabulary.
    """

    def __init__(self, batch: int, vocab: int, temperature=1.0, top_k=0, top_p=1.0, device=None):
        self.vocab = vocab
        self.temperature = _per_row(temperature, batch, torch.float32, device)
        self.top_p = _per_row(top_p, batch, torch.float32, device)
        k = _per_row(top_k, batch, torch.long, device)
        k = torch.where(k <= 0, torch.full_like(k, vocab), k.clamp(max=vocab))
        self.k_max = int(k.max())
        self.sorts = self.k_max < vocab or not bool((self.top_p >= 1.0).all())
        rank = torch.arange(self.k_max, device=device).expand(batch, self.k_max)
        self.beyond_k = rank >= k           # the ranks top-k drops, the same at every step
        self.below_first = rank > 0         # top-p always keeps the most likely id

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float() / self.temperature
        if not self.sorts:
            return logits
        if self.k_max < self.vocab:
            candidates, order = torch.topk(logits, self.k_max, dim=-1, sorted=True)
        else:
            candidates, order = torch.sort(logits, dim=-1, descending=True)
        candidates = candidates.masked_fill(self.beyond_k, float("-inf"))
        probs = torch.softmax(candidates, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the strictly more likely ids
        drop = self.beyond_k | ((mass_before >= self.top_p) & self.below_first)
        return torch.full_like(logits, float("-inf")).scatter(-1, order, candidates.masked_fill(drop, float("-inf")))


def filter_logits(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    """`LogitFilter` applied once: temperature, top-k and top-p, each a scalar or one value per row."""
    batch, vocab = logits.shape
    return LogitFilter(batch, vocab, temperature, top_k, top_p, logits.device)(logits)


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per row; CPU so that a seed gives the same draws on every device."""
    return [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]


def draw_uniforms(generators: Sequence[torch.Generator], count: int = 1) -> torch.Tensor:
    """`count` uniforms in [0, 1) per row, each row's from its own generator (float64, `[B, count]`).

    A generator gives the same numbers whether they are drawn one at a time or `count` at once, so a
    decoding loop draws every step's uniform up front instead of calling each generator at each step."""
    return torch.stack([torch.rand(count, generator=g, dtype=torch.float64) for g in generators])


def sample_rows(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Sample one id per row by inverting the row's CDF at the row's uniform (`[B]`, `draw_uniforms`).

    The draw of row i depends only on row i's logits and uniform, never on the batch around it, so an
    image comes out the same at batch 1 or packed among others. The CDF is accumulated in float64 and
    the uniform scaled by the row's total mass, so rounding cannot push the draw past the last id.
    """
    if uniforms.shape != (logits.shape[0],):
        raise ValueError(f"{logits.shape[0]} rows but uniforms of shape {tuple(uniforms.shape)}")
    probs = torch.softmax(logits.double(), dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    target = uniforms.to(logits.device) * cdf[:, -1]
    index = torch.searchsorted(cdf, target.unsqueeze(-1), right=True).squeeze(-1)
    # `u * total` can round up to `total` itself for u just below 1; fall back to the last possible id.
    vocab = logits.shape[-1]
    last_possible = vocab - 1 - torch.argmax(torch.flip(probs > 0, dims=[-1]).int(), dim=-1)
    return torch.minimum(index, last_possible)
