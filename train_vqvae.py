"""Train the VQ-VAE image tokenizer on `shapes`, `emoji` or a folder / list of your own images.

Example (the default model, 64 px shapes, 10 CPU-minutes: about 44 dB held-out PSNR):
    python train_vqvae.py --dataset shapes --image-size 64 --output runs/vqvae --threads 1 \
        --time-budget-minutes 10 --save-recon-grid docs/images/vqvae_shapes_recon.png

Continue an interrupted run (Ctrl-C finishes the step and saves) with the same command plus --resume.
A run stopped by --max-steps resumes bit-identically on CPU; a run scheduled by its time budget
resumes exactly too, but the budget makes its own stopping point (and cosine lr) depend on timing.

The output folder receives `model.safetensors` + `config.json` (what `vqvae.api.load_vqvae` reads),
`eval.json` (held-out PSNR, codebook usage, and on shapes the checker's acceptance of the
reconstructions), `train_state.pt` (for --resume) and `tb/` (TensorBoard). The time budget counts the
CPU time of this script from the start of `main` (all threads, data rendering included, summed over
resumed runs), so a run costs the same on a busy shared machine as on an idle one; wall time is
reported beside it.
"""
from __future__ import annotations

import argparse
import io
import random
import signal
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from checkpoints.readers import read_torch_file
from data_utils.image_sources import SkippedItem, load_item, open_dataset, skip_report
from data_utils.images import uint8_to_tensor
from data_utils.shapes import ShapeObject
from data_utils.shapes_checker import check_image
from data_utils.variety_objects import add_variety_objects
from training.lr_schedule import cosine_decay
from training.rng import rng_state, set_rng_state
from utils.errors import UserError, run_main
from utils.files import atomic_torch_save, atomic_write_bytes, atomic_write_json
from utils.logging import TensorBoardLogger, get_logger
from vqvae.api import save_vqvae
from vqvae.config import VQVAEConfig
from eval_utils.psnr import mean_psnr
from eval_utils.vqvae_reconstruction import codebook_stats, comparison_grid, reconstruct
from vqvae.model import VQVAE

logger = get_logger("train_vqvae")

TRAIN_STATE_FILE = "train_state.pt"
EVAL_FILE = "eval.json"
LOG_EVERY = 10
EVAL_BATCH = 64
FINAL_LR_FRACTION = 0.1
GRID_IMAGES = 16
# Settings that must not change when a run is resumed (the data order and the optimiser depend on them).
RUN_IDENTITY = ("dataset", "image_size", "seed", "train_items", "batch_size", "lr", "weight_decay")


