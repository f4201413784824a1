"""Loading a checkpoint for generation: the model, and the tokenizer and VQ-VAE it was trained with.

The checkpoint's `model_config.json` metadata names them (written by training and export):

    "tokenizer": {"path": ..., "fingerprint": ..., ...}   the text tokenizer's .model file
    "vqvae":     {"path": ..., "fingerprint": ...}        the VQ-VAE folder
    "data":      {"image_grid": 8, "text_max_tokens": 32, "lowres_grid": 4,   sizes trained on, whether
                  "sr_windows": true, "sr_condition": "lowres"} super-resolution trained the magnifying windows
                                                              and what it reads (absent: "lowres")

`--text-tokenizer` / `--vqvae` replace the recorded paths (a moved run, CogView's release), but the
files must still be the ones the model was trained with: a fingerprint that differs from the
recorded one is refused with one line, as is a vocabulary that does not fit the model. A relative
recorded path is looked up from the working directory, then from the checkpoint folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from data_utils.sequences import text_positions_for
from data_utils.sr_windows import DEFAULT_SR_CONDITION, checked_condition
from data_utils.tokenizer import GRID_TOKENS, UnifiedTokenizer
from generation.tasks import Geometry
from model.config import ModelConfig
from utils.errors import UserError
from utils.logging import get_logger

logger = get_logger(__name__)

@dataclass
class Components:
    model: torch.nn.Module
    tokenizer: UnifiedTokenizer
    vqvae: torch.nn.Module
    geometry: Geometry
    caption_model: torch.nn.Module | None
    metadata: dict[str, Any]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` picks the GPU when there is one; a GPU asked for on a machine without one is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for a GPU, but torch sees none; use --device cpu")
    return device


def _recorded_path(metadata: Mapping[str, Any], key: str, checkpoint: Path) -> Path | None:
    entry = metadata.get(key)
    path = entry.get("path") if isinstance(entry, Mapping) else None
    if not path:
        return None
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    base = checkpoint if checkpoint.is_dir() else checkpoint.parent
    for folder in (base, *base.parents[:2]):
        if (folder / path).exists():
            return folder / path
    return path


def _recorded_fingerprint(metadata: Mapping[str, Any], key: str) -> str | None:
    entry = metadata.get(key)
    return entry.get("fingerprint") if isinstance(entry, Mapping) else None


def _need_path(given: str | os.PathLike | None, recorded: Path | None, what: str, flag: str, checkpoint: Path) -> Path:
    path = Path(given) if given else recorded
    if path is None:
        raise UserError(f"the checkpoint {checkpoint} does not record its {what}; give it with {flag}")
    if not path.exists():
        source = "given" if given else f"recorded in {checkpoint}'s model_config.json"
        raise UserError(f"{what} not found: {path} ({source}); give the right one with {flag}")
    return path


def geometry_from(metadata: Mapping[str, Any], config: ModelConfig) -> Geometry:
    """The trained sizes from the metadata; a checkpoint without them (CogView's release) gets the
    largest grid whose text-to-image sequence fits its positions, and the rest of them for text."""
    data = metadata.get("data")
    max_positions = config.max_position_embeddings
    if isinstance(data, Mapping) and "image_grid" in data and "text_max_tokens" in data:
        text_max_tokens = int(data["text_max_tokens"])
        return Geometry(int(data["image_grid"]), text_max_tokens, max_positions,
                        text_positions_for(config.position_layout, text_max_tokens),
                        magnifies=data.get("sr_windows") is True,
                        sr_condition=checked_condition(str(data.get("sr_condition", DEFAULT_SR_CONDITION))))
    if config.position_layout == "fixed-image":
        raise UserError("a fixed-image model must record its text budget (data.text_max_tokens) in model_config.json")
    fitting = [g for g in GRID_TOKENS if g * g + 5 < max_positions and g >= 8]
    if not fitting:
        raise UserError(f"a model with {max_positions} positions fits no image grid; is this a generation checkpoint?")
    grid = max(fitting)
    geometry = Geometry(grid, max_positions - grid * grid - 5, max_positions)
    logger.warning("the checkpoint records no data sizes; assuming a %dx%d code grid and %d text tokens",
                   grid, grid, geometry.text_max_tokens)
    return geometry


def _load_model(path: Path, device: torch.device, settings: Mapping[str, Any] | None = None
                ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """fp32 weights: lower precision is applied by autocast while running (`fp16.inference_autocast`).
    `settings`: load-time model settings (`model.checkpoint.load_model_for_inference`'s keywords)."""
    from model.checkpoint import load_model_for_inference

    return load_model_for_inference(path, device=device, **(settings or {}))


def load_components(checkpoint: str | os.PathLike, vqvae: str | os.PathLike | None = None,
                    text_tokenizer: str | os.PathLike | None = None, device: str | torch.device | None = None,
                    caption_model: str | os.PathLike | None = None,
                    model_settings: Mapping[str, Any] | None = None,
                    adapters: Sequence[str | os.PathLike] = ()) -> Components:
    """Everything generation needs, checked against each other (see the module docstring).

    `adapters`: fine-tuning adapters folded into the model, each refused unless made for this checkpoint
    (`finetune.adapters.apply_adapters`).

    `model_settings` (layernorm_order, pb_relax, pb_relax_alpha) apply to `checkpoint`, not to
    `caption_model`, which has its own config."""
    from data_utils.text_tokenizer import TextTokenizer
    from vqvae.api import load_vqvae, vqvae_fingerprint

    checkpoint = Path(checkpoint)
    device = resolve_device(device)
    model, metadata = _load_model(checkpoint, device, model_settings)
    if adapters:
        from finetune.adapters import apply_adapters

        apply_adapters(model, adapters)

    vqvae_path = _need_path(vqvae, _recorded_path(metadata, "vqvae", checkpoint), "VQ-VAE", "--vqvae", checkpoint)
    vq = load_vqvae(vqvae_path, device=device)
    recorded = _recorded_fingerprint(metadata, "vqvae")
    if recorded is not None and vqvae_fingerprint(vq) != recorded:
        raise UserError(f"VQ-VAE {vqvae_path} (fingerprint {vqvae_fingerprint(vq)}) is not the one {checkpoint} was "
                        f"trained with (fingerprint {recorded}); give the right one with --vqvae")

    tok_path = _need_path(text_tokenizer, _recorded_path(metadata, "tokenizer", checkpoint), "text tokenizer",
                          "--text-tokenizer", checkpoint)
    # The location grid is part of the vocabulary the checkpoint was trained with; one made before location
    # tokens records none (0), which gives its tokenizer exactly as it was.
    recorded_tokenizer = metadata.get("tokenizer")
    location_bins = int(recorded_tokenizer.get("location_bins", 0)) if isinstance(recorded_tokenizer, Mapping) else 0
    tokenizer = UnifiedTokenizer(TextTokenizer(tok_path), vq.config.codebook_size, location_bins)
    recorded = _recorded_fingerprint(metadata, "tokenizer")
    if recorded is not None and tokenizer.fingerprint() != recorded:
        raise UserError(f"text tokenizer {tok_path} with the VQ-VAE's {vq.config.codebook_size} codes "
                        f"(fingerprint {tokenizer.fingerprint()}) is not what {checkpoint} was trained with "
                        f"(fingerprint {recorded}); give the right one with --text-tokenizer / --vqvae")
    _check_vocab(model, tokenizer, checkpoint)
    geometry = geometry_from(metadata, model.config)

    captioner = None
    if caption_model is not None:
        captioner, caption_metadata = _load_model(Path(caption_model), device)
        _check_vocab(captioner, tokenizer, Path(caption_model))
        recorded = _recorded_fingerprint(caption_metadata, "tokenizer")
        if recorded is not None and recorded != tokenizer.fingerprint():
            raise UserError(f"--caption-model {caption_model} was trained with another tokenizer "
                            f"(fingerprint {recorded}, ours {tokenizer.fingerprint()})")
        caption_grid = geometry_from(caption_metadata, captioner.config).image_grid
        if caption_grid != geometry.image_grid:
            raise UserError(f"--caption-model {caption_model} reads {caption_grid}x{caption_grid} code grids, "
                            f"the model makes {geometry.image_grid}x{geometry.image_grid}")
    return Components(model, tokenizer, vq, geometry, captioner, metadata)


def _check_vocab(model: torch.nn.Module, tokenizer: UnifiedTokenizer, source: Path) -> None:
    if model.config.vocab_size != tokenizer.vocab_size:
        raise UserError(f"{source} has a vocabulary of {model.config.vocab_size} ids but the tokenizer and VQ-VAE "
                        f"make {tokenizer.vocab_size}; give the ones it was trained with (--text-tokenizer, --vqvae)")
