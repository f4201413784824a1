"""One GPU, one table: training MFU of a >= 300M-parameter model in bf16 (Triton kernels against SDPA),
decoding tokens/s of 1,024-token images at batch 1 and 32 against the memory-bandwidth bound, and the
kernels' tests on the device. `benchmarks/bench_gpu.sh` runs it (within 8 minutes on one H100/H200).

Rows:
- train: `CogViewGPT` of 24 layers, hidden 1024, 16 heads (CogView's vocabulary of 58,240 ids: 363M
  parameters), text-to-image sequences of 1,092 tokens (64 text + 1,024 image + 4 command), micro-batch 8,
  bf16 autocast over fp32 weights, fused AdamW, dropout 0.1, as `pretrain_gpt2.py --bf16` computes
  (without DeepSpeed's engine). MFU = `flops_per_token` x tokens/s over this GPU's measured bf16 matmul
  rate (`training.metrics`, as the training logs), median of the timed steps.
- decode: `generate_image_codes` (the real decoding loop: KV cache, top-k sampling, one token per step)
  of the same model with bf16 autocast, 1,024 codes per image, batch 1 and 32. The bound is the tokens/s
  at which each step only reads what it must from memory: the fp32 weights once (autocast reads them) plus
  the bf16 KV cache, at the copy bandwidth measured on this GPU.
- kernel tests: `tests/test_kernels_cuda.py` (compiled kernels in fp16 and bf16 against torch), passed/failed.

`--size tiny --device cpu` runs the same code at a toy size on CPU, SDPA only, to check the script itself.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_generate import SyntheticText  # noqa: E402
from data_utils.sequences import max_length, text2image  # noqa: E402
from data_utils.tokenizer import UnifiedTokenizer  # noqa: E402
from generation.sampling import SamplingSettings  # noqa: E402
from generation.tasks import Geometry, generate_image_codes  # noqa: E402
from model import CogViewGPT, ModelConfig  # noqa: E402
from model.config import count_parameters, flops_per_token  # noqa: E402
from model.kernels import set_attention_backend  # noqa: E402
from model.kernels.backend import triton_installed  # noqa: E402
from training.metrics import measure_matmul_flops  # noqa: E402
from utils.errors import run_main  # noqa: E402

TEXT_TOKENS = 64
CODEBOOK_SIZE = 8192  # CogView's: with 50,000 text pieces its vocabulary of 58,240 ids
SIZES = {"300m": dict(layers=24, hidden=1024, heads=16, text_vocab=50000, grid=32, batch=8),
         "tiny": dict(layers=2, hidden=64, heads=2, text_vocab=1000, grid=8, batch=2)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_row(model: CogViewGPT, tok: UnifiedTokenizer, grid: int, batch: int, steps: int, peak: float,
              device: torch.device) -> dict[str, float]:
    """Median seconds per training step, tokens/s and MFU."""
    generator = torch.Generator().manual_seed(0)
    sequence = text2image(tok, tok.encode_text("x"), grid, torch.zeros(grid * grid, dtype=torch.long))
    ids = torch.tensor([sequence.ids] * batch)
    ids[:, -grid * grid - 1:-1] = torch.randint(0, CODEBOOK_SIZE, (batch, grid * grid), generator=generator)
    ids, positions = ids.to(device), torch.tensor([sequence.position_ids] * batch, device=device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(ids[:, :-1], positions[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = []
    for attempt in range(steps + 2):  # two warm-up steps: kernel compilation, allocator, optimizer state
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        if attempt >= 2:
            seconds.append(time.perf_counter() - start)
    del optimizer
    median = statistics.median(seconds)
    tokens = batch * (len(sequence) - 1)
    return {"seconds": median, "tokens_per_second": tokens / median,
            "mfu": flops_per_token(model.config, len(sequence) - 1) * tokens / median / peak}


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s a device-to-device copy moves (read + write), best of 5."""
    if device.type != "cuda":
        return float("nan")
    source = torch.empty(2**30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(6):
        sync(device)
        start = time.perf_counter()
        target.copy_(source)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() / best


def decode_row(model: CogViewGPT, tok: UnifiedTokenizer, grid: int, batch: int, bandwidth: float,
               device: torch.device) -> dict[str, float]:
    """Image tokens/s of `generate_image_codes` and the memory-bandwidth bound."""
    model.eval()
    config = model.config
    geometry = Geometry(grid, TEXT_TOKENS, config.max_position_embeddings)
    settings = SamplingSettings(top_k=200)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        # Warm-up on a 4x4 grid: the same kernels compile, in a fraction of the time.
        generate_image_codes(model, tok, Geometry(4, TEXT_TOKENS, config.max_position_embeddings),
                             [tok.encode_text("x")], batch, 0, settings, batch)
        sync(device)
        start = time.perf_counter()
        generate_image_codes(model, tok, geometry, [tok.encode_text("x")], batch, 0, settings, batch)
        sync(device)
    seconds = time.perf_counter() - start
    steps = grid * grid
    prompt = TEXT_TOKENS + 3
    weights = 4 * count_parameters(config)  # fp32 weights, each read once a step
    mean_cache = prompt + steps / 2  # positions cached at the average step
    kv = 2 * config.num_layers * batch * mean_cache * config.hidden_size * 2  # keys + values, bf16
    bound = batch / ((weights + kv) / bandwidth)
    return {"seconds": seconds, "tokens_per_second": batch * steps / seconds, "bound": bound}


def kernel_tests() -> str:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/test_kernels_cuda.py"], cwd=ROOT, env=env, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    return lines[-1].strip("= ") if lines else f"pytest exit status {result.returncode}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="300m")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--train-steps", type=int, default=8, help="timed training steps per backend")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = SIZES[args.size]
    backends = ("sdpa", "triton") if device.type == "cuda" and triton_installed() else ("sdpa",)
    tok = UnifiedTokenizer(SyntheticText(size["text_vocab"], TEXT_TOKENS), CODEBOOK_SIZE)
    grid = size["grid"]
    config = ModelConfig(vocab_size=tok.vocab_size, num_layers=size["layers"], hidden_size=size["hidden"],
                         num_attention_heads=size["heads"],
                         max_position_embeddings=max_length("text2image", TEXT_TOKENS, grid),
                         hidden_dropout=0.1, attention_dropout=0.1, position_layout="consecutive")
    torch.manual_seed(0)
    model = CogViewGPT(config).to(device)
    peak = measure_matmul_flops(device, torch.bfloat16)
    bandwidth = copy_bandwidth(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name}: measured bf16 matmul {peak / 1e12:.0f} TFLOP/s, copy bandwidth {bandwidth / 1e9:.0f} GB/s; "
          f"model {count_parameters(config) / 1e6:.0f}M parameters ({config.num_layers} layers, hidden "
          f"{config.hidden_size}, {config.num_attention_heads} heads), {TEXT_TOKENS} text + {grid * grid} image tokens")
    print("| row | backend | batch | seconds | tokens/s | MFU or fraction of bound | notes |")
    print("|---|---|---|---|---|---|---|")
    for backend in backends:
        set_attention_backend(backend)
        row = train_row(model, tok, grid, size["batch"], args.train_steps, peak, device)
        print(f"| train bf16 | {backend} | {size['batch']} | {row['seconds']:.3f} | {row['tokens_per_second']:,.0f} | "
              f"MFU {100 * row['mfu']:.1f}% | fwd+bwd+AdamW, median of {args.train_steps} |", flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for backend in backends:
        set_attention_backend(backend)
        for batch in (1, 32):
            row = decode_row(model, tok, grid, batch, bandwidth, device)
            print(f"| decode {grid * grid} codes | {backend} | {batch} | {row['seconds']:.2f} | "
                  f"{row['tokens_per_second']:,.0f} | {row['tokens_per_second'] / row['bound']:.1%} of "
                  f"{row['bound']:,.0f} | bound: fp32 weights + bf16 KV cache per step |", flush=True)
    set_attention_backend("auto")
    if device.type == "cuda":
        print(f"| kernel tests | triton | - | - | - | - | {kernel_tests()} |")


if __name__ == "__main__":
    run_main(main)
