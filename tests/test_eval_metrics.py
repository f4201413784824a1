"""Known answers for every metric in eval_utils (docs/evaluation.md lists them)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from utils.errors import UserError


# --- PSNR ------------------------------------------------------------------------------------------
def test_psnr_known_values():
    from eval_utils.psnr import mean_psnr, psnr_per_image

    reference = torch.full((2, 3, 4, 4), 0.5)
    images = reference.clone()
    images[0] += 0.1   # MSE 0.01 -> 20 dB
    images[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert psnr_per_image(images, reference).tolist() == pytest.approx([20.0, 40.0], abs=1e-4)  # float32 inputs
    assert mean_psnr(images, reference) == pytest.approx(30.0, abs=1e-4)
    assert math.isinf(mean_psnr(reference, reference))
    # Values are clamped to [0, 1] first: 1.5 vs 1.0 is no error at all.
    assert math.isinf(mean_psnr(torch.full((1, 3, 2, 2), 1.5), torch.ones(1, 3, 2, 2)))
    with pytest.raises(UserError, match="one shape"):
        psnr_per_image(images, reference[:, :, :2])


def test_bicubic_upsample_shape_clamp_and_constants():
    from eval_utils.psnr import bicubic_upsample

    constant = torch.full((1, 3, 5, 7), 0.25)
    assert torch.allclose(bicubic_upsample(constant, 2), torch.full((1, 3, 10, 14), 0.25))
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0  # a hard edge makes the cubic kernel overshoot below 0 and above 1
    upsampled = bicubic_upsample(step, 4)
    assert upsampled.shape == (1, 3, 32, 32)
    assert upsampled.min() == 0.0 and upsampled.max() == 1.0
    with pytest.raises(UserError):
        bicubic_upsample(step, 0)


# --- Frechet distance and Inception Score ------------------------------------------------------------
def test_fid_of_a_set_with_itself_is_zero():
    from eval_utils.fid import fid_from_features

    features = torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) * 3 + 1  # rank-deficient: N < D
    scale = float(features.var(dim=0).sum())
    assert fid_from_features(features, features) / scale < 1e-6


def test_fid_of_a_mean_shift_is_the_squared_shift():
    # Same samples shifted by d: identical covariances, so the exact Frechet distance is |d|^2.
    from eval_utils.fid import fid_from_features

    rng = np.random.default_rng(1)
    features = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    for length in (0.5, 2.0, 8.0):
        shift = rng.normal(size=16)
        shift *= length / np.linalg.norm(shift)
        assert fid_from_features(features, features + shift) == pytest.approx(length ** 2, rel=1e-8)


def test_frechet_distance_matches_closed_forms_for_gaussians():
    from eval_utils.fid import FeatureStatistics, frechet_distance

    # Diagonal (commuting) covariances: |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    got = frechet_distance(FeatureStatistics(mu1, np.diag(a), 2), FeatureStatistics(mu2, np.diag(b), 2))
    assert got == pytest.approx(expected, rel=1e-12)
    # Non-commuting 2x2 covariances: for a 2x2 matrix M with non-negative eigenvalues,
    # tr(M^(1/2)) = sqrt(tr M + 2 sqrt(det M)); here M = S1 S2.
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[1.0, -0.3], [-0.3, 3.0]])
    trace_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = 1.0 + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    got = frechet_distance(FeatureStatistics(np.zeros(2), s1, 2), FeatureStatistics(np.array([1.0, 0.0]), s2, 2))
    assert got == pytest.approx(expected, rel=1e-12)


def test_fid_rejects_bad_input():
    from eval_utils.fid import fid_from_features

    with pytest.raises(UserError, match="at least 2"):
        fid_from_features(torch.zeros(1, 4), torch.zeros(5, 4))
    with pytest.raises(UserError, match="same feature network"):
        fid_from_features(torch.randn(5, 4), torch.randn(5, 3))


def test_inception_score_known_answers():
    from eval_utils.fid import inception_score

    assert inception_score(torch.full((12, 10), 0.1)) == pytest.approx((1.0, 0.0))
    confident = torch.eye(4).repeat(6, 1)  # 24 images, each certain of its class, classes balanced
    assert inception_score(confident) == pytest.approx((4.0, 0.0))
    assert inception_score(confident, splits=3) == pytest.approx((4.0, 0.0))
    one_class = torch.zeros(8, 4)
    one_class[:, 2] = 1.0  # certain but all the same class: no diversity
    assert inception_score(one_class)[0] == pytest.approx(1.0)
    with pytest.raises(UserError, match="softmax"):
        inception_score(torch.randn(8, 4))


# --- FID Inception network ---------------------------------------------------------------------------
def test_inception_state_dict_layout_matches_the_fid_weights_file():
    from eval_utils.inception import FIDInceptionV3

    state = FIDInceptionV3().state_dict()
    # 94 conv+BN units (conv.weight, bn weight/bias/running_mean/running_var/num_batches_tracked) + fc.
    assert len(state) == 94 * 6 + 2
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7a.branch3x3_2.conv.weight"].shape == (320, 192, 3, 3)
    assert state["Mixed_7c.branch3x3dbl_1.conv.weight"].shape == (448, 2048, 1, 1)
    assert state["fc.weight"].shape == (1008, 2048)
    assert not any(key.startswith("AuxLogits") for key in state)
    # torchvision's Inception3 without the auxiliary head, with a 1008-class fc.
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 23_850_960


def test_inception_loads_a_state_dict_strictly_and_gives_pool_and_logits(tmp_path, caplog):
    from eval_utils.inception import FIDInceptionV3, inception_features, load_inception

    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in FIDInceptionV3().state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(value.shape, generator=generator) * 0.05
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    network = load_inception(path)
    assert torch.equal(network.fc.weight, state["fc.weight"])
    assert "not the standard FID weights" in caplog.text  # right keys, other SHA-256
    images = torch.rand(2, 3, 64, 64, generator=generator)
    outputs = inception_features(network, images, batch_size=2)
    assert outputs.pool.shape == (2, 2048) and outputs.logits.shape == (2, 1008)
    assert torch.isfinite(outputs.pool).all() and (outputs.pool >= 0).all()  # mean of ReLU outputs
    # IS logits leave out the fc bias, as the reference IS code does.
    assert torch.allclose(outputs.logits, outputs.pool @ state["fc.weight"].double().T, atol=1e-4)


def test_load_inception_errors(tmp_path):
    from eval_utils.inception import load_inception

    with pytest.raises(UserError, match="pt_inception-2015-12-05-6726825d.pth") as info:
        load_inception(tmp_path / "missing.pth")
    assert "\n" not in str(info.value)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(UserError, match="not the FID Inception weights"):
        load_inception(wrong)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_inception(corrupt)


# --- self-FID feature network ------------------------------------------------------------------------
def _coloured_squares(colours: list[int], seed: int) -> torch.Tensor:
    """White 32 px images, each with one square of pure red (0), green (1) or blue (2) at a random place."""
    rng = np.random.default_rng(seed)
    images = torch.ones(len(colours), 3, 32, 32)
    for row, colour in enumerate(colours):
        y, x = rng.integers(0, 20, size=2)
        images[row, :, y:y + 12, x:x + 12] = 0.0
        images[row, colour, y:y + 12, x:x + 12] = 1.0
    return images


def test_feature_net_learns_captions_round_trips_and_separates_sets(tmp_path):
    from eval_utils.feature_net import (feature_net_fingerprint, features, load_feature_net, save_feature_net,
                                        train_feature_net)
    from eval_utils.fid import fid_from_features

    colours = [i % 3 for i in range(96)]
    images = _coloured_squares(colours, seed=0)
    captions = [[100 + colour, 7] for colour in colours]  # token 7 in every caption, one colour token each
    network = train_feature_net(images, captions, steps=60, batch_size=32, lr=3e-3, image_size=32,
                                widths=(8, 16), seed=0)
    assert network.config.label_ids == (7, 100, 101, 102)
    with torch.no_grad():
        logits = network(images)
    assert (logits[:, 0] > 0).all()  # token 7 is in every caption
    colour_guess = logits[:, 1:].argmax(dim=1)  # columns of tokens 100, 101, 102
    assert (colour_guess == torch.tensor(colours)).float().mean() > 0.9

    save_feature_net(network, tmp_path / "net")
    loaded = load_feature_net(tmp_path / "net")
    assert feature_net_fingerprint(loaded) == feature_net_fingerprint(network)
    assert torch.equal(features(loaded, images), features(network, images))

    reds = _coloured_squares([0] * 48, seed=1)
    more_reds = _coloured_squares([0] * 48, seed=2)
    blues = _coloured_squares([2] * 48, seed=3)
    same = fid_from_features(features(network, reds), features(network, more_reds))
    different = fid_from_features(features(network, reds), features(network, blues))
    assert different > 10 * same


def test_load_feature_net_errors(tmp_path):
    from eval_utils.feature_net import FeatureNet, FeatureNetConfig, load_feature_net, save_feature_net

    with pytest.raises(UserError, match="not found"):
        load_feature_net(tmp_path / "absent")
    save_feature_net(FeatureNet(FeatureNetConfig(label_ids=(1, 2), widths=(8,))), tmp_path / "a")
    save_feature_net(FeatureNet(FeatureNetConfig(label_ids=(1, 2, 3), widths=(8,))), tmp_path / "b")
    (tmp_path / "a" / "config.json").write_bytes((tmp_path / "b" / "config.json").read_bytes())
    with pytest.raises(UserError, match="does not match"):
        load_feature_net(tmp_path / "a")


# --- codebook usage ----------------------------------------------------------------------------------
def test_codebook_stats_known_answers():
    from eval_utils.vqvae_reconstruction import codebook_stats

    perplexity, used = codebook_stats(torch.tensor([2.0, 2.0, 0.0, 0.0]))
    assert perplexity == pytest.approx(2.0) and used == 0.5
    assert codebook_stats(torch.full((8,), 3.0)) == pytest.approx((8.0, 1.0))
    assert codebook_stats(torch.tensor([0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0])) == pytest.approx((1.0, 1 / 8))
    # p = (1/2, 1/4, 1/4): entropy 1.5 ln 2, so perplexity 2 ** 1.5
    assert codebook_stats(torch.tensor([2.0, 1.0, 1.0]))[0] == pytest.approx(2 ** 1.5)


# --- shapes prompt following -------------------------------------------------------------------------
def _obj(colour, shape, size, position):
    from data_utils.shapes import ShapeObject, object_bbox

    return ShapeObject(colour, shape, size, position, object_bbox(size, position, 64))


def test_image_accuracy_of_ground_truth_is_perfect():
    from data_utils.images import pil_to_tensor
    from data_utils.shapes import ShapesDataset
    from eval_utils.shapes_accuracy import image_accuracy

    items = [ShapesDataset(seed=3).item(index) for index in range(8)]
    pairs = [(item.objects, pil_to_tensor(item.image) if k % 2 else item.image) for k, item in enumerate(items)]
    result = image_accuracy(pairs)
    assert set(result.groups) == {"all", "1 object", "2 objects"}
    for group in result.groups.values():
        assert group.correct == 1.0 and group.objects_right == 1.0 and set(group.attributes.values()) == {1.0}
    assert result.groups["all"].prompts == 8 and result.mean_extras == 0.0


def test_image_accuracy_counts_each_failure_by_attribute():
    from data_utils.shapes import render
    from eval_utils.shapes_accuracy import image_accuracy

    red_circle = _obj("red", "circle", "large", "top left")
    blue_square = _obj("blue", "square", "small", "bottom right")
    pairs = [
        ([red_circle], render([_obj("red", "square", "large", "top left")])),      # wrong shape only
        ([red_circle], render([_obj("green", "circle", "large", "top left")])),    # wrong colour: nothing red
        ([red_circle, blue_square], render([red_circle])),                         # second object missing
        ([blue_square], render([blue_square, _obj("yellow", "diamond", "large", "center")])),  # an extra
    ]
    result = image_accuracy(pairs)
    one, two, everything = result.groups["1 object"], result.groups["2 objects"], result.groups["all"]
    assert (one.prompts, one.objects, one.correct, one.objects_right) == (3, 3, 0.0, pytest.approx(1 / 3))
    assert one.attributes == pytest.approx({"colour": 2 / 3, "shape": 1 / 3, "size": 2 / 3, "position": 2 / 3})
    assert (two.prompts, two.correct, two.objects_right) == (1, 0.0, 0.5)
    assert two.attributes == pytest.approx(dict.fromkeys(("colour", "shape", "size", "position"), 0.5))
    assert everything.objects == 5 and everything.objects_right == pytest.approx(2 / 5)
    assert result.mean_extras == pytest.approx(3 / 4)  # the red square, the green circle, the yellow diamond
    assert result.to_dict()["groups"]["all"]["shape"] == pytest.approx(2 / 5)
    assert "2 objects" in result.format_table()


def test_caption_accuracy_is_order_insensitive_and_pairs_objects_by_attributes():
    from data_utils.shapes import caption_for
    from eval_utils.shapes_accuracy import caption_accuracy

    a = _obj("red", "circle", "large", "top left")
    b = _obj("blue", "square", "small", "center")
    b_large = _obj("blue", "square", "large", "center")
    pairs = [
        ([a, b], caption_for([b, a])),              # swapped order: exact
        ([a, b], caption_for([b_large, a])),        # one wrong size, objects paired by attributes not order
        ([a], caption_for([a], "zh")),              # Chinese: exact
        ([a], "a large red circle somewhere"),      # unparseable: all wrong
        ([a, b], caption_for([a])),                 # one object missing
    ]
    result = caption_accuracy(pairs)
    two, one = result.groups["2 objects"], result.groups["1 object"]
    assert two.correct == pytest.approx(1 / 3) and one.correct == 0.5
    assert two.attributes == pytest.approx({"colour": 5 / 6, "shape": 5 / 6, "size": 4 / 6, "position": 5 / 6})
    assert two.objects_right == pytest.approx(4 / 6)
    assert one.attributes == pytest.approx(dict.fromkeys(("colour", "shape", "size", "position"), 0.5))
    assert result.unparsed == pytest.approx(1 / 5)
    with pytest.raises(UserError, match="no prompts"):
        caption_accuracy([])


# --- bits per token and caption loss -----------------------------------------------------------------
class WordTokenizer:
    """A text tokenizer over the words w0 ... w{n-1}, one piece each."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.fingerprint = f"words-{vocab_size}"

    def encode(self, text):
        return [int(word[1:]) for word in text.split()]

    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids)


