"""A web page over `generation.pipeline.Pipeline`: type a prompt, see the candidates ranked, super-resolve one.

Example:
    python web_demo.py                                  # the quick start's model, http://127.0.0.1:7860
    python web_demo.py --load runs/gpt --port 8000      # any checkpoint generate_samples.py reads
    python web_demo.py --precision int8                 # linear layers in int8 (CPU only)

Tabs: text to image (candidates ranked by post-selection, the pick super-resolved), caption an image
(the best of N sampled captions), rank images for a prompt. A tab shows only when the loaded pipeline can
do its task (`supports`), so tasks that later issues add to `Pipeline` appear by adding one `TaskTab`.
Every image downloads as the PNG generate_samples.py writes (`generation.outputs.save_png`): prompt,
seed and sampling settings in its metadata. Requests queue one at a time, so two visitors never hold
two models' worth of activations at once; the page binds to 127.0.0.1 unless --host says otherwise.
Needs the optional requirements (`make demo` installs requirements-demo.txt).
"""
from __future__ import annotations

import argparse
import functools
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# Gradio's usage statistics and version check would reach the network; the demo never does.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from data_utils.images import load_image  # noqa: E402
from fp16 import PRECISIONS  # noqa: E402
from generation.outputs import save_png  # noqa: E402
from generation.pipeline import Pipeline  # noqa: E402
from generation.sampling import SamplingSettings  # noqa: E402
from generation.tasks import SUPER_RESOLUTION_SAMPLING  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402

try:  # optional: training machines need not install it (requirements-demo.txt)
    import gradio as gr
except ImportError:
    gr = None

DEFAULT_CHECKPOINT = "runs/quickstart/gpt"   # where `make quickstart` saves its transformer
MAX_CANDIDATES = 16
TASK = "text2image-full"                     # what generate_samples.py calls candidates + ranking + SR


@dataclass
class Candidates:
    """One text-to-image request, kept per visitor so the pick can be super-resolved later."""

    prompt: str
    settings: SamplingSettings
    seeds: list[int]              # in ranked order, best first
    codes: torch.Tensor           # [n, grid, grid], ranked order
    scores: list[float]           # ranked order
    files: list[str]              # the saved PNGs, ranked order


