"""The Triton kernels (model/kernels/) against the model's torch code, under Triton's CPU interpreter.

Each kernel must equal `model/gpt.py`'s torch path: attention forward and gradients in fp32 for both
PB-relax forms, with left padding, in fp16, and where plain fp16 attention overflows; the decode step and
a chunk after a cache against a full forward; the fused residual + LayerNorm. Shapes are small but span
several 16-wide tiles, with ragged tails. Needs `pip install -r requirements-kernels.txt`. conftest.py sets
TRITON_INTERPRET=1, which runs the kernels on CPU tensors.
"""
import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from model import CogViewGPT, ModelConfig
from model.gpt import LayerNorm, SelfAttention, build_attention_mask
from model.kernels import attention_backend, set_attention_backend
from model.kernels import backend
from model.kernels.backend import auto_backend, resolve_attention_backend
from utils.errors import UserError

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed: pip install -r requirements-kernels.txt")

# The paper's alpha; the released form has none.
PB_RELAX_FORMS = {"released": dict(pb_relax=True), "alpha": dict(pb_relax=True, pb_relax_alpha=32.0)}


@pytest.fixture(autouse=True)
def restore_backend():
    before = attention_backend()
    yield
    set_attention_backend(before)


def attention(heads: int = 2, head_dim: int = 16, **numerics) -> SelfAttention:
    config = ModelConfig(vocab_size=8, num_layers=1, hidden_size=heads * head_dim, num_attention_heads=heads,
                         max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0, **numerics)
    return SelfAttention(config).eval()


def random_heads(batch: int, heads: int, length: int, head_dim: int, dtype=torch.float32, scale: float = 1.0,
                 seed: int = 0) -> list[torch.Tensor]:
    """q, k, v `[batch, heads, length, head_dim]`."""
    generator = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(batch, heads, length, head_dim, generator=generator)).to(dtype) for _ in range(3)]


def attend(module: SelfAttention, backend: str, q, k, v, mask=None):
    """Output and (q, k, v) gradients of `module.attend` on `backend`, for a fixed output gradient."""
    set_attention_backend(backend)
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = module.attend(q, k, v, mask)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.dtype)
    return out.detach(), torch.autograd.grad(out, (q, k, v), grad_out)


def assert_close_all(actual, expected, atol: float, rtol: float = 0.0):
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.float(), e.float(), atol=atol, rtol=rtol)


# ---------------------------------------------------------------- attention

@needs_triton
@pytest.mark.parametrize("form", PB_RELAX_FORMS)
def test_causal_attention_forward_and_gradients_equal_torch_in_fp32(form):
    module = attention(**PB_RELAX_FORMS[form])
    q, k, v = random_heads(2, 2, 37, 16)
    out, grads = attend(module, "triton", q, k, v)
    ref_out, ref_grads = attend(module, "torch", q, k, v)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    assert_close_all(grads, ref_grads, atol=1e-4)


@needs_triton
def test_attention_dropout_equals_torch_with_the_kernels_own_mask():
    """With the identity as values the output is the kept, rescaled probability matrix, which shows the
    kernel's dropout mask; the same torch seed gives the same mask for any values, so output and gradients
    must then equal attention with that mask applied in torch."""
    from model.kernels.flash_attention import flash_attention
    drop, length = 0.3, 32
    q, k, v = random_heads(1, 2, length, length, seed=10)
    torch.manual_seed(0)
    shown = flash_attention(q, k, torch.eye(length).expand(1, 2, length, length), None, 1.0, drop)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    probs = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(length)).masked_fill(~causal, float("-inf")), -1)
    keep = shown != 0
    assert not (keep & ~causal).any()
    assert 0.2 < 1 - keep.sum() / (2 * causal.sum()) < 0.4
    torch.testing.assert_close(shown, torch.where(keep, probs / (1 - drop), 0.0), atol=1e-6, rtol=0)

    q, k, v = (x.requires_grad_() for x in (q, k, v))
    grad_out = torch.randn(1, 2, length, length, generator=torch.Generator().manual_seed(11))
    torch.manual_seed(0)
    out = flash_attention(q, k, v, None, 1.0, drop)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(length)).masked_fill(~causal, float("-inf"))
    expected = (torch.softmax(scores, -1) * keep / (1 - drop)) @ v
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert_close_all(grads, torch.autograd.grad(expected, (q, k, v), grad_out), atol=1e-4)


@needs_triton
def test_left_padding_follows_build_attention_mask():
    """Row 1 has a whole 16-key tile of padding (a tile with no visible key for its early queries); every
    position, padding included, must match, since a padding position attends to itself."""
    module = attention(**PB_RELAX_FORMS["alpha"])
    length = 29
    q, k, v = random_heads(3, 2, length, 16, seed=1)
    key_padding = torch.ones(3, length, dtype=torch.bool)
    key_padding[1, :18] = False
    key_padding[2, :3] = False
    mask = build_attention_mask(length, 0, key_padding)
    out, grads = attend(module, "triton", q, k, v, mask)
    ref_out, ref_grads = attend(module, "torch", q, k, v, mask)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    assert_close_all(grads, ref_grads, atol=1e-4)


