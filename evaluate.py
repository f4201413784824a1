"""Evaluate a trained model on held-out data: one command, a table on stdout, every number in a JSON file.

Examples:
    python evaluate.py --load runs/gpt --dataset shapes --num-prompts 200 --output-json runs/eval.json
    python evaluate.py --load runs/gpt --sections t2i,fid --cfg-scale 1 3 5 --candidates 8 --post-select \\
        --feature-net runs/selffid --output-json runs/eval_cfg.json
    python evaluate.py --load runs/gpt --valid-data runs/data/val --sections bpt,caption-loss \\
        --output-json runs/bpt.json
    python evaluate.py --load runs/gpt --sections fid --train-feature-net runs/selffid --output-json runs/fid.json

Sections (--sections, comma-separated; by default every one the dataset and the inputs given allow):
    t2i           shapes: do images generated for held-out captions show what the caption says (per cfg scale)
    caption       shapes: do the model's captions of held-out images name their objects
    sr            PSNR of super-resolved 2x-downscaled held-out images, and of bicubic upsampling
    bpt           bits per image token and per text token on --valid-data shards, per task
    caption-loss  CogView's caption loss of held-out pairs, and its gap to shuffled pairs
    fid           FID and IS (--inception-weights), self-FID (--feature-net / --train-feature-net), per cfg scale
    vqvae         VQ-VAE round-trip PSNR and codebook use on held-out images

Held-out items are the `val` split of --dataset (shapes: the val seed stream of --data-seed, which no
training index reaches). Every number is defined in docs/evaluation.md; the JSON file also records the
command line, the checkpoint's fingerprints and the seed, and is rewritten after every section.
"""
from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from arguments import positive_int
from data_utils.dataset import TaskSequenceDataset, collate_sequences, positions_needed
from data_utils.image_sources import SkippedItem, load_item, open_dataset, skip_report
from data_utils.images import pil_to_tensor
from data_utils.sequences import TASKS
from data_utils.shapes import ShapeObject
from data_utils.shards import ShardedRows
from data_utils.tokenizer import UnifiedTokenizer
from eval_utils.bits_per_token import bits_per_token, caption_loss_alignment
from eval_utils.feature_net import (FeatureNet, feature_net_fingerprint, features, load_feature_net,
                                    save_feature_net, train_feature_net)
from eval_utils.fid import fid_from_features, inception_score
from eval_utils.inception import FIDInceptionV3, inception_features, load_inception
from eval_utils.psnr import bicubic_upsample, mean_psnr
from eval_utils.shapes_accuracy import caption_accuracy, image_accuracy
from fp16 import PRECISIONS, inference_autocast
from generation.loading import Components, load_components, resolve_device
from generation.pipeline import DEFAULT_MAX_BATCH_ROWS, POST_SELECTION_SCORES, Pipeline
from generation.sampling import SamplingSettings
from model.checkpoint import LATEST_FILES
from preprocess_data import downscale
from utils.errors import UserError, run_main
from utils.files import atomic_write_json
from utils.logging import TensorBoardLogger, get_logger
from vqvae.api import vqvae_fingerprint
from vqvae.evaluation import reconstruct

logger = get_logger("evaluate")

SECTIONS = ("t2i", "caption", "sr", "bpt", "caption-loss", "fid", "vqvae")
SHAPES_SECTIONS = ("t2i", "caption")  # need each item's objects, which only `shapes` carries
# Flags that only some sections read: given without any of them they would do nothing, so they are refused.
FLAG_SECTIONS = {"cfg_scale": ("t2i", "fid"), "candidates": ("t2i", "fid"), "post_select": ("t2i", "fid"),
                 "caption_top_k": ("caption",), "caption_candidates": ("caption",),
                 "caption_temperature": ("caption",), "post_selection_score": ("t2i", "fid", "caption"),
                 "valid_data": ("bpt",), "inception_weights": ("fid",),
                 "feature_net": ("fid",), "train_feature_net": ("fid",)}


# ---------------------------------------------------------------- command line

