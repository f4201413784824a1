"""Pipeline.answer / grounded_caption / ground / phrase_for_box: prompts in the trained order, greedy
decoding, slots held to their kind of token (a model pushing other ids cannot break the grammar), and boxes
in pixels of each input image."""
import pytest
import torch
from PIL import Image

from data_utils import sequences
from data_utils.locations import box_to_ids
from data_utils.tokenizer import UnifiedTokenizer
from generation.pipeline import Pipeline
from generation import understanding
from generation.understanding import grounded_caption_constraint
from tests.generation_helpers import CharTokenizer, tiny_geometry, tiny_model
from utils.errors import UserError
from vqvae.config import VQVAEConfig
from vqvae.model import VQVAE

GRID, POSITIONS = 8, 200


class Scripted(torch.nn.Module):
    """A model whose next token at position p + 1 is `script[p + 1]` whenever the script names one."""

    def __init__(self, inner: torch.nn.Module, script: dict[int, int]):
        super().__init__()
        self.inner, self.script = inner, script

    def new_kv_cache(self, batch_size: int, max_length: int, dtype=None):
        return self.inner.new_kv_cache(batch_size, max_length, dtype=dtype)

    def forward(self, input_ids, position_ids, key_padding_mask=None, kv_cache=None):
        logits = self.inner(input_ids, position_ids, key_padding_mask=key_padding_mask, kv_cache=kv_cache)
        bias = torch.zeros_like(logits)
        for b in range(position_ids.shape[0]):
            for t in range(position_ids.shape[1]):
                target = self.script.get(int(position_ids[b, t]) + 1)
                if target is not None:
                    bias[b, t, target] = 1e4
        return logits + bias


@pytest.fixture(scope="module")
def parts():
    tok = UnifiedTokenizer(CharTokenizer(), 16, location_bins=8)
    torch.manual_seed(0)
    vqvae = VQVAE(VQVAEConfig(codebook_size=16, embed_dim=8, hidden_channels=16, num_res_blocks=0)).eval()
    return tok, vqvae, tiny_model(tok, max_positions=POSITIONS)


def pipeline(parts, script):
    tok, vqvae, model = parts
    return Pipeline(Scripted(model, script), tok, vqvae, tiny_geometry(GRID, POSITIONS))


def images(count=2, size=(64, 64)):
    return [Image.new("RGB", size, (255, 255 - 40 * i, 255)) for i in range(count)]


IMAGE_PROMPT = GRID * GRID + 3  # G [BOI1] codes [EOI1]


def script_from(start: int, ids: list[int]) -> dict[int, int]:
    return {start + k: i for k, i in enumerate(ids)}


def test_answer_reads_the_generated_text(parts):
    tok = parts[0]
    question = "what colour?"
    start = IMAGE_PROMPT + 2 + len(tok.encode_text(question))  # [QUES] question [ANS]
    pipe = pipeline(parts, script_from(start, [*tok.encode_text("red"), tok["[SEP]"]]))
    assert pipe.answer(images(), question) == ["red", "red"]
    # A script of forbidden ids (image codes, location tokens) cannot leak into an answer: text only.
    pipe = pipeline(parts, script_from(start, [3, tok.location_id(5), *tok.encode_text("ok"), tok["[SEP]"]]))
    answer = pipe.answer(images(1), question, max_tokens=6)[0]
    assert answer.endswith("ok") and len(answer) == 4


def test_ground_gives_a_box_in_pixels_of_each_input(parts):
    tok = parts[0]
    expression = "the red circle"
    start = IMAGE_PROMPT + 2 + len(tok.encode_text(expression))  # [REF] expression [BOX]
    cells = box_to_ids(tok, (8, 16, 24, 40), 64, 64)  # 8 bins: 8 px cells
    pipe = pipeline(parts, script_from(start, cells))
    wide = Image.new("RGB", (128, 32), "white")
    assert pipe.ground([images(1)[0], wide], expression) == [(8, 16, 24, 40), (16, 8, 48, 20)]
    # Text or [SEP] pushed at a location slot still gives two location tokens.
    pipe = pipeline(parts, script_from(start, [*tok.encode_text("ab")]))
    (box,) = pipe.ground(images(1), expression)
    assert box is not None and len(box) == 4


