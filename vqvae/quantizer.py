"""Vector quantiser with an exponential-moving-average codebook and restarts of dead codes.

The codebook is not trained by gradients: each training step moves every code towards the mean of
the encoder outputs assigned to it (van den Oord et al. 2017, appendix; VQ-VAE-2), which is stabler
than a codebook loss. Codes that stop being used are restarted on encoder outputs of the current
batch, drawn with probability proportional to their squared distance from the nearest code (as in
k-means++ seeding): on images that are mostly background, a uniform draw would restart nearly every
code on background, while this draw puts spare codes where the codebook fits the data worst. Buffers are named and shaped as in CogView's released
VQ-VAE (`embed` is [dim, K], transposed), so the same class serves both layouts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # [B, D, h, w]: codes in the forward pass, identity gradient to the input
    codes: torch.Tensor  # [B, h, w] long
    commitment: torch.Tensor  # scalar: mean squared distance of the input to its (fixed) code
    counts: torch.Tensor  # [K]: how often each code was chosen in this batch (all ranks)
    restarted: int  # codes restarted in this step


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class EMAQuantizer(nn.Module):
    """Nearest-neighbour (L2) quantiser whose codebook follows an EMA of its assigned inputs.

    Buffers: `embed` [D, K] (the codes), `cluster_size` [K] (EMA of assignments per batch) and
    `embed_avg` [D, K] (EMA of the sum of assigned inputs); `embed = embed_avg / cluster_size`
    after Laplace smoothing. An untrained codebook has zero usage and zero sums (it has seen no data),
    so after the first training step every code is the mean of its inputs or, unused, restarted on
    an input: a data-dependent initialisation by the same two rules.
    """

    def __init__(self, codebook_size: int, embed_dim: int, decay: float, eps: float,
                 dead_code_threshold: float):
        super().__init__()
        self.codebook_size = codebook_size
        self.embed_dim = embed_dim
        self.decay = decay
        self.eps = eps
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("embed", torch.randn(embed_dim, codebook_size))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed_avg", torch.zeros(embed_dim, codebook_size))

    def nearest_codes(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Index of the nearest code (L2) for each row of `flat` [N, D] (float32), and its squared distance."""
        distances = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed
                     + self.embed.pow(2).sum(0, keepdim=True))
        nearest, codes = distances.min(1)
        return codes, nearest.clamp_min(0)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] -> code vectors [B, D, h, w]."""
        return F.embedding(codes, self.embed.t()).permute(0, 3, 1, 2).contiguous()

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder output [B, D, h, w] -> codes [B, h, w], without touching the codebook."""
        b, d, h, w = z.shape
        return self.nearest_codes(z.permute(0, 2, 3, 1).reshape(-1, d).float())[0].view(b, h, w)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, d, h, w = z.shape
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, d).float()
        codes, distances = self.nearest_codes(flat)
        quantized = self.lookup(codes.view(b, h, w)).to(z.dtype)
        counts = torch.bincount(codes, minlength=self.codebook_size).float()
        restarted = 0
        if self.training:
            counts = self._update_ema(flat, codes, counts)
            restarted = self.restart_dead_codes(flat, distances)
        commitment = F.mse_loss(z, quantized.detach())
        # Straight-through: the forward pass uses the code, the backward pass copies the gradient.
        quantized = z + (quantized - z).detach()
        return QuantizerOutput(quantized, codes.view(b, h, w), commitment, counts, restarted)

    @torch.no_grad()
    def _update_ema(self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Move usage and code sums towards this batch's statistics; returns the (global) counts."""
        embed_sum = torch.zeros_like(self.embed).index_add_(1, codes, flat.t())
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(embed_sum)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(embed_sum, alpha=1 - self.decay)
        # Laplace smoothing keeps unused codes from dividing by zero without changing the total.
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        self.embed.copy_(self.embed_avg / smoothed.unsqueeze(0))
        return counts

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor, distances: torch.Tensor) -> int:
        """Put codes whose EMA usage is below the threshold onto encoder outputs `flat` [N, D], drawn
        with probability proportional to `distances` [N] (their squared distance to the nearest code).

        A restarted code gets usage equal to the threshold: if the next batches still do not use it,
        it decays below the threshold and is restarted again on other outputs. Under
        torch.distributed, usage is identical on all ranks (its statistics are all-reduced), so all
        ranks agree on which codes are dead, and rank 0's new codes are broadcast.
        """
        dead = self.cluster_size < self.dead_code_threshold
        num_dead = int(dead.sum())
        if num_dead == 0:
            return 0
        # The floor keeps every output drawable when the codebook already fits the batch exactly.
        weights = distances.double().cpu() + 1e-12
        picks = torch.multinomial(weights, num_dead, replacement=num_dead > flat.shape[0])
        new_codes = flat[picks.to(flat.device)].t()
        self.embed[:, dead] = new_codes
        self.embed_avg[:, dead] = new_codes * self.dead_code_threshold
        self.cluster_size[dead] = self.dead_code_threshold
        if _distributed():
            for buffer in (self.embed, self.embed_avg, self.cluster_size):
                dist.broadcast(buffer, src=0)
        return num_dead
