"""Example pictures of the understanding tasks, for docs/tasks/retrieval.md, attention_maps.md, vqa.md and
grounding.md.

Example:
    python scripts/understanding_examples.py --load runs/quickstart/gpt --output docs/images/tasks

Writes, from held-out `shapes` items (the validation split, never trained on):
    retrieval.png       a row per caption (English and Chinese): the gallery's images ranked for it, best
                        first, each with its score; the caption's own image framed
    attention_maps.png  a held-out image with two objects (English caption) and one with one object (Chinese):
                        the image, then the attention of each word of its caption (`Pipeline.attention_map`);
                        the words naming an object's colour or shape are labelled with the share of their
                        attention inside its box, and the box's share of the image
    vqa.png             (checkpoints with location tokens) a held-out image per language with one question of
                        each type the spec allows of it and the model's answer, the true one after a wrong one
    grounding.png       (checkpoints with location tokens) a held-out image per language: its grounded caption
                        with the phrases' boxes drawn, the true boxes, each referring expression's answered box,
                        and the phrase generated for each true box

Everything goes through `generation.pipeline.Pipeline`, so the pictures show what a user of the API gets;
the same checkpoint gives the same pictures (no sampling is involved).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from arguments import positive_int  # noqa: E402
from data_utils.image_sources import open_dataset  # noqa: E402
from data_utils.shapes import ShapeObject  # noqa: E402
from eval_utils.attention_in_box import box_cover, mass_in_box, name_spans  # noqa: E402
from data_utils.shapes_tasks import shapes_tasks  # noqa: E402
from eval_utils.retrieval import distinct_pairs  # noqa: E402
from eval_utils.vqa import held_out_questions, same_answer  # noqa: E402
from generation.figures import ROW_GAP, Cell, boxes_figure, grid, stack, titled, titled_rows  # noqa: E402
from generation.heatmaps import overlay  # noqa: E402
from generation.outputs import save_png  # noqa: E402
from generation.pipeline import Pipeline  # noqa: E402
from generation.retrieval import ranked  # noqa: E402
from utils.errors import run_main  # noqa: E402

RANKED_SHOWN = 5             # retrieval.png: the best images shown per caption
WORD_COLUMNS = 10            # attention_maps.png: cells per row (the input image and up to 9 words)
# attention_maps.png: (caption language, objects in the image) of each row: the first such held-out image.
ATTENTION_ITEMS = (("en", 2), ("zh", 1))
# vqa.png and grounding.png: a held-out image with two objects per caption language.
UNDERSTANDING_ITEMS = (("en", 2), ("zh", 2))
VQA_LINES = 3  # vqa.png: caption lines for a question and for an answer


def held_out(size: int, language: str, count: int) -> list:
    source = open_dataset("shapes", split="val", size=size, language=language, num_items=count)
    return [source.item(i) for i in range(count)]


def retrieval_picture(pipe: Pipeline, size: int, gallery: int) -> object:
    """Each caption of a gallery of held-out pairs (English, then the same images' Chinese captions) with its
    best images."""
    rows = []
    for language in ("en", "zh"):
        items = held_out(size, language, 4 * gallery)
        images, captions = distinct_pairs([item.image for item in items], [item.caption for item in items], gallery)
        scores = pipe.retrieval_scores(images, captions)
        for t, order in enumerate(ranked(scores)[:3]):
            rows.append((captions[t], [Cell(images[j], (f"{float(scores[t, j]):+.2f}",), chosen=j == t)
                                       for j in order[:RANKED_SHOWN]]))
    return titled_rows(rows, RANKED_SHOWN)


def first_item(size: int, language: str, objects: int):
    """The first held-out item with that many objects."""
    return next(item for item in held_out(size, language, 20) if len(item.metadata["objects"]) == objects)


def attention_picture(pipe: Pipeline, size: int) -> object:
    """Each held-out image and its caption's words' attention; the words naming an object labelled with
    their mass in its box and the box's share of the image."""
    rows = []
    for language, objects_wanted in ATTENTION_ITEMS:
        item = first_item(size, language, objects_wanted)
        words = pipe.attention_map(item.image, item.caption)
        objects = [ShapeObject(**obj) for obj in item.metadata["objects"]]
        decoded = pipe.tokenizer.decode_text(pipe.tokenizer.encode_text(item.caption))
        labels = {}
        for obj, spans in zip(objects, name_spans(objects, decoded, language)):
            cover = box_cover(obj.bbox, size, pipe.geometry.image_grid)
            share = float(cover.sum()) / cover.numel()
            for k, word in enumerate(words):
                if any(word.word.start < end and start < word.word.end for start, end in spans):
                    labels[k] = f"{mass_in_box(word.grid, cover):.0%} in box of {share:.0%}"
        cells = [Cell(item.image, ("input", ""))]
        cells += [Cell(overlay(item.image, word.grid), (word.word.text, labels.get(k, "")))
                  for k, word in enumerate(words)]
        rows.append((item.caption, cells))
    return titled_rows(rows, WORD_COLUMNS)


def vqa_picture(pipe: Pipeline, size: int) -> object:
    """Per language, a held-out image and the first question of each type asked of it, with the answer."""
    rows = []
    for language, objects_wanted in UNDERSTANDING_ITEMS:
        item = first_item(size, language, objects_wanted)
        objects = [ShapeObject(**obj) for obj in item.metadata["objects"]]
        asked = list({qa.kind: qa for qa in reversed(held_out_questions([objects], language, seed=0)[0])}.values())
        asked.sort(key=lambda qa: qa.kind)
        answers = pipe.answer([item.image] * len(asked), [qa.question for qa in asked])
        cells = [Cell(item.image, (qa.question, answer if same_answer(answer, qa.answer)
                                   else f"{answer} (true: {qa.answer})"), chosen=same_answer(answer, qa.answer))
                 for qa, answer in zip(asked, answers)]
        rows.append(titled(item.caption, grid(cells, len(cells), lines_per_field=VQA_LINES)))
    return stack(rows, ROW_GAP)


def grounding_picture(pipe: Pipeline, size: int) -> object:
    """Per language, a held-out image: its grounded caption's boxes, the true boxes, each referring
    expression's answered box, and the phrase generated for each true box."""
    rows = []
    for language, objects_wanted in UNDERSTANDING_ITEMS:
        item = first_item(size, language, objects_wanted)
        tasks = shapes_tasks([ShapeObject(**obj) for obj in item.metadata["objects"]], size, language, 0, 0)
        caption = pipe.grounded_caption([item.image])[0]
        expressions = [ref.expression for ref in tasks.expressions]
        boxes = pipe.ground([item.image] * len(expressions), expressions)
        phrases = pipe.phrase_for_box([item.image] * len(tasks.objects), [obj.box for obj in tasks.objects])
        cells = [Cell(boxes_figure(item.image, caption.objects), ("grounded caption", "")),
                 Cell(boxes_figure(item.image, [(obj.phrase, obj.box) for obj in tasks.objects]), ("true boxes", ""))]
        cells += [Cell(boxes_figure(item.image, [] if box is None else [(expression, box)]), ("referring", expression))
                  for expression, box in zip(expressions, boxes)]
        cells += [Cell(boxes_figure(item.image, [(phrase, obj.box)]), ("box to phrase", phrase))
                  for phrase, obj in zip(phrases, tasks.objects)]
        rows.append((caption.text, cells))
    return titled_rows(rows, WORD_COLUMNS)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True, help="checkpoint (anything generate_samples.py --load takes)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the two PNGs")
    parser.add_argument("--gallery", type=positive_int, default=20,
                        help="retrieval.png: held-out pairs ranked against each other (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    pipe = Pipeline.from_checkpoint(args.load, device=args.device)
    size = pipe.image_size(pipe.geometry.image_grid)
    args.output.mkdir(parents=True, exist_ok=True)
    save_png(args.output / "retrieval.png", retrieval_picture(pipe, size, args.gallery))
    save_png(args.output / "attention_maps.png", attention_picture(pipe, size))
    print(f"wrote {args.output / 'retrieval.png'} and {args.output / 'attention_maps.png'}")
    if not pipe.tokenizer.location_bins:
        print("no vqa.png or grounding.png: this checkpoint has no location tokens (trained with --location-bins 0)")
        return
    save_png(args.output / "vqa.png", vqa_picture(pipe, size))
    save_png(args.output / "grounding.png", grounding_picture(pipe, size))
    print(f"wrote {args.output / 'vqa.png'} and {args.output / 'grounding.png'}")


if __name__ == "__main__":
    run_main(main)