def build_parser() -> argparse.ArgumentParser:
    defaults = VQVAEConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="shapes", help="'shapes', 'emoji', a folder of images + .txt, or a .jsonl/.tsv list")
    data.add_argument("--image-size", type=int, default=64, help="images are resized to this square size")
    data.add_argument("--train-items", type=int, default=None, help="cap on training images (shapes: default 10,000)")
    data.add_argument("--val-items", type=int, default=None, help="cap on held-out images (shapes: default 500)")
    data.add_argument("--seed", type=int, default=0, help="seeds the data order, the shapes draw and the model init")
    data.add_argument("--variety-objects", type=float, default=0.0, metavar="FRACTION",
                      help="share of training images that get 1-3 extra objects in any colour (never near teal), "
                           "filled or hollow, so the codes cover colours and outlines beyond the data's own "
                           "(data_utils/variety_objects.py); held-out images stay plain; 0 is off")

    model = parser.add_argument_group("model (saved in config.json)")
    model.add_argument("--downsample", type=int, default=defaults.downsample, choices=(4, 8),
                       help="image side / code-grid side")
    model.add_argument("--codebook-size", type=int, default=defaults.codebook_size, help="number of codes K")
    model.add_argument("--embed-dim", type=int, default=defaults.embed_dim, help="dimension of each code")
    model.add_argument("--hidden-channels", type=int, default=defaults.hidden_channels,
                       help="width at the code grid (halved at each finer resolution)")
    model.add_argument("--num-res-blocks", type=int, default=defaults.num_res_blocks,
                       help="residual blocks at the code grid, in the encoder and in the decoder")
    model.add_argument("--commitment-cost", type=float, default=defaults.commitment_cost,
                       help="weight of the loss pulling encoder outputs towards their codes")
    model.add_argument("--recon-loss", default=defaults.recon_loss, choices=("l1", "l2"),
                       help="pixel loss of the reconstruction")
    model.add_argument("--ema-decay", type=float, default=defaults.ema_decay,
                       help="decay of the codebook's moving averages")
    model.add_argument("--dead-code-threshold", type=float, default=defaults.dead_code_threshold,
                       help="restart codes used less often than this per batch (EMA); 0 disables restarts")

    train = parser.add_argument_group("training")
    train.add_argument("--output", required=True, help="folder for the model, eval.json, train_state.pt and tb/")
    train.add_argument("--batch-size", type=int, default=4,
                       help="small batches win at a fixed CPU budget: more updates for the same compute")
    train.add_argument("--lr", type=float, default=2e-3,
                       help=f"peak AdamW learning rate; cosine decay to {FINAL_LR_FRACTION:g}x at the end of the run")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    train.add_argument("--time-budget-minutes", type=float, default=10.0,
                       help="stop once the run has used this much CPU time (all threads, all resumed runs)")
    train.add_argument("--eval-every", type=int, default=2500, help="steps between held-out evaluations")
    train.add_argument("--save-every", type=int, default=2500, help="steps between checkpoints")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --output")
    train.add_argument("--save-recon-grid", default=None, metavar="PNG",
                       help="at the end, write held-out originals above their reconstructions to this PNG")
    return parser


def config_from_args(args: argparse.Namespace) -> VQVAEConfig:
    names = {f.name for f in fields(VQVAEConfig)}
    return VQVAEConfig(**{name: value for name, value in vars(args).items() if name in names})


def render_images(source, desc: str) -> tuple[np.ndarray, list[dict | None]]:
    """Decode every item of `source` once into a uint8 array [N, H, W, 3] (plus per-item metadata);
    bad items are skipped, counted and reported."""
    images, metadata, skips = [], [], []
    for index in tqdm(range(len(source)), desc=desc, unit="img", leave=False, dynamic_ncols=True):
        item = load_item(source, index)
        if isinstance(item, SkippedItem):
            skips.append(item)
            continue
        images.append(np.asarray(item.image.convert("RGB"), dtype=np.uint8))
        metadata.append(item.metadata)
    if skips:
        logger.warning("%s: %s", desc, skip_report(skips))
    if not images:
        raise UserError(f"{desc}: no usable images ({len(skips)} skipped)")
    return np.stack(images), metadata


def training_images(args: argparse.Namespace) -> np.ndarray:
    """The training images, uint8 [N, H, W, 3]: the dataset's, with `--variety-objects` drawn over a share."""
    images, _ = render_images(open_dataset(args.dataset, split="train", size=args.image_size, seed=args.seed,
                                           num_items=args.train_items), "render train")
    if not args.variety_objects:
        return images
    return np.stack([add_variety_objects(image, args.seed, index, args.variety_objects)
                     for index, image in enumerate(images)])


def checker_accept_rate(reconstructions: np.ndarray, objects: list[list[ShapeObject]]) -> float:
    """Fraction of reconstructed shapes images that the shapes checker accepts as their own caption:
    the VQ-VAE must keep every object's colour, shape, size and position, and add nothing."""
    accepted = sum(check_image(image, item_objects).correct for image, item_objects in zip(reconstructions, objects))
    return accepted / len(objects)


def batch_indices(seed: int, step: int, batch_size: int, num_items: int) -> np.ndarray:
    """The training images of `step`: a pure function of (seed, step), so resume needs no data state.

    The stream visits a fresh permutation of all images per epoch; batch `step` is its slice
    [step * batch_size, (step + 1) * batch_size).
    """
    positions = step * batch_size + np.arange(batch_size)
    epochs = positions // num_items
    indices = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(num_items)
        chosen = epochs == epoch
        indices[chosen] = order[positions[chosen] % num_items]
    return indices


