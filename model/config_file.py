"""`model_config.json`: the `ModelConfig` fields beside every checkpoint, plus free metadata.

Training and export both write it, so loading for inference never needs the training command line;
the metadata names what the model was trained with (tokenizer, VQ-VAE, data sizes, with fingerprints).
"""
from __future__ import annotations

import os
from dataclasses import fields
from typing import Any, Mapping

from model.config import ModelConfig
from utils.errors import UserError
from utils.files import atomic_write_json, read_json

CONFIG_FILE = "model_config.json"
CONFIG_FIELDS = frozenset(f.name for f in fields(ModelConfig))


def write_model_config(path: str | os.PathLike, config: ModelConfig, extra: Mapping[str, Any] | None = None) -> None:
    """Write the config's fields plus `extra` (e.g. tokenizer and VQ-VAE paths and fingerprints), atomically."""
    extra = dict(extra or {})
    clash = sorted(CONFIG_FIELDS & set(extra))
    if clash:
        raise ValueError(f"metadata keys {clash} collide with ModelConfig fields")
    atomic_write_json(path, {**config.to_dict(), **extra})


def read_model_config(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split the file into its `ModelConfig` fields and the remaining metadata."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object with the model config")
    config = {k: v for k, v in data.items() if k in CONFIG_FIELDS}
    metadata = {k: v for k, v in data.items() if k not in CONFIG_FIELDS}
    return config, metadata
