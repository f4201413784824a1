"""The picture of docs/tasks/subject_finetuning.md: what a fine-tuned model does with the `sks square`.

Example:
    python scripts/subject_figure.py --base runs/bench_subject_base/shapes/gpt-5715 \\
        --adapter runs/bench_subject/frozen-prior-placed400-s1/adapter --output docs/images/tasks/subject_finetuning.png

Rows, top to bottom: the four instance images (every picture of the subject the fine-tuning is given; its
placement pictures are cut out of them); the subject at (size, place) pairs no instance image shows; the
subject next to an ordinary object; plain squares from the same fine-tuned model (the class it must keep).
Each generated tile is one image of its own prompt (seed `--seed`), labelled with the prompt and the verdict
of `data_utils.subject_checker` (a correct tile also gets the highlighted frame), so the picture cannot look
better than the numbers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_utils.subject import (SubjectPrompt, class_prompts, composition_prompts, instance_items,  # noqa: E402
                                recontext_prompts)
from data_utils.subject_checker import check_subject_image, is_class_preserved  # noqa: E402
from generation.figures import Cell, titled_rows  # noqa: E402
from generation.outputs import save_png  # noqa: E402
from generation.pipeline import Pipeline  # noqa: E402
from utils.errors import run_main  # noqa: E402

COLUMNS = 6


def generated_row(pipe: Pipeline, prompts: Sequence[SubjectPrompt], seed: int, sampling: dict) -> list[Cell]:
    """One image per prompt, captioned with the prompt and the checker's verdict (class prompts: preserved)."""
    results = pipe.text2image([p.text for p in prompts], n=1, seed=seed, **sampling)
    cells = []
    for prompt, result in zip(prompts, results):
        check = check_subject_image(result.images[0], prompt.objects)
        correct = is_class_preserved(check) if prompt.group == "class" else check.correct
        cells.append(Cell(result.images[0], (prompt.text, "correct" if correct else "wrong"), correct))
    return cells


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the base checkpoint")
    parser.add_argument("--adapter", required=True, action="append", help="the subject's adapter (repeatable)")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--temperature", type=float, default=0.4)
    args = parser.parse_args(argv)
    pipe = Pipeline.from_checkpoint(args.base, adapters=args.adapter)
    sampling = {"cfg_scale": args.cfg_scale, "temperature": args.temperature}
    unseen = [p for p in recontext_prompts() if p.group == "unseen"]
    rows = [("the four instance images (every picture of the sks square the fine-tuning is given)",
             [Cell(image, (caption, "training image")) for image, caption in instance_items()]),
            ("the subject at sizes and places no instance image shows",
             generated_row(pipe, unseen[::2][:COLUMNS], args.seed, sampling)),
            ("next to other objects", generated_row(pipe, composition_prompts(COLUMNS, seed=1), args.seed, sampling)),
            ("plain squares from the same model", generated_row(pipe, class_prompts(COLUMNS, seed=1), args.seed,
                                                                sampling))]
    picture = titled_rows(rows, columns=COLUMNS, lines_per_field=2)  # a prompt takes two lines
    save_png(args.output, picture, {"base": args.base, "adapters": args.adapter, "seed": args.seed, **sampling})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_main(main)
