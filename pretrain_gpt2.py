"""Pretrain the CogView-style GPT on preprocessed token shards with DeepSpeed.

Example (one process: a CPU or one GPU):
    python pretrain_gpt2.py --train-data runs/data/train --valid-data runs/data/val \\
        --num-layers 4 --hidden-size 256 --num-attention-heads 8 --train-iters 2000 --batch-size 16 \\
        --task-mix text2image=0.7,image2text=0.2,super_resolution=0.1 --save runs/gpt --bf16

Several GPUs: `torchrun --nproc_per_node 8 pretrain_gpt2.py ...` or `deepspeed pretrain_gpt2.py ...`
(scripts/pretrain_single_node.sh, scripts/pretrain_multiple_nodes.sh). After a stop, run the same
command with `--load runs/gpt` to continue exactly where the last checkpoint left off.
Flags, launch modes and logs: docs/training.md; checkpoint layout and resume: docs/checkpoints.md.
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import mpu

mpu.prepare_accelerator_env()  # DeepSpeed picks its accelerator once, on import: the CPU when there is no GPU

import deepspeed  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from tqdm import tqdm  # noqa: E402
from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

from arguments import check_flags_match_config, model_config_from_args, parse_training_args  # noqa: E402
from checkpoints.trackers import TRACKER_FILE, read_latest_iteration  # noqa: E402
from data_utils.dataset import TaskSequenceDataset, positions_needed  # noqa: E402
from data_utils.sequences import image_tokens_of  # noqa: E402
from data_utils.shards import RowFormat, ShardedRows, read_manifest  # noqa: E402
from data_utils.tokenizer import UnifiedTokenizer  # noqa: E402
from fp16 import torch_dtype  # noqa: E402
from model.config import ModelConfig, flops_per_token  # noqa: E402
from model.config_file import CONFIG_FILE, read_model_config, write_model_config  # noqa: E402
from model.gpt import CogViewGPT  # noqa: E402
from model.kernels import set_attention_backend  # noqa: E402
from mpu.tp_checkpoint import check_resume_tensor_parallel_size  # noqa: E402
from training import checkpointing  # noqa: E402
from training.data import MicroBatchPositions, train_loader, validation_batches  # noqa: E402
from training.ds_config import DeepSpeedSetup, build_deepspeed_config  # noqa: E402
from training.loss import SUM_FIELDS, next_token_loss, summarize  # noqa: E402
from training.lr_schedule import LRSchedule, WarmupDecayScheduler  # noqa: E402
from training.metrics import measure_matmul_flops, throughput  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.logging import TensorBoardLogger, get_logger  # noqa: E402

logger = get_logger("pretrain_gpt2")

# Entries appended to the loss sums of an interval: tokens and model FLOPs, all-reduced together.
_TOKENS, _FLOPS = len(SUM_FIELDS), len(SUM_FIELDS) + 1


@dataclass
class TrainingData:
    tokenizer: UnifiedTokenizer
    train: TaskSequenceDataset
    valid: dict[str, TaskSequenceDataset]  # one dataset per task, so every task is always measured
    positions_needed: int
    metadata: dict[str, Any]  # tokenizer and VQ-VAE of the data, copied into model_config.json


# ---------------------------------------------------------------- set-up

def load_data(args: argparse.Namespace, position_layout: str) -> TrainingData:
    """The tokenizer recorded in the training data's manifest, and the datasets built with it."""
    manifest = read_manifest(args.train_data)
    recorded = manifest["tokenizer"]
    if not recorded.get("path") or not Path(recorded["path"]).is_file():
        raise UserError(f"the text tokenizer recorded in {args.train_data}/manifest.json ({recorded.get('path')}) "
                        f"is missing; restore it or re-run preprocess_data.py")
    tokenizer = UnifiedTokenizer.from_files(recorded["path"], int(recorded["codebook_size"]),
                                            int(recorded.get("location_bins", 0)))
    train_rows = ShardedRows(args.train_data, tokenizer=tokenizer)
    train = TaskSequenceDataset(train_rows, tokenizer, args.task_mix, args.seed, args.cfg_drop_prob, position_layout,
                                args.grid_mix, understanding_turns=args.understanding_turns)
    for task in train.tasks:  # build one sample of each task here: a bad setting fails in one line, not in a worker
        TaskSequenceDataset(train_rows, tokenizer, {task: 1.0}, args.seed, position_layout=position_layout,
                            grid_mix=args.grid_mix)[0]
    valid = {}
    if args.valid_data is not None:
        valid_rows = ShardedRows(args.valid_data, tokenizer=tokenizer,
                                 vqvae_fingerprint=manifest["vqvae"]["fingerprint"])
        if "super_resolution" in train.tasks and valid_rows.format.sr_condition != train_rows.format.sr_condition:
            raise UserError(f"{args.valid_data} holds the {valid_rows.format.sr_condition} super-resolution condition, "
                            f"{args.train_data} the {train_rows.format.sr_condition} one; preprocess both with the "
                            f"same --sr-condition")
        if position_layout == "fixed-image" and valid_rows.format.text_max_tokens != train_rows.format.text_max_tokens:
            raise UserError(f"{args.valid_data} keeps {valid_rows.format.text_max_tokens} text tokens, {args.train_data} "
                            f"{train_rows.format.text_max_tokens}; with --position-layout fixed-image both must match "
                            f"(preprocess with the same --text-max-tokens)")
        valid = {task: TaskSequenceDataset(valid_rows, tokenizer, {task: 1.0}, args.seed, cfg_drop_prob=0.0,
                                           position_layout=position_layout)
                 for task in train.tasks}
    return TrainingData(tokenizer=tokenizer, train=train, valid=valid,
                        positions_needed=positions_needed(train_rows.format, args.task_mix, args.understanding_turns),
                        metadata={"tokenizer": recorded, "vqvae": manifest["vqvae"],
                                  "data": {**data_geometry(train_rows.format), "tasks": list(train.tasks),
                                           "sr_windows": train.trains_windows,
                                           **({"grid_mix": [list(g) for g in train.grid_mix]} if train.grid_mix
                                              else {})}})


