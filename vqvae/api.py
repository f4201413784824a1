"""The VQ-VAE as the rest of the project sees it: load, save, images <-> codes, fingerprint.

Images are float [B, 3, H, W] in [0, 1]; codes are long [B, h, w] with h = H / downsample. Results
come back on the device of the input tensor, whatever device the model is on.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from checkpoints.fingerprint import module_fingerprint
from checkpoints.readers import read_safetensors
from utils.errors import UserError
from utils.files import atomic_save_safetensors, atomic_write_json, read_json
from vqvae.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checked, read_torch_state_dict
from vqvae.config import VQVAEConfig, cogview_config
from vqvae.model import VQVAE


def load_vqvae(path: str | os.PathLike, device: str | torch.device = "cpu") -> VQVAE:
    """Load a VQ-VAE in eval mode from a folder (`model.safetensors` + `config.json`, as written by
    `save_vqvae`; the weights file itself may be given) or from CogView's released `.pt` file."""
    path = Path(path)
    if path.is_file() and path.name == WEIGHTS_FILE:
        path = path.parent
    if path.is_dir():
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise UserError(f"VQ-VAE folder {path} has no {name} (expected {WEIGHTS_FILE} + {CONFIG_FILE})")
        model = VQVAE(VQVAEConfig.from_dict(read_json(path / CONFIG_FILE)))
        load_checked(model, read_safetensors(path / WEIGHTS_FILE))
    elif path.is_file():
        model = VQVAE(cogview_config())
        load_checked(model, read_torch_state_dict(path))
    else:
        raise UserError(f"VQ-VAE not found: {path} (give a folder written by train_vqvae.py or CogView's .pt file)")
    return model.to(device).eval()


def save_vqvae(vqvae: VQVAE, folder: str | os.PathLike) -> None:
    """Write `model.safetensors` and `config.json` into `folder`, each atomically."""
    folder = Path(folder)
    atomic_save_safetensors(folder / WEIGHTS_FILE, vqvae.state_dict())
    atomic_write_json(folder / CONFIG_FILE, vqvae.config.to_dict())


def _model_device(vqvae: VQVAE) -> torch.device:
    return vqvae.quantize_t.embed.device


@torch.no_grad()
def img2code(vqvae: VQVAE, images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] -> codes LongTensor [B, H/f, W/f]; never updates the codebook."""
    vqvae.check_images(images)
    codes = vqvae.images_to_codes(images.to(_model_device(vqvae), torch.float32))
    return codes.to(images.device)


@torch.no_grad()
def code2img(vqvae: VQVAE, codes: torch.Tensor) -> torch.Tensor:
    """Codes [B, h, w] -> images float [B, 3, h*f, w*f], clamped to [0, 1]."""
    if codes.dim() != 3:
        raise UserError(f"expected codes [B, h, w], got shape {list(codes.shape)}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise UserError(f"expected integer codes, got dtype {codes.dtype}")
    size = vqvae.config.codebook_size
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= size):
        raise UserError(f"codes must lie in [0, {size}), got values in [{int(codes.min())}, {int(codes.max())}]")
    images = vqvae.codes_to_images(codes.to(_model_device(vqvae), torch.long))
    return images.clamp_(0.0, 1.0).to(codes.device)


def vqvae_fingerprint(vqvae: VQVAE) -> str:
    """16 hex digits over the config and every tensor (checkpoints/fingerprint.py); equal for a model and
    its saved-and-loaded copy, different after any update. Training data and checkpoints record it."""
    return module_fingerprint(vqvae, vqvae.config.to_dict())
