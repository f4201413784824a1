"""Causal flash attention in Triton, forward and backward, with CogView's PB-relax.

The score of query i and key j is `alpha * ((q_i * q_scale) . k_j)` with `q_scale = 1 / (alpha sqrt(d))`:
the query is shrunk in its own dtype before the product, exactly as `SelfAttention.attend` does it.
`alpha = 1` is the released PB-relax (`pb_relax`, Q / sqrt(d) before Q K^T), `alpha > 1` the paper's
form (`pb_relax_alpha`). Scores live only in fp32 registers, one `BLOCK_M x BLOCK_N` tile at a time,
and the softmax is online (running row maximum subtracted, as the alpha form prescribes), so neither
the T x S matrix nor an fp16 overflow of it ever exists. The backward pass recomputes the tiles from
the saved log-sum-exp (FlashAttention-2): one kernel for dK and dV (a program per key block), one for
dQ (a program per query block), so no atomics are needed. Attention dropout draws its mask from Philox
per tile in the forward pass and draws it again in the backward pass.

Masking is causal with an offset (query t sits at position `past_len + t`, `past_len = S - T`), plus an
optional key padding row `[B, S]` (True = real key) with `build_attention_mask`'s rule that every
position may attend to itself. A sparse mask (the local image window) comes instead as the whole
`[B, T, S]` mask plus a table of the tiles it leaves any key in (`_seen_tiles`); every kernel skips the
other tiles, which is where the window saves time.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# A finite start for the running maximum: a tile whose keys are all masked then gives exp(-inf - START)
# = 0 instead of exp(-inf + inf) = NaN, and the first real score wipes the start out (exp(START - s) = 0).
RUNNING_MAX_START = tl.constexpr(-1.0e30)


def block_sizes(device: torch.device) -> tuple[int, int]:
    """Query and key tile sizes: 64 on GPUs; 16 (tl.dot's minimum) under the CPU interpreter, where small
    test shapes then still span several tiles."""
    return (64, 64) if device.type == "cuda" else (16, 16)


@triton.jit
def _allowed(offs_m, offs_n, T, S, past_len, pad_row, mask_rows, stride_mt, HAS_PAD: tl.constexpr,
             HAS_MASK: tl.constexpr):
    """`[BLOCK_M, BLOCK_N]` True where query row `offs_m` may attend to key `offs_n`. Rows past T (tile
    tails) see every earlier key, so their softmax stays finite; their outputs and gradients are zero or
    unstored. `mask_rows` (HAS_MASK) is this batch row's `[T, S]` mask."""
    query_pos = past_len + offs_m
    allowed = (offs_n[None, :] <= query_pos[:, None]) & (offs_n[None, :] < S)
    if HAS_PAD:
        real = tl.load(pad_row + offs_n, mask=offs_n < S, other=0) != 0
        allowed = allowed & (real[None, :] | (offs_n[None, :] == query_pos[:, None]))
    if HAS_MASK:
        inside = (offs_m[:, None] < T) & (offs_n[None, :] < S)
        allowed = allowed & (tl.load(mask_rows + offs_m[:, None] * stride_mt + offs_n[None, :], mask=inside,
                                     other=1) != 0)
    return allowed


@triton.jit
def _tile_seen(seen_row, tile_m, tile_n, num_tiles_n, HAS_MASK: tl.constexpr):
    """Whether query tile `tile_m` sees any key of key tile `tile_n` (always, without a sparse mask)."""
    if HAS_MASK:
        return tl.load(seen_row + tile_m * num_tiles_n + tile_n) != 0
    return True


@triton.jit
def _dropout_keep(seed, bh, offs_m, offs_n, S, dropout_p):
    """`[BLOCK_M, BLOCK_N]` True where attention dropout keeps a probability: one Philox draw per (row and
    head, query, key), so the backward pass regenerates the forward's mask instead of storing it."""
    return tl.rand(seed + bh, offs_m[:, None] * S + offs_n[None, :]) >= dropout_p


@triton.jit
def _load_rows(ptr, offs, stride, limit, offs_d, HEAD_DIM: tl.constexpr):
    """Rows `offs` (< limit) of a `[length, HEAD_DIM]` matrix whose last dimension is contiguous."""
    mask = (offs[:, None] < limit) & (offs_d[None, :] < HEAD_DIM)
    return tl.load(ptr + offs[:, None] * stride + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _forward_kernel(Q, K, V, O, LSE, PAD, M, SEEN,
                    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks,
                    stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_ot, stride_pb,
                    stride_mb, stride_mt, stride_sb, num_tiles_n,
                    num_heads, T, S, past_len, q_scale, alpha, dropout_p, seed,
                    HAS_PAD: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // num_heads
    h = bh % num_heads
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qt, T, offs_d, HEAD_DIM)
    q = (q.to(tl.float32) * q_scale).to(Q.dtype.element_ty)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    pad_row = PAD + b * stride_pb
    mask_rows = M + b * stride_mb
    seen_row = SEEN + b * stride_sb
    m_i = tl.zeros([BLOCK_M], tl.float32) + RUNNING_MAX_START
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Causality: this query tile sees no key after its last row's position.
    hi = tl.minimum(S, past_len + start_m + BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        if _tile_seen(seen_row, start_m // BLOCK_M, start_n // BLOCK_N, num_tiles_n, HAS_MASK):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k = _load_rows(k_base, offs_n, stride_ks, S, offs_d, HEAD_DIM)
            v = _load_rows(v_base, offs_n, stride_vs, S, offs_d, HEAD_DIM)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * alpha
            allowed = _allowed(offs_m, offs_n, T, S, past_len, pad_row, mask_rows, stride_mt, HAS_PAD, HAS_MASK)
            s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            correction = tl.exp(m_i - m_new)
            l_i = l_i * correction + tl.sum(p, 1)
            if DROPOUT:
                # The normaliser keeps every probability; only the weights of the values are dropped.
                p = tl.where(_dropout_keep(seed, bh, offs_m, offs_n, S, dropout_p), p / (1.0 - dropout_p), 0.0)
            acc = acc * correction[:, None] + tl.dot(p.to(V.dtype.element_ty), v, input_precision=PRECISION)
            m_i = m_new
    acc = acc / l_i[:, None]
    out_mask = (offs_m[:, None] < T) & (offs_d[None, :] < HEAD_DIM)
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
             acc.to(O.dtype.element_ty), mask=out_mask)
    tl.store(LSE + bh * T + offs_m, m_i + tl.log(l_i), mask=offs_m < T)


@triton.jit
def _backward_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, PAD, M, SEEN,
                          stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks,
                          stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_ot, stride_pb,
                          stride_mb, stride_mt, stride_sb, num_tiles_n,
                          num_heads, T, S, past_len, q_scale, alpha, dropout_p, seed,
                          HAS_PAD: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          PRECISION: tl.constexpr):
    """dK and dV of one key tile, summed over the query tiles that can see it. DO has the strides
    `stride_o*`; DK and DV are contiguous `[B, H, S, d]`."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = bh // num_heads
    h = bh % num_heads
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(K + b * stride_kb + h * stride_kh, offs_n, stride_ks, S, offs_d, HEAD_DIM)
    v = _load_rows(V + b * stride_vb + h * stride_vh, offs_n, stride_vs, S, offs_d, HEAD_DIM)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_ob + h * stride_oh
    pad_row = PAD + b * stride_pb
    mask_rows = M + b * stride_mb
    seen_row = SEEN + b * stride_sb
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # Causality: the first query that sees key `start_n` sits at position start_n.
    lo = (tl.maximum(start_n - past_len, 0) // BLOCK_M) * BLOCK_M
    for start_m in range(lo, T, BLOCK_M):
        if _tile_seen(seen_row, start_m // BLOCK_M, start_n // BLOCK_N, num_tiles_n, HAS_MASK):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q = _load_rows(q_base, offs_m, stride_qt, T, offs_d, HEAD_DIM)
            q = (q.to(tl.float32) * q_scale).to(Q.dtype.element_ty)
            do = _load_rows(do_base, offs_m, stride_ot, T, offs_d, HEAD_DIM)
            lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=0.0)
            delta = tl.load(DELTA + bh * T + offs_m, mask=offs_m < T, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * alpha
            allowed = _allowed(offs_m, offs_n, T, S, past_len, pad_row, mask_rows, stride_mt, HAS_PAD, HAS_MASK)
            s = tl.where(allowed, s, float("-inf"))
            p = tl.exp(s - lse[:, None])
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            p_kept = p
            if DROPOUT:
                keep = _dropout_keep(seed, bh, offs_m, offs_n, S, dropout_p)
                p_kept = tl.where(keep, p / (1.0 - dropout_p), 0.0)
                dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
            dv += tl.dot(tl.trans(p_kept.to(DO.dtype.element_ty)), do, input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(Q.dtype.element_ty)), q, input_precision=PRECISION)
    out_mask = (offs_n[:, None] < S) & (offs_d[None, :] < HEAD_DIM)
    dk_ptrs = DK + bh * S * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    dv_ptrs = DV + bh * S * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(dk_ptrs, (dk * alpha).to(DK.dtype.element_ty), mask=out_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=out_mask)


@triton.jit
def _backward_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, PAD, M, SEEN,
                        stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks,
                        stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_ot, stride_pb,
                        stride_mb, stride_mt, stride_sb, num_tiles_n,
                        num_heads, T, S, past_len, q_scale, alpha, dropout_p, seed,
                        HAS_PAD: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, HEAD_DIM: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """dQ of one query tile; DO and DQ share the contiguous strides `stride_o*`."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // num_heads
    h = bh % num_heads
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qt, T, offs_d, HEAD_DIM)
    q = (q.to(tl.float32) * q_scale).to(Q.dtype.element_ty)
    do = _load_rows(DO + b * stride_ob + h * stride_oh, offs_m, stride_ot, T, offs_d, HEAD_DIM)
    lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=0.0)
    delta = tl.load(DELTA + bh * T + offs_m, mask=offs_m < T, other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    pad_row = PAD + b * stride_pb
    mask_rows = M + b * stride_mb
    seen_row = SEEN + b * stride_sb
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = tl.minimum(S, past_len + start_m + BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        if _tile_seen(seen_row, start_m // BLOCK_M, start_n // BLOCK_N, num_tiles_n, HAS_MASK):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k = _load_rows(k_base, offs_n, stride_ks, S, offs_d, HEAD_DIM)
            v = _load_rows(v_base, offs_n, stride_vs, S, offs_d, HEAD_DIM)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * alpha
            allowed = _allowed(offs_m, offs_n, T, S, past_len, pad_row, mask_rows, stride_mt, HAS_PAD, HAS_MASK)
            s = tl.where(allowed, s, float("-inf"))
            p = tl.exp(s - lse[:, None])
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            if DROPOUT:
                keep = _dropout_keep(seed, bh, offs_m, offs_n, S, dropout_p)
                dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(K.dtype.element_ty), k, input_precision=PRECISION)
    out_mask = (offs_m[:, None] < T) & (offs_d[None, :] < HEAD_DIM)
    tl.store(DQ + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
             (dq * (alpha * q_scale)).to(DQ.dtype.element_ty), mask=out_mask)


def _seen_tiles(mask: torch.Tensor, block_m: int, block_n: int) -> torch.Tensor:
    """`[B, query tiles, key tiles]` int8: 1 where the `[B, T, S]` mask lets a query of the tile pair see
    one of its keys. The kernels visit only those pairs."""
    batch, length, keys = mask.shape
    tiles_m, tiles_n = triton.cdiv(length, block_m), triton.cdiv(keys, block_n)
    padded = torch.zeros(batch, tiles_m * block_m, tiles_n * block_n, dtype=torch.bool, device=mask.device)
    padded[:, :length, :keys] = mask
    return padded.view(batch, tiles_m, block_m, tiles_n, block_n).any(dim=4).any(dim=2).to(torch.int8)


def _launch_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out_like: torch.Tensor,
                 key_padding: torch.Tensor | None, mask: torch.Tensor | None, seen: torch.Tensor | None,
                 alpha: float, dropout_p: float, seed: int) -> tuple[list, dict]:
    """The arguments every kernel shares: strides, sizes, scales and the compile-time constants."""
    batch, heads, length, head_dim = q.shape
    keys = k.shape[2]
    block_m, block_n = block_sizes(q.device)
    args = [q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out_like.stride(0), out_like.stride(1), out_like.stride(2),
            0 if key_padding is None else key_padding.stride(0),
            0 if mask is None else mask.stride(0), 0 if mask is None else mask.stride(1),
            0 if seen is None else seen.stride(0), triton.cdiv(keys, block_n),
            heads, length, keys, keys - length, 1.0 / (alpha * head_dim ** 0.5), alpha, dropout_p, seed]
    constants = dict(HAS_PAD=key_padding is not None, HAS_MASK=mask is not None, DROPOUT=dropout_p > 0,
                     HEAD_DIM=head_dim,
                     BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_M=block_m, BLOCK_N=block_n,
                     # fp32 inputs keep full precision (no TF32), as torch's own fp32 matmuls do by default.
                     PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    return args, constants


def _pointer(tensor: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """An optional tensor's pointer; without it any tensor will do (HAS_PAD / HAS_MASK False never read it)."""
    return placeholder if tensor is None else tensor


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding: torch.Tensor | None,
                mask: torch.Tensor | None, alpha: float, dropout_p: float) -> torch.Tensor:
        batch, heads, length, _ = q.shape
        # Drawn from torch's CPU generator (no device sync), so torch.manual_seed fixes the dropout mask.
        seed = int(torch.randint(2 ** 30, ())) if dropout_p > 0 else 0
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty(batch, heads, length, dtype=torch.float32, device=q.device)
        seen = None if mask is None else _seen_tiles(mask, *block_sizes(q.device))
        mask = None if mask is None else mask.to(torch.int8)
        args, constants = _launch_args(q, k, v, out, key_padding, mask, seen, alpha, dropout_p, seed)
        grid = (triton.cdiv(length, constants["BLOCK_M"]), batch * heads)
        _forward_kernel[grid](q, k, v, out, lse, _pointer(key_padding, q), _pointer(mask, q), _pointer(seen, q),
                              *args, **constants)
        ctx.save_for_backward(q, k, v, out, lse, key_padding, mask, seen)
        ctx.alpha, ctx.dropout_p, ctx.seed = alpha, dropout_p, seed
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out, lse, key_padding, mask, seen = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        # D_i = dO_i . O_i: the softmax backward's row term, computed once instead of once per key tile.
        delta = (grad_out.float() * out.float()).sum(-1)
        grad_q = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        grad_k = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        args, constants = _launch_args(q, k, v, grad_out, key_padding, mask, seen, ctx.alpha, ctx.dropout_p, ctx.seed)
        pointers = (_pointer(key_padding, q), _pointer(mask, q), _pointer(seen, q))
        batch, heads, length, _ = q.shape
        keys = k.shape[2]
        _backward_dkdv_kernel[(triton.cdiv(keys, constants["BLOCK_N"]), batch * heads)](
            q, k, v, grad_out, lse, delta, grad_k, grad_v, *pointers, *args, **constants)
        _backward_dq_kernel[(triton.cdiv(length, constants["BLOCK_M"]), batch * heads)](
            q, k, v, grad_out, lse, delta, grad_q, *pointers, *args, **constants)
        return grad_q, grad_k, grad_v, None, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding: torch.Tensor | None,
                    alpha: float, dropout_p: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of `q [B, H, T, d]` over `k, v [B, H, S, d]` (S >= T; the queries are the last T
    positions), differentiable. `key_padding [B, S]` (nonzero = real key) or None; or, for a sparse
    pattern, `mask [B, T, S]` (True = attend; causality and padding included), whose empty tiles are
    skipped. `alpha` 1 for the released PB-relax, the paper's alpha for its form; `dropout_p` drops
    attention probabilities (training). Returns `[B, H, T, d]` in q's dtype."""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if key_padding is not None and mask is not None:
        raise ValueError("give the key padding inside the mask, not beside it")
    if key_padding is not None:
        key_padding = key_padding.to(torch.int8).contiguous()
    if mask is not None:
        mask = mask.expand(q.shape[0], -1, -1).contiguous()
    return _FlashAttention.apply(q, k, v, key_padding, mask, float(alpha), float(dropout_p))