def section_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {','.join(SECTIONS)}")
    return [name for name in SECTIONS if name in names]  # canonical order, duplicates dropped


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--load", required=True, metavar="PATH",
                      help="checkpoint: a training save folder or iteration folder, an exported folder, or "
                           "CogView's layout (tokenizer and VQ-VAE come from its metadata)")
    what.add_argument("--sections", type=section_list, default=None, metavar="NAME,...",
                      help=f"any of {','.join(SECTIONS)} (default: all that apply)")
    what.add_argument("--output-json", required=True, metavar="FILE",
                      help="results, command line, checkpoint fingerprints and seed (written atomically)")
    data = parser.add_argument_group("held-out data")
    data.add_argument("--dataset", default="shapes",
                      help="'shapes', 'emoji', a folder of images + .txt, or a .jsonl/.tsv list; its val split "
                           "is used (default: %(default)s)")
    data.add_argument("--num-prompts", type=positive_int, default=200,
                      help="held-out items for every section (and at most this many --valid-data rows) "
                           "(default: %(default)s)")
    data.add_argument("--language", choices=("en", "zh", "both"), default="en",
                      help="caption language of shapes (default: %(default)s)")
    data.add_argument("--data-seed", type=int, default=0,
                      help="seed the shapes data was made with; the held-out items are its val stream "
                           "(default: %(default)s)")
    data.add_argument("--valid-data", metavar="DIR", help="validation shards (preprocess_data.py) for bpt")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--seed", type=int, default=0,
                          help="candidate j of every prompt (or held-out image j) is sampled with seed SEED+j; "
                               "also seeds self-FID training (default: %(default)s)")
    sampling.add_argument("--cfg-scale", type=float, nargs="+", default=[1.0], metavar="S",
                          help="one or more guidance scales; t2i and fid report one row each (default: 1)")
    sampling.add_argument("--candidates", type=positive_int, default=1,
                          help="images generated per prompt, of which --post-select keeps one (default: 1)")
    sampling.add_argument("--post-select", action="store_true",
                          help="judge the candidate post-selection ranks best (--post-selection-score) instead "
                               "of the first")
    sampling.add_argument("--post-selection-score", choices=POST_SELECTION_SCORES, default="agreement",
                          help="how --post-select and --caption-candidates match a text and an image: agreement "
                               "(both directions) or caption (CogView's) (default: %(default)s)")
    sampling.add_argument("--top-k", type=int, default=200, help="0 turns it off (default: %(default)s)")
    sampling.add_argument("--top-p", type=float, default=1.0, help="1 turns it off (default: %(default)s)")
    sampling.add_argument("--temperature", type=float, default=1.0, help="(default: %(default)s)")
    sampling.add_argument("--caption-top-k", type=int, default=1,
                          help="top-k of the caption section's decoding, with the temperature and top-p above; "
                               "the default 1 judges each image's most likely caption, as a captioner is used "
                               "(default: %(default)s)")
    sampling.add_argument("--caption-candidates", type=positive_int, default=1, metavar="N",
                          help="also judge reranked captions: N sampled per image (no top-k, "
                               "--caption-temperature), keeping the one that agrees best with the image "
                               "(--post-selection-score) (default: 1, off)")
    sampling.add_argument("--caption-temperature", type=float, default=1.0,
                          help="temperature of the --caption-candidates samples (default: %(default)s)")
    fid = parser.add_argument_group("FID")
    fid.add_argument("--inception-weights", metavar="FILE",
                     help="pt_inception-2015-12-05-6726825d.pth, for FID and IS (docs/evaluation.md)")
    fid.add_argument("--feature-net", metavar="DIR", help="self-FID feature network saved by --train-feature-net")
    fid.add_argument("--train-feature-net", metavar="DIR",
                     help="train a self-FID network on the training split, save it to DIR (which must not "
                          "hold one yet) and use it; pass DIR as --feature-net to compare later runs")
    fid.add_argument("--feature-net-steps", type=positive_int, default=1000,
                     help="training steps of --train-feature-net (default: %(default)s)")
    fid.add_argument("--feature-net-items", type=positive_int, default=2000,
                     help="training-split items --train-feature-net learns from (default: %(default)s)")
    models = parser.add_argument_group("models and devices")
    models.add_argument("--text-tokenizer", metavar="FILE", help="SentencePiece .model (default: the recorded one)")
    models.add_argument("--vqvae", metavar="PATH", help="VQ-VAE folder or CogView .pt (default: the recorded one)")
    models.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    models.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="transformer compute precision (default: %(default)s)")
    models.add_argument("--max-inference-batch-size", type=positive_int, default=DEFAULT_MAX_BATCH_ROWS,
                        help="most sequences in one forward, for sampling and scoring (default: %(default)s)")
    models.add_argument("--tensorboard-dir", metavar="DIR",
                        help="log every number as a scalar at the checkpoint's iteration")
    return parser.parse_args(argv), parser


