"""What generation writes: PNGs that carry their own settings, a grid per prompt, a JSONL manifest.

Every PNG holds, as UTF-8 text chunks (iTXt, so Chinese prompts survive), the prompt, the negative
prompt, the seed and every sampling setting: an image found on its own tells how to make it again
(`read_png_metadata`). The manifest has one JSON object per image (and per caption or score) and
is rewritten atomically after every batch of prompts, so an interrupted run loses nothing written.
The grids are drawn by `generation.figures`.
A task that reads input images also writes `skipped.txt`: the inputs it could not read, and why.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from data_utils.image_sources import SkippedItem, skip_report
from utils.errors import UserError
from utils.files import atomic_write_bytes, atomic_write_text

MANIFEST_NAME = "manifest.jsonl"
SKIP_REPORT_NAME = "skipped.txt"


def _text_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def save_png(path: str | os.PathLike, image: Image.Image, metadata: Mapping[str, Any] | None = None) -> None:
    """Write `image` as a PNG, atomically, with `metadata` as text chunks (non-strings as JSON)."""
    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_itxt(key, _text_value(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buffer.getvalue())


def read_png_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The text chunks of a PNG written by `save_png`, JSON values decoded back."""
    with Image.open(path) as image:
        image.load()
        chunks = dict(image.text)
    decoded: dict[str, Any] = {}
    for key, value in chunks.items():
        try:
            decoded[key] = json.loads(value)
        except json.JSONDecodeError:
            decoded[key] = value
    return decoded


class Manifest:
    """The JSONL record of an output folder: one object per line, rewritten atomically on `flush`.

    A run into a folder that already has a manifest keeps its records, except those describing a file
    this run writes again, so the manifest always describes the files in the folder.
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / MANIFEST_NAME
        self.records: list[dict[str, Any]] = read_manifest(self.path) if self.path.is_file() else []

    def add(self, record: Mapping[str, Any]) -> None:
        file = record.get("file")
        if file is not None:
            self.records = [r for r in self.records if r.get("file") != file]
        self.records.append(dict(record))

    def flush(self) -> None:
        lines = (json.dumps(record, ensure_ascii=False) + "\n" for record in self.records)
        atomic_write_text(self.path, "".join(lines))


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a manifest file (or of the manifest in a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read the manifest {path}: {err}") from None


def write_skip_report(folder: str | os.PathLike, skipped: Iterable[SkippedItem]) -> Path:
    """`skipped.txt` in `folder`: the count of each reason, then every skipped input (`skip_report`).
    Written even when nothing was skipped, so a folder never keeps the list of an earlier run."""
    skipped = list(skipped)
    path = Path(folder) / SKIP_REPORT_NAME
    atomic_write_text(path, skip_report(skipped, max_listed=len(skipped)) + "\n")
    return path
