"""How much of the VQ-VAE codebook the image tokens use.

For a histogram n_k of codes over a codebook of K entries (N = sum n_k, p_k = n_k / N):

    perplexity = exp(-sum_k p_k ln p_k)      (0 ln 0 = 0)

the effective number of codes in use: 1 when every token is the same code, K when all codes are
equally frequent. `used_fraction` is the share of the K codes that occur at least once. A healthy
codebook has both high; many used codes with a low perplexity means a few codes carry most tokens.
The formula itself lives in `vqvae.evaluation.codebook_stats` (the VQ-VAE's own report uses it);
this module adds histograms of any code tensors and a report for the evaluation tables.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from utils.errors import UserError
from vqvae.evaluation import codebook_stats


@dataclass(frozen=True)
class CodebookUsage:
    perplexity: float
    used_fraction: float
    codebook_size: int
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)

    def format_table(self) -> str:
        return "\n".join([f"{'codebook perplexity':<22}{self.perplexity:>12.1f} of {self.codebook_size}",
                          f"{'codes used':<22}{100 * self.used_fraction:>11.1f}%",
                          f"{'tokens counted':<22}{self.tokens:>12d}"])


def code_histogram(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Counts [K] (int64) of each code in a tensor of codes of any shape; add histograms to combine sets."""
    flat = codes.reshape(-1).long().cpu()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= codebook_size):
        raise UserError(f"codes outside the codebook [0, {codebook_size}): min {int(flat.min())}, "
                        f"max {int(flat.max())}; were they made by another VQ-VAE?")
    return torch.bincount(flat, minlength=codebook_size)


def codebook_usage(histogram: torch.Tensor) -> CodebookUsage:
    """Perplexity and fraction of codes used of a code histogram [K] (module docstring)."""
    if histogram.dim() != 1 or int(histogram.sum()) <= 0 or bool((histogram < 0).any()):
        raise UserError("codebook usage needs a non-empty histogram of non-negative counts [K]")
    perplexity, used_fraction = codebook_stats(histogram.double())
    return CodebookUsage(perplexity, used_fraction, histogram.numel(), int(histogram.sum()))