CODEBOOK, TEXT_PIECES, GRID = 16, 20, 4


def _tokenizer():
    from data_utils.tokenizer import UnifiedTokenizer

    return UnifiedTokenizer(WordTokenizer(TEXT_PIECES), codebook_size=CODEBOOK)


class ConstantLogits(torch.nn.Module):
    """A stand-in for CogViewGPT: logits `image_logit` on every image code and `other_logit` elsewhere."""

    def __init__(self, vocab_size: int, image_logit: float = 0.0, other_logit: float = 0.0):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device
        self.row = torch.full((vocab_size,), other_logit)
        self.row[:CODEBOOK] = image_logit

    def forward(self, input_ids, position_ids):
        assert input_ids.shape == position_ids.shape
        return self.row.expand(*input_ids.shape, -1).clone()


def _validation_loader(tmp_path, tokenizer, rows: int = 5, batch_size: int = 3):
    from functools import partial

    from data_utils.dataset import TaskSequenceDataset, collate_sequences
    from data_utils.shards import FORMAT_VERSION, RowFormat, ShardedRows, write_manifest, write_shard

    rng = np.random.default_rng(0)
    row_format = RowFormat(text_max_tokens=6, image_grid=GRID, lowres_grid=None, dtype="uint16")
    packed = [row_format.pack(tokenizer.text_offset + rng.integers(0, TEXT_PIECES, size=rng.integers(1, 7)),
                              rng.integers(0, CODEBOOK, size=(GRID, GRID)), None, tokenizer.pad_id)
              for _ in range(rows)]
    shard = write_shard(tmp_path, 0, np.stack(packed), np.arange(rows), row_format)
    write_manifest(tmp_path, {"format_version": FORMAT_VERSION, **row_format.to_dict(), "num_chunks": 1,
                              "complete": True, "tokenizer": tokenizer.describe(),
                              "vqvae": {"path": "vq", "fingerprint": "test-vq"}, "shards": [shard]})
    dataset = TaskSequenceDataset(ShardedRows(tmp_path, tokenizer), tokenizer,
                                  task_weights={"text2image": 1.0, "image2text": 1.0}, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                         collate_fn=partial(collate_sequences, pad_id=tokenizer.pad_id))
    return dataset, loader


