"""One interface over every captioned image source: shapes, emoji, and a user's own folder or list.

Preprocessing, VQ-VAE training and evaluation all read images through `open_dataset`, so a source only
has to answer `len`, `item(index)` (a square RGB image of the requested size and its caption) and
`caption(index)` (cheap, for tokenizer training). A bad item raises `SkipItem` from `item()`: the caller
counts and lists it (`load_item`, `skip_report`) and goes on; only a bad dataset *name or path* is a
`UserError`. Generation reads its `--input-images` with the same checks (`read_image_or_skip`) and
reports skips the same way.

Splits never depend on a random draw, so every run and every machine agree on them:
- shapes: a fixed 5% of all possible pictures (`held_out_scene`, a stable hash of what is drawn) belong to
  `val` and never to `train`. Seed streams alone do not keep them apart: there are only 3,888
  single-object pictures, and 50,000 training items draw every one of them. Item i of a split is item i
  of the first of its streams (`ShapesDataset` seeds `seed + (2k + [val]) x VAL_SEED_OFFSET`, k = 0, 1,
  ...) whose picture belongs to the split: 95% of training items are those of `ShapesDataset(seed)`;
- emoji: an item is `val` when the stable hash of its caption falls below `EMOJI_VAL_FRACTION`;
- files: an item is `val` when the stable hash of its relative path falls below `FILES_VAL_FRACTION`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from data_utils.annotations import TaskAnnotations
from data_utils.images import load_image
from data_utils.shapes import DEFAULT_TWO_OBJECT_FRACTION, ShapeObject, ShapesDataset, render
from data_utils.shapes_tasks import shapes_tasks
from utils.errors import UserError
from utils.logging import get_logger

logger = get_logger(__name__)

SPLITS = ("train", "val")
VAL_SEED_OFFSET = 1_000_003  # stream k of a split uses seed + (2k + [split is val]) x this
SHAPES_HELD_OUT_FRACTION = 0.05
SHAPES_DEFAULT_ITEMS = {"train": 10_000, "val": 500}
EMOJI_VAL_FRACTION = 0.05
FILES_VAL_FRACTION = 0.02
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# The smallest image side read by default: below it an image holds too little to encode into codes.
MIN_IMAGE_SIDE = 16

# Reasons for skipping an item; each is counted separately in the skip report.
MALFORMED_LINE = "malformed list line"
MISSING_IMAGE = "missing image"
NOT_AN_IMAGE = "not an image file"
EMPTY_FILE = "empty file"
UNREADABLE_IMAGE = "unreadable image"
IMAGE_TOO_SMALL = "image too small"
MISSING_CAPTION = "missing caption"
UNREADABLE_CAPTION = "unreadable caption"
EMPTY_CAPTION = "empty caption"
BAD_ANNOTATIONS = "bad annotations"


class SkipItem(Exception):
    """A bad data item (corrupt image, missing caption, ...): counted and listed, never fatal."""

    def __init__(self, reason: str, source: str, detail: str = ""):
        super().__init__(f"{source}: {reason}" + (f" ({detail})" if detail else ""))
        self.reason, self.source, self.detail = reason, source, detail


@dataclass
class SkippedItem:
    """The record of one skip, as stored in a shard manifest's `skipped` list."""

    index: int
    source: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict:
        return {"index": self.index, "source": self.source, "reason": self.reason, "detail": self.detail}


@dataclass
class CaptionedImage:
    index: int
    image: Image.Image  # RGB, size x size
    caption: str
    source: str  # a file path, or "shapes:{seed}:{index}", or "emoji:{caption}"
    metadata: dict | None = None
    # Questions, object boxes and referring expressions, in pixels of `image` (data_utils/annotations.py).
    annotations: TaskAnnotations | None = None


class CaptionedImageSource(ABC):
    """A finite, indexable set of captioned images of one split."""

    name: str

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def item(self, index: int) -> CaptionedImage:
        """The image and caption of `index`; raises `SkipItem` for a bad item."""

    @abstractmethod
    def caption(self, index: int) -> str:
        """The caption of `index` without decoding its image where possible; raises `SkipItem`."""

    @abstractmethod
    def describe(self) -> dict:
        """What a manifest records to say which data this is."""

    def texts(self, index: int) -> list[str]:
        """Every text of `index` a tokenizer should know: its caption, and its questions, answers, phrases and
        expressions where it has them (cheap, for tokenizer training); raises `SkipItem`."""
        return [self.caption(index)]

    def double_size(self, item: CaptionedImage) -> Image.Image | None:
        """`item`'s image at twice its side, made from the source rather than upsampled (the target of
        super-resolution's windows, `preprocess_data.py --with-highres`), or None where the source holds
        no more detail than `item.image`."""
        return None

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} ({len(self)} items)")


