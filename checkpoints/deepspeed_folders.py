"""The full model weights of a DeepSpeed save folder, whatever its ZeRO stage.

    {save_dir}/{tracker files}                      see checkpoints/trackers.py
    {save_dir}/{tag}/mp_rank_00_model_states.pt     ZeRO 0-2: the whole module under `module`
    {save_dir}/{tag}/zero_pp_rank_*_mp_rank_00_model_states.pt   ZeRO 3: placeholders; the weights are
                                                    partitioned across the ranks' optimizer states

This is the only module that imports DeepSpeed for reading (lazily, for stage 3), so models that only
load weights need neither DeepSpeed nor a process group.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch

from checkpoints.readers import first_line, read_torch_file
from checkpoints.trackers import read_latest_tag
from utils.errors import UserError

MODEL_STATES_FILE = "mp_rank_00_model_states.pt"
# A tensor-parallel run writes one model-states file per tensor-parallel rank (mpu/tp_checkpoint.py).
TENSOR_PARALLEL_RANK_1_FILE = "mp_rank_01_model_states.pt"
# ZeRO stage 3 writes one model-states file per rank (placeholders only) instead of MODEL_STATES_FILE.
ZERO3_MODEL_STATES_GLOB = "zero_pp_rank_*_mp_rank_00_model_states.pt"


def is_zero3_folder(folder: Path) -> bool:
    return not (folder / MODEL_STATES_FILE).is_file() and any(folder.glob(ZERO3_MODEL_STATES_GLOB))


def is_iteration_folder(folder: Path) -> bool:
    """Whether `folder` is one iteration of a DeepSpeed save folder (any ZeRO stage)."""
    return (folder / MODEL_STATES_FILE).is_file() or is_zero3_folder(folder)


def iteration_folder(folder: Path) -> Path | None:
    """`folder` itself if it is an iteration folder, else the one its trackers name; None for neither."""
    if is_iteration_folder(folder):
        return folder
    tag = read_latest_tag(folder)
    return None if tag is None else folder / tag


def gather_zero3_weights(iteration_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The fp32 weights of a ZeRO stage 3 iteration folder, gathered from every rank's partitions.

    DeepSpeed's own `zero_to_fp32` reassembles them (any number of ranks, no GPU, no process group), so
    such a folder loads for inference directly, without a conversion step. Its progress messages go to
    stdout; they are dropped here.
    """
    from mpu import prepare_accelerator_env

    iteration_dir = Path(iteration_dir)
    prepare_accelerator_env()  # before DeepSpeed's first import: no GPU probing on CPU machines
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return get_fp32_state_dict_from_zero_checkpoint(str(iteration_dir.parent), tag=iteration_dir.name)
    except (ValueError, KeyError, OSError, RuntimeError, TypeError) as err:
        raise UserError(f"cannot gather the ZeRO stage 3 weights of {iteration_dir}: {first_line(err)}") from None


def read_module_weights(iteration_dir: Path) -> dict[str, torch.Tensor]:
    """The full model weights of one iteration folder: `module` of the model states (ZeRO 0-2), merged
    across the `mp_rank_*` files of a tensor-parallel run, or the stage 3 partitions gathered."""
    if is_zero3_folder(iteration_dir):
        return gather_zero3_weights(iteration_dir)
    path = iteration_dir / MODEL_STATES_FILE
    if not path.is_file():
        raise UserError(f"checkpoint folder {iteration_dir} has no {MODEL_STATES_FILE}")
    if (iteration_dir / TENSOR_PARALLEL_RANK_1_FILE).is_file():  # saved with --tensor-parallel-size > 1
        from mpu.tp_checkpoint import merge_tensor_parallel, tensor_parallel_files

        return merge_tensor_parallel([_module_weights(file) for file in tensor_parallel_files(iteration_dir)])
    return _module_weights(path)


def _module_weights(path: Path) -> dict[str, torch.Tensor]:
    """`module` of one model-states file, refusing ZeRO-3's empty placeholders."""
    states = read_torch_file(path)
    module = states.get("module") if isinstance(states, dict) else None
    if not isinstance(module, dict) or not module:
        raise UserError(f"{path} holds no model weights under 'module'")
    if any(isinstance(t, torch.Tensor) and t.numel() == 0 for t in module.values()):
        raise UserError(f"{path} holds empty placeholders instead of weights (a ZeRO stage 3 checkpoint); "
                        f"its weights are partitioned across the optimizer state files")
    return module
