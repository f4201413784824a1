"""Task sequences: token order and position ids of each task, parsed back with `UnifiedTokenizer.decode`."""
import numpy as np
import pytest
import torch

from data_utils import sequences
from data_utils.text_tokenizer import train_sentencepiece
from data_utils.tokenizer import CommandSegment, ImageSegment, TextSegment, UnifiedTokenizer
from utils.errors import UserError

CAPTIONS = ["a large red circle at the top left", "a small blue diamond in the center",
            "左上角有一个大的红色圆形", "中间有一个小的蓝色菱形，右侧有一个大的绿色正方形"] * 10
CODEBOOK = 64


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    model = train_sentencepiece(CAPTIONS, tmp_path_factory.mktemp("sp") / "sp", vocab_size=320)
    return UnifiedTokenizer.from_files(model, CODEBOOK)


def codes(grid: int, seed: int) -> torch.Tensor:
    return torch.randint(0, CODEBOOK, (grid, grid), generator=torch.Generator().manual_seed(seed))


def describe(tok, ids):
    """Segments as comparable values: text, command names and code grids as nested lists."""
    out = []
    for segment in tok.decode(ids):
        if isinstance(segment, TextSegment):
            out.append(segment.text)
        elif isinstance(segment, CommandSegment):
            out.append(segment.name)
        else:
            assert isinstance(segment, ImageSegment)
            out.append(segment.codes.tolist())
    return out


def test_text2image_round_trip(tok):
    text, image = "左上角有一个大的红色圆形", codes(8, 0)
    seq = sequences.text2image(tok, tok.encode_text(text), 8, image)
    assert describe(tok, seq.ids) == ["[ROI1]", text, "[TINY]", "[BOI1]", image.tolist(), "[EOI1]"]
    assert seq.position_ids == list(range(len(seq)))
    prompt = sequences.text2image(tok, tok.encode_text(text), 8)
    assert prompt.ids == seq.ids[:len(prompt)] and prompt.ids[-1] == tok["[BOI1]"]
    # Flat lists, 2-D tensors and numpy arrays (as read from shards) give the same sequence (row-major).
    assert sequences.text2image(tok, tok.encode_text(text), 8, image.flatten().tolist()).ids == seq.ids
    as_arrays = sequences.text2image(tok, np.asarray(tok.encode_text(text), np.uint16), 8,
                                     image.numpy().astype(np.uint16).reshape(-1))
    assert as_arrays.ids == seq.ids and all(type(i) is int for i in as_arrays.ids)


def test_unconditional_has_no_text(tok):
    image = codes(4, 1)
    seq = sequences.text2image(tok, [], 4, image)
    assert describe(tok, seq.ids) == ["[ROI1]", "[MINI]", "[BOI1]", image.tolist(), "[EOI1]"]
    assert seq.position_ids == list(range(len(seq)))


def test_image2text_round_trip(tok):
    text, image = "a small blue diamond in the center", codes(8, 2)
    seq = sequences.image2text(tok, image, 8, tok.encode_text(text))
    assert describe(tok, seq.ids) == ["[TINY]", "[BOI1]", image.tolist(), "[EOI1]", "[ROI1]", text, "[SEP]"]
    assert seq.position_ids == list(range(len(seq)))
    prompt = sequences.image2text(tok, image, 8)
    assert prompt.ids == seq.ids[:len(prompt)] and prompt.ids[-1] == tok["[ROI1]"]


def test_super_resolution_round_trip_and_position_restart(tok):
    text, low, high = "a large red circle", codes(4, 3), codes(8, 4)
    seq = sequences.super_resolution(tok, tok.encode_text(text), low, 4, 8, high, window=5)
    assert describe(tok, seq.ids) == ["[ROI1]", text, "[MINI]", "[BOI1]", low.tolist(), "[EOI1]",
                                      "[ROI2]", "[POS5]", "[TINY]", "[BOI2]", high.tolist(), "[EOI2]"]
    restart = seq.ids.index(tok["[ROI2]"])
    assert seq.position_ids == list(range(restart)) + list(range(len(seq) - restart))
    prompt = sequences.super_resolution(tok, tok.encode_text(text), low, 4, 8, window=5)
    assert prompt.ids == seq.ids[:len(prompt)] and prompt.ids[-3:] == [tok["[POS5]"], tok["[TINY]"], tok["[BOI2]"]]
    assert prompt.position_ids[restart:] == [0, 1, 2, 3]