def test_uniform_model_scores_log2_vocab_bits_on_every_token(tmp_path):
    from eval_utils.bits_per_token import bits_per_token

    tokenizer = _tokenizer()
    dataset, loader = _validation_loader(tmp_path, tokenizer)
    result = bits_per_token(ConstantLogits(tokenizer.vocab_size), loader, tokenizer)
    expected = math.log2(tokenizer.vocab_size)  # exact up to the float32 log-softmax (~1e-7 relative)
    assert result.image_bits == pytest.approx(expected, rel=1e-6)
    assert result.text_bits == pytest.approx(expected, rel=1e-6)
    # Every code of every row is a target once; every other real token but the first is a text target.
    lengths = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
    assert result.image_tokens == len(dataset) * GRID * GRID
    assert result.text_tokens == sum(lengths) - len(lengths) - result.image_tokens  # [PAD] targets ignored
    assert set(result.by_task) == {dataset[i]["task"] for i in range(len(dataset))}
    assert "all" in result.format_table()


def test_bits_per_token_separates_image_and_text_targets(tmp_path):
    from eval_utils.bits_per_token import bits_per_token

    tokenizer = _tokenizer()
    _, loader = _validation_loader(tmp_path, tokenizer)
    vocab, bonus = tokenizer.vocab_size, 2.0
    result = bits_per_token(ConstantLogits(vocab, other_logit=bonus), loader, tokenizer, max_batches=1)
    log_partition = math.log(CODEBOOK + (vocab - CODEBOOK) * math.exp(bonus))
    assert result.image_bits == pytest.approx(log_partition / math.log(2), rel=1e-6)
    assert result.text_bits == pytest.approx((log_partition - bonus) / math.log(2), rel=1e-6)
    assert result.image_tokens == 3 * GRID * GRID  # max_batches=1: the first batch of 3 rows only


