"""scripts/task_examples.py: the four pictures, at the sizes their layout gives, and a missing checkpoint."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_utils.image_sources import open_dataset
from generation.outputs import read_png_metadata
from scripts import task_examples as te
from tests.generation_helpers import write_tiny_checkpoint
from utils.files import read_json

ROOT = Path(__file__).resolve().parent.parent
GRID = 8
SAMPLES, CANDIDATES = 2, 3


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> tuple[Path, int]:
    """The script run on a tiny checkpoint; returns the output folder and the model's image side."""
    folder = tmp_path_factory.mktemp("task_examples")
    checkpoint = write_tiny_checkpoint(folder, grid=GRID)
    te.main(["--load", str(checkpoint), "--output", str(folder / "out"), "--seed", "5", "--temperature", "0.5",
             "--samples", str(SAMPLES), "--candidates", str(CANDIDATES)])
    return folder / "out", GRID * read_json(folder / "vqvae" / "config.json")["downsample"]


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_each_picture_has_the_size_of_its_layout(pictures):
    out, side = pictures
    tile = te.DISPLAY_SCALE * side + 2 * te.FRAME
    line, gap = te.LINE_HEIGHT, te.GAP

    def across(count: int, width: int) -> int:
        return count * width + (count - 1) * gap

    def titled_rows(rows: int) -> int:           # header line, then per row: its title line and its tiles
        return line + rows * (gap + line + gap + tile)

    assert size_of(out / "text2image.png") == (across(2 * SAMPLES, tile), titled_rows(sum(te.TEXT2IMAGE_PROMPTS)))
    assert size_of(out / "super_resolution.png") == (across(te.SR_COLUMNS, tile),
                                                     titled_rows(sum(te.SUPER_RESOLUTION_IMAGES)))
    assert size_of(out / "post_selection.png") == (across(CANDIDATES, tile), line + gap + tile + gap + line)
    cell_height = tile + gap + 3 * te.CAPTION_LINES * line  # the true, the greedy and the reranked caption
    rows = -(-sum(te.CAPTIONED_IMAGES) // te.CAPTION_COLUMNS)
    assert size_of(out / "image2text.png") == (across(te.CAPTION_COLUMNS, te.CAPTION_CELL_TILES * tile),
                                               across(rows, cell_height))


def test_pictures_show_the_held_out_images_and_record_their_settings(pictures):
    out, side = pictures
    tile = te.DISPLAY_SCALE * side + 2 * te.FRAME
    captions, images = te.held_out(side, te.SUPER_RESOLUTION_IMAGES)
    assert len(captions) == sum(te.SUPER_RESOLUTION_IMAGES) and all(image.size == (side, side) for image in images)
    source = open_dataset("shapes", split="val", size=side, language="en")
    assert captions[0] == next(source.caption(i) for i in range(len(source))
                               if len(source.item(i).metadata["objects"]) == 1)
    with Image.open(out / "super_resolution.png") as picture:
        top = te.LINE_HEIGHT + te.GAP + te.LINE_HEIGHT + te.GAP     # column titles, then the first row's title
        left = (te.SR_COLUMNS - 1) * (tile + te.GAP)                 # the last column holds the original
        shown = picture.convert("RGB").crop((left, top, left + tile, top + tile))
    assert np.array_equal(np.asarray(shown), np.asarray(te.enlarge(images[0], tile)))
    metadata = read_png_metadata(out / "text2image.png")
    assert metadata["seed"] == 5 and metadata["cfg_scale"] == 1.5 and metadata["temperature"] == 0.5
    assert metadata["checkpoint"].endswith("gpt")


def test_a_missing_checkpoint_is_one_error_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "task_examples.py"), "--load",
                             str(tmp_path / "nothing"), "--output", str(tmp_path / "out")],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: model checkpoint not found: {tmp_path / 'nothing'}"]
    assert not (tmp_path / "out").exists()