def test_fixed_image_layout_gives_each_code_one_position_whatever_the_text(tok):
    image, low = codes(8, 1), codes(4, 2)
    budget = 32
    seen = []
    for text in ["", "square", "a small blue diamond in the center"]:
        text_ids = tok.encode_text(text) if text else []
        fixed = sequences.text2image(tok, text_ids, 8, image, text_positions=budget)
        assert fixed.ids == sequences.text2image(tok, text_ids, 8, image).ids  # same tokens, no padding fed
        assert fixed.position_ids[:1 + len(text_ids)] == list(range(1 + len(text_ids)))
        seen.append(fixed.position_ids[1 + len(text_ids):])
        prompt = sequences.text2image(tok, text_ids, 8, text_positions=budget)
        assert prompt.position_ids == fixed.position_ids[:len(prompt)]
        sr = sequences.super_resolution(tok, text_ids, low, 4, 8, image, text_positions=budget)
        restart = sr.ids.index(tok["[ROI2]"])
        assert sr.position_ids[1 + len(text_ids):restart] == list(range(1 + budget, 1 + budget + 3 + 16))
        assert sr.position_ids[restart:] == list(range(len(sr) - restart))
    assert seen[0] == seen[1] == seen[2] == list(range(1 + budget, 1 + budget + 2 + 64 + 1))
    long_text = tok.encode_text(" ".join(CAPTIONS[:2]))
    with pytest.raises(UserError, match=f"reserves {len(long_text) - 1} positions"):
        sequences.text2image(tok, long_text, 8, text_positions=len(long_text) - 1)


@pytest.mark.parametrize("task", [t for t in sequences.TASKS if t not in sequences.UNDERSTANDING_TASKS])
def test_max_length_and_num_positions_match_the_longest_sequence(tok, task):
    text = tok.encode_text("中间有一个小的蓝色菱形，右侧有一个大的绿色正方形 and a large red circle")
    if task == "text2image":
        seq = sequences.text2image(tok, text, 8, codes(8, 5))
    elif task == "image2text":
        seq = sequences.image2text(tok, codes(8, 5), 8, text)
    else:
        seq = sequences.super_resolution(tok, text, codes(4, 5), 4, 8, codes(8, 6))
    assert sequences.max_length(task, len(text), 8) == len(seq)
    assert sequences.num_positions(task, len(text), 8) == max(seq.position_ids) + 1


def test_bad_inputs_give_clear_errors(tok):
    text = tok.encode_text("a red circle")
    with pytest.raises(ValueError, match="image has 63 codes but a 8x8 grid needs 64"):
        sequences.text2image(tok, text, 8, list(range(63)))
    with pytest.raises(ValueError, match=r"outside the codebook \[0, 64\)"):
        sequences.image2text(tok, torch.full((4, 4), CODEBOOK), 4)
    with pytest.raises(ValueError, match="low-resolution image has 64 codes but a 4x4 grid needs 16"):
        sequences.super_resolution(tok, text, codes(8, 0), 4, 8)
    with pytest.raises(ValueError, match="unified text ids"):
        sequences.text2image(tok, [*text, tok["[SEP]"]], 8)
    with pytest.raises(ValueError, match="unified text ids"):
        sequences.image2text(tok, codes(4, 0), 4, [3, 4])  # SentencePiece ids, not shifted by the codebook
    with pytest.raises(UserError, match="valid sides"):
        sequences.text2image(tok, text, 6)
    with pytest.raises(ValueError, match="window index"):
        sequences.super_resolution(tok, text, codes(4, 0), 4, 8, window=9)
    with pytest.raises(UserError, match="unknown task"):
        sequences.max_length("inpainting", 16, 8)