def data_geometry(row_format: RowFormat) -> dict[str, int | str | None]:
    """The sizes generation must reproduce (code grid, text budget, low-res grid) and super-resolution's
    condition (what its inputs become before the model reads them), for model_config.json."""
    return {"image_grid": row_format.image_grid, "text_max_tokens": row_format.text_max_tokens,
            "lowres_grid": row_format.lowres_grid, "sr_condition": row_format.sr_condition}


def position_layout_to_train(args: argparse.Namespace, resume_iteration: int | None) -> str:
    """The flag's layout for a new run; a resumed run keeps its checkpoint's (a contradicting flag is
    refused by `resolve_model_config`)."""
    if resume_iteration is None:
        return args.position_layout
    fields, _ = read_model_config(Path(args.load) / str(resume_iteration) / CONFIG_FILE)
    return ModelConfig.from_dict(fields).position_layout


def resolve_model_config(args: argparse.Namespace, data: TrainingData, resume_iteration: int | None) -> ModelConfig:
    """A new model's config from the flags, or the checkpoint's when resuming (contradicting flags refused)."""
    if resume_iteration is None:
        config = model_config_from_args(args, data.tokenizer.vocab_size, data.positions_needed,
                                        image_tokens_of(data.tokenizer))
    else:
        source = Path(args.load) / str(resume_iteration)
        fields, metadata = read_model_config(source / CONFIG_FILE)
        config = ModelConfig.from_dict(fields)
        check_flags_match_config(args, config.to_dict(), str(source))
        trained_with = metadata.get("tokenizer", {}).get("fingerprint")
        if trained_with != data.tokenizer.fingerprint():
            raise UserError(f"the checkpoint in {source} was trained with tokenizer {trained_with} but "
                            f"{args.train_data} uses {data.tokenizer.fingerprint()}; resume on data of the same "
                            f"tokenizer")
    if config.vocab_size != data.tokenizer.vocab_size:
        raise UserError(f"the model has {config.vocab_size} token ids but the data's tokenizer has "
                        f"{data.tokenizer.vocab_size}")
    if config.max_position_embeddings < data.positions_needed:
        raise UserError(f"the tasks {', '.join(data.train.tasks)} need {data.positions_needed} positions but the "
                        f"model has {config.max_position_embeddings}; raise --max-position-embeddings")
    return config


def dropout_seed(seed: int, rank: int) -> int:
    """Each replica's dropout stream, distinct from the stream that initialised the weights (the ranks of
    one tensor-parallel replica share it, so their replicated activations stay identical)."""
    return int(np.random.SeedSequence([seed, rank, 0xD509]).generate_state(1)[0])


