"""Distributed initialisation and rank helpers: a thin layer over torch.distributed and DeepSpeed."""
from mpu.distributed import (barrier, device, get_rank, get_world_size, init_distributed, is_main_process,
                             prepare_accelerator_env)

__all__ = ["barrier", "device", "get_rank", "get_world_size", "init_distributed", "is_main_process",
           "prepare_accelerator_env"]
