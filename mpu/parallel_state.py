"""The 2-D process mesh of a run: data parallel x tensor parallel.

Ranks are laid out as a `DeviceMesh` of shape (data, tensor) with the tensor dimension innermost, so the
`tensor_parallel_size` ranks that share one model replica are consecutive ranks, i.e. GPUs of one node,
where the per-layer all-reduces of tensor parallelism run over NVLink rather than the network. ZeRO
partitions across the data dimension only.

DeepSpeed takes the groups through its Megatron-style `mpu` argument (`get_{model,data}_parallel_*`): it
then all-reduces gradients and partitions optimizer states over the data-parallel group and computes the
global gradient norm over the whole world, counting tensor-parallel shards once each.
"""
from __future__ import annotations

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from mpu.distributed import get_rank, get_world_size
from utils.errors import UserError

MESH_DIMS = ("data", "tensor")


class ParallelGroups:
    """The data- and tensor-parallel groups of this rank, in the interface DeepSpeed's `mpu=` expects."""

    def __init__(self, mesh: DeviceMesh):
        self.mesh = mesh

    @property
    def tensor_parallel_size(self) -> int:
        return self.mesh["tensor"].size()

    # DeepSpeed's names: "model parallel" is tensor parallel here (there is no pipeline parallelism).
    def get_model_parallel_group(self) -> dist.ProcessGroup:
        return self.mesh["tensor"].get_group()

    def get_model_parallel_rank(self) -> int:
        return self.mesh["tensor"].get_local_rank()

    def get_model_parallel_world_size(self) -> int:
        return self.mesh["tensor"].size()

    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size

    def get_data_parallel_group(self) -> dist.ProcessGroup:
        return self.mesh["data"].get_group()

    def get_data_parallel_rank(self) -> int:
        return self.mesh["data"].get_local_rank()

    def get_data_parallel_world_size(self) -> int:
        return self.mesh["data"].size()


_groups: ParallelGroups | None = None


def init_parallel_groups(tensor_parallel_size: int) -> ParallelGroups:
    """Build the (data, tensor) mesh over the initialised world; every rank must call this once."""
    global _groups
    world = get_world_size()
    if tensor_parallel_size < 1 or world % tensor_parallel_size:
        raise UserError(f"--tensor-parallel-size {tensor_parallel_size} must divide the number of processes "
                        f"({world})")
    if _groups is not None:
        if _groups.tensor_parallel_size != tensor_parallel_size:
            raise UserError(f"the process mesh is already built with tensor-parallel size "
                            f"{_groups.tensor_parallel_size}, not {tensor_parallel_size}")
        return _groups
    mesh = init_device_mesh("cuda" if dist.get_backend() == "nccl" else "cpu",
                            (world // tensor_parallel_size, tensor_parallel_size), mesh_dim_names=MESH_DIMS)
    _groups = ParallelGroups(mesh)
    return _groups


def parallel_groups() -> ParallelGroups | None:
    """The mesh built by `init_parallel_groups`, or None (every rank is its own replica)."""
    return _groups


def get_tensor_parallel_size() -> int:
    return 1 if _groups is None else _groups.tensor_parallel_size


def get_data_parallel_rank() -> int:
    """This rank's replica: which slice of each global batch it reads, and its dropout stream."""
    return get_rank() if _groups is None else _groups.get_data_parallel_rank()


def get_data_parallel_world_size() -> int:
    return get_world_size() if _groups is None else _groups.get_data_parallel_world_size()


def get_data_parallel_group() -> dist.ProcessGroup | None:
    """The group over which per-replica sums (losses, tokens) are added; None: the whole world."""
    return None if _groups is None else _groups.get_data_parallel_group()
