"""Text-to-image sampling speed: against the time the arithmetic needs, CogView's hidden-state cache and no cache,
and our decoding with int8 linear layers against fp32.

Example:
    python benchmarks/bench_generate.py                       # both tables: 64 and 1024 image tokens, batch 1, 8, 32
    python benchmarks/bench_generate.py --quick               # the scaling table at 64 image tokens, batch 1 and 8
    python benchmarks/bench_generate.py --only-quick-start --threads 2
    python benchmarks/bench_generate.py --device cuda --max-run-seconds 600
    python benchmarks/bench_generate.py --quick --batches 1 16 --methods ours ours-int8   # int8 against fp32

The first table is the quick start's shape (`scripts/quickstart.py`: 4 layers, hidden 256, 8 heads, pre-LN, 2-D
image positions, 128 image codes and 480 text pieces, an 8 x 8 grid), at batch 1 and 16, unguided and with the quick start's
guidance (cfg 1.5, temperature 0.4): seconds per image of the real `generation` code (median of
--repeats runs) against the time its arithmetic needs, the FLOPs of every forward it runs (`sampling_flops`)
divided by the fp32 matmul rate measured in the same run, and against its weight matmuls alone (the same
`F.linear` calls on the model's weights, timed in the same run: what sampling would cost if everything else
were free, without changing any rounding and so any token), and against reading the weights from memory (the
bytes of the weights a forward multiplies by, once per forward, at the bandwidth one-row matmuls reach on 64 MiB
of weights, timed in the same run: the floor of batch-1 decoding once the weights do not fit in the CPU's cache,
whatever the code). Unguided rows also run CogView's scheme (below) and check that it gives the same tokens.

The second table compares decoding schemes at the benchmark's own (CogView-like) shape.

One randomly initialised model (4 layers, hidden 256, 1089 positions by default: CogView's shape at a
small width) samples `grid x grid` image tokens after a 16-token prompt in up to four ways:
  ours     `generation.decoding`: preallocated keys and values, one prefill, then one token per step.
  cogview  CogView's scheme: keep every layer's input hidden states; each step runs the new token
           through each layer with those states as memory, recomputing LayerNorm and the key/value
           projections of the whole prefix (`TransformerLayer(memory=...)`), then appends its state.
  nocache  a full forward over the whole sequence at every step.
  ours-int8  ours with the linear layers and the output projection dynamically quantised to int8
           (`--precision int8`; CPU only).
All sample with the same filter and seeds, so a full run also checks that the fp32 ones agree token for
token (int8 computes slightly different logits, so its tokens may differ: its column stays empty). A run
whose estimated time exceeds --max-run-seconds is not run to the end: its time is extrapolated from steps
timed at evenly spaced positions (a step's cost depends only on its position), and the table marks it
`estimated`. `--repeats N` keeps the fastest of N runs of each measured row: on a machine shared with
other jobs, the fastest is the one they disturbed least.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_utils.sequences import image_coordinates, image_tokens_of, text2image  # noqa: E402
from data_utils.tokenizer import UnifiedTokenizer  # noqa: E402
from fp16 import quantize_linear_layers  # noqa: E402
from generation.sampling import (SamplingSettings, draw_uniforms, filter_logits, make_generators,  # noqa: E402
                                 mask_disallowed, sample_rows)
from generation.tasks import Geometry, generate_image_codes, image_ids_mask  # noqa: E402
from model import CogViewGPT, ModelConfig  # noqa: E402
from model.config import count_parameters  # noqa: E402
from training.metrics import measure_matmul_flops  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402

PROMPT_TOKENS = 16
METHODS = ("ours", "ours-int8", "cogview", "nocache")
QUICK_START_SHAPE = dict(layers=4, hidden=256, heads=8, codebook_size=128, text_vocab=480, grid=8,
                         layernorm_order="pre", image_positions="2d")
QUICK_START_BATCHES = (1, 16)
QUICK_START_GUIDANCE = {"none": SamplingSettings(top_k=200),
                        "cfg 1.5": SamplingSettings(temperature=0.4, top_k=200, cfg_scale=1.5)}


class SyntheticText:
    """A text tokenizer of a given size whose every prompt is the same `prompt_tokens` pieces (speed needs
    no words); benchmarks/bench_gpu.py uses it too."""

    fingerprint = "synthetic"

    def __init__(self, vocab_size: int, prompt_tokens: int = PROMPT_TOKENS):
        self.vocab_size = vocab_size
        self.prompt_tokens = prompt_tokens

    def encode(self, text: str) -> list[int]:
        return [(7 * i) % self.vocab_size for i in range(self.prompt_tokens)]

    def decode(self, ids) -> str:
        return ""


@dataclass
class Result:
    grid: int
    batch: int
    method: str
    seconds: float
    estimated: bool
    tokens: torch.Tensor | None = None


# --- the two baselines, built from the model's own layers ---------------------------------------------
def _sample(logits: torch.Tensor, allowed: torch.Tensor, settings: SamplingSettings, generators) -> torch.Tensor:
    filtered = filter_logits(mask_disallowed(logits.float(), allowed), settings.temperature, settings.top_k,
                             settings.top_p)
    return sample_rows(filtered, draw_uniforms(generators)[:, 0]).to(logits.device)


class HiddenStateCache:
    """CogView's decoding: per-layer input hidden states are the cache; K and V are recomputed."""

    def __init__(self, model: CogViewGPT):
        self.model = model

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor):
        x = self.model.embed(ids, positions)
        memories = []
        for layer in self.model.transformer.layers:
            memories.append(x)
            x = layer(x, None)  # a square causal attention
        return self.model.logits(x[:, -1:])[:, -1], (memories, ids)

    def step(self, state, token: torch.Tensor, position: torch.Tensor):
        memories, ids = state
        ids = torch.cat([ids, token], dim=1)
        # With 2-D image positions a code's row and column follow from the whole sequence, not from the token alone.
        coordinates = (image_coordinates(ids, self.model.config.image_tokens).last(1)
                       if self.model.config.image_positions == "2d" else None)
        x = self.model.embed(token, position, coordinates)
        grown = []
        for layer, memory in zip(self.model.transformer.layers, memories):
            grown.append(torch.cat([memory, x], dim=1))
            x = layer(x, None, memory=memory)  # one query sees the whole prefix and itself
        return self.model.logits(x)[:, -1], (grown, ids)


