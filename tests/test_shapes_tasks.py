"""The understanding tasks of `shapes`, against the wording of shapes-tasks.md, on hand-built items."""
import numpy as np
import pytest

from data_utils.shapes import COLOURS, COLOURS_ZH, SHAPES_ZH, ShapeObject, ShapesDataset, object_bbox, render
from data_utils.shapes_tasks import (GroundedObject, QuestionAnswer, ReferringExpression, questions,
                                     referring_expressions, shapes_tasks, visible_boxes)


def placed(colour, shape, size, position, jitter=(0, 0), canvas=64):
    return ShapeObject(colour, shape, size, position, object_bbox(size, position, canvas, jitter))


RED_CIRCLE = placed("red", "circle", "large", "top left")          # box (1, 1, 21, 21)
BLUE_DIAMOND = placed("blue", "diamond", "small", "center")        # box (26, 26, 38, 38)
GREEN_CIRCLE = placed("green", "circle", "small", "bottom right")  # box (47, 47, 59, 59)


class FixedDraws:
    """Stands in for the generator: question 6 present or absent, then the listed picks."""

    def __init__(self, present: bool, picks):
        self.present, self.picks = present, list(picks)

    def random(self):
        return 0.25 if self.present else 0.75

    def integers(self, high):
        pick = self.picks.pop(0)
        assert 0 <= pick < high
        return pick


def test_english_questions_of_a_two_object_item():
    # Question 6 absent: the absent pairs in order are red square, red triangle, ...; question 7's empty cells
    # are top, top right, left, right, bottom left, bottom, bottom right.
    asked = questions([RED_CIRCLE, BLUE_DIAMOND], "en", FixedDraws(False, [0, 1]))
    assert asked == [
        QuestionAnswer(1, "what colour is the circle?", "red"),
        QuestionAnswer(1, "what colour is the diamond?", "blue"),
        QuestionAnswer(2, "what shape is the red object?", "circle"),
        QuestionAnswer(3, "where is the red circle?", "top left"),
        QuestionAnswer(4, "what size is the red circle?", "large"),
        QuestionAnswer(2, "what shape is the blue object?", "diamond"),
        QuestionAnswer(3, "where is the blue diamond?", "center"),
        QuestionAnswer(4, "what size is the blue diamond?", "small"),
        QuestionAnswer(5, "how many objects are there?", "two"),
        QuestionAnswer(6, "is there a red square?", "no"),
        QuestionAnswer(7, "what is at the top left?", "a large red circle"),
        QuestionAnswer(7, "what is at the center?", "a small blue diamond"),
        QuestionAnswer(7, "what is at the top right?", "nothing"),
    ]


def test_chinese_questions_and_question_one_only_for_a_unique_shape():
    asked = questions([RED_CIRCLE, GREEN_CIRCLE], "zh", FixedDraws(True, [1, 6]))
    assert [qa for qa in asked if qa.kind == 1] == []  # two circles: "what colour is the circle?" is not asked
    assert asked == [
        QuestionAnswer(2, "红色的物体是什么形状？", "圆形"),
        QuestionAnswer(3, "红色圆形在哪里？", "左上角"),
        QuestionAnswer(4, "红色圆形是大的还是小的？", "大"),
        QuestionAnswer(2, "绿色的物体是什么形状？", "圆形"),
        QuestionAnswer(3, "绿色圆形在哪里？", "右下角"),
        QuestionAnswer(4, "绿色圆形是大的还是小的？", "小"),
        QuestionAnswer(5, "图中有几个物体？", "两个"),
        QuestionAnswer(6, "图中有绿色圆形吗？", "有"),
        QuestionAnswer(7, "左上角有什么？", "一个大的红色圆形"),
        QuestionAnswer(7, "右下角有什么？", "一个小的绿色圆形"),
        QuestionAnswer(7, "下方有什么？", "什么都没有"),
    ]
    one = questions([BLUE_DIAMOND], "zh", FixedDraws(False, [0, 0]))
    assert one[0] == QuestionAnswer(1, "菱形是什么颜色？", "蓝色")
    assert QuestionAnswer(5, "图中有几个物体？", "一个") in one
    assert QuestionAnswer(6, "图中有红色圆形吗？", "没有") in one
    assert QuestionAnswer(7, "左上角有什么？", "什么都没有") in one


