"""Long image sequences: time and peak memory of a training step, and time to decode one image, as the
code grid grows from 8x8 to 32x32 tokens, with full attention and with the local image window.

Example:
    python benchmarks/bench_long.py                          # the default below, about 2 minutes on a CPU
    python benchmarks/bench_long.py --device cuda --hidden 1024 --layers 16 --batch-size 8

Configuration (defaults): 4 layers, hidden 128, 4 heads, text-to-image sequences of 16 text tokens and a
grid x grid image (grids 8, 16, 32: 64 to 1,024 image tokens; 24 has no grid token), micro-batch 4, AdamW,
fp32; decoding one image at batch 1 with the KV cache (`generate_image_codes`), top-k 200. Random ids:
speed and memory do not depend on their values. Rows: "dense" (full causal attention) and "window W"
(`--image-attention-window W`, the same weights' shapes).

Each row runs in a fresh process, so its peak memory is its own: the CUDA allocator's peak on GPUs, the
growth of the process's peak resident memory from just before the model is built on CPUs. The ratio
columns divide each window row by the dense row of the same grid, measured in the same run.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.errors import run_main  # noqa: E402

TEXT_TOKENS = 16
CODEBOOK_SIZE = 512
TEXT_VOCAB = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", type=int, nargs="+", default=[8, 16, 32], help="code grid sides")
    parser.add_argument("--window", type=int, default=3, help="the local image window W (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4, help="training micro-batch (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per row (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-decode", action="store_true", help="time training steps only")
    parser.add_argument("--attention-backend", choices=("sdpa", "torch"), default="sdpa",
                        help="sdpa (fused, keeps no T x S scores) or torch (materialises them, as the paper's "
                             "PB-relax form does) (default: %(default)s)")
    return parser.parse_args(argv)


class SyntheticText:
    """A text tokenizer of a given size whose every prompt is the same pieces (speed needs no words)."""

    fingerprint = "synthetic"
    vocab_size = TEXT_VOCAB

    def encode(self, text: str) -> list[int]:
        return [(7 * i) % TEXT_VOCAB for i in range(TEXT_TOKENS)]

    def decode(self, ids) -> str:
        return ""


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _measure(grid: int, window: int, args: argparse.Namespace, results) -> None:
    """One row, in a child process: median training-step seconds, peak memory, seconds per decoded image."""
    import torch
    import torch.nn.functional as F

    from data_utils.sequences import image_tokens_of, text2image
    from data_utils.tokenizer import UnifiedTokenizer
    from generation.sampling import SamplingSettings
    from generation.tasks import Geometry, generate_image_codes
    from model import CogViewGPT, ModelConfig
    from model.kernels import set_attention_backend

    set_attention_backend(args.attention_backend)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    tok = UnifiedTokenizer(SyntheticText(), CODEBOOK_SIZE)
    text_ids = tok.encode_text("x")
    generator = torch.Generator().manual_seed(grid)
    sequence = text2image(tok, text_ids, grid, torch.randint(0, CODEBOOK_SIZE, (grid * grid,), generator=generator))
    ids = torch.tensor([sequence.ids] * args.batch_size)
    ids[:, -grid * grid - 1:-1] = torch.randint(0, CODEBOOK_SIZE, (args.batch_size, grid * grid), generator=generator)
    ids, positions = ids.to(device), torch.tensor([sequence.position_ids] * args.batch_size, device=device)

    baseline = _peak_rss_mib()
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, num_layers=args.layers, hidden_size=args.hidden,
                         num_attention_heads=args.heads, max_position_embeddings=len(sequence) + 1,
                         hidden_dropout=0.0, attention_dropout=0.0, image_attention_window=window,
                         image_tokens=image_tokens_of(tok) if window else None)
    model = CogViewGPT(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        logits = model(ids[:, :-1], positions[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up: allocator, kernels, optimizer state
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(args.steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        seconds.append(time.perf_counter() - start)
    memory = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mib() - baseline

    decode_seconds = None
    if not args.no_decode:
        model.eval()
        geometry = Geometry(grid, TEXT_TOKENS, config.max_position_embeddings)
        sync()
        start = time.perf_counter()
        generate_image_codes(model, tok, geometry, [text_ids], 1, 0, SamplingSettings(), 1)
        sync()
        decode_seconds = time.perf_counter() - start
    results.put({"step_s": statistics.median(seconds), "memory_mib": memory, "decode_s": decode_seconds,
                 "tokens": len(sequence), "device": str(device)})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["TQDM_DISABLE"] = "1"  # the children's decoding bars would bury the table
    context = multiprocessing.get_context("spawn")
    rows: list[tuple[int, int, dict[str, Any]]] = []
    for grid in args.grids:
        for window in (0, args.window):
            results = context.Queue()
            child = context.Process(target=_measure, args=(grid, window, args, results))
            child.start()
            measured = results.get()  # before join: a child blocks until its queue is drained
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"the {grid}x{grid} row (window {window}) failed (exit status {child.exitcode})")
            rows.append((grid, window, measured))
    device = rows[0][2]["device"]
    memory = "peak CUDA memory (MiB)" if device.startswith("cuda") else "peak RSS growth (MiB)"
    print(f"{args.layers} layers, hidden {args.hidden}, {args.heads} heads, {TEXT_TOKENS} text tokens, "
          f"batch {args.batch_size}, fp32, {device}, {args.attention_backend} attention, median of {args.steps} "
          f"training steps; decoding: 1 image, batch 1")
    print(f"| grid | tokens | attention | step (s) | {memory} | decode / image (s) | step vs dense | "
          f"memory vs dense | decode vs dense |")
    print("|---|---|---|---|---|---|---|---|---|")
    dense = {grid: measured for grid, window, measured in rows if window == 0}
    for grid, window, m in rows:
        d = dense[grid]
        decode = "-" if m["decode_s"] is None else f"{m['decode_s']:.2f}"
        decode_ratio = "-" if m["decode_s"] is None else f"{m['decode_s'] / d['decode_s']:.2f}x"
        print(f"| {grid}x{grid} | {m['tokens']} | {'dense' if window == 0 else f'window {window}'} | "
              f"{m['step_s']:.3f} | {m['memory_mib']:,.0f} | {decode} | {m['step_s'] / d['step_s']:.2f}x | "
              f"{m['memory_mib'] / max(d['memory_mib'], 1e-9):.2f}x | {decode_ratio} |")


if __name__ == "__main__":
    run_main(main)