def stable_fraction(key: str) -> float:
    """A number in [0, 1) that depends only on `key` (SHA-1), the same on every machine and run."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def in_split(key: str, split: str, val_fraction: float) -> bool:
    return (stable_fraction(key) < val_fraction) == (split == "val")


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """The largest centred square of `image`, resized to size x size (LANCZOS)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    if side == size and (width, height) == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))


# --- shapes ----------------------------------------------------------------------------------------------

def held_out_scene(objects: Sequence[ShapeObject]) -> bool:
    """Is this picture one of those kept for `val`? Decided by what is drawn (each object's colour, shape
    and box, in any order), so the same picture from any seed, index or caption language agrees."""
    key = "|".join(sorted(f"{obj.colour} {obj.shape} {obj.bbox}" for obj in objects))
    return stable_fraction(f"shapes:{key}") < SHAPES_HELD_OUT_FRACTION


class ShapesSource(CaptionedImageSource):
    name = "shapes"

    def __init__(self, split: str, size: int, language: str, seed: int, num_items: int,
                 two_object_fraction: float = DEFAULT_TWO_OBJECT_FRACTION):
        self.split, self.num_items = split, num_items
        self.seed = seed if split == "train" else seed + VAL_SEED_OFFSET
        try:
            self._streams = [ShapesDataset(seed=self.seed, size=size, language=language,
                                           two_object_fraction=two_object_fraction)]
        except ValueError as err:
            raise UserError(f"shapes: {err}") from None

    def __len__(self) -> int:
        return self.num_items

    def _stream_of(self, index: int) -> ShapesDataset:
        """The first stream whose item `index` is a picture of this split (module docstring)."""
        wanted, attempt = self.split == "val", 0
        while True:
            if attempt == len(self._streams):
                first = self._streams[0]
                self._streams.append(ShapesDataset(seed=self.seed + 2 * attempt * VAL_SEED_OFFSET, size=first.size,
                                                   language=first.language,
                                                   two_object_fraction=first.two_object_fraction))
            if held_out_scene(self._streams[attempt].objects(index)) == wanted:
                return self._streams[attempt]
            attempt += 1

    def item(self, index: int) -> CaptionedImage:
        self._check_index(index)
        stream = self._stream_of(index)
        item = stream.item(index)
        metadata = {"language": item.language, "objects": [obj.to_dict() for obj in item.objects]}
        tasks = shapes_tasks(item.objects, stream.size, item.language, self.seed, index)
        annotations = TaskAnnotations([(qa.question, qa.answer) for qa in tasks.questions],
                                      [(obj.phrase, obj.box) for obj in tasks.objects],
                                      [(ref.expression, ref.box) for ref in tasks.expressions])
        return CaptionedImage(index, item.image, item.caption, f"shapes:{stream.seed}:{index}", metadata, annotations)

    def caption(self, index: int) -> str:
        self._check_index(index)
        return self._stream_of(index).caption(index)

    def objects(self, index: int) -> list[ShapeObject]:
        """The objects drawn in item `index`, with their boxes."""
        self._check_index(index)
        return self._stream_of(index).objects(index)

    def texts(self, index: int) -> list[str]:
        self._check_index(index)
        stream = self._stream_of(index)
        item = stream.item(index)
        tasks = shapes_tasks(item.objects, stream.size, item.language, self.seed, index)
        return [item.caption, *(text for qa in tasks.questions for text in (qa.question, qa.answer)),
                *(ref.expression for ref in tasks.expressions)]

    def double_size(self, item: CaptionedImage) -> Image.Image:
        """The same objects with every box doubled, drawn on a canvas twice as large: the scene at twice
        the resolution, exactly (a fresh render at that size would draw its own +-1 px jitter)."""
        stream = self._stream_of(item.index)
        objects = [replace(obj, bbox=tuple(2 * v for v in obj.bbox)) for obj in stream.objects(item.index)]
        return render(objects, 2 * stream.size)

    def describe(self) -> dict:
        first = self._streams[0]
        return {"name": "shapes", "split": self.split, "seed": self.seed, "size": first.size,
                "language": first.language, "num_items": self.num_items,
                "two_object_fraction": first.two_object_fraction, "held_out_fraction": SHAPES_HELD_OUT_FRACTION}


