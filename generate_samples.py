"""Every inference task of a trained model, batched: text-to-image, captions, post-selection, super-resolution,
questions, grounded captions, grounding, retrieval and attention maps.

Examples:
    python generate_samples.py --load runs/gpt --prompt "a large red circle at the top left" --batch-size 8
    python generate_samples.py --load runs/gpt --input-source prompts.txt --cfg-scale 3 --output-path samples
    python generate_samples.py --load runs/gpt --generation-task image2text --input-images photos/
    python generate_samples.py --load runs/gpt --generation-task post-selection
        --prompt "左上角有一个大的红色圆形" --input-images candidates/
    python generate_samples.py --load runs/gpt --generation-task super-resolution
        --prompt "a small blue square in the center" --input-images samples/0000_000.png
    python generate_samples.py --load runs/gpt --generation-task text2image-full --prompt "..." --batch-size 16
    python generate_samples.py --load runs/gpt --generation-task vqa --question "what colour is the circle?"
        --input-images photos/                                   # or --input-source lines IMAGE<TAB>QUESTION
    python generate_samples.py --load runs/gpt --generation-task grounded-caption --input-images photos/
    python generate_samples.py --load runs/gpt --generation-task grounding --prompt "the red circle"
        --input-images photos/
    python generate_samples.py --load runs/gpt --generation-task retrieval --input-images photos/
        --input-source captions.txt
    python generate_samples.py --load runs/gpt --generation-task attention-map
        --prompt "a large red circle at the top left" --input-images photos/

Outputs go to --output-path: one PNG per image with the prompt, seed and sampling settings in its
metadata, a grid per prompt, and manifest.jsonl with one record per image, caption or score (see
docs/tasks/batch_generation.md). An input image that cannot be read is skipped and listed in
skipped.txt; the run fails only when none can be read. The tokenizer and VQ-VAE come from the
checkpoint's metadata. A flag the chosen task does not read is refused, not ignored (`FLAG_READERS`).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from PIL import Image

from arguments import add_generation_args, load_time_model_settings, parse_noting_given
from data_utils.sequences import grid_shape, grid_with_tokens
from generation.inputs import read_image_inputs, read_question_inputs
from generation import figures, heatmaps
from generation.outputs import Manifest, save_png, write_skip_report
from generation.pipeline import Pipeline
from generation.prompts import Prompt, collect_prompts, interactive_prompts
from generation.retrieval import ranked
from generation.sampling import SamplingSettings
from generation.tasks import SUPER_RESOLUTION_SAMPLING, super_resolution_settings, with_output_grid
from model.kernels import set_attention_backend
from utils.errors import UserError, run_main
from utils.logging import TensorBoardLogger, get_logger

logger = get_logger("generate_samples")


def one_prompt(args: argparse.Namespace, task: str) -> str:
    """The single text that post-selection, super-resolution and attention maps condition on."""
    prompts = collect_prompts(args.prompt, args.input_source)
    if not prompts or len(prompts) != 1:
        raise UserError(f"--generation-task {task} needs exactly one text: give one --prompt")
    return prompts[0].text


def all_prompts(args: argparse.Namespace, task: str) -> list[Prompt]:
    """The texts that retrieval ranks against the images: every --prompt or --input-source line."""
    prompts = collect_prompts(args.prompt, args.input_source)
    if not prompts:
        raise UserError(f"--generation-task {task} needs texts: give --input-source FILE or --prompt")
    return prompts


def prompt_groups(prompts: Iterable[Prompt], size: int) -> Iterator[list[Prompt]]:
    group: list[Prompt] = []
    for prompt in prompts:
        group.append(prompt)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class Run:
    """One invocation: the loaded pipeline, the settings, and where everything is written."""

    def __init__(self, args: argparse.Namespace, pipe: Pipeline):
        self.args, self.pipe = args, pipe
        self.settings = SamplingSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                         cfg_scale=args.cfg_scale)
        if args.generation_task == "super-resolution":  # its own default (greedy) for the flags not given
            self.settings = super_resolution_settings(**{name: getattr(args, name) for name in
                                                         ("top_k", "top_p", "temperature") if name in args.given_flags})
        self.out = Path(args.output_path)
        self.out.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.out)
        self.tensorboard = TensorBoardLogger(args.tensorboard_dir)
        self.step = 0

    def metadata(self, **fields: Any) -> dict[str, Any]:
        """What goes into every PNG and manifest record: the task, the checkpoint and all settings (the
        precision too: the same seed samples other images in bf16 than in fp32)."""
        adapters = {"adapters": self.args.adapter} if self.args.adapter else {}
        return {"task": self.args.generation_task, "checkpoint": str(self.args.load), **adapters, **fields,
                **self.settings.to_dict(), "precision": self.args.precision}

    def save_image(self, name: str, image, **fields: Any) -> dict[str, Any]:
        record = self.metadata(file=name, **fields)
        save_png(self.out / name, image, record)
        return record

    def log_throughput(self, images: int, seconds: float, tokens: int | None = None, grid=None) -> None:
        values = {"generation/images_per_s": images / seconds}
        if tokens is not None:
            values["generation/tokens_per_s"] = tokens / seconds
        self.tensorboard.scalars(values, self.step)
        if grid is not None:
            import numpy as np
            import torch

            self.tensorboard.image("generation/grid", torch.from_numpy(np.array(grid)).permute(2, 0, 1), self.step)
        self.step += 1

    # --- tasks ------------------------------------------------------------------------------------
    def group_size(self, prompts: Iterable[Prompt]) -> int:
        """Prompts per call: enough to fill one forward (many short prompts share a batch); typed
        prompts go one at a time."""
        if not isinstance(prompts, list):
            return 1
        rows_per_image = 2 if self.settings.uses_guidance else 1
        return max(1, self.args.max_inference_batch_size // (self.args.batch_size * rows_per_image))

    def text2image(self, prompts: Iterable[Prompt]) -> None:
        n, (rows, cols) = self.args.batch_size, grid_shape(self.pipe.geometry.text2image_grid)
        for group in prompt_groups(prompts, self.group_size(prompts)):
            start = time.time()
            results = self.pipe.text2image([p.text for p in group], n=n, seed=self.args.seed,
                                           negative_prompt=self.args.negative_prompt, **self.settings.to_dict())
            for prompt, result in zip(group, results):
                for j, (image, seed) in enumerate(zip(result.images, result.seeds)):
                    self.manifest.add(self.save_image(f"{prompt.id}_{j:03d}.png", image, prompt_id=prompt.id,
                                                      prompt=prompt.text, negative_prompt=self.args.negative_prompt,
                                                      seed=seed, index=j))
                grid_image = figures.prompt_figure(prompt.text, [figures.Cell(image, (f"seed {seed}",))
                                                                 for image, seed in zip(result.images, result.seeds)])
                save_png(self.out / f"{prompt.id}_grid.png", grid_image,
                         self.metadata(prompt=prompt.text, negative_prompt=self.args.negative_prompt,
                                       seeds=result.seeds))
                print(f"{prompt.id}\t{self.out / f'{prompt.id}_grid.png'}\t{prompt.text}", flush=True)
            self.manifest.flush()
            self.log_throughput(len(group) * n, time.time() - start, len(group) * n * rows * cols, grid_image)

    def text2image_full(self, prompts: Iterable[Prompt]) -> None:
        n = self.args.batch_size
        for group in prompt_groups(prompts, self.group_size(prompts)):
            start = time.time()
            results = self.pipe.text2image_select_upscale([p.text for p in group], n=n, seed=self.args.seed,
                                                          negative_prompt=self.args.negative_prompt,
                                                          **self.settings.to_dict())
            for prompt, result in zip(group, results):
                candidates = result.candidates
                rank_of = {index: rank for rank, index in enumerate(
                    sorted(range(n), key=lambda i: -float(candidates.scores[i])))}
                for j, (image, seed) in enumerate(zip(candidates.images, candidates.seeds)):
                    self.manifest.add(self.save_image(
                        f"{prompt.id}_{j:03d}.png", image, prompt_id=prompt.id, prompt=prompt.text,
                        negative_prompt=self.args.negative_prompt, seed=seed, index=j,
                        score=float(candidates.scores[j]), rank=rank_of[j]))
                scores = [float(score) for score in candidates.scores]
                figure = figures.prompt_figure(prompt.text, figures.selection_cells(
                    candidates.images, candidates.seeds, scores, result.best, result.upscaled))
                save_png(self.out / f"{prompt.id}_grid.png", figure,
                         self.metadata(prompt=prompt.text, seeds=candidates.seeds))
                best_name = f"{prompt.id}_best_sr.png"
                self.manifest.add(self.save_image(
                    best_name, result.upscaled, prompt_id=prompt.id, prompt=prompt.text,
                    seed=candidates.seeds[result.best], source=f"{prompt.id}_{result.best:03d}.png",
                    score=float(candidates.scores[result.best]), upscale=SUPER_RESOLUTION_SAMPLING.to_dict()))
                print(f"{prompt.id}\t{self.out / best_name}\t{prompt.text}", flush=True)
            self.manifest.flush()
            self.log_throughput(len(group) * n, time.time() - start)

    def image2text(self, paths: list[Path], images: list[Image.Image]) -> None:
        max_tokens = self.args.max_caption_tokens or self.pipe.geometry.text_max_tokens
        start = time.time()
        captions = self.pipe.caption(images, seed=self.args.seed, max_tokens=max_tokens, top_k=self.args.top_k,
                                     top_p=self.args.top_p, temperature=self.args.temperature,
                                     candidates=self.args.caption_candidates)
        for i, (path, caption) in enumerate(zip(paths, captions)):
            self.manifest.add(self.metadata(input=str(path), caption=caption, seed=self.args.seed + i,
                                            candidates=self.args.caption_candidates))
            print(f"{path}\t{caption}", flush=True)
        self.manifest.flush()
        self.log_throughput(len(images), time.time() - start)

    def post_selection(self, text: str, paths: list[Path], images: list[Image.Image]) -> None:
        start = time.time()
        ranking = self.pipe.rerank(text, images)
        for rank, index in enumerate(ranking.order):
            score = float(ranking.scores[index])
            self.manifest.add({"task": "post-selection", "checkpoint": str(self.args.load), "prompt": text,
                               "input": str(paths[index]), "score": score, "rank": rank,
                               "precision": self.args.precision})
            print(f"{rank}\t{score:.4f}\t{paths[index]}", flush=True)
        self.manifest.flush()
        self.log_throughput(len(images), time.time() - start)

    # --- understanding tasks (greedy decoding: no sampling settings) ---------------------------------------
    def understanding_record(self, **fields: Any) -> dict[str, Any]:
        return {"task": self.args.generation_task, "checkpoint": str(self.args.load), **fields,
                "precision": self.args.precision}

    def vqa(self, questions: list[str], paths: list[Path], images: list[Image.Image]) -> None:
        start = time.time()
        answers = self.pipe.answer(images, questions)
        for path, question, answer in zip(paths, questions, answers):
            self.manifest.add(self.understanding_record(input=str(path), question=question, answer=answer))
            print(f"{path}\t{question}\t{answer}", flush=True)
        self.manifest.flush()
        self.log_throughput(len(images), time.time() - start)

    def grounded_caption(self, paths: list[Path], images: list[Image.Image]) -> None:
        start = time.time()
        captions = self.pipe.grounded_caption(images)
        for path, image, caption in zip(paths, images, captions):
            name = f"{path.stem}_grounded.png"
            record = self.understanding_record(
                file=name, input=str(path), caption=caption.text,
                objects=[{"phrase": phrase, "box": list(box)} for phrase, box in caption.objects])
            save_png(self.out / name, figures.boxes_figure(image, caption.objects), record)
            self.manifest.add(record)
            print(f"{path}\t{self.out / name}\t{caption.text}", flush=True)
        self.manifest.flush()
        self.log_throughput(len(images), time.time() - start)

    def grounding(self, text: str, paths: list[Path], images: list[Image.Image]) -> None:
        start = time.time()
        boxes = self.pipe.ground(images, text)
        for path, image, box in zip(paths, images, boxes):
            name = f"{path.stem}_grounding.png"
            record = self.understanding_record(file=name, input=str(path), prompt=text,
                                               box=None if box is None else list(box))
            save_png(self.out / name, figures.boxes_figure(image, [] if box is None else [(text, box)]), record)
            self.manifest.add(record)
            print(f"{path}\t{self.out / name}\t{box}", flush=True)
        self.manifest.flush()
        self.log_throughput(len(images), time.time() - start)

    def super_resolution(self, text: str, paths: list[Path], images: list[Image.Image]) -> None:
        start = time.time()
        upscaled = self.pipe.super_resolve(images, text, seed=self.args.seed, top_k=self.settings.top_k,
                                           top_p=self.settings.top_p, temperature=self.settings.temperature)
        for i, (path, image) in enumerate(zip(paths, upscaled)):
            name = f"{path.stem}_sr.png"
            self.manifest.add(self.save_image(name, image, prompt=text, seed=self.args.seed + i, input=str(path)))
            print(f"{path}\t{self.out / name}", flush=True)
        self.manifest.flush()
        self.log_throughput(len(images), time.time() - start,
                            grid=figures.grid([figures.Cell(image) for image in upscaled]))

    def retrieval(self, texts: list[Prompt], paths: list[Path], images: list[Image.Image]) -> None:
        """One record per text (its score with each image, its images best first) and one per image
        (its texts best first): together the whole score matrix, read either way."""
        start = time.time()
        scores = self.pipe.retrieval_scores(images, [text.text for text in texts])
        base = {"task": "retrieval", "checkpoint": str(self.args.load), "precision": self.args.precision}
        for text, row, order in zip(texts, scores, ranked(scores)):
            self.manifest.add({**base, "text_id": text.id, "text": text.text,
                               "scores": {str(path): float(score) for path, score in zip(paths, row)},
                               "ranked_images": [str(paths[j]) for j in order]})
            print(f"{text.id}\t{paths[order[0]]}\t{text.text}", flush=True)
        for path, column, order in zip(paths, scores.T, ranked(scores.T)):
            self.manifest.add({**base, "input": str(path),
                               "scores": {text.id: float(score) for text, score in zip(texts, column)},
                               "ranked_texts": [texts[i].text for i in order]})
        self.manifest.flush()
        self.log_throughput(len(images), time.time() - start)

    def attention_map(self, text: str, paths: list[Path], images: list[Image.Image]) -> None:
        """Per input image, a heat-map PNG for each word of the text (`{stem}_word{k}.png`) and a record
        with the word's attention over the code grid; plus the words side by side (`{stem}_words.png`)."""
        start = time.time()
        base = {"task": "attention-map", "checkpoint": str(self.args.load), "precision": self.args.precision,
                "prompt": text}
        for path, image, words in zip(paths, images, self.pipe.attention_maps(images, [text] * len(images))):
            cells = [figures.Cell(heatmaps.overlay(image, word.grid), (word.word.text,)) for word in words]
            for k, (word, cell) in enumerate(zip(words, cells)):
                name = f"{path.stem}_word{k:02d}.png"
                save_png(self.out / name, figures.grid([cell]), {**base, "input": str(path), "word": word.word.text})
                self.manifest.add({**base, "input": str(path), "file": name, "word_index": k, **word.to_dict()})
            words_name = f"{path.stem}_words.png"
            save_png(self.out / words_name, figures.prompt_figure(text, [figures.Cell(image, ("input",)), *cells],
                                                                  columns=len(cells) + 1),
                     {**base, "input": str(path)})
            print(f"{path}\t{self.out / words_name}", flush=True)
        self.manifest.flush()
        self.log_throughput(len(images), time.time() - start)


