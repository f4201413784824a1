"""The VQ-VAE: a convolutional encoder, the EMA quantiser and a transposed-convolution decoder.

Submodules are named after CogView's released model (`enc_b`, `quantize_t`, `dec`, each a
`blocks` sequence), so that with `cogview_config()` the state dict matches that file key for key.
The two layouts differ in two places only:
- "cogview": every convolution is `hidden_channels` wide; the decoder starts with a transposed
  convolution straight from the codes; no residual blocks.
- "ours": widths halve at each finer resolution (the full-resolution layers dominate the cost, so
  this makes the model several times cheaper at equal quality), and residual blocks at the code
  grid add depth where it is cheap; the decoder first lifts codes to `hidden_channels` with a 3x3
  convolution so its residual blocks can run at full width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import UserError
from vqvae.config import VQVAEConfig
from vqvae.quantizer import EMAQuantizer


def level_widths(config: VQVAEConfig) -> list[int]:
    """Channels at each downsampled level, finest (stride 2) first, the code grid last."""
    levels = int(math.log2(config.downsample))
    if config.layout == "cogview":
        return [config.hidden_channels] * levels
    return [config.hidden_channels >> (levels - 1 - level) for level in range(levels)]


class ResBlock(nn.Module):
    """relu(x + conv1x1(relu(conv3x3(x)))): input and output are both post-activation, so the
    block drops into the plain conv/ReLU stack without extra activations around it."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.conv_out = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv_out(F.relu(self.conv_in(x))))


class Encoder(nn.Module):
    """Stride-2 4x4 convolutions down to the code grid, residual blocks, 1x1 projection to codes."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in level_widths(config):
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU()]
            channels = width
        layers += [ResBlock(channels) for _ in range(config.num_res_blocks)]
        layers.append(nn.Conv2d(channels, config.embed_dim, 1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Decoder(nn.Module):
    """(ours: 3x3 lift and residual blocks), stride-2 4x4 transposed convolutions, 1x1 to RGB."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        widths = level_widths(config)
        layers: list[nn.Module] = []
        channels = config.embed_dim
        if config.layout == "ours":
            layers += [nn.Conv2d(channels, widths[-1], 3, padding=1), nn.ReLU()]
            layers += [ResBlock(widths[-1]) for _ in range(config.num_res_blocks)]
            channels = widths[-1]
        # Each upsampling step lands on the next finer level; full resolution keeps the finest width.
        for width in reversed([widths[0]] + widths[:-1]):
            layers += [nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1), nn.ReLU()]
            channels = width
        layers.append(nn.Conv2d(channels, 3, 1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(z)


@dataclass
class VQVAEOutput:
    reconstruction: torch.Tensor  # [B, 3, H, W] in image units ([0, 1] scale), not clamped
    loss: torch.Tensor  # recon + commitment_cost * commitment
    recon_loss: torch.Tensor
    commitment: torch.Tensor
    codes: torch.Tensor  # [B, h, w]
    code_counts: torch.Tensor  # [K] uses of each code in this batch
    restarted: int  # dead codes restarted in this step


class VQVAE(nn.Module):
    """Images in [0, 1] -> code grid -> images; `forward` is one training step's loss."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.enc_b = Encoder(config)
        self.quantize_t = EMAQuantizer(config.codebook_size, config.embed_dim, config.ema_decay,
                                       config.ema_eps, config.dead_code_threshold)
        self.dec = Decoder(config)
        # Not persistent: CogView's file has no such keys; they live in the config.
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std).view(1, 3, 1, 1), persistent=False)

    def check_images(self, images: torch.Tensor) -> None:
        """One-line error for anything but float [B, 3, H, W] with H, W multiples of the downsampling."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise UserError(f"expected images [B, 3, H, W], got shape {list(images.shape)}")
        if not images.is_floating_point():
            raise UserError(f"expected float images in [0, 1], got dtype {images.dtype}")
        factor = self.config.downsample
        if images.shape[2] % factor or images.shape[3] % factor:
            raise UserError(f"image size {images.shape[2]}x{images.shape[3]} is not a multiple of the "
                            f"VQ-VAE's downsampling factor {factor}; resize or crop the images")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> continuous encoder output [B, D, H/f, W/f]."""
        self.check_images(images)
        return self.enc_b((images - self.image_mean) / self.image_std)

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """Code vectors [B, D, h, w] -> images in [0, 1] units (not clamped)."""
        return self.dec(quantized) * self.image_std + self.image_mean

    def images_to_codes(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantize_t.encode(self.encode(images))

    def codes_to_images(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantize_t.lookup(codes))

    def forward(self, images: torch.Tensor) -> VQVAEOutput:
        quantizer = self.quantize_t(self.encode(images))
        reconstruction = self.decode(quantizer.quantized)
        if self.config.recon_loss == "l1":
            recon_loss = F.l1_loss(reconstruction, images)
        else:
            recon_loss = F.mse_loss(reconstruction, images)
        loss = recon_loss + self.config.commitment_cost * quantizer.commitment
        return VQVAEOutput(reconstruction, loss, recon_loss, quantizer.commitment, quantizer.codes,
                           quantizer.counts, quantizer.restarted)
