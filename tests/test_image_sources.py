"""open_dataset: shapes splits, a folder of files with bad items, JSONL/TSV lists, and the skip report."""
import json

import numpy as np
import pytest
from PIL import Image

from data_utils import image_sources
from data_utils.image_sources import (
    EMPTY_CAPTION, EMPTY_FILE, IMAGE_TOO_SMALL, MALFORMED_LINE, MISSING_CAPTION, MISSING_IMAGE, UNREADABLE_IMAGE,
    SkipItem, SkippedItem, load_item, open_dataset, skip_report, stable_fraction,
)
from data_utils.shapes import parse_caption
from utils.errors import UserError


@pytest.fixture
def no_val_split(monkeypatch):
    """Every file in train, so that a test's handful of files is not split by chance."""
    monkeypatch.setattr(image_sources, "FILES_VAL_FRACTION", 0.0)


def write_image(path, size=(40, 30), colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def outcomes(source):
    """[(file name or list line, caption or the reason it was skipped)] in the source's order"""
    result = []
    for index in range(len(source)):
        loaded = load_item(source, index)
        outcome = loaded.reason if isinstance(loaded, SkippedItem) else loaded.caption
        result.append((loaded.source.split("/")[-1], outcome))
    return result


def test_shapes_splits_and_metadata():
    train = open_dataset("shapes", num_items=20, size=32)
    val = open_dataset("shapes", split="val", num_items=20, size=32)
    assert len(train) == 20 and len(open_dataset("shapes")) == 10_000
    assert len(open_dataset("shapes", split="val")) == 500
    item = train.item(3)
    assert item.image.size == (32, 32) and item.caption == train.caption(3) and item.source == "shapes:0:3"
    assert [o["colour"] for o in item.metadata["objects"]] == [o.colour for o in parse_caption(item.caption)]
    assert val.item(3).source == "shapes:11000033:3"  # the 6th val stream (k = 5) holds a held-out picture
    assert [train.caption(i) for i in range(20)] != [val.caption(i) for i in range(20)]
    assert open_dataset("shapes", language="zh").caption(0).startswith(tuple("左上右中下"))
    assert train.describe()["seed"] == 0 and val.describe()["seed"] == 1_000_003
    with pytest.raises(IndexError):
        train.item(20)


def test_shapes_val_pictures_never_appear_in_training():
    # Only 3,888 single-object pictures exist: 4,000 training items hold about 2,000 of them, so a split by
    # seed stream alone repeated training pictures in 44 of 200 val items (of 110 with one object).
    train = open_dataset("shapes", split="train", size=32, num_items=4000)
    val = open_dataset("shapes", split="val", size=32, num_items=200)

    def picture(item):
        return frozenset((obj["colour"], obj["shape"], tuple(obj["bbox"])) for obj in item.metadata["objects"])

    seen = {picture(train.item(index)) for index in range(len(train))}
    repeated = [index for index in range(len(val)) if picture(val.item(index)) in seen]
    assert not repeated
    assert sum(len(val.item(index).metadata["objects"]) == 1 for index in range(len(val))) > 60  # both kinds held out


def test_shapes_two_object_fraction_holds_in_every_stream_of_the_split():
    # A training set may hold more two-object pictures than shapes.md's half; the split by picture still holds.
    heavy = open_dataset("shapes", size=32, num_items=400, two_object_fraction=0.9)
    counts = [len(heavy.item(index).metadata["objects"]) for index in range(len(heavy))]
    assert 0.85 < counts.count(2) / len(counts) < 0.95
    assert heavy.describe()["two_object_fraction"] == 0.9
    only_two = open_dataset("shapes", split="val", size=32, num_items=50, two_object_fraction=1.0)
    assert all(len(only_two.objects(index)) == 2 for index in range(len(only_two)))  # the fallback streams too
    assert open_dataset("shapes", size=32, num_items=200).caption(7) == \
        open_dataset("shapes", size=32, num_items=200, two_object_fraction=0.5).caption(7)  # the default is the spec's
    with pytest.raises(UserError, match="two_object_fraction must lie in"):
        open_dataset("shapes", two_object_fraction=1.5)


def test_folder_loads_good_items_and_skips_bad_ones(tmp_path, no_val_split):
    write_image(tmp_path / "good.png")
    (tmp_path / "good.txt").write_text("  a red\nbox \n", encoding="utf-8")
    write_image(tmp_path / "deeper" / "nested.JPG", size=(20, 50), colour=(10, 200, 10))
    (tmp_path / "deeper" / "nested.txt").write_text("green", encoding="utf-8")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp_path / "corrupt.txt").write_text("broken", encoding="utf-8")
    write_image(tmp_path / "tiny.png", size=(8, 40))
    (tmp_path / "tiny.txt").write_text("too small", encoding="utf-8")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "empty.txt").write_text("nothing", encoding="utf-8")
    write_image(tmp_path / "uncaptioned.webp")
    write_image(tmp_path / "blank.bmp")
    (tmp_path / "blank.txt").write_text(" \n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not an image", encoding="utf-8")
    write_image(tmp_path / ".hidden" / "x.png")

    source = open_dataset(str(tmp_path), size=24)
    assert len(source) == 7
    assert dict(outcomes(source)) == {
        "good.png": "a red box", "nested.JPG": "green", "corrupt.jpg": UNREADABLE_IMAGE, "empty.png": EMPTY_FILE,
        "tiny.png": IMAGE_TOO_SMALL, "uncaptioned.webp": MISSING_CAPTION, "blank.bmp": EMPTY_CAPTION,
    }
    loaded = [load_item(source, i) for i in range(len(source))]
    nested = next(item for item in loaded if getattr(item, "caption", None) == "green")
    assert nested.image.size == (24, 24) and nested.image.mode == "RGB"
    assert np.abs(np.asarray(nested.image).astype(int) - (10, 200, 10)).max() <= 2
    uncaptioned = next(item.index for item in loaded if item.source == "uncaptioned.webp")
    with pytest.raises(SkipItem) as skip:
        source.caption(uncaptioned)
    assert skip.value.reason == MISSING_CAPTION
    assert open_dataset(str(tmp_path), min_side=4, num_items=6).describe()["min_side"] == 4


