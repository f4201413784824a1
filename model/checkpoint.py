"""Loading and exporting transformer weights, with one-line errors when something does not fit.

CogView's users most often could not load a checkpoint for inference, and got PyTorch's wall of
missing keys when they tried. Here every layout we know loads through one function,
`load_model_for_inference`, and any mismatch names the first key that differs and the flag to fix.

Layouts:
- exported: `model.safetensors` + `model_config.json` (written by `save_exported`);
- DeepSpeed / CogView: `{dir}/latest_checkpointed_iteration.txt` (CogView) or `{dir}/latest`
  (DeepSpeed) names the iteration folder; weights are under `module` in
  `{dir}/{iteration}/mp_rank_00_model_states.pt`; the iteration folder itself may also be given.
`model_config.json` holds the `ModelConfig` fields plus free metadata (tokenizer, VQ-VAE, ...). Sizes
it lacks (CogView's released files have no such file) are inferred from the tensor shapes.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from model.config import ModelConfig, infer_num_heads
from model.gpt import CogViewGPT
from utils.errors import UserError
from utils.state_dicts import check_state_dict as check_tensors
from utils.files import atomic_save_safetensors, atomic_write_json, read_json

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
MODEL_STATES_FILE = "mp_rank_00_model_states.pt"
# ZeRO stage 3 writes one model-states file per rank (placeholders only) instead of MODEL_STATES_FILE.
ZERO3_MODEL_STATES_GLOB = "zero_pp_rank_*_mp_rank_00_model_states.pt"
# Files naming the newest iteration folder: CogView's (and ours), then DeepSpeed's own.
LATEST_FILES = ("latest_checkpointed_iteration.txt", "latest")
_CONFIG_FIELDS = frozenset(f.name for f in fields(ModelConfig))
_LAYER_KEY = re.compile(r"^transformer\.layers\.(\d+)\.")


# ---------------------------------------------------------------- strict loading

def _hint(key: str) -> str:
    """The command-line flag most likely responsible for a mismatch at `key`."""
    if "third_layernorm" in key or "fourth_layernorm" in key:
        return "check --layernorm-order"
    if key == "word_embeddings.weight":
        return "check the tokenizer's vocabulary size and --hidden-size"
    if key == "transformer.position_embeddings.weight":
        return "check --max-position-embeddings and --hidden-size"
    return "check --hidden-size / --num-layers"


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Raise a one-line `UserError` naming the first missing, unexpected or mis-shaped tensor."""
    check_tensors(model.state_dict(), state_dict, f"checkpoint {source} does not match the model", _hint)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
                           assign: bool = False) -> None:
    """Check keys and shapes (one-line error), then `load_state_dict(strict=True)`.

    `assign=True` adopts the checkpoint's tensors instead of copying them (for a model built on the
    meta device, which then costs no memory and no random init).
    """
    check_state_dict(model, state_dict, source)
    model.load_state_dict(dict(state_dict), strict=True, assign=assign)


# ---------------------------------------------------------------- config file

def write_model_config(path: str | os.PathLike, config: ModelConfig, extra: Mapping[str, Any] | None = None) -> None:
    """Write `model_config.json`: the config's fields plus `extra` (e.g. tokenizer and VQ-VAE paths
    and fingerprints), atomically. Training and export both write it this way."""
    extra = dict(extra or {})
    clash = sorted(_CONFIG_FIELDS & set(extra))
    if clash:
        raise ValueError(f"metadata keys {clash} collide with ModelConfig fields")
    atomic_write_json(path, {**config.to_dict(), **extra})


def read_model_config(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split `model_config.json` into its `ModelConfig` fields and the remaining metadata."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object with the model config")
    config = {k: v for k, v in data.items() if k in _CONFIG_FIELDS}
    metadata = {k: v for k, v in data.items() if k not in _CONFIG_FIELDS}
    return config, metadata


def infer_config(state_dict: Mapping[str, torch.Tensor], source: str,
                 num_attention_heads: int | None = None) -> ModelConfig:
    """Sizes read from the tensors of a checkpoint without `model_config.json` (CogView's release).

    The head count is not visible in the shapes: CogView's 64-wide heads unless given.
    """
    for key in ("word_embeddings.weight", "transformer.position_embeddings.weight"):
        if key not in state_dict:
            raise UserError(f"cannot infer the model sizes of {source}: it has no {key} and no {CONFIG_FILE}")
    vocab_size, hidden_size = state_dict["word_embeddings.weight"].shape
    layers = {int(m.group(1)) for key in state_dict if (m := _LAYER_KEY.match(key))}
    if not layers:
        raise UserError(f"cannot infer the model sizes of {source}: it has no transformer.layers.* tensors")
    sandwich = any(".third_layernorm." in key for key in state_dict)
    return ModelConfig(
        vocab_size=vocab_size,
        num_layers=max(layers) + 1,
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads or infer_num_heads(hidden_size),
        max_position_embeddings=state_dict["transformer.position_embeddings.weight"].shape[0],
        layernorm_order="sandwich" if sandwich else "pre",
    )


