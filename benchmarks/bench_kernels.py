"""Speed of the attention backends (and the fused residual + LayerNorm) on a CUDA GPU.

Example:
    python benchmarks/bench_kernels.py                       # fp16, released PB-relax, three sizes
    python benchmarks/bench_kernels.py --form alpha --dtype bf16

Every row runs the model's own `SelfAttention.attend` with one backend forced (`--attention-backend`):
  triton  the fused kernels of model/kernels/ (flash attention; the decode kernel for one query)
  sdpa    F.scaled_dot_product_attention (the paper's alpha form has no SDPA version: it runs torch)
  torch   plain matmul-softmax-matmul, which holds the B x H x T x T scores in memory
Training rows time forward plus backward at causal self-attention; decode rows time one new query
against a cache of T keys (no gradients); the LayerNorm rows time `x + LN(branch)` forward plus
backward, fused against torch. Columns: milliseconds per step, tokens per second, the peak memory the
step allocates, time relative to SDPA (or to torch for LayerNorm), and the largest difference of the
step's output from torch's (a check that the kernels compute the same thing on this GPU). The kernels
need CUDA; on a machine without it the script says so and exits 0.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import ModelConfig  # noqa: E402
from model.gpt import LayerNorm, SelfAttention  # noqa: E402
from model.kernels import set_attention_backend  # noqa: E402
from model.kernels.backend import triton_installed  # noqa: E402
from utils.errors import run_main  # noqa: E402

# (batch, heads, positions): a GPT-2-small-like shape, CogView's 40 heads over its 1089 positions, and a long sequence.
SIZES = ((8, 12, 512), (4, 40, 1089), (2, 16, 4096))
HEAD_DIM = 64
BACKENDS = ("triton", "sdpa", "torch")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FORMS = {"released": dict(pb_relax=True), "alpha": dict(pb_relax=True, pb_relax_alpha=32.0)}


def time_step(step: Callable[[], torch.Tensor], warmup: int, iters: int) -> tuple[float, float, torch.Tensor]:
    """Milliseconds per call (CUDA events), the peak memory in MiB one call allocates beyond what was
    allocated before it, and the step's output."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters, (torch.cuda.max_memory_allocated() - base) / 2 ** 20, step()


def attention_module(heads: int, form: str) -> SelfAttention:
    config = ModelConfig(vocab_size=8, num_layers=1, hidden_size=heads * HEAD_DIM, num_attention_heads=heads,
                         max_position_embeddings=8, hidden_dropout=0.0, attention_dropout=0.0, **FORMS[form])
    return SelfAttention(config).eval()


def training_step(module: SelfAttention, batch: int, heads: int, length: int, dtype: torch.dtype):
    torch.manual_seed(0)  # the same inputs for every backend, so their outputs compare
    q, k, v = (torch.randn(batch, heads, length, HEAD_DIM, device="cuda", dtype=dtype, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(batch, length, heads * HEAD_DIM, device="cuda", dtype=dtype)

    def step() -> torch.Tensor:
        out = module.attend(q, k, v, None)
        out.backward(grad)
        return out.detach()
    return step


def decode_step(module: SelfAttention, batch: int, heads: int, length: int, dtype: torch.dtype):
    torch.manual_seed(0)  # the same inputs for every backend, so their outputs compare
    q = torch.randn(batch, heads, 1, HEAD_DIM, device="cuda", dtype=dtype)
    k, v = (torch.randn(batch, heads, length, HEAD_DIM, device="cuda", dtype=dtype) for _ in range(2))

    @torch.no_grad()
    def step() -> torch.Tensor:
        return module.attend(q, k, v, None)
    return step


def layernorm_step(fused: bool, rows: int, hidden: int, dtype: torch.dtype):
    torch.manual_seed(0)  # the same inputs for every backend, so their outputs compare
    from model.kernels.layernorm import add_layernorm
    norm = LayerNorm(hidden, eps=1e-5, pb_relax=True).to("cuda", dtype)
    residual, branch = (torch.randn(rows, hidden, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2))
    grad = torch.randn(rows, hidden, device="cuda", dtype=dtype)

    def step() -> torch.Tensor:
        out = (add_layernorm(residual, branch, norm.weight, norm.bias, norm.eps, True) if fused
               else residual + norm(branch))
        out.backward(grad)
        return out.detach()
    return step


def print_rows(kind: str, size: str, tokens: int, results: dict[str, tuple[float, float, torch.Tensor]],
               baseline: str) -> None:
    reference = results["torch"][2].float()
    for name, (ms, mib, out) in results.items():
        ratio = ms / results[baseline][0]
        diff = (out.float() - reference).abs().max().item()
        print(f"| {kind} | {size} | {name} | {ms:.3f} | {tokens / ms * 1e3:,.0f} | {mib:,.0f} | {ratio:.2f} "
              f"| {diff:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=DTYPES, default="fp16")
    parser.add_argument("--form", choices=FORMS, default="released", help="PB-relax form (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA GPU (the Triton kernels run on GPUs); nothing measured here")
        return
    if not triton_installed():
        print("bench_kernels.py needs triton: pip install -r requirements-kernels.txt")
        return
    dtype = DTYPES[args.dtype]
    print(f"{torch.cuda.get_device_name()}; {args.dtype}, {args.form} PB-relax, head dim {HEAD_DIM}; "
          f"{args.iters} timed steps after {args.warmup}")
    print("| step | batch x heads x positions | backend | ms/step | tokens/s | peak MiB | time vs baseline "
          "| max diff vs torch |")
    print("|---|---|---|---|---|---|---|---|")
    for batch, heads, length in SIZES:
        module = attention_module(heads, args.form).cuda()
        size = f"{batch} x {heads} x {length}"
        for kind, make_step in (("train fwd+bwd", training_step), ("decode 1 query", decode_step)):
            results = {}
            for backend in BACKENDS:
                set_attention_backend(backend)
                results[backend] = time_step(make_step(module, batch, heads, length, dtype), args.warmup, args.iters)
            print_rows(kind, size, batch * (length if kind.startswith("train") else 1), results, "sdpa")
        hidden = heads * HEAD_DIM
        results = {name: time_step(layernorm_step(name == "triton", batch * length, hidden, dtype),
                                   args.warmup, args.iters) for name in ("triton", "torch")}
        print_rows("x + LN(branch) fwd+bwd", f"{batch * length} x {hidden}", batch * length, results, "torch")


if __name__ == "__main__":
    run_main(main)
