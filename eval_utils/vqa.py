"""VQA accuracy: the model's answers to the spec's questions about held-out shapes images, per question type.

The questions are those `data_utils.shapes_tasks.questions` asks of each item (every one the spec allows of
it, numbered 1-7 as in `../shared/datasets/shapes-tasks.md`), drawn for the held-out item's own objects, so
the answers are exact. An answer is right when it equals the true one after the spec's comparison
(`same_answer`). Accuracy is reported per question type and over all questions, per caption language.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from PIL import Image

from data_utils.shapes import ShapeObject
from data_utils.shapes_tasks import QUESTION_TYPES, QuestionAnswer, questions
from eval_utils.report import Section

# One answer per (image, question) pair (Pipeline.answer).
Answerer = Callable[[Sequence[Image.Image], Sequence[str]], list[str]]
_FULL_STOPS = (".", "。")
# Keeps the evaluation's draws of question 6's pair and question 7's empty cell apart from training's.
_EVAL_STREAM = 0x76716165


def normalise_answer(text: str) -> str:
    """The spec's comparison form: spaces and one final full stop (`.` or `。`) trimmed, case folded."""
    text = text.strip()
    if text.endswith(_FULL_STOPS):
        text = text[:-1].rstrip()
    return text.casefold()


def same_answer(given: str, expected: str) -> bool:
    return normalise_answer(given) == normalise_answer(expected)


def held_out_questions(objects: Sequence[Sequence[ShapeObject]], language: str, seed: int
                       ) -> list[list[QuestionAnswer]]:
    """Each item's questions (the spec's choices for 6 and 7 drawn from (seed, item index))."""
    return [questions(own, language, np.random.default_rng([seed, index, _EVAL_STREAM]))
            for index, own in enumerate(objects)]


def vqa_accuracy(answer: Answerer, images: Sequence[Image.Image], asked: Sequence[Sequence[QuestionAnswer]]
                 ) -> dict[str, float | int]:
    """Every question of every image answered in one batch: `questions`, `accuracy` over all, and
    `type_{k}` (accuracy) with `type_{k}_questions` for each question type asked."""
    pairs = [(image, qa) for image, own in zip(images, asked) for qa in own]
    answers = answer([image for image, _ in pairs], [qa.question for _, qa in pairs])
    right = [same_answer(given, qa.answer) for given, (_, qa) in zip(answers, pairs)]
    results: dict[str, float | int] = {"questions": len(pairs),
                                       "accuracy": sum(right) / len(right) if right else float("nan")}
    for kind in QUESTION_TYPES:
        of_kind = [ok for ok, (_, qa) in zip(right, pairs) if qa.kind == kind]
        if of_kind:
            results[f"type_{kind}"] = sum(of_kind) / len(of_kind)
            results[f"type_{kind}_questions"] = len(of_kind)
    return results


def vqa_section(answer: Answerer, sets: dict[str, tuple[Sequence[Image.Image], Sequence[Sequence[ShapeObject]]]],
                seed: int) -> Section:
    """evaluate.py's vqa section, per caption language (`sets`: language -> images and their objects)."""
    results = {}
    lines = [f"{'':<10}{'questions':>10}{'all':>8}" + "".join(f"{f'type {k}':>8}" for k in QUESTION_TYPES)]
    for language, (images, objects) in sets.items():
        found = vqa_accuracy(answer, images, held_out_questions(objects, language, seed))
        results[language] = found
        lines.append(f"{language:<10}{found['questions']:>10d}{found['accuracy']:>8.3f}" + "".join(
            f"{found[f'type_{k}']:>8.3f}" if f"type_{k}" in found else f"{'-':>8}" for k in QUESTION_TYPES))
    return Section("vqa", results, "\n".join(lines))