def test_bits_per_token_of_a_real_model_matches_its_mean_cross_entropy(tmp_path):
    from eval_utils.bits_per_token import bits_per_token
    from model.config import ModelConfig
    from model.gpt import CogViewGPT

    tokenizer = _tokenizer()
    _, loader = _validation_loader(tmp_path, tokenizer)
    torch.manual_seed(0)
    model = CogViewGPT(ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=1, hidden_size=16,
                                   num_attention_heads=2, max_position_embeddings=32))
    result = bits_per_token(model, loader, tokenizer)
    assert model.training  # restored after the evaluation
    model.eval()
    nats, tokens = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            logits = model(batch["input_ids"][:, :-1], batch["position_ids"][:, :-1])
            targets = batch["input_ids"][:, 1:]
            nats += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                                            ignore_index=tokenizer.pad_id, reduction="sum"))
            tokens += int((targets != tokenizer.pad_id).sum())
    assert result.image_tokens + result.text_tokens == tokens
    assert result.bits == pytest.approx(nats / tokens / math.log(2), rel=1e-6)
    assert 0 < result.image_bits < 2 * math.log2(tokenizer.vocab_size)


class SeesFirstCode(torch.nn.Module):
    """Favours text piece number c (logit +10) where c is the first image code in the row."""

    def __init__(self, tokenizer):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.tokenizer = tokenizer

    def forward(self, input_ids, position_ids):
        is_code = self.tokenizer.image_mask(input_ids)
        first_code = input_ids.gather(1, is_code.int().argmax(dim=1, keepdim=True))  # [B, 1]
        logits = torch.zeros(*input_ids.shape, self.tokenizer.vocab_size)
        favoured = (self.tokenizer.text_offset + first_code).expand_as(input_ids).unsqueeze(-1)
        return logits.scatter_(2, favoured, 10.0)


