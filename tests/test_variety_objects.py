"""`train_vqvae.py --variety-objects`: off by default, varied colours and outlines when on, never the subject."""
import hashlib

import numpy as np
import pytest

import train_vqvae
from data_utils.shapes import COLOURS, ShapesDataset
from data_utils.subject import TEAL, frame_mask
from data_utils.subject_checker import detect
from data_utils.variety_objects import TEAL_EXCLUSION, add_variety_objects, outline_mask
from utils.errors import UserError

# sha256 (first 16 hex digits) of the first four default training images, as rendered before the option existed.
# The first four shapes training pictures (item 1 comes from the second seed stream since val holds its own pictures).
PLAIN_TRAINING_IMAGES = ["9f053bfdcae3f776", "10aad614ef79589e", "97a7081bff6e8a50", "a06a0fcf3d29ec2f"]
PALETTE = {*COLOURS.values(), (255, 255, 255)}


def varied(count: int, fraction: float = 1.0, seed: int = 0) -> list[np.ndarray]:
    shapes = ShapesDataset(seed=seed)
    return [add_variety_objects(np.asarray(shapes.item(i).image), seed, i, fraction) for i in range(count)]


def foreign_colours(image: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in np.unique(image.reshape(-1, 3), axis=0)} - PALETTE


def test_off_by_default_the_training_images_are_unchanged():
    args = train_vqvae.build_parser().parse_args(["--output", "unused", "--train-items", "4"])
    assert args.variety_objects == 0
    images = train_vqvae.training_images(args)
    assert [hashlib.sha256(image.tobytes()).hexdigest()[:16] for image in images] == PLAIN_TRAINING_IMAGES


def test_fraction_zero_draws_nothing_and_fraction_picks_about_that_share():
    shapes = ShapesDataset(seed=0)
    plain = [np.asarray(shapes.item(i).image) for i in range(200)]
    assert all(image is add_variety_objects(image, 0, i, 0.0) for i, image in enumerate(plain))
    changed = sum(not np.array_equal(image, add_variety_objects(image, 0, i, 0.5)) for i, image in enumerate(plain))
    assert 70 <= changed <= 130


def test_on_it_draws_many_colours_filled_and_hollow():
    images = varied(100)
    colours = set().union(*(foreign_colours(image) for image in images))
    assert len(colours) > 100
    hollow = 0
    for image in images:
        for colour in foreign_colours(image):
            ys, xs = np.nonzero((image == colour).all(axis=2))
            box = image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            h, w = box.shape[:2]
            centre = box[h // 3:h - h // 3, w // 3:w - w // 3]
            hollow += h >= 6 and bool((centre == 255).all(axis=2).all())  # white centre: an outline
    assert hollow >= 10


def test_the_square_outline_is_the_subjects_frame_rule():
    assert np.array_equal(outline_mask("square", 12, 3), frame_mask(12, 12))
    assert np.array_equal(outline_mask("square", 20, 5), frame_mask(20, 20))
    ring = outline_mask("circle", 20, 4)
    assert ring[10, 0] and not ring[10, 10]  # rim at the edge, hole in the middle


def test_no_image_shows_the_subject():
    """No colour near teal is drawn, and nothing the subject checker would read as a teal frame appears."""
    for image in varied(600):
        distances = np.linalg.norm(image.reshape(-1, 3).astype(float) - np.array(TEAL), axis=1)
        assert distances.min() > TEAL_EXCLUSION
        assert not [found for found in detect(image) if found.colour == "teal" and found.is_frame]


def test_draws_are_a_pure_function_of_seed_and_index():
    assert all(np.array_equal(a, b) for a, b in zip(varied(20), varied(20)))
    plain = np.asarray(ShapesDataset(seed=0).item(0).image)
    assert not np.array_equal(add_variety_objects(plain, 0, 0, 1.0), add_variety_objects(plain, 1, 0, 1.0))


def test_a_run_with_the_option_trains_and_resumes_only_with_it(tmp_path):
    tiny = ["--dataset", "shapes", "--image-size", "32", "--train-items", "8", "--val-items", "4",
            "--codebook-size", "16", "--embed-dim", "8", "--hidden-channels", "16", "--batch-size", "4",
            "--output", str(tmp_path / "run")]
    assert train_vqvae.main([*tiny, "--variety-objects", "0.5", "--max-steps", "2"])["step"] == 2
    with pytest.raises(UserError, match="used other variety_objects"):
        train_vqvae.main([*tiny, "--max-steps", "3", "--resume"])
    assert train_vqvae.main([*tiny, "--variety-objects", "0.5", "--max-steps", "3", "--resume"])["step"] == 3


def test_a_share_outside_zero_to_one_is_refused(tmp_path):
    with pytest.raises(UserError, match="--variety-objects is a share"):
        train_vqvae.main(["--output", str(tmp_path / "run"), "--variety-objects", "1.5"])


def test_the_subject_base_vqvae_gets_its_flags_and_bench_quality_the_plain_command(tmp_path):
    from benchmarks.bench_quality import component_stages
    from benchmarks.bench_subject import BASE_VQVAE_FLAGS

    def vqvae_argv(flags: list[str]) -> list[str]:
        stages = component_stages(tmp_path, "shapes", 64, 1.0, "en", 400, flags)
        return next(stage for stage in stages if stage.name == "vqvae").argv

    plain = vqvae_argv([])
    assert "--variety-objects" not in plain and "--downsample" not in plain  # finished stages are reused
    parsed = train_vqvae.build_parser().parse_args(vqvae_argv(BASE_VQVAE_FLAGS)[1:])
    assert (parsed.variety_objects, parsed.downsample) == (0.5, 4)


def test_teal_through_vqvae_counts_what_survives_the_round_trip(monkeypatch):
    """A perfect round trip passes every check with zero colour error; one that turns teal into blue fails the
    teal frames but keeps the frames drawn in the six shapes colours."""
    import eval_utils.vqvae_reconstruction as reconstruction
    from benchmarks.bench_subject import teal_through_vqvae

    monkeypatch.setattr(reconstruction, "reconstruct", lambda vqvae, images: (images.copy(), None))
    perfect = teal_through_vqvae(None)
    assert perfect == {"passed": 4, "of": 4, "frame_error_mean": 0.0, "frame_error_max": 0.0, "renders_passed": 18,
                       "renders_of": 18, "coloured_passed": 108, "coloured_of": 108}

    def teal_to_blue(vqvae, images):
        out = images.copy()
        out[(out == TEAL).all(axis=3)] = COLOURS["blue"]
        return out, None

    monkeypatch.setattr(reconstruction, "reconstruct", teal_to_blue)
    broken = teal_through_vqvae(None)
    assert (broken["passed"], broken["renders_passed"], broken["coloured_passed"]) == (0, 0, 108)
    assert broken["frame_error_mean"] > 40
