"""Attention probabilities on request, and the per-word attention maps built from them."""
import math

import pytest
import torch

from data_utils.text_tokenizer import TextTokenizer, train_sentencepiece
from data_utils.tokenizer import UnifiedTokenizer
from generation.attention_maps import group_words, piece_attention, word_attention
from generation.pipeline import Pipeline
from model import CogViewGPT, ModelConfig
from model.kernels import set_attention_backend
from model.kernels.backend import attention_backend
from tests.generation_helpers import CAPTIONS, tiny_geometry, tiny_model, tiny_tokenizer


@pytest.fixture
def sdpa():
    before = attention_backend()
    set_attention_backend("sdpa")
    yield
    set_attention_backend(before)


def test_recorded_probabilities_sum_to_one_and_reproduce_the_sdpa_output(sdpa):
    config = ModelConfig(vocab_size=64, num_layers=2, hidden_size=32, num_attention_heads=4,
                         max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = CogViewGPT(config).eval()
    ids = torch.randint(0, 64, (3, 10))
    positions = torch.arange(10).expand(3, -1)
    inputs = {}
    model.transformer.layers[1].attention.register_forward_pre_hook(lambda m, args: inputs.update(x=args[0]))
    with torch.no_grad():
        plain = model(ids, positions)
        with model.recording_attention() as recorded:
            recording = model(ids, positions)
        assert all(layer.attention.recorded is None for layer in model.transformer.layers)
        assert len(recorded) == 2 and recorded[0].shape == (3, 4, 10, 10)
        for probs in recorded:
            torch.testing.assert_close(probs.sum(-1), torch.ones(3, 4, 10))
            assert (probs.triu(diagonal=1) == 0).all()  # causal: no weight on later keys
        torch.testing.assert_close(recording, plain, atol=1e-5, rtol=1e-5)
        # Layer 1's probabilities times its values give what SDPA computes from the same queries and keys.
        attention = model.transformer.layers[1].attention
        q, k, v = attention.project(inputs["x"])
        by_probs = torch.matmul(recorded[1], v).transpose(1, 2).reshape(3, 10, 32)
        torch.testing.assert_close(by_probs, attention.attend(q, k, v, None), atol=1e-5, rtol=1e-5)


def test_nothing_is_recorded_outside_the_block():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    with model.recording_attention() as recorded:
        pass
    model(torch.zeros(1, 4, dtype=torch.long), torch.arange(4)[None])
    assert recorded == []


def test_english_words_join_their_pieces_and_chinese_pieces_stand_alone(tmp_path):
    sp = TextTokenizer(train_sentencepiece(CAPTIONS * 20, tmp_path / "sp", vocab_size=300))
    tok = UnifiedTokenizer(sp, 16)
    text = "a large red circle at the top left"
    words = group_words(tok, tok.encode_text(text))
    assert [w.text for w in words] == text.split()
    assert all(text[w.start:w.end] == w.text for w in words)
    assert sorted(i for w in words for i in w.pieces) == list(range(len(tok.encode_text(text))))
    zh = "左上角有一个大的红色圆形"
    ids = tok.encode_text(zh)
    zh_words = group_words(tok, ids)
    assert "".join(w.text for w in zh_words) == tok.decode_text(ids)
    assert len(zh_words) == len([i for i in ids if tok.text_tokenizer.id_to_piece(i - tok.text_offset) != "▁"])


def test_character_tokenizer_words():
    tok = tiny_tokenizer()
    words = group_words(tok, tok.encode_text("a red  circle"))
    assert [(w.text, w.start, w.end) for w in words] == [("a", 0, 1), ("red", 2, 5), ("circle", 7, 13)]


def test_piece_maps_are_the_text_rows_of_the_mean_attention_over_the_codes():
    tok = tiny_tokenizer()
    model, geometry = tiny_model(tok), tiny_geometry(grid=4)
    codes = torch.randint(0, 16, (2, 4, 4))
    texts = [tok.encode_text("a red circle"), tok.encode_text("ab")]
    maps = piece_attention(model, tok, geometry, codes, texts, max_batch_rows=1)
    assert [m.shape for m in maps] == [(12, 17), (2, 17)]
    # One row, by hand: the sequence alone, its probabilities averaged over layers and heads.
    from data_utils.sequences import image2text
    sequence = image2text(tok, codes[1], 4, texts[1])
    with torch.no_grad(), model.recording_attention() as recorded:
        model(torch.tensor([sequence.ids]), torch.tensor([sequence.position_ids]))
    mean = torch.stack(recorded).mean(dim=(0, 2))[0]
    first_text = 4 * 4 + 4
    row = mean[first_text + 1, 2:2 + 16]
    torch.testing.assert_close(maps[1][1, 0], row.sum())
    torch.testing.assert_close(maps[1][1, 1:], row / row.sum())
    words = word_attention(tok, texts[0], maps[0], 4)
    assert [w.word.text for w in words] == ["a", "red", "circle"]
    assert words[1].word.pieces == (1, 2, 3, 4)  # the space before a word is its piece, as in SentencePiece
    torch.testing.assert_close(words[1].grid, maps[0][1:5, 1:].mean(0).view(4, 4))
    assert all(math.isclose(float(w.grid.sum()), 1.0, rel_tol=1e-5) for w in words)


def test_pipeline_attention_map_has_one_map_per_word():
    tok = tiny_tokenizer()
    model, geometry = tiny_model(tok), tiny_geometry(grid=4)

    class Codes(torch.nn.Module):
        """A VQ-VAE stand-in that maps every image to fixed codes."""
        config = type("C", (), {"downsample": 8})()

    pipe = Pipeline(model, tok, vqvae=Codes(), geometry=geometry)
    pipe.encode_images = lambda images, grid=None: torch.zeros(len(images), 4, 4, dtype=torch.long)
    words = pipe.attention_map(torch.zeros(3, 32, 32), "a red circle")
    assert [w.word.text for w in words] == ["a", "red", "circle"]
    assert words[0].grid.shape == (4, 4)


# --- attention mass in the box (eval_utils/attention_in_box.py) --------------------------------------
def test_box_cover_is_the_covered_fraction_of_each_code_cell():
    from eval_utils.attention_in_box import box_cover

    cover = box_cover((4, 8, 16, 12), image_size=32, grid=4)  # cells of 8 px
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[1, 0] = 0.5 * 0.5   # x 4..8 of 0..8, y 8..12 of 8..16
    expected[1, 1] = 1.0 * 0.5   # x 8..16, y 8..12
    torch.testing.assert_close(cover, expected)
    assert float(box_cover((0, 0, 32, 32), 32, 4).sum()) == 16


def test_mass_in_box_of_hand_made_maps():
    from data_utils.shapes import ShapeObject
    from eval_utils.attention_in_box import attention_in_box, mass_in_box
    from generation.attention_maps import Word, WordAttention

    cover = torch.zeros(4, 4, dtype=torch.float64)
    cover[0, :2] = 1.0
    on_box = torch.zeros(4, 4)
    on_box[0, 0] = 0.75
    on_box[3, 3] = 0.25
    assert mass_in_box(on_box, cover) == pytest.approx(0.75)
    assert mass_in_box(torch.full((4, 4), 1 / 16), cover) == pytest.approx(2 / 16)

    text = "a large red circle at the top left"
    uniform = torch.full((4, 4), 1 / 16)

    def word(name, grid):
        start = text.index(name)
        return WordAttention(Word(name, start, start + len(name), ()), grid, 1.0)

    # "red" looks inside the box, "circle" evenly; "large" (not a name of colour or shape) is ignored.
    maps = [[word("large", on_box * 0), word("red", on_box), word("circle", uniform)]]
    obj = ShapeObject("red", "circle", "large", "top left", bbox=(0, 0, 16, 8))  # the cells [0, 0] and [0, 1]
    found = attention_in_box(maps, [[obj]], [text], "en", image_size=32, grid=4)
    assert found["objects"] == 1
    assert found["mass_in_box"] == pytest.approx((0.75 + 2 / 16) / 2)
    assert found["box_share"] == pytest.approx(2 / 16)
    assert found["ratio"] == pytest.approx((0.75 + 2 / 16) / 2 / (2 / 16))


def test_each_objects_names_are_found_in_its_own_phrase():
    from data_utils.shapes import ShapeObject
    from eval_utils.attention_in_box import name_spans

    objects = [ShapeObject("red", "circle", "large", "top"), ShapeObject("blue", "circle", "small", "left")]
    text = "上方有一个大的红色圆形，左侧有一个小的蓝色圆形"
    spans = name_spans(objects, text, "zh")
    assert [[text[a:b] for a, b in own] for own in spans] == [["红色", "圆形"], ["蓝色", "圆形"]]
    assert spans[1][1][0] > spans[0][1][0]  # the second circle, not the first one again
