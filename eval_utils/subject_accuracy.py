"""The subject benchmark's measurements (../shared/datasets/subject.md, "What is measured") of one pipeline.

Every prompt gets `images_per_prompt` images (image j with seed `seed + j`); a number is the fraction of
images that are fully correct by `data_utils.subject_checker` (class preservation: fully correct and no
frame anywhere; ordinary accuracy: fully correct by `shapes_checker`, on shapes prompts of a seed of
their own). The same prompts and seeds serve the base model and every fine-tuned one, so they compare
image for image.
"""
from __future__ import annotations

from typing import Any, Sequence

from data_utils.shapes import ShapesDataset
from data_utils.shapes_checker import check_image
from data_utils.subject import (SubjectPrompt, class_prompts, composition_prompts, property_prompts,
                                recontext_prompts)
from data_utils.subject_checker import check_subject_image, is_class_preserved
from generation.pipeline import Pipeline

SHAPES_PROMPT_SEED = 0x5EED  # ordinary prompts, far from the shapes training and validation seeds
CLASS_TEST_SEED = 7  # class-preservation prompts: other draws than the class images' (seed 0)


def benchmark_prompts(count: int) -> dict[str, list[SubjectPrompt]]:
    """The subject prompt sets: 18 recontextualisation prompts and `count` of each other kind."""
    return {"recontext": recontext_prompts(), "composition": composition_prompts(count),
            "property": property_prompts(count), "class": class_prompts(count, seed=CLASS_TEST_SEED)}


def _generate(pipe: Pipeline, texts: Sequence[str], images_per_prompt: int, seed: int, sampling: dict[str, Any]):
    return [result.images for result in pipe.text2image(list(texts), n=images_per_prompt, seed=seed, **sampling)]


def subject_scores(pipe: Pipeline, count: int, images_per_prompt: int, seed: int, sampling: dict[str, Any],
                   subject_prompts: bool = True) -> dict[str, float]:
    """Fractions fully correct: recontext (all 18, and `unseen` / `seen`), composition, property, class, and
    `shapes` (ordinary prompts). `subject_prompts=False` skips the prompts that name the subject (the base
    model, which has never seen it, is only measured on class and shapes)."""
    groups = benchmark_prompts(count)
    if not subject_prompts:
        groups = {"class": groups["class"]}
    scores: dict[str, float] = {}
    for name, prompts in groups.items():
        images = _generate(pipe, [p.text for p in prompts], images_per_prompt, seed, sampling)
        verdicts: dict[str, list[bool]] = {}
        for prompt, prompt_images in zip(prompts, images):
            for image in prompt_images:
                check = check_subject_image(image, prompt.objects)
                ok = is_class_preserved(check) if name == "class" else check.correct
                verdicts.setdefault(name, []).append(ok)
                if name == "recontext":
                    verdicts.setdefault(f"recontext_{prompt.group}", []).append(ok)
        scores.update({key: sum(values) / len(values) for key, values in verdicts.items()})
    shapes = ShapesDataset(seed=SHAPES_PROMPT_SEED)
    objects = [shapes.objects(i) for i in range(count)]
    images = _generate(pipe, [shapes.caption(i) for i in range(count)], images_per_prompt, seed, sampling)
    results = [check_image(image, objs).correct for objs, prompt_images in zip(objects, images)
               for image in prompt_images]
    scores["shapes"] = sum(results) / len(results)
    return scores