class NoCache:
    """A full forward over the whole sequence at every step."""

    def __init__(self, model: CogViewGPT):
        self.model = model

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor):
        return self.model(ids, positions)[:, -1], (ids, positions)

    def step(self, state, token: torch.Tensor, position: torch.Tensor):
        ids, positions = torch.cat([state[0], token], 1), torch.cat([state[1], position], 1)
        return self.model(ids, positions)[:, -1], (ids, positions)


class KVCacheSteps:
    """Our cache driven step by step (only for the per-step timings of estimated runs)."""

    def __init__(self, model: CogViewGPT):
        self.model = model

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, room: int = 1):
        cache = self.model.new_kv_cache(ids.shape[0], ids.shape[1] + room)
        return self.model(ids, positions, kv_cache=cache)[:, -1], cache

    def step(self, cache, token: torch.Tensor, position: torch.Tensor):
        return self.model(token, position, kv_cache=cache)[:, -1], cache


def run_baseline(runner, prompt_ids: torch.Tensor, steps: int, allowed, settings, seeds) -> torch.Tensor:
    generators = make_generators(seeds)
    positions = torch.arange(prompt_ids.shape[1], device=prompt_ids.device).expand_as(prompt_ids)
    logits, state = runner.prefill(prompt_ids, positions)
    out = []
    for t in range(steps):
        token = _sample(logits, allowed, settings, generators).unsqueeze(1)
        out.append(token)
        if t + 1 < steps:
            logits, state = runner.step(state, token, positions[:, -1:] + t + 1)
    return torch.cat(out, 1).cpu()


# --- timing -----------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    value = fn()
    _sync(device)
    return time.perf_counter() - start, value


