"""The autoregressive loop: left-padded prompts, one prefill, then one token per step from a KV cache.

`decode` takes any number of independent `DecodeRequest`s (a prompt, a seed, optionally an
unconditional prompt for guidance and tokens fixed in advance) that share one `DecodeSpec` (how many
tokens, which ids are allowed, how to sample, when to stop). It packs requests into batches of at most
`max_batch_rows` rows, where a guided request takes two rows (conditional and unconditional, run side
by side in the same forward), and halves the batch and retries when the device runs out of memory.

Why the result of a request never depends on its batch: every request draws its random numbers from
its own generator seeded with its own seed, one uniform per sampled token (`sampling.draw_uniforms`);
left padding is masked out and positions restart at 0 on each row's first real token, so a padded row
computes what it would compute alone (up to floating-point summation order in the kernels).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from data_utils.padding import pad_sequences
from data_utils.sequences import TokenSequence
from generation.sampling import (LogitFilter, SamplingSettings, cfg_combine, draw_uniforms, make_generators,
                                 mask_disallowed, sample_rows)
from utils.errors import UserError
from utils.logging import get_logger

logger = get_logger(__name__)

DEFAULT_MAX_BATCH_ROWS = 32  # sequences per forward unless a caller says otherwise (out-of-memory halves it)
SAMPLE = -1  # value in `DecodeRequest.forced` for a token that is sampled rather than fixed


@dataclass
class DecodeRequest:
    """One sequence to continue.

    `forced` (length `DecodeSpec.steps`) fixes some of the new tokens in advance (super-resolution
    windows reuse codes already generated in their overlap); `SAMPLE` marks those to sample. Fixed
    tokens are fed to the model like sampled ones but draw nothing from the generator.
    """

    prompt: TokenSequence
    seed: int
    uncond_prompt: TokenSequence | None = None
    forced: torch.Tensor | None = None


@dataclass
class DecodeSpec:
    """What every request of one `decode` call shares."""

    steps: int                       # new tokens per request (at most; fewer when `stop_id` comes)
    allowed: torch.Tensor            # [V] bool: the ids that may be sampled
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    stop_id: int | None = None       # a row that samples this id is finished (kept as its last token)
    pad_id: int = 0
    # The ids allowed next given a row's new tokens so far ([V] bool), in place of `allowed`: a grammar, such
    # as a grounded caption's (location slots take location tokens only). None: `allowed` at every step.
    constraint: Callable[[list[int]], torch.Tensor] | None = None


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's `torch.OutOfMemoryError`, or the plain RuntimeError other backends raise."""
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _next_tokens(logits: torch.Tensor, fixed: torch.Tensor, uniforms: torch.Tensor, allowed: torch.Tensor,
                 logit_filter: LogitFilter, cfg_scale: float) -> torch.Tensor:
    """One step's tokens `[live]`: the fixed ones where `fixed` holds a token, else drawn from `logits`
    (`[live]` rows, followed by their unconditional twins when guided) at each row's own uniform. Every row
    is sampled (rows are independent, so the others' draws are unaffected) and a fixed token then replaces
    the draw: no host-side look at which rows sample."""
    live = len(fixed)
    cond = logits[:live]
    guided = cfg_combine(cond, logits[live:], cfg_scale) if len(logits) > live else cond
    sampled = sample_rows(logit_filter(mask_disallowed(guided, allowed)), uniforms)
    return torch.where(fixed == SAMPLE, sampled, fixed)


def _fixed_runs(sampled: torch.Tensor) -> list[int]:
    """For every step, how many steps from it on every row has fixed in advance (0 where a row samples);
    `sampled` is `[rows, steps]` bool. Worked out once per set of live rows, so the loop needs no host sync."""
    everyone_fixed = (~sampled).all(dim=0).tolist()
    runs = [0] * (len(everyone_fixed) + 1)
    for step in reversed(range(len(everyone_fixed))):
        runs[step] = runs[step + 1] + 1 if everyone_fixed[step] else 0
    return runs[:-1]


