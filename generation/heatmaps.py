"""A word's attention drawn over its image: the code grid upsampled smoothly, coloured, blended in.

The colours are viridis's (dark blue for no attention through green to yellow for the most), which
stay readable in grey and for colour-blind readers; each map is scaled to its own maximum, so the
picture shows where a word looks, and the manifest's numbers say how strongly.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from generation import figures

# Five of viridis's colours at 0, 0.25, 0.5, 0.75 and 1; the rest is linear between them.
VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float32)
HEAT_WEIGHT = 0.6  # of the heat colour against the image's own, so both the shapes and the heat show


def colourise(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] `[H, W]` -> RGB `[H, W, 3]` float in 0..255 on the viridis scale."""
    position = np.clip(values, 0.0, 1.0) * (len(VIRIDIS) - 1)
    low = np.minimum(position.astype(int), len(VIRIDIS) - 2)
    fraction = (position - low)[..., None]
    return VIRIDIS[low] * (1 - fraction) + VIRIDIS[low + 1] * fraction


def overlay(image: Image.Image, attention: torch.Tensor, side: int | None = None) -> Image.Image:
    """`image` as the model saw it (square) enlarged pixel-exactly to `side` px (default:
    `figures.display_side`), with `attention [g, g]` upsampled bilinearly to it, scaled to its maximum,
    coloured and blended in."""
    square = figures.longer_side(image)
    image = image.convert("RGB").resize((square, square), Image.Resampling.BICUBIC) if image.width != image.height \
        else image.convert("RGB")
    side = side or figures.display_side([square])
    base = np.asarray(figures.enlarge(image, side), dtype=np.float32)
    grid = attention.float()[None, None]
    smooth = torch.nn.functional.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    smooth = smooth / smooth.max().clamp_min(torch.finfo(torch.float32).tiny)
    blended = (1 - HEAT_WEIGHT) * base + HEAT_WEIGHT * colourise(smooth.numpy())
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))