def test_question_six_is_half_present_and_deterministic():
    data = ShapesDataset(seed=3, language="both")
    answers = []
    for index in range(400):
        item = data.item(index)
        tasks = shapes_tasks(item.objects, 64, item.language, 3, index)
        assert tasks == shapes_tasks(item.objects, 64, item.language, 3, index)
        (six,) = [qa for qa in tasks.questions if qa.kind == 6]
        answers.append(six.answer in ("yes", "有"))
        # A "present" question names an object of the image, an "absent" one a pair that is not there.
        named = {(o.colour, o.shape) for o in item.objects}
        assert (six.answer in ("yes", "有")) == any(
            (f"{c} {s}" in six.question) or (f"{cz}{sz}" in six.question)
            for c, s in named for cz, sz in [_zh(c, s)])
    assert 0.43 < np.mean(answers) < 0.57


def _zh(colour, shape):
    return COLOURS_ZH[colour], SHAPES_ZH[shape]


def test_referring_expressions_and_grounded_objects():
    assert referring_expressions([RED_CIRCLE], [(1, 1, 21, 21)], "en") == [
        ReferringExpression("the red circle", (1, 1, 21, 21)),
        ReferringExpression("the large red circle", (1, 1, 21, 21)),
        ReferringExpression("the circle at the top left", (1, 1, 21, 21))]
    assert [r.expression for r in referring_expressions([BLUE_DIAMOND], [(26, 26, 38, 38)], "zh")] == \
        ["蓝色菱形", "小的蓝色菱形", "中间的菱形"]
    tasks = shapes_tasks([RED_CIRCLE, BLUE_DIAMOND], 64, "zh", 0, 0)
    assert tasks.objects == [GroundedObject("一个大的红色圆形", (1, 1, 21, 21)),
                             GroundedObject("一个小的蓝色菱形", (26, 26, 38, 38))]


def pixel_box(image, colour):
    rows, cols = np.nonzero((np.asarray(image) == colour).all(axis=2))
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def test_boxes_are_those_of_the_visible_pixels():
    # Two large shapes in neighbouring cells jittered towards each other overlap by 1 px; the later one
    # (a square) covers the earlier one's right column.
    left = placed("red", "square", "large", "top left", (1, 0))     # x in [2, 22)
    right = placed("blue", "square", "large", "top", (-1, 0))      # x in [21, 41)
    assert left.bbox[2] > right.bbox[0]
    image = render([left, right])
    boxes = visible_boxes([left, right], 64)
    assert boxes == [pixel_box(image, COLOURS["red"]), pixel_box(image, COLOURS["blue"])]
    assert boxes[0] == (2, 1, 21, 21) and boxes[1] == right.bbox
    # Without overlap the visible box is the nominal one, for every item of a dataset and canvas size.
    for size in (64, 128):
        data = ShapesDataset(seed=1, size=size)
        for index in range(60):
            item = data.item(index)
            assert visible_boxes(item.objects, size) == [pixel_box(item.image, COLOURS[o.colour])
                                                         for o in item.objects]


@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_question_type_appears_with_the_answers_the_spec_allows(language):
    data = ShapesDataset(seed=5, language=language)
    seen = {}
    for index in range(200):
        for qa in shapes_tasks(data.objects(index), 64, language, 5, index).questions:
            seen.setdefault(qa.kind, set()).add(qa.answer)
    assert set(seen) == {1, 2, 3, 4, 5, 6, 7}
    if language == "en":
        assert seen[4] == {"small", "large"} and seen[5] == {"one", "two"} and seen[6] == {"yes", "no"}
        assert "nothing" in seen[7] and "center" in seen[3]
    else:
        assert seen[4] == {"小", "大"} and seen[5] == {"一个", "两个"} and seen[6] == {"有", "没有"}
        assert "什么都没有" in seen[7] and "中间" in seen[3]
