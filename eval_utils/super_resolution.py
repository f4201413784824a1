"""Super-resolution quality: PSNR of held-out images downscaled 2x and super-resolved, next to bicubic
upsampling of the same low-resolution images (the baseline a super-resolver has to beat)."""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image

from data_utils.images import downscale, pil_to_tensor
from eval_utils.psnr import bicubic_upsample, mean_psnr
from eval_utils.report import Section


def super_resolution_section(images: list[Image.Image], captions: list[str],
                             super_resolve: Callable[[list[Image.Image], list[str]], list[Image.Image]]) -> Section:
    """Held-out images downscaled 2x as `preprocess_data.py --with-lowres` does (`downscale`), super-resolved,
    and compared (PSNR) with the originals, next to bicubic upsampling of the same low-res images."""
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