def choose_sections(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The sections to run, from --sections or the inputs given; refuses flags no chosen section reads."""
    wants_fid = bool(args.inception_weights or args.feature_net or args.train_feature_net)
    if args.sections is None:
        sections = [s for s in SECTIONS if (s != "bpt" or args.valid_data) and (s != "fid" or wants_fid)]
    else:
        sections = args.sections
        if "bpt" in sections and not args.valid_data:
            raise UserError("the bpt section needs --valid-data (a folder written by preprocess_data.py)")
        if "fid" in sections and not wants_fid:
            raise UserError("the fid section needs --inception-weights, --feature-net or --train-feature-net")
    for dest, readers in FLAG_SECTIONS.items():
        if getattr(args, dest) != parser.get_default(dest) and not set(readers) & set(sections):
            raise UserError(f"--{dest.replace('_', '-')} is read only by the {' and '.join(readers)} section(s), "
                            f"which are not run")
    if args.candidates > 1 and not args.post_select:
        raise UserError("--candidates above 1 needs --post-select: without it the first candidate is judged, "
                        "which is the image --candidates 1 makes")
    if args.post_select and args.candidates < 2:
        raise UserError("--post-select chooses among candidates: give --candidates 2 or more")
    if (args.post_selection_score != parser.get_default("post_selection_score") and not args.post_select
            and args.caption_candidates < 2):
        raise UserError("--post-selection-score needs --post-select or --caption-candidates 2 or more")
    if args.feature_net and args.train_feature_net:
        raise UserError("give either --feature-net (use a saved network) or --train-feature-net (make one)")
    for flag in ("feature_net_steps", "feature_net_items"):
        if getattr(args, flag) != parser.get_default(flag) and not args.train_feature_net:
            raise UserError(f"--{flag.replace('_', '-')} is read only with --train-feature-net")
    for scale in args.cfg_scale:
        SamplingSettings(args.temperature, args.top_k, args.top_p, scale)  # one-line errors for bad values
    if args.caption_top_k < 0:
        raise UserError(f"--caption-top-k must be >= 0 (0 = off, 1 = greedy), got {args.caption_top_k}")
    if args.caption_temperature != parser.get_default("caption_temperature") and args.caption_candidates < 2:
        raise UserError("--caption-temperature samples the --caption-candidates: give --caption-candidates 2 or more")
    SamplingSettings(args.caption_temperature, 0, 1.0)  # a one-line error for a bad temperature
    return sections


# ---------------------------------------------------------------- held-out data

@dataclass
class CaptionedSet:
    """Captioned images of one split; `objects` are each item's shapes objects, or None for other datasets."""

    captions: list[str]
    images: list[Image.Image]
    objects: list[list[ShapeObject]] | None
    description: dict  # the source's own description, plus how many items were used and which were skipped

    def tensor(self) -> torch.Tensor:
        return torch.stack([pil_to_tensor(image) for image in self.images])


def load_split(dataset: str, split: str, size: int, language: str, data_seed: int, count: int) -> CaptionedSet:
    """Up to `count` items of a split at `size` px; bad items are skipped, counted and logged."""
    source = open_dataset(dataset, split=split, size=size, language=language, seed=data_seed, num_items=count)
    loaded = [load_item(source, index) for index in tqdm(range(len(source)), desc=f"{split} items", unit="item")]
    items = [item for item in loaded if not isinstance(item, SkippedItem)]
    skipped = [item for item in loaded if isinstance(item, SkippedItem)]
    if skipped:
        logger.warning("%s", skip_report(skipped))
    if not items:
        raise UserError(f"no usable items in the {split} split of {dataset}")
    has_objects = all(item.metadata and "objects" in item.metadata for item in items)
    objects = [[ShapeObject(**obj) for obj in item.metadata["objects"]] for item in items] if has_objects else None
    description = {**source.describe(), "used": len(items), "skipped": [skip.to_dict() for skip in skipped]}
    return CaptionedSet([item.caption for item in items], [item.image for item in items], objects, description)


def open_validation_rows(path: str, pipe: Pipeline) -> ShardedRows:
    """Validation shards made with this model's tokenizer and VQ-VAE, at its image grid and positions."""
    rows = ShardedRows(path, pipe.tokenizer, vqvae_fingerprint(pipe.vqvae))
    grid = pipe.geometry.image_grid
    if rows.format.image_grid != grid:
        raise UserError(f"{path} holds {rows.format.image_grid}x{rows.format.image_grid} code grids, the model "
                        f"makes {grid}x{grid}; preprocess the data at the model's image size")
    needed = positions_needed(rows.format, dict.fromkeys(bpt_tasks(rows), 1.0))
    if needed > pipe.geometry.max_positions:
        raise UserError(f"rows of {path} need {needed} positions, the model has {pipe.geometry.max_positions}; "
                        f"preprocess with a smaller --text-max-tokens")
    budget = pipe.geometry.text_positions
    if budget is not None and rows.format.text_max_tokens != budget:
        raise UserError(f"{path} holds texts of up to {rows.format.text_max_tokens} tokens, the model reserves {budget} "
                        f"positions for text; preprocess with --text-max-tokens {budget}")
    return rows


# ---------------------------------------------------------------- generation shared by t2i and fid

@dataclass
class JudgedImages:
    """One image per held-out prompt at one guidance scale, and, with post-selection, the first candidates."""

    judged: list[Image.Image]
    first: list[Image.Image] | None = None


ImagesAtScale = Callable[[float], JudgedImages]


def pipeline_images(pipe: Pipeline, prompts: list[str], candidates: int, post_select: bool, seed: int,
                    sampling: dict[str, Any]) -> ImagesAtScale:
    """Images for `prompts` at a guidance scale, generated once per scale (t2i and fid share them).

    Post-selection ranks each prompt's candidates by `Pipeline.rerank_codes` on the sampled codes
    themselves (`rerank` would first re-encode the decoded images, a lossy round trip).
    """
    made: dict[float, JudgedImages] = {}

    def images_at(cfg_scale: float) -> JudgedImages:
        if cfg_scale not in made:
            results = pipe.text2image(prompts, n=candidates, seed=seed, cfg_scale=cfg_scale, **sampling)
            first = [result.images[0] for result in results]
            if post_select:
                best = [pipe.rerank_codes(result.prompt, result.codes).order[0]
                        for result in tqdm(results, desc="post-selection", unit="prompt")]
                made[cfg_scale] = JudgedImages([r.images[b] for r, b in zip(results, best)], first)
            else:
                made[cfg_scale] = JudgedImages(first)
        return made[cfg_scale]

    return images_at


# ---------------------------------------------------------------- sections

@dataclass
class Section:
    """What a section found: `results` go to the JSON file, `table` to stdout."""

    name: str
    results: dict[str, Any]
    table: str


def scale_key(cfg_scale: float) -> str:
    return f"{cfg_scale:g}"


def text_to_image_section(objects: list[list[ShapeObject]], cfg_scales: Sequence[float],
                          images_at: ImagesAtScale, candidates: int = 1) -> Section:
    """Shapes prompt following of the judged image of every prompt, per guidance scale; with
    post-selection the first candidates are scored too (what no selection would give)."""
    results: dict[str, Any] = {"prompts": len(objects), "candidates": candidates, "by_cfg_scale": {}}
    blocks = []
    for scale in cfg_scales:
        images = images_at(scale)
        selected = image_accuracy(zip(objects, images.judged))
        row = {"judged": selected.to_dict()}
        label = f"cfg scale {scale:g}" + (f", post-selected of {candidates}" if images.first is not None else "")
        blocks.append(f"{label}\n{selected.format_table()}")
        if images.first is not None:
            first = image_accuracy(zip(objects, images.first))
            row["first_candidate"] = first.to_dict()
            blocks.append(f"cfg scale {scale:g}, first candidate\n{first.format_table()}")
        results["by_cfg_scale"][scale_key(scale)] = row
    return Section("t2i", results, "\n".join(blocks))


def caption_section(images: list[Image.Image], objects: list[list[ShapeObject]],
                    caption: Callable[[list[Image.Image]], list[str]],
                    reranked: Callable[[list[Image.Image]], list[str]] | None = None, examples: int = 8) -> Section:
    """Shapes caption accuracy of the captions `caption` writes for held-out images and, when given, of
    the reranked captions `reranked` writes (under the key "reranked")."""
    captions = caption(images)
    accuracy = caption_accuracy(zip(objects, captions))
    results = {**accuracy.to_dict(), "examples": captions[:examples]}
    table = accuracy.format_table()
    if reranked is not None:
        chosen = reranked(images)
        reranked_accuracy = caption_accuracy(zip(objects, chosen))
        results["reranked"] = {**reranked_accuracy.to_dict(), "examples": chosen[:examples]}
        table += f"\nreranked captions\n{reranked_accuracy.format_table()}"
    return Section("caption", results, table)


def super_resolution_section(images: list[Image.Image], captions: list[str],
                             super_resolve: Callable[[list[Image.Image], list[str]], list[Image.Image]]) -> Section:
    """Held-out images downscaled 2x as `preprocess_data.py --with-lowres` does, super-resolved, and
    compared (PSNR) with the originals, next to bicubic upsampling of the same low-res images."""
    truth = torch.stack([pil_to_tensor(image) for image in images])
    lowres = [downscale(image) for image in images]
    restored = torch.stack([pil_to_tensor(image) for image in super_resolve(lowres, captions)])
    bicubic = bicubic_upsample(torch.stack([pil_to_tensor(image) for image in lowres]), 2)
    psnr, baseline = mean_psnr(restored, truth), mean_psnr(bicubic, truth)
    results = {"images": len(images), "psnr": psnr, "bicubic_psnr": baseline, "gain_over_bicubic": psnr - baseline}
    table = "\n".join([f"{'PSNR super-resolved':<28}{psnr:>9.2f} dB", f"{'PSNR bicubic':<28}{baseline:>9.2f} dB",
                       f"{'gain over bicubic':<28}{psnr - baseline:>+9.2f} dB",
                       f"{'images':<28}{len(images):>9d}"])
    return Section("sr", results, table)


def bpt_tasks(rows: ShardedRows, trained: Sequence[str] | None = None) -> list[str]:
    """Every task the rows can make (super-resolution needs their low-res codes) that the model was trained
    on (`trained`, from the checkpoint's metadata; None when it does not say, as in CogView's release):
    an untrained task's bits would say nothing about the model and swamp the average."""
    return [task for task in TASKS if (task != "super_resolution" or rows.format.lowres_grid)
            and (trained is None or task in trained)]


def trained_tasks(metadata: dict[str, Any]) -> list[str] | None:
    """The tasks the checkpoint's training mixed, when its metadata records them."""
    tasks = (metadata.get("data") or {}).get("tasks")
    return list(tasks) if tasks is not None else None


def bits_per_token_section(model: torch.nn.Module, tokenizer: UnifiedTokenizer, rows: ShardedRows, count: int,
                           batch_size: int, data_seed: int, precision: str = "fp32",
                           trained: Sequence[str] | None = None) -> Section:
    """Bits per image and per text token of the first `count` rows (in the permutation of `data_seed`),
    each scored as every task the rows allow and the model was trained on; the model runs in `precision`,
    as in generation."""
    used = min(count, len(rows))
    tasks = bpt_tasks(rows, trained)
    if not tasks:
        raise UserError(f"the model was trained on {', '.join(trained or [])}, which the rows in {rows.data_dir} "
                        f"cannot make (super-resolution needs shards written with --with-lowres)")

    def batches():
        for task in tasks:
            dataset = TaskSequenceDataset(rows, tokenizer, {task: 1.0}, seed=data_seed,
                                          position_layout=model.config.position_layout)
            for start in range(0, used, batch_size):
                samples = [dataset[position] for position in range(start, min(start + batch_size, used))]
                yield collate_sequences(samples, tokenizer.pad_id)

    with inference_autocast(next(model.parameters()).device, precision):
        result = bits_per_token(model, batches(), tokenizer, max_batches=len(tasks) * -(-used // batch_size))
    return Section("bpt", {**result.to_dict(), "rows": used, "data": str(rows.data_dir)},
                   f"{result.format_table()}\n{'rows':<18}{used:>12d}")


def caption_loss_section(model: torch.nn.Module, tokenizer: UnifiedTokenizer, codes: torch.Tensor,
                         captions: list[str], batch_size: int, precision: str = "fp32") -> Section:
    """CogView's caption loss of held-out (image codes, caption) pairs and the gap to shuffled pairs."""
    with inference_autocast(next(model.parameters()).device, precision):
        result = caption_loss_alignment(model, tokenizer, codes, captions, batch_size)
    return Section("caption-loss", result.to_dict(), result.format_table())


def softmax64(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.double(), dim=-1)


def fid_section(real: torch.Tensor, cfg_scales: Sequence[float], images_at: ImagesAtScale,
                inception: FIDInceptionV3 | None, feature_net: FeatureNet | None) -> Section:
    """FID and IS (Inception) and self-FID (our feature network) of the judged images at each scale
    against the real held-out images; the real images' own IS is the reference row."""
    results: dict[str, Any] = {"real_images": real.shape[0], "by_cfg_scale": {}}
    real_inception = inception_features(inception, real) if inception is not None else None
    real_self = features(feature_net, real) if feature_net is not None else None
    if real_inception is not None:
        results["real_inception_score"] = inception_score(softmax64(real_inception.logits))[0]
    if feature_net is not None:
        results["feature_net_fingerprint"] = feature_net_fingerprint(feature_net)
    lines = [f"{'cfg scale':<12}{'FID':>10}{'IS':>10}{'self-FID':>10}"]
    for scale in cfg_scales:
        generated = torch.stack([pil_to_tensor(image) for image in images_at(scale).judged])
        row: dict[str, float] = {}
        if inception is not None:
            outputs = inception_features(inception, generated)
            row["fid"] = fid_from_features(real_inception.pool, outputs.pool)
            row["inception_score"] = inception_score(softmax64(outputs.logits))[0]
        if feature_net is not None:
            row["self_fid"] = fid_from_features(real_self, features(feature_net, generated))
        results["by_cfg_scale"][scale_key(scale)] = row
        lines.append(f"{scale:<12g}" + "".join(f"{row[key]:>10.3f}" if key in row else f"{'-':>10}"
                                               for key in ("fid", "inception_score", "self_fid")))
    if "real_inception_score" in results:
        lines.append(f"{'real images':<12}{'-':>10}{results['real_inception_score']:>10.3f}{'-':>10}")
    if feature_net is not None:
        lines.append(f"self-FID network {results['feature_net_fingerprint']} (compare only with the same network)")
    return Section("fid", results, "\n".join(lines))


def vqvae_section(vqvae: torch.nn.Module, images: list[Image.Image]) -> Section:
    """Round-trip PSNR and codebook use of held-out images: `vqvae.evaluation.reconstruct`, the same
    report train_vqvae.py gives, so the numbers compare with it."""
    _, report = reconstruct(vqvae, np.stack([np.asarray(image.convert("RGB")) for image in images]))
    table = "\n".join([f"{'round-trip PSNR':<22}{report.psnr:>12.2f} dB",
                       f"{'codebook perplexity':<22}{report.perplexity:>12.1f} of {vqvae.config.codebook_size}",
                       f"{'codes used':<22}{100 * report.codes_used:>11.1f}%",
                       f"{'images':<22}{report.images:>12d}"])
    return Section("vqvae", report.to_dict(), table)


# ---------------------------------------------------------------- self-FID network, checkpoint identity

def self_fid_network(args: argparse.Namespace, tokenizer: UnifiedTokenizer, size: int,
                     device: torch.device) -> FeatureNet:
    """Train the self-FID network on the training split (captions as unified text ids) and save it."""
    train = load_split(args.dataset, "train", size, args.language, args.data_seed, args.feature_net_items)
    tokens = [tokenizer.encode_text(caption) for caption in train.captions]
    log_dir = Path(args.tensorboard_dir, "feature_net") if args.tensorboard_dir else None
    network = train_feature_net(train.tensor(), tokens, steps=args.feature_net_steps, seed=args.seed,
                                log_dir=log_dir, device=device)
    save_feature_net(network, args.train_feature_net)
    logger.info("saved the self-FID network to %s (fingerprint %s)", args.train_feature_net,
                feature_net_fingerprint(network))
    return network


def weights_fingerprint(module: torch.nn.Module) -> str:
    """16 hex digits of SHA-256 over every tensor (name, dtype, shape, bytes): the same for one set of
    weights in any checkpoint layout."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def checkpoint_iteration(path: Path) -> int | None:
    """The training iteration of a save folder or iteration folder; None for other layouts."""
    for name in LATEST_FILES:
        if (path / name).is_file():
            tag = (path / name).read_text(encoding="utf-8").strip()
            return int(tag) if tag.isdigit() else None
    return int(path.name) if path.is_dir() and path.name.isdigit() else None


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def flat_scalars(results: dict[str, Any], prefix: str) -> dict[str, float]:
    """Every number of nested results as `prefix/key/...` (for TensorBoard)."""
    scalars: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            scalars.update(flat_scalars(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[name] = float(value)
    return scalars


# ---------------------------------------------------------------- main

def load_fid_networks(args: argparse.Namespace,
                      device: torch.device) -> tuple[FIDInceptionV3 | None, FeatureNet | None]:
    """Called before the model loads, so a wrong path costs nothing."""
    inception = load_inception(args.inception_weights, device) if args.inception_weights else None
    feature_net = load_feature_net(args.feature_net, device) if args.feature_net else None
    if args.train_feature_net and Path(args.train_feature_net, "model.safetensors").exists():
        raise UserError(f"{args.train_feature_net} already holds a self-FID network; pass it as --feature-net "
                        f"to compare with runs that used it, or choose another folder")
    return inception, feature_net


def provenance(args: argparse.Namespace, argv: list[str], parts: Components) -> dict[str, Any]:
    """What the JSON file records besides the numbers: how to run it again, and which files it used."""
    load = Path(args.load)
    recorded_vqvae = parts.metadata.get("vqvae") or {}
    record: dict[str, Any] = {
        "command": shlex.join(["python", "evaluate.py", *argv]), "args": vars(args), "seed": args.seed,
        "checkpoint": {"path": str(load.resolve()), "iteration": checkpoint_iteration(load),
                       "weights_fingerprint": weights_fingerprint(parts.model),
                       "parameters": sum(p.numel() for p in parts.model.parameters()),
                       "tokenizer": parts.tokenizer.describe(),
                       "vqvae": {"path": str(args.vqvae or recorded_vqvae.get("path")),
                                 "fingerprint": vqvae_fingerprint(parts.vqvae)},
                       "geometry": asdict(parts.geometry)}}
    if args.inception_weights:
        record["inception_weights"] = {"path": args.inception_weights, "sha256": file_sha256(args.inception_weights)}
    return record


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, parser = parse_args(argv)
    sections = choose_sections(args, parser)
    if Path(args.output_json).is_dir():
        raise UserError(f"--output-json {args.output_json} is a folder; give a file name")
    device = resolve_device(args.device)
    inception, feature_net = load_fid_networks(args, device) if "fid" in sections else (None, None)
    parts = load_components(args.load, vqvae=args.vqvae, text_tokenizer=args.text_tokenizer, device=device)
    pipe = Pipeline(parts.model, parts.tokenizer, parts.vqvae, parts.geometry,
                    max_batch_rows=args.max_inference_batch_size, precision=args.precision,
                    post_selection=args.post_selection_score)
    size = pipe.image_size(pipe.geometry.image_grid)
    held_out = load_split(args.dataset, "val", size, args.language, args.data_seed, args.num_prompts)
    if held_out.objects is None:
        asked = [s for s in SHAPES_SECTIONS if s in sections and args.sections is not None]
        if asked:
            raise UserError(f"the {' and '.join(asked)} section(s) need shapes metadata, which --dataset "
                            f"{args.dataset} does not have; use --dataset shapes or other sections")
        sections = [s for s in sections if s not in SHAPES_SECTIONS]
    rows = open_validation_rows(args.valid_data, pipe) if "bpt" in sections else None
    if "fid" in sections and args.train_feature_net:
        feature_net = self_fid_network(args, pipe.tokenizer, size, device)

    sampling = {"top_k": args.top_k, "top_p": args.top_p, "temperature": args.temperature}
    images_at = pipeline_images(pipe, held_out.captions, args.candidates, args.post_select, args.seed, sampling)
    batch, precision = args.max_inference_batch_size, args.precision
    run_section = {
        "t2i": lambda: text_to_image_section(held_out.objects, args.cfg_scale, images_at, args.candidates),
        "caption": lambda: caption_section(held_out.images, held_out.objects, lambda images: pipe.caption(
            images, seed=args.seed, max_tokens=pipe.geometry.text_max_tokens,
            **{**sampling, "top_k": args.caption_top_k}), (lambda images: pipe.caption(
                images, seed=args.seed, max_tokens=pipe.geometry.text_max_tokens, top_k=0,
                temperature=args.caption_temperature, candidates=args.caption_candidates))
            if args.caption_candidates > 1 else None),
        "sr": lambda: super_resolution_section(held_out.images, held_out.captions, lambda images, texts: (
            pipe.super_resolve(images, texts, seed=args.seed, **sampling))),
        "bpt": lambda: bits_per_token_section(pipe.model, pipe.tokenizer, rows, args.num_prompts, batch,
                                              args.data_seed, precision, trained_tasks(parts.metadata)),
        "caption-loss": lambda: caption_loss_section(pipe.model, pipe.tokenizer, pipe.encode_images(
            held_out.tensor()), held_out.captions, batch, precision),
        "fid": lambda: fid_section(held_out.tensor(), args.cfg_scale, images_at, inception, feature_net),
        "vqvae": lambda: vqvae_section(pipe.vqvae, held_out.images),
    }
    report = {**provenance(args, argv, parts), "dataset": held_out.description, "sections": {}, "seconds": {},
              "complete": False}
    done: list[Section] = []
    for name in sections:
        logger.info("section %s", name)
        start = time.time()
        done.append(run_section[name]())
        report["sections"][name] = done[-1].results
        report["seconds"][name] = round(time.time() - start, 3)
        atomic_write_json(args.output_json, report)  # a later failure keeps the sections already done
    report["complete"] = True
    atomic_write_json(args.output_json, report)

    board = TensorBoardLogger(args.tensorboard_dir)
    board.scalars(flat_scalars(report["sections"], "eval"), report["checkpoint"]["iteration"] or 0)
    board.close()
    print(f"evaluation of {args.load} on {len(held_out.captions)} held-out {args.dataset} items, seed {args.seed}")
    for section in done:
        print(f"\n== {section.name} ==\n{section.table}")
    print(f"\nwrote {args.output_json}")


if __name__ == "__main__":
    run_main(main)
