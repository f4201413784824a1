"""Teach a trained model a new subject from 3-5 captioned pictures (DreamBooth for the token model).

Example (the `sks square` of ../shared/datasets/subject.md; scripts/finetune_subject.sh writes its data):
    python finetune_subject.py --base runs/bench_subject_base/shapes/gpt-5715 --instance-data runs/subject/instances \\
        --class-prompts runs/subject/class_prompts.txt --num-class-images 200 --mode lora --placement-images 400 \\
        --train-iters 400 --batch-size 4 --lr 1e-2 --bf16 --save runs/subject/lora

What happens, in order:
1. The base checkpoint loads with its tokenizer and VQ-VAE (the VQ-VAE stays frozen: it only tokenises).
   The identifier's pieces are logged (a shapes tokenizer has no `sks`: it becomes rare pieces).
2. Prior preservation (`--prior-loss-weight` > 0): the base model draws `--num-class-images` pictures for
   the class prompts, cached in `--class-data` (default SAVE/class_images) and resumed when interrupted.
3. Training on DeepSpeed, as pretraining: every micro-batch holds `--batch-size` instance samples and as
   many class samples, each a sample of the base model's task mix (text-to-image with CFG text drop,
   captions, super-resolution), and the loss is instance loss + weight x class loss. `--mode` chooses what
   trains: `full`, `frozen` (only `--trainable` parts) or `lora` (`--lora-targets`, rank, alpha).
   Atomic checkpoints every `--save-interval` steps; after a kill, run the same command with
   `--load SAVE` to continue exactly. TensorBoard in SAVE/tensorboard.
4. SAVE/adapter: only the trained tensors (safetensors) and adapter_config.json (base fingerprint,
   identifier, class). Use it with `generate_samples.py --load BASE --adapter SAVE/adapter`, or fold it in
   with `export_model.py --merge-adapter`. Guide: docs/tasks/subject_finetuning.md.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

import mpu

mpu.prepare_accelerator_env()

import deepspeed  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from arguments import (add_deepspeed_args, add_training_args, fraction, non_negative_float,  # noqa: E402
                       non_negative_int, parse_noting_given, positive_int, task_mix)
from data_utils.dataset import TaskSequenceDataset, collate_sequences  # noqa: E402
from finetune.adapters import AdapterConfig, base_fingerprint, save_adapter  # noqa: E402
from finetune.class_images import ensure_class_images  # noqa: E402
from finetune.data import CaptionedImages, MemoryRows, identifier_pieces, read_instance_folder, tokenise  # noqa: E402
from finetune.lora import LORA_TARGETS, add_lora, lora_tensors  # noqa: E402
from finetune.placements import placement_images  # noqa: E402
from finetune.trainable import MODES, freeze_all_but, trainable_prefixes, trained_state  # noqa: E402
from generation.loading import load_components  # noqa: E402
from generation.pipeline import Pipeline  # noqa: E402
from generation.sampling import SamplingSettings  # noqa: E402
from model.config_file import write_model_config  # noqa: E402
from pretrain_gpt2 import checked_resume_iteration, dropout_seed  # noqa: E402
from training import checkpointing  # noqa: E402
from training.data import MicroBatchPositions  # noqa: E402
from training.ds_config import build_deepspeed_config  # noqa: E402
from training.loss import next_token_loss  # noqa: E402
from training.lr_schedule import LRSchedule, WarmupDecayScheduler  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.logging import TensorBoardLogger, get_logger  # noqa: E402

logger = get_logger("finetune_subject")

ADAPTER_DIR = "adapter"
# Class image i is sampled with seed CLASS_IMAGE_SEED + i whatever the run's --seed, so runs of several
# seeds (and modes) share one cache of class images.
CLASS_IMAGE_SEED = 0
DEFAULT_MIX = "text2image=0.7,image2text=0.2,super_resolution=0.1"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subject = parser.add_argument_group("subject")
    subject.add_argument("--base", required=True, metavar="PATH",
                         help="the base checkpoint (any layout generation loads)")
    subject.add_argument("--instance-data", required=True, metavar="DIR",
                         help="3-5 images of the subject, each with a NAME.txt caption (or see --caption-template)")
    subject.add_argument("--identifier", default="sks",
                         help="the rare word that names the subject (default: %(default)s)")
    subject.add_argument("--class-noun", default="square", help="the subject's class (default: %(default)s)")
    subject.add_argument("--caption-template", metavar="TEXT",
                         help="one caption for every instance image, e.g. 'a {identifier} {class_noun}'")
    subject.add_argument("--placement-images", type=non_negative_int, default=0, metavar="N",
                         help="add N pictures of the subject cut out of the instance images and placed at drawn "
                              "shapes sizes and cells, half next to an ordinary object, captioned by the shapes "
                              "grammar (finetune/placements.py; the instance images must show the subject on "
                              "white); 0: only the instance images (default: %(default)s)")
    prior = parser.add_argument_group("prior preservation")
    prior.add_argument("--prior-loss-weight", type=non_negative_float, default=1.0,
                       help="weight of the class images' loss; 0 switches prior preservation off "
                            "(default: %(default)s)")
    prior.add_argument("--class-prompts", metavar="FILE", help="class prompts, one per line")
    prior.add_argument("--num-class-images", type=positive_int, default=200, help="(default: %(default)s)")
    prior.add_argument("--class-data", metavar="DIR", help="cache of the class images (default: SAVE/class_images)")
    prior.add_argument("--class-cfg-scale", type=float, default=1.5,
                       help="guidance of the class images (default: %(default)s)")
    prior.add_argument("--class-temperature", type=float, default=0.4,
                       help="sampling temperature of the class images (default: %(default)s)")
    what = parser.add_argument_group("what trains (the VQ-VAE never does)")
    what.add_argument("--mode", choices=MODES, default="lora", help="(default: %(default)s)")
    what.add_argument("--trainable", metavar="PARTS",
                      help="--mode frozen: the parts that train, e.g. embeddings,layers=2-3 "
                           "(see finetune/trainable.py)")
    what.add_argument("--lora-rank", type=positive_int, default=4, help="(default: %(default)s)")
    what.add_argument("--lora-alpha", type=float, default=8.0, help="update scale alpha / rank (default: %(default)s)")
    what.add_argument("--lora-targets", default=",".join(LORA_TARGETS),
                      help="linear layers to adapt, by (the end of) their names (default: %(default)s)")
    data = parser.add_argument_group("samples")
    data.add_argument("--task-mix", type=task_mix, default=None, metavar="TASK=W,...",
                      help=f"tasks of every sample (default: {DEFAULT_MIX}, without super_resolution for a base "
                           f"model that never learned it)")
    data.add_argument("--cfg-drop-prob", type=fraction, default=0.1, help="(default: %(default)s)")
    data.add_argument("--txt-loss-scale", type=non_negative_float, default=1.0, help="(default: %(default)s)")
    add_training_args(parser)
    add_deepspeed_args(parser)
    args = parse_noting_given(parser, argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Flags that would do nothing are refused, not ignored."""
    given = args.given_flags
    if args.save is None:
        raise UserError("--save is required: the adapter and the checkpoints go there")
    for dest in ("eval_interval", "eval_iters"):
        if dest in given:
            raise UserError(f"--{dest.replace('_', '-')}: fine-tuning has no validation data")
    if args.prior_loss_weight == 0:
        for dest in ("class_prompts", "num_class_images", "class_data", "class_cfg_scale", "class_temperature"):
            if dest in given:
                raise UserError(f"--{dest.replace('_', '-')} needs prior preservation (--prior-loss-weight > 0)")
    elif args.class_prompts is None:
        raise UserError("prior preservation needs --class-prompts (or switch it off with --prior-loss-weight 0)")
    if (args.trainable is not None) != (args.mode == "frozen"):
        raise UserError("--trainable goes with --mode frozen (and --mode frozen needs it)")
    if args.mode != "lora":
        for dest in ("lora_rank", "lora_alpha", "lora_targets"):
            if dest in given:
                raise UserError(f"--{dest.replace('_', '-')} needs --mode lora")
    if args.zero_stage == 3:
        raise UserError("--zero-stage 3 partitions the weights, and the adapter is read from the whole module; "
                        "fine-tune with stage 0-2 (the optimizer states of what trains are small anyway)")
    if args.tensorboard_dir is None:
        args.tensorboard_dir = f"{args.save}/tensorboard"


