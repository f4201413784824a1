"""generation/figures.py: framed pixel-exact cells, readable Chinese labels, the chosen candidate marked,
and generate_samples.py's grid per prompt drawn with them."""
import logging

import numpy as np
import pytest
from PIL import Image

import generate_samples
from generation import figures
from generation.outputs import read_manifest
from tests.generation_helpers import write_tiny_checkpoint

CHINESE_PROMPT = "左上角有一个大的红色圆形"


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def random_image(side: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def shown(image: Image.Image, side: int, chosen: bool = False) -> np.ndarray:
    return pixels(figures.framed(figures.enlarge(image, side), chosen))


def crop(picture: Image.Image, left: int, top: int, size: int) -> np.ndarray:
    return pixels(picture.crop((left, top, left + size, top + size)))


@pytest.fixture
def fallback_font(monkeypatch):
    """figures.font() as on a machine without any CJK font."""
    monkeypatch.setattr(figures, "KNOWN_CJK_FONTS", ())
    monkeypatch.setattr(figures.shutil, "which", lambda name: None)
    figures.font.cache_clear()
    yield
    figures.font.cache_clear()


def test_enlargement_is_pixel_exact_and_never_resamples():
    image = random_image(8, 0)
    big = pixels(figures.enlarge(image, 32))
    assert np.array_equal(big[::4, ::4], pixels(image))
    for dy in range(4):
        for dx in range(4):
            assert np.array_equal(big[dy::4, dx::4], pixels(image)), "every pixel becomes a uniform 4x4 block"
    with pytest.raises(ValueError, match="pixel-exactly"):
        figures.enlarge(image, 20)
    assert [figures.display_side(s) for s in ([32, 64, 128], [64], [256, 512], [100])] == [128, 128, 512, 200]


def test_a_non_square_image_is_enlarged_exactly_and_centred_in_its_square():
    """A 16 x 8 image (a 2 x 1 code grid's shape) at side 32: 2x blocks, white bands above and below."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (8, 16, 3), dtype=np.uint8))
    square = pixels(figures.enlarge(image, 32))
    assert square.shape == (32, 32, 3)
    assert np.array_equal(square[8:24:2, ::2], pixels(image)) and np.array_equal(square[9:24:2, 1::2], pixels(image))
    assert (square[:8] == 255).all() and (square[24:] == 255).all()


def test_borders_separate_white_cells():
    side, columns = 64, 3
    white = [Image.new("RGB", (32, 32), "white") for _ in range(6)]
    picture = pixels(figures.grid([figures.Cell(image) for image in white], columns, side))
    tile, frame = figures.tile_side(side), figures.FRAME
    assert picture.shape == (2 * tile + figures.GAP, 3 * tile + 2 * figures.GAP, 3)
    grey, bg = np.array(figures.FRAME_COLOUR), np.array([255, 255, 255])
    for row in range(2):
        for column in range(columns):
            left, top = column * (tile + figures.GAP), row * (tile + figures.GAP)
            cell = picture[top:top + tile, left:left + tile]
            for edge in (cell[:frame], cell[-frame:], cell[:, :frame], cell[:, -frame:]):
                assert (edge == grey).all(), f"cell {row},{column}: the frame runs round the whole edge"
            assert (cell[frame:-frame, frame:-frame] == bg).all()
            if column < columns - 1:
                assert (picture[top:top + tile, left + tile:left + tile + figures.GAP] == bg).all()


def test_the_chosen_candidate_comes_first_marked_with_its_super_resolved_image_beside_it():
    images = [random_image(16, seed) for seed in range(4)]
    upscaled = random_image(32, 9)
    cells = figures.selection_cells(images, seeds=[10, 11, 12, 13], scores=[0.3, 0.1, 0.2, 0.9], chosen=2,
                                    upscaled=upscaled)
    assert [cell.image for cell in cells] == [images[2], upscaled, images[3], images[0], images[1]]
    assert [cell.chosen for cell in cells] == [True, False, False, False, False]
    assert cells[0].caption == ("seed 12: 0.20", "chosen")
    side = figures.display_side([16, 32])
    picture = figures.grid(cells, columns=5)
    tile = figures.tile_side(side)
    edges = []
    for index, cell in enumerate(cells):
        drawn = crop(picture, index * (tile + figures.GAP), 0, tile)
        assert np.array_equal(drawn, shown(cell.image, side, cell.chosen)), f"cell {index}"
        edges.append(drawn[0])
    assert all(np.array_equal(edges[1], edge) for edge in edges[2:]), "the other cells share one plain frame"
    assert not np.array_equal(edges[0], edges[1]), "the pick's frame stands out"


def test_chinese_text_wraps_between_characters_and_is_cut_with_dots():
    width = int(figures.font().getlength(CHINESE_PROMPT) / 2.5)
    lines = figures.wrap(CHINESE_PROMPT + CHINESE_PROMPT, width, lines=2)
    assert len(lines) == 2 and lines[1].endswith("...")
    assert all(figures.font().getlength(line) <= width for line in lines)
    assert CHINESE_PROMPT.startswith(lines[0])
    assert "".join(figures.wrap(CHINESE_PROMPT, width, lines=5)) == CHINESE_PROMPT


def test_chinese_labels_render_glyphs_not_boxes():
    if figures.find_cjk_font() is None:
        pytest.skip("no CJK font installed (make cjk-font)")
    red, circle, missing = (pixels(figures.text_block([text], 40)) for text in ("红", "圆", "\U000F0000"))
    assert (red < 128).any() and (circle < 128).any(), "the characters draw ink"
    assert not np.array_equal(red, circle), "two characters draw two different glyphs"
    assert not np.array_equal(red, missing) and not np.array_equal(circle, missing), "no missing-glyph box"


def test_without_a_cjk_font_labels_fall_back_with_one_warning(fallback_font, caplog):
    with caplog.at_level(logging.WARNING, logger="figures"):
        figures.text_block([CHINESE_PROMPT], 200)
        figures.text_block(["again"], 200)
    warnings = [r.getMessage() for r in caplog.records if r.name == "figures"]
    assert len(warnings) == 1 and figures.CJK_FONT_PACKAGE in warnings[0]
    # What the glyph test above guards against: PIL's own font draws every Chinese character as one box.
    assert np.array_equal(pixels(figures.text_block(["红"], 40)), pixels(figures.text_block(["圆"], 40)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_generate_samples_grid_has_the_prompt_and_seed_labelled_framed_images(checkpoint, tmp_path):
    generate_samples.main(["--load", str(checkpoint), "--prompt", CHINESE_PROMPT, "--batch-size", "2",
                           "--output-path", str(tmp_path), "--device", "cpu"])
    with Image.open(tmp_path / "0000_grid.png") as opened:
        grid = opened.convert("RGB")
    title_height = 2 * figures.LINE_HEIGHT
    title = grid.crop((0, 0, grid.width, title_height))
    assert np.array_equal(pixels(title), pixels(figures.text_block([CHINESE_PROMPT], grid.width, 2)))
    side = figures.display_side([64])
    tile = figures.tile_side(side)
    top = title_height + figures.GAP
    for j in range(2):
        with Image.open(tmp_path / f"0000_{j:03d}.png") as image:
            assert np.array_equal(crop(grid, j * (tile + figures.GAP), top, tile), shown(image, side))
        label = grid.crop((j * (tile + figures.GAP), top + tile + figures.GAP,
                           j * (tile + figures.GAP) + tile, top + tile + figures.GAP + figures.LINE_HEIGHT))
        assert np.array_equal(pixels(label), pixels(figures.text_block([f"seed {j}"], tile)))


def test_text2image_full_grids_mark_the_pick_beside_its_super_resolved_image(checkpoint, tmp_path):
    """generate_samples.py's grid per prompt, and the quick start's overview drawn from its manifest."""
    from scripts.quickstart import overview_grid

    out = tmp_path / "samples" / "text2image"   # where the quick start's text2image stage writes
    generate_samples.main(["--load", str(checkpoint), "--generation-task", "text2image-full", "--prompt",
                           "a red circle", "--batch-size", "3", "--output-path", str(out), "--device", "cpu"])
    best = next(r for r in read_manifest(out) if r["file"] == "0000_best_sr.png")
    side = figures.display_side([64, 128])
    tile = figures.tile_side(side)
    for picture, title_lines in ((out / "0000_grid.png", 2), (overview_grid(tmp_path), 1)):
        with Image.open(picture) as opened:
            grid = opened.convert("RGB")
        top = title_lines * figures.LINE_HEIGHT + figures.GAP
        with Image.open(out / best["source"]) as pick, Image.open(out / best["file"]) as upscaled:
            assert np.array_equal(crop(grid, 0, top, tile), shown(pick, side, chosen=True)), picture
            assert np.array_equal(crop(grid, tile + figures.GAP, top, tile), shown(upscaled, side)), picture
