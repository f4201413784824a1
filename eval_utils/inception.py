"""The FID Inception-v3: the network behind published FID and IS numbers, written here without torchvision.

FID is only comparable between papers when it uses one network: the TensorFlow Inception graph of
2015-12-05 that the original FID code used. pytorch-fid ported its weights to the PyTorch file
`pt_inception-2015-12-05-6726825d.pth`; this module builds a network whose state dict has exactly
that file's keys and shapes (torchvision's `Inception3` naming, no auxiliary classifier, a 1008-class
`fc`), so the file loads strictly. Three details of the TF graph differ from torchvision's Inception
and are kept: the average-pool branches of the A, C and first E blocks exclude the zero padding from
the average (`count_include_pad=False`), and the last E block (`Mixed_7c`) max-pools its pool branch.

Input handling, as pytorch-fid: images [B, 3, H, W] in [0, 1] are resized to 299 x 299 (bilinear,
align_corners=False, no antialiasing) and mapped to [-1, 1] with 2x - 1.
Outputs: `pool`, the 2048-d global average pool used by FID; `logits`, the 1008 class logits used
by IS, computed as `pool @ fc.weight.T` WITHOUT the fc bias, because the reference IS code (OpenAI's
improved-GAN, and torch-fidelity's "logits_unbiased" after it) multiplies by the weight matrix only.

We cannot ship or download the weights: the user supplies the file (docs/evaluation.md).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from utils.errors import UserError
from utils.logging import get_logger

logger = get_logger(__name__)

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILENAME}"
# torch.hub names a weights file by the first 8 hex digits of its SHA-256.
WEIGHTS_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008


class ConvBN(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3, as the TF graph) and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that, like TF's, averages only over the pixels inside the image."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35 x 35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 branches -> 224 + pool_features channels."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_same(x)),
        ], dim=1)


class ReductionB(nn.Module):
    """35 -> 17 grid reduction (`Mixed_6a`): stride-2 3x3 | 1x1-3x3-3x3/2 | maxpool -> 480 + in channels."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionC(nn.Module):
    """17 x 17 block with factorised 7x7 convolutions (1x7 and 7x1) -> 768 channels."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            self.branch7x7dbl_5(self.branch7x7dbl_4(double)),
            self.branch_pool(_avg_pool_same(x)),
        ], dim=1)


class ReductionD(nn.Module):
    """17 -> 8 grid reduction (`Mixed_7a`): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool -> 512 + in channels."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(seven),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionE(nn.Module):
    """8 x 8 block with split 1x3 / 3x1 outputs -> 2048 channels; `max_pool` selects the Mixed_7c variant."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        # The TF graph max-pools in Mixed_7c (most likely a slip there, but it defines FID).
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_same(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], dim=1)


class InceptionOutputs(NamedTuple):
    pool: torch.Tensor    # [B, 2048] global average pool: FID features
    logits: torch.Tensor  # [B, 1008] class logits without the fc bias: IS


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the FID reference graph; attribute names give the weights file's keys."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = ReductionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = ReductionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> InceptionOutputs:
        """images [B, 3, H, W] in [0, 1], any H and W -> pool features and unbiased class logits."""
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = x.mean(dim=(2, 3))
        return InceptionOutputs(pool=pool, logits=pool @ self.fc.weight.T)


def _missing_weights_message(path: Path) -> str:
    return (f"Inception weights file not found: {path}; download {WEIGHTS_FILENAME} from {WEIGHTS_URL} "
            f"on a machine with internet access and pass its path (see docs/evaluation.md)")


def load_inception(path: str | os.PathLike, device: torch.device | str = "cpu") -> FIDInceptionV3:
    """The FID Inception with weights from the user's `pt_inception-2015-12-05-6726825d.pth`, in eval mode.

    A missing, unreadable or mismatched file raises a one-line `UserError`; a file whose SHA-256 does
    not start with the standard prefix still loads (its keys fit) but logs a warning, because scores
    from other weights are not comparable with published FIDs.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(_missing_weights_message(path))
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors for a corrupt file
        raise UserError(f"cannot read Inception weights {path}: {err}") from None
    if not isinstance(state_dict, dict):
        raise UserError(f"{path} does not hold a state dict; expected {WEIGHTS_FILENAME}")
    network = FIDInceptionV3()
    expected = network.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    misshapen = [key for key in expected if key in state_dict and not (
        isinstance(state_dict[key], torch.Tensor) and state_dict[key].shape == expected[key].shape)]
    if missing or unexpected or misshapen:
        raise UserError(f"{path} is not the FID Inception weights file ({WEIGHTS_FILENAME}): "
                        f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                        f"(e.g. {unexpected[:2]}), {len(misshapen)} of another shape (e.g. {misshapen[:2]})")
    network.load_state_dict(state_dict)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(WEIGHTS_SHA256_PREFIX):
        logger.warning("%s has SHA-256 %s..., not the standard FID weights (%s...): its scores are not "
                       "comparable with published FID/IS", path, digest[:8], WEIGHTS_SHA256_PREFIX)
    return network.to(device).eval().requires_grad_(False)


@torch.no_grad()
def inception_features(network: FIDInceptionV3, images: torch.Tensor,
                       batch_size: int = 50) -> InceptionOutputs:
    """Pool features [N, 2048] and unbiased logits [N, 1008] (float64, CPU) of images [N, 3, H, W] in [0, 1]."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise UserError(f"expected images [N, 3, H, W], got shape {tuple(images.shape)}")
    device = next(network.parameters()).device
    pools, logits = [], []
    for start in tqdm(range(0, images.shape[0], batch_size), desc="inception", unit="batch"):
        batch = images[start:start + batch_size].to(device=device, dtype=torch.float32)
        outputs = network(batch)
        pools.append(outputs.pool.double().cpu())
        logits.append(outputs.logits.double().cpu())
    return InceptionOutputs(pool=torch.cat(pools), logits=torch.cat(logits))
