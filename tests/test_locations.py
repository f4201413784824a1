"""Location tokens: the id space they extend (old ids and fingerprints unchanged) and boxes <-> tokens."""
import hashlib
import json
import random

import pytest

from data_utils import locations
from data_utils.locations import box_to_cells, box_to_ids, cells_to_box, ids_to_box
from data_utils.tokenizer import (COMMAND_TOKENS, UNDERSTANDING_COMMAND_TOKENS, LocationSegment, UnifiedTokenizer)
from tests.test_tokenizer import FakeTextTokenizer


def test_without_bins_the_id_space_and_fingerprint_are_the_old_ones():
    tok = UnifiedTokenizer(FakeTextTokenizer(50_000, "sp"), 8192)
    # CogView's ids, pinned by value: [PAD] = 58192, [MINI] right after [POS8], vocabulary 58,240.
    assert tok["[PAD]"] == 58192 and tok["[BASE]"] == 58192 + 16 and tok["[MINI]"] == 58192 + 27
    assert tok.vocab_size == 58240 and tok.num_location_tokens == 0
    assert tok.command_tokens == COMMAND_TOKENS
    # The fingerprint formula of every tokenizer made before location bins, written out here on purpose.
    old = {"text_tokenizer": "sp", "codebook_size": 8192, "command_tokens": list(COMMAND_TOKENS)}
    assert tok.fingerprint() == hashlib.sha256(json.dumps(old, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    with pytest.raises(KeyError):
        tok["[QUES]"]


@pytest.mark.parametrize("text_size,codebook", [(50_000, 8192), (300, 512), (100, 28)])
def test_location_bins_append_ids_and_move_none(text_size, codebook):
    old = UnifiedTokenizer(FakeTextTokenizer(text_size), codebook)
    new = UnifiedTokenizer(FakeTextTokenizer(text_size), codebook, location_bins=32)
    assert all(new[name] == old[name] for name in COMMAND_TOKENS)
    assert (new.text_offset, new.command_offset, new.pad_id) == (old.text_offset, old.command_offset, old.pad_id)
    first = old.command_offset + len(COMMAND_TOKENS)
    assert [new[name] for name in UNDERSTANDING_COMMAND_TOKENS] == list(range(first, first + 6))
    assert new.location_id(0) == first + 6 and new.location_id(32 * 32 - 1) == first + 6 + 1023
    assert new.vocab_size % 128 == 0 and new.location_id(1023) < new.vocab_size
    assert new.fingerprint() != old.fingerprint()
    assert new.fingerprint() != UnifiedTokenizer(FakeTextTokenizer(text_size), codebook, 16).fingerprint()
    assert new.describe()["location_bins"] == 32
    assert new.decode([new.location_id(5), new["[PHR]"]])[0] == LocationSegment(5)
    assert not new.is_location_id(new["[PHR]"]) and not new.is_text_id(new.location_id(0))
    with pytest.raises(ValueError, match="no location tokens"):
        old.location_id(0)


def test_cells_of_a_box_by_hand():
    # 64 px, 32 bins: 2 px per cell. [10, 20, 22, 32): top-left pixel (10, 20) -> cell (10, 5);
    # bottom-right pixel (21, 31) -> cell (15, 10).
    assert box_to_cells([10, 20, 22, 32], 64, 64, 32) == (10 * 32 + 5, 15 * 32 + 10)
    assert cells_to_box((10 * 32 + 5, 15 * 32 + 10), 64, 64, 32) == (10, 20, 22, 32)
    # An odd box widens to whole cells; the whole image is the first and last cell.
    assert cells_to_box(box_to_cells([11, 21, 22, 31], 64, 64, 32), 64, 64, 32) == (10, 20, 22, 32)
    assert box_to_cells([0, 0, 64, 64], 64, 64, 32) == (0, 1023)
    # The same tokens name a box in pixels of any image size.
    assert cells_to_box((0, 1023), 500, 300, 32) == (0, 0, 500, 300)


@pytest.mark.parametrize("width,height,bins", [(64, 64, 32), (256, 256, 32), (333, 97, 32), (64, 64, 8), (40, 70, 7)])
def test_round_trip_is_within_a_cell(width, height, bins):
    rng = random.Random(width * 1000 + height + bins)
    cell_w, cell_h = width / bins, height / bins
    for _ in range(300):
        x0, x1 = sorted(rng.sample(range(width + 1), 2))
        y0, y1 = sorted(rng.sample(range(height + 1), 2))
        cells = box_to_cells([x0, y0, x1, y1], width, height, bins)
        back = cells_to_box(cells, width, height, bins)
        assert back[0] <= x0 and back[1] <= y0 and back[2] >= x1 and back[3] >= y1  # holds the box
        assert x0 - back[0] < cell_w and y0 - back[1] < cell_h
        assert back[2] - x1 < cell_w and back[3] - y1 < cell_h
        assert box_to_cells(back, width, height, bins) == cells  # tokens -> box -> tokens


def test_ids_and_errors():
    tok = UnifiedTokenizer(FakeTextTokenizer(300), 512, location_bins=32)
    ids = box_to_ids(tok, [10, 20, 22, 32], 64, 64)
    assert all(tok.is_location_id(i) for i in ids)
    assert ids_to_box(tok, ids, 64, 64) == (10, 20, 22, 32)
    assert ids_to_box(tok, ids, 128, 128) == (20, 40, 44, 64)
    # Cells in the wrong order (a model's mistake) still read as the box between them.
    assert ids_to_box(tok, ids[::-1], 64, 64) == (10, 20, 22, 32)
    for bad in ([5, 5, 5, 9], [0, 0, 65, 10], [-1, 0, 3, 3], [0, 0, 1]):
        with pytest.raises(ValueError):
            box_to_ids(tok, bad, 64, 64)
    with pytest.raises(ValueError, match="not a location token"):
        ids_to_box(tok, [tok["[PAD]"], ids[1]], 64, 64)


def test_iou():
    assert locations.iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert locations.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert locations.iou([0, 0, 10, 10], [10, 10, 20, 20]) == 0.0