def test_center_crop_keeps_the_middle(tmp_path, no_val_split):
    image = np.zeros((20, 60, 3), dtype=np.uint8)
    image[:, :20] = (255, 0, 0)
    image[:, 20:30] = (0, 255, 0)
    image[:, 30:40] = (0, 0, 255)
    image[:, 40:] = (255, 0, 0)
    Image.fromarray(image).save(tmp_path / "wide.png")
    (tmp_path / "wide.txt").write_text("stripes", encoding="utf-8")
    out = np.asarray(open_dataset(str(tmp_path), size=40).item(0).image).astype(int)
    assert np.abs(out[20, 5] - (0, 255, 0)).max() < 10 and np.abs(out[20, 35] - (0, 0, 255)).max() < 10


def test_jsonl_and_tsv_lists(tmp_path, no_val_split):
    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "images" / "b.png")
    absolute = tmp_path / "elsewhere" / "c.png"
    write_image(absolute)
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text("\n".join([
        json.dumps({"image": "images/a.png", "caption": "first"}),
        "",
        json.dumps({"image": str(absolute), "caption": "third"}),
        "{not json",
        json.dumps({"image": "images/b.png"}),
        json.dumps({"image": "images/missing.png", "caption": "gone"}),
        json.dumps({"image": "images/b.png", "caption": "   "}),
    ]) + "\n", encoding="utf-8")
    source = open_dataset(str(jsonl), size=16)
    assert outcomes(source) == [
        ("a.png", "first"), ("c.png", "third"), ("list.jsonl:4", MALFORMED_LINE), ("b.png", MISSING_CAPTION),
        ("missing.png", MISSING_IMAGE), ("b.png", EMPTY_CAPTION),
    ]
    assert load_item(source, 2).detail.startswith("invalid JSON")
    tsv = tmp_path / "list.tsv"
    tsv.write_text("images/a.png\tfirst\timage\nno tab here\nimages/b.png\tsecond\n", encoding="utf-8")
    source = open_dataset(str(tsv), size=16)
    assert outcomes(source) == [("a.png", "first image"), ("list.tsv:2", MALFORMED_LINE), ("b.png", "second")]
    assert source.describe()["path"] == str(tsv.resolve())


def test_file_splits_are_stable_hashes_of_the_path(tmp_path):
    for k in range(300):  # the scan reads names only, so empty files do
        (tmp_path / f"img_{k:03d}.png").touch()
    train = open_dataset(str(tmp_path))
    val = open_dataset(str(tmp_path), split="val")
    train_keys = {e.key for e in train._entries}
    val_keys = {e.key for e in val._entries}
    assert not train_keys & val_keys and len(train_keys | val_keys) == 300
    assert val_keys == {f"img_{k:03d}.png" for k in range(300) if stable_fraction(f"img_{k:03d}.png") < 0.02}
    assert 0 < len(val_keys) < 20
    assert stable_fraction("img_000.png") == stable_fraction("img_000.png") != stable_fraction("img_001.png")


def test_bad_dataset_arguments_are_user_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "data.csv").write_text("x", encoding="utf-8")
    for name, kwargs in [("nonexistent_dataset", {}), (str(tmp_path / "missing"), {}), (str(tmp_path / "empty"), {}),
                         (str(tmp_path / "data.csv"), {}), ("shapes", {"split": "test"}), ("shapes", {"size": 48}),
                         ("shapes", {"num_items": 0})]:
        with pytest.raises(UserError):
            open_dataset(name, **kwargs)


def test_skip_report_counts_reasons_and_lists_items():
    skips = [SkippedItem(0, "a.jpg", UNREADABLE_IMAGE, "cannot identify"), SkippedItem(4, "b.png", MISSING_CAPTION),
             SkippedItem(7, "c.png", MISSING_CAPTION)]
    report = skip_report(skips, max_listed=2)
    assert report.splitlines()[0] == "3 item(s) skipped:"
    assert "2  missing caption" in report and "1  unreadable image" in report
    assert "#0 a.jpg: unreadable image (cannot identify)" in report and "... and 1 more" in report
    assert skip_report([]) == "no items skipped"
    assert skips[0].to_dict() == {"index": 0, "source": "a.jpg", "reason": UNREADABLE_IMAGE,
                                  "detail": "cannot identify"}