def fastest(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """`timed` of the fastest of `repeats` runs (every run returns the same value: the seeds are fixed)."""
    return min((timed(fn, device) for _ in range(repeats)), key=lambda run: run[0])


def estimate_seconds(model: CogViewGPT, method: str, batch: int, prompt_len: int, steps: int, vocab: int,
                     device: torch.device, samples: int) -> float:
    """Prefill + sum of per-step costs, interpolated between steps timed at `samples` positions, plus
    the sampling cost of a `[batch, vocab]` step."""
    runner = {"ours": KVCacheSteps, "ours-int8": KVCacheSteps, "cogview": HiddenStateCache,
              "nocache": NoCache}[method](model)
    generator = torch.Generator().manual_seed(0)

    def random_ids(length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, vocab, (batch, length), generator=generator).to(device)
        return ids, torch.arange(length, device=device).expand(batch, length)

    prefill_seconds, _ = timed(lambda: runner.prefill(*random_ids(prompt_len)), device)
    at = np.unique(np.linspace(0, steps - 1, samples).round().astype(int))
    costs = []
    for t in at:
        _, state = runner.prefill(*random_ids(prompt_len + int(t)))
        token, position = random_ids(1)[0], torch.full((batch, 1), prompt_len + int(t), device=device)
        seconds, _ = timed(lambda: runner.step(state, token, position), device)
        costs.append(seconds)
    logits = torch.randn(batch, vocab, device=device)
    allowed = torch.ones(vocab, dtype=torch.bool, device=device)
    generators = make_generators(range(batch))
    sample_seconds, _ = timed(lambda: _sample(logits, allowed, SamplingSettings(), generators), device)
    per_step = np.interp(np.arange(steps), at, costs)
    return prefill_seconds + float(per_step.sum()) + steps * sample_seconds


def sampling_flops(config: ModelConfig, prompt_len: int, steps: int) -> float:
    """FLOPs of the forwards that make one image: the prompt's prefill and the `steps - 1` sampled tokens fed
    back (the last is never fed). A token fed with S keys in its context costs 2 FLOPs per matmul weight
    (position embeddings are a lookup, not a matmul) plus 4 * hidden * S per layer for Q K^T and P V."""
    matmul_params = count_parameters(config) - config.max_position_embeddings * config.hidden_size
    contexts = range(1, prompt_len + steps)  # the keys each fed token sees, itself included
    return sum(2.0 * matmul_params + 4.0 * config.num_layers * config.hidden_size * s for s in contexts)


def step_linears(model: CogViewGPT) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of every matmul a forward runs on the model's weights: each layer's four projections and
    the tied output projection."""
    return [(m.weight, m.bias) for layer in model.transformer.layers
            for m in (layer.attention.query_key_value, layer.attention.dense, layer.mlp.dense_h_to_4h,
                      layer.mlp.dense_4h_to_h)] + [(model.word_embeddings.weight, None)]


def weight_matmul_seconds(model: CogViewGPT, rows: int, prompt_len: int, steps: int, device: torch.device,
                          repeats: int) -> float:
    """Seconds of the weight matmuls alone of one decoding batch of `rows` rows (the prefill, whose logits cover
    every prompt position, then `steps - 1` one-token forwards), with the model's own weights at the same
    shapes: the loop's time if everything else were free and no rounding changed (medians of `repeats`)."""
    linears = step_linears(model)

    def forward_seconds(tokens: int) -> float:
        inputs = {w.shape[1]: torch.randn(rows, tokens, w.shape[1], device=device) for w, _ in linears}
        return float(np.median([timed(lambda: [torch.nn.functional.linear(inputs[w.shape[1]], w, b)
                                               for w, b in linears], device)[0] for _ in range(repeats)]))

    return forward_seconds(prompt_len) + (steps - 1) * forward_seconds(1)


# Bytes streamed to measure memory bandwidth: several times any CPU's last-level cache, so none of it stays there.
STREAM_BYTES, STREAM_MATRIX = 64 * 2**20, (1024, 256)


def streaming_bandwidth(device: torch.device, repeats: int) -> float:
    """Bytes per second at which one-row matmuls read fp32 weights that do not fit in any cache: how fast a
    batch-1 decoding step reads its weights once they outgrow the cache (fastest of `repeats` sweeps)."""
    matrices = [torch.randn(STREAM_MATRIX, device=device) for _ in range(STREAM_BYTES // (4 * np.prod(STREAM_MATRIX)))]
    row = torch.randn(1, STREAM_MATRIX[1], device=device)
    seconds, _ = fastest(lambda: [torch.nn.functional.linear(row, m) for m in matrices], device, repeats + 1)
    return STREAM_BYTES / seconds


def step_weight_bytes(model: CogViewGPT) -> int:
    """Bytes of the weights every one-token forward multiplies by (`step_linears`; position and row/column
    embeddings are a lookup of one row)."""
    return sum(t.numel() * t.element_size() for pair in step_linears(model) for t in pair if t is not None)


def quick_start_table(args: argparse.Namespace) -> None:
    """Seconds per image at the quick start's shape, against the arithmetic's time and CogView's scheme."""
    device = torch.device(args.device)
    shape = QUICK_START_SHAPE
    tok = UnifiedTokenizer(SyntheticText(shape["text_vocab"]), shape["codebook_size"])
    config = ModelConfig(vocab_size=tok.vocab_size, num_layers=shape["layers"], hidden_size=shape["hidden"],
                         num_attention_heads=shape["heads"], max_position_embeddings=args.positions,
                         hidden_dropout=0.0, attention_dropout=0.0, layernorm_order=shape["layernorm_order"],
                         image_positions=shape["image_positions"], image_tokens=image_tokens_of(tok))
    torch.manual_seed(0)
    model = CogViewGPT(config).to(device).eval()
    grid, steps = shape["grid"], shape["grid"] ** 2
    geometry = Geometry(grid, PROMPT_TOKENS, args.positions)
    text_ids = tok.encode_text("x")
    prompt = text2image(tok, text_ids, grid)
    uncond = text2image(tok, [], grid)
    matmul_rate = measure_matmul_flops(device, torch.float32)
    bandwidth, weight_bytes = streaming_bandwidth(device, args.repeats), step_weight_bytes(model)
    print(f"quick-start shape: {shape['layers']} layers, hidden {shape['hidden']}, {shape['heads']} heads, "
          f"vocabulary {tok.vocab_size}, {steps} image tokens after a {len(prompt)}-token prompt; top-k 200; "
          f"{torch.get_num_threads()} CPU threads; fp32 matmul rate {matmul_rate / 1e9:.1f} GFLOP/s; a step reads "
          f"{weight_bytes / 2**20:.1f} MiB of weights, memory streams {bandwidth / 1e9:.1f} GB/s "
          f"(medians of {args.repeats} runs)")
    print("| guidance | batch | ours s/image | arithmetic s/image | ours / arithmetic | weight matmuls alone s/image "
          "| ours / matmuls | weights from memory s/image | cogview s/image | ours vs cogview | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    allowed = image_ids_mask(tok).to(device)
    for guidance, settings in QUICK_START_GUIDANCE.items():
        flops = sampling_flops(config, len(prompt), steps)
        if settings.uses_guidance:
            flops += sampling_flops(config, len(uncond), steps)
        for batch in QUICK_START_BATCHES:
            with torch.inference_mode():
                generate_image_codes(model, tok, geometry, [text_ids], batch, 0, settings, 2 * batch)  # warm-up
                runs = [timed(lambda: generate_image_codes(model, tok, geometry, [text_ids], batch, 0, settings,
                                                           2 * batch), device) for _ in range(args.repeats)]
                ours = float(np.median([seconds for seconds, _ in runs])) / batch
                arithmetic = flops / matmul_rate
                rows = batch * (2 if settings.uses_guidance else 1)
                matmuls = weight_matmul_seconds(model, rows, len(prompt), steps, device, 5 * args.repeats) / batch
                # Every forward (the prefill and steps - 1 fed tokens) reads each weight once, for all its rows.
                from_memory = steps * weight_bytes / bandwidth / batch
                cogview, same = "-", "-"
                if not settings.uses_guidance:  # the baseline has no guidance
                    prompt_ids = torch.tensor([prompt.ids] * batch, device=device)
                    baseline = [timed(lambda: run_baseline(HiddenStateCache(model), prompt_ids, steps, allowed,
                                                           settings, range(batch)), device)
                                for _ in range(args.repeats)]
                    cogview_seconds = float(np.median([seconds for seconds, _ in baseline])) / batch
                    cogview = f"{cogview_seconds:.4f} | {cogview_seconds / ours:.1f}x"
                    same = "yes" if torch.equal(baseline[0][1], runs[0][1].view(batch, -1)) else "NO"
                else:
                    cogview = "- | -"
            print(f"| {guidance:8s} | {batch:5d} | {ours:.4f} | {arithmetic:.4f} | {ours / arithmetic:.1f}x | "
                  f"{matmuls:.4f} | {ours / matmuls:.1f}x | {from_memory:.4f} | {cogview} | {same} |", flush=True)


def benchmark(args: argparse.Namespace) -> list[Result]:
    device = torch.device(args.device)
    tok = UnifiedTokenizer(SyntheticText(args.text_vocab), args.codebook_size)
    config = ModelConfig(vocab_size=tok.vocab_size, num_layers=args.layers, hidden_size=args.hidden,
                         num_attention_heads=args.heads, max_position_embeddings=args.positions,
                         hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = CogViewGPT(config).to(device).eval()
    int8_model = quantize_linear_layers(model) if "ours-int8" in args.methods else None
    settings = SamplingSettings(top_k=args.top_k)
    results = []
    for grid in args.grids:
        geometry = Geometry(grid, PROMPT_TOKENS, args.positions)
        text_ids = tok.encode_text("x")
        prompt = text2image(tok, text_ids, grid)
        steps = grid * grid
        for batch in args.batches:
            prompt_ids = torch.tensor([prompt.ids] * batch, device=device)
            allowed = image_ids_mask(tok).to(device)
            for method in args.methods:
                runs = int8_model if method == "ours-int8" else model
                with torch.inference_mode():
                    estimate = estimate_seconds(runs, method, batch, len(prompt), steps, tok.vocab_size, device,
                                                args.sampled_steps)
                    if estimate > args.max_run_seconds:
                        results.append(Result(grid, batch, method, estimate, True))
                    elif method in ("ours", "ours-int8"):
                        seconds, codes = fastest(lambda: generate_image_codes(
                            runs, tok, geometry, [text_ids], batch, 0, settings, batch), device, args.repeats)
                        results.append(Result(grid, batch, method, seconds, False, codes.view(batch, -1)))
                    else:
                        runner = HiddenStateCache(model) if method == "cogview" else NoCache(model)
                        seconds, codes = fastest(lambda: run_baseline(runner, prompt_ids, steps, allowed, settings,
                                                                      range(batch)), device, args.repeats)
                        results.append(Result(grid, batch, method, seconds, False, codes))
                print(_row(results[-1], results), flush=True)
    return results


def _row(result: Result, results: list[Result]) -> str:
    ours = next(r for r in results if (r.grid, r.batch, r.method) == (result.grid, result.batch, "ours"))
    tokens = result.batch * result.grid ** 2
    same = ""
    if result.method not in ("ours", "ours-int8") and result.tokens is not None and ours.tokens is not None:
        same = "yes" if torch.equal(result.tokens, ours.tokens) else "NO"
    return (f"| {result.grid ** 2:5d} | {result.batch:5d} | {result.method:8s} | {result.seconds:10.2f} | "
            f"{result.batch / result.seconds:9.3f} | {tokens / result.seconds:9.1f} | "
            f"{result.seconds / ours.seconds:8.2f}x | {'estimated' if result.estimated else 'measured':9s} | "
            f"{same:4s} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="the scaling table at 64 image tokens (at batch 1 and 8 unless --batches)")
    parser.add_argument("--only-quick-start", action="store_true", help="print the quick-start table only")
    parser.add_argument("--batches", type=int, nargs="+", metavar="B",
                        help="batch sizes of the scaling table (default: 1 8 with --quick, else 1 8 32)")
    parser.add_argument("--methods", nargs="+", choices=METHODS,
                        help="what the scaling table times; ours is the base of the ratio column and always runs "
                             "(default: all; ours-int8 only on the CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--positions", type=int, default=1089, help="position embeddings (CogView's 1089)")
    parser.add_argument("--codebook-size", type=int, default=512, help="image codes (our default VQ-VAE)")
    parser.add_argument("--text-vocab", type=int, default=1000, help="text pieces")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--max-run-seconds", type=float, default=60.0,
                        help="runs estimated to take longer are extrapolated, not run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs of each row: the quick-start table shows their median, the scaling table "
                             "the fastest (the run other jobs disturbed least) (default: %(default)s)")
    parser.add_argument("--sampled-steps", type=int, default=6,
                        help="positions timed for an estimate (default: %(default)s)")
    args = parser.parse_args()
    args.grids, batches = ((8,), (1, 8)) if args.quick else ((8, 32), (1, 8, 32))
    args.batches = args.batches or batches
    if min(args.batches) < 1 or args.repeats < 1:
        raise UserError(f"--batches and --repeats must be positive, got {args.batches} and {args.repeats}")
    chosen = args.methods or [m for m in METHODS if m != "ours-int8" or torch.device(args.device).type == "cpu"]
    args.methods = ["ours"] + [m for m in METHODS if m in chosen and m != "ours"]
    if args.threads:
        torch.set_num_threads(args.threads)
    quick_start_table(args)
    if args.only_quick_start:
        return
    print(f"\nmodel: {args.layers} layers, hidden {args.hidden}, {args.heads} heads, {args.positions} positions; "
          f"device {args.device}, {torch.get_num_threads()} CPU threads; prompt {PROMPT_TOKENS} text tokens; "
          f"top-k {args.top_k}")
    print("| image tokens | batch | method | seconds | images/s | tokens/s | time vs ours | how | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    benchmark(args)


if __name__ == "__main__":
    run_main(main)
