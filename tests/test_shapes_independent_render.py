"""The project's `shapes` renders against a renderer written here from the text of shapes.md alone (floating
point geometry, its own tables), pixel for pixel: colours, sides, cell centres, jitter, draw order.

The spec leaves the pixel rule open; this renderer paints a pixel when its centre lies in the shape, except
for the triangle, whose pixel-centre version would leave its apex row empty (its visible box 11 px high, not
the spec's 12): there it tests the midpoint of the pixel's bottom edge, the rule `shapes.py` documents.
"""
import numpy as np
import pytest

from data_utils.shapes import ShapesDataset

SPEC_COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 200, 30),
                "purple": (150, 60, 190), "orange": (245, 130, 30)}
SPEC_POSITIONS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
SPEC_SIDES_64 = {"small": 12, "large": 20}
SPEC_CENTRES_64 = (11, 32, 53)


def spec_centre(position: str, canvas: int) -> tuple[int, int]:
    row, col = divmod(SPEC_POSITIONS.index(position), 3)
    return round(SPEC_CENTRES_64[col] * canvas / 64), round(SPEC_CENTRES_64[row] * canvas / 64)


def covers(shape: str, x: float, y: float, cx: float, cy: float, half: float) -> bool:
    dx, dy = x - cx, y - cy
    if abs(dx) > half or abs(dy) > half:
        return False
    if shape == "square":
        return True
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "diamond":
        return abs(dx) + abs(dy) <= half
    return abs(dx) <= (dy + half) / 2  # triangle: apex (cx, cy - half), base from cx - half to cx + half


def spec_render(objects: list[tuple[str, str, str, str, tuple[int, int]]], canvas: int) -> np.ndarray:
    """(colour, shape, size, position, jitter) objects, drawn in order on white."""
    image = np.full((canvas, canvas, 3), 255, dtype=np.uint8)
    for colour, shape, size, position, (jx, jy) in objects:
        cx, cy = spec_centre(position, canvas)
        cx, cy, half = cx + jx, cy + jy, SPEC_SIDES_64[size] * canvas / 64 / 2
        for j in range(canvas):
            for i in range(canvas):
                y = j + (1.0 if shape == "triangle" else 0.5)
                if covers(shape, i + 0.5, y, cx, cy, half):
                    image[j, i] = SPEC_COLOURS[colour]
    return image


@pytest.mark.parametrize("canvas", [64, 32])
def test_renders_match_a_renderer_written_from_the_spec(canvas):
    dataset = ShapesDataset(seed=11, size=canvas)
    for index in range(200 if canvas == 64 else 60):
        item = dataset.item(index)
        objects = []
        for obj in item.objects:  # the draws (colour, shape, size, cell, jitter); the jitter read off the box
            cx, cy = spec_centre(obj.position, canvas)
            jitter = ((obj.bbox[0] + obj.bbox[2]) // 2 - cx, (obj.bbox[1] + obj.bbox[3]) // 2 - cy)
            assert max(map(abs, jitter)) <= 1
            objects.append((obj.colour, obj.shape, obj.size, obj.position, jitter))
        assert np.array_equal(np.asarray(item.image), spec_render(objects, canvas)), (index, item.caption)