@needs_triton
def test_fp16_inputs_match_the_fp32_reference():
    module = attention(**PB_RELAX_FORMS["released"])
    q, k, v = random_heads(1, 2, 33, 16, dtype=torch.float16, seed=2)
    out, grads = attend(module, "triton", q, k, v)
    ref_out, ref_grads = attend(module, "torch", q.float(), k.float(), v.float())
    assert out.dtype == torch.float16 and all(g.dtype == torch.float16 for g in grads)
    torch.testing.assert_close(out.float(), ref_out, atol=2e-3, rtol=0)
    assert_close_all(grads, ref_grads, atol=2e-2, rtol=1e-2)


@needs_triton
@pytest.mark.parametrize("form", PB_RELAX_FORMS)
def test_fp16_scores_beyond_fp16_range_stay_finite(form):
    """Products q.k of up to ~2e5 (fp16 tops out at 65504): plain fp16 attention gives NaN, the kernels
    the float64 answer."""
    q, k, v = random_heads(1, 2, 20, 16, dtype=torch.float16, scale=120.0, seed=3)
    plain = torch.softmax((q @ k.transpose(-2, -1)) / 4.0, dim=-1) @ v
    assert not plain.isfinite().all()
    module = attention(**PB_RELAX_FORMS[form])
    out, grads = attend(module, "triton", q, k, v)
    ref_out, _ = attend(module, "torch", q.double(), k.double(), v.double())
    assert out.isfinite().all() and all(g.isfinite().all() for g in grads)
    torch.testing.assert_close(out.double(), ref_out, atol=5e-2, rtol=1e-2)


@needs_triton
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("form", PB_RELAX_FORMS)
def test_cached_decoding_equals_a_full_forward(form, padded):
    """Prefill, a 3-token chunk after the cache (flash kernel with an offset), then single-token decode
    steps (decode kernel), with or without a left-padded row, give the logits of one full forward in torch."""
    torch.manual_seed(0)
    model = CogViewGPT(ModelConfig(vocab_size=40, num_layers=2, hidden_size=32, num_attention_heads=2,
                                   max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0,
                                   **PB_RELAX_FORMS[form])).eval()
    length, pads = 21, 5
    ids = torch.randint(0, 40, (2, length), generator=torch.Generator().manual_seed(4))
    positions = torch.arange(length).expand(2, length)
    key_padding = None
    if padded:
        key_padding = torch.ones(2, length, dtype=torch.bool)
        key_padding[1, :pads] = False
        positions = torch.stack([torch.arange(length), (torch.arange(length) - pads).clamp_min(0)])
    with torch.no_grad():
        set_attention_backend("torch")
        expected = model(ids, positions, key_padding)
        set_attention_backend("triton")
        cache = model.new_kv_cache(2, length)
        pieces = []
        for start, end in [(0, 16), (16, 19), (19, 20), (20, 21)]:
            mask = None if key_padding is None else key_padding[:, :end]
            pieces.append(model(ids[:, start:end], positions[:, start:end], mask, cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- fused residual + LayerNorm

def add_layernorm(*args, **kwargs):
    from model.kernels.layernorm import add_layernorm
    return add_layernorm(*args, **kwargs)


@needs_triton
@pytest.mark.parametrize("pb_relax", [False, True])
def test_fused_add_layernorm_equals_residual_plus_layernorm(pb_relax):
    """Against `x + LN_3(branch)` of the model; the rows have like magnitudes, so the per-token and the
    whole-tensor PB-relax scales give the same result here."""
    generator = torch.Generator().manual_seed(5)
    residual, branch = torch.randn(2, 9, 48, generator=generator), 3 * torch.randn(2, 9, 48, generator=generator)
    norm = LayerNorm(48, eps=1e-5, pb_relax=pb_relax)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(48, generator=generator))
        norm.bias.copy_(0.1 * torch.randn(48, generator=generator))
    grad_out = torch.randn(2, 9, 48, generator=generator)
    inputs = [residual.requires_grad_(), branch.requires_grad_(), norm.weight, norm.bias]
    expected = residual + norm(branch)
    expected_grads = torch.autograd.grad(expected, inputs, grad_out)
    out = add_layernorm(residual, branch, norm.weight, norm.bias, eps=1e-5, pb_relax=pb_relax)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert_close_all(torch.autograd.grad(out, inputs, grad_out), expected_grads, atol=1e-4)


@needs_triton
def test_pb_relax_layernorm_scales_each_token_by_its_own_maximum():
    """A row 10^4 times larger must not change the others (one whole-tensor scale would shrink them until
    eps dominates their variance) and must give what it gives at its own size."""
    generator = torch.Generator().manual_seed(6)
    branch = torch.randn(4, 40, generator=generator)
    weight, bias, residual = torch.ones(40), torch.zeros(40), torch.zeros(4, 40)
    loud = branch.clone()
    loud[0] *= 1e4
    out = add_layernorm(residual, branch, weight, bias, eps=1e-5, pb_relax=True)
    out_loud = add_layernorm(residual, loud, weight, bias, eps=1e-5, pb_relax=True)
    torch.testing.assert_close(out_loud, out, atol=1e-5, rtol=0)


@needs_triton
def test_fused_add_layernorm_in_fp16_does_not_overflow():
    """Activations near fp16's limit: their squares overflow fp16, the kernel's result is the fp32 one."""
    generator = torch.Generator().manual_seed(8)
    branch = (6e4 * torch.rand(6, 64, generator=generator) - 3e4).half()
    residual = torch.randn(6, 64, generator=generator).half()
    weight, bias = torch.ones(64, dtype=torch.float16), torch.zeros(64, dtype=torch.float16)
    assert not (branch * branch).isfinite().all()
    out = add_layernorm(residual, branch, weight, bias, eps=1e-5, pb_relax=True)
    expected = residual.float() + F.layer_norm(branch.float(), (64,), eps=1e-5)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-3)


