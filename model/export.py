"""Exporting a model as one pickle-free `model.safetensors` + `model_config.json`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from model.config_file import CONFIG_FILE, write_model_config
from model.gpt import CogViewGPT
from utils.files import atomic_save_safetensors

WEIGHTS_FILE = "model.safetensors"


def save_exported(model: CogViewGPT, folder: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
    """Write `model.safetensors` and `model_config.json` (config + `extra`) into `folder`, each
    atomically. The output projection is the word embedding, so it is stored once."""
    folder = Path(folder)
    atomic_save_safetensors(folder / WEIGHTS_FILE, model.state_dict())
    write_model_config(folder / CONFIG_FILE, model.config, extra)