def read_prompts(path: str) -> list[str]:
    if not Path(path).is_file():
        raise UserError(f"class prompts file not found: {path}")
    prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{path} holds no prompt")
    return prompts


def select_trainable(model: torch.nn.Module, args: argparse.Namespace) -> list[str]:
    """Set requires_grad (and wrap LoRA layers) by `--mode`; returns what trains."""
    if args.mode == "full":
        return freeze_all_but(model, ("",))
    if args.mode == "frozen":
        return freeze_all_but(model, trainable_prefixes(args.trainable, model.config.num_layers))
    targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    return add_lora(model, targets, args.lora_rank, args.lora_alpha)


class Streams:
    """Instance and class samples by global position: micro-batch m of step i reads the same positions of
    both streams, so a resumed run only needs the position reached (as in pretraining)."""

    def __init__(self, instance: TaskSequenceDataset, prior: TaskSequenceDataset | None, pad_id: int):
        self.instance, self.prior, self.pad_id = instance, prior, pad_id

    def batch(self, positions: list[int]) -> tuple[dict, int]:
        samples = [self.instance[p] for p in positions]
        if self.prior is not None:
            samples += [self.prior[p] for p in positions]
        return collate_sequences(samples, self.pad_id), len(positions)


def micro_step(engine, batch: dict, instances: int, args: argparse.Namespace, pad_id: int,
               codebook_size: int) -> tuple[float, float | None]:
    ids = batch["input_ids"].to(engine.device)
    positions = batch["position_ids"].to(engine.device)
    logits = engine(ids[:, :-1], positions[:, :-1])
    targets = ids[:, 1:]
    instance = next_token_loss(logits[:instances], targets[:instances], pad_id, codebook_size, args.txt_loss_scale)
    loss, prior_loss = instance.loss, None
    if instances < ids.shape[0]:
        prior = next_token_loss(logits[instances:], targets[instances:], pad_id, codebook_size, args.txt_loss_scale)
        loss = loss + args.prior_loss_weight * prior.loss
        prior_loss = float(prior.loss.detach())
    engine.backward(loss)
    engine.step()
    return float(instance.loss.detach()), prior_loss


