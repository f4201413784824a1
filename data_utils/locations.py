"""Boxes <-> location tokens: the one place that knows how a box in pixels becomes two tokens.

The image is cut into a `bins` x `bins` grid of cells (Kosmos-2's patch-index tokens); cell (row, col) is
location token `row * bins + col` (`UnifiedTokenizer.location_id`). A box `[x0, y0, x1, y1]` in pixels,
`x0, y0` inclusive and `x1, y1` exclusive (`../shared/datasets/shapes-tasks.md`), becomes two tokens:

    top-left      the cell holding the box's top-left corner:       col = floor(x0 * bins / W)
    bottom-right  the cell holding the box's bottom-right corner:   col = ceil(x1 * bins / W) - 1

(rows likewise with y and H). Back from tokens, the box spans both cells whole: x0 = ceil(col * W / bins),
x1 = floor((col + 1) * W / bins). So each side of a decoded box lies within one cell of the original,
the decoded box holds the original, and on any image of at least `bins` pixels a side, tokens -> box ->
tokens gives the same tokens. Only the grid is in the tokens, never the image size: the same two tokens
decode to a box in pixels of whatever image they are asked about.
"""
from __future__ import annotations

from typing import Sequence

from data_utils.tokenizer import UnifiedTokenizer

Box = tuple[int, int, int, int]


def check_box(box: Sequence[float], width: int, height: int) -> Box:
    """`box` as four ints inside a width x height image with x0 < x1 and y0 < y1, or ValueError saying why."""
    if len(box) != 4:
        raise ValueError(f"a box is [x0, y0, x1, y1], got {list(box)!r}")
    if any(not float(v).is_integer() for v in box):
        raise ValueError(f"box coordinates are whole pixels, got {list(box)!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box {[x0, y0, x1, y1]} is empty or outside the {width}x{height} image "
                         f"(x0 < x1 <= width, y0 < y1 <= height, x1 and y1 exclusive)")
    return x0, y0, x1, y1


def box_to_cells(box: Sequence[float], width: int, height: int, bins: int) -> tuple[int, int]:
    """(top-left cell, bottom-right cell) of a box in pixels of a width x height image."""
    if bins < 1:
        raise ValueError(f"a location grid needs at least 1 bin per side, got {bins}")
    x0, y0, x1, y1 = check_box(box, width, height)
    top_left = (y0 * bins // height) * bins + x0 * bins // width
    bottom_right = (-(-y1 * bins // height) - 1) * bins + (-(-x1 * bins // width) - 1)
    return top_left, bottom_right


def cells_to_box(cells: Sequence[int], width: int, height: int, bins: int) -> Box:
    """The box in pixels of a width x height image spanned by a (top-left, bottom-right) pair of cells.

    A pair in the wrong order (a model's mistake) is read as the box between the two cells."""
    if len(cells) != 2 or not all(0 <= int(c) < bins * bins for c in cells):
        raise ValueError(f"expected two cells of a {bins}x{bins} grid, got {list(cells)!r}")
    (row_a, col_a), (row_b, col_b) = divmod(int(cells[0]), bins), divmod(int(cells[1]), bins)
    top, bottom, left, right = min(row_a, row_b), max(row_a, row_b), min(col_a, col_b), max(col_a, col_b)
    x0, y0 = -(-left * width // bins), -(-top * height // bins)
    x1, y1 = (right + 1) * width // bins, (bottom + 1) * height // bins
    # An image smaller than the grid can leave a cell without a whole pixel: keep the box one pixel wide.
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def box_to_ids(tok: UnifiedTokenizer, box: Sequence[float], width: int, height: int) -> list[int]:
    """The two location token ids of a box in pixels of a width x height image."""
    if not tok.location_bins:
        raise ValueError("this tokenizer has no location tokens (made with location bins 0)")
    return [tok.location_id(cell) for cell in box_to_cells(box, width, height, tok.location_bins)]


def ids_to_box(tok: UnifiedTokenizer, ids: Sequence[int], width: int, height: int) -> Box:
    """The box in pixels of a width x height image named by two location token ids."""
    if len(ids) != 2:
        raise ValueError(f"a box is two location tokens, got {len(ids)} ids")
    return cells_to_box([tok.location_cell(int(i)) for i in ids], width, height, tok.location_bins)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (x1, y1 exclusive); an answered box is right at >= 0.5."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
