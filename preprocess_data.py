"""Encode a captioned image set into token shards for training (format: docs/data_format.md).

Example:
    python preprocess_data.py --dataset shapes --split train --num-items 20000 --image-size 64 \\
        --text-tokenizer runs/tok/sp.model --vqvae runs/vqvae --output runs/data/train --workers 2

Items are processed in fixed chunks (chunk k = items [k*C, (k+1)*C)); each finished chunk becomes one
shard, written atomically and then listed in `manifest.json`. After a kill, running the same command
again keeps the listed shards and redoes only the rest. Bad items are skipped, counted by reason and
listed in the manifest and in `skipped.txt`.
"""
from __future__ import annotations

import argparse
import multiprocessing
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data_utils.image_sources import (EMPTY_CAPTION, CaptionedImage, CaptionedImageSource, SkipItem, SkippedItem,
                                      load_item, open_dataset, skip_report)
from data_utils.images import downscale, pil_to_tensor
from data_utils.shapes import DEFAULT_TWO_OBJECT_FRACTION
from data_utils.sr_windows import DEFAULT_SR_CONDITION, SR_CONDITIONS, condition_grid, condition_image
from data_utils.shards import (FORMAT_VERSION, MANIFEST_NAME, RowFormat, read_manifest, remove_unlisted_files,
                               write_manifest, write_shard)
from data_utils import annotations
from data_utils.tokenizer import DEFAULT_LOCATION_BINS, UnifiedTokenizer
from utils.errors import UserError, run_main
from utils.files import atomic_write_text
from utils.logging import TensorBoardLogger, get_logger
from vqvae.api import img2code, load_vqvae, vqvae_fingerprint
from vqvae.model import VQVAE

logger = get_logger("preprocess_data")

