"""Super-resolution quality: PSNR of held-out images downscaled 2x and super-resolved, next to bicubic
upsampling of the same low-resolution images (the baseline a super-resolver has to beat) and, where the
model has one, its condition decoded as it is (what a model that only copied its input would give), and on
shapes the checker's verdict on the low-resolution inputs and on the super-resolved outputs
(super-resolution must keep what the input shows)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image

from data_utils.images import downscale, pil_to_tensor, tensor_to_pil
from data_utils.shapes import ShapeObject
from data_utils.shapes_checker import check_image
from eval_utils.psnr import bicubic_upsample, mean_psnr
from eval_utils.report import Section


def _accepted(images: Sequence[Image.Image], objects: Sequence[Sequence[ShapeObject]]) -> float:
    """The share of `images` the shapes checker accepts, each judged on its own canvas."""
    return sum(check_image(image, own).correct for image, own in zip(images, objects)) / len(images)


def super_resolution_section(images: list[Image.Image], captions: list[str],
                             super_resolve: Callable[[list[Image.Image], list[str]], list[Image.Image]],
                             objects: Sequence[Sequence[ShapeObject]] | None = None,
                             settings: dict | None = None,
                             copy: Callable[[list[Image.Image]], list[Image.Image] | None] | None = None) -> Section:
    """Held-out images downscaled 2x as `preprocess_data.py --with-lowres` does (`downscale`), super-resolved,
    and compared (PSNR) with the originals, next to bicubic upsampling of the same low-res images. With the
    images' shapes `objects`, also the share the checker accepts of the inputs (at their own, low
    resolution), of the outputs and of the bicubic images. `settings`: how it was sampled, for the record.
    `copy` (`Pipeline.super_resolution_copy`): the low-res images' condition decoded, or None where the
    model's condition has no such copy; measured as `copy_psnr` and `checker_copy` when there is one."""
    truth = torch.stack([pil_to_tensor(image) for image in images])
    lowres = [downscale(image) for image in images]
    restored_images = super_resolve(lowres, captions)
    restored = torch.stack([pil_to_tensor(image) for image in restored_images])
    bicubic = bicubic_upsample(torch.stack([pil_to_tensor(image) for image in lowres]), 2)
    psnr, baseline = mean_psnr(restored, truth), mean_psnr(bicubic, truth)
    results = {"images": len(images), "psnr": psnr, "bicubic_psnr": baseline, "gain_over_bicubic": psnr - baseline,
               **({"sampling": settings} if settings else {})}
    rows = [f"{'PSNR super-resolved':<28}{psnr:>9.2f} dB", f"{'PSNR bicubic':<28}{baseline:>9.2f} dB",
            f"{'gain over bicubic':<28}{psnr - baseline:>+9.2f} dB"]
    copied_images = copy(lowres) if copy is not None else None
    if copied_images is not None:
        results["copy_psnr"] = mean_psnr(torch.stack([pil_to_tensor(image) for image in copied_images]), truth)
        rows.append(f"{'PSNR condition copied':<28}{results['copy_psnr']:>9.2f} dB")
    if objects is not None:
        checked = [("checker_input", "low-res inputs", lowres), ("checker_output", "super-resolved", restored_images),
                   ("checker_bicubic", "bicubic", [tensor_to_pil(image) for image in bicubic])]
        if copied_images is not None:
            checked.append(("checker_copy", "condition copied", copied_images))
        for key, label, shown in checked:
            results[key] = _accepted(shown, objects)
            rows.append(f"{'checker: ' + label:<28}{results[key]:>9.1%}")
    rows.append(f"{'images':<28}{len(images):>9d}")
    return Section("sr", results, "\n".join(rows))