class Clock:
    """CPU seconds (all threads of this process) and wall seconds since this run started, plus those
    of the runs it resumes."""

    def __init__(self):
        self.cpu_before = self.wall_before = 0.0
        self.cpu_start, self.wall_start = time.process_time(), time.perf_counter()

    def cpu(self) -> float:
        return self.cpu_before + time.process_time() - self.cpu_start

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.wall_start


def load_train_state(path: Path, config: VQVAEConfig, identity: dict) -> dict:
    state = read_torch_file(path)
    if not isinstance(state, dict):
        raise UserError(f"cannot resume from {path}: it holds no training state")
    if state.get("config") != config.to_dict():
        differing = sorted(k for k, v in config.to_dict().items() if state.get("config", {}).get(k) != v)
        raise UserError(f"--resume: the run in {path.parent} has another model config ({', '.join(differing)} "
                        "differ); use the same settings or another --output")
    if state.get("identity") != identity:
        saved = state.get("identity", {})
        differing = sorted(k for k in {*identity, *saved} if saved.get(k) != identity.get(k))
        raise UserError(f"--resume: the run in {path.parent} used other {', '.join(differing)}; "
                        "use the same settings or another --output")
    return state


class StopOnInterrupt:
    """Turns the first Ctrl-C into a flag checked between steps, so the run stops after a whole step
    and saves, instead of dying in the middle of an optimizer update; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopOnInterrupt":
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("interrupt: finishing this step and saving (Ctrl-C again to stop at once)")

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)


def main(argv: list[str] | None = None) -> dict:
    """Train; returns the final held-out evaluation (also written to eval.json)."""
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "eval_every", "save_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.time_budget_minutes <= 0 or (args.max_steps is not None and args.max_steps < 1):
        raise UserError("--time-budget-minutes and --max-steps must be positive")
    if not 0.0 <= args.variety_objects <= 1.0:
        raise UserError(f"--variety-objects is a share of the training images, in [0, 1]; "
                        f"got {args.variety_objects:g}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    output = Path(args.output)
    state_path = output / TRAIN_STATE_FILE
    if state_path.exists() and not args.resume:
        raise UserError(f"{output} already holds a training run; pass --resume to continue it or choose another --output")
    if args.resume and not state_path.exists():
        raise UserError(f"--resume: {state_path} does not exist")
    identity = {name: getattr(args, name) for name in RUN_IDENTITY}
    if args.variety_objects:  # only when on, so runs saved before the option existed still resume
        identity["variety_objects"] = args.variety_objects
    clock = Clock()

    train_images = training_images(args)
    val_images, val_metadata = render_images(open_dataset(args.dataset, split="val", size=args.image_size,
                                               seed=args.seed,
                                               num_items=args.val_items), "render val")
    # Shapes items carry their objects: the checker then says whether reconstructions keep them.
    val_objects = None
    if args.dataset == "shapes":
        val_objects = [[ShapeObject(**obj) for obj in meta["objects"]] for meta in val_metadata]
    logger.info("%d training and %d held-out images of %dx%d", len(train_images), len(val_images),
                args.image_size, args.image_size)

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    model = VQVAE(config)
    model.check_images(torch.zeros(1, 3, args.image_size, args.image_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    step = 0
    if args.resume:
        state = load_train_state(state_path, config, identity)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step, clock.cpu_before, clock.wall_before = state["step"], state["cpu_seconds"], state["wall_seconds"]
        logger.info("resuming %s at step %d (%.0f CPU-s used)", output, step, state["cpu_seconds"])
    budget_s = 60.0 * args.time_budget_minutes
    board = TensorBoardLogger(output / "tb", purge_step=step if args.resume else None)

    def save_train_state() -> None:
        save_vqvae(model, output)
        atomic_torch_save(state_path, {
            "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
            "config": config.to_dict(), "identity": identity,
            "cpu_seconds": clock.cpu(), "wall_seconds": clock.wall()})

    def evaluate() -> dict:
        model.eval()
        reconstructions, report = reconstruct(model, val_images, batch_size=EVAL_BATCH)
        model.train()
        result = {"step": step, "split": "val", **report.to_dict(),
                  "cpu_seconds": round(clock.cpu(), 1), "wall_seconds": round(clock.wall(), 1),
                  "dataset": args.dataset, "image_size": args.image_size}
        board.scalars({"val/psnr": report.psnr, "val/perplexity": report.perplexity,
                       "val/codes_used_pct": 100 * report.codes_used}, step)
        checked = ""
        if val_objects is not None:
            result["checker_accept"] = checker_accept_rate(reconstructions, val_objects)
            board.scalars({"val/checker_accept_pct": 100 * result["checker_accept"]}, step)
            checked = f", shapes checker accepts {100 * result['checker_accept']:.1f}%"
        atomic_write_json(output / EVAL_FILE, result)
        logger.info("step %d: held-out PSNR %.2f dB, perplexity %.1f, %.1f%% of codes used%s", step,
                    report.psnr, report.perplexity, 100 * report.codes_used, checked)
        return result

    model.train()
    stop_reason = "max steps"
    bar = tqdm(total=args.max_steps, initial=step, desc="train vqvae", unit="step", dynamic_ncols=True)
    with StopOnInterrupt() as interrupt:
        while args.max_steps is None or step < args.max_steps:
            if clock.cpu() >= budget_s:
                stop_reason = "time budget"
                break
            if interrupt.requested:
                stop_reason = "interrupted"
                break
            # The schedule follows --max-steps when given (a function of the step, so a resumed run
            # stays bit-identical), else the CPU-time budget.
            progress = step / args.max_steps if args.max_steps else clock.cpu() / budget_s
            for group in optimizer.param_groups:
                # Cosine decay to FINAL_LR_FRACTION: the small final steps let a short run settle into a
                # sharp minimum instead of stopping mid-stride.
                group["lr"] = cosine_decay(args.lr, FINAL_LR_FRACTION, progress)
            batch = uint8_to_tensor(train_images[batch_indices(args.seed, step, args.batch_size, len(train_images))])
            out = model(batch)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            step += 1

            psnr = mean_psnr(out.reconstruction.detach(), batch)
            bar.update(1)
            bar.set_postfix(loss=f"{out.loss.item():.4f}", psnr=f"{psnr:.1f}")
            if step % LOG_EVERY == 0:
                perplexity, used = codebook_stats(out.code_counts)
                board.scalars({"train/loss": out.loss.item(), "train/recon": out.recon_loss.item(),
                               "train/commitment": out.commitment.item(), "train/psnr": psnr,
                               "train/perplexity": perplexity, "train/codes_used_pct": 100 * used,
                               "train/dead_code_restarts": out.restarted, "train/lr": optimizer.param_groups[0]["lr"],
                               "time/cpu_seconds": clock.cpu()}, step)
            if step % args.eval_every == 0:
                evaluate()
            if step % args.save_every == 0:
                save_train_state()
    bar.close()
    save_train_state()
    if stop_reason == "interrupted":
        board.close()
        logger.warning("saved step %d to %s; continue with --resume", step, output)
        raise KeyboardInterrupt
    result = evaluate()
    if args.save_recon_grid:
        shown = val_images[:GRID_IMAGES]
        reconstructions, _ = reconstruct(model, shown, batch_size=EVAL_BATCH)
        grid = comparison_grid(shown, reconstructions)
        png = io.BytesIO()
        grid.save(png, format="PNG")
        atomic_write_bytes(args.save_recon_grid, png.getvalue())
        board.image("val/originals_over_reconstructions", np.asarray(grid).transpose(2, 0, 1), step)
        logger.info("wrote %s", args.save_recon_grid)
    board.close()
    logger.info("stopped at step %d (%s) after %.0f CPU-s / %.0f wall-s; model in %s", step, stop_reason,
                clock.cpu(), clock.wall(), output)
    return result


if __name__ == "__main__":
    run_main(main)
