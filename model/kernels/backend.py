"""Which attention implementation `SelfAttention.attend` runs, and the glue to the Triton kernels.

Backends (`--attention-backend`, one process-wide choice set once by the scripts):
  auto    SDPA for now. The kernels pass their tests under Triton's interpreter and compile for sm_90, but
          have not yet run on a GPU (bf16 cannot be checked by the interpreter); `auto` turns to them on
          CUDA once `benchmarks/bench_kernels.py` has measured them there (docs/kernels.md).
  triton  the fused kernels of this package; an error where they cannot run.
  sdpa    `F.scaled_dot_product_attention` (the paper's alpha form of PB-relax falls back to torch).
  torch   the plain matmul-softmax-matmul of `SelfAttention._attend_math`, the reference for the others.

Triton is an optional extra (requirements-kernels.txt) imported only when a kernel first runs, so
importing the model never needs it.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

from utils.errors import UserError

ATTENTION_BACKENDS = ("auto", "triton", "sdpa", "torch")

_backend = "auto"


@functools.cache
def triton_installed() -> bool:
    """Looked up once."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """TRITON_INTERPRET=1 runs the kernels on CPU tensors with Triton's interpreter (how the tests run)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def set_attention_backend(name: str) -> None:
    """Choose the backend for every attention in this process (the scripts call it once, from the flag)."""
    global _backend
    if name not in ATTENTION_BACKENDS:
        raise UserError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}")
    if name == "triton" and not triton_installed():
        raise UserError("--attention-backend triton needs the triton package: "
                        "pip install -r requirements-kernels.txt")
    _backend = name


def attention_backend() -> str:
    return _backend


def resolve_attention_backend(q: torch.Tensor) -> str:
    """The backend that runs this call: "triton", "sdpa" or "torch" (never "auto")."""
    if _backend == "auto":
        return "sdpa"
    if _backend == "triton" and not q.is_cuda and not interpreting():
        raise UserError("--attention-backend triton needs a CUDA device (or TRITON_INTERPRET=1, Triton's "
                        "slow CPU interpreter, as the tests use)")
    return _backend


def triton_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                  alpha: float, dropout_p: float, sparse: bool = False) -> torch.Tensor:
    """Causal attention `[B, H, T, d]` by the Triton kernels; `attn_mask` as `build_attention_mask`
    returns it, `alpha` 1 for the released PB-relax (and for none: the two are equal) or the paper's alpha,
    `dropout_p` the attention dropout (training only).

    The kernels take the key padding row rather than the `[T, S]` mask: the last query sees every
    earlier key, so the mask's last row is the padding row (its own, last key is always attended, and
    is in every other query's future), and the queries are the last T of the S positions. A `sparse`
    mask (the local image window) is not causal plus padding: the flash kernel then reads all of it and
    skips its empty tiles; one query's row is still the whole mask, so decoding reads it as a padding row.
    """
    key_padding = None if attn_mask is None else attn_mask[:, 0, -1, :].expand(q.shape[0], -1)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if q.shape[2] == 1 and not needs_grad and dropout_p == 0:
        from model.kernels.decode_attention import decode_attention
        return decode_attention(q, k, v, key_padding, alpha)
    from model.kernels.flash_attention import flash_attention
    if sparse and attn_mask is not None:
        return flash_attention(q, k, v, None, alpha, dropout_p, mask=attn_mask[:, 0])
    return flash_attention(q, k, v, key_padding, alpha, dropout_p)
