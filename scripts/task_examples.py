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
The same checkpoint and --seed give the same pictures (on the same device). Images are enlarged with
nearest-neighbour resampling so that their pixels stay visible; the labels use PIL's built-in font.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont, ImageOps  # noqa: E402
from tqdm import tqdm  # noqa: E402

from arguments import non_negative_float, positive_float, positive_int  # noqa: E402
from data_utils.image_sources import open_dataset  # noqa: E402
from data_utils.images import downscale, pil_to_tensor, tensor_to_pil  # noqa: E402
from eval_utils.psnr import bicubic_upsample  # noqa: E402
from generation.outputs import make_grid, save_png  # noqa: E402
from generation.pipeline import Pipeline  # noqa: E402
from utils.errors import run_main  # noqa: E402

# Layout, in pixels. Every image is shown in a square tile twice the model's image side (the model's images
# at 2x, super-resolution outputs at 1x, low-res inputs at 4x) inside a grey frame, so that a white image
# still shows where it ends. Each text field gets a fixed number of lines, so a picture's size depends on
# its layout only, never on what the model wrote.
DISPLAY_SCALE = 2
FRAME = 1
GAP = 6
FONT_SIZE = 12
LINE_HEIGHT = 16
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


# --- layout -------------------------------------------------------------------------------------------
@functools.cache
def font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(FONT_SIZE)


def wrap(text: str, width: int, lines: int) -> list[str]:
    """`text` broken at spaces into at most `lines` lines of at most `width` pixels; a cut text ends in '...'."""
    face = font()
    wrapped: list[str] = []
    for word in text.split():
        if wrapped and face.getlength(f"{wrapped[-1]} {word}") <= width:
            wrapped[-1] = f"{wrapped[-1]} {word}"
        else:
            wrapped.append(word)
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        while " " in wrapped[-1] and face.getlength(wrapped[-1] + " ...") > width:
            wrapped[-1] = wrapped[-1].rsplit(" ", 1)[0]
        wrapped[-1] += " ..."
    return wrapped


def text_block(fields: Sequence[str], width: int, lines_per_field: int = 1) -> Image.Image:
    """A white strip with each field wrapped into exactly `lines_per_field` lines."""
    block = Image.new("RGB", (width, len(fields) * lines_per_field * LINE_HEIGHT), "white")
    pen = ImageDraw.Draw(block)
    for f, field in enumerate(fields):
        for n, line in enumerate(wrap(field, width, lines_per_field)):
            pen.text((0, (f * lines_per_field + n) * LINE_HEIGHT), line, fill="black", font=font())
    return block


def enlarge(image: Image.Image, tile: int) -> Image.Image:
    """`image` resized (nearest neighbour) and framed to a `tile` x `tile` square."""
    inner = tile - 2 * FRAME
    return ImageOps.expand(image.convert("RGB").resize((inner, inner), Image.Resampling.NEAREST), FRAME, "grey")


def stack(parts: Sequence[Image.Image]) -> Image.Image:
    """Parts one below the other, left-aligned, `GAP` apart."""
    canvas = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts) + GAP * (len(parts) - 1)),
                       "white")
    top = 0
    for part in parts:
        canvas.paste(part, (0, top))
        top += part.height + GAP
    return canvas


