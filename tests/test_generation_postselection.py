"""Scoring a text against an image (post-selection, caption reranking, the caption loss): against a
brute-force full forward of each pair alone, against results recorded before the scores were merged
into one likelihood, and with a model that has actually learned captions (the true image ranks first)."""
import dataclasses

import numpy as np
import pytest
import torch

from data_utils.sequences import image2text, text2image
from data_utils.shapes import COLOURS, ShapesDataset
from generation import scoring, tasks
from generation.pipeline import Pipeline
from generation.sampling import SamplingSettings
from tests.generation_helpers import tiny_geometry, tiny_model, tiny_tokenizer
from utils.errors import UserError

PROMPTS = ["a red circle", "a large blue diamond in the center", "左上角有一个大的红色圆形", "square"]


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    yield tok, tiny_model(tok), tiny_geometry()


def brute_force_nats(model, sequence, start: int, count: int, allowed: torch.Tensor) -> float:
    """-sum of ln p(token t) for t = start … start + count - 1 of one unpadded sequence, from ONE full
    forward of it alone, each p a softmax over the `allowed` logits of the position before t."""
    with torch.no_grad():
        logits = model(torch.tensor([sequence.ids]), torch.tensor([sequence.position_ids]))[0].double()
    log_probs = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return -sum(float(log_probs[t - 1, sequence.ids[t]]) for t in range(start, start + count))


def brute_text_nats(model, tok, codes, text) -> float:
    """-ln P(text | image): the text follows `G [BOI1] codes [EOI1] [ROI1]` (64 + 4 tokens at grid 8)."""
    sequence = image2text(tok, codes, 8, text)
    return brute_force_nats(model, sequence, 8 * 8 + 4, len(text), tasks.caption_ids_mask(tok))


def brute_image_nats(model, tok, codes, text, text_positions=None) -> float:
    """-ln P(codes | text): the 64 codes follow `[ROI1] text G [BOI1]`."""
    sequence = text2image(tok, text, 8, codes, text_positions=text_positions)
    return brute_force_nats(model, sequence, len(text) + 3, 64, tasks.image_ids_mask(tok))


def test_text_given_image_is_the_restricted_caption_likelihood_of_each_pair_alone(setup):
    tok, model, geometry = setup
    codes = torch.randint(0, tok.codebook_size, (5, 8, 8), generator=torch.Generator().manual_seed(1))
    texts = [tok.encode_text(text, 16) for text in [*PROMPTS, "a red circle"]]  # unequal lengths: padded rows
    likelihood = scoring.text_given_image(model, tok, geometry, codes, texts, max_batch_rows=2)
    assert likelihood.tokens.tolist() == [len(text) for text in texts]
    for i, text in enumerate(texts):
        assert float(likelihood.nats[i]) == pytest.approx(brute_text_nats(model, tok, codes[i], text), abs=1e-3)
    with pytest.raises(UserError, match="non-empty text"):
        scoring.text_given_image(model, tok, geometry, codes[:1], [[]], max_batch_rows=2)


@pytest.mark.parametrize("text_positions", [None, 16])
def test_image_given_text_is_the_restricted_code_likelihood_whatever_the_padding(setup, text_positions):
    tok, model, geometry = setup
    geometry = dataclasses.replace(geometry, text_positions=text_positions)
    codes = torch.randint(0, tok.codebook_size, (5, 8, 8), generator=torch.Generator().manual_seed(2))
    texts = [tok.encode_text(text, 16) if text else []  # the empty text: the unconditional sequence
             for text in ["a red circle", "", PROMPTS[1], "square", PROMPTS[2]]]
    likelihood = scoring.image_given_text(model, tok, geometry, codes, texts, max_batch_rows=3)
    assert likelihood.tokens.tolist() == [64] * 5
    for i, text in enumerate(texts):
        expected = brute_image_nats(model, tok, codes[i], text, text_positions)
        assert float(likelihood.nats[i]) == pytest.approx(expected, abs=1e-3)


def test_agreement_adds_both_directions_per_token_each_read_from_its_own_model(setup):
    tok, model, geometry = setup
    captioner = tiny_model(tok, seed=1)  # a separate captioner scores the image-to-text direction
    codes = torch.randint(0, tok.codebook_size, (3, 8, 8), generator=torch.Generator().manual_seed(4))
    texts = [tok.encode_text(text, 16) for text in PROMPTS[:3]]
    agreement = scoring.agreement_scores(model, captioner, tok, geometry, codes, texts, 8)
    for i, text in enumerate(texts):
        expected = -brute_text_nats(captioner, tok, codes[i], text) / len(text) \
            - brute_image_nats(model, tok, codes[i], text) / 64
        assert float(agreement[i]) == pytest.approx(expected, abs=1e-4)
    caption_only = scoring.match_scores("caption", model, captioner, tok, geometry, codes, texts, 8)
    expected = [-brute_text_nats(captioner, tok, c, t) for c, t in zip(codes, texts)]
    assert caption_only.tolist() == pytest.approx(expected, abs=1e-3)


