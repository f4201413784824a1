"""PIL <-> tensor conversion and image loading with clear errors.

Images travel between modules as float32 tensors [B, 3, H, W] in [0, 1]; PIL lives only at the edges.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from utils.errors import UserError


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """Float tensor [3, H, W] in [0, 1] -> RGB PIL image (values clamped, rounded to uint8)."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image tensor [3, H, W], got shape {tuple(image.shape)}")
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB")


def downscale(image: Image.Image) -> Image.Image:
    """The image at half size, as super-resolution's low-resolution inputs are made (in training data and in
    evaluation alike); PIL's bicubic filter widens its support when shrinking, so it antialiases."""
    return image.resize((image.width // 2, image.height // 2), Image.Resampling.BICUBIC)


def uint8_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 array [B, H, W, 3] -> float tensor [B, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float tensor [B, 3, H, W] in [0, 1] -> uint8 array [B, H, W, 3]."""
    return images.detach().float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def flatten_to_rgb(image: Image.Image) -> Image.Image:
    """RGB image; transparent pixels become white (a bare convert("RGB") shows their stored colour,
    often black, which would teach the models black backgrounds)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike, size: int | None = None) -> Image.Image:
    """Open an image as RGB, optionally resized to size x size; bad files raise a one-line `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as handle:
            image = flatten_to_rgb(handle)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image