def test_caption_loss_alignment_known_answers():
    from eval_utils.caption_loss import caption_loss_alignment
    from generation.tasks import Geometry

    tokenizer = _tokenizer()
    geometry = Geometry(image_grid=GRID, text_max_tokens=8, max_positions=32)
    codes = torch.randint(0, CODEBOOK, (4, GRID, GRID), generator=torch.Generator().manual_seed(0))
    codes[:, 0, 0] = torch.tensor([3, 7, 1, 12])  # distinct first codes, so every shuffled pair is wrong
    captions = [f"w{int(c)} w{int(c)} w{int(c)}" for c in codes[:, 0, 0]]
    allowed = TEXT_PIECES + 1  # a caption token is normalised over the text pieces and [SEP] only

    uniform = caption_loss_alignment(ConstantLogits(tokenizer.vocab_size), tokenizer, geometry, codes, captions)
    assert uniform.matched == pytest.approx(math.log(allowed), rel=1e-6)
    assert uniform.gap == pytest.approx(0.0, abs=1e-6)

    seeing = caption_loss_alignment(SeesFirstCode(tokenizer), tokenizer, geometry, codes, captions, batch_size=3)
    log_partition = math.log(math.exp(10.0) + allowed - 1)
    assert seeing.matched == pytest.approx(log_partition - 10.0, abs=1e-6)  # float32 log-softmax
    assert seeing.shuffled == pytest.approx(log_partition, abs=1e-5)
    assert seeing.per_pair == pytest.approx([log_partition - 10.0] * 4, abs=1e-6)
    assert seeing.to_dict()["caption_loss_gap"] == pytest.approx(10.0, abs=1e-5)
    with pytest.raises(UserError, match="at least 2"):
        caption_loss_alignment(SeesFirstCode(tokenizer), tokenizer, geometry, codes[:1], captions[:1])
    with pytest.raises(UserError, match="positions"):
        small = Geometry(image_grid=GRID, text_max_tokens=8, max_positions=16)
        caption_loss_alignment(ConstantLogits(tokenizer.vocab_size), tokenizer, small, codes, captions)