@torch.inference_mode()
def decode_batch(model: torch.nn.Module, requests: Sequence[DecodeRequest], spec: DecodeSpec,
                 on_tokens: Callable[[int], None] = lambda n: None) -> list[torch.Tensor]:
    """Continue every request in ONE batch; returns each request's new tokens (1-D, on the CPU).

    Rows are `[conditional requests; unconditional twins]` when guidance is on. The cache is filled
    once by the prefill; each later forward feeds only the new tokens: one sampled token, or a run of
    tokens every live row has fixed in advance (fed in a single forward). A row that samples
    `stop_id` leaves the batch (its cache rows are dropped with `KVCache.select`).

    Everything a step needs that does not depend on the tokens is prepared before the first step: the
    uniforms of every step (`draw_uniforms`), the positions fed, the filter's per-row tensors and which
    steps are fixed runs. Image generation (no `stop_id`) therefore looks at no tensor on the host
    between steps, and a step's sampling costs only the operations on its logits.
    """
    device = model_device(model)
    settings = spec.settings
    guided = settings.uses_guidance
    if guided and any(r.uncond_prompt is None for r in requests):
        raise ValueError("guidance needs an unconditional prompt in every request")
    prompts = [r.prompt for r in requests] + ([r.uncond_prompt for r in requests] if guided else [])
    batch = pad_sequences([p.ids for p in prompts], [p.position_ids for p in prompts], spec.pad_id, "left").to(device)
    ids, positions, real = batch.ids, batch.positions, batch.real
    num = len(requests)
    forced = torch.full((num, spec.steps), SAMPLE, dtype=torch.long)
    for row, request in enumerate(requests):
        if request.forced is not None:
            if request.forced.shape != (spec.steps,):
                raise ValueError(f"forced tokens must have shape ({spec.steps},), got {tuple(request.forced.shape)}")
            forced[row] = request.forced
    sampled = forced == SAMPLE
    # The j-th sampled token of a request takes its generator's j-th uniform; a fixed token takes none.
    draws = draw_uniforms(make_generators([r.seed for r in requests]), spec.steps)
    uniforms = draws.gather(1, (sampled.long().cumsum(1) - 1).clamp(min=0)).to(device)   # [live, steps]
    live_forced = forced.to(device)                                                         # [live, steps]
    runs = _fixed_runs(sampled)
    allowed = spec.allowed.to(device)
    vocab = allowed.shape[0]

    def new_filter(rows: int) -> LogitFilter:
        return LogitFilter(rows, vocab, settings.temperature, settings.top_k, settings.top_p, device)

    logit_filter = new_filter(num)
    prompt_len = ids.shape[1]
    # Under autocast the keys and values come out in the autocast dtype: store them so (half the memory).
    autocast = torch.is_autocast_enabled(device.type)
    cache = model.new_kv_cache(len(prompts), prompt_len + spec.steps,
                               dtype=torch.get_autocast_dtype(device.type) if autocast else None)
    key_mask = torch.ones((len(prompts), prompt_len + spec.steps), dtype=torch.bool, device=device)
    key_mask[:, :prompt_len] = real
    # Positions of every token fed after the prompt, `[rows, steps]`: each row counts on from its last.
    fed_positions = positions[:, -1:] + 1 + torch.arange(spec.steps, device=device)
    out = torch.full((num, spec.steps), spec.pad_id, dtype=torch.long, device=device)
    produced = torch.full((num,), spec.steps, dtype=torch.long)  # tokens written per request
    live = torch.arange(num)                                      # requests still in the batch, in row order

    padded = not bool(real.all())  # without padding the model needs no mask (a faster attention kernel)

    def forward(tokens: torch.Tensor, step_positions: torch.Tensor) -> torch.Tensor:
        """Feed `[rows, T]` tokens; the next-token logits `[rows, V]` after the last of them."""
        end = cache.length + tokens.shape[1]
        logits = model(tokens, step_positions, key_padding_mask=key_mask[:, :end] if padded else None, kv_cache=cache)
        return logits[:, -1].float()

    logits = forward(ids, positions)
    step = 0
    while step < spec.steps:
        run = max(runs[step], 1)
        if runs[step]:
            tokens = live_forced[:, step:step + run]
        else:
            step_allowed = allowed
            if spec.constraint is not None:  # a grammar (grounded captions): each row's allowed ids follow its text
                step_allowed = torch.stack([spec.constraint(out[row, :step].tolist()) for row in live.tolist()]
                                           ).to(device)
            tokens = _next_tokens(logits, live_forced[:, step], uniforms[:, step], step_allowed, logit_filter,
                                  settings.cfg_scale).unsqueeze(1)
        out[live if len(live) < num else slice(None), step:step + run] = tokens
        on_tokens(run * len(live))
        step += run
        if step >= spec.steps:
            break
        if spec.stop_id is not None:
            keep = ~(tokens == spec.stop_id).any(dim=1).cpu()
            if not bool(keep.all()):
                produced[live[~keep]] = step
                live = live[keep]
                if len(live) == 0:
                    break
                rows = keep.nonzero().flatten()
                rows = torch.cat([rows, rows + len(keep)]) if guided else rows
                rows, keep = rows.to(device), keep.to(device)
                cache = cache.select(rows)
                key_mask, fed_positions, tokens = key_mask[rows], fed_positions[rows], tokens[keep]
                live_forced, uniforms = live_forced[keep], uniforms[keep]
                runs, logit_filter = _fixed_runs(sampled[live]), new_filter(len(live))
        feed = torch.cat([tokens, tokens]) if guided else tokens
        logits = forward(feed, fed_positions[:, step - run:step])
    out = out.cpu()
    return [out[row, :produced[row]] for row in range(num)]


