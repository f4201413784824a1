"""One decoding step in Triton: a single new query per row against every cached key (`model/kv_cache.py`).

A query tile of the flash kernel would waste 15 of its 16 rows here, so a program takes one (row, head),
walks the cache in key tiles with the same online softmax and PB-relax scores as `flash_attention.py`,
and reads the cache through its strides (the cache's views are not contiguous over positions). Forward
only: decoding runs without gradients.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from model.kernels.flash_attention import RUNNING_MAX_START


@triton.jit
def _decode_kernel(Q, K, V, O, PAD,
                   stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
                   stride_ob, stride_oh, stride_pb, num_heads, S, q_scale, alpha,
                   HAS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(0)
    b = bh // num_heads
    h = bh % num_heads
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_d, mask=d_mask, other=0.0)
    q = (q.to(tl.float32) * q_scale).to(Q.dtype.element_ty).to(tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    m_i = tl.zeros([1], tl.float32) + RUNNING_MAX_START
    l_i = tl.zeros([1], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for start_n in range(0, S, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < S) & d_mask[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.sum(q[None, :] * k.to(tl.float32), 1) * alpha
        allowed = offs_n < S
        if HAS_PAD:
            # The query is the last position, S - 1: it sees every real key and always itself.
            real = tl.load(PAD + b * stride_pb + offs_n, mask=offs_n < S, other=0) != 0
            allowed = allowed & (real | (offs_n == S - 1))
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        p = tl.exp(s - m_new)
        correction = tl.exp(m_i - m_new)
        l_i = l_i * correction + tl.sum(p, 0)
        acc = acc * correction + tl.sum(p[:, None] * v.to(tl.float32), 0)
        m_i = m_new
    tl.store(O + b * stride_ob + h * stride_oh + offs_d, (acc / l_i).to(O.dtype.element_ty), mask=d_mask)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding: torch.Tensor | None,
                     alpha: float) -> torch.Tensor:
    """Attention of `q [B, H, 1, d]` (the newest position) over the cached `k, v [B, H, S, d]`;
    `key_padding [B, S]` (nonzero = real key) or None; `alpha` as in `flash_attention`. Returns
    `[B, H, 1, d]` in q's dtype."""
    batch, heads, _, head_dim = q.shape
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if key_padding is not None:
        key_padding = key_padding.to(torch.int8).contiguous()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _decode_kernel[(batch * heads,)](
        q, k, v, out, q if key_padding is None else key_padding,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), 0 if key_padding is None else key_padding.stride(0),
        heads, k.shape[2], 1.0 / (alpha * head_dim ** 0.5), alpha,
        HAS_PAD=key_padding is not None, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_N=64 if q.device.type == "cuda" else 16)
    return out