# --- emoji -----------------------------------------------------------------------------------------------

class EmojiSource(CaptionedImageSource):
    name = "emoji"

    def __init__(self, split: str, size: int, num_items: int | None):
        from data_utils.emoji_data import load_emoji

        cache = load_emoji(size)
        keep = [i for i, caption in enumerate(cache.captions) if in_split(caption, split, EMOJI_VAL_FRACTION)]
        self._rows = keep[:num_items] if num_items is not None else keep
        self._images, self._captions = cache.images, cache.captions
        self.split, self.size, self.cache_path = split, size, cache.path

    def __len__(self) -> int:
        return len(self._rows)

    def item(self, index: int) -> CaptionedImage:
        self._check_index(index)
        row = self._rows[index]
        caption = self._captions[row]
        return CaptionedImage(index, Image.fromarray(self._images[row], mode="RGB"), caption, f"emoji:{caption}")

    def caption(self, index: int) -> str:
        self._check_index(index)
        return self._captions[self._rows[index]]

    def describe(self) -> dict:
        return {"name": "emoji", "split": self.split, "size": self.size, "items": len(self),
                "val_fraction": EMOJI_VAL_FRACTION, "cache": str(self.cache_path)}


# --- a user's own files ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    key: str  # path relative to the dataset root (or as written in the list): split hash and `source`
    image_path: Path | None
    caption: str | None = None  # given inline by a list file
    caption_path: Path | None = None  # or read from a .txt beside the image
    problem: str | None = None  # a reason to skip known at scan time
    problem_detail: str = ""
    annotations: dict | None = None  # a JSONL row's "questions", "objects" and "expressions", checked in shape


class FileSource(CaptionedImageSource):
    """Images on disk with captions: a folder of images + same-name `.txt`, or a JSONL/TSV list."""

    name = "files"

    def __init__(self, root: Path, entries: list[_Entry], split: str, size: int, min_side: int):
        self.root, self.split, self.size, self.min_side = root, split, size, min_side
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def caption(self, index: int) -> str:
        self._check_index(index)
        return self._caption(self._entries[index])

    def texts(self, index: int) -> list[str]:
        fields = self._entries[index].annotations or {}
        return [self.caption(index), *(entry[key] for name, keys in ANNOTATION_FIELDS.items()
                                       for entry in fields.get(name, []) for key in keys if key != "box")]

    def _caption(self, entry: _Entry) -> str:
        if entry.problem is not None:
            raise SkipItem(entry.problem, entry.key, entry.problem_detail)
        text = entry.caption
        if text is None:
            if entry.caption_path is None:
                raise SkipItem(MISSING_CAPTION, entry.key, "the list gives no caption")
            if not entry.caption_path.is_file():
                raise SkipItem(MISSING_CAPTION, entry.key, f"no {entry.caption_path.name} beside it")
            try:
                text = entry.caption_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise SkipItem(UNREADABLE_CAPTION, entry.key, str(err)) from None
        text = " ".join(text.split())
        if not text:
            raise SkipItem(EMPTY_CAPTION, entry.key)
        return text

    def item(self, index: int) -> CaptionedImage:
        self._check_index(index)
        entry = self._entries[index]
        caption = self._caption(entry)
        if entry.image_path is None:
            raise SkipItem(MISSING_IMAGE, entry.key)
        image = read_image_or_skip(entry.image_path, entry.key, self.min_side)
        annotations = None
        if entry.annotations is not None:
            try:
                annotations = annotations_in_crop(entry.annotations, image.width, image.height, self.size)
            except ValueError as err:
                raise SkipItem(BAD_ANNOTATIONS, entry.key, str(err)) from None
        return CaptionedImage(index, center_crop_resize(image, self.size), caption, str(entry.image_path),
                              annotations=annotations)

    def double_size(self, item: CaptionedImage) -> Image.Image | None:
        """The file's centred square at twice the size, when its shorter side has that many pixels."""
        image = read_image_or_skip(Path(item.source), item.source, self.min_side)
        return center_crop_resize(image, 2 * self.size) if min(image.size) >= 2 * self.size else None

    def describe(self) -> dict:
        return {"name": "files", "path": str(self.root), "split": self.split, "size": self.size,
                "min_side": self.min_side, "items": len(self), "val_fraction": FILES_VAL_FRACTION}


