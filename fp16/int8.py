"""int8 inference on CPU: dynamic quantisation of the transformer's linear layers, applied once at load.

Each `nn.Linear` (the fused Q|K|V projection, the attention output and both MLP projections) becomes
torch's `DynamicQuantizedLinear`: its weight is stored as int8 with one scale per output row, and every
call quantises its input to int8 on the fly, multiplies in int8 (fbgemm / oneDNN) and returns fp32.

The output projection is quantised too, as a separate int8 copy (`CogViewGPT.output_head`): it is the
word embedding itself (tied weights), which stays fp32 for the input lookup. At hidden 256 the head is
a third of a step's weights, so leaving it fp32 leaves much of the speed on the table, and on the
quick-start model quantising it moved bits per token by less than 0.001 (docs/tasks/int8.md). The
rest stays fp32: the embeddings, LayerNorm, softmax and the KV cache.

Why `torch.ao.quantization.quantize_dynamic` although torch 2.13 marks it deprecated in favour of
torchao: torchao is not a dependency here, and its int8 dynamic path (0.18) targets GPUs and measured
3-14x slower than fp32 on CPU, while torch's fbgemm kernels are what makes CPU int8 fast. The
deprecation notices are silenced at this one call, where we chose the API knowingly, instead of being
shown to every user; tests/test_int8.py pins that the path still converts and matches fp32.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from utils.errors import UserError


def refuse_unless_cpu(device: torch.device | str) -> None:
    """int8 runs on CPU only: torch has no dynamic-quantisation kernels for CUDA."""
    device_type = torch.device(device).type
    if device_type != "cpu":
        raise UserError(f"--precision int8 runs on CPU only (torch's dynamic int8 quantisation has no {device_type} "
                        f"kernels); on a GPU use --precision bf16 or fp16, or give --device cpu")


def quantize_linear_layers(model: nn.Module) -> nn.Module:
    """A copy of a `CogViewGPT` with every `nn.Linear` and the tied output projection dynamically quantised
    to int8 (the caller's model is left as it was, since a `Pipeline` may be handed a model its caller goes
    on using in fp32)."""
    refuse_unless_cpu(next(model.parameters()).device)
    quantized = copy.deepcopy(model).eval()
    embedding = quantized.word_embeddings.weight
    quantized.output_head = nn.Linear(embedding.shape[1], embedding.shape[0], bias=False)
    quantized.output_head.weight = embedding  # shared until quantisation makes the head its own int8 copy
    with warnings.catch_warnings():
        # torch 2.13's notices that eager quantisation moves to torchao (see the module docstring).
        warnings.filterwarnings("ignore", r".*torch\.ao\.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", r".*quantized tensor creation functions.*deprecated", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(quantized, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
