"""VQ-VAE throughput on CPU: images/s of `img2code` and `code2img`, and peak memory, with baselines.

Example:
    python benchmarks/bench_vqvae.py --image-size 64 --batch-size 64 --threads 1

Rows, each measured in a fresh process (so that its peak resident memory is its own):
- ours: the default `VQVAEConfig` (what `train_vqvae.py` trains), batched;
- ours, batch 1 loop: the same model fed one image at a time (what batching buys);
- CogView layout: `cogview_config()` (the released CogView VQ-VAE's architecture, 512 wide at every
  resolution) at the same input, batched.
Weights are random: speed and memory do not depend on their values. fp32, `torch.no_grad()`.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.errors import run_main  # noqa: E402


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _measure(layout: str, image_size: int, batch_size: int, chunk: int, warmup: int, iters: int,
             threads: int, results) -> None:
    """Child process: time encode and decode of `batch_size` images, fed `chunk` at a time."""
    import torch

    from vqvae.api import code2img, img2code
    from vqvae.config import VQVAEConfig, cogview_config
    from vqvae.model import VQVAE

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = VQVAE(cogview_config() if layout == "cogview" else VQVAEConfig()).eval()
    images = torch.rand(batch_size, 3, image_size, image_size)
    codes = img2code(model, images[:1]).expand(batch_size, -1, -1).contiguous()
    rss_before = _peak_rss_mib()

    def timed(run) -> float:
        for _ in range(warmup):
            run()
        start = time.perf_counter()
        for _ in range(iters):
            run()
        return iters * batch_size / (time.perf_counter() - start)

    encode = timed(lambda: [img2code(model, images[i:i + chunk]) for i in range(0, batch_size, chunk)])
    decode = timed(lambda: [code2img(model, codes[i:i + chunk]) for i in range(0, batch_size, chunk)])
    results.put({"encode": encode, "decode": decode, "peak_rss": _peak_rss_mib(),
                 "pass_memory": _peak_rss_mib() - rss_before,
                 "params": sum(p.numel() for p in model.parameters())})


def measure(**kwargs) -> dict:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_measure, kwargs={**kwargs, "results": results})
    process.start()
    result = results.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes before timing")
    parser.add_argument("--iters", type=int, default=3, help="timed passes over the batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    common = dict(image_size=args.image_size, batch_size=args.batch_size, warmup=args.warmup, iters=args.iters,
                  threads=args.threads)
    rows = [("ours", measure(layout="ours", chunk=args.batch_size, **common)),
            ("ours, batch 1 loop", measure(layout="ours", chunk=1, **common)),
            ("CogView layout", measure(layout="cogview", chunk=args.batch_size, **common))]
    ours = rows[0][1]
    print(f"VQ-VAE on CPU, fp32, {args.image_size} px, batch {args.batch_size}, {args.threads} thread(s), "
          f"{args.iters} timed passes after {args.warmup} warm-up")
    print(f"{'model':<20}{'params':>11}{'encode img/s':>14}{'decode img/s':>14}{'peak RSS MiB':>14}"
          f"{'pass MiB':>10}{'ours: enc x':>13}{'dec x':>8}")
    for name, row in rows:
        print(f"{name:<20}{row['params']:>11,}{row['encode']:>14.1f}{row['decode']:>14.1f}{row['peak_rss']:>14.0f}"
              f"{row['pass_memory']:>10.0f}{ours['encode'] / row['encode']:>13.2f}{ours['decode'] / row['decode']:>8.2f}")


if __name__ == "__main__":
    run_main(main)