def read_image_or_skip(path: Path, key: str, min_side: int = MIN_IMAGE_SIDE) -> Image.Image:
    """The RGB image at `path`, or `SkipItem` (named `key`) saying why not: missing, empty, unreadable
    or smaller than `min_side` on a side."""
    if not path.is_file():
        raise SkipItem(MISSING_IMAGE, key)
    if path.stat().st_size == 0:
        raise SkipItem(EMPTY_FILE, key)
    try:
        image = load_image(path)
    except (UserError, Image.DecompressionBombError) as err:
        raise SkipItem(UNREADABLE_IMAGE, key, str(err)) from None
    if min(image.size) < min_side:
        raise SkipItem(IMAGE_TOO_SMALL, key, f"{image.width}x{image.height} < {min_side}")
    return image


def _scan_folder(root: Path) -> list[_Entry]:
    """Every image under `root` (recursively, hidden files and folders left out), sorted by path."""
    entries = []

    def warn(err: OSError) -> None:
        logger.warning("cannot list %s: %s", err.filename, err.strerror)

    for folder, subfolders, files in os.walk(root, onerror=warn):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            path = Path(folder, name)
            if name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            key = path.relative_to(root).as_posix()
            entries.append(_Entry(key, path, caption_path=path.with_suffix(".txt")))
    return sorted(entries, key=lambda entry: entry.key)


# The understanding-task fields of a JSONL row (docs/datasets.md) and the keys of each of their entries.
ANNOTATION_FIELDS = {"questions": ("question", "answer"), "objects": ("phrase", "box"),
                     "expressions": ("expression", "box")}


