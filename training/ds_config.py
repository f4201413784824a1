"""The DeepSpeed config of a run: built from the training flags, or a `--deepspeed_config` file that
the flags fill in.

A file wins where it speaks; a flag given on the command line that says otherwise is an error (one
line naming both), never silently dropped. What the run must follow (micro-batch, accumulation,
precision) comes back in a `DeepSpeedSetup`; the parsed flags are never rewritten, so `args` always
says what the command line said. Sections we must own are refused: the optimizer is a torch
AdamW with our parameter groups (nothing to compile, same code on CPUs) and the lr schedule is ours
(`training.lr_schedule`), both handed to `deepspeed.initialize`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from fp16 import precision_config, precision_of_config
from mpu.tensor_parallel import deepspeed_tensor_parallel_config
from utils.errors import UserError
from utils.files import read_json

# (path in the DeepSpeed config, flag destination): the settings both may give.
_SHARED_SETTINGS = (
    (("train_micro_batch_size_per_gpu",), "batch_size"),
    (("gradient_accumulation_steps",), "gradient_accumulation_steps"),
    (("gradient_clipping",), "clip_grad"),
    (("zero_optimization", "stage"), "zero_stage"),
)
_OWNED_SECTIONS = {"optimizer": "the optimizer is torch AdamW built from --lr and --weight-decay",
                   "scheduler": "the lr schedule is set by --lr, --warmup, --lr-decay-style and --min-lr-ratio",
                   "tensor_parallel": "tensor parallelism is set by --tensor-parallel-size"}


@dataclass(frozen=True)
class DeepSpeedSetup:
    """The config for `deepspeed.initialize` and the settings of it that the training loop follows."""

    config: dict[str, Any]
    micro_batch_size: int
    gradient_accumulation_steps: int
    precision: str  # "fp32", "fp16" or "bf16"


def flag_precision(args: argparse.Namespace) -> str:
    return "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"


def _flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _get(config: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(config, dict) or key not in config:
            return None
        config = config[key]
    return config


def _set(config: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        config = config.setdefault(key, {})
    config[path[-1]] = value


def build_deepspeed_config(args: argparse.Namespace, world_size: int) -> DeepSpeedSetup:
    """The config for `deepspeed.initialize`, and the batch sizes and precision the run follows: the
    file's values where it gives them (batch size, accumulation, clipping, ZeRO stage, precision), the
    flags' elsewhere. `world_size` counts data-parallel replicas (processes / --tensor-parallel-size)."""
    config: dict[str, Any] = {}
    source = args.deepspeed_config
    if source is not None:
        config = read_json(source)
        if not isinstance(config, dict):
            raise UserError(f"{source} must hold a JSON object")
        for section, reason in _OWNED_SECTIONS.items():
            if section in config:
                raise UserError(f"{source} has a '{section}' section; remove it: {reason}")
    for path, dest in _SHARED_SETTINGS:
        in_file = _get(config, path)
        if in_file is None:
            _set(config, path, getattr(args, dest))
        elif dest in args.given_flags and in_file != getattr(args, dest):
            raise UserError(f"{_flag_name(dest)} {getattr(args, dest)} contradicts {'.'.join(path)}={in_file} "
                            f"in {source}; drop one of them")
    precision = _merge_precision(config, args, source)
    micro_batch, accumulation = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
    global_batch = micro_batch * accumulation * world_size
    if config.get("train_batch_size", global_batch) != global_batch:
        raise UserError(f"train_batch_size={config['train_batch_size']} in {source} is not micro-batch "
                        f"{micro_batch} x accumulation {accumulation} x {world_size} processes = {global_batch}")
    config["train_batch_size"] = global_batch
    if args.tensor_parallel_size > 1:
        stage = config["zero_optimization"]["stage"]
        if stage not in (1, 2):
            raise UserError(f"--tensor-parallel-size needs --zero-stage 1 or 2, not {stage} (the stages tested "
                            f"with it; docs/training.md says why not 0 or 3)")
        config["tensor_parallel"] = deepspeed_tensor_parallel_config(args.tensor_parallel_size)
    return DeepSpeedSetup(config, micro_batch, accumulation, precision)


def _merge_precision(config: dict[str, Any], args: argparse.Namespace, source: str | None) -> str:
    """The run's precision: the file's, or the flags' written into the config when the file has none."""
    try:
        in_file = precision_of_config(config)
    except ValueError as err:
        raise UserError(f"{source}: {err}") from None
    wanted = flag_precision(args)
    if in_file == "fp32":
        config.update(precision_config(wanted))
        return wanted
    if wanted != "fp32" and wanted != in_file:
        raise UserError(f"--{wanted} contradicts the {in_file} section of {source}; drop one of them")
    return in_file
