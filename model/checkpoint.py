"""Finding and loading a transformer checkpoint of any known layout for inference.

Every layout loads through `load_model_for_inference`, and any mismatch is one line naming the first
key that differs and the flag to fix. Layouts:
- exported: `model.safetensors` + `model_config.json` (written by `model.export.save_exported`);
- DeepSpeed / CogView: a save folder whose tracker file names the iteration folder, or that iteration
  folder itself, or its `mp_rank_00_model_states.pt` (any ZeRO stage: see checkpoints/deepspeed_folders.py);
- foreign key names and configs (CogView's release, SwissArmyTransformer): see model/state_dict_adapters.py.

Three settings change the numerics without changing any tensor shape: Sandwich-LN (`layernorm_order`,
though it adds tensors), PB-relax (`pb_relax`) and PB-relax attention (`pb_relax_alpha`). They can be given
at load time; a given value that contradicts `model_config.json` is an error, never silently preferred.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from checkpoints.deepspeed_folders import MODEL_STATES_FILE, iteration_folder, read_module_weights
from checkpoints.readers import read_safetensors, strip_data_parallel_prefix
from checkpoints.trackers import LATEST_FILES
from model.config import ModelConfig
from model.config_file import CONFIG_FILE, read_model_config
from model.export import WEIGHTS_FILE
from model.gpt import CogViewGPT
from model.state_dict_adapters import adapter_for
from model.strict_load import load_state_dict_strict
from utils.errors import UserError

# Settings a caller may give at load time, and the command-line flags that give them (for error messages).
LOAD_TIME_SETTINGS = {"num_attention_heads": "--num-attention-heads", "layernorm_order": "--layernorm-order",
                      "pb_relax": "--pb-relax / --no-pb-relax", "pb_relax_alpha": "--pb-relax-alpha"}


def _locate_and_read(path: Path) -> tuple[dict[str, torch.Tensor], list[Path], str]:
    """State dict of any known layout, the folders to look for `model_config.json` in (nearest first),
    and a name for the checkpoint in error messages."""
    if path.is_file():
        if path.suffix == ".safetensors":
            return read_safetensors(path), [path.parent], str(path)
        if path.name == MODEL_STATES_FILE:
            return read_module_weights(path.parent), [path.parent, path.parent.parent], str(path.parent)
        raise UserError(f"unknown checkpoint file {path}: give a {WEIGHTS_FILE}, a {MODEL_STATES_FILE} "
                        f"or a folder holding one")
    if (path / WEIGHTS_FILE).is_file():
        return read_safetensors(path / WEIGHTS_FILE), [path], str(path)
    iteration_dir = iteration_folder(path)
    if iteration_dir is None:
        raise UserError(f"no model checkpoint in {path}: expected {WEIGHTS_FILE} + {CONFIG_FILE}, "
                        f"{' or '.join(LATEST_FILES)}, or {MODEL_STATES_FILE}")
    config_dirs = [iteration_dir] if iteration_dir == path else [iteration_dir, path]
    return read_module_weights(iteration_dir), config_dirs + [iteration_dir.parent], str(iteration_dir)


def _apply_settings(fields: dict[str, Any], recorded: Mapping[str, Any], settings: Mapping[str, Any],
                    config_file: Path | None) -> dict[str, Any]:
    """`fields` with the given load-time `settings`; one that contradicts what `config_file` records
    is a one-line error."""
    for name, value in settings.items():
        if name in recorded and recorded[name] != value:
            raise UserError(f"{name}={value!r} ({LOAD_TIME_SETTINGS[name]}) contradicts {config_file}, which "
                            f"records {name}={recorded[name]!r}; leave the setting out to use the checkpoint's")
    return {**fields, **settings}


def load_model_for_inference(path: str | os.PathLike, device: str | torch.device = "cpu",
                             dtype: torch.dtype = torch.float32, num_attention_heads: int | None = None,
                             layernorm_order: str | None = None, pb_relax: bool | None = None,
                             pb_relax_alpha: float | None = None) -> tuple[CogViewGPT, dict[str, Any]]:
    """Load any checkpoint layout (see the module docstring) into an eval-mode model.

    Returns the model on `device` in `dtype` and the metadata of `model_config.json` (everything but
    the config fields; empty without such a file). The settings left at None come from
    `model_config.json`, or, without one, from the layout (CogView's release: 64-wide heads, Sandwich-LN
    when its tensors are there, PB-relax on).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"model checkpoint not found: {path}")
    state_dict, config_dirs, source = _locate_and_read(path)
    config_file = next((d / CONFIG_FILE for d in dict.fromkeys(config_dirs) if (d / CONFIG_FILE).is_file()), None)
    recorded, metadata = read_model_config(config_file) if config_file is not None else ({}, {})
    state_dict = strip_data_parallel_prefix(state_dict)
    adapter = adapter_for(state_dict, has_config_file=config_file is not None)
    state_dict = adapter.to_ours(state_dict)
    settings = {name: value for name, value in dict(num_attention_heads=num_attention_heads,
                                                    layernorm_order=layernorm_order, pb_relax=pb_relax,
                                                    pb_relax_alpha=pb_relax_alpha).items() if value is not None}
    heads = recorded.get("num_attention_heads", num_attention_heads)
    fields = _apply_settings({**adapter.implied_config(state_dict, source, heads), **recorded}, recorded, settings,
                             config_file)
    try:
        config = ModelConfig.from_dict(fields)
    except UserError as err:
        raise UserError(f"model config of {source}: {err}") from None
    with torch.device("meta"):
        model = CogViewGPT(config)
    load_state_dict_strict(model, state_dict, source, assign=True)
    return model.to(device=device, dtype=dtype).eval(), metadata
