"""Prompt following on `shapes`, both ways: do generated images show what their held-out captions say
(t2i), and do the model's captions of held-out images name their objects (caption)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from PIL import Image
from tqdm import tqdm

from data_utils.shapes import ShapeObject
from eval_utils.report import Section, scale_key
from eval_utils.shapes_accuracy import any_correct, caption_accuracy, image_accuracy
from generation.pipeline import Pipeline


@dataclass
class JudgedImages:
    """One image per held-out prompt at one guidance scale and, with post-selection, the first candidates
    and every prompt's candidates (what a perfect selector could pick from)."""

    judged: list[Image.Image]
    first: list[Image.Image] | None = None
    candidates: list[list[Image.Image]] | None = None


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
                made[cfg_scale] = JudgedImages([r.images[b] for r, b in zip(results, best)], first,
                                               [list(result.images) for result in results])
            else:
                made[cfg_scale] = JudgedImages(first)
        return made[cfg_scale]

    return images_at


def text_to_image_section(objects: list[list[ShapeObject]], cfg_scales: Sequence[float],
                          images_at: ImagesAtScale, candidates: int = 1) -> Section:
    """Shapes prompt following of the judged image of every prompt, per guidance scale; with
    post-selection the first candidates are scored too (what no selection would give), and the share of
    prompts with at least one fully correct candidate (`any_candidate`: what a perfect selector would
    give, so the gap to `judged` is the post-selection score's, the gap to 1 the generator's)."""
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
        if images.candidates is not None:
            row["any_candidate"] = any_correct(objects, images.candidates)
            blocks.append(f"cfg scale {scale:g}, prompts with a fully correct candidate among {candidates}: "
                          + ", ".join(f"{group} {share:.3f}" for group, share in row["any_candidate"].items()))
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
