"""Prior-preservation images: pictures of the class that the base model draws itself, cached on disk.

DreamBooth keeps the class from drifting by training on the model's own samples for the class prompt
alongside the subject. Image i is prompt `i % P` of the P class prompts, sampled with seed `seed + i`
(decoding is batch-independent, so any image can be made again alone). Images are written one by one
(atomically, as `{i:05d}.png`, prompt and seed in the PNG metadata) in batches with a progress bar; a
killed run keeps every finished image and the next run generates only the missing ones. The cache's
`manifest.json` records the base model's fingerprint, the prompts and the sampling settings: a cache made
with anything else is refused rather than silently mixed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from tqdm import tqdm

from data_utils.sequences import text2image
from fp16 import inference_autocast
from generation.decoding import DecodeRequest, DecodeSpec, decode
from generation.outputs import read_png_metadata, save_png
from generation.pipeline import Pipeline
from generation.sampling import SamplingSettings
from generation.tasks import check_fits, image_ids_mask
from utils.errors import UserError
from utils.files import atomic_write_json, read_json

MANIFEST = "manifest.json"


def image_path(folder: Path, index: int) -> Path:
    return folder / f"{index:05d}.png"


def _check_manifest(folder: Path, expected: dict) -> None:
    path = folder / MANIFEST
    if path.is_file():
        found = read_json(path)
        for key, value in expected.items():
            if found.get(key) != value:
                raise UserError(f"the class images in {folder} were made with another {key} "
                                f"({str(found.get(key))[:60]}); "
                                f"give another --class-data folder or delete this one")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, expected)


def ensure_class_images(pipe: Pipeline, folder: str | Path, prompts: Sequence[str], count: int, seed: int,
                        settings: SamplingSettings, base_fingerprint: str, batch_size: int = 16
                        ) -> tuple[list[Image.Image], list[str]]:
    """The `count` class images and their captions, generating the missing ones."""
    if not prompts:
        raise UserError("no class prompts given")
    for prompt in prompts:
        length = len(pipe.tokenizer.encode_text(prompt))
        if length > pipe.geometry.text_max_tokens:
            raise UserError(f"the class prompt {prompt!r} is {length} tokens long; the base model reads at most "
                            f"{pipe.geometry.text_max_tokens}")
    folder = Path(folder)
    _check_manifest(folder, {"base_fingerprint": base_fingerprint, "prompts": list(prompts), "seed": seed,
                             "sampling": settings.to_dict()})
    captions = [prompts[i % len(prompts)] for i in range(count)]
    missing = [i for i in range(count) if not image_path(folder, i).is_file()]
    if missing:
        geometry, tok = pipe.geometry, pipe.tokenizer
        grid = geometry.image_grid
        spec = DecodeSpec(steps=grid * grid, allowed=image_ids_mask(tok), settings=settings, pad_id=tok.pad_id)
        uncond = text2image(tok, [], grid, text_positions=geometry.text_positions) if settings.uses_guidance else None
        with tqdm(total=count, initial=count - len(missing), desc="class images", unit="image") as bar:
            for start in range(0, len(missing), batch_size):
                chunk = missing[start:start + batch_size]
                requests = []
                for i in chunk:
                    prompt = text2image(tok, tok.encode_text(captions[i]), grid, text_positions=geometry.text_positions)
                    check_fits(prompt, grid * grid, geometry, "text-to-image")
                    requests.append(DecodeRequest(prompt, seed + i, uncond))
                with inference_autocast(next(pipe.model.parameters()).device, pipe.precision):
                    codes = decode(pipe.model, requests, spec, pipe.max_batch_rows, description="class images")
                for i, image in zip(chunk, pipe.decode_codes(torch.stack(codes).view(len(chunk), grid, grid))):
                    save_png(image_path(folder, i), image, {"prompt": captions[i], "seed": seed + i})
                bar.update(len(chunk))
    images = []
    for i in range(count):
        with Image.open(image_path(folder, i)) as image:
            images.append(image.convert("RGB"))
        if read_png_metadata(image_path(folder, i)).get("prompt") != captions[i]:
            raise UserError(f"{image_path(folder, i)} was drawn for another prompt; delete {folder} and run again")
    return images, captions
