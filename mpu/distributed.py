"""One process group for every way of launching training.

`python pretrain_gpt2.py`, `torchrun --nproc_per_node N` and the `deepspeed` launcher differ only in the
environment they leave behind. `init_distributed` fills in what a bare `python` run lacks (a one-rank
world on a free loopback port), picks NCCL on GPUs and gloo on CPUs, and points DeepSpeed at its CPU
accelerator when there is no GPU, so the same command trains on a laptop and on a cluster.
"""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def prepare_accelerator_env() -> None:
    """Tell DeepSpeed to use its CPU accelerator when no GPU is visible.

    Must run before `deepspeed` is first imported: DeepSpeed picks its accelerator once, and its
    automatic detection warns and may probe for devices that are not there.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _fill_single_process_env(local_rank: int | None) -> None:
    """A plain `python` run is a world of one; launchers set these variables themselves."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ["RANK"] = "0"
    os.environ["WORLD_SIZE"] = "1"
    os.environ["LOCAL_RANK"] = str(local_rank or 0)


def init_distributed(local_rank: int | None = None) -> None:
    """Create the default process group (idempotent).

    `local_rank` is the `--local_rank` the `deepspeed` launcher passes; it also sets `LOCAL_RANK`,
    which takes precedence, as torchrun only sets the variable.
    """
    if dist.is_initialized():
        return
    prepare_accelerator_env()
    _fill_single_process_env(local_rank)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", local_rank or 0)))
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def device() -> torch.device:
    """This rank's device: its local GPU, or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