# ---------------------------------------------------------------- reading files

def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _numpy_safe_globals() -> list:
    """What numpy arrays need to unpickle under `weights_only=True`: CogView's checkpoints store
    numpy's RNG state (a uint32 array) beside the weights. These only rebuild arrays from bytes."""
    import numpy as np

    reconstruct = np._core.multiarray._reconstruct
    dtype_classes = [getattr(np.dtypes, name) for name in np.dtypes.__all__]
    # Files pickled by numpy 1.x name the function under numpy.core.
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype, *dtype_classes]


def _torch_load(path: Path) -> Any:
    """`torch.load` that runs no code from the file (weights only, plus numpy arrays)."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe:
            raise UserError(f"cannot read {path} safely: it holds an object of type {unsafe.group(1)}, which "
                            f"weights-only loading refuses; re-save the weights alone") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        reason = detail.group(1).strip() if detail else _first_line(err)
        raise UserError(f"cannot read {path} as a PyTorch checkpoint: {reason}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"cannot read {path} as a PyTorch checkpoint: {_first_line(err)}") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise UserError(f"cannot read {path} as safetensors: {_first_line(err)}") from None


def _is_zero3_dir(folder: Path) -> bool:
    return not (folder / MODEL_STATES_FILE).is_file() and any(folder.glob(ZERO3_MODEL_STATES_GLOB))


def read_zero3_state_dict(iteration_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The fp32 weights of a ZeRO stage 3 iteration folder, gathered from every rank's partitions.

    Stage 3 splits each weight across the ranks' optimizer-state files; DeepSpeed's own `zero_to_fp32`
    reassembles them (any number of ranks, no GPU, no process group), so such a folder loads for
    inference directly, without a conversion step. Its progress messages go to stdout; they are
    dropped here.
    """
    import contextlib
    import io

    from mpu import prepare_accelerator_env

    iteration_dir = Path(iteration_dir)
    prepare_accelerator_env()  # before DeepSpeed's first import: no GPU probing on CPU machines
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return get_fp32_state_dict_from_zero_checkpoint(str(iteration_dir.parent), tag=iteration_dir.name)
    except (ValueError, KeyError, OSError, RuntimeError, TypeError) as err:
        raise UserError(f"cannot gather the ZeRO stage 3 weights of {iteration_dir}: {_first_line(err)}") from None


def _read_deepspeed_state_dict(iteration_dir: Path) -> dict[str, torch.Tensor]:
    """The full model weights of one DeepSpeed iteration folder (`module` of the model states).

    ZeRO stages 0-2 store the whole module there; stage 3 stores the weights partitioned across the
    ranks' files, which `read_zero3_state_dict` gathers.
    """
    if _is_zero3_dir(iteration_dir):
        return read_zero3_state_dict(iteration_dir)
    if (iteration_dir / "mp_rank_01_model_states.pt").is_file():  # saved with --tensor-parallel-size > 1
        from mpu.tp_checkpoint import read_tensor_parallel_state_dict
        return read_tensor_parallel_state_dict(iteration_dir)
    path = iteration_dir / MODEL_STATES_FILE
    if not path.is_file():
        raise UserError(f"checkpoint folder {iteration_dir} has no {MODEL_STATES_FILE}")
    states = _torch_load(path)
    module = states.get("module") if isinstance(states, dict) else None
    if not isinstance(module, dict) or not module:
        raise UserError(f"{path} holds no model weights under 'module'")
    if any(isinstance(t, torch.Tensor) and t.numel() == 0 for t in module.values()):
        raise UserError(f"{path} holds empty placeholders instead of weights (a ZeRO stage 3 checkpoint); "
                        f"its weights are partitioned across the optimizer state files")
    return module


def _normalise_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the layouts of CogView's relatives onto its own key names: DataParallel's `module.` prefix,
    and SwissArmyTransformer's `transformer.word_embeddings`."""
    state_dict = dict(state_dict)
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module."):]: t for key, t in state_dict.items()}
    sat_key = "transformer.word_embeddings.weight"
    if sat_key in state_dict and "word_embeddings.weight" not in state_dict:
        state_dict["word_embeddings.weight"] = state_dict.pop(sat_key)
    return state_dict


