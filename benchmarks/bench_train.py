"""Training throughput: tokens/s, peak memory and MFU of our training step beside a naive baseline.

Example:
    python benchmarks/bench_train.py                       # the stated configuration below, CPU or GPU
    python benchmarks/bench_train.py --precision bf16 --batch-size 64
    python benchmarks/bench_train.py --layernorm-order pre --precision bf16 --dropout 0 --repeats 3
                                                           # the quick start's step, fastest of 3 runs per row

Configuration (defaults): 4 layers, hidden 256, 8 heads, text-to-image sequences of 32 text + 64 image
tokens (100 with the command tokens), micro-batch 16, vocabulary 1024 (the shapes pipeline: 512 codes +
480 text pieces + command tokens). Random ids: speed and memory do not depend on their values.

Rows, each measured in a fresh process so that its peak memory is its own:
- ours: `CogViewGPT` in the DeepSpeed engine that `pretrain_gpt2.py` builds from the same flags (ZeRO-1,
  torch AdamW with our parameter groups, our lr schedule, clipping), stepped by its `micro_step`;
- model: our `CogViewGPT` in the naive row's loop, so that ours / model is the DeepSpeed engine's cost and
  model / naive our model's;
- naive: a plain PyTorch GPT of the same sizes written below (explicit softmax(QK^T/sqrt(d))V with a
  materialised causal mask, no SDPA; pre-LN) trained by a plain loop: autocast forward, torch AdamW,
  clipping.
All use the same dropout (`--dropout`, 0.1 by default) and the same loss (next-token cross-entropy, `[PAD]` ignored).

MFU is model FLOPs (`flops_per_token`, the same count for both rows) per second over the matmul rate
measured on this device in the training dtype (training.metrics); peak memory is the CUDA allocator's
peak on GPUs and the growth of the process's peak resident memory from just before the model is built
on CPUs.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arguments import positive_int  # noqa: E402
from utils.errors import run_main  # noqa: E402

PAD_ID = 1000  # an id above the image codes, as [PAD] is in the unified vocabulary
ROWS = {"ours": "ours (DeepSpeed engine, pretrain_gpt2 step)",
        "model": "our model in the plain loop (no DeepSpeed)",
        "naive": "naive PyTorch GPT (plain loop)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-attention-heads", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--image-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="micro-batch (one optimizer step each)")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--codebook-size", type=int, default=512, help="ids below this are image codes")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="ours: DeepSpeed bf16 (fp32 master weights); naive: bf16 autocast")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per row")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--repeats", type=positive_int, default=1,
                        help="measure every row this many times, the rows taking turns, and keep each row's fastest: "
                             "two processes of the same row differ by 10-20%% on a shared CPU")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="hidden and attention dropout of every row (the quick start trains with 0)")
    parser.add_argument("--layernorm-order", choices=("pre", "sandwich"), default="sandwich",
                        help="our model's LayerNorms (the quick start trains pre-LN)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the naive baseline

def naive_gpt(vocab: int, layers: int, hidden: int, heads: int, positions: int, dropout: float):
    """A textbook GPT: what one writes without fused attention, parameter groups or DeepSpeed."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
            self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
            self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(approximate="tanh"),
                                     nn.Linear(4 * hidden, hidden), nn.Dropout(dropout))
            self.drop = nn.Dropout(dropout)

        def attention(self, x):
            batch, length, _ = x.shape
            q, k, v = (t.view(batch, length, heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            probs = self.drop(scores.masked_fill(~causal, float("-inf")).softmax(dim=-1))
            return self.drop(self.proj((probs @ v).transpose(1, 2).reshape(batch, length, hidden)))

        def forward(self, x):
            x = x + self.attention(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens, self.positions = nn.Embedding(vocab, hidden), nn.Embedding(positions, hidden)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln, self.drop = nn.LayerNorm(hidden), nn.Dropout(dropout)

        def forward(self, ids, position_ids):
            x = self.drop(self.tokens(ids) + self.positions(position_ids))
            for block in self.blocks:
                x = block(x)
            return self.ln(x) @ self.tokens.weight.T

    return GPT()


# ---------------------------------------------------------------- one row, in a child process

def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _batch(args: argparse.Namespace, device) -> dict[str, Any]:
    """Random text-to-image sequences: [ROI1] text G [BOI1] codes [EOI1], right-padded rows included."""
    import torch

    generator = torch.Generator().manual_seed(0)
    length = args.text_tokens + args.image_tokens + 4
    ids = torch.randint(args.codebook_size, PAD_ID, (args.batch_size, length), generator=generator)
    image = slice(args.text_tokens + 3, args.text_tokens + 3 + args.image_tokens)
    ids[:, image] = torch.randint(0, args.codebook_size, (args.batch_size, args.image_tokens), generator=generator)
    ids[: args.batch_size // 4, args.text_tokens // 2: args.text_tokens + 1] = PAD_ID  # short captions
    positions = torch.arange(length).expand(args.batch_size, -1).contiguous()
    return {"input_ids": ids.to(device), "position_ids": positions.to(device)}


def _measure(row: str, args: argparse.Namespace, results) -> None:
    import torch

    import mpu

    if args.threads:
        torch.set_num_threads(args.threads)
    mpu.init_distributed()
    device = mpu.device()
    import pretrain_gpt2  # noqa: F401  (imported by both rows before the memory baseline is taken)
    from model.config import ModelConfig, flops_per_token
    from training.metrics import measure_matmul_flops

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak_flops = measure_matmul_flops(device, dtype)
    length = args.text_tokens + args.image_tokens + 4
    config = ModelConfig(vocab_size=args.vocab_size, num_layers=args.num_layers, hidden_size=args.hidden_size,
                         num_attention_heads=args.num_attention_heads, max_position_embeddings=length,
                         layernorm_order=args.layernorm_order, hidden_dropout=args.dropout,
                         attention_dropout=args.dropout)
    batch = _batch(args, device)
    rss_before = _rss_mib()
    if row == "ours":
        step = _ours(args, config, batch)
    else:
        from model.gpt import CogViewGPT

        model = CogViewGPT(config) if row == "model" else naive_gpt(
            config.vocab_size, config.num_layers, config.hidden_size, config.num_attention_heads,
            config.max_position_embeddings, dropout=args.dropout)
        step = _plain_loop(model.to(device), batch, device, dtype)
    for _ in range(args.warmup_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = args.steps * args.batch_size * (length - 1)
    memory = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
              else _peak_rss_mib() - rss_before)
    results.put({"tokens_per_second": tokens / seconds, "memory_mib": memory, "device": str(device),
                 "mfu": flops_per_token(config, length - 1) * tokens / seconds / peak_flops})


def _ours(args: argparse.Namespace, config, batch):
    import mpu
    from arguments import parse_training_args
    from pretrain_gpt2 import build_engine, micro_step
    from training.ds_config import build_deepspeed_config

    flags = ["--train-data", "(random ids)", "--train-iters", str(args.steps + args.warmup_steps),
             "--batch-size", str(args.batch_size), "--num-layers", str(args.num_layers),
             "--hidden-size", str(args.hidden_size), "--num-attention-heads", str(args.num_attention_heads),
             "--layernorm-order", args.layernorm_order, "--hidden-dropout", str(args.dropout),
             "--attention-dropout", str(args.dropout)]
    training_args = parse_training_args(flags + (["--bf16"] if args.precision == "bf16" else []))
    engine = build_engine(training_args, config, build_deepspeed_config(training_args, mpu.get_world_size()).config)
    return lambda: micro_step(engine, batch, config, PAD_ID, args.codebook_size, txt_loss_scale=1.0)


def _plain_loop(model, batch, device, dtype):
    """A plain training step: autocast forward, backward, clipping and torch AdamW, no DeepSpeed."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01)
    ids, positions = batch["input_ids"], batch["position_ids"]

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(ids[:, :-1], positions[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(), ignore_index=PAD_ID)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    context = multiprocessing.get_context("spawn")
    measured = {}
    for _ in range(args.repeats):
        for row in ROWS:  # rows take turns, so a slow spell of a shared machine hits every row alike
            results = context.Queue()
            child = context.Process(target=_measure, args=(row, args, results))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"the {row} measurement failed (exit status {child.exitcode})")
            run = results.get()
            if row not in measured or run["tokens_per_second"] > measured[row]["tokens_per_second"]:
                measured[row] = run
    ours, naive = measured["ours"], measured["naive"]
    memory = "peak CUDA memory (MiB)" if ours["device"].startswith("cuda") else "peak RSS growth (MiB)"
    print(f"\n{args.num_layers} layers, hidden {args.hidden_size}, {args.num_attention_heads} heads, "
          f"{args.text_tokens} text + {args.image_tokens} image tokens, batch {args.batch_size}, "
          f"vocab {args.vocab_size}, {args.precision}, dropout {args.dropout}, {args.layernorm_order} LayerNorms, "
          f"{ours['device']}, {args.steps} timed steps"
          + (f", the fastest of {args.repeats} runs per row" if args.repeats > 1 else ""))
    print(f"| row | tokens/s | {memory} | MFU |\n|---|---|---|---|")
    for name, label in ROWS.items():
        row = measured[name]
        print(f"| {label} | {row['tokens_per_second']:,.0f} | {row['memory_mib']:,.0f} | {100 * row['mfu']:.1f}% |")
    for label, baseline in (("naive", naive), ("our model in the plain loop (the engine's cost)", measured["model"])):
        print(f"| ratio ours / {label} | {ours['tokens_per_second'] / baseline['tokens_per_second']:.2f}x | "
              f"{ours['memory_mib'] / max(baseline['memory_mib'], 1e-9):.2f}x | |")


if __name__ == "__main__":
    run_main(main)
