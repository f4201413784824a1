"""The images a generation task reads (`--input-images`): all that can be read, and why the rest cannot.

A batch of hundreds of images must not stop at one bad file, so a corrupt, empty, tiny or non-image
file is skipped and recorded (`SkippedItem`, as datasets do in `data_utils.image_sources`); the run
lists the skips in `skipped.txt` and fails only when nothing is left. A path that does not exist, or a
folder with no files, is a mistake in the command itself and stops the run before the model loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image

from data_utils.image_sources import (IMAGE_EXTENSIONS, MIN_IMAGE_SIDE, NOT_AN_IMAGE, SkipItem, SkippedItem,
                                      read_image_or_skip)
from utils.errors import UserError


@dataclass
class ImageInputs:
    """The readable images with their paths, in input order, and the files skipped."""

    paths: list[Path] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # each image's question, when read by `read_question_inputs`


def input_files(entries: Sequence[str] | None, task: str) -> list[Path]:
    """The files named, and the files inside the folders named (sorted; hidden files and subfolders left out)."""
    if not entries:
        raise UserError(f"--generation-task {task} needs --input-images (files or folders)")
    files: list[Path] = []
    for entry in map(Path, entries):
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.is_file() and not p.name.startswith("."))
            if not found:
                raise UserError(f"folder {entry} holds no files")
            files += found
        elif entry.is_file():
            files.append(entry)
        else:
            raise UserError(f"input image not found: {entry}")
    return files


def read_image_inputs(entries: Sequence[str] | None, task: str, min_side: int = MIN_IMAGE_SIDE,
                      texts: Sequence[str] | None = None) -> ImageInputs:
    """Every input image that can be read; the others are skipped with their reason (the index is the
    file's place among all input files). `texts`: one per file (a question), kept for the images read."""
    inputs = ImageInputs()
    files = input_files(entries, task)
    for index, path in enumerate(files):
        try:
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise SkipItem(NOT_AN_IMAGE, str(path), f"'{path.suffix or path.name}' is not one of "
                                                        f"{', '.join(IMAGE_EXTENSIONS)}")
            image = read_image_or_skip(path, str(path), min_side)
        except SkipItem as skip:
            inputs.skipped.append(SkippedItem(index, skip.source, skip.reason, skip.detail))
            continue
        inputs.paths.append(path)
        inputs.images.append(image)
        if texts is not None:
            inputs.texts.append(texts[index])
    return inputs


def read_question_inputs(path: str | Path, task: str, min_side: int = MIN_IMAGE_SIDE) -> ImageInputs:
    """The images and questions of a UTF-8 file of `IMAGE<TAB>QUESTION` lines (image paths relative to the
    file's folder); an image that cannot be read is skipped like any input, a malformed line stops the run."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"question file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    images, questions = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        image, tab, question = line.partition("\t")
        if not tab or not image.strip() or not question.strip():
            raise UserError(f"{path}:{number}: expected IMAGE<TAB>QUESTION")
        images.append(str(path.parent / image.strip()))
        questions.append(question.strip())
    if not images:
        raise UserError(f"question file {path} holds no questions")
    return read_image_inputs(images, task, min_side, questions)
