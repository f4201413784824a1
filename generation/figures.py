"""The pictures people read: images in framed cells, with labels, prompts and the chosen candidate marked.

Every grid the repository draws goes through this module (generate_samples.py's grid per prompt, the quick
start's overview, scripts/task_examples.py's docs pictures, benchmarks/bench_quality.py's held-out overview),
so they all look alike. The rules:

- Images stay pixel-exact: they are enlarged by whole factors with nearest-neighbour resampling
  (`enlarge`), never blurred or shrunk.
- Every image sits in a frame (`FRAME` px, grey) and cells stand `GAP` px apart, so eight white
  candidates still show where each one ends. Post-selection's pick gets a frame in `CHOSEN_COLOUR`.
- Labels use a CJK font (Debian's fonts-noto-cjk, `make cjk-font`) so Chinese prompts are readable;
  without one they fall back to PIL's built-in font (Chinese then shows as boxes) after a one-line warning.
- Each text field gets a fixed number of lines, so a picture's size depends on its layout only, never
  on what a prompt or the model says.
"""
from __future__ import annotations

import functools
import math
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from utils.logging import get_logger

logger = get_logger("figures")

FONT_SIZE = 12
LINE_HEIGHT = 18            # Noto Sans CJK's ascent + descent at FONT_SIZE; PIL's own font fits too
FRAME = 2
GAP = 6
ROW_GAP = 16                # between titled rows, so a title reads as the start of its row
MIN_DISPLAY_SIDE = 128      # images are enlarged (by whole factors) to at least this many pixels
FRAME_COLOUR = (150, 150, 150)
CHOSEN_COLOUR = (230, 90, 0)
BACKGROUND = "white"
CJK_FONT_PACKAGE = "fonts-noto-cjk"
# (file, face index in the collection): Debian's fonts-noto-cjk (face 2 is Simplified Chinese), then fonts-wqy-*.
KNOWN_CJK_FONTS = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc", 2),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
)

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


@dataclass(frozen=True)
class Cell:
    """One image of a figure with the lines printed under it; `chosen` marks post-selection's pick."""
    image: Image.Image
    caption: Sequence[str] = field(default_factory=tuple)
    chosen: bool = False


# --- fonts ------------------------------------------------------------------------------------------
def find_cjk_font() -> tuple[str, int] | None:
    """A font file (and face index) that has Chinese glyphs: a known path, else what fontconfig lists
    for Chinese; None when there is none."""
    for path, index in KNOWN_CJK_FONTS:
        if Path(path).is_file():
            return path, index
    if shutil.which("fc-list") is None:
        return None
    listed = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True).stdout
    files = sorted(line.split(":")[0].strip() for line in listed.splitlines() if line.strip())
    return (files[0], 0) if files else None


@functools.cache
def font() -> Font:
    """The labels' font: a CJK one when installed, else PIL's built-in font (after one warning)."""
    found = find_cjk_font()
    if found is not None:
        return ImageFont.truetype(found[0], FONT_SIZE, index=found[1])
    logger.warning("no CJK font found: Chinese labels will show as boxes; install the Debian package %s "
                   "(make cjk-font)", CJK_FONT_PACKAGE)
    return ImageFont.load_default(FONT_SIZE)


# --- text -------------------------------------------------------------------------------------------
def _pieces(word: str, width: int) -> list[str]:
    """`word` cut into pieces of at most `width` pixels (Chinese has no spaces to break at)."""
    pieces = [""]
    for char in word:
        if pieces[-1] and font().getlength(pieces[-1] + char) > width:
            pieces.append("")
        pieces[-1] += char
    return pieces


def wrap(text: str, width: int, lines: int) -> list[str]:
    """`text` broken at spaces (or between characters where a word is too wide) into at most `lines`
    lines of at most `width` pixels; a cut text ends in '...'."""
    face = font()
    wrapped: list[str] = []
    for word in text.split():
        if wrapped and face.getlength(f"{wrapped[-1]} {word}") <= width:
            wrapped[-1] = f"{wrapped[-1]} {word}"
        else:
            wrapped.extend(_pieces(word, width))
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        while wrapped[-1] and face.getlength(wrapped[-1] + "...") > width:
            wrapped[-1] = wrapped[-1].rsplit(" ", 1)[0] if " " in wrapped[-1] else wrapped[-1][:-1]
        wrapped[-1] += "..."
    return wrapped


