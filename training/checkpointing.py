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
stream has consumed, and every rank's RNG states (dropout draws from torch's generator), so a resumed
run continues bit for bit (see docs/checkpoints.md).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

import mpu
from model.checkpoint import CONFIG_FILE, load_state_dict_strict
from utils.errors import UserError
from utils.files import atomic_write_text
from utils.logging import get_logger

logger = get_logger(__name__)

TRACKER_FILE = "latest_checkpointed_iteration.txt"
DEEPSPEED_LATEST_FILE = "latest"
TEMP_PREFIX = ".tmp-"
# Tests set this to "{step}:{iteration}" (step: before-rename or before-tracker) to SIGKILL the
# process at that step of writing that checkpoint: a deterministic stand-in for a kill from outside.
KILL_AT_ENV = "COGVIEW_TEST_KILL_AT"


def _kill_point(step: str, iteration: int) -> None:
    if os.environ.get(KILL_AT_ENV) == f"{step}:{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- trackers and folders

def read_tracker(save_dir: str | os.PathLike) -> int | None:
    """The newest complete iteration in `save_dir`, or None when it holds no checkpoint."""
    path = Path(save_dir) / TRACKER_FILE
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8").strip()
    if not text.isdigit():
        raise UserError(f"{path} should hold an iteration number, found {text[:40]!r}")
    iteration = int(text)
    if not (Path(save_dir) / str(iteration)).is_dir():
        raise UserError(f"{path} names iteration {iteration} but {Path(save_dir) / str(iteration)} is missing")
    return iteration


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

def rng_state() -> dict[str, Any]:
    """This process's random generators: torch (CPU and current GPU), numpy and Python."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, indexed by rank (a collective: all ranks must call it)."""
    states: list[Any] = [None] * mpu.get_world_size()
    if dist.is_initialized():
        dist.all_gather_object(states, rng_state())
    else:
        states[0] = rng_state()
    return states


# ---------------------------------------------------------------- save and load

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
        _kill_point("before-rename", iteration)
        if final.exists():  # an earlier write got renamed but never reached the trackers
            shutil.rmtree(final)
        os.replace(save_dir / tag, final)
        _kill_point("before-tracker", iteration)
        atomic_write_text(save_dir / TRACKER_FILE, f"{iteration}\n")
        atomic_write_text(save_dir / DEEPSPEED_LATEST_FILE, str(iteration))
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
