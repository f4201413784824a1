"""The Triton kernels on a real CUDA device, against the model's torch path (skipped without one).

tests/test_kernels.py checks the kernels under Triton's CPU interpreter, which cannot run bf16 and says
nothing about the compiled code. These run the compiled kernels in fp16 and bf16: attention forward and
backward with left padding, a chunk of queries after a cache, one-query decoding, and the fused residual
LayerNorm. Run them with TRITON_INTERPRET=0 (`benchmarks/bench_gpu.sh` does), since tests/conftest.py turns
the interpreter on by default.
"""
from __future__ import annotations

import os

import pytest
import torch

from model import ModelConfig
from model.gpt import LayerNorm, SelfAttention, build_attention_mask
from model.kernels import set_attention_backend
from model.kernels.backend import triton_installed

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not triton_installed() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA device, triton, and TRITON_INTERPRET=0")

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Loose enough for one rounding of the output to the dtype, far below what a wrong mask or tile gives.
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


def attention(heads: int = 4, head_dim: int = 64, alpha: float | None = None) -> SelfAttention:
    config = ModelConfig(vocab_size=8, num_layers=1, hidden_size=heads * head_dim, num_attention_heads=heads,
                         max_position_embeddings=8, hidden_dropout=0.0, attention_dropout=0.0, pb_relax=True,
                         pb_relax_alpha=alpha)
    return SelfAttention(config).eval()


def run(module: SelfAttention, backend: str, q, k, v, mask, grad=None):
    set_attention_backend(backend)
    try:
        q, k, v = (t.detach().clone().requires_grad_(grad is not None) for t in (q, k, v))
        out = module.attend(q, k, v, mask)
        if grad is None:
            return out.float(), ()
        out.backward(grad)
        return out.float(), tuple(t.grad.float() for t in (q, k, v))
    finally:
        set_attention_backend("auto")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("alpha", [None, 32.0], ids=["released", "alpha"])
@pytest.mark.parametrize("past", [0, 70])
def test_attention_forward_and_backward_match_torch(dtype, alpha, past):
    torch.manual_seed(0)
    batch, heads, length, head_dim = 3, 4, 157, 64
    module = attention(heads, head_dim, alpha).cuda()
    total = past + length
    q = torch.randn(batch, heads, length, head_dim, device="cuda", dtype=dtype)
    k, v = (torch.randn(batch, heads, total, head_dim, device="cuda", dtype=dtype) for _ in range(2))
    padding = torch.ones(batch, total, dtype=torch.bool, device="cuda")
    padding[1, :40] = False  # a left-padded row
    padding[2, :100] = False  # more than a whole tile of padding
    mask = build_attention_mask(length, past, padding)
    grad = torch.randn(batch, length, heads * head_dim, device="cuda", dtype=dtype) if past == 0 else None
    expected, expected_grads = run(module, "torch", q, k, v, mask, grad)
    out, grads = run(module, "triton", q, k, v, mask, grad)
    real = padding[:, past:]  # padding queries' outputs are ignored
    torch.testing.assert_close(out[real], expected[real], atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    for got, want in zip(grads, expected_grads):
        scale = want.abs().max().clamp_min(1.0)
        assert (got - want).abs().max() <= 5 * TOLERANCE[dtype] * scale


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_one_query_decoding_matches_torch(dtype):
    torch.manual_seed(1)
    module = attention().cuda()
    q = torch.randn(8, 4, 1, 64, device="cuda", dtype=dtype)
    k, v = (torch.randn(8, 4, 1100, 64, device="cuda", dtype=dtype) for _ in range(2))
    padding = torch.ones(8, 1100, dtype=torch.bool, device="cuda")
    padding[3, :17] = False
    mask = build_attention_mask(1, 1099, padding)
    with torch.no_grad():
        expected, _ = run(module, "torch", q, k, v, mask)
        out, _ = run(module, "triton", q, k, v, mask)
    torch.testing.assert_close(out, expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_fused_residual_layernorm_matches_torch(dtype):
    from model.kernels.layernorm import add_layernorm

    torch.manual_seed(2)
    norm = LayerNorm(1024, eps=1e-5, pb_relax=True).to("cuda", dtype)
    residual = torch.randn(777, 1024, device="cuda", dtype=dtype)
    branch = torch.randn(777, 1024, device="cuda", dtype=dtype) * 300  # large, where PB-relax scales
    torch.testing.assert_close(add_layernorm(residual, branch, norm.weight, norm.bias, norm.eps, True).float(),
                               (residual + norm(branch)).float(), atol=4 * TOLERANCE[dtype], rtol=TOLERANCE[dtype])
