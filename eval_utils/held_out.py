"""The captioned images a section judges: one split of a dataset, bad items skipped and reported."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from tqdm import tqdm

from data_utils.image_sources import SkippedItem, load_item, open_dataset, skip_report
from data_utils.images import pil_to_tensor
from data_utils.shapes import ShapeObject
from utils.errors import UserError
from utils.logging import get_logger

logger = get_logger(__name__)


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


def language_splits(dataset: str, split: str, size: int, language: str, data_seed: int, count: int
                    ) -> dict[str, CaptionedSet]:
    """`load_split` once per caption language, so that each is scored on its own: shapes with "both"
    gives "en" and "zh" (the same images); shapes otherwise its one language; any other dataset "all"."""
    if dataset != "shapes":
        return {"all": load_split(dataset, split, size, language, data_seed, count)}
    languages = ("en", "zh") if language == "both" else (language,)
    return {name: load_split(dataset, split, size, name, data_seed, count) for name in languages}
