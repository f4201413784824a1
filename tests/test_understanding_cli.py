"""generate_samples.py's vqa, grounded-caption and grounding tasks on a tiny checkpoint with location tokens:
manifest records, drawn PNGs, the flag audit, and loading a checkpoint's location grid from its metadata."""
import json

import pytest
from PIL import Image

import generate_samples
from generation.loading import load_components
from generation.outputs import read_png_metadata
from tests.generation_helpers import CAPTIONS, write_located_checkpoint
from utils.errors import UserError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_located_checkpoint(tmp_path_factory.mktemp("ckpt"), CAPTIONS * 20, vocab_size=300)


def inputs(folder):
    folder.mkdir()
    Image.new("RGB", (64, 64), (220, 40, 40)).save(folder / "a.png")
    Image.new("RGB", (96, 64), (40, 80, 220)).save(folder / "b.png")
    return folder


def run(*argv):
    generate_samples.main([str(a) for a in argv])


def records(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_the_checkpoint_knows_its_location_grid(checkpoint):
    parts = load_components(checkpoint)
    assert parts.tokenizer.location_bins == 16 and parts.model.config.vocab_size == parts.tokenizer.vocab_size


def test_vqa_from_a_question_and_from_a_list(checkpoint, tmp_path):
    images = inputs(tmp_path / "in")
    out = tmp_path / "out"
    run("--load", checkpoint, "--generation-task", "vqa", "--question", "what colour is the circle?",
        "--input-images", images, "--output-path", out)
    got = records(out)
    assert [(r["task"], r["input"], r["question"]) for r in got] == [
        ("vqa", str(images / "a.png"), "what colour is the circle?"), ("vqa", str(images / "b.png"),
                                                                       "what colour is the circle?")]
    assert all(isinstance(r["answer"], str) for r in got)
    (images / "corrupt.png").write_bytes(b"not a png")
    (tmp_path / "questions.txt").write_text("in/b.png\twhere is it?\nin/corrupt.png\twhat?\n")
    out = tmp_path / "out2"
    run("--load", checkpoint, "--generation-task", "vqa", "--input-source", tmp_path / "questions.txt",
        "--output-path", out)
    assert [(r["input"], r["question"]) for r in records(out)] == [(str(tmp_path / "in" / "b.png"), "where is it?")]
    assert "corrupt.png" in (out / "skipped.txt").read_text()
    (tmp_path / "bad.txt").write_text("in/b.png where is it?\n")
    with pytest.raises(UserError, match="bad.txt:1: expected IMAGE<TAB>QUESTION"):
        run("--load", checkpoint, "--generation-task", "vqa", "--input-source", tmp_path / "bad.txt")


def test_grounded_caption_and_grounding_write_records_and_drawn_pngs(checkpoint, tmp_path):
    images = inputs(tmp_path / "in")
    out = tmp_path / "out"
    run("--load", checkpoint, "--generation-task", "grounded-caption", "--input-images", images, "--output-path", out)
    for record, size in zip(records(out), [(64, 64), (96, 64)]):
        assert set(record) >= {"file", "input", "caption", "objects"}
        for obj in record["objects"]:
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1] and obj["phrase"]
        png = Image.open(out / record["file"])
        assert png.width % size[0] == 0 and png.width // size[0] == png.height // size[1]  # enlarged, pixel-exact
        assert read_png_metadata(out / record["file"])["caption"] == record["caption"]
    out = tmp_path / "grounding"
    run("--load", checkpoint, "--generation-task", "grounding", "--prompt", "the red circle", "--input-images",
        images, "--output-path", out)
    got = records(out)
    assert [r["prompt"] for r in got] == ["the red circle"] * 2
    for record, size in zip(got, [(64, 64), (96, 64)]):
        x0, y0, x1, y1 = record["box"]  # two location tokens always decode to a box
        assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]
        assert (out / record["file"]).is_file()


def test_flags_the_understanding_tasks_do_not_read_are_refused(checkpoint, tmp_path):
    images = inputs(tmp_path / "in")
    with pytest.raises(UserError, match="--top-k is not used"):
        run("--load", checkpoint, "--generation-task", "vqa", "--question", "q?", "--input-images", images,
            "--top-k", "5")
    with pytest.raises(UserError, match="--question is not used"):
        run("--load", checkpoint, "--generation-task", "grounding", "--prompt", "x", "--question", "q?",
            "--input-images", images)
    with pytest.raises(UserError, match="exactly one of the two"):
        run("--load", checkpoint, "--generation-task", "vqa", "--input-images", images)
    with pytest.raises(UserError, match="--prompt is not used"):
        run("--load", checkpoint, "--generation-task", "grounded-caption", "--prompt", "x", "--input-images", images)
    with pytest.raises(UserError, match="exactly one text"):
        run("--load", checkpoint, "--generation-task", "grounding", "--input-images", images)
