"""The self-FID feature network: a small CNN we train on the evaluation dataset itself.

Why: FID needs an image feature extractor that knows what matters in the images. The standard one
(eval_utils.inception) needs a weights file we cannot ship, and its ImageNet features know little
about 64 px synthetic shapes or emoji. Any captioned dataset already says what matters in its images,
in its captions, so we train a CNN to predict the caption's bag of text tokens (multi-label: which
token ids occur in the caption) and use its globally pooled last convolutional layer as features,
as FID uses Inception's pool layer. This needs no download and works on every captioned dataset.

What it is not: its numbers are on no common scale. A self-FID is comparable only between runs
measured with the same feature network file (same `fingerprint`), never with Inception FIDs or with
another dataset's network. It sees only what the captions name (shapes: colour, shape, size,
position; not stroke quality beyond what the CNN picks up to predict those), and a small training
set lets it overfit, so train it on the real training images, not on generated ones.

Files: a folder with `model.safetensors` (weights) and `config.json` (`FeatureNetConfig` and the
fingerprint).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from checkpoints.fingerprint import module_fingerprint
from utils.errors import UserError
from utils.files import atomic_save_safetensors, atomic_write_json, read_json
from utils.logging import TensorBoardLogger, get_logger

logger = get_logger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class FeatureNetConfig:
    """Shape of the network; `label_ids` are the caption token ids its head predicts, in output order."""

    label_ids: tuple[int, ...]
    image_size: int = 64                     # every input is resized to image_size x image_size
    widths: tuple[int, ...] = (32, 64, 128, 256)  # one stride-2 stage each; features = widths[-1]

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]


class FeatureNet(nn.Module):
    """Stages of (3x3 stride-2 conv, 3x3 conv), GroupNorm + SiLU after each; mean pool; linear head."""

    def __init__(self, config: FeatureNetConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_channels = 3
        for width in config.widths:
            for stride in (2, 1):
                layers += [nn.Conv2d(in_channels, width, 3, stride=stride, padding=1),
                           nn.GroupNorm(min(8, width), width), nn.SiLU()]
                in_channels = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(config.feature_dim, len(config.label_ids))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> features [B, feature_dim]."""
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=True)
        return self.body(images * 2.0 - 1.0).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_labels] of each label token occurring in the image's caption."""
        return self.head(self.features(images))


def caption_label_ids(caption_tokens: Sequence[Sequence[int]], max_labels: int) -> tuple[int, ...]:
    """The `max_labels` token ids that occur in the most captions (ties: smaller id first), sorted."""
    document_frequency = Counter(token for caption in caption_tokens for token in set(caption))
    if not document_frequency:
        raise UserError("cannot train the self-FID feature network: every caption is empty")
    ranked = sorted(document_frequency, key=lambda token: (-document_frequency[token], token))
    return tuple(sorted(ranked[:max_labels]))


def _multi_hot(caption_tokens: Sequence[Sequence[int]], label_ids: Sequence[int]) -> torch.Tensor:
    column = {token: index for index, token in enumerate(label_ids)}
    targets = torch.zeros(len(caption_tokens), len(label_ids))
    for row, caption in enumerate(caption_tokens):
        for token in set(caption):
            if token in column:
                targets[row, column[token]] = 1.0
    return targets


def train_feature_net(images: torch.Tensor, caption_tokens: Sequence[Sequence[int]], steps: int = 1000,
                      batch_size: int = 64, lr: float = 1e-3, max_labels: int = 1024, image_size: int = 64,
                      widths: Sequence[int] = (32, 64, 128, 256), seed: int = 0,
                      log_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> FeatureNet:
    """Train a `FeatureNet` to predict which caption tokens occur (binary cross-entropy per label).

    images [N, 3, H, W] in [0, 1] and, for each, the token ids of its caption (e.g. unified text ids).
    Batches are drawn with replacement from a generator seeded by `seed`, and initialisation uses the
    same seed, so a run is reproducible on one machine. AdamW, constant `lr`.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise UserError(f"expected training images [N, 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[0] != len(caption_tokens):
        raise UserError(f"{images.shape[0]} images but {len(caption_tokens)} captions")
    if steps < 1:
        raise UserError(f"feature network training needs at least 1 step, got {steps}")
    config = FeatureNetConfig(label_ids=caption_label_ids(caption_tokens, max_labels), image_size=image_size,
                              widths=tuple(widths))
    targets = _multi_hot(caption_tokens, config.label_ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = FeatureNet(config)
    network.to(device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    board = TensorBoardLogger(log_dir)
    progress = tqdm(range(steps), desc="self-FID net", unit="step")
    for step in progress:
        index = torch.randint(images.shape[0], (batch_size,), generator=generator)
        logits = network(images[index].to(device=device, dtype=torch.float32))
        loss = F.binary_cross_entropy_with_logits(logits, targets[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            progress.set_postfix(loss=f"{loss.item():.4f}")
            board.scalars({"feature_net/loss": loss.item()}, step)
    board.close()
    logger.info("self-FID feature network: %d caption tokens as labels, %d steps, last batch loss %.4f",
                len(config.label_ids), steps, loss.item())
    return network.eval()


def feature_net_fingerprint(network: FeatureNet) -> str:
    """The weights' fingerprint (checkpoints/fingerprint.py): two self-FIDs are comparable iff these agree."""
    return module_fingerprint(network)


def save_feature_net(network: FeatureNet, folder: str | os.PathLike) -> None:
    """Write `model.safetensors` and `config.json` into `folder`, each atomically."""
    folder = Path(folder)
    atomic_save_safetensors(folder / WEIGHTS_FILE, network.state_dict())
    config = asdict(network.config)
    atomic_write_json(folder / CONFIG_FILE, {**config, "fingerprint": feature_net_fingerprint(network)})


def load_feature_net(folder: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureNet:
    """Load a folder written by `save_feature_net`; a missing or mismatched file is a one-line `UserError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"self-FID feature network not found: {weights} (train one with train_feature_net)")
    raw = read_json(folder / CONFIG_FILE)
    try:
        config = FeatureNetConfig(label_ids=tuple(raw["label_ids"]), image_size=int(raw["image_size"]),
                                  widths=tuple(raw["widths"]))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{folder / CONFIG_FILE} is not a feature network config ({err!r})") from None
    network = FeatureNet(config)
    try:
        network.load_state_dict(load_file(weights))
    except (SafetensorError, RuntimeError) as err:
        first_line = str(err).strip().splitlines()[0]
        raise UserError(f"{weights} does not match {folder / CONFIG_FILE}: {first_line}") from None
    if raw.get("fingerprint") not in (None, feature_net_fingerprint(network)):
        raise UserError(f"{weights} does not match the fingerprint in {folder / CONFIG_FILE}; "
                        f"the folder was modified after saving")
    return network.to(device).eval().requires_grad_(False)


@torch.no_grad()
def features(network: FeatureNet, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Features [N, feature_dim] (float64, CPU) of images [N, 3, H, W] in [0, 1], for `fid_from_features`."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise UserError(f"expected images [N, 3, H, W], got shape {tuple(images.shape)}")
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    chunks = [network.features(images[start:start + batch_size].to(device=device, dtype=torch.float32))
              .double().cpu() for start in range(0, images.shape[0], batch_size)]
    network.train(was_training)
    return torch.cat(chunks)
