"""scripts/task_examples.py: the pictures hold the images the pipeline makes, in the order it ranks them
(the pick marked), and a missing checkpoint is one error line."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_utils.image_sources import open_dataset
from generation import figures
from generation.outputs import read_png_metadata
from generation.pipeline import Pipeline
from scripts import task_examples as te
from tests.generation_helpers import write_tiny_checkpoint
from utils.files import read_json

ROOT = Path(__file__).resolve().parent.parent
GRID = 8
SAMPLES, CANDIDATES = 2, 3


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> tuple[Path, int, Path]:
    """The script run on a tiny checkpoint; returns the output folder, the model's image side and the checkpoint."""
    folder = tmp_path_factory.mktemp("task_examples")
    checkpoint = write_tiny_checkpoint(folder, grid=GRID)
    te.main(["--load", str(checkpoint), "--output", str(folder / "out"), "--seed", "5", "--temperature", "1.25",
             "--samples", str(SAMPLES), "--candidates", str(CANDIDATES)])
    return folder / "out", GRID * read_json(folder / "vqvae" / "config.json")["downsample"], checkpoint


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def tile_at(path: Path, left: int, top: int, tile: int) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB").crop((left, top, left + tile, top + tile)))


def layout(side: int) -> tuple[int, int, int, int, int]:
    """The side images are shown at, the framed tile's width, a text line, the gap between cells and
    the gap between titled rows."""
    display = te.shown_side(side)
    return display, figures.tile_side(display), figures.LINE_HEIGHT, figures.GAP, figures.ROW_GAP


def shown(image: Image.Image, display: int, chosen: bool = False) -> np.ndarray:
    return np.asarray(figures.framed(figures.enlarge(image, display), chosen))


def test_text2image_cells_hold_the_pipelines_images_without_and_with_guidance(pictures):
    out, side, checkpoint = pictures
    display, tile, line, gap, row_gap = layout(side)
    pipe = Pipeline.from_checkpoint(checkpoint, device="cpu")
    prompts = te.held_out(side, te.TEXT2IMAGE_PROMPTS)[0]
    plain = pipe.text2image(prompts, n=SAMPLES, seed=5, temperature=1.25)
    guided = pipe.text2image(prompts, n=SAMPLES, seed=5, cfg_scale=1.5, temperature=1.25)
    differ = 0
    for row, (a, b) in enumerate(zip(plain, guided)):
        top = line + row_gap + row * (line + gap + tile + row_gap) + line + gap   # column titles, each row's title
        for j in range(SAMPLES):
            plain_left, guided_left = j * (tile + gap), (SAMPLES + j) * (tile + gap)
            assert np.array_equal(tile_at(out / "text2image.png", plain_left, top, tile), shown(a.images[j], display))
            assert np.array_equal(tile_at(out / "text2image.png", guided_left, top, tile), shown(b.images[j], display))
            differ += not np.array_equal(np.asarray(a.images[j]), np.asarray(b.images[j]))
    assert differ, "the guided half must show other images than the unguided half"


def test_post_selection_cells_hold_the_candidates_best_first(pictures):
    out, side, checkpoint = pictures
    display, tile, line, gap, _ = layout(side)
    pipe = Pipeline.from_checkpoint(checkpoint, device="cpu")
    prompt = te.held_out(side, te.POST_SELECTION_PROMPT)[0][0]
    result = pipe.text2image(prompt, n=CANDIDATES, seed=5, cfg_scale=1.5, temperature=1.25)[0]
    scores = pipe.rerank_codes(prompt, result.codes).scores.tolist()
    best_first = sorted(range(CANDIDATES), key=lambda i: -scores[i])
    distinct = {np.asarray(image).tobytes() for image in result.images}
    assert len(distinct) == CANDIDATES, "the test needs distinct candidates"
    for rank, index in enumerate(best_first):
        cell = tile_at(out / "post_selection.png", rank * (tile + gap), line + gap, tile)
        assert np.array_equal(cell, shown(result.images[index], display, chosen=rank == 0)), f"rank {rank + 1}"


def test_pictures_show_the_held_out_images_and_record_their_settings(pictures):
    out, side, _ = pictures
    display, tile, line, gap, row_gap = layout(side)
    captions, images = te.held_out(side, te.SUPER_RESOLUTION_IMAGES)
    assert len(captions) == sum(te.SUPER_RESOLUTION_IMAGES) and all(image.size == (side, side) for image in images)
    source = open_dataset("shapes", split="val", size=side, language="en")
    assert captions[0] == next(source.caption(i) for i in range(len(source))
                               if len(source.item(i).metadata["objects"]) == 1)
    with Image.open(out / "super_resolution.png") as picture:
        top = line + row_gap + line + gap                 # column titles, then the first row's title
        left = (te.SR_COLUMNS - 1) * (tile + gap)        # the last column holds the original
        drawn = picture.convert("RGB").crop((left, top, left + tile, top + tile))
    assert np.array_equal(np.asarray(drawn), shown(images[0], display))
    metadata = read_png_metadata(out / "text2image.png")
    assert metadata["seed"] == 5 and metadata["cfg_scale"] == 1.5 and metadata["temperature"] == 1.25
    assert metadata["checkpoint"].endswith("gpt")


def test_a_missing_checkpoint_is_one_error_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "task_examples.py"), "--load",
                             str(tmp_path / "nothing"), "--output", str(tmp_path / "out")],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: model checkpoint not found: {tmp_path / 'nothing'}"]
    assert not (tmp_path / "out").exists()