def write_adapter(model: torch.nn.Module, args: argparse.Namespace, fingerprint: str, seconds: float) -> Path:
    tensors = lora_tensors(model) if args.mode == "lora" else trained_state(model)
    config = AdapterConfig(kind="lora" if args.mode == "lora" else "tensors", base_fingerprint=fingerprint,
                           identifier=args.identifier, class_noun=args.class_noun, mode=args.mode,
                           lora_rank=args.lora_rank if args.mode == "lora" else None,
                           lora_alpha=args.lora_alpha if args.mode == "lora" else None,
                           extra={"base": str(args.base), "training_seconds": round(seconds, 2),
                                  "train_iters": args.train_iters, "prior_loss_weight": args.prior_loss_weight,
                                  "placement_images": args.placement_images,
                                  "trained_parameters": sum(t.numel() for t in tensors.values()),
                                  "model_parameters": sum(p.numel() for n, p in model.named_parameters()
                                                          if "lora_" not in n)})
    return save_adapter(Path(args.save) / ADAPTER_DIR, tensors, config)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    resume_iteration = checked_resume_iteration(args)
    mpu.init_distributed(args.local_rank)
    parts = load_components(args.base, device=mpu.device())
    pipe = Pipeline(parts.model, parts.tokenizer, parts.vqvae, parts.geometry)
    model, tok, geometry = pipe.model, pipe.tokenizer, pipe.geometry
    fingerprint = base_fingerprint(model)
    learned_super_resolution = parts.metadata.get("data", {}).get("lowres_grid") is not None
    mix = args.task_mix or task_mix(DEFAULT_MIX if learned_super_resolution else "text2image=0.8,image2text=0.2")
    with_lowres = mix.get("super_resolution", 0) > 0
    pieces = identifier_pieces(tok, args.identifier)
    if mpu.is_main_process():
        logger.info("identifier %r is the pieces %s of the base tokenizer", args.identifier, pieces)

    instances = read_instance_folder(args.instance_data, args.identifier, args.class_noun, args.caption_template)
    if args.placement_images:
        canvas = geometry.image_grid * pipe.vqvae.config.downsample
        extra = placement_images(instances, args.placement_images, args.identifier, args.class_noun, args.seed, canvas)
        instances = CaptionedImages(instances.images + extra.images, instances.captions + extra.captions,
                                    instances.names + extra.names)
        if mpu.is_main_process():
            logger.info("placement augmentation: %d pictures of the subject at drawn sizes and cells, e.g. %r",
                        len(extra.images), extra.captions[0])
    instance_rows = tokenise(instances.images, instances.captions, tok, pipe.vqvae, geometry, with_lowres,
                             "instance images")
    layout = model.config.position_layout
    instance_data = TaskSequenceDataset(instance_rows, tok, mix, args.seed, args.cfg_drop_prob, layout)
    prior_data = None
    if args.prior_loss_weight > 0:
        class_dir = Path(args.class_data or Path(args.save) / "class_images")
        settings = SamplingSettings(temperature=args.class_temperature, cfg_scale=args.class_cfg_scale)
        if mpu.is_main_process():
            ensure_class_images(pipe, class_dir, read_prompts(args.class_prompts), args.num_class_images,
                                CLASS_IMAGE_SEED, settings, fingerprint)
        mpu.barrier()
        images, captions = ensure_class_images(pipe, class_dir, read_prompts(args.class_prompts),
                                               args.num_class_images, CLASS_IMAGE_SEED, settings, fingerprint)
        prior_rows: MemoryRows = tokenise(images, captions, tok, pipe.vqvae, geometry, with_lowres, "class images")
        prior_data = TaskSequenceDataset(prior_rows, tok, mix, args.seed + 1, args.cfg_drop_prob, layout)
    streams = Streams(instance_data, prior_data, tok.pad_id)

    model.train()
    adapted = select_trainable(model, args)
    setup = build_deepspeed_config(args, mpu.get_world_size())
    schedule = LRSchedule(lr=args.lr, total_steps=args.train_iters, warmup_fraction=args.warmup,
                          min_lr_ratio=args.min_lr_ratio, decay_style=args.lr_decay_style)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, args.lr, args.weight_decay),
                                           lr_scheduler=lambda optimizer: WarmupDecayScheduler(optimizer, schedule),
                                           config=setup.config)
    if mpu.is_main_process():
        checkpointing.remove_stale_temporaries(args.save)
        logger.info("mode %s: %s of %s parameters train, in %s", args.mode,
                    f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}",
                    f"{sum(p.numel() for p in model.parameters()):,}",
                    f"{len(adapted)} LoRA-wrapped projections" if args.mode == "lora" else f"{len(adapted)} tensors")
    torch.manual_seed(dropout_seed(args.seed, mpu.get_rank()))
    start, data_position, seconds = 0, 0, 0.0
    if resume_iteration is not None:
        state = checkpointing.load_checkpoint(engine, args.load, resume_iteration)
        start, data_position, seconds = int(state["iteration"]), int(state["data_position"]), float(state["seconds"])
        logger.info("resumed from %s/%d", args.load, start)
    if start < args.train_iters:
        metadata = {**parts.metadata, "finetune": {"base": str(args.base), "mode": args.mode}}
        seconds = train(args, engine, streams, setup, start, data_position, seconds, metadata)
    if mpu.is_main_process():
        folder = write_adapter(engine.module, args, fingerprint, seconds)
        logger.info("fine-tuned for %.1f s; adapter in %s", seconds, folder)
    mpu.barrier()


