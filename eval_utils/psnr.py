"""Peak signal-to-noise ratio of images in [0, 1], and the bicubic baseline for super-resolution.

Definition (per image): PSNR = 10 * log10(1 / MSE) dB, with MSE the mean squared difference over all
channels and pixels of the two images, each clamped to [0, 1] first (the peak value is 1, so values
outside it would not be an image). Identical images give +inf. The mean over a set is the mean of
the per-image values, as super-resolution papers report it (not the PSNR of the pooled MSE).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.errors import UserError


def _check_pair(images: torch.Tensor, references: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise UserError(f"PSNR expects images [B, 3, H, W], got shape {tuple(images.shape)}")
    if images.shape != references.shape:
        raise UserError(f"PSNR needs images and references of one shape, got {tuple(images.shape)} "
                        f"and {tuple(references.shape)} (resize the references to the output size)")


def psnr_per_image(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image against its reference: [B, 3, H, W] x 2 -> float64 [B]."""
    _check_pair(images, references)
    diff = images.double().clamp(0, 1) - references.double().clamp(0, 1)
    mse = diff.square().flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)  # mse == 0 -> +inf


def mean_psnr(images: torch.Tensor, references: torch.Tensor) -> float:
    """Mean over the batch of the per-image PSNR in dB (+inf when any pair is identical)."""
    return float(psnr_per_image(images, references).mean())


def bicubic_upsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """The super-resolution baseline: bicubic interpolation by an integer `factor`, clamped to [0, 1].

    torch's `interpolate(mode="bicubic", align_corners=False, antialias=False)` (cubic convolution with
    a = -0.75, pixel centres aligned as in PIL/OpenCV); the cubic kernel overshoots at edges, hence the
    clamp back into the image range.
    """
    if factor < 1:
        raise UserError(f"upsampling factor must be a positive integer, got {factor}")
    if images.dim() != 4:
        raise UserError(f"bicubic_upsample expects images [B, C, H, W], got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    upsampled = F.interpolate(images.float(), size=(height * factor, width * factor), mode="bicubic",
                              align_corners=False, antialias=False)
    return upsampled.clamp_(0.0, 1.0)
