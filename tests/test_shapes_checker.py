"""The checker reads shapes.md's "Checking a generated image" to the letter: the failure cases an outside
checker found (rounded squares, wrong sizes, swapped shapes), ties, stray regions and the 1 px overlap.

Every expected verdict below is worked out by hand from the spec and the renderer's templates
(`shape_mask`), with the counts written next to it, so a wrong reading fails here."""
import numpy as np
import pytest

from data_utils.shapes import COLOURS, SHAPES, ShapeObject, object_bbox, render, shape_mask
from data_utils.shapes_checker import assign, cell_at, check_image, size_class

RED, BLUE = COLOURS["red"], COLOURS["blue"]


def canvas(size: int = 64) -> np.ndarray:
    return np.full((size, size, 3), 255, dtype=np.uint8)


def paint(image: np.ndarray, mask: np.ndarray, x0: int, y0: int, colour) -> np.ndarray:
    image[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]][mask] = colour
    return image


def want(colour: str, shape: str, size: str, position: str) -> list[ShapeObject]:
    return [ShapeObject(colour, shape, size, position)]


def chamfered_square(side: int, cut: int) -> np.ndarray:
    """A square with each corner rounded off: pixels whose distance (in rows + columns) from their
    corner is below `cut` are left out, i.e. cut * (cut + 1) / 2 pixels per corner."""
    index = np.arange(side)
    edge = np.minimum(index, side - 1 - index)
    return edge[:, None] + edge[None, :] >= cut


def test_a_small_square_with_rounded_corners_is_whatever_template_fits_best():
    # Small circle template in 12 x 12: 112 px (4 + 8 + 10 + 10 + 12 x 4 + 10 + 10 + 8 + 4), inside any of these.
    assert np.count_nonzero(shape_mask("circle", 12, 12)) == 112
    top_left = object_bbox("small", "top left", 64)[:2]
    slightly = chamfered_square(12, 2)  # 144 - 4 x 3 = 132 px: square 132/144 = .917 > circle 112/132 = .848
    image = paint(canvas(), slightly, *top_left, RED)
    assert check_image(image, want("red", "square", "small", "top left")).correct
    assert not check_image(image, want("red", "circle", "small", "top left")).correct
    rounded = chamfered_square(12, 3)  # 144 - 4 x 6 = 120 px: circle 112/120 = .933 > square 120/144 = .833
    image = paint(canvas(), rounded, *top_left, RED)
    assert not check_image(image, want("red", "square", "small", "top left")).correct
    assert check_image(image, want("red", "circle", "small", "top left")).correct


def test_each_side_of_the_box_must_be_nearest_the_prompts_size():
    x0, y0 = 24, 24  # centre cell for every box below
    for width, height, size in [(12, 12, "small"), (15, 15, "small"), (17, 17, "large"), (20, 20, "large"),
                                (15, 12, "small"), (19, 20, "large")]:
        image = paint(canvas(), np.ones((height, width), dtype=bool), x0, y0, RED)
        assert check_image(image, want("red", "square", size, "center")).correct, (width, height)
    # 16 px lies exactly between 12 and 20; 13 x 19 has one side of each class (its mean, 16, would
    # have been "large" for a checker that averages the sides).
    for width, height in [(16, 16), (13, 19), (12, 20), (16, 20)]:
        image = paint(canvas(), np.ones((height, width), dtype=bool), x0, y0, RED)
        for size in ("small", "large"):
            assert not check_image(image, want("red", "square", size, "center")).correct, (width, height, size)


def test_size_classes_scale_with_the_canvas():
    assert [size_class(side, side, 32) for side in (5, 6, 7, 8, 9, 10)] == ["small"] * 3 + [None] + ["large"] * 2
    assert [size_class(side, side, 128) for side in (31, 32, 33)] == ["small", None, "large"]
    assert size_class(6, 10, 32) is None


def test_a_wrongly_sized_object_is_refused():
    drawn = [ShapeObject("red", "circle", "large", "top", object_bbox("large", "top", 64))]
    assert not check_image(render(drawn), want("red", "circle", "small", "top")).correct
    drawn = [ShapeObject("red", "triangle", "small", "bottom", object_bbox("small", "bottom", 64))]
    assert not check_image(render(drawn), want("red", "triangle", "large", "bottom")).correct