def build_engine(args: argparse.Namespace, config: ModelConfig, ds_config: dict[str, Any]):
    """The model (initialised from `--seed` on every rank), AdamW and our lr schedule inside DeepSpeed.

    Under ZeRO-3 the model is partitioned as it is built (`mpu.build_partitioned`), so no rank ever holds
    all of it. The output projection reads the word embedding outside the embedding module's own
    forward; DeepSpeed detects such parameters and keeps them gathered (the tests compare ZeRO-3 with
    ZeRO-0 step by step). With `--tensor-parallel-size N` > 1 the engine splits every layer across the
    N ranks of a replica (`mpu.tensor_parallel`).
    """
    torch.manual_seed(args.seed)
    model = mpu.build_partitioned(lambda: CogViewGPT(config), ds_config)
    model.checkpoint_activations = args.checkpoint_activations
    groups = mpu.parallel_groups()
    if groups is not None:
        mpu.parallelize_vocabulary(model, groups)
    schedule = LRSchedule(lr=args.lr, total_steps=args.train_iters, warmup_fraction=args.warmup,
                          min_lr_ratio=args.min_lr_ratio, decay_style=args.lr_decay_style)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, args.lr, args.weight_decay),
                                           lr_scheduler=lambda optimizer: WarmupDecayScheduler(optimizer, schedule),
                                           config=ds_config, mpu=groups)
    return engine


# ---------------------------------------------------------------- steps

def forward_loss(engine, batch: Mapping[str, Any], config: ModelConfig, pad_id: int, codebook_size: int,
                 txt_loss_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The micro-batch loss and its detached sums (loss parts, tokens, model FLOPs)."""
    ids = batch["input_ids"].to(engine.device, non_blocking=True)
    positions = batch["position_ids"].to(engine.device, non_blocking=True)
    logits = engine(ids[:, :-1], positions[:, :-1])
    parts = next_token_loss(logits, ids[:, 1:], pad_id, codebook_size, txt_loss_scale)
    batch_size, length = ids[:, :-1].shape
    counts = torch.tensor([batch_size * length, flops_per_token(config, length) * batch_size * length],
                          dtype=torch.float64, device=parts.sums.device)
    return parts.loss, torch.cat([parts.sums, counts])


def plain_grad_norm(engine) -> float | None:
    """The global gradient norm, read before the optimizer step, for the one configuration in which
    DeepSpeed keeps it to itself: ZeRO stage 0 in fp32, where the torch optimizer runs unwrapped and
    the (already all-reduced) gradients sit on the parameters. None for every other configuration."""
    if engine.zero_optimization_stage() > 0 or engine.fp16_enabled() or engine.bfloat16_enabled():
        return None
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else None


def micro_step(engine, batch: Mapping[str, Any], config: ModelConfig, pad_id: int, codebook_size: int,
               txt_loss_scale: float) -> tuple[torch.Tensor, float | None]:
    """Forward, backward and `engine.step()` (an optimizer step at accumulation boundaries).

    Returns the detached sums of `forward_loss` and, after an optimizer step, the global gradient
    norm (before clipping) where it is known.
    """
    loss, sums = forward_loss(engine, batch, config, pad_id, codebook_size, txt_loss_scale)
    engine.backward(loss)
    boundary = engine.is_gradient_accumulation_boundary()
    norm = plain_grad_norm(engine) if boundary else None
    engine.step()
    if boundary and norm is None and engine.get_global_grad_norm() is not None:
        norm = float(engine.get_global_grad_norm())
    return sums, norm


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over replicas (the ranks of a tensor-parallel replica hold the same sums)."""
    if dist.is_initialized() and mpu.get_data_parallel_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, group=mpu.get_data_parallel_group())
    return values


@torch.no_grad()
def evaluate(engine, data: TrainingData, config: ModelConfig, args: argparse.Namespace,
             micro_batch_size: int) -> dict[str, float]:
    """Loss on the fixed validation positions of each task, and over all tasks."""
    engine.eval()
    results: dict[str, float] = {}
    total = torch.zeros(len(SUM_FIELDS) + 2, dtype=torch.float64, device=engine.device)
    for task, dataset in data.valid.items():
        sums = torch.zeros_like(total)
        replicas, replica = mpu.get_data_parallel_world_size(), mpu.get_data_parallel_rank()
        for batch in validation_batches(dataset, micro_batch_size, args.eval_iters, replicas, replica,
                                        data.tokenizer.pad_id):
            sums += forward_loss(engine, batch, config, data.tokenizer.pad_id, data.tokenizer.codebook_size,
                                 args.txt_loss_scale)[1]
        sums = all_reduce_sum(sums)
        total += sums
        results.update({f"{task}/{name}": value for name, value in summarize(sums[:len(SUM_FIELDS)]).items()})
    results.update(summarize(total[:len(SUM_FIELDS)]))
    engine.train()
    return results


