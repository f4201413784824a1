"""Placement augmentation (finetune/placements.py): the subject cut out of the four instance images and
placed elsewhere is exactly subject.md's render of the same scene, and its caption is the spec's."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_utils.subject import SubjectObject, frame_mask, instance_items, render_scene, scene_caption
from data_utils.subject_checker import check_subject_image
from finetune.data import CaptionedImages
from finetune.placements import cut_out, draw_placement, placement_images
from utils.errors import UserError


def instances(language: str = "en") -> CaptionedImages:
    items = instance_items(language=language)
    return CaptionedImages([image for image, _ in items], [caption for _, caption in items],
                           [f"{index}.png" for index in range(len(items))])


def test_nearest_neighbour_scaling_turns_one_frame_size_into_the_other():
    large, small = cut_out(instances().images[0], "large"), cut_out(instances().images[1], "small")
    assert large.mask.shape == (20, 20) and small.mask.shape == (12, 12)
    assert np.array_equal(large.mask, frame_mask(20, 20)) and np.array_equal(small.mask, frame_mask(12, 12))
    assert np.array_equal(large.scaled(12).mask, frame_mask(12, 12))  # border 5 px -> 3 px
    assert np.array_equal(small.scaled(20).mask, frame_mask(20, 20))  # border 3 px -> 5 px


@pytest.mark.parametrize("canvas", [64, 128])
def test_every_placement_is_the_spec_render_of_its_scene_with_the_spec_caption(canvas):
    count = 60
    both = CaptionedImages(instances().images, instances().captions[:2] + instances("zh").captions[2:],
                           instances().names)
    made = placement_images(both, count, "sks", "square", seed=3, canvas=canvas)
    placements = [draw_placement(3, index, 4, ("en", "zh"), canvas) for index in range(count)]
    assert {len(p.objects) for p in placements} == {1, 2} and {p.language for p in placements} == {"en", "zh"}
    assert {o.position for p in placements for o in p.objects if isinstance(o, SubjectObject)} >= {"top right", "left"}
    for image, caption, placement in zip(made.images, made.captions, placements):
        assert np.array_equal(np.asarray(image), np.asarray(render_scene(placement.objects, canvas)))
        assert caption == scene_caption(placement.objects, placement.language)
        assert check_subject_image(image, [o.spec() for o in placement.objects]).correct
    again = placement_images(both, count, "sks", "square", seed=3, canvas=canvas)
    assert again.captions == made.captions  # a pure function of (seed, index): a resumed run sees the same
    # captions in the instance captions' languages only: a base trained on English cannot read Chinese
    english = placement_images(instances(), 20, "zwx", "square", seed=3)
    assert all(caption.isascii() and caption.count("zwx") == 1 for caption in english.captions)


def test_blank_images_and_class_nouns_outside_the_grammar_are_refused():
    blank = CaptionedImages([Image.new("RGB", (64, 64), "white")], ["a sks square"], ["blank.png"])
    with pytest.raises(UserError, match="blank.png holds nothing but white background"):
        placement_images(blank, 2, "sks", "square", seed=0)
    with pytest.raises(UserError, match="no 'dog'"):
        placement_images(instances(), 2, "sks", "dog", seed=0)
