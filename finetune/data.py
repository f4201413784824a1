"""The rows a subject fine-tuning run trains on: the instance images and the class (prior) images.

Both are tokenised the way `preprocess_data.py` tokenises training data (caption pieces; image codes from
the base model's VQ-VAE; low-resolution codes of the half-size image when the base model learned
super-resolution) and kept in memory as `MemoryRows`, which `TaskSequenceDataset` reads like shards, so
the fine-tuning samples follow the base model's task mix, token order and position layout exactly.

An instance folder holds 3-5 images, each captioned by a sidecar `NAME.txt`, or all by one
`--caption-template` (`{identifier}` and `{class_noun}` are filled in). Every caption must name the
identifier: a picture that does not is not a picture of the subject.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from data_utils.images import downscale, pil_to_tensor
from data_utils.sr_windows import DEFAULT_SR_CONDITION, condition_grid, condition_image
from data_utils.shards import Row, RowFormat
from data_utils.tokenizer import UnifiedTokenizer
from generation.tasks import Geometry
from utils.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class CaptionedImages:
    images: list[Image.Image]
    captions: list[str]
    names: list[str]


class MemoryRows:
    """Rows held in memory, with the interface of `ShardedRows` that `TaskSequenceDataset` reads."""

    def __init__(self, rows: list[Row], row_format: RowFormat, name: str):
        if not rows:
            raise UserError(f"no {name} to train on")
        self.rows, self.format, self.data_dir = rows, row_format, name

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Row:
        return self.rows[index]


def read_instance_folder(folder: str | Path, identifier: str, class_noun: str,
                         caption_template: str | None) -> CaptionedImages:
    """The images of `folder` (sorted by name) and their captions (sidecar .txt files, or the template)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"instance folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    sidecars = [p.with_suffix(".txt") for p in paths]
    has_sidecars = [s.is_file() for s in sidecars]
    if caption_template is not None:
        if any(has_sidecars):
            raise UserError(f"{folder} has caption files ({sidecars[has_sidecars.index(True)].name}); drop "
                            f"--caption-template, or remove them")
        try:
            caption = caption_template.format(identifier=identifier, class_noun=class_noun)
        except (KeyError, IndexError, ValueError) as err:
            raise UserError(f"--caption-template {caption_template!r}: only {{identifier}} and {{class_noun}} can be "
                            f"filled in ({err})") from None
        captions = [caption] * len(paths)
    else:
        missing = [s.name for s, has in zip(sidecars, has_sidecars) if not has]
        if missing:
            raise UserError(f"{folder}: no caption for {len(missing)} image(s) (e.g. {missing[0]}); write one "
                            f"NAME.txt per image or give --caption-template")
        captions = [s.read_text(encoding="utf-8").strip() for s in sidecars]
    for path, caption in zip(paths, captions):
        if identifier not in caption:
            raise UserError(f"the caption of {path.name} ({caption!r}) does not name the identifier {identifier!r}")
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except OSError as err:
            raise UserError(f"cannot read {path} as an image: {err}") from None
    return CaptionedImages(images, captions, [p.name for p in paths])


def identifier_pieces(tokenizer: UnifiedTokenizer, identifier: str) -> list[str]:
    """The SentencePiece pieces the identifier becomes (as a word of its own, as in a caption).

    A tokenizer trained on shapes captions has no piece for `sks`: it becomes `▁s` plus the byte piece of
    `k` (byte fallback; no caption has a k) plus `s`. That rare byte piece is what makes it a rare
    identifier, as DreamBooth wants. `<unk>` would make every unknown word the same token: refused.
    """
    ids = tokenizer.text_tokenizer.encode(identifier) if identifier.strip() else []
    pieces = [tokenizer.text_tokenizer.id_to_piece(i) for i in ids]
    if not pieces or any(i == 0 for i in ids):
        raise UserError(f"the identifier {identifier!r} encodes to <unk> with this tokenizer ({pieces}); choose "
                        f"one made of characters the tokenizer knows")
    return pieces


def tokenise(images: Sequence[Image.Image], captions: Sequence[str], tokenizer: UnifiedTokenizer,
             vqvae: torch.nn.Module, geometry: Geometry, with_lowres: bool, name: str,
             batch_size: int = 32) -> MemoryRows:
    """Rows of captioned images for the base model's geometry (images resized to its image size), with
    low-resolution codes when the task mix has super-resolution."""
    from vqvae.api import img2code

    size = geometry.image_grid * vqvae.config.downsample
    images = [image if image.size == (size, size) else image.resize((size, size), Image.Resampling.BICUBIC)
              for image in images]

    def codes(batch: list[Image.Image]) -> np.ndarray:
        return torch.cat([img2code(vqvae, torch.stack([pil_to_tensor(im) for im in batch[i:i + batch_size]]))
                          for i in range(0, len(batch), batch_size)]).numpy()

    image_codes = codes(images)
    condition = geometry.sr_condition  # the base model's super-resolution condition (data_utils.sr_windows)
    lowres = (codes([condition_image(condition, downscale(image)) for image in images]) if with_lowres
              else [None] * len(images))
    rows = []
    for index, caption in enumerate(captions):
        text = tokenizer.encode_text(caption)
        if len(text) > geometry.text_max_tokens:
            raise UserError(f"the caption {caption!r} is {len(text)} tokens long; the base model reads at most "
                            f"{geometry.text_max_tokens}")
        rows.append(Row(np.asarray(text, dtype=np.int64), image_codes[index].astype(np.int64),
                        None if lowres[index] is None else lowres[index].astype(np.int64), index))
    row_format = RowFormat(geometry.text_max_tokens, geometry.image_grid,
                           condition_grid(condition, geometry.lowres_grid) if with_lowres else None,
                           RowFormat.dtype_for_vocab(tokenizer.vocab_size),
                           sr_condition=condition if with_lowres else DEFAULT_SR_CONDITION)
    return MemoryRows(rows, row_format, name)
