"""Which attention implementation `SelfAttention.attend` runs, and the glue to the Triton kernels.

Backends (`--attention-backend`, one process-wide choice set once by the scripts):
  auto    on CUDA, the kernels where they do what SDPA cannot: the paper's alpha form of PB-relax (which SDPA
          cannot express, so it would fall back to torch's T x S scores) and the local image window (whose
          empty tiles the kernel skips); SDPA for the rest. The kernels are taken only once they have
          matched the torch reference on that device and dtype (`triton_verified`): they pass their tests
          under Triton's interpreter, which cannot run bf16, so the first GPU run checks them itself and
          falls back to SDPA, with one warning, if they fail. On a CPU: SDPA.
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
from utils.logging import get_logger

logger = get_logger(__name__)

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


def auto_backend(on_cuda: bool, alpha_form: bool, sparse: bool, kernels_verified: bool) -> str:
    """`auto`'s choice: the kernels on CUDA where they beat the fallback's work (module docstring)."""
    if on_cuda and (alpha_form or sparse) and kernels_verified:
        return "triton"
    return "sdpa"


@functools.cache
def triton_verified(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the kernels match the torch reference on this device, dtype and head size: a causal,
    left-padded batch in both PB-relax forms, forward only, checked once per process. A kernel that
    fails to compile or disagrees turns `auto` to SDPA with one warning instead of a wrong answer."""
    if not triton_installed():
        return False
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 80, head_dim, generator=generator).to(device, dtype) for _ in range(3))
    padding = torch.ones(2, 80, dtype=torch.bool, device=device)
    padding[1, :7] = False
    mask = torch.ones(80, 80, dtype=torch.bool, device=device).tril() & padding[:, None, None, :]
    mask |= torch.eye(80, dtype=torch.bool, device=device)
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    try:
        for alpha in (1.0, 32.0):
            got = triton_attend(q, k, v, mask, alpha, 0.0).float()
            scores = (q.float() @ k.float().transpose(-2, -1)) / head_dim ** 0.5
            expected = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v.float()
            error = (got - expected).abs().max().item()
            if not error <= tolerance:
                logger.warning("attention backend auto: the Triton kernels differ from the torch reference by "
                               "%.3g on %s %s (alpha %s); using SDPA", error, device, dtype, alpha)
                return False
    except Exception as err:  # a compiler or driver failure must not stop the run: SDPA does the same work
        logger.warning("attention backend auto: the Triton kernels cannot run on %s %s (%s: %s); using SDPA",
                       device, dtype, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return False
    return True


def resolve_attention_backend(q: torch.Tensor, alpha_form: bool = False, sparse: bool = False) -> str:
    """The backend that runs this call: "triton", "sdpa" or "torch" (never "auto"). `alpha_form`: the
    paper's PB-relax form is on; `sparse`: the mask is the local image window's."""
    if _backend == "auto":
        if not q.is_cuda or not (alpha_form or sparse):
            return "sdpa"
        return auto_backend(True, alpha_form, sparse, triton_verified(q.device, q.dtype, q.shape[-1]))
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
