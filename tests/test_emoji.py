"""The emoji cache: candidates and captions, glyph rendering, the cache file, and the stable val split.

Rendering needs the Noto Color Emoji font (`make emoji-font`); those tests skip without it. To stay fast
they render a fixed sample of ~80 candidates instead of all ~3,800.
"""
import numpy as np
import pytest
from PIL import ImageFont

from data_utils import emoji_data
from data_utils.emoji_data import (
    BITMAP_PIXEL_SIZE, build_emoji_cache, clean_emoji_name, emoji_candidates, find_emoji_font, load_emoji, render_glyph,
)
from data_utils.image_sources import EMOJI_VAL_FRACTION, open_dataset, stable_fraction
from utils.errors import UserError


def font_or_skip():
    try:
        return find_emoji_font()
    except UserError as err:
        pytest.skip(f"emoji font absent ({err})")


@pytest.fixture
def sample_candidates(monkeypatch):
    """Every 50th candidate, plus two sequences that must be dropped: not one glyph, and no glyph."""
    sample = emoji_candidates()[::50] + [("\U0001F600\U0001F600", "two grinning faces"), ("a", "latin small letter a")]
    monkeypatch.setattr(emoji_data, "emoji_candidates", lambda: sample)
    return sample


def test_candidates_and_captions():
    candidates = emoji_candidates()
    assert 3_700 < len(candidates) < 4_300
    sequences = [sequence for sequence, _ in candidates]
    assert len(set(sequences)) == len(sequences) and sequences == sorted(sequences)
    captions = dict(candidates)
    assert captions["\U0001F600"] == "grinning face"
    assert captions["\U0001F469\u200D\U0001F4BB"] == "woman technologist"
    assert all(caption and caption == caption.lower() and "_" not in caption and not caption.startswith(":")
               for caption in captions.values())
    assert not any(len(s) == 2 and s[1] == "\ufe0f" for s in sequences)
    assert clean_emoji_name(":flag_Côte_d’Ivoire:") == "flag côte d’ivoire"


def test_render_glyph_drops_what_is_not_one_glyph():
    font = ImageFont.truetype(str(font_or_skip()), size=BITMAP_PIXEL_SIZE)
    width = font.getbbox("\U0001F600")[2]
    glyph = render_glyph("\U0001F600", font, width)
    assert glyph is not None and glyph.mode == "RGBA" and 0.8 * width <= glyph.width <= width
    assert render_glyph("\U0001F600\U0001F600", font, width) is None
    assert render_glyph("a", font, width) is None


def test_cache_builds_loads_and_splits(tmp_path, monkeypatch, sample_candidates):
    font_or_skip()
    built = build_emoji_cache(32, tmp_path / "emoji_32.npz")
    assert 0.9 * len(sample_candidates) < len(built.captions) <= len(sample_candidates) - 2
    assert "two grinning faces" not in built.captions and "latin small letter a" not in built.captions
    assert built.images.shape == (len(built.captions), 32, 32, 3) and built.images.dtype == np.uint8
    assert np.mean(np.all(built.images[:, 0, 0] >= 240, axis=1)) > 0.8  # padded on white (a few fill their corner)
    assert all(built.captions)

    def no_rebuild(*args):
        raise AssertionError("the cache should have been read, not rendered again")

    monkeypatch.setattr(emoji_data, "build_emoji_cache", no_rebuild)
    loaded = load_emoji(32, cache_dir=tmp_path)
    assert loaded.captions == built.captions and np.array_equal(loaded.images, built.images)
    with pytest.raises(UserError):
        (tmp_path / "emoji_16.npz").write_bytes(b"not an npz")
        load_emoji(16, cache_dir=tmp_path)

    monkeypatch.setenv("DATA_CACHE_DIR", str(tmp_path))
    train, val = open_dataset("emoji", size=32), open_dataset("emoji", split="val", size=32)
    train_captions = {train.caption(i) for i in range(len(train))}
    val_captions = {val.caption(i) for i in range(len(val))}
    assert train_captions | val_captions == set(built.captions) and not train_captions & val_captions
    assert val_captions == {c for c in built.captions if stable_fraction(c) < EMOJI_VAL_FRACTION}
    item = train.item(0)
    assert item.image.size == (32, 32) and item.caption == train.caption(0) and item.source == f"emoji:{item.caption}"


def test_missing_font_is_one_line_naming_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(emoji_data, "FONT_FOLDERS", (str(tmp_path),))
    with pytest.raises(UserError, match="apt-get install -y fonts-noto-color-emoji") as err:
        find_emoji_font()
    assert "\n" not in str(err.value)
