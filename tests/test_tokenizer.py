"""The unified id space (CogView's ids exactly), SentencePiece training and text round trips."""
import logging
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data_utils.tokenizer as tokenizer_module
from data_utils.text_tokenizer import HAN_CHARACTER, TextTokenizer, train_sentencepiece
from data_utils.tokenizer import (COGVIEW_COMMAND_TOKENS, COMMAND_TOKENS, GRID_TOKENS, CommandSegment,
                                  ImageSegment, TextSegment, UnifiedTokenizer)
from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


class FakeTextTokenizer:
    """A text tokenizer of any size without training one: one piece per character code."""

    def __init__(self, vocab_size: int, fingerprint: str = "fake"):
        self.vocab_size = vocab_size
        self.fingerprint = fingerprint

    def encode(self, text):
        return [ord(c) % self.vocab_size for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


COLOURS = [("red", "红色"), ("green", "绿色"), ("blue", "蓝色"), ("yellow", "黄色"), ("purple", "紫色"),
           ("orange", "橙色")]
SHAPES = [("circle", "圆形"), ("square", "正方形"), ("triangle", "三角形"), ("diamond", "菱形")]
POSITIONS = [("at the top left", "左上角"), ("at the top", "上方"), ("at the top right", "右上角"),
             ("at the left", "左侧"), ("in the center", "中间"), ("at the right", "右侧"),
             ("at the bottom left", "左下角"), ("at the bottom", "下方"), ("at the bottom right", "右下角")]
SIZES = [("small", "小"), ("large", "大")]


def make_captions(count: int, seed: int = 0) -> list[str]:
    """Shapes-like captions, alternating English and Chinese, one or two objects each."""
    rng = random.Random(seed)
    captions = []
    for index in range(count):
        objects = [(rng.choice(SIZES), rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(POSITIONS))
                   for _ in range(rng.choice([1, 2]))]
        if index % 2 == 0:
            captions.append(" and ".join(f"a {s[0]} {c[0]} {h[0]} {p[0]}" for s, c, h, p in objects))
        else:
            captions.append("，".join(f"{p[1]}有一个{s[1]}的{c[1]}{h[1]}" for s, c, h, p in objects))
    return captions


ROUND_TRIPS = [
    "a large red circle at the top left",
    "左上角有一个大的红色圆形，右侧有一个小的蓝色菱形",
    "a small 绿色 triangle 在中间!",
    "Punctuation: (x, y) = [1; 2]? — “quoted” 「引号」。",
    "emoji 🎨🟥 and rare characters 龘 𠀀 ñ ß",
    "zebra quickly jumps",  # letters never seen in training
]


# Vocabulary sizes near the largest each model type can learn from 200 captions.
SP_SETTINGS = {"bpe": 400, "unigram": 325}


@pytest.fixture(scope="module", params=sorted(SP_SETTINGS))
def sp_model(request, tmp_path_factory):
    prefix = tmp_path_factory.mktemp(f"sp_{request.param}") / "sp"
    return train_sentencepiece(make_captions(200), prefix, SP_SETTINGS[request.param], model_type=request.param)


def model_type_of(sp_model) -> str:
    return sp_model.parent.name.split("_")[1].rstrip("0123456789")


# --- the id space ------------------------------------------------------------------------------
def test_cogview_ids_with_8192_codes_and_50000_pieces():
    tok = UnifiedTokenizer(FakeTextTokenizer(50_000), codebook_size=8192)
    expected = {"[PAD]": 58192, "[BOI1]": 58193, "[BOI2]": 58194, "[BOI3]": 58195, "[EOI1]": 58196,
                "[EOI2]": 58197, "[EOI3]": 58198, "[ROI1]": 58199, "[ROI2]": 58200, "[ROI3]": 58201,
                "[SEP]": 58202, "[MASK]": 58203, "[CLS]": 58204, "[ENC]": 58205, "[TINY]": 58206,
                "[SMALL]": 58207, "[BASE]": 58208, "[BIG]": 58209, "[POS0]": 58210, "[POS8]": 58218,
                "[MINI]": 58219}
    assert {name: tok[name] for name in expected} == expected
    assert (tok.text_offset, tok.command_offset, tok.pad_id, tok.vocab_size) == (8192, 58192, 58192, 58240)
    assert tok.encode_text("a") == [ord("a") + 8192]
    assert [tok.position_token(i) for i in range(9)] == list(range(58210, 58219))
    assert [tok.grid_token(side) for side in (4, 8, 16, 32, 64)] == [58219, 58206, 58207, 58208, 58209]


def test_ids_for_another_codebook_and_text_size():
    tok = UnifiedTokenizer(FakeTextTokenizer(300), codebook_size=512)
    assert (tok.text_offset, tok.command_offset, tok.num_command_tokens) == (512, 812, 28)
    assert tok["[PAD]"] == 812 and tok["[SEP]"] == 822 and tok["[POS8]"] == 838 and tok["[MINI]"] == 839
    assert tok.vocab_size == 896  # 840 ids used, padded to 7 x 128


@pytest.mark.parametrize("codebook_size,text_size", [(512, 300), (1024, 384 - 28), (1, 100), (8192, 128 - 28)])
def test_vocab_is_padded_to_a_multiple_of_128(codebook_size, text_size):
    tok = UnifiedTokenizer(FakeTextTokenizer(text_size), codebook_size)
    used = codebook_size + text_size + len(COMMAND_TOKENS)
    assert tok.vocab_size % 128 == 0 and used <= tok.vocab_size < used + 128


def test_extension_tokens_come_after_cogview_and_appending_moves_nothing(monkeypatch):
    assert COMMAND_TOKENS[:len(COGVIEW_COMMAND_TOKENS)] == COGVIEW_COMMAND_TOKENS
    before = UnifiedTokenizer(FakeTextTokenizer(50_000), 8192)
    monkeypatch.setattr(tokenizer_module, "COMMAND_TOKENS", COMMAND_TOKENS + ("[NEW]",))
    after = UnifiedTokenizer(FakeTextTokenizer(50_000), 8192)
    assert all(after[name] == before[name] for name in COMMAND_TOKENS)
    assert after["[NEW]"] == before["[MINI]"] + 1
    assert after.fingerprint() != before.fingerprint()


def test_command_names_masks_and_lookup_errors():
    tok = UnifiedTokenizer(FakeTextTokenizer(300), 512)
    assert [tok.command_name(tok[name]) for name in COMMAND_TOKENS] == list(COMMAND_TOKENS)
    assert tok.command_name(0) is None and tok.command_name(600) is None and tok.command_name(850) is None
    ids = torch.arange(tok.vocab_size)
    masks = torch.stack([tok.image_mask(ids), tok.text_mask(ids)])
    assert masks.dtype == torch.bool
    assert masks.sum(0)[:812].eq(1).all() and masks.sum(0)[812:].eq(0).all()  # then the 28 command tokens
    assert masks[0].sum() == 512 and masks[1].sum() == 300
    assert all(tok.command_name(i) is not None for i in range(812, 840))
    assert tok.is_image_id(511) and tok.is_text_id(512) and not tok.is_text_id(812)
    with pytest.raises(KeyError, match=r"unknown command token '\[HUGE\]'"):
        tok["[HUGE]"]
    with pytest.raises(UserError, match="valid sides: 4, 8, 16, 32, 64"):
        tok.grid_token(12)
    with pytest.raises(ValueError, match="0..8"):
        tok.position_token(9)
    assert {tok.command_name(tok.grid_token(side)) for side in GRID_TOKENS} == set(GRID_TOKENS.values())


def test_decode_splits_a_mixed_sequence_into_segments():
    tok = UnifiedTokenizer(FakeTextTokenizer(300), 512)
    ids = [tok["[ROI1]"], *tok.encode_text("hi"), tok["[TINY]"], tok["[BOI1]"], *range(64), tok["[EOI1]"],
           *range(5), *tok.encode_text("ok"), tok["[PAD]"]]
    segments = tok.decode(torch.tensor(ids))
    assert [type(s) for s in segments] == [CommandSegment, TextSegment, CommandSegment, CommandSegment,
                                           ImageSegment, CommandSegment, ImageSegment, TextSegment,
                                           CommandSegment]
    assert segments[1] == TextSegment("hi") and segments[7] == TextSegment("ok")
    assert [s.name for s in segments if isinstance(s, CommandSegment)] == \
        ["[ROI1]", "[TINY]", "[BOI1]", "[EOI1]", "[PAD]"]
    assert torch.equal(segments[4].codes, torch.arange(64).view(8, 8))
    assert torch.equal(segments[6].codes, torch.arange(5))  # not a square: left 1-D
    assert tok.decode_text(ids) == "hiok"
    with pytest.raises(ValueError, match="outside the used vocabulary"):
        tok.decode([tok.vocab_size - 1])


def test_fingerprint_depends_on_text_model_and_codebook():
    base = UnifiedTokenizer(FakeTextTokenizer(300, "a"), 512)
    assert base.fingerprint() == UnifiedTokenizer(FakeTextTokenizer(300, "a"), 512).fingerprint()
    assert base.fingerprint() != UnifiedTokenizer(FakeTextTokenizer(300, "b"), 512).fingerprint()
    assert base.fingerprint() != UnifiedTokenizer(FakeTextTokenizer(300, "a"), 1024).fingerprint()
    assert base.describe() == {"path": None, "fingerprint": base.fingerprint(), "codebook_size": 512,
                               "vocab_size": 896, "location_bins": 0}


# --- prompts -----------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_is_a_user_error(prompt):
    tok = UnifiedTokenizer(FakeTextTokenizer(300), 512)
    with pytest.raises(UserError, match="empty prompt"):
        tok.encode_text(prompt)


def test_long_prompt_is_truncated_with_a_warning(caplog):
    tok = UnifiedTokenizer(FakeTextTokenizer(300), 512)
    with caplog.at_level(logging.WARNING):
        ids = tok.encode_text("abcdefghij", max_tokens=4)
    assert tok.decode_text(ids) == "abcd"
    assert "dropped the last 6 tokens" in caplog.text
    caplog.clear()
    assert len(tok.encode_text("abcd", max_tokens=4)) == 4 and not caplog.records


# --- a real SentencePiece model ------------------------------------------------------------------
@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_text_round_trips_without_unknown_pieces(sp_model, text):
    text_tok = TextTokenizer(sp_model)
    sp_ids = text_tok.encode(text)
    assert 0 not in sp_ids  # <unk>: byte fallback covers every character
    assert text_tok.decode(sp_ids) == text
    tok = UnifiedTokenizer(text_tok, 512)
    ids = tok.encode_text(text)
    assert all(tok.is_text_id(i) for i in ids) and tok.decode_text(ids) == text


def test_trained_model_layout_and_whitespace_normalisation(sp_model):
    text_tok = TextTokenizer(sp_model)
    assert text_tok.vocab_size == SP_SETTINGS[model_type_of(sp_model)]
    assert [text_tok.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert text_tok.decode(text_tok.encode("  a  red   circle ")) == "a red circle"
    # Frequent caption words become single pieces: the model learned something from the corpus.
    assert len(text_tok.encode("top left")) <= 3
    assert sp_model.with_suffix(".vocab").read_text(encoding="utf-8").count("\n") == text_tok.vocab_size
    # One piece per Han character by default, so Chinese captions stay compositional.
    assert [text_tok.id_to_piece(i) for i in text_tok.encode("红色圆形")][-4:] == ["红", "色", "圆", "形"]
    assert not any(len(HAN_CHARACTER.findall(text_tok.id_to_piece(i))) > 1 for i in range(text_tok.vocab_size))


def test_han_words_allows_multi_character_pieces(tmp_path):
    text_tok = TextTokenizer(train_sentencepiece(make_captions(200), tmp_path / "words", 400, han_words=True))
    assert any(len(HAN_CHARACTER.findall(text_tok.id_to_piece(i))) > 1 for i in range(text_tok.vocab_size))
    assert text_tok.decode(text_tok.encode(ROUND_TRIPS[1])) == ROUND_TRIPS[1]


def test_training_is_deterministic(sp_model, tmp_path):
    model_type = model_type_of(sp_model)
    again = train_sentencepiece(iter(make_captions(200)), tmp_path / "again.model", SP_SETTINGS[model_type],
                                model_type=model_type)
    assert again == tmp_path / "again.model"  # a prefix given with `.model` is not doubled
    assert again.read_bytes() == sp_model.read_bytes()
    assert TextTokenizer(again).fingerprint == TextTokenizer(sp_model).fingerprint


def test_training_errors_are_one_line(tmp_path):
    captions = make_captions(60)
    with pytest.raises(UserError, match=r"too large for this corpus of 60 captions; use at most \d+"):
        train_sentencepiece(captions, tmp_path / "big", 5000)
    with pytest.raises(UserError, match=r"too small: this corpus needs at least \d+ pieces"):
        train_sentencepiece(captions, tmp_path / "small", 100)
    with pytest.raises(UserError, match="corpus is empty"):
        train_sentencepiece(["", "  "], tmp_path / "empty", 300)
    with pytest.raises(UserError, match="unknown model type"):
        train_sentencepiece(captions, tmp_path / "wordy", 300, model_type="word")

    def failing_corpus():
        yield "a red circle"
        raise UserError("caption file is unreadable")

    with pytest.raises(UserError, match="caption file is unreadable"):
        train_sentencepiece(failing_corpus(), tmp_path / "failing", 300)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_missing_or_corrupt_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="missing text tokenizer model"):
        UnifiedTokenizer.from_files(tmp_path / "nope.model", 512)
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"not a sentencepiece model" * 4)
    with pytest.raises(UserError, match="not a valid SentencePiece model"):
        TextTokenizer(corrupt)


