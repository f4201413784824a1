"""Retrieval: the score matrix from the one text-given-image likelihood, rankings and recall."""
import math

import pytest
import torch

from eval_utils.retrieval import distinct_pairs, own_ranks, recalls, retrieval_section
from generation.pipeline import Pipeline
from generation.retrieval import gallery_normalised, ranked, retrieval_scores
from generation.scoring import text_given_image
from tests.generation_helpers import tiny_geometry, tiny_model, tiny_tokenizer
from utils.errors import UserError


def test_the_matrix_is_per_pair_text_given_image_normalised_per_text():
    tok = tiny_tokenizer()
    model, geometry = tiny_model(tok), tiny_geometry(grid=4)
    codes = torch.randint(0, 16, (3, 4, 4))
    texts = [tok.encode_text(t) for t in ("a red circle", "ab", "a blue square at the top")]
    scores = retrieval_scores(model, tok, geometry, codes, texts, max_batch_rows=4)
    assert scores.shape == (3, 3)
    for t, text in enumerate(texts):
        one = -text_given_image(model, tok, geometry, codes, [text] * 3, max_batch_rows=1).nats.double()
        # ln P(t | i) - ln mean_j P(t | j), by hand for this text
        expected = one - math.log(sum(math.exp(float(v)) for v in one) / 3)
        torch.testing.assert_close(scores[t], expected, atol=1e-4, rtol=0)


def test_normalising_per_text_keeps_each_texts_order_of_images_and_lets_a_specific_text_win():
    # Text 0 is generic (likely with every image), text 1 fits image 1 only.
    log_probs = torch.tensor([[-2.0, -2.5, -2.0], [-9.0, -3.0, -9.0]])
    normalised = gallery_normalised(log_probs)
    assert ranked(normalised) == ranked(log_probs)
    assert ranked(log_probs.T)[1] == [0, 1]        # raw: the generic text wins image 1
    assert ranked(normalised.T)[1] == [1, 0]       # normalised: the specific one does


def test_ranked_orders_best_first_and_keeps_index_order_on_ties():
    assert ranked(torch.tensor([[0.1, 0.5, 0.5, -1.0]])) == [[1, 2, 0, 3]]


def test_recall_on_a_hand_built_matrix():
    scores = torch.tensor([[5.0, 1.0, 0.0, 0.0],    # text 0: own image first
                           [3.0, 2.0, 1.0, 0.0],    # text 1: own image second
                           [0.0, 0.0, 1.0, 1.0],    # text 2: tied with image 3 -> counts as second
                           [9.0, 8.0, 7.0, 6.0]])   # text 3: own image last
    assert own_ranks(scores).tolist() == [0, 1, 1, 3]
    # image 0: text 3's 9 beats text 0's 5; image 2: text 3's 7 beats and text 1's 1 ties text 2's own 1
    assert own_ranks(scores.T).tolist() == [1, 1, 2, 0]
    found = recalls(scores, ks=(1, 2))
    assert found == {"text_to_image_r@1": 0.25, "image_to_text_r@1": 0.25,
                     "text_to_image_r@2": 0.75, "image_to_text_r@2": 0.75}
    assert recalls(torch.zeros(4, 4), ks=(1,))["text_to_image_r@1"] == 0.0  # all tied: nothing found


def test_distinct_pairs_skip_repeated_captions():
    images, captions = distinct_pairs(["i0", "i1", "i2", "i3"], ["a", "b", "a", "c"], 3)
    assert (images, captions) == (["i0", "i1", "i3"], ["a", "b", "c"])
    with pytest.raises(UserError):
        distinct_pairs(["i0", "i1"], ["a", "a"], 2)


def test_retrieval_section_reports_each_language():
    section = retrieval_section(lambda images, texts: torch.eye(len(texts)),
                                {"en": (["i"] * 6, ["t"] * 6), "zh": (["i"] * 2, ["t"] * 2)})
    assert section.results["en"] == {"pairs": 6, "text_to_image_r@1": 1.0, "image_to_text_r@1": 1.0,
                                     "text_to_image_r@5": 1.0, "image_to_text_r@5": 1.0}
    assert "zh" in section.table


def test_pipeline_retrieval_scores_scores_every_text_against_every_image():
    tok = tiny_tokenizer()
    model, geometry = tiny_model(tok), tiny_geometry(grid=4)
    codes = torch.randint(0, 16, (2, 4, 4))
    pipe = Pipeline(model, tok, vqvae=None, geometry=geometry, caption_model=tiny_model(tok, seed=1))
    pipe.encode_images = lambda images, grid=None: codes
    scores = pipe.retrieval_scores(torch.zeros(2, 3, 32, 32), ["a red circle", "ab", "abc"])
    expected = retrieval_scores(pipe.caption_model, tok, geometry, codes,
                                [tok.encode_text(t) for t in ("a red circle", "ab", "abc")], 4)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)  # other batches, other float sums