# ---------------------------------------------------------------- compiled for a GPU

@needs_triton
def test_kernels_compile_for_a_gpu(tmp_path):
    """The interpreter accepts kernels that the GPU compiler rejects (e.g. a global that is not a constexpr),
    so every kernel is also compiled for a Hopper GPU, in a process without the interpreter."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    result = subprocess.run([sys.executable, "tests/kernel_compile_check.py"], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["compiled", "6", "kernels"]


# ---------------------------------------------------------------- backend choice

def test_backend_choice_and_its_errors():
    q = torch.zeros(1, 1, 4, 8)
    set_attention_backend("auto")
    assert resolve_attention_backend(q, alpha_form=True, sparse=True) == "sdpa"  # CPU tensors: never the kernels
    with pytest.raises(UserError, match="attention backend must be one of"):
        set_attention_backend("flash")


def test_auto_takes_the_kernels_on_cuda_only_where_they_save_work_and_were_verified():
    assert auto_backend(on_cuda=True, alpha_form=True, sparse=False, kernels_verified=True) == "triton"
    assert auto_backend(on_cuda=True, alpha_form=False, sparse=True, kernels_verified=True) == "triton"
    assert auto_backend(on_cuda=True, alpha_form=False, sparse=False, kernels_verified=True) == "sdpa"
    assert auto_backend(on_cuda=True, alpha_form=True, sparse=True, kernels_verified=False) == "sdpa"
    assert auto_backend(on_cuda=False, alpha_form=True, sparse=True, kernels_verified=True) == "sdpa"


@needs_triton
def test_device_self_check_accepts_the_kernels_and_refuses_a_wrong_one(monkeypatch, caplog):
    """`auto` runs the same check on a GPU's first call; here on CPU tensors through the interpreter."""
    backend.triton_verified.cache_clear()
    assert backend.triton_verified(torch.device("cpu"), torch.float32, 16)
    backend.triton_verified.cache_clear()
    monkeypatch.setattr(backend, "triton_attend", lambda q, k, v, *rest: v.flip(2))
    assert not backend.triton_verified(torch.device("cpu"), torch.float32, 16)
    assert "differ from the torch reference" in caplog.text
    backend.triton_verified.cache_clear()

    def broken(*args):
        raise RuntimeError("PassManager::run failed\nmore detail")
    monkeypatch.setattr(backend, "triton_attend", broken)
    assert not backend.triton_verified(torch.device("cpu"), torch.float16, 16)
    assert "cannot run on cpu torch.float16 (RuntimeError: PassManager::run failed)" in caplog.text
    backend.triton_verified.cache_clear()


def test_sdpa_and_torch_backends_agree():
    module = attention()
    q, k, v = random_heads(2, 2, 11, 16, seed=9)
    out, grads = attend(module, "sdpa", q, k, v)
    ref_out, ref_grads = attend(module, "torch", q, k, v)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    assert_close_all(grads, ref_grads, atol=1e-5)


def test_importing_and_running_the_model_does_not_import_triton():
    code = ("import sys, torch; from model import CogViewGPT, ModelConfig; "
            "m = CogViewGPT(ModelConfig(vocab_size=8, num_layers=1, hidden_size=16, num_attention_heads=2, "
            "max_position_embeddings=8)); m(torch.zeros(1, 4, dtype=torch.long), torch.arange(4)[None]); "
            "print('triton' in sys.modules)")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "False"