def _deepspeed_iteration_dir(folder: Path) -> Path:
    """The iteration folder of a DeepSpeed save folder, or `folder` itself if it is one."""
    if (folder / MODEL_STATES_FILE).is_file() or _is_zero3_dir(folder):
        return folder
    for name in LATEST_FILES:
        latest = folder / name
        if latest.is_file():
            tag = latest.read_text(encoding="utf-8").strip()
            if not tag or not (folder / tag).is_dir():
                raise UserError(f"{latest} names iteration {tag!r}, but {folder / tag} is not a folder")
            return folder / tag
    raise UserError(f"no model checkpoint in {folder}: expected {WEIGHTS_FILE} + {CONFIG_FILE}, "
                    f"{' or '.join(LATEST_FILES)}, or {MODEL_STATES_FILE}")


def _locate_and_read(path: Path) -> tuple[dict[str, torch.Tensor], list[Path], str]:
    """State dict of any known layout, the places to look for `model_config.json`, and a name for
    the checkpoint in error messages."""
    if path.is_file():
        if path.suffix == ".safetensors":
            return _read_safetensors(path), [path.parent], str(path)
        if path.name == MODEL_STATES_FILE:
            return _read_deepspeed_state_dict(path.parent), [path.parent, path.parent.parent], str(path.parent)
        raise UserError(f"unknown checkpoint file {path}: give a {WEIGHTS_FILE}, a {MODEL_STATES_FILE} "
                        f"or a folder holding one")
    if (path / WEIGHTS_FILE).is_file():
        return _read_safetensors(path / WEIGHTS_FILE), [path], str(path)
    iteration_dir = _deepspeed_iteration_dir(path)
    config_dirs = [iteration_dir] if iteration_dir == path else [iteration_dir, path]
    return _read_deepspeed_state_dict(iteration_dir), config_dirs + [iteration_dir.parent], str(iteration_dir)


def _complete_config(fields_read: dict[str, Any], state_dict: Mapping[str, torch.Tensor], source: str,
                     num_attention_heads: int | None) -> ModelConfig:
    """The config of `model_config.json`; sizes it lacks (CogView's release has no such file,
    SwissArmyTransformer's names some fields differently) are inferred from the tensors."""
    required = {f.name for f in fields(ModelConfig) if f.default is MISSING}
    if not required <= set(fields_read):
        heads = fields_read.get("num_attention_heads", num_attention_heads)
        fields_read = {**infer_config(state_dict, source, heads).to_dict(), **fields_read}
    try:
        return ModelConfig.from_dict(fields_read)
    except UserError as err:
        raise UserError(f"model config of {source}: {err}") from None


# ---------------------------------------------------------------- public API

def load_model_for_inference(path: str | os.PathLike, device: str | torch.device = "cpu",
                             dtype: torch.dtype = torch.float32, num_attention_heads: int | None = None
                             ) -> tuple[CogViewGPT, dict[str, Any]]:
    """Load any checkpoint layout (see the module docstring) into an eval-mode model.

    Returns the model on `device` in `dtype` and the metadata of `model_config.json` (everything but
    the config fields; empty without such a file). `num_attention_heads` is used only when that file
    does not give it (CogView's release: 64-wide heads otherwise).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"model checkpoint not found: {path}")
    state_dict, config_dirs, source = _locate_and_read(path)
    state_dict = _normalise_keys(state_dict)
    config_file = next((d / CONFIG_FILE for d in dict.fromkeys(config_dirs) if (d / CONFIG_FILE).is_file()), None)
    fields_read, metadata = read_model_config(config_file) if config_file is not None else ({}, {})
    config = _complete_config(fields_read, state_dict, source, num_attention_heads)
    with torch.device("meta"):
        model = CogViewGPT(config)
    load_state_dict_strict(model, state_dict, source, assign=True)
    return model.to(device=device, dtype=dtype).eval(), metadata


def save_exported(model: CogViewGPT, folder: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
    """Write `model.safetensors` and `model_config.json` (config + `extra`) into `folder`, each
    atomically. The output projection is the word embedding, so it is stored once."""
    folder = Path(folder)
    atomic_save_safetensors(folder / WEIGHTS_FILE, model.state_dict())
    write_model_config(folder / CONFIG_FILE, model.config, extra)
