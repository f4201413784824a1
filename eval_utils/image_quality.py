"""evaluate.py's fid section: FID and IS with the Inception network, and self-FID with a feature network
trained on the dataset itself, of the judged generated images against the real held-out images.
The definitions are in `fid.py`, `inception.py` and `feature_net.py`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from data_utils.images import pil_to_tensor
from data_utils.tokenizer import UnifiedTokenizer
from eval_utils.feature_net import (FeatureNet, feature_net_fingerprint, features, load_feature_net,
                                    save_feature_net, train_feature_net)
from eval_utils.fid import fid_from_features, inception_score
from eval_utils.held_out import CaptionedSet
from eval_utils.inception import FIDInceptionV3, inception_features, load_inception
from eval_utils.prompt_following import ImagesAtScale
from eval_utils.report import Section, scale_key
from utils.errors import UserError
from utils.logging import get_logger

logger = get_logger(__name__)


def load_fid_networks(inception_weights: str | None, feature_net: str | None, train_feature_net_to: str | None,
                      device: torch.device) -> tuple[FIDInceptionV3 | None, FeatureNet | None]:
    """The networks the section needs, loaded before the model is, so that a wrong path costs nothing;
    refuses to overwrite a saved self-FID network."""
    inception = load_inception(inception_weights, device) if inception_weights else None
    network = load_feature_net(feature_net, device) if feature_net else None
    if train_feature_net_to and Path(train_feature_net_to, "model.safetensors").exists():
        raise UserError(f"{train_feature_net_to} already holds a self-FID network; pass it as --feature-net "
                        f"to compare with runs that used it, or choose another folder")
    return inception, network


def self_fid_network(train: CaptionedSet, tokenizer: UnifiedTokenizer, folder: str | os.PathLike, steps: int,
                     seed: int, device: torch.device, log_dir: str | os.PathLike | None = None) -> FeatureNet:
    """Train the self-FID network on training-split items (captions as unified text ids) and save it."""
    tokens = [tokenizer.encode_text(caption) for caption in train.captions]
    network = train_feature_net(train.tensor(), tokens, steps=steps, seed=seed, log_dir=log_dir, device=device)
    save_feature_net(network, folder)
    logger.info("saved the self-FID network to %s (fingerprint %s)", folder, feature_net_fingerprint(network))
    return network


def _softmax64(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.double(), dim=-1)


def fid_section(real: torch.Tensor, cfg_scales: Sequence[float], images_at: ImagesAtScale,
                inception: FIDInceptionV3 | None, feature_net: FeatureNet | None) -> Section:
    """FID and IS (Inception) and self-FID (our feature network) of the judged images at each scale
    against the real held-out images; the real images' own IS is the reference row."""
    results: dict[str, Any] = {"real_images": real.shape[0], "by_cfg_scale": {}}
    real_inception = inception_features(inception, real) if inception is not None else None
    real_self = features(feature_net, real) if feature_net is not None else None
    if real_inception is not None:
        results["real_inception_score"] = inception_score(_softmax64(real_inception.logits))[0]
    if feature_net is not None:
        results["feature_net_fingerprint"] = feature_net_fingerprint(feature_net)
    lines = [f"{'cfg scale':<12}{'FID':>10}{'IS':>10}{'self-FID':>10}"]
    for scale in cfg_scales:
        generated = torch.stack([pil_to_tensor(image) for image in images_at(scale).judged])
        row: dict[str, float] = {}
        if inception is not None:
            outputs = inception_features(inception, generated)
            row["fid"] = fid_from_features(real_inception.pool, outputs.pool)
            row["inception_score"] = inception_score(_softmax64(outputs.logits))[0]
        if feature_net is not None:
            row["self_fid"] = fid_from_features(real_self, features(feature_net, generated))
        results["by_cfg_scale"][scale_key(scale)] = row
        lines.append(f"{scale:<12g}" + "".join(f"{row[key]:>10.3f}" if key in row else f"{'-':>10}"
                                               for key in ("fid", "inception_score", "self_fid")))
    if "real_inception_score" in results:
        lines.append(f"{'real images':<12}{'-':>10}{results['real_inception_score']:>10.3f}{'-':>10}")
    if feature_net is not None:
        lines.append(f"self-FID network {results['feature_net_fingerprint']} (compare only with the same network)")
    return Section("fid", results, "\n".join(lines))