class Demo:
    """The loaded pipeline, where this server writes its PNGs, and one handler per button."""

    def __init__(self, pipe: Pipeline, checkpoint: str, output_dir: Path):
        self.pipe, self.checkpoint, self.output_dir = pipe, checkpoint, output_dir

    def _request_dir(self) -> Path:
        folder = self.output_dir / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        return folder

    def _metadata(self, settings: SamplingSettings, **fields: Any) -> dict[str, Any]:
        """The keys generate_samples.py writes into the same PNG, so a downloaded image says how to remake it."""
        return {"task": TASK, "checkpoint": self.checkpoint, **fields, **settings.to_dict()}

    # --- text to image ------------------------------------------------------------------------------
    def generate(self, prompt: str, negative_prompt: str, n: float, cfg_scale: float, temperature: float,
                 top_k: float, top_p: float, seed: float) -> tuple[list[tuple[str, str]], list[str], Candidates]:
        prompt, negative = prompt.strip(), negative_prompt.strip() or None
        if not prompt:
            raise UserError("type a prompt first")
        if negative is not None and cfg_scale == 1.0:
            raise UserError("a negative prompt needs guidance other than 1 (at 1 the unconditional branch is not used)")
        settings = SamplingSettings(temperature=temperature, top_k=int(top_k), top_p=top_p, cfg_scale=cfg_scale)
        result = self.pipe.text2image(prompt, n=int(n), seed=int(seed), negative_prompt=negative,
                                      **settings.to_dict())[0]
        ranking = self.pipe.rerank_codes(prompt, result.codes)
        folder = self._request_dir()
        files, captions = [], []
        for rank, j in enumerate(ranking.order):
            score, image_seed = float(ranking.scores[j]), result.seeds[j]
            path = folder / f"seed{image_seed}.png"
            save_png(path, result.images[j], self._metadata(settings, file=path.name, prompt=prompt,
                                                            negative_prompt=negative, seed=image_seed, index=j,
                                                            score=score, rank=rank))
            files.append(str(path))
            captions.append(f"#{rank + 1} · {score:.2f} · seed {image_seed}")
        state = Candidates(prompt, settings, [result.seeds[j] for j in ranking.order],
                           result.codes[ranking.order], [float(ranking.scores[j]) for j in ranking.order], files)
        return list(zip(files, captions)), files, state

    def super_resolve(self, state: Candidates | None, pick: int) -> tuple[str, list[str]]:
        """The picked candidate at twice its side, decoded as text2image-full magnifies its best one
        (super-resolution's default, greedy); a model that never trained the windows refuses in one line."""
        if state is None:
            raise UserError("generate candidates first, then pick one to super-resolve")
        settings = state.settings
        codes = self.pipe.super_resolve_codes(state.codes[pick:pick + 1], [state.prompt], state.seeds[pick],
                                              SUPER_RESOLUTION_SAMPLING)
        image = self.pipe.decode_codes(codes)[0]
        path = self._request_dir() / f"seed{state.seeds[pick]}_sr.png"
        save_png(path, image, self._metadata(settings, file=path.name, prompt=state.prompt, seed=state.seeds[pick],
                                             source=Path(state.files[pick]).name, score=state.scores[pick]))
        return str(path), [*state.files, str(path)]

    # --- caption ------------------------------------------------------------------------------------
    def caption(self, upload: str | None, n: float, temperature: float, top_k: float, top_p: float,
                seed: float) -> tuple[Image.Image, list[list[Any]]]:
        """N sampled captions of the image, best first by `Pipeline.match_scores`, each with the seed that
        samples it again (`generate_samples.py --generation-task image2text --seed SEED`); an empty caption
        says nothing and goes last."""
        image = read_upload(upload)
        candidates = self.pipe.caption_candidates([image], int(n), seed=int(seed),
                                                  max_tokens=self.pipe.geometry.text_max_tokens,
                                                  top_k=int(top_k), top_p=top_p, temperature=temperature)[0]
        rows = [[rank + 1, entry.text, None if entry.score is None else round(entry.score, 4), entry.seed]
                for rank, entry in enumerate(candidates)]
        return image, rows

    # --- rank ---------------------------------------------------------------------------------------
    def rank(self, prompt: str, uploads: list[str] | None) -> list[tuple[Image.Image, str]]:
        prompt = prompt.strip()
        if not prompt:
            raise UserError("type the prompt the images should match")
        if not uploads or len(uploads) < 2:
            raise UserError("upload two or more images to rank")
        images = [read_upload(upload) for upload in uploads]
        ranking = self.pipe.rerank(prompt, images)
        return [(images[j], f"#{rank + 1} · {float(ranking.scores[j]):.2f} · {Path(uploads[j]).name}")
                for rank, j in enumerate(ranking.order)]


def read_upload(upload: str | None) -> Image.Image:
    if not upload:
        raise UserError("upload an image first")
    return load_image(upload)


def messages_on_page(handler: Callable) -> Callable:
    """Bad input becomes a message on the page (gr.Error), never a traceback."""
    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from None

    return wrapped


# --- the page -------------------------------------------------------------------------------------------
def sampling_controls(top_k: int = 200, temperature: float = 1.0) -> tuple:
    with gr.Row():
        temperature_box = gr.Slider(0.05, 2.0, value=temperature, step=0.05, label="Temperature")
        top_k_box = gr.Slider(0, 1000, value=top_k, step=1, label="Top-k (0 = off)")
        top_p_box = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (1 = off)")
        seed_box = gr.Number(value=0, precision=0, label="Seed")
    return temperature_box, top_k_box, top_p_box, seed_box


def text2image_tab(demo: Demo) -> None:
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", placeholder="a large red circle at the top left", scale=3)
        negative = gr.Textbox(label="Negative prompt", placeholder="(needs guidance other than 1)", scale=2)
    with gr.Row():
        n = gr.Slider(1, MAX_CANDIDATES, value=8, step=1, label="Candidates")
        cfg = gr.Slider(0.0, 10.0, value=1.5, step=0.1, label="Guidance (1 = none)")
    temperature, top_k, top_p, seed = sampling_controls(temperature=0.4)
    generate = gr.Button("Generate", variant="primary")
    candidates = gr.State(None)
    pick = gr.State(0)
    with gr.Row():
        gallery = gr.Gallery(label="Candidates, best first: rank · score · seed (click one to pick it)",
                             columns=4, height=400, object_fit="contain", elem_id="candidates", scale=3)
        with gr.Column(scale=2):
            upscale = gr.Button("Super-resolve the pick")
            upscaled = gr.Image(label="Super-resolved", type="filepath", elem_id="upscaled")
    downloads = gr.File(label="PNGs with prompt, seed and settings in their metadata", file_count="multiple",
                        interactive=False, height=240, elem_id="downloads")

    def picked(event: gr.SelectData) -> int:
        return event.index

    generate.click(messages_on_page(_with_progress(demo.generate)),
                   [prompt, negative, n, cfg, temperature, top_k, top_p, seed], [gallery, downloads, candidates]
                   ).then(lambda: 0, None, pick)
    gallery.select(picked, None, pick)
    upscale.click(messages_on_page(_with_progress(demo.super_resolve)), [candidates, pick], [upscaled, downloads])