def test_phrase_for_box_prompts_with_the_box_of_each_image(parts):
    tok = parts[0]
    start = IMAGE_PROMPT + 4  # [BOX] L L [PHR]
    pipe = pipeline(parts, script_from(start, [*tok.encode_text("a red circle"), tok["[SEP]"]]))
    assert pipe.phrase_for_box(images(1), [(0, 0, 32, 32)]) == ["a red circle"]
    with pytest.raises(UserError, match="outside the 64x64 image"):
        pipe.phrase_for_box(images(1), [(0, 0, 65, 32)])
    with pytest.raises(UserError, match="1 images but 2 boxes"):
        pipe.phrase_for_box(images(1), [(0, 0, 8, 8)] * 2)


def test_grounded_caption_follows_its_grammar(parts):
    tok = parts[0]
    start = IMAGE_PROMPT + 1  # [GRND]
    box = box_to_ids(tok, (0, 0, 16, 16), 64, 64)
    legal = [tok["[PHR]"], *tok.encode_text("a red circle"), *box, *tok.encode_text(" at the top"), tok["[SEP]"]]
    pipe = pipeline(parts, script_from(start, legal))
    (caption,) = pipe.grounded_caption(images(1))
    assert caption.objects == [("a red circle", (0, 0, 16, 16))] and caption.text == "a red circle at the top"
    # The same caption asked about a 128 x 96 image gives its boxes in that image's pixels.
    (caption,) = pipe.grounded_caption([Image.new("RGB", (128, 96), "white")])
    assert caption.objects == [("a red circle", (0, 0, 32, 24))]
    # A script breaking the grammar (a location right after [PHR], text inside a box, [SEP] inside a phrase)
    # is held to it: every phrase read back is closed by exactly two location tokens.
    broken = [tok["[PHR]"], box[0], *tok.encode_text("a"), tok["[SEP]"], *tok.encode_text("b"), tok["[SEP]"]]
    pipe = pipeline(parts, script_from(start, broken))
    allowed = grounded_caption_constraint(tok)
    codes = pipe.encode_images(images(1))
    (ids,) = understanding.grounded_caption_ids(pipe.model, tok, pipe.geometry, codes, 12, 4)
    for k, token in enumerate(ids):
        assert allowed(ids[:k])[token], (k, ids)
    assert ids[1] != box[0] and tok.is_text_id(ids[1])  # the location was refused right after [PHR]


def test_models_without_location_tokens_refuse_understanding(parts):
    _, vqvae, _ = parts
    plain = UnifiedTokenizer(CharTokenizer(), 16)
    pipe = Pipeline(tiny_model(plain, max_positions=POSITIONS), plain, vqvae, tiny_geometry(GRID, POSITIONS))
    with pytest.raises(UserError, match="no location tokens"):
        pipe.answer(images(1), "what?")
    with pytest.raises(UserError, match="no location tokens"):
        pipe.phrase_for_box(images(1), [(0, 0, 8, 8)])


def test_grammar_by_hand(parts):
    tok = parts[0]
    allowed = grounded_caption_constraint(tok)
    phr, sep, loc, text = tok["[PHR]"], tok["[SEP]"], tok.location_id(3), tok.encode_text("a")[0]
    kinds = lambda mask: (bool(mask[text]), bool(mask[phr]), bool(mask[sep]), bool(mask[loc]))  # noqa: E731
    assert kinds(allowed([])) == (True, True, True, False)
    assert kinds(allowed([text, phr])) == (True, False, False, False)
    assert kinds(allowed([phr, text])) == (True, False, False, True)
    assert kinds(allowed([phr, text, loc])) == (False, False, False, True)
    assert kinds(allowed([phr, text, loc, loc])) == (True, True, True, False)
    assert not allowed([])[tok["[BOI1]"]] and not allowed([])[0]  # no command or image code anywhere
    assert sequences.parse_grounded_caption(tok, [phr, text, loc, loc, sep], 64, 64).objects[0][0] == "a"
