"""One example picture per inference task, for the task pages in docs/tasks/.

Example:
    python scripts/task_examples.py --load runs/bq30/shapes/gpt --output docs/images/tasks

Writes, from held-out `shapes` items (the validation split, never trained on):
    text2image.png        a row per prompt: --samples images without guidance, then as many with --cfg-scale
    image2text.png        held-out images with their true caption, the model's greedy caption and the best of
                          16 sampled (reranked by agreement with the image)
    post_selection.png    --candidates images of one prompt, sorted by post-selection score, best first
    super_resolution.png  a row per image: low-res input, bicubic 2x, the model's 2x, the original

Everything goes through `generation.pipeline.Pipeline`, so the pictures show what a user of the API gets.
The same checkpoint and --seed give the same pictures (on the same device). The layout is
`generation.figures`': images enlarged with nearest-neighbour resampling so that their pixels stay
visible, framed, post-selection's pick marked, labels in a CJK font when one is installed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from arguments import non_negative_float, positive_float, positive_int  # noqa: E402
from data_utils.image_sources import open_dataset  # noqa: E402
from data_utils.images import downscale, pil_to_tensor, tensor_to_pil  # noqa: E402
from eval_utils.psnr import bicubic_upsample  # noqa: E402
from generation.figures import Cell, column_titles, display_side, grid, titled, titled_rows  # noqa: E402
from generation.outputs import save_png  # noqa: E402
from generation.pipeline import Pipeline  # noqa: E402
from utils.errors import run_main  # noqa: E402

# Layout (the rest is generation.figures'): every image is shown framed at one side for all four pictures
# (`shown_side`). Each text field gets a fixed number of lines, so a picture's size depends on its layout
# only, never on what the model wrote.
CAPTION_CELL_TILES = 2      # image2text: a cell is two tiles wide, so a two-object caption fits two lines
CAPTION_LINES = 3           # lines for each of the true and the model's captions
RERANKED_CAPTIONS = 16      # sampled captions of which image2text.png shows the one agreeing best with the image
CAPTION_COLUMNS = 3
SR_COLUMNS = 4              # low-res input, bicubic 2x, model 2x, original

# Held-out items per picture: (with one object, with two objects).
TEXT2IMAGE_PROMPTS = (2, 2)
CAPTIONED_IMAGES = (3, 3)
POST_SELECTION_PROMPT = (0, 1)
SUPER_RESOLUTION_IMAGES = (2, 1)


def held_out(size: int, counts: tuple[int, int]) -> tuple[list[str], list[Image.Image]]:
    """Captions and images of the first validation items with one object, then with two (prompts of
    both difficulties, the two groups evaluate.py scores separately)."""
    source = open_dataset("shapes", split="val", size=size, language="en")
    wanted = {1: counts[0], 2: counts[1]}
    picked: dict[int, list] = {1: [], 2: []}
    for index in range(len(source)):
        item = source.item(index)
        count = len(item.metadata["objects"])
        if count in wanted and len(picked[count]) < wanted[count]:
            picked[count].append(item)
        if all(len(picked[c]) == wanted[c] for c in wanted):
            break
    items = picked[1] + picked[2]
    return [item.caption for item in items], [item.image for item in items]


def shown_side(side: int) -> int:
    """The side every picture shows images at, for a model of `side` px images: the low-res inputs, the
    model's images and the super-resolved ones all enlarge pixel-exactly to it."""
    return display_side([side // 2, side, 2 * side])


# --- the pictures ---------------------------------------------------------------------------------------
def text2image_picture(pipe: Pipeline, prompts: list[str], samples: int, cfg_scale: float, temperature: float,
                       seed: int, side: int) -> Image.Image:
    """Image j of every prompt uses seed `seed + j` with and without guidance, so columns j and
    `samples + j` differ by guidance alone."""
    plain = pipe.text2image(prompts, n=samples, seed=seed, temperature=temperature)
    guided = pipe.text2image(prompts, n=samples, seed=seed, cfg_scale=cfg_scale, temperature=temperature)
    rows = [(a.prompt, [Cell(image) for image in a.images + b.images]) for a, b in zip(plain, guided)]
    header = column_titles(["no guidance (cfg scale 1)",
                                    f"classifier-free guidance, cfg scale {cfg_scale:g}"], samples, side)
    return titled_rows(rows, 2 * samples, side, header)


def image2text_picture(pipe: Pipeline, captions: list[str], images: list[Image.Image], seed: int,
                       side: int) -> Image.Image:
    """Greedy captions (top-k 1), the model's most likely caption, next to the best of
    `RERANKED_CAPTIONS` sampled ones (what `evaluate.py --caption-candidates` judges)."""
    max_tokens = pipe.geometry.text_max_tokens
    greedy = pipe.caption(images, seed=seed, top_k=1, max_tokens=max_tokens)
    reranked = pipe.caption(images, seed=seed, top_k=0, max_tokens=max_tokens, candidates=RERANKED_CAPTIONS)
    cells = [Cell(image, (f"true: {truth}", f"greedy: {plain}", f"best of {RERANKED_CAPTIONS}: {best}"))
             for image, truth, plain, best in zip(images, captions, greedy, reranked)]
    return grid(cells, CAPTION_COLUMNS, side, lines_per_field=CAPTION_LINES, tiles_wide=CAPTION_CELL_TILES)


def post_selection_picture(pipe: Pipeline, prompt: str, candidates: int, cfg_scale: float, temperature: float,
                           seed: int, side: int) -> Image.Image:
    """Candidates scored from their codes (what text2image-full does), so no VQ-VAE round trip
    changes the images that are scored; the first, post-selection's pick, is marked."""
    result = pipe.text2image(prompt, n=candidates, seed=seed, cfg_scale=cfg_scale, temperature=temperature)[0]
    ranking = pipe.rerank_codes(prompt, result.codes)
    cells = [Cell(result.images[i], (f"{rank + 1}. {float(ranking.scores[i]):.2f} (seed {seed + i})",), rank == 0)
             for rank, i in enumerate(ranking.order)]
    title = f"{prompt} (cfg scale {cfg_scale:g}; rank. score, best first)"
    return titled(title, grid(cells, candidates, side))


def super_resolution_picture(pipe: Pipeline, captions: list[str], images: list[Image.Image], seed: int,
                             side: int) -> Image.Image:
    """Inputs made as training made them (`data_utils.images.downscale`), so the model sees its own task,
    decoded with super-resolution's own default (greedy); bicubic upsampling is the baseline evaluate.py
    measures PSNR against."""
    lowres = [downscale(image) for image in images]
    upscaled = pipe.super_resolve(lowres, captions, seed=seed)
    bicubic = bicubic_upsample(torch.stack([pil_to_tensor(image) for image in lowres]), 2)
    rows = [(caption, [Cell(image) for image in (low, tensor_to_pil(cubic), model, original)])
            for caption, low, cubic, model, original in zip(captions, lowres, bicubic, upscaled, images)]
    full, low_side = images[0].width, lowres[0].width
    titles = [f"input, {low_side} px", f"bicubic, {full} px", f"model, {full} px", f"original, {full} px"]
    return titled_rows(rows, SR_COLUMNS, side, column_titles(titles, 1, side))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True, help="checkpoint (anything generate_samples.py --load takes)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the four PNGs")
    parser.add_argument("--seed", type=int, default=0, help="image j of every prompt uses seed SEED+j")
    parser.add_argument("--cfg-scale", type=non_negative_float, default=1.5,
                        help="guidance scale of the guided half of text2image.png and of the post-selection candidates")
    parser.add_argument("--temperature", type=positive_float, default=1.0,
                        help="sampling temperature of the generated images (captions: greedy, and sampled at 1; "
                             "super-resolution: greedy)")
    parser.add_argument("--samples", type=positive_int, default=4,
                        help="text2image.png: images per prompt, with and without guidance each")
    parser.add_argument("--candidates", type=positive_int, default=8, help="post_selection.png: candidates")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args(argv)

    pipe = Pipeline.from_checkpoint(args.load, device=args.device)
    side = pipe.image_size(pipe.geometry.image_grid)
    display = shown_side(side)
    pictures = {
        "text2image.png": lambda: text2image_picture(pipe, held_out(side, TEXT2IMAGE_PROMPTS)[0], args.samples,
                                                     args.cfg_scale, args.temperature, args.seed, display),
        "image2text.png": lambda: image2text_picture(pipe, *held_out(side, CAPTIONED_IMAGES), args.seed, display),
        "post_selection.png": lambda: post_selection_picture(pipe, held_out(side, POST_SELECTION_PROMPT)[0][0],
                                                             args.candidates, args.cfg_scale, args.temperature,
                                                             args.seed, display),
        "super_resolution.png": lambda: super_resolution_picture(pipe, *held_out(side, SUPER_RESOLUTION_IMAGES),
                                                                 args.seed, display),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    settings = {"checkpoint": str(args.load), "seed": args.seed, "cfg_scale": args.cfg_scale,
                "temperature": args.temperature}
    for name, draw in tqdm(pictures.items(), desc="task examples", unit="picture"):
        save_png(args.output / name, draw(), settings)
        tqdm.write(str(args.output / name))


if __name__ == "__main__":
    run_main(main)
