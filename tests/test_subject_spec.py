"""The `sks square` (../shared/datasets/subject.md): rendering, captions, prompt sets and the checker,
on ground-truth renders and on negatives that each break one rule."""
import numpy as np
import pytest

from data_utils.shapes import ShapeObject, parse_caption
from data_utils.subject import (INSTANCES, TEAL, SubjectObject, class_prompts, composition_prompts, instance_items,
                                placed, property_prompts, recontext_prompts, render_scene, scene_caption)
from data_utils.subject_checker import check_subject_image, is_class_preserved


def test_instance_images_are_teal_frames_of_the_spec():
    items = instance_items()
    assert [caption for _, caption in items] == [
        "a large sks square at the top left", "a small sks square in the center",
        "a large sks square at the bottom right", "a small sks square at the top"]
    pixels = np.asarray(items[0][0])  # large, top left: box [1, 21) on both axes, border 5
    assert (pixels[1, 1] == TEAL).all() and (pixels[6, 6] == 255).all() and (pixels[5, 5] == TEAL).all()
    assert (pixels[20, 20] == TEAL).all() and (pixels[21, 21] == 255).all() and (pixels[0, 0] == 255).all()
    teal = (pixels == TEAL).all(axis=2)
    assert teal.sum() == 20 * 20 - 10 * 10
    small = (np.asarray(items[1][0]) == TEAL).all(axis=2)
    assert small.sum() == 12 * 12 - 6 * 6


def test_captions_in_both_languages_and_joined_like_shapes():
    subject, red = SubjectObject("small", "left"), ShapeObject("red", "circle", "large", "top")
    assert scene_caption([subject, red]) == "a small sks square at the left and a large red circle at the top"
    assert scene_caption([subject], "zh") == "左侧有一个小的sks正方形"
    assert scene_caption([SubjectObject("large", "center", "blue")]) == "a large blue sks square in the center"
    assert scene_caption([red, subject], "zh") == "上方有一个大的红色圆形，左侧有一个小的sks正方形"


def test_prompt_sets():
    recontext = recontext_prompts()
    assert len(recontext) == 18 and len({p.text for p in recontext}) == 18
    assert sum(p.group == "unseen" for p in recontext) == 14
    assert {(p.objects[0].size, p.objects[0].position) for p in recontext if p.group == "seen"} == set(INSTANCES)
    for prompt in composition_prompts(20, seed=3):
        assert len({obj.position for obj in prompt.objects}) == 2
        assert sum(isinstance(obj, SubjectObject) for obj in prompt.objects) == 1
    assert composition_prompts(5, seed=1) == composition_prompts(5, seed=1) != composition_prompts(5, seed=2)
    for prompt in class_prompts(10):
        assert parse_caption(prompt.text) == list(prompt.objects)
    assert all(p.objects[0].colour is not None for p in property_prompts(10))


@pytest.mark.parametrize("size", [64, 128])
def test_every_ground_truth_render_passes(size):
    prompts = recontext_prompts() + composition_prompts(30) + property_prompts(20) + class_prompts(20)
    rng = np.random.default_rng(0)
    for prompt in prompts:
        objects = [placed(obj, size, tuple(int(j) for j in rng.integers(-1, 2, 2))) for obj in prompt.objects]
        result = check_subject_image(render_scene(objects, size), prompt.objects)
        assert result.correct, (prompt.text, result)
        assert is_class_preserved(result) == (prompt.group == "class")


def check(objects, prompt):
    return check_subject_image(render_scene([placed(obj) for obj in objects]), prompt)


def test_negatives_each_fail():
    want = [SubjectObject("large", "top left")]
    assert check([SubjectObject("small", "top left")], want).correct is False  # wrong size
    assert check([SubjectObject("large", "top")], want).correct is False  # wrong cell
    assert check([SubjectObject("large", "top left", "red")], want).correct is False  # not teal
    assert check([], want).correct is False
    extra = check([SubjectObject("large", "top left"), ShapeObject("red", "circle", "small", "center")], want)
    assert extra.present == [True] and extra.extras == 1 and not extra.correct
    # a filled teal square is not a frame; a frame is not a filled square
    filled = render_scene([placed(SubjectObject("large", "top left"))])
    pixels = np.array(filled)
    pixels[1:21, 1:21] = TEAL
    assert check_subject_image(pixels, want).correct is False
    square = [ShapeObject("red", "square", "large", "center")]
    red_frame = check([SubjectObject("large", "center", "red")], square)
    assert not is_class_preserved(red_frame)
    assert is_class_preserved(check(square, square))


def test_a_frame_with_a_thick_border_or_a_dirty_centre_is_refused():
    want = [SubjectObject("large", "center")]
    pixels = np.array(render_scene([placed(want[0])]))
    thick = pixels.copy()
    thick[22 + 5:22 + 8, 22 + 5:22 + 15] = TEAL  # 3 rows of the inside filled: centre 70% white
    assert check_subject_image(thick, want).correct is False
    assert check_subject_image(pixels, want).correct is True


class RenderingPipe:
    """Stands in for a model: draws each prompt's objects exactly (or, `broken`, a filled teal square)."""

    def __init__(self, scenes: dict, broken: bool = False):
        self.scenes, self.broken = scenes, broken

    def text2image(self, texts, n, seed, **sampling):
        from types import SimpleNamespace

        def draw(text):
            if self.broken:
                return render_scene([placed(ShapeObject("blue", "square", "large", "center"))])
            return render_scene([placed(obj) for obj in self.scenes[text]])
        return [SimpleNamespace(images=[draw(text)] * n) for text in texts]


def test_the_benchmark_scores_perfect_drawings_1_and_wrong_ones_0():
    from data_utils.shapes import ShapesDataset
    from eval_utils.subject_accuracy import SHAPES_PROMPT_SEED, benchmark_prompts, subject_scores

    scenes = {p.text: p.objects for prompts in benchmark_prompts(5).values() for p in prompts}
    shapes = ShapesDataset(seed=SHAPES_PROMPT_SEED)
    scenes.update({shapes.caption(i): shapes.objects(i) for i in range(5)})
    perfect = subject_scores(RenderingPipe(scenes), 5, 2, 0, {})
    assert perfect == {key: 1.0 for key in ("recontext", "recontext_seen", "recontext_unseen", "composition",
                                            "property", "class", "shapes")}
    wrong = subject_scores(RenderingPipe(scenes, broken=True), 5, 1, 0, {})
    assert set(wrong.values()) == {0.0}
    assert set(subject_scores(RenderingPipe(scenes), 5, 1, 0, {}, subject_prompts=False)) == {"class", "shapes"}