SKIP_REPORT_NAME = "skipped.txt"
# Room for every question, box and expression of a two-object shapes item in English or Chinese (up to about
# 380 with a tokenizer trained on them, `train_text_tokenizer.py`).
DEFAULT_ANNOTATION_TOKENS = 512


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True,
                      help="'shapes', 'emoji', a folder of images + same-name .txt captions, or a .jsonl/.tsv list")
    data.add_argument("--split", default="train", choices=("train", "val"),
                      help="default %(default)s; shapes splits by seed, emoji and files by a stable hash "
                           "of caption or path")
    data.add_argument("--num-items", type=int, default=None,
                      help="shapes: how many to draw (None: 10000 train, 500 val); others: a cap (None: all)")
    data.add_argument("--image-size", type=int, default=64,
                      help="side of the square images, in pixels (default %(default)s)")
    data.add_argument("--language", default="en", choices=("en", "zh", "both"),
                      help="caption language of shapes (default %(default)s)")
    data.add_argument("--seed", type=int, default=0, help="seed of the shapes dataset (default %(default)s)")
    data.add_argument("--two-object-fraction", type=float, default=DEFAULT_TWO_OBJECT_FRACTION,
                      help="shapes: share of pictures with two objects (default %(default)s, shapes.md's). A "
                           "training set may hold more: one object is learned long before two")
    models = parser.add_argument_group("tokenizers")
    models.add_argument("--text-tokenizer", required=True, help="SentencePiece .model file")
    models.add_argument("--vqvae", required=True, help="VQ-VAE folder (train_vqvae.py) or CogView's .pt")
    rows = parser.add_argument_group("rows")
    rows.add_argument("--text-max-tokens", type=int, default=32,
                      help="text budget per row; longer captions are truncated and counted (default %(default)s)")
    rows.add_argument("--with-lowres", action="store_true",
                      help="also store the codes of the image downscaled 2x (needed for super-resolution)")
    rows.add_argument("--location-bins", type=int, default=0,
                      help="bins per side of the location-token grid (docs/architecture.md), for the understanding "
                           f"tasks (VQA, grounding); {DEFAULT_LOCATION_BINS} as in Kosmos-2. The data's tokenizer and "
                           "every model trained on it get them. 0: no location tokens, no understanding tasks, "
                           "the vocabulary of the image and caption tasks alone (default %(default)s)")
    rows.add_argument("--annotation-tokens", type=int, default=None,
                      help="ids per row for the understanding tasks' questions, boxes and expressions "
                           f"(default {DEFAULT_ANNOTATION_TOKENS} with location bins, 0 without)")
    rows.add_argument("--with-highres", action="store_true",
                      help="with --with-lowres: also store the codes of the image at twice --image-size, so "
                           "super-resolution also trains the windows that magnify an image beyond the trained "
                           "size (shapes draws it exactly; files need a source that large, else that part is "
                           "skipped and counted; emoji has none)")
    rows.add_argument("--sr-condition", default=DEFAULT_SR_CONDITION, choices=SR_CONDITIONS,
                      help="with --with-lowres: what super-resolution reads of the image it super-resolves: "
                           "'lowres' the codes of the half-size image (CogView), 'upsampled' the codes of it "
                           "bicubic-upsampled back to full size, on the target's grid (CogView2; with "
                           "--with-highres also stores the codes of the image upsampled to twice its size for "
                           "the windows). Models trained on the rows follow it (default %(default)s)")
    run = parser.add_argument_group("run")
    run.add_argument("--output", required=True, help="data folder to create (or to resume)")
    run.add_argument("--workers", type=int, default=1,
                     help="worker processes; 0 works in this process, for debugging (default %(default)s)")
    run.add_argument("--chunk-size", type=int, default=256,
                     help="items per chunk, and so rows per shard at most (default %(default)s)")
    run.add_argument("--batch-size", type=int, default=32, help="images per VQ-VAE call (default %(default)s)")
    run.add_argument("--log-dir", default=None, help="TensorBoard folder for progress scalars (default: none)")
    args = parser.parse_args(argv)
    for name in ("num_items", "image_size", "text_max_tokens", "chunk_size", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.location_bins < 0:
        parser.error(f"--location-bins must be >= 0, got {args.location_bins}")
    if args.annotation_tokens is None:
        args.annotation_tokens = DEFAULT_ANNOTATION_TOKENS if args.location_bins else 0
    if args.annotation_tokens < 0 or (args.annotation_tokens and not args.location_bins):
        parser.error(f"--annotation-tokens {args.annotation_tokens}: must be >= 0, and 0 with --location-bins 0 "
                     "(the understanding tasks need location tokens)")
    if not 0.0 <= args.two_object_fraction <= 1.0:
        parser.error(f"--two-object-fraction must lie in [0, 1], got {args.two_object_fraction}")
    if args.two_object_fraction != DEFAULT_TWO_OBJECT_FRACTION and args.dataset != "shapes":
        parser.error("--two-object-fraction applies to --dataset shapes only")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.with_highres and not args.with_lowres:
        parser.error("--with-highres adds super-resolution's windows to its whole-image step: give --with-lowres too")
    if args.sr_condition != DEFAULT_SR_CONDITION and not args.with_lowres:
        parser.error(f"--sr-condition {args.sr_condition} is super-resolution's condition: give --with-lowres too")
    return args


@dataclass(frozen=True)
class EncodeSettings:
    """Everything a worker needs to turn a chunk of item indices into rows (sent to each worker once)."""

    dataset: str
    split: str
    num_items: int | None
    image_size: int
    language: str
    seed: int
    text_tokenizer: str
    vqvae: str
    text_max_tokens: int
    with_lowres: bool
    chunk_size: int
    batch_size: int
    location_bins: int = 0
    annotation_tokens: int = 0
    with_highres: bool = False
    sr_condition: str = DEFAULT_SR_CONDITION
    two_object_fraction: float = DEFAULT_TWO_OBJECT_FRACTION

    def open_source(self) -> CaptionedImageSource:
        return open_dataset(self.dataset, split=self.split, size=self.image_size, language=self.language,
                            seed=self.seed, num_items=self.num_items, two_object_fraction=self.two_object_fraction)

    def load_models(self) -> tuple[UnifiedTokenizer, VQVAE]:
        vqvae = load_vqvae(self.vqvae)
        return UnifiedTokenizer.from_files(self.text_tokenizer, vqvae.config.codebook_size, self.location_bins), vqvae

    def row_format(self, tokenizer: UnifiedTokenizer, vqvae: VQVAE) -> RowFormat:
        """The row layout, after checking that the image size suits the VQ-VAE and has a grid token."""
        factor = vqvae.config.downsample * (2 if self.with_lowres else 1)
        if self.image_size % factor:
            why = f"the VQ-VAE downsamples {vqvae.config.downsample}x" + (
                ", and --with-lowres halves the image" if self.with_lowres else "")
            raise UserError(f"--image-size {self.image_size} must be a multiple of {factor} ({why})")
        grid = self.image_size // vqvae.config.downsample
        tokenizer.grid_token(grid)
        lowres_grid = condition_grid(self.sr_condition, grid // 2) if self.with_lowres else None
        if lowres_grid:
            tokenizer.grid_token(lowres_grid)
        if self.with_highres:
            tokenizer.grid_token(2 * grid)
        return RowFormat(self.text_max_tokens, grid, lowres_grid, RowFormat.dtype_for_vocab(tokenizer.vocab_size),
                         2 * grid if self.with_highres else None, self.annotation_tokens, self.sr_condition)

    def identity(self) -> dict[str, Any]:
        """The settings that decide the rows; a resumed run must match them (the dataset by `describe()`)."""
        return {name: value for name, value in asdict(self).items()
                if name not in ("dataset", "text_tokenizer", "vqvae", "batch_size")
                and (name not in ("with_highres", "location_bins", "annotation_tokens") or value)
                and (name != "sr_condition" or value != DEFAULT_SR_CONDITION)
                and (name != "two_object_fraction" or value != DEFAULT_TWO_OBJECT_FRACTION)}
        # the options added later are absent when off, as in folders made before them


@dataclass
class ChunkResult:
    """What a worker sends back for one chunk: its rows and what it skipped and truncated."""

    chunk: int
    num_items: int
    rows: np.ndarray
    source_indices: np.ndarray
    skipped: list[SkippedItem]
    truncated: int
    annotations_dropped: int = 0  # annotation records left out: a text over the budget, or no room in the row
    highres_missing: int = 0  # rows kept without highres codes (their source was too small)


# ---------------------------------------------------------------- the chunk worker

@dataclass
class _WorkerState:
    settings: EncodeSettings
    source: CaptionedImageSource
    tokenizer: UnifiedTokenizer
    vqvae: VQVAE
    row_format: RowFormat


_worker: _WorkerState | None = None  # one per process, loaded once by `init_worker`


def init_worker(settings: EncodeSettings) -> None:
    """Load the dataset, tokenizer and VQ-VAE once per process."""
    global _worker
    tokenizer, vqvae = settings.load_models()
    _worker = _WorkerState(settings, settings.open_source(), tokenizer, vqvae, settings.row_format(tokenizer, vqvae))


def init_pool_worker(settings: EncodeSettings) -> None:
    """`init_worker` with one torch thread: the workers already run side by side, one per core."""
    torch.set_num_threads(1)
    init_worker(settings)


def encode_images(vqvae: VQVAE, images: list[Image.Image], batch_size: int) -> np.ndarray:
    """Codes [N, grid, grid] of PIL images, `batch_size` images per VQ-VAE call."""
    batches = [img2code(vqvae, torch.stack([pil_to_tensor(image) for image in images[start:start + batch_size]]))
               for start in range(0, len(images), batch_size)]
    return torch.cat(batches).numpy()


def encode_chunk(chunk: int) -> ChunkResult:
    """Rows of chunk `chunk`: captions tokenized (truncated to the budget), images and low-res images encoded."""
    state = _worker
    assert state is not None, "init_worker() must run in this process first"
    budget = state.row_format.text_max_tokens
    start = chunk * state.settings.chunk_size
    indices = range(start, min(start + state.settings.chunk_size, len(state.source)))
    kept: list[CaptionedImage] = []
    texts: list[list[int]] = []
    skipped: list[SkippedItem] = []
    truncated = dropped = 0
    annotation_fields: list[np.ndarray | None] = []
    for index in indices:
        item = load_item(state.source, index)
        if isinstance(item, SkippedItem):
            skipped.append(item)
            continue
        try:
            ids = state.tokenizer.encode_text(item.caption)  # truncated below, counted instead of warned per item
        except UserError:
            skipped.append(SkippedItem(index, item.source, EMPTY_CAPTION))
            continue
        truncated += len(ids) > budget
        kept.append(item)
        texts.append(ids[:budget])
        field = None
        if state.row_format.annotation_tokens:
            row_annotations, dropped_texts = annotations.to_ids(
                state.tokenizer, item.annotations or annotations.TaskAnnotations(), item.caption,
                item.image.width, item.image.height, budget)
            field, dropped_records = annotations.pack(row_annotations, state.row_format.annotation_tokens)
            dropped += dropped_texts + dropped_records
        annotation_fields.append(field)

    row_format = state.row_format
    rows = np.zeros((len(kept), row_format.row_length), dtype=row_format.numpy_dtype)
    if kept:
        images = encode_images(state.vqvae, [item.image for item in kept], state.settings.batch_size)
        condition = row_format.sr_condition
        lowres = (encode_images(state.vqvae, [condition_image(condition, downscale(item.image)) for item in kept],
                                state.settings.batch_size) if row_format.lowres_grid else [None] * len(kept))
        highres = encode_highres(state, kept) if row_format.highres_grid else [None] * len(kept)
        upsampled = (encode_images(state.vqvae, [condition_image(condition, item.image) for item in kept],
                                   state.settings.batch_size) if row_format.upsampled_grid else [None] * len(kept))
        for i, text_ids in enumerate(texts):
            rows[i] = row_format.pack(np.asarray(text_ids), images[i], lowres[i], state.tokenizer.pad_id, highres[i],
                                      annotation_fields[i], upsampled=upsampled[i])
    return ChunkResult(chunk, len(indices), rows, np.array([item.index for item in kept], dtype=np.int64),
                       skipped, truncated, dropped,
                       sum(codes is None for codes in highres) if row_format.highres_grid else 0)


def encode_highres(state: _WorkerState, kept: list[CaptionedImage]) -> list[np.ndarray | None]:
    """Codes of each item's image at twice its side (`double_size`), None where the source has no such image."""
    doubled: list[Image.Image | None] = []
    for item in kept:
        try:
            doubled.append(state.source.double_size(item))
        except SkipItem:  # the file went away since `item` was read: keep the row, without this part
            doubled.append(None)
    present = [i for i, image in enumerate(doubled) if image is not None]
    codes = encode_images(state.vqvae, [doubled[i] for i in present], state.settings.batch_size) if present else []
    out: list[np.ndarray | None] = [None] * len(kept)
    for i, item_codes in zip(present, codes):
        out[i] = item_codes
    return out


def run_chunks(settings: EncodeSettings, chunks: list[int], workers: int) -> Iterator[ChunkResult]:
    """Results of `chunks`, in chunk order, from `workers` spawned processes (0: this process)."""
    if workers == 0:
        init_worker(settings)
        yield from map(encode_chunk, chunks)
        return
    if not chunks:
        return
    # spawn: a fresh interpreter per worker, never a fork of a process holding torch threads. Unlike
    # multiprocessing.Pool, the executor reports a worker that died instead of waiting for it forever.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context, initializer=init_pool_worker,
                             initargs=(settings,)) as pool:
        try:
            yield from pool.map(encode_chunk, chunks)
        except BrokenProcessPool:
            raise UserError("a worker process died (out of memory, or killed); finished shards are kept: "
                            "run the same command again to resume") from None


# ---------------------------------------------------------------- the manifest

def new_manifest(settings: EncodeSettings, tokenizer: UnifiedTokenizer, vqvae: VQVAE, source: CaptionedImageSource,
                 row_format: RowFormat) -> dict[str, Any]:
    """The manifest of a fresh output folder: no shards yet."""
    return {
        "format_version": FORMAT_VERSION,
        **row_format.to_dict(),
        "tokenizer": tokenizer.describe(),
        "vqvae": {"path": str(Path(settings.vqvae).resolve()), "fingerprint": vqvae_fingerprint(vqvae)},
        "dataset": {"name": settings.dataset, "args": source.describe()},
        "preprocess": settings.identity(),
        "num_chunks": -(-len(source) // settings.chunk_size),
        "complete": False,
        "shards": [],
        "counts": {"items": 0, "rows": 0, "skipped": 0, "truncated": 0, "annotations_dropped": 0,
                   "skipped_by_reason": {}, **({"highres_missing": 0} if row_format.highres_grid else {})},
        "skipped": [],
    }


def check_same_job(existing: dict[str, Any], expected: dict[str, Any], output: Path) -> None:
    """Refuse to resume into a folder made by other settings, data, tokenizer or VQ-VAE."""
    checks = [("preprocess", existing.get("preprocess"), expected["preprocess"]),
              ("dataset", existing["dataset"].get("args"), expected["dataset"]["args"]),
              ("tokenizer", existing["tokenizer"].get("fingerprint"), expected["tokenizer"]["fingerprint"]),
              ("VQ-VAE", existing["vqvae"].get("fingerprint"), expected["vqvae"]["fingerprint"])]
    for what, found, wanted in checks:
        if found != wanted:
            if isinstance(found, dict) and isinstance(wanted, dict):
                key = next(k for k in sorted(set(found) | set(wanted)) if found.get(k) != wanted.get(k))
                found, wanted, what = found.get(key), wanted.get(key), f"{what} {key}"
            raise UserError(f"{output} was made with a different {what} ({found!r}, now {wanted!r}); "
                            "give a fresh --output or delete the folder")


def open_output(output: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue from: the existing one when resuming (strays removed), else a new one."""
    if (output / MANIFEST_NAME).exists():
        manifest = read_manifest(output)
        check_same_job(manifest, expected, output)
        removed = remove_unlisted_files(output, manifest)
        if removed:
            logger.info("removed %d file(s) of unfinished chunks: %s", len(removed), " ".join(removed))
        logger.info("resuming: %d of %d chunks already done", len(manifest["shards"]), manifest["num_chunks"])
        return manifest
    if output.exists() and any(output.iterdir()):
        raise UserError(f"{output} is not empty and holds no {MANIFEST_NAME}; give a fresh --output")
    output.mkdir(parents=True, exist_ok=True)
    write_manifest(output, expected)
    return expected


def record_chunk(manifest: dict[str, Any], shard: dict[str, Any], result: ChunkResult) -> None:
    """Add a finished chunk's shard and skips to the manifest (shards kept in chunk order) and recount."""
    has_highres = RowFormat.from_dict(manifest).highres_grid is not None
    entry = {**shard, "items": result.num_items, "truncated": result.truncated,
             "annotations_dropped": result.annotations_dropped,
             **({"highres_missing": result.highres_missing} if has_highres else {})}
    manifest["shards"] = sorted([*manifest["shards"], entry],
                                key=lambda entry: entry["first_chunk"])
    manifest["skipped"] = sorted([*manifest["skipped"], *(skip.to_dict() for skip in result.skipped)],
                                 key=lambda entry: entry["index"])
    reasons = Counter(entry["reason"] for entry in manifest["skipped"])
    counts = {"items": sum(entry["items"] for entry in manifest["shards"]),
              "rows": sum(entry["rows"] for entry in manifest["shards"]),
              "skipped": len(manifest["skipped"]),
              "truncated": sum(entry["truncated"] for entry in manifest["shards"]),
              "annotations_dropped": sum(entry["annotations_dropped"] for entry in manifest["shards"]),
              "skipped_by_reason": dict(reasons.most_common())}
    if has_highres:
        counts["highres_missing"] = sum(entry["highres_missing"] for entry in manifest["shards"])
    manifest["counts"] = counts
    manifest["complete"] = len(manifest["shards"]) == manifest["num_chunks"]


def write_skip_report(output: Path, manifest: dict[str, Any]) -> str:
    report = skip_report(SkippedItem(**entry) for entry in manifest["skipped"])
    atomic_write_text(output / SKIP_REPORT_NAME, report + "\n")
    return report


# ---------------------------------------------------------------- main

def pending_chunks(manifest: dict[str, Any]) -> list[int]:
    done = {shard["first_chunk"] for shard in manifest["shards"]}
    return [chunk for chunk in range(manifest["num_chunks"]) if chunk not in done]


def process(settings: EncodeSettings, output: Path, workers: int, log_dir: str | None = None) -> dict[str, Any]:
    """Encode every unfinished chunk into `output`; returns the final manifest."""
    for path, what in ((settings.text_tokenizer, "text tokenizer"), (settings.vqvae, "VQ-VAE")):
        if not Path(path).exists():
            raise UserError(f"{what} not found: {path}")
    tokenizer, vqvae = settings.load_models()
    source = settings.open_source()
    row_format = settings.row_format(tokenizer, vqvae)
    manifest = open_output(output, new_manifest(settings, tokenizer, vqvae, source, row_format))
    chunks = pending_chunks(manifest)
    board = TensorBoardLogger(log_dir)
    started, items_before = time.monotonic(), manifest["counts"]["items"]
    with tqdm(total=len(source), initial=items_before, unit="item", desc="preprocess") as bar:
        for result in run_chunks(settings, chunks, workers):
            shard = write_shard(output, result.chunk, result.rows, result.source_indices, row_format)
            record_chunk(manifest, shard, result)
            write_manifest(output, manifest)
            bar.update(result.num_items)
            bar.set_postfix(skipped=manifest["counts"]["skipped"])
            board.scalars({"preprocess/rows": manifest["counts"]["rows"],
                           "preprocess/skipped": manifest["counts"]["skipped"],
                           "preprocess/items_per_second": (bar.n - items_before) / (time.monotonic() - started)},
                          step=manifest["counts"]["items"])
    board.close()
    if not chunks:
        logger.info("%s is already complete; nothing to do", output)
    return manifest


def summarise(output: Path, manifest: dict[str, Any]) -> None:
    counts = manifest["counts"]
    logger.info("%d rows from %d items in %d shards in %s", counts["rows"], counts["items"], len(manifest["shards"]),
                output)
    if counts["annotations_dropped"]:
        logger.warning("%d question(s), box(es) or expression(s) were left out: a text over --text-max-tokens, or "
                       "no room left in --annotation-tokens", counts["annotations_dropped"])
    if counts["truncated"]:
        logger.warning("%d caption(s) were longer than --text-max-tokens %d and were truncated",
                       counts["truncated"], RowFormat.from_dict(manifest).text_max_tokens)
    if counts.get("highres_missing"):
        logger.warning("%d row(s) have no highres codes (their source is smaller than twice --image-size); "
                       "super-resolution trains only the whole-image step on them", counts["highres_missing"])
    report = write_skip_report(output, manifest)
    (logger.warning if counts["skipped"] else logger.info)("%s (report: %s)", report, output / SKIP_REPORT_NAME)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = EncodeSettings(
        dataset=args.dataset, split=args.split, num_items=args.num_items, image_size=args.image_size,
        language=args.language, seed=args.seed, text_tokenizer=args.text_tokenizer, vqvae=args.vqvae,
        text_max_tokens=args.text_max_tokens, with_lowres=args.with_lowres, chunk_size=args.chunk_size,
        batch_size=args.batch_size, location_bins=args.location_bins, annotation_tokens=args.annotation_tokens,
        with_highres=args.with_highres, sr_condition=args.sr_condition, two_object_fraction=args.two_object_fraction)
    output = Path(args.output)
    summarise(output, process(settings, output, args.workers, args.log_dir))


if __name__ == "__main__":
    run_main(main)