def _check_annotation_fields(record: dict) -> dict | None | str:
    """A JSONL row's annotation fields, None when it has none, or the reason they are malformed."""
    found = {name: record[name] for name in ANNOTATION_FIELDS if name in record}
    if not found:
        return None
    for name, entries in found.items():
        keys = ANNOTATION_FIELDS[name]
        if not isinstance(entries, list):
            return f'"{name}" must be a list'
        for entry in entries:
            if not isinstance(entry, dict) or set(entry) != set(keys):
                return f'each of "{name}" must be {{{", ".join(repr(k) for k in keys)}}}'
            texts = [entry[k] for k in keys if k != "box"]
            if not all(isinstance(t, str) and t.strip() for t in texts):
                return f'"{name}" holds an empty or non-text {" or ".join(k for k in keys if k != "box")}'
            box = entry.get("box")
            if box is not None and not (isinstance(box, list) and len(box) == 4
                                        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
                return f'a box of "{name}" must be [x0, y0, x1, y1] in pixels'
    return found


def annotations_in_crop(fields: dict, width: int, height: int, size: int) -> TaskAnnotations:
    """A JSONL row's annotations, boxes moved from pixels of the width x height file into the size x size
    image it is encoded as (`center_crop_resize`): the box is cut to the kept square, then scaled, widened to
    whole pixels. An object or expression whose box lies outside the square is left out; a box outside the
    file or empty is a ValueError (the row is skipped)."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2

    def moved(box: list) -> tuple[int, int, int, int] | None:
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"box {box} is empty or outside the {width}x{height} image")
        x0, x1 = max(x0 - left, 0), min(x1 - left, side)
        y0, y1 = max(y0 - top, 0), min(y1 - top, side)
        if x0 >= x1 or y0 >= y1:
            return None
        scale = size / side
        return (math.floor(x0 * scale), math.floor(y0 * scale), min(size, math.ceil(x1 * scale)),
                min(size, math.ceil(y1 * scale)))

    annotations = TaskAnnotations([(qa["question"], qa["answer"]) for qa in fields.get("questions", [])])
    for name, target in (("objects", annotations.objects), ("expressions", annotations.expressions)):
        text_key = ANNOTATION_FIELDS[name][0]
        for entry in fields.get(name, []):
            box = moved(entry["box"])
            if box is not None:
                target.append((entry[text_key], box))
    return annotations


def _parse_list_line(line: str, suffix: str) -> tuple[str, str | None, dict | None] | str:
    """(image path, caption, annotation fields) of one JSONL/TSV line, or the reason it is malformed."""
    if suffix == ".jsonl":
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            return f"invalid JSON: {err.msg}"
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            return 'expected {"image": path, "caption": text}'
        caption = record.get("caption")
        annotations = _check_annotation_fields(record)
        if isinstance(annotations, str):
            return annotations
        return record["image"], caption if isinstance(caption, str) else None, annotations
    if "\t" not in line:
        return "expected path<TAB>caption"
    path, caption = line.split("\t", 1)
    return path, caption, None


def _read_list(list_path: Path) -> list[_Entry]:
    """Entries of a JSONL or TSV list, in file order; image paths relative to the list's folder."""
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {list_path}: {err}") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed = _parse_list_line(line, list_path.suffix.lower())
        if isinstance(parsed, str):
            entries.append(_Entry(f"{list_path.name}:{number}", None, problem=MALFORMED_LINE, problem_detail=parsed))
            continue
        path, caption, annotations = parsed
        path = path.strip()
        entries.append(_Entry(path, list_path.parent / path if path else None, caption=caption,
                              annotations=annotations))
    return entries


# --- opening a dataset by name or path -------------------------------------------------------------------

def open_dataset(name_or_path: str, *, split: str = "train", size: int = 64, language: str = "en",
                 seed: int = 0, num_items: int | None = None, min_side: int = MIN_IMAGE_SIDE,
                 two_object_fraction: float = DEFAULT_TWO_OBJECT_FRACTION) -> CaptionedImageSource:
    """The captioned images of `split` from `"shapes"`, `"emoji"`, a folder, or a `.jsonl`/`.tsv` list.

    `num_items` caps the number of items (shapes: sets it, default 10,000 train / 500 val); `language`,
    `seed` and `two_object_fraction` (the share of two-object pictures, shapes.md's half by default) apply to
    shapes; `min_side` is the smallest image side a file source accepts.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if size <= 0:
        raise UserError(f"image size must be positive, got {size}")
    if num_items is not None and num_items <= 0:
        raise UserError(f"num_items must be positive, got {num_items}")
    if name_or_path == "shapes":
        return ShapesSource(split, size, language, seed, num_items or SHAPES_DEFAULT_ITEMS[split], two_object_fraction)
    if name_or_path == "emoji":
        return EmojiSource(split, size, num_items)

    path = Path(name_or_path).expanduser().resolve()
    if path.is_dir():
        entries, root = _scan_folder(path), path
        if not entries:
            raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {path}")
    elif path.is_file() and path.suffix.lower() in (".jsonl", ".tsv"):
        entries, root = _read_list(path), path
        if not entries:
            raise UserError(f"{path} lists no images")
    elif path.exists():
        raise UserError(f"{path} is neither a folder nor a .jsonl/.tsv list of images and captions")
    else:
        raise UserError(f"unknown dataset {name_or_path!r}: expected 'shapes', 'emoji', a folder, "
                        "or a .jsonl/.tsv file")
    entries = [entry for entry in entries if in_split(entry.key, split, FILES_VAL_FRACTION)]
    if not entries:
        raise UserError(f"the {split} split of {path} is empty (it holds {FILES_VAL_FRACTION:.0%} of the items "
                        "by a hash of their paths); add more images")
    return FileSource(root, entries[:num_items], split, size, min_side)


# --- skips -----------------------------------------------------------------------------------------------

def load_item(source: CaptionedImageSource, index: int) -> CaptionedImage | SkippedItem:
    """`source.item(index)`, or the record of why it was skipped (logged as a warning)."""
    try:
        return source.item(index)
    except SkipItem as skip:
        logger.warning("skipping item %d: %s", index, skip)
        return SkippedItem(index, skip.source, skip.reason, skip.detail)


def skip_report(skips: Iterable[SkippedItem], max_listed: int = 50) -> str:
    """A readable summary: the count of each reason, then the first `max_listed` skipped items."""
    skips = list(skips)
    if not skips:
        return "no items skipped"
    lines = [f"{len(skips)} item(s) skipped:"]
    lines += [f"  {count:6d}  {reason}" for reason, count in Counter(s.reason for s in skips).most_common()]
    for skip in skips[:max_listed]:
        lines.append(f"  #{skip.index} {skip.source}: {skip.reason}" + (f" ({skip.detail})" if skip.detail else ""))
    if len(skips) > max_listed:
        lines.append(f"  ... and {len(skips) - max_listed} more")
    return "\n".join(lines)