def text_block(fields: Sequence[str], width: int, lines_per_field: int = 1) -> Image.Image:
    """A white strip with each field wrapped into exactly `lines_per_field` lines."""
    block = Image.new("RGB", (width, len(fields) * lines_per_field * LINE_HEIGHT), BACKGROUND)
    pen = ImageDraw.Draw(block)
    for f, text in enumerate(fields):
        for n, line in enumerate(wrap(text, width, lines_per_field)):
            pen.text((0, (f * lines_per_field + n) * LINE_HEIGHT), line, fill="black", font=font())
    return block


# --- images -----------------------------------------------------------------------------------------
def display_side(sides: Sequence[int]) -> int:
    """The side of the square every image of a figure is shown in: a whole multiple of each image's
    longer side (so that every enlargement is pixel-exact) and at least `MIN_DISPLAY_SIDE`."""
    common = math.lcm(*sides)
    return common * math.ceil(MIN_DISPLAY_SIDE / common)


def longer_side(image: Image.Image) -> int:
    return max(image.size)


def enlarge(image: Image.Image, side: int) -> Image.Image:
    """`image` enlarged by nearest neighbour (each pixel becomes a block) until its longer side is `side`,
    centred in a white `side` x `side` square, so that images of any aspect ratio share one layout."""
    if side % longer_side(image):
        raise ValueError(f"a {image.width}x{image.height} image cannot be enlarged pixel-exactly to {side} px")
    factor = side // longer_side(image)
    enlarged = image.convert("RGB").resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    if enlarged.size == (side, side):
        return enlarged
    square = Image.new("RGB", (side, side), BACKGROUND)
    square.paste(enlarged, ((side - enlarged.width) // 2, (side - enlarged.height) // 2))
    return square


def framed(image: Image.Image, chosen: bool = False) -> Image.Image:
    """`image` inside a `FRAME` px frame: grey, or `CHOSEN_COLOUR` for post-selection's pick."""
    tile = Image.new("RGB", (image.width + 2 * FRAME, image.height + 2 * FRAME),
                     CHOSEN_COLOUR if chosen else FRAME_COLOUR)
    tile.paste(image, (FRAME, FRAME))
    return tile


def tile_side(side: int) -> int:
    """The width of a framed image shown at `side` px."""
    return side + 2 * FRAME


def span(tiles: int, side: int) -> int:
    """The width of `tiles` framed images side by side, `GAP` apart."""
    return tiles * tile_side(side) + (tiles - 1) * GAP


# --- layout -----------------------------------------------------------------------------------------
def stack(parts: Sequence[Image.Image], gap: int = GAP) -> Image.Image:
    """Parts one below the other, left-aligned, `gap` apart."""
    canvas = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts) + gap * (len(parts) - 1)),
                       BACKGROUND)
    top = 0
    for part in parts:
        canvas.paste(part, (0, top))
        top += part.height + gap
    return canvas


def tiles(parts: Sequence[Image.Image], columns: int) -> Image.Image:
    """Parts (all the same size) row by row, `GAP` apart."""
    columns = min(columns, len(parts))
    width, height = parts[0].size
    rows = math.ceil(len(parts) / columns)
    canvas = Image.new("RGB", (columns * width + (columns - 1) * GAP, rows * height + (rows - 1) * GAP), BACKGROUND)
    for index, part in enumerate(parts):
        row, column = divmod(index, columns)
        canvas.paste(part, (column * (width + GAP), row * (height + GAP)))
    return canvas


