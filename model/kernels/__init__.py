"""Fused Triton kernels for the transformer (docs/kernels.md), one file per kernel family:

  flash_attention.py   causal attention, forward and backward, both PB-relax forms, key padding
  decode_attention.py  one decoding step against the KV cache
  layernorm.py         Sandwich-LN's `residual + LayerNorm(branch)` with per-token PB-relax
  backend.py           which attention backend runs (auto, triton, sdpa, torch)

Only backend.py is imported here: the kernel files import triton, an optional extra.
"""
from model.kernels.backend import ATTENTION_BACKENDS, attention_backend, set_attention_backend

__all__ = ["ATTENTION_BACKENDS", "attention_backend", "set_attention_backend"]
