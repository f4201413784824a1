"""Adapters: the tensors a fine-tuning run trained, saved apart from the base model they belong to.

    {adapter}/adapter.safetensors    LoRA: `{module}.lora_a` [r, in] and `{module}.lora_b` [out, r];
                                     full / frozen runs: the trained parameters, by their names
    {adapter}/adapter_config.json    kind, base fingerprint, identifier, class noun, LoRA rank and alpha

An adapter applies only to the base it was trained from: the config records the base weights'
fingerprint (`checkpoints.fingerprint.module_fingerprint`), and any other base is refused in one line.
Applying folds the adapter into the weights (W += (alpha / r) B A, or the trained tensors replace the
base's), so a model with adapters runs exactly as fast as one without, and `export_model.py
--merge-adapter` only has to save the result. Several adapters (several subjects) apply in order: LoRA
updates add up; two adapters that both replace the same tensor are refused, as is a LoRA update of a
tensor that another adapter replaces (the result would depend on the order).

`DIR:SCALE` (e.g. `runs/a/adapter:0.5`) scales a LoRA update: two updates trained towards the same pictures
overshoot when added at full strength (docs/tasks/subject_finetuning.md measured it), at half each they do not.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from checkpoints.fingerprint import module_fingerprint
from checkpoints.readers import read_safetensors
from utils.errors import UserError
from utils.files import atomic_save_safetensors, atomic_write_json, read_json

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "cogview-adapter-v1"
KINDS = ("lora", "tensors")


@dataclass
class AdapterConfig:
    kind: str  # "lora" or "tensors"
    base_fingerprint: str
    identifier: str
    class_noun: str
    mode: str  # the fine-tuning mode that made it: full, frozen or lora
    lora_rank: int | None = None
    lora_alpha: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. training seconds, caption template

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path) -> AdapterConfig:
        if data.get("format") != FORMAT:
            raise UserError(f"{source} is not an adapter config (format {data.get('format')!r}, expected {FORMAT})")
        try:
            config = cls(**{key: value for key, value in data.items() if key != "format"})
        except TypeError as err:
            raise UserError(f"{source}: {err}") from None
        if config.kind not in KINDS:
            raise UserError(f"{source}: unknown adapter kind {config.kind!r}")
        return config


def base_fingerprint(model: nn.Module) -> str:
    """The fingerprint an adapter records of its base: the base weights, in any layout."""
    return module_fingerprint(model)


def save_adapter(folder: str | os.PathLike, tensors: Mapping[str, torch.Tensor], config: AdapterConfig) -> Path:
    """Write the two files atomically, the weights first (a config names a complete adapter)."""
    folder = Path(folder)
    atomic_save_safetensors(folder / ADAPTER_WEIGHTS, {name: t.float() for name, t in tensors.items()})
    atomic_write_json(folder / ADAPTER_CONFIG, config.to_dict())
    return folder


def read_adapter(folder: str | os.PathLike) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    folder = Path(folder)
    if folder.is_file() and folder.name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        folder = folder.parent
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            raise UserError(f"no adapter in {folder}: {name} is missing (expected {ADAPTER_WEIGHTS} + "
                            f"{ADAPTER_CONFIG}, written by finetune_subject.py)")
    config = AdapterConfig.from_dict(read_json(folder / ADAPTER_CONFIG), folder)
    return config, read_safetensors(folder / ADAPTER_WEIGHTS)


def adapter_spec(spec: str | os.PathLike) -> tuple[Path, float]:
    """`DIR` or `DIR:SCALE` -> (folder, scale); the scale multiplies a LoRA update (1 when not given)."""
    folder, _, scale = str(spec).rpartition(":")
    try:
        value = float(scale)
    except ValueError:
        return Path(spec), 1.0
    if not math.isfinite(value):
        raise UserError(f"adapter {spec}: the scale after ':' must be a finite number, got {scale}")
    return Path(folder), value


def _updates(config: AdapterConfig, tensors: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor],
             source: Path, scale: float) -> dict[str, torch.Tensor]:
    """Parameter name -> the tensor to add (LoRA, times `scale`) or to put in place (tensors), checked against
    the model."""
    if config.kind == "tensors":
        if scale != 1.0:
            raise UserError(f"adapter {source} replaces tensors (mode {config.mode}); a scale applies to LoRA "
                            f"adapters only")
        updates = dict(tensors)
    else:
        modules = sorted({name.rsplit(".", 1)[0] for name in tensors})
        updates = {}
        for module in modules:
            a, b = tensors.get(f"{module}.lora_a"), tensors.get(f"{module}.lora_b")
            if a is None or b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
                raise UserError(f"adapter {source} has no matching lora_a [r, in] / lora_b [out, r] for {module}")
            updates[f"{module}.weight"] = (b @ a) * (scale * config.lora_alpha / config.lora_rank)
    for name, tensor in updates.items():
        if name not in params:
            raise UserError(f"adapter {source} changes {name}, which the model does not have")
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise UserError(f"adapter {source} has {name} of shape {list(tensor.shape)}, the model "
                            f"{list(params[name].shape)}")
    return updates


@torch.no_grad()
def apply_adapters(model: nn.Module, folders: Sequence[str | os.PathLike]) -> list[AdapterConfig]:
    """Fold each adapter (`DIR` or `DIR:SCALE`, see `adapter_spec`) into `model` (in place), after checking each
    was made for this base model."""
    if not folders:
        return []
    fingerprint = base_fingerprint(model)
    params = dict(model.named_parameters())
    replaced_by: dict[str, Path] = {}
    added_by: dict[str, Path] = {}
    loaded = []
    for folder, scale in map(adapter_spec, folders):
        config, tensors = read_adapter(folder)
        if config.base_fingerprint != fingerprint:
            raise UserError(f"adapter {folder} was trained from another base model (fingerprint "
                            f"{config.base_fingerprint}, this one {fingerprint}); load the base it was made for")
        updates = _updates(config, tensors, params, folder, scale)
        for name in updates:
            other = replaced_by.get(name) or (added_by.get(name) if config.kind == "tensors" else None)
            if other is not None:
                raise UserError(f"adapters {other} and {folder} both change {name}; their order would decide the "
                                f"result, so they cannot be loaded together")
            (replaced_by if config.kind == "tensors" else added_by)[name] = folder
        loaded.append((config, updates))
    for config, updates in loaded:
        for name, tensor in updates.items():
            param = params[name]
            tensor = tensor.to(device=param.device, dtype=param.dtype)
            param.add_(tensor) if config.kind == "lora" else param.copy_(tensor)
    return [config for config, _ in loaded]
