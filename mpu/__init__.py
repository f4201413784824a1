"""Process groups and model parallelism: thin layers over torch.distributed and DeepSpeed.

`distributed`: the default process group for every launcher. `parallel_state`: the 2-D (data x tensor)
mesh. `tensor_parallel`: the plan that splits CogViewGPT's layers across a replica's ranks (DeepSpeed
AutoTP). `tp_checkpoint`: merge/split of state dicts across tensor-parallel sizes. `zero3`: building a
model partitioned across ranks for ZeRO stage 3.
"""
from mpu.distributed import (barrier, device, get_rank, get_world_size, init_distributed, is_main_process,
                             prepare_accelerator_env)
from mpu.parallel_state import (ParallelGroups, get_data_parallel_group, get_data_parallel_rank,
                                get_data_parallel_world_size, get_tensor_parallel_size, init_parallel_groups,
                                parallel_groups)
from mpu.tensor_parallel import check_tensor_parallel_size, cross_entropy, parallelize_vocabulary
from mpu.zero3 import build_partitioned

__all__ = ["ParallelGroups", "barrier", "build_partitioned", "check_tensor_parallel_size", "cross_entropy",
           "device",
           "get_data_parallel_group", "get_data_parallel_rank", "get_data_parallel_world_size", "get_rank",
           "get_tensor_parallel_size", "get_world_size", "init_distributed", "init_parallel_groups",
           "is_main_process", "parallel_groups", "parallelize_vocabulary", "prepare_accelerator_env"]
