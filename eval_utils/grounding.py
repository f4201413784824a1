"""Grounding accuracy on held-out shapes images: grounded captions, box to phrase, referring expressions.

The true objects, phrases, boxes and expressions are `data_utils.shapes_tasks`'s for the item (boxes of
the visible pixels), as `../shared/datasets/shapes-tasks.md` fixes them. A box is right at IoU >= 0.5.

- grounded captions: an object counts as grounded when one phrase of the model's caption names it (its
  phrase, `a large red circle` or `一个大的红色圆形`, after `vqa.same_answer`'s comparison: that names colour,
  shape and size) and that phrase's box is right. Each generated phrase grounds at most one object.
  Reported: the share of all objects grounded, and how many phrases the captions held.
- box to phrase: the true box of each object given, the phrase generated for it must name the object.
- referring: each expression (every one the spec allows of the item) answered with a box; right at IoU >= 0.5.

The prompts of grounded captions and box to phrase hold no words (an image, then `[GRND]` or a box), so the
model writes in the language it picks, and a phrase in either language names the object: scored against one
language only, a model that answered in Chinese scored 0.03 in English and 0.50 in Chinese on the same
phrases. Their rows are therefore the same for every caption language of the same images; referring
expressions are asked in one language.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from PIL import Image

from data_utils.locations import Box, iou
from data_utils.sequences import GroundedCaption
from data_utils.shapes import ShapeObject
from data_utils.shapes_tasks import ReferringExpression, shapes_tasks
from eval_utils.report import Section
from eval_utils.vqa import same_answer

RIGHT_IOU = 0.5
GroundedCaptioner = Callable[[Sequence[Image.Image]], list[GroundedCaption]]  # Pipeline.grounded_caption
PhraseForBox = Callable[[Sequence[Image.Image], Sequence[Box]], list[str]]  # Pipeline.phrase_for_box
Grounder = Callable[[Sequence[Image.Image], Sequence[str]], list[Box | None]]  # Pipeline.ground
ItemSets = dict[str, tuple[Sequence[Image.Image], Sequence[Sequence[ShapeObject]]]]


@dataclass(frozen=True)
class TrueObject:
    """An object's box (visible pixels) and its phrase in each caption language."""

    phrases: tuple[str, ...]
    box: Box

    def named_by(self, phrase: str) -> bool:
        return any(same_answer(phrase, own) for own in self.phrases)


def true_objects(objects: Sequence[ShapeObject], image: Image.Image) -> list[TrueObject]:
    """The spec's phrase and box of each object, with the phrase in English and Chinese."""
    english, chinese = (_tasks(objects, image, language).objects for language in ("en", "zh"))
    return [TrueObject((en.phrase, zh.phrase), en.box) for en, zh in zip(english, chinese, strict=True)]


def grounded_count(truth: Sequence[TrueObject], generated: Sequence[tuple[str, Box]]) -> int:
    """How many true objects a generated caption grounds, each generated phrase used for at most one."""
    unused = list(generated)
    count = 0
    for obj in truth:
        match = next((k for k, (phrase, box) in enumerate(unused)
                      if obj.named_by(phrase) and iou(box, obj.box) >= RIGHT_IOU), None)
        if match is not None:
            count += 1
            del unused[match]
    return count


def grounding_accuracy(caption: GroundedCaptioner, phrase_for_box: PhraseForBox, images: Sequence[Image.Image],
                       truth: Sequence[Sequence[TrueObject]]) -> dict[str, float | int]:
    """`objects`, `grounded` (share of objects grounded by the captions), `phrases` (grounded phrases the
    captions held) and `box_to_phrase` (share of true boxes named right)."""
    captions = caption(images)
    grounded = sum(grounded_count(own, generated.objects) for own, generated in zip(truth, captions))
    pairs = [(image, obj) for image, own in zip(images, truth) for obj in own]
    phrases = phrase_for_box([image for image, _ in pairs], [obj.box for _, obj in pairs])
    named = sum(obj.named_by(phrase) for phrase, (_, obj) in zip(phrases, pairs))
    total = len(pairs)
    return {"objects": total, "grounded": grounded / total if total else float("nan"),
            "phrases": sum(len(generated.objects) for generated in captions),
            "box_to_phrase": named / total if total else float("nan")}


def referring_accuracy(ground: Grounder, images: Sequence[Image.Image],
                       expressions: Sequence[Sequence[ReferringExpression]]) -> dict[str, float | int]:
    """`expressions` and `accuracy`: the share whose answered box has IoU >= 0.5 with the true one (no box
    answered counts as wrong)."""
    pairs = [(image, ref) for image, own in zip(images, expressions) for ref in own]
    boxes = ground([image for image, _ in pairs], [ref.expression for _, ref in pairs])
    right = sum(box is not None and iou(box, ref.box) >= RIGHT_IOU for box, (_, ref) in zip(boxes, pairs))
    return {"expressions": len(pairs), "accuracy": right / len(pairs) if pairs else float("nan")}


def _tasks(objects: Sequence[ShapeObject], image: Image.Image, language: str):
    # The seed only draws questions 6 and 7, which grounding does not read.
    return shapes_tasks(objects, image.width, language, seed=0, index=0)


def grounding_section(caption: GroundedCaptioner, phrase_for_box: PhraseForBox, sets: ItemSets) -> Section:
    """evaluate.py's grounding section, per caption language (`sets`: language -> images and their objects).

    Neither task's prompt holds a word, so two languages with the same pictures (shapes' held-out split in
    "both") ask the model the very same questions: they are measured once and the row repeated."""
    results, measured = {}, []
    lines = [f"{'':<10}{'objects':>9}{'grounded':>10}{'phrases':>9}{'box->phrase':>13}"]
    for language, (images, objects) in sets.items():
        found = next((done for seen, done in measured if seen == (images, objects)), None)
        if found is None:
            truth = [true_objects(own, image) for image, own in zip(images, objects)]
            found = grounding_accuracy(caption, phrase_for_box, images, truth)
            measured.append(((images, objects), found))
        results[language] = found
        lines.append(f"{language:<10}{found['objects']:>9d}{found['grounded']:>10.3f}{found['phrases']:>9d}"
                     f"{found['box_to_phrase']:>13.3f}")
    return Section("grounding", results, "\n".join(lines))


def referring_section(ground: Grounder, sets: ItemSets) -> Section:
    """evaluate.py's referring section, per caption language."""
    results = {}
    lines = [f"{'':<10}{'expressions':>13}{'accuracy':>10}"]
    for language, (images, objects) in sets.items():
        expressions = [_tasks(own, image, language).expressions for image, own in zip(images, objects)]
        found = referring_accuracy(ground, images, expressions)
        results[language] = found
        lines.append(f"{language:<10}{found['expressions']:>13d}{found['accuracy']:>10.3f}")
    return Section("referring", results, "\n".join(lines))