def test_shapes_swapped_between_the_two_objects_are_refused():
    prompt = [ShapeObject("red", "square", "large", "top left"), ShapeObject("blue", "circle", "small", "center")]
    drawn = [ShapeObject("red", "circle", "large", "top left", object_bbox("large", "top left", 64)),
             ShapeObject("blue", "square", "small", "center", object_bbox("small", "center", 64))]
    result = check_image(render(drawn), prompt)
    assert not result.correct and result.present == [False, False] and result.extras == 2
    assert result.colour_ok == result.position_ok == result.size_ok == [True, True]
    assert result.shape_ok == [False, False]
    unswapped = [ShapeObject(o.colour, p.shape, o.size, o.position, o.bbox) for o, p in zip(drawn, prompt)]
    assert check_image(render(unswapped), prompt).correct


def test_a_tie_for_the_best_template_is_no_shape():
    # Triangle and diamond templates in 12 x 12 have 84 px each; their union (108 px) contains both, so
    # both IoUs are 84/108 = .778, above the circle's (.774) and the square's (108/144 = .75).
    union = shape_mask("triangle", 12, 12) | shape_mask("diamond", 12, 12)
    assert np.count_nonzero(union) == 108
    image = paint(canvas(), union, 26, 26, BLUE)
    for shape in SHAPES:
        assert not check_image(image, want("blue", shape, "small", "center")).correct, shape


def test_other_regions_of_the_objects_colour_count_as_something_else():
    prompt = want("red", "circle", "large", "top left")
    image = np.array(render([ShapeObject("red", "circle", "large", "top left",
                                         object_bbox("large", "top left", 64))]))
    image[50:54, 50:55] = RED  # 20 px: not over 20, noise
    assert check_image(image, prompt).correct
    image[50:54, 50:56] = RED  # 24 px of the same colour elsewhere: something else
    result = check_image(image, prompt)
    assert result.present == [True] and result.extras == 1 and not result.correct
    image[50:54, 50:56] = BLUE  # and of another colour
    assert check_image(image, prompt).extras == 1


def test_pixels_touching_only_at_a_corner_are_apart():
    # Two 5 x 5 red blocks meeting at one corner: two regions of 25 px (4-connectivity), both something else.
    image = paint(paint(canvas(), np.ones((5, 5), bool), 30, 30, RED), np.ones((5, 5), bool), 35, 35, RED)
    result = check_image(image, want("red", "circle", "large", "center"))
    assert [r.area for r in result.detected] == [25, 25] and result.extras == 2


def test_the_noise_area_scales_with_the_canvas_area():
    prompt = want("red", "square", "large", "center")
    image = np.array(render([ShapeObject("red", "square", "large", "center", object_bbox("large", "center", 32))],
                            32))
    image[0:1, 0:5] = BLUE  # 5 px at 32 px: 20 px at 64
    assert check_image(image, prompt).correct
    image[0:1, 0:6] = BLUE
    assert check_image(image, prompt).extras == 1


def test_cells_are_thirds_and_a_centre_on_a_border_is_in_none():
    assert cell_at(0, 0, 20, 20, 64) == "top left" and cell_at(22, 44, 42, 64, 64) == "bottom"
    assert cell_at(12, 0, 31, 20, 64) == "top" and cell_at(12, 0, 30, 20, 64) == "top left"  # 21 < 64/3 < 21.5
    assert cell_at(28, 40, 36, 48, 96) is None  # x centre 32 = 96 / 3: on the border
    assert cell_at(27, 40, 36, 48, 96) == "left"


@pytest.mark.parametrize("vertical", [False, True])
def test_two_large_neighbours_overlapping_by_one_pixel_pass(vertical):
    # Jittered towards each other, a large object in the top left cell (box [2, 22)) and one in the next
    # cell (box [21, 41)) share one pixel column (or row); the later is drawn on top of the earlier.
    first_cell, second_cell = ("top left", "left") if vertical else ("top left", "top")
    first_jitter, second_jitter = ((0, 1), (0, -1)) if vertical else ((1, 0), (-1, 0))
    for first_shape in SHAPES:
        for second_shape in SHAPES:
            objects = [ShapeObject("red", first_shape, "large", first_cell,
                                   object_bbox("large", first_cell, 64, first_jitter)),
                       ShapeObject("blue", second_shape, "large", second_cell,
                                   object_bbox("large", second_cell, 64, second_jitter))]
            result = check_image(render(objects), objects)
            assert result.correct, (first_shape, second_shape, result.detected)


def test_each_region_stands_for_one_object_and_as_many_objects_as_possible_are_found():
    # Region 0 fits both wanted objects, region 1 only the first: the first object must take region 1.
    fits = {(0, "a"), (0, "b"), (1, "a")}
    assert assign([0, 1], ["a", "b"], lambda region, wanted: (region, wanted) in fits) == [1, 0]
    assert assign([0], ["a", "b"], lambda region, wanted: True) == [0, None]