def caption_tab(demo: Demo) -> None:
    with gr.Row():
        with gr.Column():
            upload = gr.File(label="Image", file_types=["image"], elem_id="caption-upload")
            n = gr.Slider(1, MAX_CANDIDATES, value=8, step=1, label="Captions to sample")
        shown = gr.Image(label="What the model reads", interactive=False)
    temperature, top_k, top_p, seed = sampling_controls()
    run = gr.Button("Caption", variant="primary")
    table = gr.Dataframe(headers=["rank", "caption", "score", "seed"], label="Captions, best first",
                         interactive=False, elem_id="captions")
    run.click(messages_on_page(_with_progress(demo.caption)), [upload, n, temperature, top_k, top_p, seed],
              [shown, table])


def rank_tab(demo: Demo) -> None:
    prompt = gr.Textbox(label="Prompt")
    uploads = gr.File(label="Images", file_count="multiple", file_types=["image"])
    run = gr.Button("Rank", variant="primary")
    gallery = gr.Gallery(label="Best first: rank · score · file", columns=4, fit_columns=False, height=320,
                         object_fit="contain")
    run.click(messages_on_page(_with_progress(demo.rank)), [prompt, uploads], gallery)


def _with_progress(handler: Callable) -> Callable:
    """A handler whose sampling shows on the page: gr.Progress mirrors the decoders' tqdm bars."""
    def run(*args, progress=gr.Progress(track_tqdm=True)):
        return handler(*args)

    run.__name__ = handler.__name__
    return run


@dataclass(frozen=True)
class TaskTab:
    """A tab and the `Pipeline` method its task needs: the tab shows only when the pipeline has it."""

    title: str
    needs: str
    build: Callable[[Demo], None]


TABS = (TaskTab("Text to image", "text2image", text2image_tab),
        TaskTab("Caption an image", "caption", caption_tab),
        TaskTab("Rank images for a prompt", "rerank", rank_tab))


def supports(pipe: Pipeline, tab: TaskTab) -> bool:
    return callable(getattr(pipe, tab.needs, None))


def build_page(demo: Demo):
    with gr.Blocks(title="CogView demo", analytics_enabled=False) as page:
        grid = demo.pipe.geometry.image_grid
        gr.Markdown(f"## CogView demo\n`{demo.checkpoint}`: {demo.pipe.image_size(grid)} px images "
                    f"({grid}x{grid} codes), prompts of up to {demo.pipe.geometry.text_max_tokens} text tokens. "
                    "Requests run one at a time.")
        with gr.Tabs():
            for tab in TABS:
                if supports(demo.pipe, tab):
                    with gr.Tab(tab.title):
                        tab.build(demo)
    return page.queue(default_concurrency_limit=1)


def load_pipeline(checkpoint: str, device: str, precision: str = "fp32") -> Pipeline:
    """The pipeline, or one line saying why not (a missing quick-start model says how to make it)."""
    if not Path(checkpoint).exists():
        hint = "run `make quickstart` first, or give --load" if checkpoint == DEFAULT_CHECKPOINT else "check --load"
        raise UserError(f"no checkpoint at {checkpoint}: {hint}")
    # a corrupt checkpoint, or int8 on a GPU, is a UserError there
    return Pipeline.from_checkpoint(checkpoint, device=device, precision=precision)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", default=DEFAULT_CHECKPOINT, metavar="PATH",
                        help="checkpoint, any layout generate_samples.py reads (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="the transformer's precision, as in generate_samples.py; int8 is CPU only "
                             "(default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 opens the page to the network (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    if gr is None:
        raise UserError("the web demo needs gradio: `make demo`, or pip install -r requirements-demo.txt")
    pipe = load_pipeline(args.load, args.device, args.precision)
    with tempfile.TemporaryDirectory(prefix="cogview-demo-") as output_dir:
        page = build_page(Demo(pipe, args.load, Path(output_dir)))
        page.launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=False)


if __name__ == "__main__":
    run_main(main)