def map_in_batches(count: int, per_batch: int, run: Callable[[list[int]], list], order: Sequence[int] | None = None,
                   rows_per_item: int = 1) -> list:
    """`run` over chunks of at most `per_batch` item indices; results in item order.

    On out-of-memory the chunk size is halved for the rest of the call and the failed chunk runs
    again; `run` must therefore depend only on the items it is given (true here: seeds are per item).
    """
    order = list(range(count)) if order is None else list(order)
    results: list = [None] * count
    start = 0
    while start < len(order):
        chunk = order[start:start + per_batch]
        try:
            outputs = run(chunk)
        except (RuntimeError, torch.OutOfMemoryError) as err:
            if not is_out_of_memory(err):
                raise
            if len(chunk) == 1:
                raise UserError("out of memory even with one item per batch; use a smaller model, "
                                "a lower --precision or a device with more memory") from None
            per_batch = max(1, len(chunk) // 2)
            logger.warning("out of memory at %d rows per forward; retrying with %d",
                           len(chunk) * rows_per_item, per_batch * rows_per_item)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        for index, output in zip(chunk, outputs):
            results[index] = output
        start += len(chunk)
    return results


def decode(model: torch.nn.Module, requests: Sequence[DecodeRequest], spec: DecodeSpec, max_batch_rows: int,
           description: str = "decoding") -> list[torch.Tensor]:
    """Continue all `requests`, packed `max_batch_rows` rows per forward (a guided request is 2 rows).

    Requests of similar prompt length are batched together (less padding); results come back in
    request order. Out-of-memory halves the batch (`map_in_batches`) without changing any output.
    """
    if max_batch_rows < 1:
        raise UserError(f"--max-inference-batch-size must be >= 1, got {max_batch_rows}")
    rows_per_request = 2 if spec.settings.uses_guidance else 1
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt))
    with tqdm(total=len(requests) * spec.steps, desc=description, unit="tok", leave=False) as bar:
        def run(chunk: list[int]) -> list[torch.Tensor]:
            progress_before = bar.n
            try:
                outputs = decode_batch(model, [requests[i] for i in chunk], spec, on_tokens=bar.update)
            except BaseException:
                bar.n = progress_before
                bar.refresh()
                raise
            bar.update(sum(spec.steps - len(o) for o in outputs))  # rows that stopped early
            return outputs

        return map_in_batches(len(requests), max(1, max_batch_rows // rows_per_request), run, order,
                              rows_per_request)