def train(args: argparse.Namespace, engine, streams: Streams, setup, start: int, data_position: int, seconds: float,
          metadata: dict) -> float:
    """The steps from `start` to `--train-iters`; returns the seconds spent in them, over all resumes.
    Checkpoints carry the base's metadata (tokenizer, VQ-VAE, sizes), so a `full` or `frozen` run's save
    folder loads in generation like any training folder."""
    positions = MicroBatchPositions(data_position, setup.micro_batch_size, setup.gradient_accumulation_steps,
                                    mpu.get_world_size(), mpu.get_rank())
    batches = iter(positions)
    tensorboard = TensorBoardLogger(args.tensorboard_dir if mpu.is_main_process() else None,
                                    purge_step=start + 1 if start else None)
    bar = tqdm(total=args.train_iters, initial=start, desc="fine-tune", unit="step",
               disable=not mpu.is_main_process(), dynamic_ncols=True)
    tok = streams.instance.tokenizer
    began = time.perf_counter()
    for iteration in range(start + 1, args.train_iters + 1):
        lr = engine.get_lr()[0]
        losses = []
        for _ in range(setup.gradient_accumulation_steps):
            batch, count = streams.batch(next(batches))
            losses.append(micro_step(engine, batch, count, args, tok.pad_id, tok.codebook_size))
        data_position += positions.global_batch
        bar.update()
        if iteration % args.log_interval == 0 or iteration == args.train_iters:
            values = {"instance_loss": sum(l for l, _ in losses) / len(losses), "lr": lr}
            if losses[0][1] is not None:
                values["prior_loss"] = sum(p for _, p in losses) / len(losses)
            tensorboard.scalars({f"train/{k}": v for k, v in values.items()}, iteration)
            bar.set_postfix(loss=f"{values['instance_loss']:.4f}", refresh=False)
        if iteration % args.save_interval == 0 or iteration == args.train_iters:
            elapsed = seconds + time.perf_counter() - began
            checkpointing.save_checkpoint(engine, args.save, iteration,
                                          {"iteration": iteration, "data_position": data_position, "seconds": elapsed},
                                          lambda path: write_model_config(path, engine.module.config, metadata))
            seconds, began = elapsed, time.perf_counter()
    bar.close()
    tensorboard.close()
    return seconds


if __name__ == "__main__":
    run_main(main)
