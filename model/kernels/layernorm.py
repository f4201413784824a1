"""Sandwich-LN's residual step in one Triton kernel: `residual + LayerNorm(branch)`, with PB-relax.

With PB-relax each token (row) is first divided by its own `max|x_row| / 8` (detached, floored at the
dtype's smallest normal number so an all-zero row stays zero), the per-token form of `model.gpt.LayerNorm`.
One program normalises a row in fp32 registers and adds it to the residual, so the normalised branch
never makes a round trip through memory and an fp16 row cannot overflow in its statistics. The backward
kernel gives the branch's gradient per row and sums the gain and bias gradients over each program's
rows; torch adds up the per-program partial sums.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from model.gpt import PB_RELAX_LAYERNORM_RANGE


@triton.jit
def _forward_kernel(X, R, W, Bias, Y, MEAN, RSTD, SCALE, N, eps, tiny, relax_range,
                    PB_RELAX: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    scale = 1.0
    if PB_RELAX:
        scale = tl.maximum(tl.max(tl.abs(x), 0) / relax_range, tiny)
        x = x / scale
    mean = tl.sum(x, 0) / N
    centered = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, 0) / N + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(Bias + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(R + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * N + cols, (r + centered * rstd * w + b).to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)
    tl.store(SCALE + row, scale)


@triton.jit
def _backward_kernel(DY, X, W, MEAN, RSTD, SCALE, DX, DW_PARTIAL, DB_PARTIAL, rows, rows_per_program, N,
                     BLOCK: tl.constexpr):
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], tl.float32)
    db = tl.zeros([BLOCK], tl.float32)
    first = program * rows_per_program
    for row in range(first, tl.minimum(first + rows_per_program, rows)):
        x = tl.load(X + row * N + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * N + cols, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(SCALE + row)
        rstd = tl.load(RSTD + row)
        x_hat = tl.where(mask, (x / scale - tl.load(MEAN + row)) * rstd, 0.0)
        g = dy * w
        # LayerNorm's backward, then the chain rule through the (detached) division by the scale.
        dx = (g - x_hat * (tl.sum(g * x_hat, 0) / N) - tl.sum(g, 0) / N) * rstd / scale
        tl.store(DX + row * N + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * x_hat
        db += dy
    tl.store(DW_PARTIAL + program * N + cols, dw, mask=mask)
    tl.store(DB_PARTIAL + program * N + cols, db, mask=mask)


def _backward_programs(rows: int, device: torch.device) -> int:
    """Enough programs to fill a GPU (a few per SM) while keeping the partial gain/bias sums small."""
    if device.type != "cuda":
        return min(rows, 4)
    return min(rows, 4 * torch.cuda.get_device_properties(device).multi_processor_count)


class _AddLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, residual: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                eps: float, pb_relax: bool) -> torch.Tensor:
        hidden = branch.shape[-1]
        x = branch.reshape(-1, hidden).contiguous()
        r = residual.reshape(-1, hidden).contiguous()
        rows = x.shape[0]
        out = torch.empty_like(r)
        stats = torch.empty(3, rows, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(hidden)
        _forward_kernel[(rows,)](x, r, weight, bias, out, stats[0], stats[1], stats[2], hidden, eps,
                                 torch.finfo(branch.dtype).tiny, PB_RELAX_LAYERNORM_RANGE,
                                 PB_RELAX=pb_relax, BLOCK=block)
        ctx.save_for_backward(x, weight, stats)
        ctx.branch_shape = branch.shape
        return out.view(residual.shape)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, stats = ctx.saved_tensors
        rows, hidden = x.shape
        dy = grad_out.reshape(rows, hidden).contiguous()
        dx = torch.empty_like(x)
        programs = _backward_programs(rows, x.device)
        partials = torch.empty(2, programs, hidden, dtype=torch.float32, device=x.device)
        _backward_kernel[(programs,)](dy, x, weight, stats[0], stats[1], stats[2], dx, partials[0], partials[1],
                                      rows, triton.cdiv(rows, programs), hidden,
                                      BLOCK=triton.next_power_of_2(hidden))
        grad_weight, grad_bias = partials.sum(1).to(weight.dtype)
        return grad_out, dx.view(ctx.branch_shape), grad_weight, grad_bias, None, None


def add_layernorm(residual: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  eps: float, pb_relax: bool) -> torch.Tensor:
    """`residual + LayerNorm(branch)` over the last dimension, differentiable in all four tensors; with
    `pb_relax` each row of `branch` is first scaled by its own `max|row| / 8`."""
    return _AddLayerNorm.apply(residual, branch, weight, bias, float(eps), bool(pb_relax))
