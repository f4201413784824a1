"""Build a model already partitioned across the data-parallel ranks, for ZeRO stage 3.

ZeRO-3 keeps 1/N of every weight on each of N ranks, but a model built normally first exists whole on
every rank, which is what stops a model larger than one GPU (or one host's memory, times the ranks of a
node) from being built at all. Under `deepspeed.zero.Init` each submodule's parameters are partitioned as
soon as its constructor returns, so no rank ever holds the whole model.

The model's own initialisation (`CogViewGPT.reset_parameters`, run at the end of its constructor) then
finds only the empty placeholders of partitioned parameters and changes nothing, leaving torch's default
init in place. `build_partitioned` therefore initialises again one module at a time, with that module's
parameters gathered, in the model's parameter order: the random draws are those of a plain build, so a
ZeRO-3 run starts from the very weights of a ZeRO-0/1/2 run with the same seed.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn


def build_partitioned(build: Callable[[], nn.Module], ds_config: Mapping[str, Any]) -> nn.Module:
    """`build()` (a model with `init_parameter(name, param)`), partitioned as it is built when the
    DeepSpeed config asks for ZeRO stage 3, and built plainly otherwise."""
    if ds_config.get("zero_optimization", {}).get("stage", 0) != 3:
        return build()
    import deepspeed

    with deepspeed.zero.Init(config_dict_or_path=dict(ds_config)):
        model = build()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            params = list(module.named_parameters(prefix=module_name, recurse=False))
            if not params:
                continue
            with deepspeed.zero.GatheredParameters([param for _, param in params], modifier_rank=0):
                for name, param in params:
                    model.init_parameter(name, param)
    return model
