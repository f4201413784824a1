"""DeepSpeed checkpoints in CogView's layout, written so that a kill at any moment loses nothing.

Layout of a save folder:

    latest_checkpointed_iteration.txt   the newest complete iteration (CogView's tracker)
    latest                              the same, for DeepSpeed's own tools (zero_to_fp32.py ...)
    {iteration}/mp_rank_00_model_states.pt, ZeRO optimizer shards, model_config.json

A checkpoint is written by every rank into `.tmp-{iteration}`; after a barrier rank 0 renames the
folder to `{iteration}` and only then rewrites the two tracker files (each atomically). A kill before
the rename leaves a `.tmp-*` folder that the next run deletes; a kill between the rename and the
tracker update leaves an iteration folder the trackers do not name, which the next save of that
iteration replaces. Either way the trackers keep naming the previous complete checkpoint.

`client_state` carries what DeepSpeed does not know about: the iteration, how many samples the data
stream has consumed, and every rank's RNG states (training/rng.py; dropout draws from torch's generator),
so a resumed run continues bit for bit (see docs/checkpoints.md). The tracker files are read and written
by checkpoints/trackers.py, which every reader of a save folder shares.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist

import mpu
from checkpoints.trackers import write_latest_iteration
from model.config_file import CONFIG_FILE
from model.strict_load import load_state_dict_strict
from training.rng import rng_state, set_rng_state
from utils.errors import UserError
from utils.logging import get_logger

logger = get_logger(__name__)

TEMP_PREFIX = ".tmp-"


# ---------------------------------------------------------------- folders

def remove_stale_temporaries(save_dir: str | os.PathLike) -> list[str]:
    """Delete the `.tmp-*` folders of writes that a kill interrupted (rank 0, before training)."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    stale = sorted(path for path in save_dir.iterdir() if path.is_dir() and path.name.startswith(TEMP_PREFIX))
    for path in stale:
        logger.warning("removing %s, left by a checkpoint write that did not finish", path)
        shutil.rmtree(path)
    return [path.name for path in stale]


# ---------------------------------------------------------------- RNG states

def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, indexed by rank (a collective: all ranks must call it)."""
    states: list[Any] = [None] * mpu.get_world_size()
    if dist.is_initialized():
        dist.all_gather_object(states, rng_state())
    else:
        states[0] = rng_state()
    return states


# ---------------------------------------------------------------- save and load

def _move_into_place(temporary: Path, final: Path) -> None:
    """Rename a finished write to its iteration folder (replacing one that an earlier, killed write
    renamed but never reached the trackers)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)


def save_checkpoint(engine, save_dir: str | os.PathLike, iteration: int, client_state: dict[str, Any],
                    write_model_config: Callable[[Path], None]) -> Path:
    """Write iteration `iteration` atomically (see the module docstring); all ranks must call this.

    `write_model_config(path)` writes `model_config.json` into the new folder (called on rank 0).
    Returns the final folder.
    """
    save_dir = Path(save_dir)
    tag = f"{TEMP_PREFIX}{iteration}"
    client_state = {**client_state, "rng_states": gather_rng_states()}
    # DeepSpeed writes its own `latest` only when told to; ours must not name a temporary folder.
    engine.save_checkpoint(str(save_dir), tag=tag, client_state=client_state, save_latest=False)
    final = save_dir / str(iteration)
    if mpu.is_main_process():
        write_model_config(save_dir / tag / CONFIG_FILE)
        _move_into_place(save_dir / tag, final)
        write_latest_iteration(save_dir, iteration)
    mpu.barrier()
    return final


def load_checkpoint(engine, load_dir: str | os.PathLike, iteration: int) -> dict[str, Any]:
    """Restore weights, optimizer, lr schedule and this rank's RNG state; return the client state.

    ZeRO stages 0-2 load the weights through `load_state_dict_strict`, so a checkpoint that does not
    fit the model fails with one line naming the first mismatched tensor. (Stage 3 stores only
    placeholders there; its shapes are checked through model_config.json by the caller.)
    """
    from deepspeed.runtime.zero.utils import ZeRORuntimeException

    source = str(Path(load_dir) / str(iteration))
    strict_loader = None
    if engine.zero_optimization_stage() < 3:
        def strict_loader(src, dst):
            load_state_dict_strict(dst, src, source)
    try:
        path, client_state = engine.load_checkpoint(str(load_dir), tag=str(iteration), load_module_strict=True,
                                                    load_optimizer_states=True, load_lr_scheduler_states=True,
                                                    custom_load_fn=strict_loader)
    except ZeRORuntimeException as err:
        raise UserError(f"cannot resume from {source}: {str(err).splitlines()[0]}") from None
    if path is None:
        raise UserError(f"no DeepSpeed checkpoint files in {source}")
    states = client_state["rng_states"]
    if len(states) == mpu.get_world_size():
        set_rng_state(states[mpu.get_rank()])
    else:
        logger.warning("the checkpoint was written by %d processes and this run has %d: each keeps the RNG state "
                       "it was seeded with, so dropout draws differ from an uninterrupted run",
                       len(states), mpu.get_world_size())
    return client_state