# ---------------------------------------------------------------- the run

class Reporter:
    """Console (rank 0), tqdm bar and TensorBoard for one run."""

    def __init__(self, args: argparse.Namespace, start_iteration: int):
        self.main = mpu.is_main_process()
        self.tensorboard = TensorBoardLogger(args.tensorboard_dir if self.main else None,
                                             purge_step=start_iteration + 1 if start_iteration else None)
        self.bar = tqdm(total=args.train_iters, initial=start_iteration, desc="train", unit="step",
                        disable=not self.main, dynamic_ncols=True)

    def train(self, iteration: int, total: int, values: dict[str, float]) -> None:
        if not self.main:
            return
        self.tensorboard.scalars({f"train/{name}": value for name, value in values.items()}, iteration)
        norm = values.get("grad_norm")
        logger.info("iteration %d/%d | loss %.6f | image %.4f | text %.4f | lr %.3e | grad norm %s | "
                    "%.0f tokens/s | MFU %.1f%%", iteration, total, values["loss"], values["image_loss"],
                    values["text_loss"], values["lr"], "-" if norm is None else f"{norm:.3f}",
                    values["tokens_per_second"], 100 * values["mfu"])
        self.bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)

    def valid(self, iteration: int, values: dict[str, float]) -> None:
        if not self.main:
            return
        self.tensorboard.scalars({f"valid/{name}": value for name, value in values.items()}, iteration)
        per_task = " | ".join(f"{name[:-len('/loss')]} {value:.6f}" for name, value in values.items()
                              if name.endswith("/loss"))
        logger.info("validation at iteration %d | loss %.6f | %s", iteration, values["loss"], per_task)

    def close(self) -> None:
        self.bar.close()
        self.tensorboard.close()


class Interval:
    """Loss sums, tokens and model FLOPs since the last log line, the optimizer steps they took and the time."""

    def __init__(self, device: torch.device, peak_flops: float):
        self.peak_flops = peak_flops
        self.sums = torch.zeros(len(SUM_FIELDS) + 2, dtype=torch.float64, device=device)
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, sums: torch.Tensor) -> None:
        self.sums += sums

    def step(self) -> None:
        self.steps += 1

    def pause(self) -> None:
        """Leave the time since the last step (validation, a checkpoint write) out of tokens/s and MFU."""
        self.sums[_TOKENS:] = 0
        self.steps = 0
        self.start = time.perf_counter()

    def report(self) -> dict[str, float]:
        """Means over all ranks, tokens/s, MFU and seconds per optimizer step (what a time budget is
        planned with, e.g. benchmarks/bench_quality.py); starts the next interval (a collective)."""
        seconds = time.perf_counter() - self.start
        totals = all_reduce_sum(self.sums)
        values = summarize(totals[:len(SUM_FIELDS)])
        values.update(throughput(float(totals[_TOKENS]), float(totals[_FLOPS]), seconds, self.peak_flops,
                                 mpu.get_world_size()))
        if self.steps:
            values["seconds_per_step"] = seconds / self.steps
        self.sums.zero_()
        self.steps = 0
        self.start = time.perf_counter()
        return values