TEXT_TASKS = ("text2image", "text2image-full")
IMAGE_TASKS = ("image2text", "post-selection", "super-resolution", "grounded-caption", "grounding", "retrieval",
               "attention-map")
SAMPLING_TASKS = ("text2image", "text2image-full", "image2text", "super-resolution")  # post-selection only scores
MATCHING_TASKS = ("post-selection", "text2image-full", "image2text")  # image2text with --caption-candidates > 1
# Tasks that read the caption model: for match scores, and for the image-to-text direction itself.
CAPTION_MODEL_TASKS = MATCHING_TASKS + ("retrieval", "attention-map")
# The tasks that read each flag; given to any other task (even at its default value) a flag would do
# nothing, so it is refused. Every flag not listed here is read by every task.
FLAG_READERS = {
    "prompt": TEXT_TASKS + ("post-selection", "super-resolution", "grounding", "retrieval", "attention-map"),
    "input_source": TEXT_TASKS + ("post-selection", "super-resolution", "vqa", "retrieval", "attention-map"),
    "negative_prompt": TEXT_TASKS, "cfg_scale": TEXT_TASKS, "batch_size": TEXT_TASKS,
    "input_images": IMAGE_TASKS + ("vqa",), "question": ("vqa",),
    "seed": SAMPLING_TASKS, "temperature": SAMPLING_TASKS, "top_k": SAMPLING_TASKS, "top_p": SAMPLING_TASKS,
    "max_caption_tokens": ("image2text",), "caption_candidates": ("image2text",),
    "caption_model": CAPTION_MODEL_TASKS, "post_selection_score": MATCHING_TASKS, "image_grid": ("text2image",),
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_flags(args: argparse.Namespace) -> None:
    """Refuse every given flag that the task, or the other flags, leave unread (`args.given_flags`)."""
    task, given = args.generation_task, args.given_flags
    for dest, tasks in FLAG_READERS.items():
        if dest in given and task not in tasks:
            raise UserError(f"{_flag(dest)} is not used by --generation-task {task} (only by {', '.join(tasks)})")
    if "negative_prompt" in given and args.cfg_scale == 1.0:
        raise UserError("--negative-prompt needs --cfg-scale other than 1 (at 1 the unconditional branch is not used)")
    if task == "vqa" and ("question" in given) == ("input_source" in given):
        raise UserError("--generation-task vqa asks --question about every --input-images image, or reads "
                        "IMAGE<TAB>QUESTION lines from --input-source: give exactly one of the two")
    if task == "vqa" and "input_source" in given and "input_images" in given:
        raise UserError("--input-source names the images of vqa itself; leave out --input-images")
    if task == "image2text" and args.caption_candidates == 1:
        for dest in ("caption_model", "post_selection_score"):
            if dest in given:
                raise UserError(f"{_flag(dest)} matches caption candidates to their image: "
                                f"give --caption-candidates 2 or more")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = parse_noting_given(add_generation_args(parser), argv)
    check_flags(args)
    output_grid = None if args.image_grid is None else grid_with_tokens(args.image_grid)
    set_attention_backend(args.attention_backend)
    SamplingSettings(args.temperature, args.top_k, args.top_p, args.cfg_scale)
    # Every input is checked before the model loads, so a typo costs no loading time.
    task = args.generation_task
    summary = ""  # the image tasks' count of inputs done and skipped
    if task in TEXT_TASKS:
        prompts = collect_prompts(args.prompt, args.input_source)
        inputs: tuple = (interactive_prompts() if prompts is None else prompts,)
    else:
        if task in ("image2text", "grounded-caption", "vqa"):
            text: tuple = ()
        elif task == "retrieval":
            text = (all_prompts(args, task),)
        else:
            text = (one_prompt(args, task),)
        if task == "vqa" and args.input_source:
            batch = read_question_inputs(args.input_source, task)
        else:
            batch = read_image_inputs(args.input_images, task)
        Path(args.output_path).mkdir(parents=True, exist_ok=True)
        report = write_skip_report(args.output_path, batch.skipped)
        if not batch.images:
            raise UserError(f"none of the {len(batch.skipped)} input files could be read as an image; "
                            f"{report} lists why")
        summary = f"{len(batch.images)} input image(s) done, {len(batch.skipped)} skipped (listed in {report}); "
        if batch.skipped:
            logger.warning("skipping %d of the input files (listed in %s)", len(batch.skipped), report)
        if task == "vqa":
            text = (batch.texts or [args.question] * len(batch.images),)
        inputs = (*text, batch.paths, batch.images)
    pipe = Pipeline.from_checkpoint(args.load, vqvae=args.vqvae, text_tokenizer=args.text_tokenizer,
                                    device=args.device, precision=args.precision, caption_model=args.caption_model,
                                    max_batch_rows=args.max_inference_batch_size,
                                    post_selection=args.post_selection_score, adapters=args.adapter or (),
                                    **load_time_model_settings(args))
    if output_grid is not None:
        pipe.geometry = with_output_grid(pipe.geometry, output_grid, pipe.tokenizer)
    run = Run(args, pipe)
    try:
        {"text2image": run.text2image, "text2image-full": run.text2image_full, "image2text": run.image2text,
         "post-selection": run.post_selection, "super-resolution": run.super_resolution, "vqa": run.vqa,
         "grounded-caption": run.grounded_caption, "grounding": run.grounding, "retrieval": run.retrieval,
         "attention-map": run.attention_map}[task](*inputs)
    finally:
        run.tensorboard.close()
    logger.info("%s: %swrote %s", task, summary, run.manifest.path)


if __name__ == "__main__":
    run_main(main)