def labelled(image: Image.Image, fields: Sequence[str], width: int, lines_per_field: int = 1) -> Image.Image:
    """`image` centred over its text fields, in a cell `width` wide."""
    cell = Image.new("RGB", (width, image.height), "white")
    cell.paste(image, ((width - image.width) // 2, 0))
    return stack([cell, text_block(fields, width, lines_per_field)])


def span(tiles: int, tile: int) -> int:
    """The width `make_grid` gives `tiles` tiles side by side."""
    return tiles * tile + (tiles - 1) * GAP


def titled_rows(rows: Sequence[tuple[str, Sequence[Image.Image]]], columns: int,
                header: Image.Image | None = None) -> Image.Image:
    """Optional column titles, then each row's title line above its images."""
    grids = [make_grid(images, columns=columns, gap=GAP) for _, images in rows]
    width = grids[0].width
    parts = [header] if header is not None else []
    parts += [stack([text_block([title], width), grid]) for (title, _), grid in zip(rows, grids)]
    return stack(parts)


def column_titles(titles: Sequence[str], tiles_each: int, tile: int) -> Image.Image:
    return make_grid([text_block([title], span(tiles_each, tile)) for title in titles], columns=len(titles), gap=GAP)


# --- the pictures ---------------------------------------------------------------------------------------
def text2image_picture(pipe: Pipeline, prompts: list[str], samples: int, cfg_scale: float, temperature: float,
                       seed: int, tile: int) -> Image.Image:
    """Image j of every prompt uses seed `seed + j` with and without guidance, so columns j and
    `samples + j` differ by guidance alone."""
    plain = pipe.text2image(prompts, n=samples, seed=seed, temperature=temperature)
    guided = pipe.text2image(prompts, n=samples, seed=seed, cfg_scale=cfg_scale, temperature=temperature)
    rows = [(a.prompt, [enlarge(image, tile) for image in a.images + b.images]) for a, b in zip(plain, guided)]
    header = column_titles(["no guidance (cfg scale 1)", f"classifier-free guidance, cfg scale {cfg_scale:g}"],
                           samples, tile)
    return titled_rows(rows, 2 * samples, header)


def image2text_picture(pipe: Pipeline, captions: list[str], images: list[Image.Image], seed: int,
                       tile: int) -> Image.Image:
    """Greedy captions (top-k 1), the model's most likely caption, next to the best of
    `RERANKED_CAPTIONS` sampled ones (what `evaluate.py --caption-candidates` judges)."""
    max_tokens = pipe.geometry.text_max_tokens
    greedy = pipe.caption(images, seed=seed, top_k=1, max_tokens=max_tokens)
    reranked = pipe.caption(images, seed=seed, top_k=0, max_tokens=max_tokens, candidates=RERANKED_CAPTIONS)
    cells = [labelled(enlarge(image, tile), [f"true: {truth}", f"greedy: {plain}",
                                              f"best of {RERANKED_CAPTIONS}: {best}"], CAPTION_CELL_TILES * tile,
                      CAPTION_LINES) for image, truth, plain, best in zip(images, captions, greedy, reranked)]
    return make_grid(cells, columns=CAPTION_COLUMNS, gap=GAP)


def post_selection_picture(pipe: Pipeline, prompt: str, candidates: int, cfg_scale: float, temperature: float,
                           seed: int, tile: int) -> Image.Image:
    """Candidates scored from their codes (what text2image-full does), so no VQ-VAE round trip
    changes the images that are scored."""
    result = pipe.text2image(prompt, n=candidates, seed=seed, cfg_scale=cfg_scale, temperature=temperature)[0]
    ranking = pipe.rerank_codes(prompt, result.codes)
    cells = [labelled(enlarge(result.images[i], tile),
                      [f"{rank + 1}. {float(ranking.scores[i]):.2f} (seed {seed + i})"], tile)
             for rank, i in enumerate(ranking.order)]
    return titled_rows([(f"{prompt} (cfg scale {cfg_scale:g}; rank. score, best first)", cells)], candidates)


def super_resolution_picture(pipe: Pipeline, captions: list[str], images: list[Image.Image], temperature: float,
                             seed: int, tile: int) -> Image.Image:
    """Inputs made as training made them (`data_utils.images.downscale`), so the model sees its own task;
    bicubic upsampling is the baseline evaluate.py measures PSNR against."""
    lowres = [downscale(image) for image in images]
    upscaled = pipe.super_resolve(lowres, captions, seed=seed, temperature=temperature)
    bicubic = bicubic_upsample(torch.stack([pil_to_tensor(image) for image in lowres]), 2)
    rows = [(caption, [enlarge(image, tile) for image in (low, tensor_to_pil(cubic), model, original)])
            for caption, low, cubic, model, original in zip(captions, lowres, bicubic, upscaled, images)]
    side, low_side = images[0].width, lowres[0].width
    titles = [f"input, {low_side} px", f"bicubic, {side} px", f"model, {side} px", f"original, {side} px"]
    return titled_rows(rows, SR_COLUMNS, column_titles(titles, 1, tile))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True, help="checkpoint (anything generate_samples.py --load takes)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the four PNGs")
    parser.add_argument("--seed", type=int, default=0, help="image j of every prompt uses seed SEED+j")
    parser.add_argument("--cfg-scale", type=non_negative_float, default=1.5,
                        help="guidance scale of the guided half of text2image.png and of the post-selection candidates")
    parser.add_argument("--temperature", type=positive_float, default=1.0,
                        help="sampling temperature of the generated images (captions: greedy, and sampled at 1)")
    parser.add_argument("--samples", type=positive_int, default=4,
                        help="text2image.png: images per prompt, with and without guidance each")
    parser.add_argument("--candidates", type=positive_int, default=8, help="post_selection.png: candidates")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args(argv)

    pipe = Pipeline.from_checkpoint(args.load, device=args.device)
    side = pipe.image_size(pipe.geometry.image_grid)
    tile = DISPLAY_SCALE * side + 2 * FRAME
    pictures = {
        "text2image.png": lambda: text2image_picture(pipe, held_out(side, TEXT2IMAGE_PROMPTS)[0], args.samples,
                                                     args.cfg_scale, args.temperature, args.seed, tile),
        "image2text.png": lambda: image2text_picture(pipe, *held_out(side, CAPTIONED_IMAGES), args.seed, tile),
        "post_selection.png": lambda: post_selection_picture(pipe, held_out(side, POST_SELECTION_PROMPT)[0][0],
                                                             args.candidates, args.cfg_scale, args.temperature,
                                                             args.seed, tile),
        "super_resolution.png": lambda: super_resolution_picture(pipe, *held_out(side, SUPER_RESOLUTION_IMAGES),
                                                                 args.temperature, args.seed, tile),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    settings = {"checkpoint": str(args.load), "seed": args.seed, "cfg_scale": args.cfg_scale,
                "temperature": args.temperature}
    for name, draw in tqdm(pictures.items(), desc="task examples", unit="picture"):
        save_png(args.output / name, draw(), settings)
        tqdm.write(str(args.output / name))


if __name__ == "__main__":
    run_main(main)