def train(args: argparse.Namespace, setup: DeepSpeedSetup, engine, data: TrainingData, config: ModelConfig,
          start_iteration: int, data_position: int) -> None:
    positions = MicroBatchPositions(data_position, setup.micro_batch_size, setup.gradient_accumulation_steps,
                                    mpu.get_data_parallel_world_size(), mpu.get_data_parallel_rank())
    batches: Iterator[Mapping[str, Any]] = iter(train_loader(data.train, positions, data.tokenizer.pad_id,
                                                             args.num_workers, args.one_task_per_micro_batch))
    dtype = torch_dtype(setup.precision)
    interval = Interval(engine.device, measure_matmul_flops(engine.device, dtype))
    if mpu.is_main_process():
        logger.info("model: %s parameters | global batch %d | matmul rate of this %s in %s: %.3g FLOP/s",
                    f"{engine.module.num_parameters():,}", positions.global_batch, engine.device.type,
                    str(dtype).removeprefix("torch."), interval.peak_flops)
    reporter = Reporter(args, start_iteration)
    norm: float | None = None
    with logging_redirect_tqdm() if mpu.is_main_process() else nullcontext():
        for iteration in range(start_iteration + 1, args.train_iters + 1):
            lr = engine.get_lr()[0]  # the lr of this step (the scheduler moves on inside engine.step)
            for _ in range(setup.gradient_accumulation_steps):
                sums, step_norm = micro_step(engine, next(batches), config, data.tokenizer.pad_id,
                                             data.tokenizer.codebook_size, args.txt_loss_scale)
                interval.add(sums)
                norm = step_norm if step_norm is not None else norm
            data_position += positions.global_batch
            interval.step()
            reporter.bar.update()
            last = iteration == args.train_iters
            if iteration % args.log_interval == 0 or last:
                values = {**interval.report(), "lr": lr}
                if norm is not None:
                    values["grad_norm"] = norm
                if engine.fp16_enabled():
                    values["loss_scale"] = engine.optimizer.loss_scale
                reporter.train(iteration, args.train_iters, values)
            if data.valid and (iteration % args.eval_interval == 0 or last):
                reporter.valid(iteration, evaluate(engine, data, config, args, setup.micro_batch_size))
                interval.pause()
            if args.save and (iteration % args.save_interval == 0 or last):
                save(args, engine, config, data, iteration, data_position)
                interval.pause()
    reporter.close()


def save(args: argparse.Namespace, engine, config: ModelConfig, data: TrainingData, iteration: int,
         data_position: int) -> None:
    folder = checkpointing.save_checkpoint(
        engine, args.save, iteration, {"iteration": iteration, "data_position": data_position},
        lambda path: write_model_config(path, config, data.metadata))
    if mpu.is_main_process():
        logger.info("saved checkpoint %s", folder)


def checked_resume_iteration(args: argparse.Namespace) -> int | None:
    """The iteration `--load` resumes (None for a new run); refuses a `--save` folder whose checkpoints
    this run would overwrite."""
    resume_iteration = None
    if args.load is not None:
        resume_iteration = read_latest_iteration(args.load)
        if resume_iteration is None:
            raise UserError(f"no checkpoint to resume in {args.load} (no {TRACKER_FILE}); "
                            f"drop --load to start a new run")
    if args.save is not None:
        saved = read_latest_iteration(args.save)
        if saved is not None and (args.load is None or Path(args.load).resolve() != Path(args.save).resolve()):
            raise UserError(f"--save {args.save} already holds checkpoints (newest: iteration {saved}); continue "
                            f"that run with --load {args.save}, or choose an empty --save folder")
    return resume_iteration


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_training_args(argv, __doc__)
    set_attention_backend(args.attention_backend)
    resume_iteration = checked_resume_iteration(args)
    data = load_data(args, position_layout_to_train(args, resume_iteration))
    config = resolve_model_config(args, data, resume_iteration)
    if resume_iteration is not None:
        check_resume_tensor_parallel_size(Path(args.load) / str(resume_iteration), args.tensor_parallel_size)
    mpu.init_distributed(args.local_rank)
    if args.tensor_parallel_size > 1:
        mpu.init_parallel_groups(args.tensor_parallel_size)
        mpu.check_tensor_parallel_size(config, args.tensor_parallel_size)
    # a config file's batch/precision win over defaults
    setup = build_deepspeed_config(args, mpu.get_data_parallel_world_size())
    if args.save and mpu.is_main_process():
        checkpointing.remove_stale_temporaries(args.save)
    engine = build_engine(args, config, setup.config)
    torch.manual_seed(dropout_seed(args.seed, mpu.get_data_parallel_rank()))
    start_iteration, data_position = 0, 0
    if resume_iteration is not None:
        client_state = checkpointing.load_checkpoint(engine, args.load, resume_iteration)
        start_iteration, data_position = int(client_state["iteration"]), int(client_state["data_position"])
        if mpu.is_main_process():
            logger.info("resumed from %s/%d (sample position %d)", args.load, start_iteration, data_position)
    if start_iteration >= args.train_iters:
        logger.info("the checkpoint is at iteration %d, nothing left to do for --train-iters %d",
                    start_iteration, args.train_iters)
        return
    train(args, setup, engine, data, config, start_iteration, data_position)


if __name__ == "__main__":
    run_main(main)