def test_from_files_describes_the_model(sp_model):
    tok = UnifiedTokenizer.from_files(sp_model, 512)
    model_type = model_type_of(sp_model)
    assert tok.num_text_tokens == SP_SETTINGS[model_type]
    assert tok.vocab_size == {"bpe": 1024, "unigram": 896}[model_type]  # 512 + 400|325 + 28, padded to 128
    description = tok.describe()
    assert description["path"] == str(sp_model) and description["fingerprint"] == tok.fingerprint()


# --- the command line ----------------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, "train_text_tokenizer.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli_trains_from_a_corpus_file_and_a_dataset(tmp_path):
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(make_captions(100)) + "\n", encoding="utf-8")
    result = run_cli("--dataset", "shapes", "--num-items", 100, "--corpus", corpus,
                     "--output", tmp_path / "tok" / "sp", "--vocab-size", 400)
    assert result.returncode == 0, result.stderr
    assert "vocabulary: 400 pieces (bpe)" in result.stdout and "Chinese: " in result.stdout
    assert TextTokenizer(tmp_path / "tok" / "sp.model").vocab_size == 400


def test_cli_errors_are_one_line(tmp_path):
    result = run_cli("--corpus", tmp_path / "missing.txt", "--output", tmp_path / "sp")
    assert result.returncode == 2 and result.stderr.strip() == f"error: missing corpus file: {tmp_path / 'missing.txt'}"
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    result = run_cli("--corpus", tmp_path / "latin1.txt", "--output", tmp_path / "sp")
    assert result.returncode == 2 and "is not UTF-8 text" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("sp*"))