# Recorded from the code before text_scores / caption_nats became one likelihood (commit 73f0e46):
# post-selection and caption reranking must choose, and score, exactly as they did.
RECORDED_RERANK_SCORES = {"agreement": [-22.859777450561523, -22.925067901611328, -23.451393127441406,
                                        -21.901470184326172],
                          "caption": [-190.34210205078125, -190.6599578857422, -198.29734802246094,
                                      -181.00265502929688]}
RECORDED_CAPTIONS = {"agreement": ["qqqqqq", "qqqqqq", "llllll", "bbbbbo"],
                     "caption": ["qqqqqq", "vooooo", "llllll", "bbbbbo"]}


@pytest.mark.parametrize("post_selection", ["agreement", "caption"])
def test_post_selection_and_caption_reranking_are_unchanged(setup, post_selection):
    tok, model, geometry = setup
    pipe = Pipeline(model, tok, vqvae=None, geometry=geometry, caption_model=tiny_model(tok, seed=1),
                    max_batch_rows=3, post_selection=post_selection)
    codes = torch.randint(0, tok.codebook_size, (4, 8, 8), generator=torch.Generator().manual_seed(11))
    ranking = pipe.rerank_codes(PROMPTS[1], codes)
    assert ranking.scores.tolist() == pytest.approx(RECORDED_RERANK_SCORES[post_selection], abs=1e-4)
    assert ranking.order == [3, 0, 1, 2]
    captions = pipe.caption_codes(codes, 5, 6, SamplingSettings(top_k=0, temperature=2.0), candidates=4)
    assert captions == RECORDED_CAPTIONS[post_selection]

ITEMS = 8
GRID = 4  # 32 px canvas, one code per 8x8 block


def block_codes(image) -> torch.Tensor:
    """A stand-in image tokenizer that needs no training: each 8x8 block becomes the index (0-5) of
    the shapes colour most of its coloured pixels are nearest to, or 6 when it is all white. Enough
    for colour and position, and roughly size, to be visible in the codes."""
    pixels = np.asarray(image, dtype=np.int64)
    palette = np.array([*COLOURS.values(), (255, 255, 255)], dtype=np.int64)
    nearest = ((pixels[:, :, None, :] - palette) ** 2).sum(-1).argmin(-1)       # [32, 32] in 0..6
    codes = torch.full((GRID, GRID), 6)
    for row in range(GRID):
        for col in range(GRID):
            counts = np.bincount(nearest[8 * row:8 * row + 8, 8 * col:8 * col + 8].ravel(), minlength=7)[:6]
            if counts.any():
                codes[row, col] = int(counts.argmax())
    return codes


def test_post_selection_ranks_the_true_image_first_after_training():
    data = ShapesDataset(seed=3, size=32, two_object_fraction=0.0)
    items = [data.item(i) for i in range(ITEMS)]
    codes = torch.stack([block_codes(item.image) for item in items])
    tok = tiny_tokenizer(codebook_size=7)
    geometry = tiny_geometry(grid=GRID, max_positions=64)
    model = tiny_model(tok, max_positions=64, layers=2, hidden=64)
    with torch.no_grad():
        model.word_embeddings.weight.div_(40.0)  # undo the helper's sharpening: train from a normal init
    texts = [tok.encode_text(item.caption) for item in items]
    sequences = [image2text(tok, c, GRID, t) for c, t in zip(codes, texts)]
    length = max(len(s) for s in sequences)
    ids = torch.full((ITEMS, length), tok.pad_id)
    positions = torch.zeros((ITEMS, length), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, :len(s)] = torch.tensor(s.ids)
        positions[row, :len(s)] = torch.tensor(s.position_ids)
    targets = ids[:, 1:].clone()
    targets[:, :GRID * GRID + 3] = -100  # learn the captions only: the image is the condition
    targets[targets == tok.pad_id] = -100

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        logits = model(ids[:, :-1], positions[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    pipe = Pipeline(model, tok, vqvae=None, geometry=geometry, max_batch_rows=3)
    for i, item in enumerate(items):
        ranking = pipe.rerank_codes(item.caption, codes)
        assert ranking.order[0] == i, f"{item.caption!r}: scores {ranking.scores.tolist()}"
