"""How good a VQ-VAE is on held-out images: PSNR of the token round trip and codebook usage.

PSNR is `eval_utils.psnr`'s: the mean over images of 10 * log10(1 / MSE) on [0, 1] images. Codebook
usage is the perplexity exp(-sum_k p_k ln p_k) of the histogram of codes chosen (p_k = n_k / N, 0 ln 0
= 0), the effective number of codes in use, and the fraction of the K codes chosen at least once. Both
`train_vqvae.py`'s report and evaluate.py's vqvae section (`vqvae_section`) come from here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from data_utils.images import tensor_to_uint8, uint8_to_tensor
from eval_utils.psnr import psnr_per_image
from eval_utils.report import Section
from vqvae.api import code2img, img2code
from vqvae.model import VQVAE


def codebook_stats(counts: torch.Tensor) -> tuple[float, float]:
    """(perplexity, fraction of codes used) of a histogram of code uses.

    Perplexity exp(entropy) is the number of equally used codes that would give the same entropy:
    K when all K codes are used evenly, 1 when one code takes everything.
    """
    total = counts.sum()
    if total <= 0:
        return 0.0, 0.0
    probs = counts / total
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
    return float(entropy.exp()), float((counts > 0).float().mean())


@dataclass
class ReconstructionReport:
    psnr: float  # mean of the per-image PSNR in dB
    mse: float  # mean squared error over all pixels of all images
    perplexity: float
    codes_used: float  # fraction of the codebook chosen at least once
    images: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def reconstruct(vqvae: VQVAE, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, ReconstructionReport]:
    """Encode and decode uint8 images [N, H, W, 3] through the codes, as the transformer will see
    them (`img2code` then `code2img`); returns the uint8 reconstructions and the report."""
    reconstructions = np.empty_like(images)
    counts = torch.zeros(vqvae.config.codebook_size, dtype=torch.float64)
    psnrs, squared_errors = [], []
    for start in range(0, len(images), batch_size):
        batch = uint8_to_tensor(images[start:start + batch_size])
        codes = img2code(vqvae, batch)
        decoded = code2img(vqvae, codes)
        psnrs.append(psnr_per_image(decoded, batch))
        squared_errors.append((decoded.double() - batch.double()).square().flatten(1).mean(1))
        counts += torch.bincount(codes.flatten(), minlength=counts.numel()).double()
        reconstructions[start:start + batch_size] = tensor_to_uint8(decoded)
    perplexity, used = codebook_stats(counts)
    report = ReconstructionReport(float(torch.cat(psnrs).mean()), float(torch.cat(squared_errors).mean()),
                                  perplexity, used, len(images))
    return reconstructions, report


def comparison_grid(originals: np.ndarray, reconstructions: np.ndarray, columns: int = 8,
                    min_tile: int = 128) -> Image.Image:
    """A PNG-ready grid: rows of originals, each followed by the row of their reconstructions.

    Small images are enlarged (nearest neighbour, so pixels stay visible) to at least `min_tile`.
    """
    count, height, width, _ = originals.shape
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    scale = max(1, math.ceil(min_tile / max(height, width)))
    gap = 2
    canvas = Image.new("RGB", (columns * (width * scale + gap) + gap,
                               2 * rows * (height * scale + gap) + gap), (128, 128, 128))
    for index in range(count):
        row, column = divmod(index, columns)
        x = gap + column * (width * scale + gap)
        for offset, source in enumerate((originals, reconstructions)):
            y = gap + (2 * row + offset) * (height * scale + gap)
            tile = Image.fromarray(source[index], mode="RGB")
            canvas.paste(tile.resize((width * scale, height * scale), Image.Resampling.NEAREST), (x, y))
    return canvas


def vqvae_section(vqvae: VQVAE, images: list[Image.Image]) -> Section:
    """evaluate.py's vqvae section: `reconstruct` of held-out images, the report `train_vqvae.py` gives,
    so the numbers compare with it."""
    _, report = reconstruct(vqvae, np.stack([np.asarray(image.convert("RGB")) for image in images]))
    table = "\n".join([f"{'round-trip PSNR':<22}{report.psnr:>12.2f} dB",
                       f"{'codebook perplexity':<22}{report.perplexity:>12.1f} of {vqvae.config.codebook_size}",
                       f"{'codes used':<22}{100 * report.codes_used:>11.1f}%",
                       f"{'images':<22}{report.images:>12d}"])
    return Section("vqvae", report.to_dict(), table)