def cell_picture(cell: Cell, side: int, fields: int = 0, lines_per_field: int = 1,
                 tiles_wide: int = 1) -> Image.Image:
    """A cell drawn `tiles_wide` tiles wide: its framed image (centred) over `fields` caption fields of
    `lines_per_field` lines each (missing fields are left blank, so every cell has the same size)."""
    width = span(tiles_wide, side)
    picture = Image.new("RGB", (width, tile_side(side)), BACKGROUND)
    picture.paste(framed(enlarge(cell.image, side), cell.chosen), ((width - tile_side(side)) // 2, 0))
    if not fields:
        return picture
    caption = list(cell.caption) + [""] * (fields - len(cell.caption))
    return stack([picture, text_block(caption, width, lines_per_field)])


def grid(cells: Sequence[Cell], columns: int | None = None, side: int | None = None, lines_per_field: int = 1,
         tiles_wide: int = 1) -> Image.Image:
    """Cells row by row (nearly square by default), each image framed and shown at `side` px
    (`display_side` of the images by default) over its caption, `lines_per_field` lines a field."""
    if not cells:
        raise ValueError("a grid needs at least one image")
    side = side or display_side([longer_side(cell.image) for cell in cells])
    columns = columns or math.ceil(math.sqrt(len(cells)))
    fields = max(len(cell.caption) for cell in cells)
    return tiles([cell_picture(cell, side, fields, lines_per_field, tiles_wide) for cell in cells], columns)


def titled(title: str, picture: Image.Image, lines: int = 1) -> Image.Image:
    """`picture` under its title (wrapped to the picture's width)."""
    return stack([text_block([title], picture.width, lines), picture])


def column_titles(titles: Sequence[str], tiles_each: int, side: int) -> Image.Image:
    """One title line over each group of `tiles_each` columns of a grid of `side` px images."""
    return tiles([text_block([title], span(tiles_each, side)) for title in titles], len(titles))


def titled_rows(rows: Sequence[tuple[str, Sequence[Cell]]], columns: int, side: int | None = None,
                header: Image.Image | None = None, lines_per_field: int = 1) -> Image.Image:
    """Optional column titles (`column_titles`), then each row's title line above its cells (each caption
    field `lines_per_field` lines), rows `ROW_GAP` apart."""
    side = side or display_side([longer_side(cell.image) for _, cells in rows for cell in cells])
    parts = [header] if header is not None else []
    parts += [titled(title, grid(cells, columns, side, lines_per_field)) for title, cells in rows]
    return stack(parts, ROW_GAP)


# --- what generation shows --------------------------------------------------------------------------
def selection_cells(images: Sequence[Image.Image], seeds: Sequence[int], scores: Sequence[float],
                    chosen: int, upscaled: Image.Image) -> list[Cell]:
    """Post-selection's pick (marked) and, beside it, its super-resolved image; then the other candidates,
    best first. Each candidate is labelled with its seed and score."""
    order = sorted(range(len(images)), key=lambda i: (i != chosen, -scores[i]))
    cells = [Cell(images[i], (f"seed {seeds[i]}: {scores[i]:.2f}", "chosen" if i == chosen else ""), i == chosen)
             for i in order]
    cells.insert(1, Cell(upscaled, ("super-resolved pick", f"{upscaled.width} px")))
    return cells


def prompt_figure(prompt: str, cells: Sequence[Cell], columns: int | None = None) -> Image.Image:
    """The grid of one prompt under the prompt (two lines wide), each image over its caption."""
    return titled(prompt, grid(cells, columns), lines=2)


BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))
BOX_FIGURE_SIDE = 256  # boxes are drawn on the image enlarged to at least this, so labels fit beside them


def boxes_figure(image: Image.Image, boxes: Sequence[tuple[str, Sequence[int]]]) -> Image.Image:
    """`image` enlarged pixel-exactly (to at least `BOX_FIGURE_SIDE`), each (label, [x0, y0, x1, y1]) box drawn
    in its own colour, labelled above its top-left corner (below it when there is no room above), kept inside
    the picture."""
    factor = max(1, math.ceil(BOX_FIGURE_SIDE / longer_side(image)))
    shown = image.convert("RGB").resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    pen = ImageDraw.Draw(shown)
    for k, (label, (x0, y0, x1, y1)) in enumerate(boxes):
        colour = BOX_COLOURS[k % len(BOX_COLOURS)]
        pen.rectangle((x0 * factor, y0 * factor, x1 * factor - 1, y1 * factor - 1), outline=colour, width=2)
        width = int(font().getlength(label)) + 4
        left = max(2, min(x0 * factor + 2, shown.width - width + 2))
        top = y0 * factor - LINE_HEIGHT
        top = top if top >= 0 else y0 * factor + 2
        pen.rectangle((left - 2, top, left - 2 + width, top + LINE_HEIGHT - 1), fill=colour)
        pen.text((left, top), label, fill="white", font=font())
    return shown
